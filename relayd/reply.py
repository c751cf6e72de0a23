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

#: The message has no From header field (RFC 5322 section 3.6.2).
NO_FROM_HEADER = Reply(550, "5.6.0", "Message has no From header")

#: The From header field holds no mailbox with a local part and a domain.
FROM_WITHOUT_ADDRESS = Reply(550, "5.6.0", "From header holds no valid address")

#: Several authors need a single Sender mailbox (RFC 5322 section 3.6.2).
SEVERAL_FROM_WITHOUT_SENDER = Reply(
    550, "5.6.0", "Message has several From addresses and no single Sender header"
)


def address_headers_too_large(limit: int) -> Reply:
    """
    The From, Sender, To, Cc and Reply-To fields together are too large.

    @param limit: The most bytes allowed.
    @return: C{550 5.6.0}.
    """
    return Reply(550, "5.6.0", f"Address headers are larger than {limit} bytes")


def headers_too_large(limit: int) -> Reply:
    """
    The header sections of all MIME entities together are too large.

    @param limit: The most bytes allowed.
    @return: C{550 5.6.0}.
    """
    return Reply(550, "5.6.0", f"Message headers are larger than {limit} bytes")


def too_many_mime_parts(limit: int) -> Reply:
    """
    The message has too many MIME entities.

    @param limit: The most entities allowed.
    @return: C{550 5.6.0}.
    """
    return Reply(550, "5.6.0", f"Message has more than {limit} MIME parts")


def mime_nested_too_deep(limit: int) -> Reply:
    """
    Multipart entities are nested too deep.

    @param limit: The deepest nesting allowed.
    @return: C{550 5.6.0}.
    """
    return Reply(550, "5.6.0", f"MIME parts are nested more than {limit} deep")


def missing_required_header(name: str) -> Reply:
    """
    A header the policy requires (C{[headers] required}) is missing or does
    not hold the required value.

    @param name: The header's name, printable ASCII (the caller makes it so).
    @return: C{550 5.7.1}.
    """
    return Reply(550, "5.7.1", f"Missing required header {name}")


def unknown_stream(name: str) -> Reply:
    """
    The stream header names a stream the policy (C{[headers] streams}) does
    not list.

    @param name: The stream, printable ASCII (the caller makes it so).
    @return: C{550 5.7.1}.
    """
    return Reply(550, "5.7.1", f"unknown stream '{name}'")


# -- replies of the delivery path and the upstream (relayd.delivery,
#    relayd.upstream, relayd.dialects) -------------------------------------
