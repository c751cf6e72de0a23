# -*- test-case-name: tests.message.test_attachments -*-
"""
Attachments: the leaf parts of a message that are not bodies, with their
media type, file name, Content-ID and inline flag (RFC 2045, RFC 2183,
RFC 2392).

A part's file name is the Content-Disposition C{filename} or Content-Type
C{name} parameter (RFC 2231 and RFC 2047 decoded, path and control
characters removed); a part without one gets C{attachment-<n><ext>}, the
extension from its media type.  A part with a Content-ID is inline when its
disposition says so or when the HTML body refers to it by a C{cid:} URL
(RFC 2392).  Large parts that arrived as clean base64 keep that base64
where it is in the received message
(L{relayd.message.model.Attachment.source}).
"""

from __future__ import annotations

import mimetypes
import re
from collections.abc import Sequence
from email.message import Message
from urllib.parse import unquote

from attrs import frozen

from relayd.message.decoding import (
    PASSTHROUGH_MIN,
    clean_base64_length,
    clean_filename,
    content_param,
    decode_body,
    unfold,
)
from relayd.message.model import Attachment, Base64Text

__all__ = ["AttachmentPart", "attachment_part", "build_attachments"]

_MEDIA_TYPE = re.compile(r"[a-z0-9!#$&^_.+-]+/[a-z0-9!#$&^_.+-]+")
_TOKEN = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`{|}~-]+")
_CID_REFERENCE = re.compile(r"cid:([^\s\"'<>()]+)", re.IGNORECASE)


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


@frozen
class AttachmentPart:
    """
    A leaf part that is not a body, as the MIME walk found it: an
    attachment before it is named and its inline flag is settled.

    @ivar filename: The decoded file name, or C{""} when it has none.
    @ivar content_type: C{maintype/subtype}, plus C{; method=...} for
        text/calendar (RFC 5545 section 3.7.2).
    @ivar content: The decoded bytes (empty when C{source} is set).
    @ivar content_id: The Content-ID without angle brackets, or C{None}.
    @ivar disposition: The Content-Disposition type, lower case
        (C{"inline"}, C{"attachment"}...), or C{None}.
    @ivar charset: For C{text/*} parts, the declared charset label, lower
        case; otherwise C{None}.
    @ivar source: Where the clean base64 of a large part is in the
        received message, or C{None}.
    """

    filename: str
    content_type: str
    content: bytes
    content_id: str | None
    disposition: str | None
    charset: str | None
    source: Base64Text | None


def attachment_part(
    headers: Message,
    buf: bytes,
    start: int,
    end: int,
    content_type: str,
    disposition: str | None,
    encoding: str,
) -> AttachmentPart | None:
    """
    Read one leaf part that is not a body.

    @param headers: The part's parsed header fields.
    @param buf: The message its body is in, still transfer-encoded.
    @param start: Offset of the body's first octet in C{buf}.
    @param end: Offset just past its last octet.
    @param content_type: Its media type, lower case.
    @param disposition: Its Content-Disposition type, or C{None}.
    @param encoding: Its Content-Transfer-Encoding (any case).
    @return: The part, or C{None} when it carries nothing: no content and
        no file name.
    """
    media = _MEDIA_TYPE.match(content_type)
    clean_type = media.group() if media else "application/octet-stream"
    source = None
    if end - start >= PASSTHROUGH_MIN and encoding.strip().lower() == "base64":
        length = clean_base64_length(buf, start, end)
        if length is not None:
            source = Base64Text(buf, start, end, length)
    content = b"" if source is not None else decode_body(memoryview(buf)[start:end], encoding)
    filename = clean_filename(headers.get_filename() or "")
    if not content and source is None and not filename:
        return None
    if clean_type == "text/calendar":
        method = _TOKEN.search(content_param(headers, "method"))
        if method:
            clean_type += "; method=" + method.group()
    charset = None
    if clean_type.startswith("text/"):
        label = _TOKEN.fullmatch(headers.get_content_charset() or "")
        charset = label.group().lower() if label else None
    content_id = unfold(str(headers.get("content-id", ""))).strip("<> \t")
    return AttachmentPart(
        filename, clean_type, content, content_id or None, disposition, charset, source
    )


def build_attachments(parts: Sequence[AttachmentPart], html: str | None) -> tuple[Attachment, ...]:
    """
    Build the attachments: generated names and the inline flag.

    @param parts: The attachment parts of the walked message, in order.
    @param html: The HTML body, whose C{cid:} URLs (RFC 2392) make parts
        inline, or C{None}.
    @return: The attachments in message order.
    """
    references = set()
    if html and any(part.content_id for part in parts):
        references = {unquote(m).strip("<>").lower() for m in _CID_REFERENCE.findall(html)}
    result: list[Attachment] = []
    for part in parts:
        filename = part.filename
        if not filename:
            base = part.content_type.split(";", 1)[0]
            filename = f"attachment-{len(result) + 1}{_extension(base)}"
        content_id = part.content_id
        inline = content_id is not None and (
            part.disposition == "inline" or content_id.lower() in references
        )
        result.append(
            Attachment(
                filename=filename,
                content_type=part.content_type,
                content=part.content,
                content_id=content_id,
                inline=inline,
                charset=part.charset,
                source=part.source,
            )
        )
    return tuple(result)
