# -*- test-case-name: tests.test_dialects -*-
"""
The C{raw} dialect: for upstreams that take the MIME message as received
(RFC 5322 / RFC 2045), base64 encoded, plus the SMTP envelope.

This is the only dialect that relays every message unchanged, signed and
encrypted ones included, but for its C{Bcc} header field, removed so that
no blind copy is disclosed (RFC 5322 section 3.6.3); the envelope carries
the recipients.  The answer is read as in the C{native} dialect.
"""

from __future__ import annotations

from typing import Any

from relayd.dialects.base import Base64, JSONDialect, strip_raw_headers
from relayd.dialects.native import envelope_document
from relayd.message import OutboundMessage

__all__ = ["RawDialect"]


class RawDialect(JSONDialect):
    """
    C{{"raw": base64, "envelope": {mail_from, rcpt_to}, "tags": [...],
    "stream": str or null}}; the token goes in C{Authorization: Bearer}.

    The recipients come from the envelope, never from the headers: a
    C{Bcc} recipient is only in the envelope.  The idempotency key goes in
    C{Idempotency-Key}, as in the C{native} dialect.
    """

    name = "raw"
    idempotency_header = "Idempotency-Key"
    token_header = "Authorization"
    token_format = "Bearer {token}"
    path = "/send"

    def payload(self, message: OutboundMessage) -> dict[str, Any]:
        """
        See L{JSONDialect.payload}.
        """
        return {
            "raw": Base64(strip_raw_headers(message.raw, ["Bcc"])),
            "envelope": envelope_document(message.envelope),
            "tags": list(message.tags),
            "stream": message.stream,
        }
