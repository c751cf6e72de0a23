# -*- test-case-name: tests.test_dialects -*-
"""
The C{postmark} dialect: Postmark's single email endpoint,
U{https://postmarkapp.com/developer/api/email-api} (C{POST
https://api.postmarkapp.com/email}); status codes and C{ErrorCode} values
from U{https://postmarkapp.com/developer/api/overview}.

Postmark builds the MIME message itself from the fields below.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from relayd.dialects.base import (
    Base64,
    JSONDialect,
    envelope_recipients,
    refuse_raw_only,
    require_to,
)
from relayd.message import Attachment, OutboundMessage
from relayd.reply import FALLBACK_REJECTED, FALLBACK_TEMPORARY, FALLBACK_TOKEN, Reply

__all__ = ["PostmarkDialect"]

#: Postmark API error codes that get their own SMTP reply.
BAD_TOKEN = 10
NOT_ALLOWED_TO_SEND = 405
INACTIVE_RECIPIENT = 406


def _attachment(attachment: Attachment) -> dict[str, Any]:
    document = {
        "Name": attachment.filename,
        "Content": Base64.of(attachment),
        "ContentType": attachment.content_type,
    }
    if attachment.content_id:
        # Postmark's documented inline form: "cid:<id>".
        document["ContentID"] = "cid:" + attachment.content_id
    return document


class PostmarkDialect(JSONDialect):
    """
    Postmark: C{X-Postmark-Server-Token: <token>}.

    Field mapping (see C{docs/upstream-api.md}): C{From}; C{To}, C{Cc},
    C{Bcc}, C{ReplyTo} as comma-separated strings; C{Subject}; C{HtmlBody};
    C{TextBody} (C{""} when the message has neither body); C{Headers} as
    C{[{Name, Value}]} (plus C{List-Unsubscribe}, which has no field of its
    own); C{Tag}: the first tag only (Postmark takes one); C{Metadata};
    C{MessageStream}; C{TrackOpens} and C{TrackLinks} (C{"HtmlAndText"} or
    C{"None"}) only when the message says; C{Attachments} (C{Name},
    C{Content} base64, C{ContentType}, C{ContentID}).  Empty optional
    fields are left out.

    Answers: C{200 {"ErrorCode": 0, "Message": "OK", "MessageID": ...}};
    errors C{{"ErrorCode": n, "Message": "..."}}, mostly with 422.  Beyond
    the common status mapping, C{ErrorCode} 10 (bad or missing token) is
    C{554 5.7.1} whatever the status, 405 (not allowed to send: the account
    is out of credits) is C{451 4.3.0} so the client keeps the mail until
    the account is fixed, and 406 (inactive recipient) is C{550 5.1.1}.
    """

    name = "postmark"
    token_header = "X-Postmark-Server-Token"
    token_format = "{token}"
    path = "/email"
    id_keys = ("MessageID",)
    error_keys = ("Message",)

    def payload(self, message: OutboundMessage) -> dict[str, Any]:
        """
        See L{JSONDialect.payload}.

        @raise relayd.reply.Refused: For a C{raw_only} message
            (C{554 5.6.0}) or one none of whose recipients is in To or Cc (C{550 5.6.0}: a
            Bcc recipient is never shown as To).
        """
        refuse_raw_only(self.name, message)
        to, cc, bcc = envelope_recipients(message)
        to, cc = require_to(self.name, to, cc)
        document: dict[str, Any] = {
            "From": message.from_,
            "To": ", ".join(to),
            "Subject": message.subject,
        }
        if message.html is not None:
            document["HtmlBody"] = message.html
        if message.text is not None or message.html is None:
            document["TextBody"] = message.text or ""
        headers = [{"Name": n, "Value": v} for n, v in message.headers]
        if message.list_unsubscribe and not any(
            n.lower() == "list-unsubscribe" for n, _ in message.headers
        ):
            headers.append({"Name": "List-Unsubscribe", "Value": message.list_unsubscribe})
        optional: dict[str, Any] = {
            "Cc": ", ".join(cc),
            "Bcc": ", ".join(bcc),
            "ReplyTo": ", ".join(message.reply_to),
            "Headers": headers,
            "Tag": message.tags[0] if message.tags else None,
            "Metadata": dict(message.metadata),
            "MessageStream": message.stream,
            "Attachments": [_attachment(a) for a in message.attachments],
        }
        document.update((k, v) for k, v in optional.items() if v)
        if message.track is not None:
            document["TrackOpens"] = message.track
            document["TrackLinks"] = "HtmlAndText" if message.track else "None"
        return document

    def failure(self, status: int, answer: object) -> Reply:
        """
        See L{JSONDialect.failure}; some C{ErrorCode} values have their own
        reply (see the class docstring).
        """
        text = self.error_text(answer)
        code = answer.get("ErrorCode") if isinstance(answer, Mapping) else None
        if code == BAD_TOKEN:
            return Reply(554, "5.7.1", text or FALLBACK_TOKEN)
        if code == NOT_ALLOWED_TO_SEND:
            return Reply(451, "4.3.0", text or FALLBACK_TEMPORARY)
        if code == INACTIVE_RECIPIENT and status in (400, 422):
            return Reply(550, "5.1.1", text or FALLBACK_REJECTED)
        return super().failure(status, answer)
