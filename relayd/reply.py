# -*- test-case-name: tests.test_reply -*-
"""
The one SMTP reply type, and every reply relayd sends, named once.

A L{Reply} is a reply code (RFC 5321 section 4.2), an enhanced status code
(RFC 3463) and one line of text. The protocol writes it, the delivery path
and the dialects return it, and the message pipeline raises it inside
L{Refused}. Tests compare against the named constants below instead of
copying reply strings, in the manner of aiosmtpd's C{statuscodes.py}.

This module is a leaf: it imports nothing from relayd.
"""

from __future__ import annotations

from attrs import frozen

__all__ = ["Refused", "Reply"]


@frozen
class Reply:
    """
    One SMTP reply.

    @ivar code: The reply code (RFC 5321 section 4.2), 200 to 599.
    @ivar status: The enhanced status code (RFC 3463), for example
        C{"5.7.8"}, or C{""} for none.
    @ivar text: The text: one line, printable ASCII (or UTF-8 under
        SMTPUTF8). The protocol replaces control characters before sending.
    """

    code: int
    status: str
    text: str

    @property
    def permanent(self) -> bool:
        """
        C{True} for a 5xx reply: the client must not retry (RFC 5321 4.2.1).
        """
        return self.code >= 500

    @property
    def temporary(self) -> bool:
        """
        C{True} for a 4xx reply: the client should retry later.
        """
        return 400 <= self.code < 500

    def with_text(self, text: str) -> Reply:
        """
        The same code and enhanced status code with another text.

        @param text: The new text (one line).
        @return: A new L{Reply}.
        """
        return Reply(self.code, self.status, text)


class Refused(Exception):
    """
    Raised where a check refuses the transaction or the message; carries the
    L{Reply} to send instead.

    @ivar reply: The reply (4xx or 5xx).
    """

    def __init__(self, reply: Reply) -> None:
        super().__init__(reply)
        self.reply = reply


# -- replies of the SMTP session (relayd.smtp) -----------------------------


# -- replies of the message pipeline (relayd.message) ----------------------


# -- replies of the delivery path and the upstream (relayd.delivery,
#    relayd.upstream, relayd.dialects) -------------------------------------

# upstream and dialects (relayd.upstream, relayd.dialects)

#: Texts for an upstream error answer that gives no readable reason of its
#: own (see L{relayd.dialects.base.failure_for_status}).
FALLBACK_REJECTED = "Message rejected by upstream"
FALLBACK_TOKEN = "Upstream refused the API token"
FALLBACK_TOO_BIG = "Message too big"
FALLBACK_RATE = "Upstream rate limit reached, try again later"
FALLBACK_TEMPORARY = "Temporary failure, try again later"

#: The answer to everything that is not the upstream's considered verdict
#: (timeouts, refused connections, TLS errors, garbled HTTP), and to an
#: HTTP status that says the relay or the upstream is broken (RFC 3463
#: X.3.0: other or undefined mail system status).
TEMPORARY_FAILURE = Reply(451, "4.3.0", FALLBACK_TEMPORARY)

#: The upstream answered HTTP 413 (RFC 3463 X.3.4: message too big for
#: system).
UPSTREAM_TOO_BIG = Reply(552, "5.3.4", FALLBACK_TOO_BIG)

#: The upstream answered HTTP 429 (RFC 3463 X.7.1, temporary: the client
#: may retry later).
UPSTREAM_RATE_LIMITED = Reply(451, "4.7.1", FALLBACK_RATE)
