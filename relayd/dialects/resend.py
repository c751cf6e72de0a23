# -*- test-case-name: tests.dialects.test_resend -*-
"""
The C{resend} dialect: Resend's send endpoint,
U{https://resend.com/docs/api-reference/emails/send-email} (C{POST
https://api.resend.com/emails}, C{Authorization: Bearer <key>}); errors from
U{https://resend.com/docs/api-reference/errors}; idempotency keys from
U{https://resend.com/docs/dashboard/emails/idempotency-keys}.

Resend builds the MIME message itself from the fields below.

Idempotency: documented ("Send the key in the Idempotency-Key HTTP header",
at most 256 characters, kept 24 hours).  A request carries
C{Idempotency-Key}: the value of the message's C{Resend-Idempotency-Key}
header (the header Resend's own SMTP service reads) when the client set
one, else the transaction's key (L{relayd.idempotency.idempotency_key}), so
a client that retries after a lost answer does not send the message twice.
"""

from __future__ import annotations

import re
from typing import Any

from relayd.dialects.request import (
    Base64,
    ControlHeaders,
    ProviderDialect,
    Refused,
    Reply,
    header_object,
    visible_envelope,
)
from relayd.message import Attachment, OutboundMessage

__all__ = ["ResendDialect"]

#: "Max 40MB per email, including attachments" (after base64), in bytes;
#: counted on the raw message, itself mostly base64.
MAX_BYTES = 40 * 1024 * 1024

#: "Max 50" addresses in C{to}; counted over all envelope recipients.
MAX_RECIPIENTS = 50

#: The idempotency header of Resend's SMTP service.
IDEMPOTENCY = "resend-idempotency-key"

#: Tag names and values: ASCII letters, numbers, underscores, dashes; at
#: most 256 characters.
_TAG = re.compile(r"[A-Za-z0-9_-]{1,256}")


def _attachment(attachment: Attachment) -> dict[str, Any]:
    document: dict[str, Any] = {
        "content": Base64.of(attachment),
        "filename": attachment.filename,
        "content_type": attachment.content_type,
    }
    if attachment.content_id:
        document["content_id"] = attachment.content_id
    return document


class ResendDialect(ProviderDialect):
    """
    Resend: C{Authorization: Bearer <key>}, C{Idempotency-Key}.

    Fields (see C{docs/upstream-api.md}): C{from}; C{to}, C{cc} (header To
    and Cc mailboxes that are envelope recipients), C{bcc} (the other
    envelope recipients), as lists; C{reply_to}; C{subject}; C{html};
    C{text}; C{headers}; C{attachments} (C{content} base64, C{filename},
    C{content_type}, C{content_id}); C{tags} (C{{name, value}} from the
    metadata).

    Answers: C{200 {"id": "..."}}; errors C{{"statusCode", "name",
    "message"}}: 400/422 validation, 401/403 key (or unverified domain,
    403), 409 idempotency conflict (temporary), 429 rate or daily quota.
    """

    name = "resend"
    token_header = "Authorization"
    token_format = "Bearer {token}"
    path = "/emails"
    idempotency_header = "Idempotency-Key"
    id_keys = ("id",)
    error_keys = ("message", "error")

    def payload(self, message: OutboundMessage) -> dict[str, Any]:
        """
        See L{JSONDialect.payload}.

        @raise Refused: C{554 5.6.0} for a C{raw_only} message; C{550
            5.6.0} when no recipient is in To or Cc, or for metadata Resend
            cannot tag; C{552 5.3.4} / C{452 4.5.3} over the limits.
        """
        to, cc, bcc = visible_envelope(
            self.name, message, max_bytes=MAX_BYTES, max_recipients=MAX_RECIPIENTS
        )
        for key, value in message.metadata:
            if not (_TAG.fullmatch(key) and _TAG.fullmatch(value)):
                raise Refused(Reply(550, "5.6.0", "Resend tags allow only A-Z a-z 0-9 _ -"))
        controls = ControlHeaders(message, lambda key: key == IDEMPOTENCY)
        document: dict[str, Any] = {
            "from": message.from_,
            "to": list(to),
            "subject": message.subject,
        }
        if message.html is not None:
            document["html"] = message.html
        if message.text is not None or message.html is None:
            document["text"] = message.text or ""
        optional: dict[str, Any] = {
            "cc": list(cc),
            "bcc": list(bcc),
            "reply_to": list(message.reply_to),
            "headers": header_object(controls.rest, message.list_unsubscribe),
            "attachments": [_attachment(a) for a in message.attachments],
            "tags": [{"name": k, "value": v} for k, v in message.metadata],
        }
        document.update((k, v) for k, v in optional.items() if v)
        return document

    def request_key(self, message: OutboundMessage, idempotency_key: str | None) -> str | None:
        """
        See L{JSONDialect.request_key}: the message's
        C{Resend-Idempotency-Key} (at most 256 characters), else the
        transaction's key.
        """
        controls = ControlHeaders(message, lambda key: key == IDEMPOTENCY)
        return (controls.first(IDEMPOTENCY) or "")[:256] or idempotency_key
