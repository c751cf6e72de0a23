"""
Tests for L{relayd.message.mime}: the MIME walk (RFC 2046), which parts
become the bodies, and signed or encrypted messages.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from relayd.message import Attachment
from tests.message.support import (
    ALTERNATIVE,
    FROM,
    MIXED,
    message,
    multipart,
    multipart_bytes,
    parse,
)


class BodyTests(SynchronousTestCase):
    """
    Choosing and decoding the text and HTML bodies.
    """

    def test_non_mime_message_is_text(self) -> None:
        """
        A message without Content-Type is text/plain (RFC 2045 section 5.2);
        line ends become LF.
        """
        result = parse(message(FROM, "Line one\nLine two\n"))
        self.assertEqual(result.text, "Line one\nLine two\n")
        self.assertIsNone(result.html)
        self.assertEqual(result.attachments, ())

    def test_lf_line_ends_accepted(self) -> None:
        """
        A message with bare LF line ends reads the same as with CRLF.
        """
        head = FROM + "Subject: Hi\n" + ALTERNATIVE
        body = multipart(
            "alt", "Content-Type: text/plain\n\nplain", "Content-Type: text/html\n\n<p>x</p>"
        )
        crlf = parse(message(head, body))
        lf = parse((head + "\n" + body).encode("utf-8"))
        self.assertEqual((lf.subject, lf.text, lf.html), ("Hi", "plain", "<p>x</p>"))
        self.assertEqual((crlf.subject, crlf.text, crlf.html), (lf.subject, lf.text, lf.html))

    def test_html_only(self) -> None:
        """
        A single text/html part is the HTML body; there is no text body.
        """
        result = parse(message(FROM + "Content-Type: text/html\n", "<b>hi</b>"))
        self.assertEqual((result.text, result.html), (None, "<b>hi</b>"))

    def test_alternative(self) -> None:
        """
        The first text/plain and text/html of a multipart/alternative.
        """
        body = multipart(
            "alt",
            "Content-Type: text/plain; charset=utf-8\n\nGrüezi",
            "Content-Type: text/html; charset=utf-8\n\n<p>Grüezi</p>",
        )
        result = parse(message(FROM + ALTERNATIVE, body))
        self.assertEqual((result.text, result.html), ("Grüezi", "<p>Grüezi</p>"))

    def test_alternative_inside_mixed_and_related(self) -> None:
        """
        The alternative is found inside multipart/mixed and the HTML inside
        multipart/related; the image referenced by C{cid:} is inline.
        """
        related = "Content-Type: multipart/related; boundary=rel\n\n" + multipart(
            "rel",
            'Content-Type: text/html\n\n<img src="cid:logo@x">',
            "Content-Type: image/png\nContent-ID: <logo@x>\n"
            "Content-Transfer-Encoding: base64\n\niVBORw==",
        )
        alternative = "Content-Type: multipart/alternative; boundary=alt\n\n" + multipart(
            "alt", "Content-Type: text/plain\n\nplain", related
        )
        body = multipart(
            "mix",
            alternative,
            "Content-Type: application/pdf; name=a.pdf\n\n%PDF",
        )
        result = parse(message(FROM + MIXED, body))
        self.assertEqual(result.text, "plain")
        self.assertEqual(result.html, '<img src="cid:logo@x">')
        self.assertEqual(
            result.attachments,
            (
                Attachment("attachment-1.png", "image/png", b"\x89PNG", "logo@x", True),
                Attachment("a.pdf", "application/pdf", b"%PDF"),
            ),
        )

    def test_second_alternative_of_same_type_dropped(self) -> None:
        """
        A second rendering of the same type inside the body's alternative
        is dropped, not turned into an attachment.
        """
        body = multipart(
            "alt",
            "Content-Type: text/plain\n\none",
            "Content-Type: text/plain\n\ntwo",
            "Content-Type: text/html\n\n<p>one</p>",
            "Content-Type: text/html\n\n<p>two</p>",
        )
        result = parse(message(FROM + ALTERNATIVE, body))
        self.assertEqual((result.text, result.html, result.attachments), ("one", "<p>one</p>", ()))

    def test_text_after_body_becomes_attachment(self) -> None:
        """
        Outside the body's alternative, a text or HTML part found after
        the first body is an attachment.
        """
        body = multipart_bytes(
            "mix",
            b"Content-Type: text/plain\n\nbody",
            b"Content-Type: text/plain; charset=iso-8859-1\n\nfooter \xe9",
            b"Content-Type: text/html\n\n<p>late</p>",
        )
        result = parse(message(FROM + MIXED, body))
        self.assertEqual((result.text, result.html), ("body", None))
        self.assertEqual(
            result.attachments,
            (
                Attachment("attachment-1.txt", "text/plain", b"footer \xe9", charset="iso-8859-1"),
                Attachment("attachment-2.html", "text/html", b"<p>late</p>"),
            ),
        )

    def test_text_with_attachment_disposition_is_attachment(self) -> None:
        """
        text/plain or text/html with Content-Disposition: attachment is an
        attachment even before any body.
        """
        body = multipart(
            "mix",
            "Content-Type: text/html\nContent-Disposition: attachment; filename=page.html\n\n<p/>",
            "Content-Type: text/plain\n\nbody",
        )
        result = parse(message(FROM + MIXED, body))
        self.assertEqual(result.text, "body")
        self.assertIsNone(result.html)
        self.assertEqual(result.attachments, (Attachment("page.html", "text/html", b"<p/>"),))

    def test_multipart_without_boundary_read_as_text(self) -> None:
        """
        A multipart without boundary parameter or without delimiter lines
        is passed on as text rather than lost; an empty one gives nothing.
        """
        result = parse(message(FROM + "Content-Type: multipart/mixed\n", "only text\n"))
        self.assertEqual(result.text, "only text\n")
        result = parse(message(FROM + MIXED, "no delimiters\n"))
        self.assertEqual(result.text, "no delimiters\n")
        result = parse(message(FROM + MIXED, "\n"))
        self.assertEqual((result.text, result.html, result.attachments), (None, None, ()))

    def test_delimiter_lines(self) -> None:
        """
        Delimiters follow RFC 2046 section 5.1.1: the preamble and epilogue
        are ignored, trailing white space is allowed, a longer line is not
        a delimiter, the line end before a delimiter belongs to it and a
        missing close delimiter ends the last part at the end of the body.
        """
        body = (
            "preamble\n--mix  \nContent-Type: text/plain\n\nfirst\n--mixed\nstill first\n\n"
            "--mix\t\nContent-Type: application/octet-stream\n\nsecond\n"
            "--mix--\nepilogue\n--mix\n\nnot a part\n"
        )
        result = parse(message(FROM + MIXED, body))
        self.assertEqual(result.text, "first\n--mixed\nstill first\n")
        self.assertEqual(
            result.attachments,
            (Attachment("attachment-1.bin", "application/octet-stream", b"second"),),
        )
        result = parse(message(FROM + MIXED, "--mix\n\nbody\n--mix\n\nno close\n"))
        self.assertEqual(result.text, "body")
        self.assertEqual(result.attachments[0].content, b"no close\r\n")

    def test_unknown_multipart_subtype_is_mixed(self) -> None:
        """
        Unrecognised multipart subtypes are read as multipart/mixed
        (RFC 2046 section 5.1.7).
        """
        body = multipart("b", "\nhello", "Content-Type: image/gif\n\nGIF8")
        result = parse(message(FROM + "Content-Type: multipart/x-weird; boundary=b\n", body))
        self.assertEqual(result.text, "hello")
        self.assertEqual([a.filename for a in result.attachments], ["attachment-1.gif"])

    def test_empty_part_without_name_skipped(self) -> None:
        """
        A part with neither content nor file name carries nothing and is
        not an attachment.
        """
        body = multipart("mix", "\nbody", "\n", "Content-Type: application/pdf\n\n")
        self.assertEqual(parse(message(FROM + MIXED, body)).attachments, ())

    def test_bare_cr_ends_header_lines(self) -> None:
        """
        A bare CR ends a header line, as in the standard library's parser.
        """
        result = parse(b"From: a@example.com\rSubject: cr\r\n\r\nbody")
        self.assertEqual(
            (result.author_address, result.subject, result.text), ("a@example.com", "cr", "body")
        )


class RawOnlyTests(SynchronousTestCase):
    """
    Signed and encrypted messages cannot be rebuilt from their parts.
    """

    def test_signed_and_encrypted(self) -> None:
        """
        multipart/signed, multipart/encrypted (RFC 1847) and
        application/pkcs7-mime (RFC 8551) messages are C{raw_only}, also
        when nested in multipart/mixed.
        """
        signed = (
            'Content-Type: multipart/signed; protocol="application/pgp-signature"; boundary=s\n',
            multipart("s", "\nsigned text", "Content-Type: application/pgp-signature\n\nsig"),
        )
        result = parse(message(FROM + signed[0], signed[1]))
        self.assertTrue(result.raw_only)
        self.assertEqual(result.text, "signed text")
        self.assertEqual(result.attachments[0].filename, "attachment-1.asc")
        encrypted = parse(
            message(
                FROM + "Content-Type: multipart/encrypted; boundary=e\n",
                multipart(
                    "e",
                    "Content-Type: application/pgp-encrypted\n\nVersion: 1",
                    "Content-Type: application/octet-stream\n\n-----BEGIN PGP MESSAGE-----",
                ),
            )
        )
        self.assertTrue(encrypted.raw_only)
        for media in ("application/pkcs7-mime", "application/x-pkcs7-mime"):
            smime = parse(
                message(
                    FROM + f"Content-Type: {media}; smime-type=enveloped-data; name=smime.p7m\n"
                    "Content-Transfer-Encoding: base64\n",
                    "MIAGCSqGSIb3DQEHA6CAMIACAQA=",
                )
            )
            self.assertTrue(smime.raw_only)
            self.assertEqual(smime.attachments[0].filename, "smime.p7m")
        nested = parse(message(FROM + MIXED, multipart("mix", signed[0] + "\n" + signed[1])))
        self.assertTrue(nested.raw_only)

    def test_plain_message_not_raw_only(self) -> None:
        """
        An ordinary message can be rebuilt; C{raw} always holds the data.
        """
        data = message(FROM)
        result = parse(data)
        self.assertFalse(result.raw_only)
        self.assertEqual(result.raw, data)
