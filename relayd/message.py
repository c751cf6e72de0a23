# -*- test-case-name: tests.test_message -*-
"""
RFC 5322 / MIME parsing and the header policy: the bytes of one message in,
a typed L{OutboundMessage} out.  No Twisted here.

How a message is read
=====================

L{parse_message} takes the message as received after the final dot of SMTP
DATA (RFC 5321 section 4.1.1.4): CRLF line ends, dot-stuffing removed.  Bare
LF line ends are accepted as well.  Each MIME entity is read once:

  - its header section is found by scanning lines the way the standard
    library's C{email.feedparser} does (a line that is empty, or that is
    neither a header field nor a continuation, ends it) and only that
    section is parsed, with C{email.parser.BytesParser} and the C{compat32}
    policy.  The C{compat32} policy keeps values as the client sent them, so
    only what becomes an output field is decoded (measured: about ten times
    faster than C{policy.default} on a 1 KB message);
  - a multipart body is cut into its body parts by finding the delimiter
    lines (RFC 2046 section 5.1.1) with C{bytes.find}, on byte offsets into
    the received data, so that no line-by-line Python loop runs over bodies.
    A part's bytes are copied only when the part is decoded.

Unrecognised multipart subtypes are read as C{multipart/mixed} (RFC 2046
section 5.1.7).  A C{multipart/*} entity without a boundary, or whose body
holds no delimiter line, is read as C{text/plain}: its body text is passed on
rather than lost.  C{message/*} entities are never parsed: they travel as
attachments holding their bytes as received (after undoing a
Content-Transfer-Encoding, which RFC 2046 section 5.2.1 forbids but some
clients apply).

Bodies
======

The first C{text/plain} and the first C{text/html} part that is not
C{Content-Disposition: attachment} become L{OutboundMessage.text} and
L{OutboundMessage.html}.  Once the first of them is found, another text or
HTML part fills the other field only when it lies inside the same outermost
C{multipart/alternative} as the first; further alternatives of an already
filled type are dropped (they are renderings of the same body); any other
text or HTML part becomes an attachment.  Line ends of bodies are
normalised to LF.

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
C{windows-1252}.  Nothing in this chain raises.

Headers
=======

Subject and display names are decoded from RFC 2047 encoded words (also
inside quoted strings, as many clients write them).  Address lists are read
with C{email.utils.getaddresses} (groups of RFC 5322 section 3.4, quoted
local parts, UTF-8 local parts and IDN domains of RFC 6532); entries
without a local part and a domain are dropped.  Addresses keep the domain
as written; the bcc comparison folds case and decodes C{xn--} labels.

Kept headers (L{HeadersConfig.keep}) travel with their value as the client
wrote it (encoded words included, since they are re-emitted into a
message), only unfolded.  Every header value that reaches an output field
is unfolded (RFC 5322 section 2.2.3) and then has any remaining CR, LF and
NUL replaced by a space.

Limits
======

The header sections of all entities together may hold at most
L{MAX_HEADER_BYTES} bytes, the address fields at most L{MAX_ADDRESS_BYTES};
a message may have at most L{MAX_PARTS} MIME entities, multiparts nested at
most L{MAX_DEPTH} deep.  Beyond that the message is rejected with
C{550 5.6.0}.  With those limits the work per message is linear in its
size, and bounded for the parts that cost more per byte (the Python-level
address parser, one scan of a body per level of nesting).
"""

from __future__ import annotations

import binascii
import codecs
import functools
import mimetypes
import re
from collections.abc import Callable, Iterable
from email.message import Message
from email.parser import BytesParser
from email.policy import compat32
from email.utils import getaddresses
from urllib.parse import unquote

from attrs import field, frozen

from relayd.config import HeadersConfig
from relayd.reply import Refused, Reply

__all__ = [
    "MAX_ADDRESS_BYTES",
    "MAX_DEPTH",
    "MAX_HEADER_BYTES",
    "MAX_PARTS",
    "Attachment",
    "Envelope",
    "OutboundMessage",
    "decode_text",
    "parse_message",
]

#: Most bytes of header sections, summed over all MIME entities.
MAX_HEADER_BYTES = 256 * 1024

#: Most MIME entities (the message itself, multiparts and leaves).
MAX_PARTS = 1000

#: Deepest nesting of multipart entities.
MAX_DEPTH = 16

#: Most bytes of the From, Sender, To, Cc and Reply-To fields together.
MAX_ADDRESS_BYTES = 128 * 1024


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
    @ivar encoded: For large parts that arrived as clean base64 (RFC 2045
        section 6.8), that base64 without line breaks, and C{content} is
        empty: the upstream wants base64 anyway, so the part is neither
        decoded nor encoded again.  Use L{payload} or L{base64} rather
        than C{content} directly.
    """

    filename: str
    content_type: str
    content: bytes
    content_id: str | None = None
    inline: bool = False
    charset: str | None = None
    encoded: bytes | None = field(default=None, repr=False)

    def payload(self) -> bytes:
        """
        @return: The decoded bytes of the part.
        """
        if self.encoded is not None:
            return binascii.a2b_base64(self.encoded)
        return self.content

    def base64(self) -> bytes:
        """
        @return: The part as base64 without line breaks (RFC 4648 section 4).
        """
        if self.encoded is not None:
            return self.encoded
        return binascii.b2a_base64(self.content, newline=False)


@frozen
class OutboundMessage:
    """
    One message as the upstream API should receive it.

    Addresses are formatted RFC 5322 mailboxes (C{"Name <a@example.com>"}),
    decoded to Unicode; header values never contain CR, LF or NUL.

    @ivar envelope: The transaction's envelope, as given.
    @ivar from_: The first mailbox of the From header field.
    @ivar sender_address: The addr-spec of L{from_}.
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
    sender: str | None = None


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


def decode_text(data: bytes, charset: str | None) -> str:
    """
    Turn bytes into text by the charset fallback rule of this module's
    docstring: declared charset, UTF-8, declared charset with replacement,
    windows-1252 with replacement.  Never raises.

    @param data: The bytes.
    @param charset: The declared charset label, or C{None}.
    @return: The text.
    """
    codec = _codec_name(charset) if charset else None
    if codec is not None:
        try:
            return data.decode(codec)
        except (UnicodeError, LookupError):
            pass
    if codec != "utf-8":
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            pass
    if codec is not None and codec != "utf-8":
        try:
            return data.decode(codec, "replace")
        except (UnicodeError, LookupError):
            pass
    return data.decode("cp1252", "replace")


# ---------------------------------------------------------------------------
# Content-Transfer-Encoding (RFC 2045 section 6)

_BASE64_ALPHABET = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")
_NOT_BASE64 = bytes(c for c in range(256) if c not in _BASE64_ALPHABET)


def _decode_base64(data: bytes) -> bytes:
    """
    Decode base64 (RFC 2045 section 6.8) leniently: characters outside the
    alphabet are ignored, missing padding is supplied and a final lone
    character (which holds less than one octet) is dropped.

    @param data: The encoded bytes.
    @return: The decoded bytes.
    """
    try:
        return binascii.a2b_base64(data)
    except binascii.Error:
        pass
    cleaned = data.translate(None, _NOT_BASE64)
    rest = len(cleaned) % 4
    if rest == 1:
        cleaned = cleaned[:-1]
    elif rest:
        cleaned += b"=" * (4 - rest)
    return binascii.a2b_base64(cleaned)


# What base64 bodies are made of (RFC 2045 section 6.8).
_BASE64_LINES = bytes(_BASE64_ALPHABET) + b"=\r\n"


def _decodes(data: bytes, charset: str | None) -> bool:
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
                data.decode(codec)
            except (UnicodeError, LookupError):
                continue
            return True
    return False


# Base64 parts at least this large (bytes) are passed on encoded.
PASSTHROUGH_MIN = 64 * 1024
_BASE64_PADDED = bytes(_BASE64_ALPHABET) + b"="


def _canonical_base64(body: bytes) -> bytes | None:
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


def _decode_body(body: bytes, encoding: str) -> bytes:
    """
    Undo a Content-Transfer-Encoding.

    @param body: The body bytes as they are in the message.
    @param encoding: The Content-Transfer-Encoding value (any case).
    @return: The decoded bytes; for C{7bit}, C{8bit}, C{binary} and
        encodings not known, C{body} itself.
    """
    encoding = encoding.strip().lower()
    if encoding == "base64":
        return _decode_base64(body)
    if encoding == "quoted-printable":
        return binascii.a2b_qp(body)
    return body


# ---------------------------------------------------------------------------
# Header values

_FOLD = re.compile(r"(?:\r\n|\r|\n)(?=[ \t])")
_UNSAFE = {ord("\r"): " ", ord("\n"): " ", 0: " "}
_ENCODED_WORD = re.compile(r"=\?([^?\s]*)\?([bBqQ])\?([^?]*)\?=")
_WHITESPACE = re.compile(r"[ \t]+")


def _unfold(value: str) -> str:
    """
    Unfold a header value (RFC 5322 section 2.2.3) and replace any CR, LF
    or NUL still in it by a space.

    @param value: A header value, possibly folded.
    @return: One line without CR, LF or NUL, stripped of outer whitespace.
    """
    return _FOLD.sub("", value).translate(_UNSAFE).strip()


def _header_text(raw: str) -> str:
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
    return _unfold(raw)


def _decode_words(value: str) -> str:
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
            word = _decode_base64(raw)
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
    return "".join(out).translate(_UNSAFE)


def _printable(text: str, limit: int = 64) -> str:
    """
    Make text safe to quote in an SMTP reply: printable ASCII, bounded.

    @param text: Text from the message.
    @param limit: The most characters kept.
    @return: C{text} with every other character replaced by C{?}.
    """
    cut = text[:limit]
    safe = "".join(c if " " <= c <= "~" else "?" for c in cut)
    return safe + ("..." if len(text) > limit else "")


# ---------------------------------------------------------------------------
# Addresses

_SPECIALS = frozenset('()<>[]:;@\\,."')


def _format_mailbox(name: str, address: str) -> str:
    """
    Format one mailbox as C{Name <address>} (RFC 5322 section 3.4).

    @param name: The decoded display name, possibly empty.
    @param address: The addr-spec.
    @return: C{address} alone when there is no name; the name is quoted
        when it holds specials; non-ASCII is kept (RFC 6532).
    """
    if not name:
        return address
    if any(c in _SPECIALS for c in name):
        name = '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return f"{name} <{address}>"


def _mailboxes(values: list[str]) -> list[tuple[str, str]]:
    """
    Read address-list header values.

    @param values: Raw values of every field of one name (To, Cc...).
    @return: C{(display name, addr-spec)} for every entry that has a local
        part and a domain, in order; display names decoded.
    """
    if not values:
        return []
    texts = [_header_text(v) for v in values]
    try:
        pairs = getaddresses(texts)
    except RecursionError:
        # Deeply nested comments or groups: nothing usable.
        return []
    result: list[tuple[str, str]] = []
    for name, address in pairs:
        address = address.translate(_UNSAFE).strip()
        local, _, domain = address.rpartition("@")
        if not local or not domain or any(c in " \t" for c in domain):
            continue
        name = _WHITESPACE.sub(" ", _decode_words(name)).strip()
        result.append((name, address))
    return result


def address_key(address: str) -> str:
    """
    The form addresses are compared in: case folded, angle brackets and a
    trailing dot of the domain removed, C{xn--} labels decoded (RFC 5890).

    @param address: An addr-spec.
    @return: The comparison key.
    """
    address = address.strip().strip("<>")
    local, _, domain = address.rpartition("@")
    labels = []
    for label in domain.lower().rstrip(".").split("."):
        if label.startswith("xn--"):
            try:
                label = label[4:].encode("ascii").decode("punycode")
            except (UnicodeError, ValueError):
                pass
        labels.append(label)
    return local.lower() + "@" + ".".join(labels).lower()


# ---------------------------------------------------------------------------
# MIME structure

_PARSER = BytesParser(policy=compat32)
_EOL = re.compile(rb"\r\n|\r|\n")
# email.feedparser.headerRE: what a header field or continuation line
# starts with.
_HEADER_LINE = re.compile(rb"From |[\041-\071\073-\176]*:|[\t ]")
_DELIMITER_TAIL = re.compile(rb"(--)?[ \t]*(?:\r\n|\r|\n|\Z)")
_MEDIA_TYPE = re.compile(r"[a-z0-9!#$&^_.+-]+/[a-z0-9!#$&^_.+-]+")
_TOKEN = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`{|}~-]+")
_CID_REFERENCE = re.compile(r"cid:([^\s\"'<>()]+)", re.IGNORECASE)

_RAW_ONLY_TYPES = frozenset(
    {
        "multipart/signed",
        "multipart/encrypted",
        "application/pkcs7-mime",
        "application/x-pkcs7-mime",
    }
)

# Extensions for generated file names, before mimetypes is asked.
_EXTENSIONS = {
    "application/octet-stream": ".bin",
    "application/pgp-encrypted": ".pgp",
    "application/pgp-signature": ".asc",
    "application/pkcs7-mime": ".p7m",
    "application/pkcs7-signature": ".p7s",
    "application/x-pkcs7-mime": ".p7m",
    "application/x-pkcs7-signature": ".p7s",
    "application/vnd.openxmlformats-officedocument.presentationml.presentation": ".pptx",
    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet": ".xlsx",
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document": ".docx",
    "application/x-zip-compressed": ".zip",
    "image/jpg": ".jpg",
    "message/delivery-status": ".txt",
    "message/global": ".eml",
    "message/rfc822": ".eml",
    "text/calendar": ".ics",
    "text/plain": ".txt",
    "text/rfc822-headers": ".txt",
    "text/vcard": ".vcf",
}

# The built-in table only: the system's mime.types files differ between
# hosts, and generated names should not.
_MIME_TYPES = mimetypes.MimeTypes()


def _extension(content_type: str) -> str:
    """
    The file name extension for a media type.

    @param content_type: C{maintype/subtype}, lower case.
    @return: For example C{".pdf"}; C{".bin"} when none is known.
    """
    known = _EXTENSIONS.get(content_type)
    if known is None:
        known = _MIME_TYPES.guess_extension(content_type) or ".bin"
    return known


def _clean_filename(name: str) -> str:
    """
    Decode and tidy a file name from a Content-Disposition or Content-Type
    parameter.

    @param name: The parameter value (RFC 2231 already applied).
    @return: The base name, encoded words decoded, without control
        characters; C{""} when nothing usable remains.
    """
    name = _decode_words(_unfold(name))
    name = name.replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(c for c in name if c >= " " and c != "\x7f").strip()
    return "" if name in (".", "..") else name


class _Entity:
    """
    One MIME entity: parsed header fields and where its body is.

    @ivar headers: The header section, parsed without its body.
    @ivar buf: The bytes the body is in.
    @ivar start: Offset of the body's first octet in C{buf}.
    @ivar end: Offset just past the body's last octet.
    @ivar depth: How many multiparts enclose it.
    @ivar alternatives: Ids of the enclosing C{multipart/alternative}
        entities, outermost first.
    """

    __slots__ = ("headers", "buf", "start", "end", "depth", "alternatives")

    def __init__(
        self,
        headers: Message,
        buf: bytes,
        start: int,
        end: int,
        depth: int,
        alternatives: tuple[int, ...],
    ) -> None:
        self.headers = headers
        self.buf = buf
        self.start = start
        self.end = end
        self.depth = depth
        self.alternatives = alternatives

    def body(self) -> bytes:
        """
        @return: A copy of the body bytes, still transfer-encoded.
        """
        return self.buf[self.start : self.end]


def _header_end(buf: bytes, start: int, end: int, limit: int) -> tuple[int, int]:
    """
    Find where an entity's header section ends, by the rules of
    C{email.feedparser}: at the first empty line (which is skipped) or at
    the first line that is neither a header field nor a continuation line
    (which starts the body).  CRLF, LF and bare CR all end lines.

    @param buf: The bytes.
    @param start: Offset of the entity's first octet.
    @param end: Offset just past its last octet.
    @param limit: Stop scanning once the section is longer than this many
        bytes.
    @return: C{(end of header section, start of body)}.
    """
    pos = start
    while pos < end:
        if pos - start > limit:
            return pos, pos
        eol = _EOL.search(buf, pos, end)
        if eol is not None and eol.start() == pos:
            return pos, eol.end()
        if _HEADER_LINE.match(buf, pos, end) is None:
            return pos, pos
        pos = end if eol is None else eol.end()
    return end, end


def _repair_8bit(headers: Message) -> None:
    """
    Decode octets above 127 in an entity's header values (RFC 6532 UTF-8, else
    windows-1252), so that parameters such as file names read as text
    rather than as replacement characters.

    @param headers: Parsed header fields; changed in place.
    """
    items = list(headers.raw_items())
    if all(value.isascii() for _, value in items):
        return
    for name in set(headers.keys()):
        del headers[name]
    for name, value in items:
        if not value.isascii():
            value = decode_text(value.encode("ascii", "surrogateescape"), None)
        headers[name] = value


def _find_delimiters(
    buf: bytes, start: int, end: int, boundary: bytes, limit: int
) -> list[tuple[int, int]]:
    """
    Cut a multipart body into its body parts (RFC 2046 section 5.1.1).

    A delimiter line is C{--boundary} at the start of a line, optionally
    followed by C{--} (the close delimiter) and by spaces or tabs, then the
    end of the line, as C{email.feedparser} reads it.  The line end before
    a delimiter belongs to it.  Text before the first delimiter (preamble)
    and after the close delimiter (epilogue) is ignored; without a close
    delimiter the last part runs to the end of the body.

    @param buf: The bytes.
    @param start: Offset of the body's first octet (the start of a line).
    @param end: Offset just past its last octet.
    @param boundary: The boundary parameter, as bytes.
    @param limit: Stop after this many parts (the caller rejects).
    @return: C{(start, end)} offsets of every body part, at most C{limit};
        empty when there is no delimiter line.
    """
    marker = b"--" + boundary
    parts: list[tuple[int, int]] = []
    part_start = -1
    pos = start
    misses = 0
    pattern = None
    while True:
        if pattern is None:
            at = buf.find(marker, pos, end)
            if at < 0:
                break
            tail = _DELIMITER_TAIL.match(buf, at + len(marker), end)
            if tail is None or (at > start and buf[at - 1] not in b"\r\n"):
                pos = at + 1
                misses += 1
                if misses > 64:
                    # Many near misses: let the regular expression engine
                    # skip them instead of this loop.
                    pattern = re.compile(
                        re.escape(marker)
                        + rb"(?<![^\r\n]"
                        + re.escape(marker)
                        + rb")"
                        + _DELIMITER_TAIL.pattern
                    )
                continue
            line_end = tail.end()
            closing = tail.group(1) is not None
        else:
            found = pattern.search(buf, pos, end)
            if found is None:
                break
            at = found.start()
            line_end = found.end()
            closing = found.group(1) is not None
        if part_start >= 0:
            part_end = at
            if part_end > part_start and buf[part_end - 1] == 0x0A:
                part_end -= 1
                if part_end > part_start and buf[part_end - 1] == 0x0D:
                    part_end -= 1
            elif part_end > part_start and buf[part_end - 1] == 0x0D:
                part_end -= 1
            parts.append((part_start, part_end))
            if len(parts) >= limit:
                return parts
        if closing:
            return parts
        part_start = line_end
        pos = line_end
    if part_start >= 0:
        parts.append((part_start, end))
    return parts


class _Structure:
    """
    Walks the MIME tree of one message and collects its bodies and
    attachments.

    @ivar text: The text body, or C{None}.
    @ivar html: The HTML body, or C{None}.
    @ivar parts: Attachment candidates:
        C{(filename, content_type, content, content_id, disposition,
        charset)}.
    @ivar raw_only: A signed or encrypted entity was seen.
    """

    def __init__(self) -> None:
        self.text: str | None = None
        self.html: str | None = None
        self.parts: list[
            tuple[str, str, bytes, str | None, str | None, str | None, bytes | None]
        ] = []
        self.raw_only = False
        self._header_bytes = 0
        self._entities = 0
        self._alternatives = 0
        self._body_found = False
        self._body_alternative: int | None = None

    def read_entity(
        self,
        buf: bytes,
        start: int,
        end: int,
        depth: int,
        alternatives: tuple[int, ...],
        default_type: str = "text/plain",
    ) -> _Entity:
        """
        Parse the header section of one entity.

        @param buf: The bytes.
        @param start: Offset of the entity's first octet.
        @param end: Offset just past its last octet.
        @param depth: How many multiparts enclose it.
        @param alternatives: Ids of enclosing C{multipart/alternative}s.
        @param default_type: Its type when it has no Content-Type
            (RFC 2046 section 5.1.5 for C{multipart/digest}).
        @return: The entity.
        @raise relayd.reply.Refused: When a limit of this module is exceeded.
        """
        self._entities += 1
        if self._entities > MAX_PARTS:
            raise Refused(Reply(550, "5.6.0", f"Message has more than {MAX_PARTS} MIME parts"))
        if depth > MAX_DEPTH:
            raise Refused(
                Reply(
                    550,
                    "5.6.0",
                    f"MIME parts are nested more than {MAX_DEPTH} deep",
                )
            )
        header_end, body_start = _header_end(buf, start, end, MAX_HEADER_BYTES - self._header_bytes)
        self._header_bytes += header_end - start
        if self._header_bytes > MAX_HEADER_BYTES:
            raise Refused(
                Reply(
                    550,
                    "5.6.0",
                    f"Message headers are larger than {MAX_HEADER_BYTES} bytes",
                )
            )
        headers = _PARSER.parsebytes(buf[start:header_end], headersonly=True)
        if default_type != "text/plain":
            headers.set_default_type(default_type)
        return _Entity(headers, buf, body_start, end, depth, alternatives)

    def walk(self, top: _Entity) -> None:
        """
        Visit every entity under C{top}, depth first, in message order.

        @param top: The message's own entity.
        @raise relayd.reply.Refused: When a limit of this module is exceeded.
        """
        stack = [top]
        while stack:
            entity = stack.pop()
            headers = entity.headers
            _repair_8bit(headers)
            content_type = headers.get_content_type()
            if content_type in _RAW_ONLY_TYPES:
                self.raw_only = True
            maintype, _, subtype = content_type.partition("/")
            if maintype == "multipart":
                boundary = headers.get_boundary()
                spans = []
                if boundary:
                    spans = _find_delimiters(
                        entity.buf,
                        entity.start,
                        entity.end,
                        boundary.encode("utf-8", "surrogateescape"),
                        MAX_PARTS - self._entities + 1,
                    )
                if spans:
                    if self._entities + len(spans) > MAX_PARTS:
                        raise Refused(
                            Reply(
                                550,
                                "5.6.0",
                                f"Message has more than {MAX_PARTS} MIME parts",
                            )
                        )
                    alternatives = entity.alternatives
                    if subtype == "alternative":
                        self._alternatives += 1
                        alternatives += (self._alternatives,)
                    default = "message/rfc822" if subtype == "digest" else "text/plain"
                    children = [
                        self.read_entity(
                            entity.buf,
                            s,
                            e,
                            entity.depth + 1,
                            alternatives,
                            default,
                        )
                        for s, e in spans
                    ]
                    stack.extend(reversed(children))
                    continue
                if not entity.buf[entity.start : entity.end].strip():
                    continue
                content_type = "text/plain"
            self._leaf(entity, content_type)

    def _leaf(self, entity: _Entity, content_type: str) -> None:
        """
        Take one leaf entity as a body or an attachment.

        @param entity: The entity.
        @param content_type: Its media type, lower case.
        """
        headers = entity.headers
        disposition = headers.get_content_disposition()
        encoding = str(headers.get("content-transfer-encoding", ""))
        if content_type in ("text/plain", "text/html") and disposition != "attachment":
            slot = "text" if content_type == "text/plain" else "html"
            if not self._body_found:
                self._body_found = True
                if entity.alternatives:
                    self._body_alternative = entity.alternatives[0]
                self._set_body(slot, entity, encoding)
                return
            if self._body_alternative is not None and self._body_alternative in entity.alternatives:
                if getattr(self, slot) is None:
                    self._set_body(slot, entity, encoding)
                return
        media = _MEDIA_TYPE.match(content_type)
        clean_type = media.group() if media else "application/octet-stream"
        body = entity.body()
        encoded = None
        if len(body) >= PASSTHROUGH_MIN and encoding.strip().lower() == "base64":
            encoded = _canonical_base64(body)
        content = b"" if encoded is not None else _decode_body(body, encoding)
        filename = _clean_filename(headers.get_filename() or "")
        if not content and encoded is None and not filename:
            return
        if clean_type == "text/calendar":
            method = _TOKEN.search(_param(headers, "method"))
            if method:
                clean_type += "; method=" + method.group()
        charset = None
        if clean_type.startswith("text/"):
            label = _TOKEN.fullmatch(headers.get_content_charset() or "")
            charset = label.group().lower() if label else None
        content_id = _unfold(str(headers.get("content-id", ""))).strip("<> \t")
        self.parts.append(
            (filename, clean_type, content, content_id or None, disposition, charset, encoded)
        )

    def _set_body(self, slot: str, entity: _Entity, encoding: str) -> None:
        """
        Decode a body part into L{text} or L{html}.

        @param slot: C{"text"} or C{"html"}.
        @param entity: The part.
        @param encoding: Its Content-Transfer-Encoding.
        """
        raw = entity.body()
        content = _decode_body(raw, encoding)
        charset = entity.headers.get_content_charset()
        if (
            encoding.strip().lower() == "base64"
            and raw.translate(None, _BASE64_LINES)
            and raw.isascii()
            and not _decodes(content, charset)
        ):
            # Declared base64 but holds characters
            # no encoder writes, and decoding gave no valid text: the
            # client mislabelled plain text.
            content = raw
        text = decode_text(content, charset)
        setattr(self, slot, text.replace("\r\n", "\n").replace("\r", "\n"))


def _param(headers: Message, name: str) -> str:
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


def _attachments(structure: _Structure) -> tuple[Attachment, ...]:
    """
    Build the attachments: generated names and the inline flag.

    @param structure: The walked message.
    @return: The attachments in message order.
    """
    references = set()
    if structure.html and any(part[3] for part in structure.parts):
        references = {
            unquote(m).strip("<>").lower() for m in _CID_REFERENCE.findall(structure.html)
        }
    result: list[Attachment] = []
    for (
        filename,
        content_type,
        content,
        content_id,
        disposition,
        charset,
        encoded,
    ) in structure.parts:
        if not filename:
            base = content_type.split(";", 1)[0]
            filename = f"attachment-{len(result) + 1}{_extension(base)}"
        inline = content_id is not None and (
            disposition == "inline" or content_id.lower() in references
        )
        result.append(
            Attachment(
                filename=filename,
                content_type=content_type,
                content=content,
                content_id=content_id,
                inline=inline,
                charset=charset,
                encoded=encoded,
            )
        )
    return tuple(result)


# ---------------------------------------------------------------------------
# Header policy

# Represented by fields of OutboundMessage, never passed through, never
# reported as stripped.
_REPRESENTED = frozenset(
    {
        "from",
        "to",
        "cc",
        "reply-to",
        "subject",
        "sender",
        "mime-version",
        "content-type",
        "content-transfer-encoding",
        "content-disposition",
        "content-id",
    }
)
# Never passed through, whatever the policy keeps.
_NEVER_KEPT = frozenset({"bcc", "date"})


def _matcher(patterns: Iterable[str]) -> Callable[[str], bool]:
    """
    Compile header name patterns.

    @param patterns: Names, or prefixes ending in C{*}; any case.
    @return: A test of a lower-case header name.
    """
    exact = set()
    prefixes = []
    for pattern in patterns:
        pattern = pattern.strip().lower()
        if pattern.endswith("*"):
            prefixes.append(pattern[:-1])
        elif pattern:
            exact.add(pattern)
    starts = tuple(prefixes)
    return lambda name: name in exact or name.startswith(starts)


def _tags(values: list[str], policy: HeadersConfig) -> tuple[str, ...]:
    """
    Read tags from comma separated header values.

    @param values: Decoded header values, in message order.
    @param policy: The header policy (C{max_tags}, C{max_tag_length}).
    @return: Tags: trimmed, cut to C{max_tag_length} characters, empty
        ones dropped, duplicates dropped (first kept), at most C{max_tags}.
    """
    tags: list[str] = []
    for value in values:
        for item in value.split(","):
            tag = item.strip()[: policy.max_tag_length].strip()
            if tag and tag not in tags:
                if len(tags) >= policy.max_tags:
                    return tuple(tags)
                tags.append(tag)
    return tuple(tags)


def _add_name(names: list[str], seen: set[str], name: str) -> None:
    """
    Append a header name once, comparing case-insensitively.
    """
    key = name.lower()
    if key not in seen:
        seen.add(key)
        names.append(name)


def parse_message(data: bytes, envelope: Envelope, policy: HeadersConfig) -> OutboundMessage:
    """
    Read one message and apply the header policy.

    @param data: The message as received after SMTP DATA (RFC 5321 section
        4.1.1.4): CRLF (or LF) line ends, dot-stuffing removed.  Any size;
        the work done is linear in it.
    @type data: L{bytes}
    @param envelope: The transaction's envelope; recipients in neither To
        nor Cc become L{OutboundMessage.bcc}.
    @type envelope: L{Envelope}
    @param policy: The C{[headers]} table of the configuration.
    @type policy: L{HeadersConfig}
    @return: The message as the upstream should receive it.
    @rtype: L{OutboundMessage}
    @raise relayd.reply.Refused: C{550 5.6.0} when the From header field is
        missing or unusable (RFC 5322 section 3.6.2) or a limit of this
        module is exceeded; C{550 5.7.1} when the policy refuses the
        message (a stream not allowed, a required header missing).
    """
    structure = _Structure()
    top = structure.read_entity(data, 0, len(data), 0, ())

    # Classify the top-level header fields.
    is_tags = _matcher(policy.tags)
    is_kept = _matcher(policy.keep)
    is_stripped = _matcher(policy.strip)
    stream_name = policy.stream.strip().lower()
    tracking_name = policy.tracking.strip().lower()
    unsubscribe_name = policy.list_unsubscribe.strip().lower()
    prefix = policy.metadata_prefix.strip().lower()
    required = {name.strip().lower(): name for name in policy.required}

    fields: dict[str, list[str]] = {}
    streams: list[str] = []
    tracking: list[str] = []
    unsubscribe: list[str] = []
    tag_values: list[str] = []
    metadata: list[tuple[str, str]] = []
    metadata_seen: set[str] = set()
    required_values: dict[str, list[str]] = {}
    kept: list[tuple[str, str]] = []
    mapped: list[str] = []
    mapped_seen: set[str] = set()
    stripped: list[str] = []
    stripped_seen: set[str] = set()

    for name, raw in top.headers.raw_items():
        name = name.strip()
        key = name.lower()
        if not key:
            continue
        if key in required:
            required_values.setdefault(key, []).append(raw)
        if key in _REPRESENTED:
            fields.setdefault(key, []).append(raw)
            continue
        control = True
        if stream_name and key == stream_name:
            streams.append(raw)
        elif tracking_name and key == tracking_name:
            tracking.append(raw)
        elif unsubscribe_name and key == unsubscribe_name:
            unsubscribe.append(raw)
        elif is_tags(key):
            tag_values.append(raw)
        elif prefix and key.startswith(prefix):
            meta_key = name[len(prefix) :].strip()
            if not meta_key:
                _add_name(stripped, stripped_seen, name)
                continue
            if meta_key.lower() not in metadata_seen:
                metadata_seen.add(meta_key.lower())
                metadata.append((meta_key, _decode_words(_header_text(raw))))
        elif key not in required:
            control = False
        if control:
            _add_name(mapped, mapped_seen, name)
            continue
        if key == "message-id":
            keep = policy.keep_message_id
        else:
            keep = (
                key not in _NEVER_KEPT
                and not key.startswith("content-")
                and is_kept(key)
                and not is_stripped(key)
            )
        if keep:
            kept.append((name, _header_text(raw)))
        else:
            _add_name(stripped, stripped_seen, name)

    # From and Sender (RFC 5322 section 3.6.2).
    address_bytes = sum(
        len(value)
        for key in ("from", "sender", "to", "cc", "reply-to")
        for value in fields.get(key, [])
    )
    if address_bytes > MAX_ADDRESS_BYTES:
        raise Refused(
            Reply(
                550,
                "5.6.0",
                f"Address headers are larger than {MAX_ADDRESS_BYTES} bytes",
            )
        )
    if "from" not in fields:
        raise Refused(Reply(550, "5.6.0", "Message has no From header"))
    authors = _mailboxes(fields["from"])
    if not authors:
        raise Refused(Reply(550, "5.6.0", "From header holds no valid address"))
    senders = _mailboxes(fields.get("sender", []))
    sender = None
    if len(fields.get("sender", [])) == 1 and len(senders) == 1:
        sender = _format_mailbox(*senders[0])
    if len(authors) > 1 and sender is None:
        raise Refused(
            Reply(
                550,
                "5.6.0",
                "Message has several From addresses and no single Sender header",
            )
        )

    # Policy checks.
    for key, configured in required.items():
        wanted = policy.required[configured].strip().casefold()
        values = required_values.get(key, [])
        if not any(_decode_words(_header_text(v)).casefold() == wanted for v in values):
            raise Refused(Reply(550, "5.7.1", f"Missing required header {_printable(configured)}"))
    stream = None
    for raw in streams:
        value = _decode_words(_header_text(raw)).strip()
        if value:
            stream = value
            break
    if stream is not None and policy.streams:
        if stream not in policy.streams:
            folded = {s.casefold(): s for s in policy.streams}
            if stream.casefold() not in folded:
                raise Refused(Reply(550, "5.7.1", f"unknown stream '{_printable(stream)}'"))
            stream = folded[stream.casefold()]
    if stream is None:
        stream = policy.default_stream or None
    track = None
    for raw in tracking:
        value = _header_text(raw).lower()
        if value in ("true", "false"):
            track = value == "true"
            break
    list_unsubscribe = None
    for raw in unsubscribe:
        value = _decode_words(_header_text(raw)).strip()
        if value:
            list_unsubscribe = value
            break
    tags = _tags([_decode_words(_header_text(v)) for v in tag_values], policy)

    # Recipients.
    to = _mailboxes(fields.get("to", []))
    cc = _mailboxes(fields.get("cc", []))
    listed = {address_key(address) for _, address in to + cc}
    bcc: list[str] = []
    for recipient in envelope.rcpt_to:
        recipient_key = address_key(recipient)
        if recipient_key not in listed:
            listed.add(recipient_key)
            bcc.append(recipient.translate(_UNSAFE).strip().strip("<>"))

    subjects = fields.get("subject", [])
    subject = _decode_words(_header_text(subjects[0])).strip() if subjects else ""

    # Bodies and attachments.
    structure.walk(top)

    return OutboundMessage(
        envelope=envelope,
        from_=_format_mailbox(*authors[0]),
        sender_address=authors[0][1],
        to=tuple(_format_mailbox(*m) for m in to),
        cc=tuple(_format_mailbox(*m) for m in cc),
        bcc=tuple(bcc),
        reply_to=tuple(_format_mailbox(*m) for m in _mailboxes(fields.get("reply-to", []))),
        subject=subject,
        text=structure.text,
        html=structure.html,
        attachments=_attachments(structure),
        tags=tags,
        headers=tuple(kept),
        stream=stream,
        track=track,
        list_unsubscribe=list_unsubscribe,
        metadata=tuple(metadata),
        raw=data,
        raw_only=structure.raw_only,
        mapped=tuple(mapped),
        stripped=tuple(stripped),
        sender=sender,
    )
