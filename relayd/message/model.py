# -*- test-case-name: tests.message -*-
"""
The outbound model: the envelope, the message as the upstream API should
receive it, and its attachments, as frozen attrs classes.

L{relayd.message.parse.parse_message} builds an L{OutboundMessage} from the
bytes of one message (RFC 5322, MIME of RFC 2045-2049); the dialects
(L{relayd.dialects}) turn it into one upstream request.  Nothing here parses.
"""

from __future__ import annotations

import binascii
from collections.abc import Iterator

from attrs import field, frozen

__all__ = ["Attachment", "Base64Text", "Envelope", "OutboundMessage"]

#: Octets of a part's base64 text read at once (L{Base64Text.chunks}).
BASE64_CHUNK = 256 * 1024


class Base64Text:
    """
    Clean base64 (RFC 2045 section 6.8) where it lies in the received
    message: the body of one part, line breaks included.  Nothing is
    copied when the message is read; the line breaks are taken out as the
    text is read (L{chunks}), so an attachment goes from the received bytes
    to the upstream request without a copy of its own.

    @ivar buf: The received message.
    @ivar start: Offset of the part body's first octet in C{buf}.
    @ivar end: Offset just past its last octet.
    @ivar length: Octets of base64 text without line breaks (a multiple
        of 4).
    """

    __slots__ = ("buf", "start", "end", "length")

    def __init__(self, buf: bytes, start: int, end: int, length: int) -> None:
        self.buf = buf
        self.start = start
        self.end = end
        self.length = length

    def chunks(self, size: int = BASE64_CHUNK) -> Iterator[bytes]:
        """
        Read the text in pieces.

        Pieces of even lines (what encoders write: 76 characters and CRLF,
        RFC 2045 section 6.8) are cut at line starts and have their line
        breaks cut out by position (L{_cut_line_breaks}), about twice as
        fast as C{bytes.translate}, which takes the others.

        @param size: Octets of the message read per piece (line breaks
            included).
        @return: The base64 text without line breaks, in pieces in order
            (none empty), each at most C{size} octets.
        """
        buf, pos, end = self.buf, self.start, self.end
        width = buf.find(b"\n", pos, end) + 1 - pos  # the first line, CRLF included
        step = width * (size // width) if 2 < width <= size else size
        while pos < end:
            stop = min(pos + step, end)
            piece = buf[pos:stop]
            text = _cut_line_breaks(piece, width)
            if text is None:
                text = piece.translate(None, b"\r\n")
            if text:
                yield text
            pos = stop

    def text(self) -> bytes:
        """
        @return: The whole base64 text without line breaks (a copy).
        """
        return self.buf[self.start : self.end].translate(None, b"\r\n")

    def decode(self) -> bytes:
        """
        @return: The decoded bytes of the part.
        """
        return binascii.a2b_base64(memoryview(self.buf)[self.start : self.end])

    def __len__(self) -> int:
        return self.length

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Base64Text):
            return self.length == other.length and self.text() == other.text()
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self.length)

    def __repr__(self) -> str:
        return f"Base64Text({self.length} octets)"


def _cut_line_breaks(piece: bytes, width: int) -> bytes | None:
    """
    Take the line breaks out of even lines: C{piece.translate(None,
    b"\\r\\n")} when C{piece} is lines of C{width} octets, each ending
    with CRLF, then possibly a shorter last line (the end of a body).

    The CR and LF are checked where they must be (a slice with a stride),
    deleted there, and the rest is searched for another CR or LF (memchr):
    what is left is the text only if there is none.  The short last line
    is translated.

    @param piece: Base64 lines.
    @param width: Octets of one line with its CRLF.
    @return: The text, or C{None} when the lines are not even.
    """
    count, rest = divmod(len(piece), width) if width > 2 else (0, 0)
    if not count:
        return None
    even = count * width
    if piece[width - 1 : even : width] != b"\n" * count:
        return None
    if piece[width - 2 : even : width] != b"\r" * count:
        return None
    text = bytearray(piece)
    del text[width - 1 : even : width]  # every LF: lines of width - 1 octets
    del text[width - 2 : even - count : width - 1]  # every CR
    if rest:
        text[count * (width - 2) :] = piece[even:].translate(None, b"\r\n")
    if b"\n" in text or b"\r" in text:
        return None
    return bytes(text)


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
    @ivar charset: For C{text/*} parts, the charset label the part declared
        (lower case), which C{content} is encoded in; otherwise C{None}.
    @ivar source: For large parts that arrived as clean base64 (RFC 2045
        section 6.8), where that base64 is in the received message, and
        C{content} is empty: the upstream wants base64 anyway, so the part
        is neither decoded nor encoded again, nor copied.  Use L{payload}
        or L{base64} rather than C{content} directly.
    """

    filename: str
    content_type: str
    content: bytes
    content_id: str | None = None
    inline: bool = False
    charset: str | None = None
    source: Base64Text | None = field(default=None, repr=False)

    @property
    def encoded(self) -> bytes | None:
        """
        For a part with a L{source}, its base64 without line breaks (a
        copy); otherwise C{None}.
        """
        return self.source.text() if self.source is not None else None

    def payload(self) -> bytes:
        """
        @return: The decoded bytes of the part.
        """
        if self.source is not None:
            return self.source.decode()
        return self.content

    def base64(self) -> bytes:
        """
        @return: The part as base64 without line breaks (RFC 4648 section 4).
        """
        if self.source is not None:
            return self.source.text()
        return binascii.b2a_base64(self.content, newline=False)


@frozen
class OutboundMessage:
    """
    One message as the upstream API should receive it.

    The control fields (tags, stream, track, list_unsubscribe, metadata)
    and the kept headers follow the header policy, the C{[headers]} table
    (L{relayd.config.HeadersConfig}).

    Addresses are formatted RFC 5322 mailboxes (C{"Name <a@example.com>"}),
    decoded to Unicode; header values never contain CR, LF or NUL.

    @ivar envelope: The transaction's envelope, as given.
    @ivar from_: The first mailbox of the From header field.
    @ivar author_address: The addr-spec of L{from_}: the author of the
        message (RFC 5322 section 3.6.2), not its Sender.
    @ivar to: Mailboxes of every To field, in order (groups flattened).
    @ivar cc: Mailboxes of every Cc field.
    @ivar bcc: The envelope's forward-paths found in neither To nor Cc
        (compared case-insensitively, C{xn--} labels decoded), in envelope
        order, once each.
    @ivar reply_to: Mailboxes of every Reply-To field.
    @ivar subject: The first Subject field, RFC 2047 decoded; C{""} when
        there is none.
    @ivar text: The text body (line ends LF), or C{None}.
    @ivar html: The HTML body (line ends LF), or C{None}.
    @ivar attachments: Attachments and inline parts, in message order.
    @ivar tags: From the L{HeadersConfig.tags} headers.
    @ivar headers: Kept header fields, as C{(name, value)} in message order;
        the value as written, unfolded.
    @ivar stream: From the L{HeadersConfig.stream} header (as configured in
        L{HeadersConfig.streams} when that is set), else
        L{HeadersConfig.default_stream}, else C{None}.
    @ivar track: C{True}/C{False} from the L{HeadersConfig.tracking}
        header, C{None} when absent or neither.
    @ivar list_unsubscribe: From the L{HeadersConfig.list_unsubscribe}
        header, or C{None}.
    @ivar metadata: C{(key, value)} from L{HeadersConfig.metadata_prefix}
        headers; of keys equal but for case, the first.
    @ivar raw: The message as received.
    @ivar raw_only: The message is signed or encrypted (RFC 1847, RFC 8551)
        and cannot be rebuilt from its parts: send C{raw}.
    @ivar mapped: Names of the control headers that were consumed (tags,
        stream, tracking, list-unsubscribe, metadata, required), each once,
        spelled as first seen.
    @ivar stripped: Names of the header fields that reach no output: not
        kept, not mapped, and not represented by a field above (From,
        Sender, To, Cc, Reply-To, Subject, MIME-Version, Content-Type,
        Content-Transfer-Encoding, Content-Disposition and Content-ID are
        represented; Bcc and Date never are).  Each once, spelled as first
        seen.
    @ivar sender: The mailbox of the Sender header field (RFC 5322 section
        3.6.2), when there is one such field holding one mailbox; otherwise
        C{None}.
    """

    envelope: Envelope
    from_: str
    author_address: str
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
    sender: str | None = None
