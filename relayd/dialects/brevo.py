# -*- test-case-name: tests.dialects.test_brevo -*-
"""
The C{brevo} dialect: Brevo's transactional email endpoint,
U{https://developers.brevo.com/reference/sendtransacemail} (C{POST
https://api.brevo.com/v3/smtp/email}, C{api-key: <key>}); errors from
U{https://developers.brevo.com/docs/how-it-works#error-codes}; idempotency
from U{https://developers.brevo.com/changelog/email-api-now-supports-idempotency};
the C{X-Mailin-*} headers of Brevo's SMTP relay from
U{https://developers.brevo.com/docs/smtp-integration}.

Brevo builds the MIME message itself from the fields below.

Idempotency: documented, as C{headers.idempotencyKey} in the body (kept 15
minutes by Brevo), not as an HTTP header: the transaction's key
(L{relayd.idempotency.idempotency_key}) when there is one.
"""

from __future__ import annotations

from typing import Any

from relayd.dialects.request import (
    Base64,
    Body,
    ControlHeaders,
    ProviderDialect,
    header_object,
    mailbox,
    visible_envelope,
)
from relayd.message import OutboundMessage

__all__ = ["BrevoDialect"]

#: "The size limit for transactional emails is 20MB, including attachments
#: and email content" (U{https://help.brevo.com/hc/en-us/articles/4402811730962}).
MAX_BYTES = 20 * 1024 * 1024

#: "a maximum of 99 recipients" per transactional email with attachments
#: (same page); applied to every message.
MAX_RECIPIENTS = 99

#: The tag header of Brevo's SMTP relay (comma separated tags).
TAG = "x-mailin-tag"


def _address(formatted: str) -> dict[str, str]:
    name, email = mailbox(formatted)
    return {"email": email, "name": name} if name else {"email": email}


class BrevoDialect(ProviderDialect):
    """
    Brevo: C{api-key: <key>}.

    Fields (see C{docs/upstream-api.md}): C{sender}; C{to}, C{cc} (header
    To and Cc mailboxes that are envelope recipients), C{bcc} (the other
    envelope recipients), as C{[{email, name}]}; C{replyTo} (the first
    Reply-To); C{subject}; C{htmlContent}; C{textContent}; C{attachment}
    (C{content} base64, C{name}); C{tags} (the message's tags, then
    C{X-Mailin-Tag}); C{headers} (kept headers, C{List-Unsubscribe} and,
    from L{request_content}, C{idempotencyKey}).  C{X-Mailin-custom} stays a
    header: that is the API's own place for it.

    Answers: C{201 {"messageId": "<...>"}}; errors C{{"code", "message"}}:
    400 (C{invalid_parameter}...), 401 (C{unauthorized}), 402
    (C{not_enough_credits}: temporary, the client keeps the mail), 403
    (C{permission_denied}), 429.
    """

    name = "brevo"
    token_header = "api-key"
    token_format = "{token}"
    path = "/v3/smtp/email"
    key_in_body = True
    id_keys = ("messageId",)
    error_keys = ("message",)

    def payload(self, message: OutboundMessage) -> dict[str, Any]:
        """
        See L{JSONDialect.payload}.

        @raise Refused: C{554 5.6.0} for a C{raw_only} message; C{550
            5.6.0} when no recipient is in To or Cc; C{552 5.3.4} / C{452
            4.5.3} over the limits.
        """
        to, cc, bcc = visible_envelope(
            self.name, message, max_bytes=MAX_BYTES, max_recipients=MAX_RECIPIENTS
        )
        controls = ControlHeaders(message, lambda key: key == TAG)
        tags: list[str] = list(message.tags)
        for value in controls.all(TAG):
            tags += [t.strip() for t in value.split(",") if t.strip() and t.strip() not in tags]
        headers = header_object(controls.rest, message.list_unsubscribe)
        document: dict[str, Any] = {
            "sender": _address(message.from_),
            "to": [_address(a) for a in to],
            "subject": message.subject,
            "headers": headers,
        }
        if message.html is not None:
            document["htmlContent"] = message.html
        if message.text is not None or message.html is None:
            document["textContent"] = message.text or " "
        optional: dict[str, Any] = {
            "cc": [_address(a) for a in cc],
            "bcc": [_address(a) for a in bcc],
            "replyTo": _address(message.reply_to[0]) if message.reply_to else None,
            "attachment": [
                {"content": Base64.of(a), "name": a.filename} for a in message.attachments
            ],
            "tags": tags,
        }
        document.update((k, v) for k, v in optional.items() if v)
        return document

    def request_content(
        self, message: OutboundMessage, key: str | None
    ) -> tuple[Body, dict[str, str]]:
        """
        See L{JSONDialect.request_content}: the key goes in the body, as
        C{headers.idempotencyKey}.
        """
        document = self.payload(message)
        if key:
            document["headers"]["idempotencyKey"] = key
        return self.encode_document(document, message), {}
