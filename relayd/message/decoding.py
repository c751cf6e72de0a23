# -*- test-case-name: tests.message.test_decoding -*-
"""
Bytes to text: charsets, Content-Transfer-Encodings (RFC 2045 section 6),
encoded words (RFC 2047), parameter values (RFC 2231) and 8-bit header
values (RFC 6532).  Nothing in this module raises on bad input.

Charset fallback rule
=====================

Bytes are turned into text (bodies, encoded words of RFC 2047, 8-bit header
values of RFC 6532) in this order:

  1. The declared charset, decoded strictly.  A label is first mapped to
     the superset that the WHATWG Encoding Standard uses for it
     (C{us-ascii} to UTF-8, C{iso-8859-1} to C{windows-1252}, C{gb2312} and
     C{gbk} to C{gb18030}, C{shift_jis} to C{cp932}, C{euc-kr} to C{cp949},
     C{tis-620} to C{cp874}, C{big5} to C{big5hkscs}, C{iso-8859-9} to
     C{windows-1254}).  Labels Python's C{codecs} module does not know, and
     codecs that are not charsets (C{base64}, C{rot13}, C{idna},
     C{unicode_escape}...), count as no declared charset.
  2. UTF-8, decoded strictly.
  3. The declared charset (if any and not UTF-8) with C{errors="replace"}.
  4. C{windows-1252} with C{errors="replace"}.

8-bit header values have no declared charset, so they are UTF-8 or else
C{windows-1252}.

Header values
=============

Every header value that reaches an output field is unfolded (RFC 5322
section 2.2.3) and then has any remaining CR, LF and NUL replaced by a
space.
"""

from __future__ import annotations

import binascii
import codecs
import functools
import re
import sys
from email.message import Message

__all__ = [
    "PASSTHROUGH_MIN",
    "UNSAFE",
    "body_text",
    "canonical_base64",
    "clean_base64_length",
    "clean_filename",
    "content_param",
    "decode_base64",
    "decode_body",
    "decode_text",
    "decode_words",
    "header_text",
    "unfold",
]

# ---------------------------------------------------------------------------
# Charsets

# Labels Python does not know, mapped to a codec name it does.
_LABELS = {
    "windows-874": "cp874",
    "x-sjis": "cp932",
    "x-mac-roman": "mac_roman",
    "x-unicode-2-0-utf-8": "utf-8",
}

# Python codec name -> the superset the WHATWG Encoding Standard decodes
# that label with (https://encoding.spec.whatwg.org/#names-and-labels).
_SUPERSETS = {
    "ascii": "utf-8",
    "iso8859-1": "cp1252",
    "iso8859-9": "cp1254",
    "iso8859-11": "cp874",
    "tis-620": "cp874",
    "gb2312": "gb18030",
    "gbk": "gb18030",
    "shift_jis": "cp932",
    "euc_kr": "cp949",
    "big5": "big5hkscs",
}

# Text codecs that are not charsets.
_NOT_CHARSETS = frozenset(
    {
        "idna",
        "punycode",
        "raw-unicode-escape",
        "unicode-escape",
        "undefined",
        "mbcs",
        "oem",
    }
)


@functools.lru_cache(maxsize=256)
def _codec_name(label: str) -> str | None:
    """
    Find the codec for a charset label.

    @param label: A charset label from a message (RFC 2046 section 4.1.2,
        RFC 2231 section 5), in any case, possibly quoted or followed by a
        C{*language} suffix (RFC 2231 section 5).
    @return: A Python codec name, or C{None} when the label names no
        charset Python knows.
    """
    label = label.strip().strip("\"'").split("*", 1)[0].strip().lower()
    if not label:
        return None
    label = _LABELS.get(label, label)
    try:
        info = codecs.lookup(label)
    except (LookupError, ValueError):
        return None
    name = info.name
    if not getattr(info, "_is_text_encoding", True) or name in _NOT_CHARSETS:
        return None
    return _SUPERSETS.get(name, name)


def decode_text(data: bytes | memoryview, charset: str | None) -> str:
    """
    Turn bytes into text by the charset fallback rule of this module's
    docstring: declared charset, UTF-8, declared charset with replacement,
    windows-1252 with replacement.  Never raises.

    @param data: The bytes (or a view of them: nothing is copied).
    @param charset: The declared charset label, or C{None}.
    @return: The text.
    """
    codec = _codec_name(charset) if charset else None
    if codec is not None:
        try:
            return str(data, codec)
        except (UnicodeError, LookupError):
            pass
    if codec != "utf-8":
        try:
            return str(data, "utf-8")
        except UnicodeDecodeError:
            pass
    if codec is not None and codec != "utf-8":
        try:
            return str(data, codec, "replace")
        except (UnicodeError, LookupError):
            pass
    return str(data, "cp1252", "replace")


# ---------------------------------------------------------------------------
# Content-Transfer-Encoding (RFC 2045 section 6)

_BASE64_ALPHABET = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")
_NOT_BASE64 = bytes(c for c in range(256) if c not in _BASE64_ALPHABET)


def decode_base64(data: bytes | memoryview) -> bytes:
    """
    Decode base64 (RFC 2045 section 6.8) leniently: characters outside the
    alphabet are ignored, missing padding is supplied and a final lone
    character (which holds less than one octet) is dropped.

    @param data: The encoded bytes (or a view of them).
    @return: The decoded bytes.
    """
    try:
        return binascii.a2b_base64(data)
    except binascii.Error:
        pass
    cleaned = bytes(data).translate(None, _NOT_BASE64)
    rest = len(cleaned) % 4
    if rest == 1:
        cleaned = cleaned[:-1]
    elif rest:
        cleaned += b"=" * (4 - rest)
    return binascii.a2b_base64(cleaned)


# What base64 bodies are made of (RFC 2045 section 6.8).
_BASE64_LINES = bytes(_BASE64_ALPHABET) + b"=\r\n"


def _decodes(data: bytes | memoryview, charset: str | None) -> bool:
    """
    Tell whether bytes are valid text in their declared charset or UTF-8.

    @param data: The bytes.
    @param charset: The declared charset label, or C{None}.
    @return: C{True} when step 1 or 2 of the charset fallback rule
        succeeds.
    """
    for codec in (_codec_name(charset) if charset else None, "utf-8"):
        if codec is not None:
            try:
                str(data, codec)
            except (UnicodeError, LookupError):
                continue
            return True
    return False


# Base64 parts at least this large (bytes) are passed on encoded.
PASSTHROUGH_MIN = 64 * 1024
_BASE64_PADDED = bytes(_BASE64_ALPHABET) + b"="


def canonical_base64(body: bytes) -> bytes | None:
    """
    The base64 body of a part without its line breaks, when it is clean:
    only the alphabet, padding only at the end, a multiple of 4 long.

    @param body: The part's body as in the message.
    @return: The base64 text, or C{None} when it must be decoded leniently.
    """
    text = body.translate(None, b"\r\n")
    if len(text) % 4 or text.translate(None, _BASE64_PADDED):
        return None
    pad = text.find(b"=")
    if pad != -1 and (pad < len(text) - 2 or text[pad:] not in (b"=", b"==")):
        return None
    return text


def clean_base64_length(buf: bytes, start: int, end: int) -> int | None:
    """
    Tell whether a part's base64 body is clean, as L{canonical_base64}
    does, where it lies in the message: nothing as large as the part is
    copied.

    @param buf: The message.
    @param start: Offset of the body's first octet in C{buf}.
    @param end: Offset just past its last octet.
    @return: The length of the base64 text without line breaks, or C{None}
        when the body must be decoded leniently.
    """
    # One pass per slice: what is left once the alphabet and "=" are taken
    # out must be line breaks only, and is small (2 octets a line).
    length = 0
    for pos in range(start, end, _CHECK_CHUNK):
        piece = buf[pos : min(pos + _CHECK_CHUNK, end)]
        breaks = piece.translate(None, _BASE64_PADDED)
        if breaks.translate(None, b"\r\n"):
            return None
        length += len(piece) - len(breaks)
    if length % 4:
        return None
    # Padding only at the end: "=" or "==" (RFC 4648 section 4), line
    # breaks aside.
    first = buf.find(b"=", start, end)
    if first == -1:
        return length
    last = buf.find(b"=", first + 1, end)
    if last == -1:
        last = first
    elif buf.find(b"=", last + 1, end) != -1 or not _LINE_BREAKS.fullmatch(buf, first + 1, last):
        return None
    if not _LINE_BREAKS.fullmatch(buf, last + 1, end):
        return None
    return length


# Octets checked at once by clean_base64_length.
_CHECK_CHUNK = 1024 * 1024
_LINE_BREAKS = re.compile(rb"[\r\n]*")


def decode_body(body: bytes | memoryview, encoding: str) -> bytes:
    """
    Undo a Content-Transfer-Encoding.

    @param body: The body bytes as they are in the message (or a view of
        them).
    @param encoding: The Content-Transfer-Encoding value (any case).
    @return: The decoded bytes; for C{7bit}, C{8bit}, C{binary} and
        encodings not known, C{body} itself (as bytes).
    """
    encoding = encoding.strip().lower()
    if encoding == "base64":
        return decode_base64(body)
    if encoding == "quoted-printable":
        return binascii.a2b_qp(body)
    return body if isinstance(body, bytes) else bytes(body)


# ---------------------------------------------------------------------------
# Header values

_FOLD = re.compile(r"(?:\r\n|\r|\n)(?=[ \t])")
UNSAFE = {ord("\r"): " ", ord("\n"): " ", 0: " "}
_ENCODED_WORD = re.compile(r"=\?([^?\s]*)\?([bBqQ])\?([^?]*)\?=")


def unfold(value: str) -> str:
    """
    Unfold a header value (RFC 5322 section 2.2.3) and replace any CR, LF
    or NUL still in it by a space.

    @param value: A header value, possibly folded.
    @return: One line without CR, LF or NUL, stripped of outer whitespace.
    """
    return _FOLD.sub("", value).translate(UNSAFE).strip()


def header_text(raw: str) -> str:
    """
    Turn a header value as the parser holds it into text.

    The C{compat32} parser holds octets above 127 as lone surrogates; they
    are decoded as RFC 6532 UTF-8 (else windows-1252).

    @param raw: The value from C{Message.raw_items}.
    @return: The unfolded text, without CR, LF or NUL.
    """
    if not raw.isascii():
        try:
            octets = raw.encode("ascii", "surrogateescape")
        except UnicodeEncodeError:
            # Already text (a value set by _repair_8bit).
            pass
        else:
            raw = decode_text(octets, None)
    return unfold(raw)


def decode_words(value: str) -> str:
    """
    Decode RFC 2047 encoded words.

    Adjacent encoded words in the same charset are joined before decoding
    (clients split multi-octet characters across words) and whitespace
    between encoded words is dropped (RFC 2047 section 6.2).  The scan is
    linear in the length of C{value}.

    @param value: An unfolded header value.
    @return: The decoded text.
    """
    if "=?" not in value:
        return value
    out: list[str] = []
    pending = b""
    pending_charset: str | None = None
    last = 0
    for match in _ENCODED_WORD.finditer(value):
        between = value[last : match.start()]
        if not (pending_charset is not None and between.strip(" \t") == ""):
            if pending_charset is not None:
                out.append(decode_text(pending, pending_charset))
                pending, pending_charset = b"", None
            out.append(between)
        charset, kind, encoded = match.groups()
        raw = encoded.encode("utf-8", "surrogateescape")
        if kind in "bB":
            word = decode_base64(raw)
        else:
            word = binascii.a2b_qp(raw, header=True)
        charset = charset.lower()
        if pending_charset is not None and charset != pending_charset:
            out.append(decode_text(pending, pending_charset))
            pending = b""
        pending += word
        pending_charset = charset
        last = match.end()
    if pending_charset is not None:
        out.append(decode_text(pending, pending_charset))
    out.append(value[last:])
    return "".join(out).translate(UNSAFE)


# ---------------------------------------------------------------------------
# Parameters (RFC 2231) and file names


def content_param(headers: Message, name: str) -> str:
    """
    One Content-Type parameter as text.

    @param headers: Parsed header fields.
    @param name: The parameter name.
    @return: Its value (RFC 2231 decoded), or C{""}.
    """
    value = headers.get_param(name)
    if value is None:
        return ""
    if isinstance(value, tuple):
        return str(value[2])
    return str(value)


def clean_filename(name: str) -> str:
    """
    Decode and tidy a file name from a Content-Disposition or Content-Type
    parameter (RFC 2183 section 2.3).

    @param name: The parameter value (RFC 2231 already applied).
    @return: The base name, encoded words (RFC 2047) decoded, without
        control characters; C{""} when nothing usable remains.
    """
    name = decode_words(unfold(name))
    name = name.replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(c for c in name if c >= " " and c != "\x7f").strip()
    return "" if name in (".", "..") else name


# ---------------------------------------------------------------------------
# Bodies


def body_text(raw: bytes | memoryview, encoding: str, charset: str | None) -> str:
    """
    Decode a text or HTML body part into the text of a body field.

    A part that declares base64 (RFC 2045 section 6.8) but holds characters
    no encoder writes, and whose decoding gives no valid text, is plain text
    the client mislabelled: its bytes are taken as they are.

    @param raw: The part's body as in the message, still transfer-encoded
        (or a view of it: a 7bit, 8bit or binary body is decoded from the
        view, without a copy).
    @param encoding: Its Content-Transfer-Encoding (any case).
    @param charset: Its declared charset label, or C{None}.
    @return: The text by the charset fallback rule, line ends LF.
    """
    kind = encoding.strip().lower()
    content: bytes | memoryview
    if kind == "base64":
        raw = bytes(raw)
        content = decode_base64(raw)
        if raw.translate(None, _BASE64_LINES) and raw.isascii() and not _decodes(content, charset):
            content = raw
    elif kind == "quoted-printable":
        content = binascii.a2b_qp(raw)
    else:
        content = raw
    if len(content) <= TEXT_SLICE:
        text = decode_text(content, charset)
        return text.replace("\r\n", "\n").replace("\r", "\n")
    return "".join(_lf_pieces(_decode_pieces(content, charset)))


#: Octets of a large body decoded (and characters given LF line ends) at
#: once by L{body_text}: each C call over a slice is short, so the
#: interpreter can switch threads between slices (C{sys.getswitchinterval},
#: 5 ms) instead of a worker thread holding the GIL for the whole text (tens
#: of milliseconds for 24 MB), which would stall the reactor thread.
TEXT_SLICE = 256 * 1024


@functools.lru_cache(maxsize=64)
def _sliceable(codec: str) -> bool:
    """
    Tell whether an incremental decoder of C{codec} gives, slice by slice,
    the text and the errors of one whole decode: UTF-8 and the single-octet
    charsets (a decoding table: each octet one character).  Others (UTF-16
    without a byte order mark, for one) are decoded whole.

    @param codec: A Python codec name (L{_codec_name}).
    """
    if codec == "utf-8":
        return True
    module = sys.modules.get(codecs.lookup(codec).incrementaldecoder.__module__)
    return isinstance(getattr(module, "decoding_table", None), str)


def _sliced(data: bytes | memoryview, codec: str, errors: str = "strict") -> list[str]:
    """
    Decode C{data} in slices of L{TEXT_SLICE} octets with an incremental
    decoder (a character cut at a slice edge is held over to the next).

    @return: The text in pieces; joined, C{str(data, codec, errors)}.
    @raise UnicodeError: As C{str(data, codec, errors)} would.
    @raise LookupError: When C{codec} has no incremental decoder.
    """
    decoder = codecs.getincrementaldecoder(codec)(errors)
    view = memoryview(data)
    end = len(view)
    pieces = [
        decoder.decode(view[pos : pos + TEXT_SLICE], pos + TEXT_SLICE >= end)
        for pos in range(0, end, TEXT_SLICE)
    ]
    return pieces


def _decode_pieces(data: bytes | memoryview, charset: str | None) -> list[str]:
    """
    L{decode_text}, in pieces of about L{TEXT_SLICE} characters: the same
    text, joined.

    UTF-8 and the single-octet charsets (L{_sliceable}) are decoded in
    slices; a body declared in another charset is decoded whole.
    """
    codec = _codec_name(charset) if charset else None
    if codec is not None and not _sliceable(codec):
        return [decode_text(data, charset)]
    strict = [codec] if codec is not None else []
    if codec != "utf-8":
        strict.append("utf-8")
    for name in strict:
        try:
            return _sliced(data, name)
        except (UnicodeError, LookupError):
            pass
    if codec is not None and codec != "utf-8":
        return _sliced(data, codec, "replace")
    return _sliced(data, "cp1252", "replace")


def _lf_pieces(pieces: list[str]) -> list[str]:
    """
    Turn CR LF and lone CR into LF in text given in pieces, a piece at a
    time; a CR that ends a piece waits for the next (it may be the CR of a
    CR LF cut in two).

    @return: The pieces of the text with LF line ends (one per piece, some
        possibly empty).
    """
    out: list[str] = []
    carry = ""
    for piece in pieces:
        piece = carry + piece if carry else piece
        carry = ""
        if piece.endswith("\r"):
            piece, carry = piece[:-1], "\r"
        out.append(piece.replace("\r\n", "\n").replace("\r", "\n"))
    if carry:
        out.append("\n")
    return out
