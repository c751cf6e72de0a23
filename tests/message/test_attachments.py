"""
Tests for L{relayd.message.attachments}: file names, media types,
Content-ID and the inline flag, and large base64 parts passed on encoded.
"""

from __future__ import annotations

import base64

from twisted.trial.unittest import SynchronousTestCase

from relayd.message import Attachment
from tests.message.support import (
    FROM,
    MIXED,
    message,
    multipart,
    multipart_bytes,
    parse,
)


def with_pdf(b64: bytes) -> bytes:
    """
    A message with a text body and a PDF attachment, base64 encoded.

    @param b64: The attachment's body as in the message.
    """
    return (
        b"From: a@example.com\r\nSubject: big\r\nMIME-Version: 1.0\r\n"
        b"Content-Type: multipart/mixed; boundary=XX\r\n\r\n--XX\r\n"
        b"Content-Type: text/plain\r\n\r\nhello\r\n--XX\r\n"
        b"Content-Type: application/pdf\r\nContent-Transfer-Encoding: base64\r\n"
        b'Content-Disposition: attachment; filename="a.pdf"\r\n\r\n' + b64 + b"--XX--\r\n"
    )


class AttachmentTests(SynchronousTestCase):
    """
    Attachments and inline parts.
    """

    def attachments(self, *parts: str | bytes, html: str | None = None) -> tuple[Attachment, ...]:
        first = f"Content-Type: text/html\n\n{html}" if html else "\nbody"
        raw = [p if isinstance(p, bytes) else p.encode() for p in (first, *parts)]
        return parse(message(FROM + MIXED, multipart_bytes("mix", *raw))).attachments

    def test_rfc2231_file_names(self) -> None:
        """
        RFC 2231 charset, percent-encoding and continuations are decoded.
        """
        (one, two) = self.attachments(
            "Content-Type: application/pdf\n"
            "Content-Disposition: attachment; filename*=utf-8''%E2%82%AC%20rates.pdf\n\n%PDF",
            "Content-Type: text/plain\nContent-Disposition: attachment;\n"
            " filename*0*=iso-8859-1''%E9t;\n filename*1=\"e notes.txt\"\n\nx",
        )
        self.assertEqual(one.filename, "€ rates.pdf")
        self.assertEqual(two.filename, "éte notes.txt")

    def test_rfc2047_and_8bit_file_names(self) -> None:
        """
        Encoded words in file names are decoded, as is raw UTF-8; the name
        comes from Content-Type C{name} when Content-Disposition has none.
        """
        (one, two, three) = self.attachments(
            'Content-Type: application/pdf; name="=?utf-8?b?w6l0w6kucGRm?="\n\n%PDF',
            'Content-Type: application/pdf\nContent-Disposition: attachment; filename="管理.pdf"\n\n%PDF'.encode(),
            b'Content-Type: application/pdf; name="caf\xe9.pdf"\n\n%PDF',
        )
        self.assertEqual(
            [one.filename, two.filename, three.filename], ["été.pdf", "管理.pdf", "café.pdf"]
        )

    def test_file_name_paths_and_controls_removed(self) -> None:
        """
        Directories and control characters are taken out of file names.
        """
        names = [
            a.filename
            for a in self.attachments(
                'Content-Type: application/pdf; name="C:\\\\Users\\\\me\\\\report.pdf"\n\n%PDF',
                'Content-Type: application/pdf; name="../../etc/passwd"\n\n%PDF',
                'Content-Type: application/pdf; name="=?utf-8?q?a=0Ab=00.pdf?="\n\n%PDF',
                'Content-Type: application/pdf; name=".."\n\n%PDF',
            )
        ]
        self.assertEqual(names, ["report.pdf", "passwd", "a b .pdf", "attachment-4.pdf"])

    def test_generated_names(self) -> None:
        """
        Parts without a file name are named C{attachment-<n><ext>}, the
        extension found from the media type, C{.bin} when none is known.
        """
        names = [
            a.filename
            for a in self.attachments(
                "Content-Type: application/pdf\n\n%PDF",
                "Content-Type: application/x-unheard-of\n\nx",
                "Content-Type: image/jpeg\n\nx",
                "Content-Type: text/calendar; method=REQUEST\n\nBEGIN:VCALENDAR",
                "Content-Type: message/rfc822\n\nFrom: x@example.com\n\nhi",
                "Content-Type: application/vnd.openxmlformats-officedocument.wordprocessingml.document\n\nPK",
            )
        ]
        self.assertEqual(
            names,
            [
                "attachment-1.pdf",
                "attachment-2.bin",
                "attachment-3.jpg",
                "attachment-4.ics",
                "attachment-5.eml",
                "attachment-6.docx",
            ],
        )

    def test_content_id_and_inline(self) -> None:
        """
        The Content-ID loses its angle brackets; a part is inline when
        Content-Disposition is inline and it has a Content-ID, or when the
        HTML references it by C{cid:} (RFC 2392).
        """
        parts = self.attachments(
            "Content-Type: image/png\nContent-Disposition: inline\nContent-ID: <a@x>\n\n1",
            "Content-Type: image/png\nContent-ID: <b@x>\n\n2",
            "Content-Type: image/png\nContent-ID: < c@x >\n\n3",
            "Content-Type: image/png\nContent-Disposition: inline\n\n4",
            "Content-Type: image/png\nContent-ID: <unused@x>\n\n5",
            html="<img src=\"cid:b%40x\"><div style='background:url(CID:c@x)'>",
        )
        self.assertEqual(
            [(a.content_id, a.inline) for a in parts],
            [("a@x", True), ("b@x", True), ("c@x", True), (None, False), ("unused@x", False)],
        )

    def test_calendar_keeps_method(self) -> None:
        """
        text/calendar keeps its C{method} parameter (RFC 6047 section 2.4).
        """
        (invite,) = self.attachments(
            'Content-Type: text/calendar; charset="utf-8"; method=REQUEST\n\nBEGIN:VCALENDAR'
        )
        self.assertEqual(invite.content_type, "text/calendar; method=REQUEST")
        self.assertEqual(invite.charset, "utf-8")
        (plain,) = self.attachments("Content-Type: text/calendar\n\nBEGIN:VCALENDAR")
        self.assertEqual(plain.content_type, "text/calendar")

    def test_message_rfc822_travels_as_is(self) -> None:
        """
        An attached message is not parsed: its bytes travel unchanged as an
        C{.eml} attachment (a transfer encoding is undone).
        """
        inner = (
            b"From: Carol <carol@example.net>\r\nSubject:  odd   spacing\r\n"
            b"Content-Type: multipart/mixed; boundary=mix\r\n\r\n"
            b"--mix\r\n\r\nnested with the outer boundary name\r\n--mix--\r\n"
        )
        data = (
            b"From: a@example.com\r\nContent-Type: multipart/mixed; boundary=outer\r\n\r\n"
            b"--outer\r\n\r\nsee attached\r\n"
            b"--outer\r\nContent-Type: message/rfc822\r\n\r\n" + inner + b"\r\n"
            b"--outer\r\nContent-Type: message/rfc822; name=fw.eml\r\n"
            b"Content-Transfer-Encoding: base64\r\n\r\n"
            + base64.encodebytes(inner).replace(b"\n", b"\r\n")
            + b"--outer--\r\n"
        )
        result = parse(data)
        self.assertEqual(result.text, "see attached")
        self.assertEqual(
            result.attachments,
            (
                Attachment("attachment-1.eml", "message/rfc822", inner),
                Attachment("fw.eml", "message/rfc822", inner),
            ),
        )

    def test_top_level_attachment(self) -> None:
        """
        A message whose only part is not text is one attachment.
        """
        result = parse(
            message(
                FROM + "Content-Type: application/pdf\n"
                'Content-Disposition: attachment; filename="a.pdf"\n'
                "Content-Transfer-Encoding: base64\n",
                "JVBERi0=\n",
            )
        )
        self.assertEqual((result.text, result.html), (None, None))
        self.assertEqual(result.attachments, (Attachment("a.pdf", "application/pdf", b"%PDF-"),))

    def test_malformed_base64_decoded_leniently(self) -> None:
        """
        Characters outside the base64 alphabet are skipped, padding is
        supplied and a lone final character dropped.
        """
        contents = [
            a.content
            for a in self.attachments(
                "Content-Type: application/octet-stream\nContent-Transfer-Encoding: base64\n\nPGh0*bWw+Cg==",
                "Content-Type: application/octet-stream\nContent-Transfer-Encoding: base64\n\nQUJD\nRA",
                "Content-Type: application/octet-stream\nContent-Transfer-Encoding: base64\n\nQUJDR",
                "Content-Type: application/octet-stream\nContent-Transfer-Encoding: base64\n\nQU=JD",
            )
        ]
        self.assertEqual(contents, [b"<html>\n", b"ABCD", b"ABC", b"ABC"])

    def test_media_type_cleaned(self) -> None:
        """
        A media type with junk after it is cut to C{type/subtype}; an
        invalid one falls back to text/plain as in RFC 2045 section 5.2.
        """
        types = [
            a.content_type
            for a in self.attachments(
                'Content-Type: application/pdf name="x.pdf"\n\n%PDF',
                "Content-Type: Image/PNG\n\npng",
                "Content-Type: bogus\nContent-Disposition: attachment\n\nx",
            )
        ]
        self.assertEqual(types, ["application/pdf", "image/png", "text/plain"])

    def test_digest_parts_default_to_message(self) -> None:
        """
        Parts of a multipart/digest without Content-Type are messages
        (RFC 2046 section 5.1.5).
        """
        body = multipart("dig", "\nFrom: x@example.com\n\none", "\nFrom: y@example.com\n\ntwo")
        result = parse(message(FROM + "Content-Type: multipart/digest; boundary=dig\n", body))
        self.assertEqual(
            [(a.filename, a.content_type, a.content) for a in result.attachments],
            [
                ("attachment-1.eml", "message/rfc822", b"From: x@example.com\r\n\r\none"),
                ("attachment-2.eml", "message/rfc822", b"From: y@example.com\r\n\r\ntwo"),
            ],
        )

    def test_clean_base64_is_passed_on(self) -> None:
        """
        Large attachments that arrive as clean base64 are passed on encoded,
        without decoding and encoding them again.
        """
        import base64 as b64module
        import json

        from relayd.dialects import get_dialect

        raw = bytes(range(256)) * 400 + b"x"
        encoded = b64module.encodebytes(raw).replace(b"\n", b"\r\n")
        result = parse(with_pdf(encoded))
        (attachment,) = result.attachments
        self.assertEqual(attachment.content, b"")
        self.assertEqual(attachment.encoded, encoded.replace(b"\r\n", b""))
        self.assertEqual(attachment.payload(), raw)
        body = json.loads(get_dialect("native").body(result))
        self.assertEqual(b64module.b64decode(body["attachments"][0]["content"]), raw)

    def test_unclean_base64_is_decoded_leniently(self) -> None:
        """
        A large base64 part that is not clean is decoded leniently.
        """
        import base64 as b64module

        raw = bytes(range(256)) * 400
        encoded = b64module.encodebytes(raw).replace(b"\n", b"\r\n")
        broken = encoded[:100] + b"!" + encoded[100:]
        (attachment,) = parse(with_pdf(broken)).attachments
        self.assertIsNone(attachment.encoded)
        self.assertEqual(attachment.content, raw)
