"""
relayd-dialect-acme: the Acme Mail API as a relayd dialect plugin.

Acme's send endpoint takes a flat JSON object and the API key in
C{X-Acme-Key}; it answers C{201 {"message_id": "..."}}.
"""

from __future__ import annotations

from typing import Any

from relayd.dialects.base import JSONDialect
from relayd.message import OutboundMessage

__all__ = ["AcmeDialect"]


class AcmeDialect(JSONDialect):
    """
    One OutboundMessage to one Acme request body.
    """

    name = "acme"
    token_header = "X-Acme-Key"
    token_format = "{token}"
    path = "/v1/messages"

    def payload(self, message: OutboundMessage) -> dict[str, Any]:
        """
        The Acme request body.
        """
        return {
            "sender": message.from_,
            "recipients": list(message.envelope.rcpt_to),
            "subject": message.subject,
            "body_text": message.text,
            "body_html": message.html,
            "labels": list(message.tags),
        }
