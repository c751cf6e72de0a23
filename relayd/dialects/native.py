# -*- test-case-name: tests.test_dialects -*-
"""
The C{native} dialect: relayd's own JSON schema, documented field by field
in C{docs/upstream-api.md}.  The bundled development API
(L{relayd.devupstream}) speaks it.

Every field is always present (empty lists, C{null}), so a receiver never
has to guess whether a key was forgotten or deliberately empty.
"""

from __future__ import annotations

from typing import Any

from relayd.dialects.base import Base64, JSONDialect, strip_raw_headers
from relayd.message import Attachment, Envelope, OutboundMessage

__all__ = ["NativeDialect", "attachment_document", "envelope_document"]


def envelope_document(envelope: Envelope) -> dict[str, Any]:
    """
    The SMTP envelope (RFC 5321 section 2.3.1) as JSON.

    @param envelope: The transaction's envelope.
    @return: C{{"mail_from": str, "rcpt_to": [str, ...]}}; C{mail_from} is
        C{""} for the null reverse-path.
    """
    return {"mail_from": envelope.mail_from, "rcpt_to": list(envelope.rcpt_to)}


def attachment_document(attachment: Attachment) -> dict[str, Any]:
    """
    One attachment as JSON.

    @param attachment: The attachment.
    @return: C{{filename, content_type, content (base64), content_id (or
        null), inline}}.
    """
    return {
        "filename": attachment.filename,
        "content_type": attachment.content_type,
        "content": Base64.of(attachment),
        "content_id": attachment.content_id,
        "inline": attachment.inline,
    }


class NativeDialect(JSONDialect):
    """
    relayd's own schema; the token goes in C{Authorization: Bearer <token>}
    (RFC 6750 section 2.1).

    Decisions:
      - C{headers} is a list of C{[name, value]} pairs in message order, not
        an object: a name may legitimately repeat (two C{List-*} or C{X-*}
        lines) and an object would lose one of them.
      - C{metadata} is an object; if a key repeats, the first value wins
        (L{relayd.message} keeps the first).
      - C{raw} is C{null}, except for a message that must travel unchanged
        (C{raw_only}: S/MIME, C{multipart/signed}): then it carries the
        base64 of the whole message as received (without its C{Bcc} field),
        in addition to the
        structured fields, and the receiver must send C{raw} as is.
      - The transaction's idempotency key goes in C{Idempotency-Key}
        (C{docs/upstream-api.md}, "Idempotency").
      - The answer's id is read from C{id}, then C{message_id}, then
        C{MessageID}; a 2xx answer without one is still L{Accepted}
        (C{message_id=""}).
    """

    name = "native"
    idempotency_header = "Idempotency-Key"
    token_header = "Authorization"
    token_format = "Bearer {token}"
    path = "/send"

    def payload(self, message: OutboundMessage) -> dict[str, Any]:
        """
        See L{JSONDialect.payload}.
        """
        return {
            "from": message.from_,
            "to": list(message.to),
            "cc": list(message.cc),
            "bcc": list(message.bcc),
            "reply_to": list(message.reply_to),
            "subject": message.subject,
            "text": message.text,
            "html": message.html,
            "attachments": [attachment_document(a) for a in message.attachments],
            "tags": list(message.tags),
            "headers": [[name, value] for name, value in message.headers],
            "stream": message.stream,
            "track": message.track,
            "list_unsubscribe": message.list_unsubscribe,
            "metadata": dict(message.metadata),
            "envelope": envelope_document(message.envelope),
            "raw": Base64(strip_raw_headers(message.raw, ["Bcc"])) if message.raw_only else None,
        }
