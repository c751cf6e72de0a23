# -*- test-case-name: tests.test_message -*-
"""
RFC 5322 / MIME parsing and the header policy: the bytes of one message in,
a typed L{OutboundMessage} out.  No Twisted here.

CONTRACT STUB: the types below are fixed; parse_message is being written.
"""

from __future__ import annotations

from attrs import field, frozen

from relayd.config import HeadersConfig


@frozen
class Envelope:
    """
    The SMTP envelope of one transaction (RFC 5321 section 2.3.1).

    @ivar mail_from: The reverse-path of MAIL FROM, without angle brackets
        (C{""} for the null reverse-path).
    @ivar rcpt_to: The forward-paths of every accepted RCPT TO, in order.
    @ivar smtputf8: The client gave the SMTPUTF8 parameter (RFC 6531).
    """

    mail_from: str
    rcpt_to: tuple[str, ...]
    smtputf8: bool = False


@frozen
class Attachment:
    """
    One attachment or inline part.

    @ivar filename: Decoded file name (RFC 2231 / RFC 2047), never empty.
    @ivar content_type: C{maintype/subtype}, plus C{; method=...} for
        text/calendar.
    @ivar content: The decoded bytes of the part.
    @ivar content_id: The Content-ID without angle brackets, or C{None}.
    @ivar inline: The part is inline (Content-Disposition: inline, or
        referenced by a C{cid:} URL).
    """

    filename: str
    content_type: str
    content: bytes
    content_id: str | None = None
    inline: bool = False


@frozen
class OutboundMessage:
    """
    One message as the upstream API should receive it.

    Addresses are formatted RFC 5322 mailboxes (C{"Name <a@example.com>"}),
    decoded to Unicode; header values never contain CR, LF or NUL.
    """

    envelope: Envelope
    from_: str
    sender_address: str
    to: tuple[str, ...] = ()
    cc: tuple[str, ...] = ()
    bcc: tuple[str, ...] = ()
    reply_to: tuple[str, ...] = ()
    subject: str = ""
    text: str | None = None
    html: str | None = None
    attachments: tuple[Attachment, ...] = ()
    tags: tuple[str, ...] = ()
    headers: tuple[tuple[str, str], ...] = ()
    stream: str | None = None
    track: bool | None = None
    list_unsubscribe: str | None = None
    metadata: tuple[tuple[str, str], ...] = ()
    raw: bytes = b""
    raw_only: bool = False
    mapped: tuple[str, ...] = ()
    stripped: tuple[str, ...] = ()


class MessageRejected(Exception):
    """
    The message cannot be relayed; the SMTP reply to send instead.

    @ivar code: The reply code (5xx).
    @ivar status: The enhanced status code (RFC 3463), e.g. C{"5.6.0"}.
    @ivar text: One line of printable ASCII for the client.
    """

    def __init__(self, code: int, status: str, text: str) -> None:
        super().__init__(code, status, text)
        self.code = code
        self.status = status
        self.text = text


def parse_message(
    data: bytes, envelope: Envelope, policy: HeadersConfig
) -> OutboundMessage:
    raise NotImplementedError
