# -*- test-case-name: tests.message.test_mime -*-
"""
The MIME walk: the entities of one message (RFC 2045, RFC 2046) found over
byte offsets into the received data, and its text and HTML bodies.

How a message is read
=====================

Each MIME entity is read once:

  - its header section is found by scanning lines the way the standard
    library's C{email.feedparser} does (a line that is empty, or that is
    neither a header field nor a continuation, ends it) and only that
    section is parsed, as C{email.parser.BytesParser} with the C{compat32}
    policy parses it.  The C{compat32} policy keeps values as the client
    sent them, so only what becomes an output field is decoded (measured:
    about ten times faster than C{policy.default} on a 1 KB message).  A
    section made only of plain fields (a name, a colon, a value, its
    continuation lines) is found and read in one pass of one regular
    expression, with the result the standard library gives
    (L{parse_header_section}); any other section is parsed by the standard
    library itself;
  - the boundary and charset parameters are read once per entity, by one
    regular expression when every parameter is plain (L{content_params}),
    else by C{Message.get_boundary} and C{get_content_charset};
  - a multipart body is cut into its body parts by finding the delimiter
    lines (RFC 2046 section 5.1.1) with C{bytes.find}, on byte offsets into
    the received data, so that no line-by-line Python loop runs over bodies.
    A part's bytes are copied only when the part is decoded (a text body is
    decoded from a view of them), and not at all for a large attachment
    that arrived as clean base64 (L{relayd.message.model.Base64Text}).

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
C{Content-Disposition: attachment} become the text and HTML bodies.  Once
the first of them is found, another text or HTML part fills the other
field only when it lies inside the same outermost C{multipart/alternative}
as the first; further alternatives of an already filled type are dropped
(they are renderings of the same body); any other text or HTML part becomes
an attachment (L{relayd.message.attachments}).  Line ends of bodies are
normalised to LF.

Limits
======

The header sections of all entities together may hold at most
L{MAX_HEADER_BYTES} bytes; a message may have at most L{MAX_PARTS} MIME
entities, multiparts nested at most L{MAX_DEPTH} deep.  Beyond that the
message is refused with C{550 5.6.0}.  With those limits the work is linear
in the message's size, and bounded for the parts that cost more per byte
(one scan of a body per level of nesting).
"""

from __future__ import annotations

import re
from email.message import Message
from email.parser import BytesParser
from email.policy import compat32

from relayd.message.attachments import AttachmentPart, attachment_part
from relayd.message.decoding import body_text, decode_text
from relayd.reply import (
    Refused,
    headers_too_large,
    mime_nested_too_deep,
    too_many_mime_parts,
)

__all__ = [
    "MAX_DEPTH",
    "MAX_HEADER_BYTES",
    "MAX_PARTS",
    "Entity",
    "Structure",
    "content_params",
    "parse_header_section",
]

#: Most bytes of header sections, summed over all MIME entities.
MAX_HEADER_BYTES = 256 * 1024

#: Most MIME entities (the message itself, multiparts and leaves).
MAX_PARTS = 1000

#: Deepest nesting of multipart entities.
MAX_DEPTH = 16

_PARSER = BytesParser(policy=compat32)
# One header field as email.feedparser reads it: a name of ftext (RFC 5322
# section 3.6.8, email.feedparser.headerRE) not starting a continuation or
# an envelope "From " line, a colon, the value up to the end of the line,
# then any continuation lines; lines end in CRLF, CR or LF (NLCRE_crack).
_FIELD = re.compile(
    rb"([\041-\071\073-\176]+):[ \t]*([^\r\n]*(?:(?:\r\n|\r|\n)[ \t][^\r\n]*)*)(?:\r\n|\r|\n|\Z)"
)
_EOL = re.compile(rb"\r\n|\r|\n")
# The fields of a header section, where it ends and where the body starts.
_Section = tuple[list[tuple[bytes, bytes]], int, int]
# A Content-Type value whose parameters (RFC 2045 section 5.1) are all
# plain: a type part holding a slash and no quote, backslash, semicolon or
# equals sign, then "; name=value" with a name of letters, digits, "_", "."
# and "-" (no RFC 2231 "*"), a value that is a run of printable ASCII
# without quotes, backslashes, semicolons or angle brackets, or such a run
# (spaces and tabs allowed) in double quotes; an optional final ";".  No
# plain part holds a semicolon, so the value is split at each one and every
# piece is matched alone, by expressions whose adjacent parts never match
# the same character: the time is linear in the value, whatever it holds
# (a single expression over the whole value took seconds to fail on a
# crafted 16 KB header of folded white space or slashes).
_PLAIN_TOKEN = r"[\x21\x23-\x3a\x3d\x3f-\x5b\x5d-\x7e]+"
_PLAIN_QUOTED = r'"[\t\x20\x21\x23-\x3a\x3d\x3f-\x5b\x5d-\x7e]*"'
_TYPE_PART = re.compile(r'[^;"\\=/]*/[^;"\\=]*')
_PARAM_PART = re.compile(
    rf"[ \t\r\n]*([A-Za-z0-9_.-]+)[ \t\r\n]*=[ \t\r\n]*({_PLAIN_TOKEN}|{_PLAIN_QUOTED})[ \t\r\n]*"
)
_BLANK = re.compile(r"[ \t\r\n]*")
# email.feedparser.headerRE: what a header field or continuation line
# starts with.
_HEADER_LINE = re.compile(rb"From |[\041-\071\073-\176]*:|[\t ]")
_DELIMITER_TAIL = re.compile(rb"(--)?[ \t]*(?:\r\n|\r|\n|\Z)")

# Signed or encrypted (RFC 1847, RFC 8551): the message cannot be rebuilt
# from its parts.
_RAW_ONLY_TYPES = frozenset(
    {
        "multipart/signed",
        "multipart/encrypted",
        "application/pkcs7-mime",
        "application/x-pkcs7-mime",
    }
)


class Entity:
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

    def view(self) -> memoryview:
        """
        @return: The body bytes, still transfer-encoded, without a copy.
        """
        return memoryview(self.buf)[self.start : self.end]


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


def _plain_fields(buf: bytes, start: int, end: int, limit: int) -> _Section | None:
    """
    Read an entity's header section when it is made of plain fields only.

    The section is found by the rules of L{_header_end} (it ends at an
    empty line, which is skipped, or at a line that is neither a header
    field nor a continuation line, which starts the body).  When every one
    of its lines is a field (C{_FIELD}) or the continuation of one, the
    fields are returned as C{Compat32.header_source_parse} stores them.

    @param buf: The bytes.
    @param start: Offset of the entity's first octet.
    @param end: Offset just past its last octet.
    @param limit: Give up once the section is longer than this many bytes.
    @return: C{(fields, end of header section, start of body)}, or C{None}
        when a line of the section is not a plain field (a first line that
        is a continuation, an envelope C{From } line, a line starting with a
        colon) or the section is longer than C{limit}.
    """
    fields: list[tuple[bytes, bytes]] = []
    pos = start
    match = _FIELD.match
    while pos < end:
        found = match(buf, pos, end)
        if found is None:
            eol = _EOL.match(buf, pos, end)
            if eol is not None:
                return fields, pos, eol.end()
            if _HEADER_LINE.match(buf, pos, end) is None:
                return fields, pos, pos
            return None
        fields.append((found[1], found[2]))
        pos = found.end()
        if pos - start > limit:
            return None
    return fields, end, end


def _message(fields: list[tuple[bytes, bytes]]) -> Message:
    """
    @param fields: C{(name, value)} of each field, as received.
    @return: A header section holding them, in order, as
        C{BytesParser(policy=compat32)} holds them (text with octets above
        127 as lone surrogates, no defects, an empty payload).
    """
    headers = Message(policy=compat32)
    for name, value in fields:
        headers.set_raw(name.decode("ascii"), value.decode("ascii", "surrogateescape"))
    headers.set_payload("")
    return headers


def parse_header_section(section: bytes) -> Message:
    """
    Parse one header section, as C{BytesParser(policy=compat32)} does with
    C{headersonly=True}.

    When every line is a header field or the continuation of one (the
    common case), the fields are read with one regular expression
    (L{_plain_fields}); the result is the one the standard library gives.
    Any other section (a first line that is a continuation, an envelope
    C{From } line, a line starting with a colon, a line that is not a
    field) is parsed by the standard library itself.

    @param section: The header section, without the empty line that ends
        it.
    @return: The parsed header fields.
    """
    found = _plain_fields(section, 0, len(section), len(section))
    if found is None or found[1] != len(section):
        return _PARSER.parsebytes(section, headersonly=True)
    return _message(found[0])


def content_params(headers: Message) -> tuple[str | None, str | None]:
    """
    The boundary and the charset of an entity's Content-Type (RFC 2046
    section 5.1.1, 4.1.2), as C{headers.get_boundary()} and
    C{headers.get_content_charset()} give them.

    Plain parameters (see C{_TYPE_PART}) are read with a regular expression
    per parameter; for them the standard library's quoting, RFC 2231 and
    unquoting steps change nothing.  Any other value (quoted pairs, RFC 2231
    parameters, angle brackets, non-ASCII) is left to the standard library.

    @param headers: The entity's parsed header fields (after 8-bit repair).
    @return: C{(boundary, charset)}; each C{None} when absent.
    """
    value = headers.get("content-type")
    if value is None:
        return None, None
    params = _plain_params(value) if isinstance(value, str) and value.isascii() else None
    if params is not None:
        boundary = params.get("boundary")
        charset = params.get("charset")
        return (
            None if boundary is None else boundary.rstrip(),
            None if charset is None else charset.lower(),
        )
    return headers.get_boundary(), headers.get_content_charset()


def _plain_params(value: str) -> dict[str, str] | None:
    """
    The parameters of a plain Content-Type value (see C{_TYPE_PART}).

    @param value: The field's value (ASCII).
    @return: Each parameter's value (quotes taken off) by lower-case name,
        the first of a name; C{None} when the value is not plain.
    """
    pieces = value.split(";")
    if _TYPE_PART.fullmatch(pieces[0]) is None:
        return None
    params: dict[str, str] = {}
    last = len(pieces) - 1
    for i in range(1, len(pieces)):
        found = _PARAM_PART.fullmatch(pieces[i])
        if found is None:
            # Only a final ";" may be followed by nothing but white space.
            if i == last and _BLANK.fullmatch(pieces[i]):
                break
            return None
        name, raw = found.groups()
        params.setdefault(name.lower(), raw[1:-1] if raw.startswith('"') else raw)
    return params


def _repair_8bit(headers: Message) -> None:
    """
    Decode octets above 127 in an entity's header values (RFC 6532 UTF-8, else
    windows-1252), so that parameters such as file names read as text
    rather than as replacement characters.

    @param headers: Parsed header fields; changed in place.
    """
    items = list(headers.raw_items())
    if "".join(value for _, value in items).isascii():
        return
    for name in set(headers.keys()):
        del headers[name]
    for name, value in items:
        if not value.isascii():
            value = decode_text(value.encode("ascii", "surrogateescape"), None)
        headers[name] = value


class _DelimiterScan:
    """
    Finds the delimiter lines of one multipart body, one after the other.

    C{bytes.find} locates each candidate; after many near misses (the
    marker inside a line) a regular expression skips them instead.

    @ivar misses: Candidates seen that were not delimiter lines.
    @ivar pattern: The regular expression, once there were many misses.
    """

    __slots__ = ("buf", "start", "end", "marker", "misses", "pattern")

    def __init__(self, buf: bytes, start: int, end: int, marker: bytes) -> None:
        self.buf = buf
        self.start = start
        self.end = end
        self.marker = marker
        self.misses = 0
        self.pattern: re.Pattern[bytes] | None = None

    def next(self, pos: int) -> tuple[int, int, bool] | None:
        """
        Find the next delimiter line.

        @param pos: Offset to search from.
        @return: C{(offset of the delimiter, offset past its line end,
            whether it is the close delimiter)}, or C{None} when there is
            none before the end of the body.
        """
        buf, marker, end = self.buf, self.marker, self.end
        while self.pattern is None:
            at = buf.find(marker, pos, end)
            if at < 0:
                return None
            tail = _DELIMITER_TAIL.match(buf, at + len(marker), end)
            if tail is None or (at > self.start and buf[at - 1] not in b"\r\n"):
                pos = at + 1
                self.misses += 1
                if self.misses > 64:
                    self.pattern = re.compile(
                        re.escape(marker)
                        + rb"(?<![^\r\n]"
                        + re.escape(marker)
                        + rb")"
                        + _DELIMITER_TAIL.pattern
                    )
                continue
            return at, tail.end(), tail.group(1) is not None
        found = self.pattern.search(buf, pos, end)
        if found is None:
            return None
        return found.start(), found.end(), found.group(1) is not None


def _before_line_end(buf: bytes, start: int, at: int) -> int:
    """
    Where a body part ends: before the line end (CRLF, LF or CR) that
    belongs to the delimiter at C{at} (RFC 2046 section 5.1.1).

    @param buf: The bytes.
    @param start: Offset of the part's first octet.
    @param at: Offset of the delimiter.
    @return: The offset just past the part's last octet.
    """
    if at > start and buf[at - 1] == 0x0A:
        at -= 1
        if at > start and buf[at - 1] == 0x0D:
            at -= 1
    elif at > start and buf[at - 1] == 0x0D:
        at -= 1
    return at


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
    scan = _DelimiterScan(buf, start, end, b"--" + boundary)
    parts: list[tuple[int, int]] = []
    part_start = -1
    pos = start
    while (found := scan.next(pos)) is not None:
        at, line_end, closing = found
        if part_start >= 0:
            parts.append((part_start, _before_line_end(buf, part_start, at)))
            if len(parts) >= limit:
                return parts
        if closing:
            return parts
        part_start = pos = line_end
    if part_start >= 0:
        parts.append((part_start, end))
    return parts


class Structure:
    """
    Walks the MIME tree of one message and collects its bodies and
    attachment parts.

    @ivar text: The text body (line ends LF), or C{None}.
    @ivar html: The HTML body (line ends LF), or C{None}.
    @ivar parts: The leaf parts that are not bodies, in message order.
    @ivar raw_only: A signed or encrypted entity was seen (RFC 1847,
        RFC 8551).
    """

    def __init__(self) -> None:
        self.text: str | None = None
        self.html: str | None = None
        self.parts: list[AttachmentPart] = []
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
    ) -> Entity:
        """
        Parse the header section of one entity (RFC 2045 section 3).

        @param buf: The bytes.
        @param start: Offset of the entity's first octet.
        @param end: Offset just past its last octet.
        @param depth: How many multiparts enclose it.
        @param alternatives: Ids of enclosing C{multipart/alternative}s.
        @param default_type: Its type when it has no Content-Type
            (RFC 2046 section 5.1.5 for C{multipart/digest}).
        @return: The entity.
        @raise relayd.reply.Refused: C{550 5.6.0} when L{MAX_PARTS},
            L{MAX_DEPTH} or L{MAX_HEADER_BYTES} is exceeded.
        """
        self._entities += 1
        if self._entities > MAX_PARTS:
            raise Refused(too_many_mime_parts(MAX_PARTS))
        if depth > MAX_DEPTH:
            raise Refused(mime_nested_too_deep(MAX_DEPTH))
        limit = MAX_HEADER_BYTES - self._header_bytes
        plain = _plain_fields(buf, start, end, limit)
        if plain is not None:
            fields, header_end, body_start = plain
        else:
            header_end, body_start = _header_end(buf, start, end, limit)
        self._header_bytes += header_end - start
        if self._header_bytes > MAX_HEADER_BYTES:
            raise Refused(headers_too_large(MAX_HEADER_BYTES))
        if plain is not None:
            headers = _message(fields)
        else:
            headers = parse_header_section(buf[start:header_end])
        if default_type != "text/plain":
            headers.set_default_type(default_type)
        return Entity(headers, buf, body_start, end, depth, alternatives)

    def walk(self, top: Entity) -> None:
        """
        Visit every entity under C{top}, depth first, in message order, and
        take each leaf as a body or an attachment part.

        @param top: The message's own entity.
        @raise relayd.reply.Refused: C{550 5.6.0} when a limit of this
            module is exceeded.
        """
        stack = [top]
        while stack:
            entity = stack.pop()
            _repair_8bit(entity.headers)
            content_type = entity.headers.get_content_type()
            if content_type in _RAW_ONLY_TYPES:
                self.raw_only = True
            maintype, _, subtype = content_type.partition("/")
            if maintype == "multipart":
                children = self._children(entity, subtype)
                if children:
                    stack.extend(reversed(children))
                    continue
                if not entity.buf[entity.start : entity.end].strip():
                    continue
                content_type = "text/plain"
            self._leaf(entity, content_type)

    def _children(self, entity: Entity, subtype: str) -> list[Entity]:
        """
        Read the body parts of a multipart entity (RFC 2046 section 5.1).

        @param entity: The multipart entity.
        @param subtype: Its subtype, lower case.
        @return: Its body parts, in order; empty when it has no boundary
            or no delimiter line (it is then read as C{text/plain}).
        @raise relayd.reply.Refused: C{550 5.6.0} when L{MAX_PARTS} is
            exceeded.
        """
        boundary = content_params(entity.headers)[0]
        if not boundary:
            return []
        spans = _find_delimiters(
            entity.buf,
            entity.start,
            entity.end,
            boundary.encode("utf-8", "surrogateescape"),
            MAX_PARTS - self._entities + 1,
        )
        if not spans:
            return []
        if self._entities + len(spans) > MAX_PARTS:
            raise Refused(too_many_mime_parts(MAX_PARTS))
        alternatives = entity.alternatives
        if subtype == "alternative":
            self._alternatives += 1
            alternatives += (self._alternatives,)
        default = "message/rfc822" if subtype == "digest" else "text/plain"
        depth = entity.depth + 1
        return [self.read_entity(entity.buf, s, e, depth, alternatives, default) for s, e in spans]

    def _leaf(self, entity: Entity, content_type: str) -> None:
        """
        Take one leaf entity as a body or an attachment part.

        @param entity: The entity.
        @param content_type: Its media type, lower case.
        """
        headers = entity.headers
        disposition = headers.get_content_disposition()
        encoding = str(headers.get("content-transfer-encoding", ""))
        if content_type in ("text/plain", "text/html") and disposition != "attachment":
            slot = "text" if content_type == "text/plain" else "html"
            if self._take_body(slot, entity, encoding):
                return
        part = attachment_part(
            headers, entity.buf, entity.start, entity.end, content_type, disposition, encoding
        )
        if part is not None:
            self.parts.append(part)

    def _take_body(self, slot: str, entity: Entity, encoding: str) -> bool:
        """
        Take a text or HTML part as a body, by the rule of this module's
        docstring.

        @param slot: C{"text"} or C{"html"}.
        @param entity: The part.
        @param encoding: Its Content-Transfer-Encoding.
        @return: C{True} when the part became a body or was dropped as
            another rendering of one; C{False} when it is an attachment.
        """
        if not self._body_found:
            self._body_found = True
            if entity.alternatives:
                self._body_alternative = entity.alternatives[0]
            self._set_body(slot, entity, encoding)
            return True
        if self._body_alternative is not None and self._body_alternative in entity.alternatives:
            if getattr(self, slot) is None:
                self._set_body(slot, entity, encoding)
            return True
        return False

    def _set_body(self, slot: str, entity: Entity, encoding: str) -> None:
        """
        Decode a body part into L{text} or L{html}.

        @param slot: C{"text"} or C{"html"}.
        @param entity: The part.
        @param encoding: Its Content-Transfer-Encoding.
        """
        charset = content_params(entity.headers)[1]
        setattr(self, slot, body_text(entity.view(), encoding, charset))
