# -*- test-case-name: tests.test_upstream_body -*-
"""
The JSON request body of a dialect: L{encode_body} encodes a document
whose binary values are L{Base64} into a L{Body}, written piece by piece
(base64 encoded as it is written, long text values apart) so a large
message is not held twice; L{encode_json} joins it into C{bytes}.

JSON as in RFC 8259; base64 as in RFC 4648 section 4.  No reactor code.
"""

from __future__ import annotations

import json
import secrets
from base64 import b64encode
from collections.abc import Iterator, Sequence
from json.encoder import encode_basestring, encode_basestring_ascii  # type: ignore[attr-defined]

from relayd.message import Attachment, Base64Text

__all__ = ["BASE64_CHUNK", "LONG_TEXT", "Base64", "Body", "encode_body", "encode_json"]

#: Octets of binary data base64-encoded at once as a body is written (a
#: multiple of 3, so the pieces join into one base64 text).
BASE64_CHUNK = 3 * 64 * 1024

#: Text values at least this many characters long are JSON-encoded apart,
#: a piece at a time, when L{encode_body} is asked to (C{long_text}).
LONG_TEXT = 64 * 1024


class Base64:
    """
    Bytes that go into a JSON document as a base64 string (RFC 4648
    section 4, no line breaks): attachment contents, raw messages.

    @ivar data: The bytes (C{b""} when L{source} is set).
    @ivar encoded: C{data} is base64 already (or L{source} is set).
    @ivar source: Clean base64 where it is in the received message, or
        C{None}.

    L{encode_body} splices the encoded bytes into the finished document
    instead of passing them through the JSON encoder: base64 never needs
    JSON escaping, and this saves a scan and two copies of what is most of
    the body (a 25 MB message would otherwise hold the reactor for tens of
    milliseconds).  The base64 text is made only as the body is written
    (L{chunks}), a piece at a time: a large attachment or raw message is
    never held twice, encoded and not.
    """

    __slots__ = ("data", "encoded", "source")

    def __init__(self, data: bytes | Base64Text, encoded: bool = False) -> None:
        """
        @param data: The bytes to encode, or clean base64 where it is in
            the received message (a L{Base64Text}: already encoded).
        @param encoded: C{data} is already base64 (no line breaks).
        """
        self.source: Base64Text | None = None
        if isinstance(data, Base64Text):
            self.data, self.encoded, self.source = b"", True, data
        else:
            self.data, self.encoded = data, encoded

    @classmethod
    def of(cls, attachment: Attachment) -> Base64:
        """
        The content of C{attachment}, without decoding a part that arrived
        as clean base64 (L{Attachment.source}).
        """
        if attachment.source is not None:
            return cls(attachment.source)
        return cls(attachment.content)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Base64) and other.text() == self.text()

    @property
    def length(self) -> int:
        """
        The length of the base64 text, in octets.
        """
        if self.source is not None:
            return self.source.length
        if self.encoded:
            return len(self.data)
        return (len(self.data) + 2) // 3 * 4

    def text(self) -> bytes:
        """
        @return: The base64 text.
        """
        if self.source is not None:
            return self.source.text()
        return self.data if self.encoded else b64encode(self.data)

    def chunks(self) -> Iterator[bytes]:
        """
        @return: The base64 text in pieces, made as they are asked for
            (none empty); joined, they are L{text}.
        """
        data = self.data
        if self.source is not None:
            yield from self.source.chunks()
        elif self.encoded or len(data) <= BASE64_CHUNK:
            if data:
                yield self.text()
        else:
            view = memoryview(data)
            for pos in range(0, len(data), BASE64_CHUNK):
                yield b64encode(view[pos : pos + BASE64_CHUNK])

    def __hash__(self) -> int:
        return hash(self.length)

    def __repr__(self) -> str:
        return f"Base64({self.length} octets of text)"


class Body:
    """
    A request body as pieces in order: bytes, and L{Base64} values whose
    text is made only as the body is written.  Its length is known before
    (C{Content-Length}), and it can be written any number of times.

    @ivar pieces: The pieces.
    @ivar length: The body's length, in bytes.
    """

    __slots__ = ("pieces", "length")

    def __init__(self, pieces: Sequence[bytes | Base64]) -> None:
        self.pieces = tuple(pieces)
        self.length = sum(p.length if isinstance(p, Base64) else len(p) for p in self.pieces)

    def __len__(self) -> int:
        return self.length

    def chunks(self) -> Iterator[bytes]:
        """
        @return: The body in pieces (none empty), in order.
        """
        for piece in self.pieces:
            if isinstance(piece, Base64):
                yield from piece.chunks()
            elif piece:
                yield piece

    def __bytes__(self) -> bytes:
        return b"".join(self.chunks())

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (Body, bytes)):
            return bytes(self) == bytes(other)
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self.length)

    def __repr__(self) -> str:
        return f"Body({self.length} bytes in {len(self.pieces)} pieces)"


class _LongText:
    """
    A long text value of a document, set aside to be encoded in pieces.
    """

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text


def _set_aside(value: object) -> object:
    """
    @return: C{value} with its text values of L{LONG_TEXT} characters or
        more replaced by L{_LongText} (containers copied, tuples as lists:
        the same JSON).
    """
    if isinstance(value, str):
        return _LongText(value) if len(value) >= LONG_TEXT else value
    if isinstance(value, dict):
        return {k: _set_aside(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_set_aside(v) for v in value]
    return value


def _text_pieces(text: str, ascii_only: bool) -> list[bytes]:
    """
    A JSON string's content (RFC 8259 section 7), without its quotes, as
    C{json.dumps} writes it, a piece at a time: escaping is per character,
    so the pieces join into the same bytes.

    @raise UnicodeEncodeError: Text that cannot be UTF-8 (unless
        C{ascii_only}).
    """
    escape = encode_basestring_ascii if ascii_only else encode_basestring
    codec = "ascii" if ascii_only else "utf-8"
    return [
        escape(text[pos : pos + LONG_TEXT])[1:-1].encode(codec)
        for pos in range(0, len(text), LONG_TEXT)
    ]


def encode_body(document: object, long_text: bool = False) -> Body:
    """
    Encode C{document} as compact UTF-8 JSON (RFC 8259), the L{Base64}
    values left as pieces of the body, encoded only as it is written.

    Non-ASCII text is written as UTF-8, not as C{\\u} escapes, which keeps
    bodies smaller.  Text that cannot be UTF-8 (lone surrogates left by a
    lenient decoder) falls back to ASCII-only JSON with escapes, which is
    still valid JSON.  L{Base64} values become base64 strings.

    @param document: JSON-compatible data, plus L{Base64} values.
    @param long_text: Encode text values of L{LONG_TEXT} characters or more
        apart, in pieces, rather than inside one JSON document: the same
        bytes, without the copies of a whole document (worth the walk over
        the document for a large message only).
    @return: The encoded document.
    """
    if long_text:
        document = _set_aside(document)
    try:
        return _encode_body(document, False)
    except UnicodeEncodeError:
        return _encode_body(document, True)


def _encode_body(document: object, ascii_only: bool) -> Body:
    """
    L{encode_body} in one mode: UTF-8, or ASCII with escapes.
    """
    blobs: list[Base64 | _LongText] = []
    # A fresh random marker per document: no text in the message can
    # guess it, so it cannot be mistaken for a placeholder.
    marker = secrets.token_hex(12)

    def placeholder(value: object) -> str:
        if not isinstance(value, (Base64, _LongText)):
            raise TypeError(f"{type(value).__name__} is not JSON serializable")
        blobs.append(value)
        return f"{marker}{len(blobs) - 1:08d}"

    data = json.dumps(
        document, ensure_ascii=ascii_only, separators=(",", ":"), default=placeholder
    ).encode("ascii" if ascii_only else "utf-8")
    if not blobs:
        return Body((data,))
    pieces = data.split(b'"' + marker.encode("ascii"))
    out: list[bytes | Base64] = [pieces[0]]
    for piece in pieces[1:]:
        blob = blobs[int(piece[:8])]
        out.append(b'"')
        if isinstance(blob, Base64):
            out.append(blob)
        else:
            out += _text_pieces(blob.text, ascii_only)
        out.append(piece[8:])
    return Body(out)


def encode_json(document: object) -> bytes:
    """
    Encode C{document} as compact UTF-8 JSON (RFC 8259), as one bytes
    object: L{encode_body}, joined.

    @param document: JSON-compatible data, plus L{Base64} values.
    @return: The encoded document.
    """
    body = encode_body(document)
    if len(body.pieces) == 1:
        only = body.pieces[0]
        assert isinstance(only, bytes)
        return only
    return bytes(body)
