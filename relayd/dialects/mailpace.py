# -*- test-case-name: tests.test_dialects -*-
"""
The C{mailpace} dialect: MailPace's send endpoint,
U{https://docs.mailpace.com/reference/send} (C{POST
https://app.mailpace.com/api/v1/send}), answers as documented in
U{https://docs.mailpace.com/reference/responses}.

MailPace builds the MIME message itself from the fields below.  It has no
fields for custom headers, message streams, tracking or metadata: those
parts of an L{OutboundMessage} are not sent (C{In-Reply-To} and
C{References} have their own fields and are).
"""

from __future__ import annotations

from typing import Any

from relayd.dialects.base import (
    Base64,
    JSONDialect,
    envelope_recipients,
    header_value,
    refuse_raw_only,
    require_to,
)
from relayd.message import Attachment, OutboundMessage
from relayd.reply import FALLBACK_TOKEN, Reply

__all__ = ["MailPaceDialect"]


def _attachment(attachment: Attachment) -> dict[str, Any]:
    document = {
        "name": attachment.filename,
        "content": Base64.of(attachment),
        "content_type": attachment.content_type,
    }
    if attachment.content_id:
        # As MailPace's own Symfony transport sends it: "cid:<id>".
        document["cid"] = "cid:" + attachment.content_id
    return document


class MailPaceDialect(JSONDialect):
    """
    MailPace: C{MailPace-Server-Token: <token>}.

    Field mapping (see C{docs/upstream-api.md}): C{from}; C{to}, C{cc},
    C{bcc}, C{replyto} as comma-separated strings; C{subject};
    C{htmlbody}; C{textbody} (C{""} when the message has neither body:
    MailPace requires one of them); C{inreplyto}; C{references};
    C{list_unsubscribe}; C{attachments} (C{name}, C{content} base64,
    C{content_type}, C{cid}); C{tags} (list).  Empty optional fields are
    left out.

    Answers: C{200 {"id": 1234, "status": "pending"}}; errors are
    C{{"error": "..."}} or C{{"errors": {"field": ["..."]}}}.  MailPace
    answers a wrong token with C{400 {"error": "Invalid API Token"}}: that
    one becomes C{554 5.7.1}, like a 401.
    """

    name = "mailpace"
    token_header = "MailPace-Server-Token"
    token_format = "{token}"
    path = "/api/v1/send"

    def payload(self, message: OutboundMessage) -> dict[str, Any]:
        """
        See L{JSONDialect.payload}.

        @raise Refused: For a C{raw_only} message (C{554 5.6.0}) or
            one none of whose recipients is in To or Cc (C{550 5.6.0}: a
            Bcc recipient is never shown as To).
        """
        refuse_raw_only(self.name, message)
        to, cc, bcc = envelope_recipients(message)
        to, cc = require_to(self.name, to, cc)
        document: dict[str, Any] = {
            "from": message.from_,
            "to": ", ".join(to),
            "subject": message.subject,
        }
        if message.html is not None:
            document["htmlbody"] = message.html
        if message.text is not None or message.html is None:
            document["textbody"] = message.text or ""
        optional = {
            "cc": ", ".join(cc),
            "bcc": ", ".join(bcc),
            "replyto": ", ".join(message.reply_to),
            "inreplyto": header_value(message, "In-Reply-To"),
            "references": header_value(message, "References"),
            "list_unsubscribe": message.list_unsubscribe,
            "attachments": [_attachment(a) for a in message.attachments],
            "tags": list(message.tags),
        }
        document.update((k, v) for k, v in optional.items() if v)
        return document

    def failure(self, status: int, answer: object) -> Reply:
        """
        See L{JSONDialect.failure}; a 400 naming the API token is a token
        failure.
        """
        text = self.error_text(answer)
        if status == 400 and "api token" in text.lower():
            return Reply(554, "5.7.1", text or FALLBACK_TOKEN)
        return super().failure(status, answer)
