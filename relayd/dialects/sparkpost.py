# -*- test-case-name: tests.dialects.test_sparkpost -*-
"""
The C{sparkpost} dialect: SparkPost's Transmissions endpoint,
U{https://developers.sparkpost.com/api/transmissions/} (C{POST
https://api.sparkpost.com/api/v1/transmissions}, C{Authorization: <key>});
Cc and Bcc as SparkPost documents them (one recipient each, all with the
same C{header_to}, Cc in C{content.headers.CC}):
U{https://support.sparkpost.com/docs/faq/cc-bcc-with-rest-api}; errors
from U{https://developers.sparkpost.com/api/#header-error-codes}; the
C{X-MSYS-API} header of SparkPost's SMTP service from
U{https://developers.sparkpost.com/api/smtp/#header-the-x-msys-api-header}.

SparkPost builds the MIME message from the fields below; a signed or
encrypted message (C{raw_only}) goes unchanged in C{content.email_rfc822}.
No idempotency key: SparkPost documents none.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from relayd.dialects.request import (
    FALLBACK_REJECTED,
    Base64,
    ControlHeaders,
    ProviderDialect,
    Refused,
    Reply,
    check_limits,
    header_object,
    json_header,
    mailbox,
    strip_raw_headers,
)
from relayd.message import Attachment, OutboundMessage

__all__ = ["SparkPostDialect"]

#: "The maximum size of a transmission is 20 MB", in bytes.
MAX_BYTES = 20 * 1024 * 1024

#: The SMTP service's control header (a JSON object).
MSYS_API = "x-msys-api"

#: X-MSYS-API C{options} keys passed on.
OPTIONS = (
    "open_tracking",
    "click_tracking",
    "transactional",
    "sandbox",
    "ip_pool",
    "skip_suppression",
    "inline_css",
)


def _attachment(attachment: Attachment) -> dict[str, Any]:
    return {
        "name": attachment.filename,
        "type": attachment.content_type,
        "data": Base64.of(attachment),
    }


class SparkPostDialect(ProviderDialect):
    """
    SparkPost: C{Authorization: <key>}.

    Fields (see C{docs/upstream-api.md}): C{recipients} (one per envelope
    recipient: C{address.email}, C{address.header_to} = the To header as
    written, C{tags}); C{content.from}, C{subject}, C{reply_to}, C{text},
    C{html}, C{headers} (kept headers, C{CC} as written, C{List-Unsubscribe}),
    C{attachments}, C{inline_images}; C{metadata} (metadata, then
    X-MSYS-API C{metadata}); C{campaign_id}, C{options} (C{open_tracking},
    C{click_tracking} from the tracking flag, then X-MSYS-API C{options}).

    Answers: C{200 {"results": {"id": "...", "total_accepted_recipients",
    "total_rejected_recipients"}}}; errors C{{"errors": [{"message",
    "description", "code"}]}}: 400/422 rejected, 401/403 key, 420 and 429
    rate or sending limit (C{451 4.7.1}), 5xx temporary.
    """

    name = "sparkpost"
    token_header = "Authorization"
    token_format = "{token}"
    path = "/api/v1/transmissions"
    error_keys = ("errors",)

    def payload(self, message: OutboundMessage) -> dict[str, Any]:
        """
        See L{JSONDialect.payload}.

        @raise Refused: C{550 5.6.0} for a message with neither To nor Cc,
            or a bad X-MSYS-API header; C{552 5.3.4} over the size limit.
        """
        check_limits(self.name, message, max_bytes=MAX_BYTES)
        controls = ControlHeaders(message, lambda key: key == MSYS_API)
        msys = json_header(controls.first(MSYS_API), "X-MSYS-API")
        header_to = ", ".join(message.to or message.cc)
        if not header_to and not message.raw_only:
            raise Refused(Reply(550, "5.6.0", "The sparkpost API needs a To or Cc header"))
        tags = list(message.tags) + [t for t in msys.get("tags", []) if isinstance(t, str)]
        recipients = []
        for rcpt in message.envelope.rcpt_to:
            address: dict[str, str] = {"email": mailbox(rcpt)[1]}
            if header_to and not message.raw_only:
                address["header_to"] = header_to
            recipient: dict[str, Any] = {"address": address}
            if tags:
                recipient["tags"] = tags
            recipients.append(recipient)
        document: dict[str, Any] = {
            "recipients": recipients,
            "content": self.content(message, controls),
        }
        metadata = dict(message.metadata)
        if isinstance(msys.get("metadata"), Mapping):
            metadata.update(msys["metadata"])
        options: dict[str, Any] = {}
        if message.track is not None:
            options = {"open_tracking": message.track, "click_tracking": message.track}
        if isinstance(msys.get("options"), Mapping):
            options.update((k, v) for k, v in msys["options"].items() if k in OPTIONS)
        optional = {
            "campaign_id": msys.get("campaign_id")
            if isinstance(msys.get("campaign_id"), str)
            else None,
            "metadata": metadata,
            "options": options,
        }
        document.update((k, v) for k, v in optional.items() if v)
        return document

    def content(self, message: OutboundMessage, controls: ControlHeaders) -> dict[str, Any]:
        """
        C{content}: inline parts, or C{email_rfc822} for a C{raw_only}
        message (without its Bcc, X-MSYS-API and relayd control fields).
        """
        if message.raw_only:
            raw = strip_raw_headers(message.raw, ["Bcc", *controls.found, *message.mapped])
            # Signed and encrypted messages are 7-bit in practice; JSON
            # carries text, so 8-bit bytes that are not UTF-8 are replaced.
            return {"email_rfc822": raw.decode("utf-8", "replace")}
        name, email = mailbox(message.from_)
        content: dict[str, Any] = {
            "from": {"email": email, "name": name} if name else {"email": email},
            "subject": message.subject,
        }
        headers = header_object(controls.rest, message.list_unsubscribe)
        if message.cc:
            headers["CC"] = ", ".join(message.cc)
        if message.text is not None or message.html is None:
            content["text"] = message.text or ""
        optional: dict[str, Any] = {
            "html": message.html,
            "reply_to": ", ".join(message.reply_to),
            "headers": headers,
            "attachments": [
                _attachment(a) for a in message.attachments if not (a.inline and a.content_id)
            ],
            "inline_images": [
                {"name": a.content_id, "type": a.content_type, "data": Base64.of(a)}
                for a in message.attachments
                if a.inline and a.content_id
            ],
        }
        content.update((k, v) for k, v in optional.items() if v)
        return content

    def message_id(self, answer: object) -> str:
        """
        See L{JSONDialect.message_id}: C{results.id}.
        """
        results = answer.get("results") if isinstance(answer, Mapping) else None
        return super().message_id(results)

    def failure(self, status: int, answer: object) -> Reply:
        """
        See L{JSONDialect.failure}; 420 (sending limit exceeded) is a rate
        limit.
        """
        if status == 420:
            return Reply(451, "4.7.1", "Upstream rate limit reached, try again later")
        reply = super().failure(status, answer)
        return reply if reply.text or reply.code != 550 else reply.with_text(FALLBACK_REJECTED)
