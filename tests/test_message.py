"""
Tests for L{relayd.message}: RFC 5322 / MIME parsing and the header policy.

The corpus tests read the enmime test messages (MIT licence, see
C{enmime/LICENSE} in the corpus folder).  The folder is found at
C{shared/corpus} next to the project checkout, or at C{$RELAYD_CORPUS};
those tests are skipped when it is absent.
"""

from __future__ import annotations

import base64
import email
import email.policy
import os
import re
from collections.abc import Callable
from pathlib import Path
from unittest import SkipTest

from attrs import field, frozen
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from relayd.config import HeadersConfig
from relayd.message import (
    MAX_ADDRESS_BYTES,
    MAX_DEPTH,
    MAX_HEADER_BYTES,
    MAX_PARTS,
    Attachment,
    Envelope,
    OutboundMessage,
    decode_text,
    parse_message,
)
from relayd.reply import Refused

FROM = "From: Alice Example <alice@example.com>\n"
ALTERNATIVE = "Content-Type: multipart/alternative; boundary=alt\n"
MIXED = "Content-Type: multipart/mixed; boundary=mix\n"


def message(head: str, body: bytes | str = "Hello\n") -> bytes:
    """
    Build a message with CRLF line ends.

    @param head: Header fields, one per line, LF separated (UTF-8 for
        8-bit fields).
    @param body: The body; LF in a C{str} body becomes CRLF.
    @return: The message bytes.
    """
    data = head.replace("\n", "\r\n").encode("utf-8")
    if isinstance(body, str):
        body = body.replace("\n", "\r\n").encode("utf-8")
    return data + b"\r\n" + body


def parse(
    data: bytes,
    policy: HeadersConfig | None = None,
    rcpt: tuple[str, ...] = ("bob@example.org",),
) -> OutboundMessage:
    """
    Parse with the default policy and a simple envelope.
    """
    envelope = Envelope(mail_from="alice@example.com", rcpt_to=rcpt)
    return parse_message(data, envelope, policy or HeadersConfig())


def multipart(boundary: str, *parts: str) -> str:
    """
    Join body parts with delimiter lines (RFC 2046 section 5.1.1).

    @param parts: Each part: its header fields, a blank line and its body.
    @return: The multipart body, LF line ends.
    """
    chunks = [f"--{boundary}\n{part}\n" for part in parts]
    return "".join(chunks) + f"--{boundary}--\n"


def multipart_bytes(boundary: str, *parts: bytes) -> bytes:
    """
    Like L{multipart}, for parts with 8-bit bytes; CRLF line ends.
    """
    chunks = [b"--%s\n%s\n" % (boundary.encode(), part) for part in parts]
    body = b"".join(chunks) + b"--%s--\n" % (boundary.encode(),)
    return body.replace(b"\n", b"\r\n")


class RejectionAssertions(SynchronousTestCase):
    """
    A helper for asserting rejections.
    """

    def assertRejected(
        self, data: bytes, code: int, status: str, text: str, **kwargs: object
    ) -> Refused:
        error = self.assertRaises(Refused, parse, data, **kwargs)
        self.assertEqual(
            (error.reply.code, error.reply.status, error.reply.text), (code, status, text)
        )
        return error


class FromTests(RejectionAssertions):
    """
    The From and Sender fields (RFC 5322 section 3.6.2).
    """

    def test_no_from_header_gets_550_560(self) -> None:
        """
        A message without a From field is refused with 550 5.6.0.
        """
        self.assertRejected(
            message("To: bob@example.org\nSubject: hi\n"),
            550,
            "5.6.0",
            "Message has no From header",
        )

    def test_from_without_address_gets_550_560(self) -> None:
        """
        A From field that holds no usable mailbox is refused with 550 5.6.0.
        """
        for value in ("Alice", "", "<>", "undisclosed-recipients:;", "@example.com"):
            self.assertRejected(
                message(f"From: {value}\n"),
                550,
                "5.6.0",
                "From header holds no valid address",
            )

    def test_several_from_addresses_without_sender_rejected(self) -> None:
        """
        Several authors need a single Sender; without it 550 5.6.0.
        """
        text = "Message has several From addresses and no single Sender header"
        self.assertRejected(message("From: a@example.com, b@example.com\n"), 550, "5.6.0", text)
        self.assertRejected(
            message("From: a@example.com\nFrom: b@example.com\n"), 550, "5.6.0", text
        )
        self.assertRejected(
            message(
                "From: a@example.com, b@example.com\nSender: a@example.com\nSender: b@example.com\n"
            ),
            550,
            "5.6.0",
            text,
        )
        self.assertRejected(
            message("From: a@example.com, b@example.com\nSender: a@x.org, b@x.org\n"),
            550,
            "5.6.0",
            text,
        )

    def test_several_from_addresses_with_single_sender_accepted(self) -> None:
        """
        With a single Sender the first author is C{from_}; the Sender is
        reported too.
        """
        result = parse(
            message(
                "From: Ann <a@example.com>, Ben <b@example.com>\n"
                "Sender: =?iso-8859-1?q?Andr=E9?= <sec@example.com>\n"
            )
        )
        self.assertEqual(result.from_, "Ann <a@example.com>")
        self.assertEqual(result.author_address, "a@example.com")
        self.assertEqual(result.sender, "André <sec@example.com>")

    def test_sender_absent_is_none(self) -> None:
        """
        Without a Sender field L{OutboundMessage.sender} is C{None}.
        """
        self.assertIsNone(parse(message(FROM)).sender)

    def test_from_formatted_and_decoded(self) -> None:
        """
        The display name is RFC 2047 decoded (also inside quotes) and the
        mailbox formatted as C{Name <addr>}.
        """
        cases = {
            "Alice <alice@example.com>": "Alice <alice@example.com>",
            "alice@example.com": "alice@example.com",
            "<alice@example.com>": "alice@example.com",
            "=?utf-8?q?J=C3=B6rg?= <j@example.com>": "Jörg <j@example.com>",
            '"=?utf-8?b?SsO2cmc=?=" <j@example.com>': "Jörg <j@example.com>",
            '"Doe, John" <j@example.com>': '"Doe, John" <j@example.com>',
            '"A \\"B\\" C" <j@example.com>': '"A \\"B\\" C" <j@example.com>',
            "j@example.com (John Doe)": "John Doe <j@example.com>",
            "Jörg <jörg@bücher.example>": "Jörg <jörg@bücher.example>",
        }
        for value, expected in cases.items():
            result = parse(message(f"From: {value}\n"))
            self.assertEqual(result.from_, expected, value)
        result = parse(message("From: Jörg <jörg@bücher.example>\n"))
        self.assertEqual(result.author_address, "jörg@bücher.example")

    def test_from_display_name_latin1_8bit(self) -> None:
        """
        An 8-bit From that is not UTF-8 is read as windows-1252.
        """
        data = b"From: J\xf6rg <j@example.com>\r\n\r\nHi\r\n"
        self.assertEqual(parse(data).from_, "Jörg <j@example.com>")


class AddressTests(SynchronousTestCase):
    """
    To, Cc, Reply-To and the computed bcc.
    """

    def test_lists_formatted(self) -> None:
        """
        To, Cc and Reply-To are lists of formatted mailboxes, in order,
        over every field of that name.
        """
        result = parse(
            message(
                FROM + "To: Bob <bob@example.org>, carol@example.org\n"
                "To: =?utf-8?q?Dani=C3=ABl?= <d@example.org>\n"
                "Cc: Eve <eve@example.net>\n"
                "Reply-To: Desk <desk@example.com>\n"
            )
        )
        self.assertEqual(
            result.to,
            ("Bob <bob@example.org>", "carol@example.org", "Daniël <d@example.org>"),
        )
        self.assertEqual(result.cc, ("Eve <eve@example.net>",))
        self.assertEqual(result.reply_to, ("Desk <desk@example.com>",))

    def test_group_syntax(self) -> None:
        """
        Group members are listed; an empty group lists nobody
        (RFC 5322 section 3.4).
        """
        result = parse(
            message(
                FROM + "To: Team: a@example.org, B <b@example.org>;, c@example.net\n"
                "Cc: undisclosed-recipients:;\n"
            )
        )
        self.assertEqual(result.to, ("a@example.org", "B <b@example.org>", "c@example.net"))
        self.assertEqual(result.cc, ())

    def test_entries_without_domain_dropped(self) -> None:
        """
        Entries without a local part and a domain are not passed on.
        """
        result = parse(message(FROM + "To: bob, <>, @x.org, ok@example.org, ,\n"))
        self.assertEqual(result.to, ("ok@example.org",))

    def test_idn_and_utf8_local_part(self) -> None:
        """
        UTF-8 local parts and IDN domains are read as written (RFC 6532).
        """
        result = parse(
            message(FROM + "To: Müller <müller@bücher.example>, x@xn--bcher-kva.example\n")
        )
        self.assertEqual(result.to, ("Müller <müller@bücher.example>", "x@xn--bcher-kva.example"))

    def test_bcc_is_envelope_minus_to_and_cc(self) -> None:
        """
        Envelope recipients found in neither To nor Cc (compared
        case-insensitively on the addr-spec) are the bcc, in envelope order,
        once each.
        """
        result = parse(
            message(FROM + "To: Bob <Bob@Example.ORG>\nCc: carol@example.org\n"),
            rcpt=(
                "bob@example.org",
                "dave@example.net",
                "CAROL@example.org",
                "Dave@Example.net",
                "erin@example.net",
            ),
        )
        self.assertEqual(result.bcc, ("dave@example.net", "erin@example.net"))

    def test_bcc_idn_labels_compared_decoded(self) -> None:
        """
        An A-label in the header and a U-label in the envelope name the
        same mailbox (RFC 5890).
        """
        result = parse(
            message(FROM + "To: x@xn--bcher-kva.example\n"),
            rcpt=("x@bücher.example", "y@bücher.example"),
        )
        self.assertEqual(result.bcc, ("y@bücher.example",))

    def test_recipients_never_hold_line_breaks(self) -> None:
        """
        Folded and encoded display names reach no field with CR, LF or NUL.
        """
        result = parse(
            message(
                FROM + "To: =?utf-8?q?Bob=0D=0ABcc=3A_x=00?= <bob@example.org>,\n"
                " Carol\n <carol@example.org>\n"
            )
        )
        self.assertEqual(result.to, ('"Bob Bcc: x" <bob@example.org>', "Carol <carol@example.org>"))


class SubjectTests(SynchronousTestCase):
    """
    The Subject field.
    """

    def subject(self, value: str | bytes) -> str:
        raw = value.encode("utf-8") if isinstance(value, str) else value
        return parse(b"From: a@example.com\r\nSubject: " + raw + b"\r\n\r\nx").subject

    def test_rfc2047_decoded(self) -> None:
        """
        Q and B encoded words are decoded; whitespace between encoded
        words is dropped, whitespace next to text kept (RFC 2047 section 6.2).
        """
        self.assertEqual(self.subject("=?utf-8?q?Gr=C3=BC=C3=9Fe?= aus Bern"), "Grüße aus Bern")
        self.assertEqual(self.subject("=?UTF-8?B?R3LDvMOfZQ==?="), "Grüße")
        self.assertEqual(self.subject("=?utf-8?q?a?= =?utf-8?q?b?="), "ab")
        self.assertEqual(self.subject("=?utf-8?q?a_?= =?utf-8?q?b?="), "a b")
        self.assertEqual(self.subject("=?ISO-8859-1?Q?caf=E9?="), "café")
        self.assertEqual(self.subject("=?utf-8*en?q?hello?="), "hello")

    def test_multibyte_character_split_across_words(self) -> None:
        """
        Adjacent words in one charset are joined before decoding, so a
        character split between them survives.
        """
        self.assertEqual(self.subject("=?utf-8?q?=E2=82?= =?utf-8?q?=AC_5?="), "€ 5")
        self.assertEqual(self.subject("=?utf-8?b?4oI=?=\n =?utf-8?b?rA==?="), "€")

    def test_folded_subject_unfolded(self) -> None:
        """
        Folding white space is unfolded (RFC 5322 section 2.2.3).
        """
        self.assertEqual(self.subject("one\n two\n\tthree"), "one two\tthree")

    def test_line_breaks_and_nul_become_spaces(self) -> None:
        """
        CR, LF and NUL, encoded or raw, never reach the subject.
        """
        self.assertEqual(self.subject("=?utf-8?q?a=0D=0Ab=00c?="), "a  b c")
        self.assertEqual(self.subject(b"a\x00b"), "a b")

    def test_8bit_subject(self) -> None:
        """
        Raw UTF-8 is read as UTF-8 (RFC 6532); other 8-bit as windows-1252.
        """
        self.assertEqual(self.subject("Grüße"), "Grüße")
        self.assertEqual(self.subject(b"Gr\xfc\xdfe \x80"), "Grüße €")

    def test_unknown_charset_and_broken_words(self) -> None:
        """
        Encoded words in charsets Python does not know fall back to UTF-8;
        malformed words stay as they are.
        """
        self.assertEqual(self.subject("=?x-bogus?q?Gr=C3=BC=C3=9Fe?="), "Grüße")
        self.assertEqual(self.subject("=?utf-8? q?abc?="), "=?utf-8? q?abc?=")
        self.assertEqual(self.subject("=?utf-8?b?QUJ?="), "AB")
        self.assertEqual(self.subject("=?utf-8?q?open"), "=?utf-8?q?open")

    def test_missing_subject_is_empty(self) -> None:
        """
        Without a Subject field the subject is C{""}.
        """
        self.assertEqual(parse(message(FROM)).subject, "")


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

    def test_transfer_encodings(self) -> None:
        """
        Quoted-printable and base64 bodies are decoded (RFC 2045 section 6).
        """
        qp = parse(
            message(
                FROM + "Content-Type: text/plain; charset=utf-8\n"
                "Content-Transfer-Encoding: quoted-printable\n",
                "Gr=C3=BC=C3=9Fe, a long line=\n continued\n",
            )
        )
        self.assertEqual(qp.text, "Grüße, a long line continued\n")
        b64 = parse(
            message(
                FROM + "Content-Type: text/html; charset=utf-8\n"
                "Content-Transfer-Encoding: BASE64\n",
                base64.encodebytes("<p>Grüße</p>".encode()).decode(),
            )
        )
        self.assertEqual(b64.html, "<p>Grüße</p>")

    def test_charsets(self) -> None:
        """
        Bodies in any charset the codecs module knows are decoded.
        """
        samples = {
            "iso-8859-1": "café",
            "ISO-8859-2": "Zażółć gęślą jaźń",
            "iso-8859-15": "€uro",
            "windows-1251": "Привет",
            "windows-1252": "“quoted” – €",
            "koi8-r": "Привет, мир",
            "iso-2022-jp": "こんにちは",
            "shift_jis": "日本語のテキスト",
            "euc-jp": "日本語",
            "gb2312": "中文邮件",
            "euc-kr": "한국어",
            "big5": "中文",
            "utf-16": "hi ☃",
            '"UTF-8"': "quoted ✓",
        }
        for charset, text in samples.items():
            codec = charset.strip('"')
            result = parse(
                message(
                    FROM + f"Content-Type: text/plain; charset={charset}\n"
                    "Content-Transfer-Encoding: base64\n",
                    base64.encodebytes(text.encode(codec)).decode(),
                )
            )
            self.assertEqual(result.text, text, charset)

    def test_charset_supersets(self) -> None:
        """
        Labels are decoded with their WHATWG superset: gb2312 as gb18030,
        shift_jis as cp932, iso-8859-1 as windows-1252.
        """
        cases = [
            ("gb2312", "镕".encode("gbk"), "镕"),
            ("shift_jis", "①".encode("cp932"), "①"),
            ("iso-8859-1", b"\x93quoted\x94", "“quoted”"),
        ]
        for charset, raw, expected in cases:
            result = parse(message(FROM + f"Content-Type: text/plain; charset={charset}\n", raw))
            self.assertEqual(result.text, expected, charset)

    def test_charset_fallbacks(self) -> None:
        """
        Wrong or unknown charsets fall back: declared, UTF-8, declared with
        replacement, windows-1252 with replacement.
        """
        cases = [
            ("us-ascii", "Grüße".encode(), "Grüße"),
            ("utf-8", "Grüße".encode("cp1252"), "Grüße"),
            ("x-unknown", "Grüße".encode(), "Grüße"),
            ("x-unknown", "Grüße".encode("cp1252"), "Grüße"),
            ("base64", b"abc", "abc"),
            ("shift_jis", b"ok \x82\xa0 \x82", "ok あ \ufffd"),
            (None, b"caf\xe9 \x81", "café \ufffd"),
        ]
        for charset, raw, expected in cases:
            head = FROM
            if charset:
                head += f"Content-Type: text/plain; charset={charset}\n"
            self.assertEqual(parse(message(head, raw)).text, expected, charset)

    def test_mislabelled_base64_text_kept(self) -> None:
        """
        A text part declared base64 that holds plain text (characters no
        encoder writes, no valid text once decoded) is passed as written.
        """
        result = parse(
            message(
                FROM + "Content-Type: text/plain; charset=utf-8\n"
                "Content-Transfer-Encoding: base64\n",
                "plain words  here\nand there\n",
            )
        )
        self.assertEqual(result.text, "plain words  here\nand there\n")

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


class HeaderPolicyTests(RejectionAssertions):
    """
    The C{[headers]} policy.
    """

    def test_tags(self) -> None:
        """
        Tags are comma separated, trimmed, empty ones dropped, duplicates
        dropped keeping the first, read from every tags header.
        """
        result = parse(message(FROM + "X-Tags: welcome, , onboarding ,welcome\nx-tags: b2b\n"))
        self.assertEqual(result.tags, ("welcome", "onboarding", "b2b"))
        self.assertEqual(result.mapped, ("X-Tags",))
        self.assertEqual(result.headers, ())

    def test_tags_limits(self) -> None:
        """
        At most C{max_tags} tags, each cut to C{max_tag_length} characters.
        """
        policy = HeadersConfig(max_tags=2, max_tag_length=4)
        result = parse(message(FROM + "X-Tags: abcdef, abcdxx, ab, cd\n"), policy)
        self.assertEqual(result.tags, ("abcd", "ab"))
        self.assertEqual(parse(message(FROM + "X-Tags: a\n"), HeadersConfig(max_tags=0)).tags, ())

    def test_tags_patterns_and_encoded_words(self) -> None:
        """
        Tag header names may be prefix patterns; values are RFC 2047 decoded.
        """
        policy = HeadersConfig(tags=("X-Tag*", "Keywords"))
        result = parse(
            message(FROM + "X-Tag-A: one\nKeywords: =?utf-8?q?gr=C3=BCn?=\nX-Tags: two\n"), policy
        )
        self.assertEqual(result.tags, ("one", "grün", "two"))
        self.assertEqual(result.mapped, ("X-Tag-A", "Keywords", "X-Tags"))

    def test_stream(self) -> None:
        """
        The stream header selects the stream; it must be one of
        C{streams} when that is set (matched case-insensitively, reported
        as configured); absent, C{default_stream} or C{None}.
        """
        policy = HeadersConfig(streams=("outbound", "broadcast"), default_stream="outbound")
        self.assertEqual(parse(message(FROM + "X-Stream: broadcast\n"), policy).stream, "broadcast")
        self.assertEqual(parse(message(FROM + "X-Stream: Broadcast\n"), policy).stream, "broadcast")
        self.assertEqual(parse(message(FROM), policy).stream, "outbound")
        self.assertEqual(parse(message(FROM + "X-Stream:  \n"), policy).stream, "outbound")
        self.assertIsNone(parse(message(FROM)).stream)
        self.assertEqual(parse(message(FROM + "X-Stream: anything\n")).stream, "anything")
        result = parse(message(FROM + "X-Stream: broadcast\n"), policy)
        self.assertEqual((result.mapped, result.headers), (("X-Stream",), ()))

    def test_unknown_stream_gets_550_571(self) -> None:
        """
        A stream not in C{streams} is refused with 550 5.7.1; the value is
        quoted as bounded printable ASCII.
        """
        policy = HeadersConfig(streams=("outbound",))
        self.assertRejected(
            message(FROM + "X-Stream: marketing\n"),
            550,
            "5.7.1",
            "unknown stream 'marketing'",
            policy=policy,
        )
        error = self.assertRejected(
            message(FROM + "X-Stream: Grüße=?utf-8?q?=0D=0A?=x" + "y" * 100 + "\n"),
            550,
            "5.7.1",
            "unknown stream 'Gr??e  x" + "y" * 56 + "...'",
            policy=policy,
        )
        self.assertTrue(error.reply.text.isascii() and error.reply.text.isprintable())

    def test_tracking(self) -> None:
        """
        C{true} and C{false} (any case) set C{track}; other values do not.
        """
        for value, expected in [
            ("true", True),
            ("FALSE", False),
            (" True ", True),
            ("yes", None),
            ("", None),
        ]:
            result = parse(message(FROM + f"X-Track: {value}\n"))
            self.assertEqual(result.track, expected, value)
            self.assertEqual(result.mapped, ("X-Track",))
        self.assertIsNone(parse(message(FROM)).track)

    def test_list_unsubscribe(self) -> None:
        """
        The list_unsubscribe header fills C{list_unsubscribe}; the RFC 8058
        List-Unsubscribe and List-Unsubscribe-Post headers are kept.
        """
        result = parse(
            message(
                FROM + "X-List-Unsubscribe: <https://example.com/u/1>\n"
                "List-Unsubscribe: <https://example.com/u/2>,\n <mailto:u@example.com>\n"
                "List-Unsubscribe-Post: List-Unsubscribe=One-Click\n"
            )
        )
        self.assertEqual(result.list_unsubscribe, "<https://example.com/u/1>")
        self.assertEqual(
            result.headers,
            (
                ("List-Unsubscribe", "<https://example.com/u/2>, <mailto:u@example.com>"),
                ("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"),
            ),
        )
        self.assertEqual(result.mapped, ("X-List-Unsubscribe",))

    def test_metadata(self) -> None:
        """
        C{<prefix><key>: value} headers become metadata pairs, the key the
        rest of the name; the first of duplicate keys wins; an empty key is
        dropped.
        """
        result = parse(
            message(
                FROM + "X-Metadata-User-Id: 42\nx-metadata-Plan: =?utf-8?q?gr=C3=BCn?=\n"
                "X-METADATA-user-id: 43\nX-Metadata-: nothing\n"
            )
        )
        self.assertEqual(result.metadata, (("User-Id", "42"), ("Plan", "grün")))
        self.assertEqual(result.mapped, ("X-Metadata-User-Id", "x-metadata-Plan"))
        self.assertEqual(result.stripped, ("X-Metadata-",))
        self.assertEqual(result.headers, ())

    def test_required_headers(self) -> None:
        """
        Each required header must be present with its value (compared
        case-insensitively); it is consumed, never passed on.
        """
        policy = HeadersConfig(required={"X-Api-Client": "Billing"})
        result = parse(message(FROM + "x-api-client:  billing \n"), policy)
        self.assertEqual((result.mapped, result.headers), (("x-api-client",), ()))
        for head in ("", "X-Api-Client: other\n"):
            self.assertRejected(
                message(FROM + head),
                550,
                "5.7.1",
                "Missing required header X-Api-Client",
                policy=policy,
            )

    def test_keep_and_strip(self) -> None:
        """
        Headers matching C{keep} and not C{strip} are passed on in order,
        unfolded; C{strip} wins; the others are reported as stripped.
        """
        policy = HeadersConfig(keep=("X-*", "In-Reply-To"), strip=("X-Secret*",))
        result = parse(
            message(
                FROM + "X-Mailer: Mail\n 1.0\nX-Secret-Token: t\nIn-Reply-To: <a@b>\n"
                "Received: from x\nx-mailer: again\nReceived: from y\n"
            ),
            policy,
        )
        self.assertEqual(
            result.headers,
            (("X-Mailer", "Mail 1.0"), ("In-Reply-To", "<a@b>"), ("x-mailer", "again")),
        )
        self.assertEqual(result.stripped, ("X-Secret-Token", "Received"))

    def test_message_id(self) -> None:
        """
        Message-ID is passed on only with C{keep_message_id}, whatever
        C{keep} and C{strip} say.
        """
        data = message(FROM + "Message-ID: <1@example.com>\n")
        self.assertEqual(parse(data).headers, ())
        self.assertEqual(parse(data).stripped, ("Message-ID",))
        kept = parse(data, HeadersConfig(keep_message_id=True))
        self.assertEqual(kept.headers, (("Message-ID", "<1@example.com>"),))
        dropped = parse(data, HeadersConfig(keep=("*",), strip=()))
        self.assertEqual(dropped.headers, ())

    def test_represented_headers_never_kept(self) -> None:
        """
        Fields represented by message fields, Bcc and Date never pass
        through, even when C{keep} is C{*}; Bcc, Date and other Content-*
        fields are reported as stripped.
        """
        policy = HeadersConfig(keep=("*",), strip=())
        result = parse(
            message(
                FROM + "To: b@example.org\nCc: c@example.org\nBcc: d@example.org\n"
                "Reply-To: r@example.org\nSubject: s\nSender: alice@example.com\n"
                "Date: Mon, 1 Jan 2024 00:00:00 +0000\nMIME-Version: 1.0\n"
                "Content-Type: text/plain\nContent-Transfer-Encoding: 7bit\n"
                "Content-Language: en\nKeywords: kept\n"
            ),
            policy,
        )
        self.assertEqual(result.headers, (("Keywords", "kept"),))
        self.assertEqual(result.stripped, ("Bcc", "Date", "Content-Language"))

    def test_header_values_never_hold_line_breaks(self) -> None:
        """
        Kept values are unfolded; NUL and encoded line breaks do not
        survive anywhere.
        """
        result = parse(
            message(FROM + "X-A: one\n two\nX-B: a\x00b\nX-Metadata-K: =?utf-8?q?x=0Ay?=\n")
        )
        self.assertEqual(result.headers, (("X-A", "one two"), ("X-B", "a b")))
        self.assertEqual(result.metadata, (("K", "x y"),))

    def test_empty_control_names_disable_them(self) -> None:
        """
        An empty stream, tracking, list_unsubscribe or metadata_prefix
        name turns that control off: such headers are ordinary.
        """
        policy = HeadersConfig(
            tags=(), stream="", tracking="", list_unsubscribe="", metadata_prefix=""
        )
        result = parse(
            message(FROM + "X-Stream: s\nX-Track: true\nX-Tags: t\nX-List-Unsubscribe: u\n"),
            policy,
        )
        self.assertEqual(
            (result.stream, result.track, result.tags, result.list_unsubscribe, result.mapped),
            (None, None, (), None, ()),
        )
        self.assertEqual(
            [name for name, _ in result.headers],
            ["X-Stream", "X-Track", "X-Tags", "X-List-Unsubscribe"],
        )


class LimitTests(RejectionAssertions):
    """
    The limits that keep parsing linear.
    """

    def test_header_section_too_large(self) -> None:
        """
        Header sections larger than L{MAX_HEADER_BYTES} are refused.
        """
        data = message(FROM + "X-Big: " + "a" * MAX_HEADER_BYTES + "\n")
        self.assertRejected(
            data, 550, "5.6.0", f"Message headers are larger than {MAX_HEADER_BYTES} bytes"
        )

    def test_address_fields_too_large(self) -> None:
        """
        Address fields larger than L{MAX_ADDRESS_BYTES} are refused.
        """
        to = ", ".join(f"u{i}@example.org" for i in range(MAX_ADDRESS_BYTES // 16))
        self.assertRejected(
            message(FROM + f"To: {to}\n"),
            550,
            "5.6.0",
            f"Address headers are larger than {MAX_ADDRESS_BYTES} bytes",
        )

    def test_too_many_parts(self) -> None:
        """
        More than L{MAX_PARTS} MIME entities are refused.
        """
        body = "--mix\n\nx\n" * MAX_PARTS
        self.assertRejected(
            message(FROM + MIXED, body),
            550,
            "5.6.0",
            f"Message has more than {MAX_PARTS} MIME parts",
        )
        ok = parse(message(FROM + MIXED, "--mix\nContent-Type: image/gif\n\nx\n" * (MAX_PARTS - 1)))
        self.assertEqual(len(ok.attachments), MAX_PARTS - 1)

    def test_nesting_too_deep(self) -> None:
        """
        Multiparts nested more than L{MAX_DEPTH} deep are refused.
        """

        def nested(depth: int) -> bytes:
            head = "".join(
                f"Content-Type: multipart/mixed; boundary=b{i}\n\n--b{i}\n" for i in range(depth)
            )
            return message(FROM + head, "deep\n")

        self.assertEqual(parse(nested(MAX_DEPTH)).text, "deep\n")
        self.assertRejected(
            nested(MAX_DEPTH + 1),
            550,
            "5.6.0",
            f"MIME parts are nested more than {MAX_DEPTH} deep",
        )

    def test_large_degenerate_bodies(self) -> None:
        """
        25 MiB of empty lines, of one line, or of near-miss delimiters are
        read without trouble.
        """
        size = 25 * 1024 * 1024
        self.assertEqual(len(parse(message(FROM, b"\r\n" * (size // 2))).text or ""), size // 2)
        self.assertEqual(len(parse(message(FROM, b"a" * size)).text or ""), size)
        result = parse(message(FROM + MIXED, b"--mix\r\n\r\n" + b"x--mix\n--mixy\n" * (size // 14)))
        self.assertEqual(len(result.text or ""), (size // 14) * 14)


class DecodeTextTests(SynchronousTestCase):
    """
    L{decode_text}: the charset fallback rule.
    """

    def test_rule(self) -> None:
        """
        Declared (strict), UTF-8 (strict), declared with replacement,
        windows-1252 with replacement.
        """
        self.assertEqual(decode_text("€".encode("iso-8859-15"), "iso-8859-15"), "€")
        self.assertEqual(decode_text("é".encode(), "koi8-r"), "é".encode().decode("koi8-r"))
        self.assertEqual(decode_text("é".encode(), "windows-1250"), "é".encode().decode("cp1250"))
        self.assertEqual(decode_text(b"\xe9\x81", "utf-8"), "é\ufffd")
        self.assertEqual(decode_text(b"\x82\xa0\x82", "shift_jis"), "あ\ufffd")
        self.assertEqual(decode_text(b"\xe9", "rot13"), "é")
        self.assertEqual(decode_text(b"\xe9", "unicode_escape"), "é")
        self.assertEqual(decode_text(b"ok", None), "ok")
        self.assertEqual(decode_text(b'"\xe9"', '"ISO-8859-1"'), '"é"')
        self.assertEqual(decode_text(b"\x80", "windows-874"), "€")


# ---------------------------------------------------------------------------
# Properties

_NAMES = [
    "X-Tags",
    "X-Stream",
    "X-Track",
    "X-List-Unsubscribe",
    "X-Metadata-User",
    "X-Metadata-",
    "X-Custom",
    "X-Secret",
    "List-Unsubscribe",
    "List-Unsubscribe-Post",
    "List-Id",
    "In-Reply-To",
    "References",
    "Received",
    "DKIM-Signature",
    "ARC-Seal",
    "Message-ID",
    "Date",
    "Bcc",
    "To",
    "Cc",
    "Reply-To",
    "Subject",
    "Sender",
    "MIME-Version",
    "Content-Type",
    "Content-Language",
    "Keywords",
    "X-Api-Key",
]
_REPRESENTED = {
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
_CONTROL_PATTERNS = st.sampled_from(_NAMES + ["X-*", "List-*", "*", "x-metadata-*", "Content-*"])


def _random_case(draw: st.DrawFn, name: str) -> str:
    flips = draw(st.lists(st.booleans(), min_size=len(name), max_size=len(name)))
    return "".join(c.swapcase() if f else c for c, f in zip(name, flips, strict=True))


@st.composite
def _header_fields(draw: st.DrawFn) -> list[tuple[str, str]]:
    names = st.one_of(
        st.sampled_from(_NAMES),
        st.from_regex(r"[A-Za-z][A-Za-z0-9-]{0,12}", fullmatch=True).filter(
            lambda n: n.lower() != "from"
        ),
    )
    words = st.text(
        st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n"),
        max_size=12,
    )
    fields = []
    count = draw(st.integers(0, 12))
    for _ in range(count):
        name = draw(names)
        parts = draw(st.lists(words, max_size=4))
        seps = draw(
            st.lists(st.sampled_from([" ", "\r\n ", "\r\n\t", ","]), min_size=3, max_size=3)
        )
        value = "".join(p + seps[i % 3] for i, p in enumerate(parts))
        fields.append((_random_case(draw, name), value.lstrip(" \t\r\n")))
    return fields


@st.composite
def _policies(draw: st.DrawFn) -> HeadersConfig:
    tags: tuple[str, ...] = draw(
        st.sampled_from([(), ("X-Tags",), ("X-Tags", "Keywords"), ("X-T*",)])
    )
    return HeadersConfig(
        keep=tuple(draw(st.lists(_CONTROL_PATTERNS, max_size=4))),
        strip=tuple(draw(st.lists(_CONTROL_PATTERNS, max_size=4))),
        tags=tags,
        max_tags=draw(st.integers(0, 5)),
        max_tag_length=draw(st.integers(1, 8)),
        stream=draw(st.sampled_from(["X-Stream", ""])),
        keep_message_id=draw(st.booleans()),
    )


def _matches(name: str, patterns: tuple[str, ...]) -> bool:
    name = name.lower()
    for pattern in patterns:
        pattern = pattern.lower()
        if pattern.endswith("*") and name.startswith(pattern[:-1]):
            return True
        if name == pattern:
            return True
    return False


class PropertyTests(SynchronousTestCase):
    """
    Properties over open-ended input.
    """

    @settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
    @given(fields=_header_fields(), policy=_policies())
    def test_header_policy(self, fields: list[tuple[str, str]], policy: HeadersConfig) -> None:
        """
        Every header field lands in exactly one place (kept, mapped,
        stripped, or represented by a message field); kept headers obey
        C{keep}/C{strip}; no output value holds CR, LF or NUL; tags obey
        their limits.
        """
        head = "From: a@example.com\r\n" + "".join(f"{n}: {v}\r\n" for n, v in fields)
        data = head.encode("utf-8") + b"\r\nbody"
        result = parse(data, policy)
        kept = {name.lower() for name, _ in result.headers}
        mapped = {name.lower() for name in result.mapped}
        stripped = {name.lower() for name in result.stripped}
        control = {policy.stream.lower(), "x-track", "x-list-unsubscribe"} - {""}
        for name, _ in fields:
            key = name.lower()
            places = [key in kept, key in mapped, key in stripped, key in _REPRESENTED]
            self.assertEqual(places.count(True), 1, (name, places))
        for name, value in result.headers:
            key = name.lower()
            self.assertNotIn(key, _REPRESENTED | {"bcc", "date"} | control)
            self.assertFalse(key.startswith("content-"))
            self.assertFalse(key.startswith("x-metadata-"))
            self.assertFalse(_matches(key, policy.tags))
            if key == "message-id":
                self.assertTrue(policy.keep_message_id)
            else:
                self.assertTrue(_matches(key, policy.keep) and not _matches(key, policy.strip))
            self.assertFalse(set(value) & {"\r", "\n", "\0"}, value)
        for key in mapped:
            self.assertTrue(
                key in control or key.startswith("x-metadata-") or _matches(key, policy.tags), key
            )
        self.assertLessEqual(len(result.tags), policy.max_tags)
        self.assertEqual(len(set(result.tags)), len(result.tags))
        for text in (
            result.subject,
            *result.tags,
            *result.to,
            *result.cc,
            *result.reply_to,
            *(v for _, v in result.metadata),
            result.stream or "",
        ):
            self.assertFalse(set(text) & {"\r", "\n", "\0"}, text)
        for tag in result.tags:
            self.assertTrue(0 < len(tag) <= policy.max_tag_length)
            self.assertNotIn(",", tag)
            self.assertEqual(tag, tag.strip())

    @settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
    @given(
        tags=st.lists(
            st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=10).filter(
                lambda t: "=?" not in t
            ),
            max_size=8,
        ),
        max_tags=st.integers(0, 6),
        max_length=st.integers(1, 6),
    )
    def test_tags(self, tags: list[str], max_tags: int, max_length: int) -> None:
        """
        Tags are the trimmed, cut, non-empty, distinct comma separated
        items, in order, at most C{max_tags}.
        """
        policy = HeadersConfig(max_tags=max_tags, max_tag_length=max_length)
        value = ",".join(tags)
        data = b"From: a@example.com\r\nX-Tags: " + value.encode("utf-8") + b"\r\n\r\n"
        expected: list[str] = []
        for item in value.strip().split(","):
            tag = item.strip()[:max_length].strip()
            if tag and tag not in expected:
                expected.append(tag)
        self.assertEqual(parse(data, policy).tags, tuple(expected[:max_tags]))

    @settings(max_examples=500, deadline=None, suppress_health_check=list(HealthCheck))
    @given(
        st.one_of(
            st.binary(max_size=400),
            st.lists(
                st.sampled_from(
                    [
                        b"From: a@example.com\r\n",
                        b"From: ",
                        b"To: ",
                        b"Subject: ",
                        b"=?utf-8?q?",
                        b"=?x?b?",
                        b"?=",
                        b"\r\n",
                        b"\n",
                        b"\r",
                        b" ",
                        b":",
                        b",",
                        b";",
                        b"<",
                        b">",
                        b'"',
                        b"(",
                        b"\\",
                        b"@",
                        b"Content-Type: multipart/mixed; boundary=b\r\n",
                        b"Content-Type: multipart/alternative; boundary=c\r\n",
                        b"Content-Type: text/html; charset=",
                        b"Content-Type: message/rfc822\r\n",
                        b"--b",
                        b"--c",
                        b"--",
                        b"\r\n\r\n",
                        b"Content-Transfer-Encoding: base64\r\n",
                        b"Content-Transfer-Encoding: quoted-printable\r\n",
                        b"Content-Disposition: attachment; filename*=utf-8''%E2%82",
                        b"filename*0*=",
                        b"name=",
                        b"Content-ID: <x>",
                        b"cid:x",
                        b"\xff",
                        b"\xc3\xa9",
                        b"\x00",
                        b"=E9",
                        b"=\r\n",
                        b"QUJD",
                        b"X-Tags: a, b",
                        b"X-Stream: s",
                        b"X-Metadata-",
                        b"Sender: ",
                        b"From ",
                        b"utf-16",
                        b"iso-2022-jp",
                        b"\x1b$B",
                        b"text/calendar; method=",
                        b"multipart/signed",
                    ]
                ),
                max_size=80,
            ).map(b"".join),
        )
    )
    def test_any_bytes_parse_or_are_rejected(self, data: bytes) -> None:
        """
        Whatever the bytes, parsing returns a message or raises
        L{Refused} with a printable ASCII text, never anything else.
        """
        policy = HeadersConfig(streams=("s",), required={})
        try:
            result = parse(data, policy)
        except Refused as error:
            self.assertIn(error.reply.status, ("5.6.0", "5.7.1"))
            self.assertTrue(
                error.reply.text.isascii() and error.reply.text.isprintable(), error.reply.text
            )
            return
        for text in (result.subject, result.from_, *result.to, *(v for _, v in result.headers)):
            self.assertFalse(set(text) & {"\r", "\n", "\0"})
        for attachment in result.attachments:
            self.assertTrue(attachment.filename)


# ---------------------------------------------------------------------------
# The enmime corpus

CORPUS = Path(
    os.environ.get("RELAYD_CORPUS") or Path(__file__).resolve().parents[2] / "shared" / "corpus"
)
ENMIME = CORPUS / "enmime"


@frozen
class Expected:
    """
    What the upstream must receive from one corpus message.

    @ivar text: The start of the text body, or C{None} for no text body.
    @ivar html: The start of the HTML body, or C{None}.
    @ivar attachments: C{(filename, content_type, size in bytes, inline)}.
    @ivar differs: Aspects (C{subject}, C{sender}, C{text}, C{html},
        C{attachments}) where relayd deliberately reads the file otherwise
        than C{email.message_from_bytes(data, policy=policy.default)}, and
        why.  Every aspect not listed must agree with the standard library.
    """

    subject: str
    sender: str
    text: str | None
    html: str | None
    attachments: tuple[tuple[str, str, int, bool], ...] = ()
    raw_only: bool = False
    differs: dict[str, str] = field(factory=dict)


@frozen
class Rejected:
    """
    The corpus message is refused with C{550 <status> <text>}.
    """

    status: str
    text: str


_EMPTY_PART = "an empty part without headers or name carries nothing"
_ALTERNATIVE = "the second text/plain is another rendering in the same alternative"
_BETTER_CHARSET = "the standard library cannot decode it (wrong or unknown charset)"

CORPUS_TABLE: dict[str, Expected | Rejected] = {
    "low-quality/bad-final-boundary.raw": Expected(
        subject="Attachment",
        sender="james@makita.skynet",
        text="A text section",
        html=None,
        attachments=(("foo_9E5D72.zip", "application/x-zip-compressed", 7, False),),
        differs={"attachments": _EMPTY_PART},
    ),
    # The first line is a continuation line: the From field is lost.
    "low-quality/bad-header-start.raw": Rejected("5.6.0", "Message has no From header"),
    "low-quality/bad-header-wrap.raw": Expected(
        subject="Attachment",
        sender="james@makita.skynet",
        text="A text section",
        html=None,
        # The unindented name= line ends the part's header: no file name,
        # the rest is (garbled) base64.
        attachments=(("attachment-1.zip", "application/x-zip-compressed", 63, False),),
    ),
    "low-quality/empty-header.raw": Expected(
        subject="plain text",
        sender="james@makita.skynet",
        text="A text section",
        html=None,
        differs={"attachments": _ALTERNATIVE},
    ),
    "low-quality/html-only-inline.raw": Expected(
        subject="MIME test 1",
        sender="james@makita.skynet",
        text=None,
        html="<html><head></head><body style",
        attachments=(("favicon.png", "image/png", 687, True),),
    ),
    "low-quality/incorrect-charset.raw": Expected(
        subject="plain text",
        sender="james@makita.skynet",
        text="Using Unicode/UTF-8, you can write in emails and source code things "
        "such as\n\nMathematics and sciences:\n\n  ∮ E⋅da = Q,  n → ∞",
        html=None,
        differs={"text": "us-ascii is declared but the part is UTF-8: decoded as UTF-8"},
    ),
    "low-quality/malformed-base64-attach.raw": Expected(
        subject="Attachment",
        sender="james@makita.skynet",
        text="A text section",
        html=None,
        attachments=(("some.doc", "application/msword", 7, False),),
    ),
    "low-quality/missing-content-type.raw": Expected(
        subject="plain text",
        sender="james@makita.skynet",
        text="A plain text email\n",
        html=None,
    ),
    "low-quality/missing-content-type2.raw": Expected(
        subject="plain text",
        sender="james@makita.skynet",
        text="A text section",
        html=None,
        differs={"attachments": _ALTERNATIVE},
    ),
    "low-quality/unk-charset-html-only.raw": Expected(
        subject="Attachment",
        sender="james@makita.skynet",
        text=None,
        html='<meta charset="fakescii-7">\n<p>Hello World!</p>\n',
    ),
    "low-quality/unk-charset-part.raw": Expected(
        subject="Attachment",
        sender="james@makita.skynet",
        text="A text section",
        html=None,
        attachments=(("foo_9E5D72.zip", "application/x-zip-compressed", 7, False),),
        differs={"text": _BETTER_CHARSET},
    ),
    "low-quality/unk-encoding-part.raw": Expected(
        subject="Attachment",
        sender="james@makita.skynet",
        text="A text section",
        html=None,
        # Content-Transfer-Encoding base9000: passed on undecoded.
        attachments=(("foo_9E5D72.zip", "application/x-zip-compressed", 13, False),),
    ),
    "mail/attachment-application.raw": Expected(
        subject="Attachment",
        sender="james@makita.skynet",
        text="A text section",
        html=None,
        attachments=(("some.doc", "application/msword", 7, False),),
    ),
    "mail/attachment-octet.raw": Expected(
        subject="In One Ear",
        sender="me@here.com",
        text="A text section",
        html=None,
        attachments=(("attachment-1.bin", "application/octet-stream", 61, False),),
    ),
    "mail/attachment-only-inline-quoted-printable.raw": Expected(
        subject="Text body only with disposition inline",
        sender="cgarrett@stuff.com",
        text=None,
        html='\n<!DOCTYPE html PUBLIC "-//W3C//DTD XHTML 1.0 Transitional//EN"',
    ),
    "mail/attachment-only-inline.raw": Expected(
        subject="Test",
        sender="alice@test.com",
        text=None,
        html=None,
        attachments=(("favicon.jpg", "image/jpeg", 687, False),),
    ),
    "mail/attachment-only-no-disposition.raw": Expected(
        subject="Test",
        sender="alice@test.com",
        text=None,
        html=None,
        attachments=(("favicon.jpg", "image/jpeg", 687, False),),
    ),
    "mail/attachment-only-text-attachment.raw": Expected(
        subject="Test",
        sender="alice@test.com",
        text=None,
        html=None,
        attachments=(("test.csv", "text/plain", 10, False),),
    ),
    "mail/attachment-only.raw": Expected(
        subject="Test",
        sender="alice@test.com",
        text=None,
        html=None,
        attachments=(("favicon.jpg", "image/jpeg", 687, False),),
    ),
    "mail/attachment.raw": Expected(
        subject="Attachment",
        sender="james@makita.skynet",
        text="A text section",
        html=None,
        attachments=(("test.html", "text/html", 7, False),),
    ),
    "mail/ctype-bug.raw": Expected(
        subject="Welcome to Papertrail",
        sender="support@papertrailapp.com",
        text="What's next? Head over to the Quick Start:",
        html="<html>\n  <head>\n    <title>Papertrail</title>",
    ),
    "mail/epilogue-sample.raw": Expected(
        subject="Epilogue",
        sender="pem@open.ch",
        text="A text section",
        html=None,
        attachments=(("test.html", "text/html", 7, False),),
    ),
    # No header section at all.
    "mail/erroneous.raw": Rejected("5.6.0", "Message has no From header"),
    "mail/header-only.raw": Expected(
        subject="Attachment",
        sender="james@makita.skynet",
        text=None,
        html=None,
        differs={"attachments": "a multipart without any part carries nothing"},
    ),
    "mail/html-mime-bad-charset-inline.raw": Expected(
        subject="MIME test 1",
        sender="james@makita.skynet",
        text="Test of text section",
        html="<html><head></head><body style",
        attachments=(("favicon.png", "image/png", 687, True),),
        differs={"text": _BETTER_CHARSET, "html": _BETTER_CHARSET},
    ),
    "mail/html-mime-bad-unknown-charset-inline.raw": Expected(
        subject="MIME test 1",
        sender="james@makita.skynet",
        text="Test of text section",
        html="<html><head></head><body style",
        attachments=(("favicon.png", "image/png", 687, True),),
        differs={"text": _BETTER_CHARSET, "html": _BETTER_CHARSET},
    ),
    "mail/html-mime-inline.raw": Expected(
        subject="MIME test 1",
        sender="james@makita.skynet",
        text="Test of text section",
        html="<html><head></head><body style",
        attachments=(("favicon.png", "image/png", 687, True),),
    ),
    "mail/html-only-inline.raw": Expected(
        subject="MIME test 1",
        sender="james@makita.skynet",
        text=None,
        html="<html><head></head><body style",
        attachments=(("favicon.png", "image/png", 687, True),),
    ),
    "mail/inlinemultipart.raw": Expected(
        subject="Test",
        sender="bob@extern",
        text="Simple text.\n",
        html=None,
        attachments=(
            ("test.pdf", "application/pdf", 524, False),
            ("test.txt", "text/plain", 18, False),
        ),
    ),
    # "From: Bob Dunite <bob@extern> Bobby Dunite <bobby@extern>" holds two
    # mailboxes (policy.default keeps only the first) and there is no Sender.
    "mail/malformed-multiple-address-header-values.raw": Rejected(
        "5.6.0", "Message has several From addresses and no single Sender header"
    ),
    "mail/mime-alternative.raw": Expected(
        subject="Multipart Mixed",
        sender="jamehi03@jamehi03lx.noa.com",
        text="Section one\n",
        html=None,
        differs={"attachments": _ALTERNATIVE},
    ),
    "mail/mime-bad-8bit-filename.raw": Expected(
        subject="Malformed test",
        sender="pavel.bazika@some.domain",
        text="Text part\n",
        html=None,
        attachments=(("管理.doc", "application/msword", 7, False),),
    ),
    "mail/mime-bad-content-transfer-encoding.raw": Expected(
        subject="alert",
        sender="example@demo.com",
        text="ploozdect  nispplul swunkglap zarplontruskdremp fruftsist\nploystoov",
        html='<meta http-equiv="Content-Type" content="text/html; charset=utf-8">',
        differs={"text": "plain text labelled base64 is kept with its line breaks"},
    ),
    "mail/mime-bad-content-type.raw": Expected(
        subject="Confirmation of Booking with easyHotel",
        sender="bookings@easyHotel.com",
        text="\n\nThank you for booking with easyHotel.",
        html=None,
        # "application/pdf name=..." (no semicolon) is cut to its media type.
        attachments=(("Invoice_302232133150612.pdf", "application/pdf", 524, False),),
    ),
    "mail/mime-blank-media-name.raw": Expected(
        subject="Confirmation of Booking with easyHotel",
        sender="bookings@easyHotel.com",
        text="\n\nThank you for booking with easyHotel.",
        html=None,
        attachments=(("Invoice_302232133150612.pdf", "application/pdf", 524, False),),
    ),
    "mail/mime-duplicate-param.raw": Expected(
        subject="Confirmation of Booking with easyHotel",
        sender="bookings@easyHotel.com",
        text="\n\nThank you for booking with easyHotel.",
        html=None,
        attachments=(("Invoice_302232133150612.pdf", "application/pdf", 524, False),),
    ),
    "mail/mime-mixed-related.raw": Expected(
        subject="Multipart Mixed",
        sender="jamehi03@jamehi03lx.noa.com",
        text=None,
        html="<p>html1</p>",
        attachments=(("attachment-1.html", "text/html", 12, False),),
    ),
    "mail/mime-mixed.raw": Expected(
        subject="Multipart Mixed",
        sender="jamehi03@jamehi03lx.noa.com",
        text="Section one\n",
        html=None,
        attachments=(("attachment-1.txt", "text/plain", 11, False),),
    ),
    "mail/mime-signed.raw": Expected(
        subject="Multipart Signed",
        sender="jamehi03@jamehi03lx.noa.com",
        text="Section one\n",
        html=None,
        attachments=(
            ("signature.asc", "application/pgp-signature", 828, False),
            ("attachment-2.txt", "text/plain", 11, False),
        ),
        raw_only=True,
    ),
    "mail/mime-unquoted-tspecials-param.raw": Expected(
        subject="Confirmation of Booking with easyHotel",
        sender="bookings@easyHotel.com",
        text="\n\nThank you for booking with easyHotel.",
        html=None,
        attachments=(("Invoice_(302232133150612).pdf", "application/pdf", 524, False),),
    ),
    "mail/multipart-wo-boundary.raw": Expected(
        subject="Delivery Status Notification (Failure)",
        sender="Mailer-Daemon@example.com",
        text="I'm  multipart message without boundary\n",
        html=None,
        differs={
            "text": "a multipart without boundary is passed on as text, not lost",
            "attachments": "a multipart without boundary is passed on as text, not lost",
        },
    ),
    "mail/non-mime-html-charset-header-only.raw": Expected(
        subject="Test",
        sender="alice@intern.com",
        text=None,
        html="<html>\n  <head>\n    <title>Page Title</title>\n  </head>\n  <body>\n    Test Müller",
    ),
    "mail/non-mime-html.raw": Expected(
        subject="test Sun, 14 Oct 2012 16:09:01 -0700",
        sender="james@hillyerd.com",
        text=None,
        html="<html>\n  <head>\n    <title>Document Title</title>",
    ),
    "mail/non-mime-missing-charset.raw": Expected(
        subject="test Sun, 14 Oct 2012 16:09:01 -0700",
        sender="james@hillyerd.com",
        text=None,
        html='<html>\n  <head>\n    <meta charset="windows-1250"/>\n  </head>\n  <body>\n'
        "    Unencoded Euro Sign: \x80\n",
        differs={"html": "8-bit text without a charset is read as UTF-8"},
    ),
    "mail/non-mime.raw": Expected(
        subject="test Sun, 14 Oct 2012 16:09:01 -0700",
        sender="james@hillyerd.com",
        text="This is a test mailing\n\n",
        html=None,
    ),
    "mail/other-multi-related.raw": Expected(
        subject="MIME test 1",
        sender="james@makita.skynet",
        text="Plain text.\n",
        html="<i>HTML text.</i>",
        # They have a Content-ID, but the HTML references neither.
        attachments=(
            ("image001.png", "image/png", 687, False),
            ("image002.png", "image/png", 687, False),
        ),
    ),
    "mail/other-parts.raw": Expected(
        subject="Emoji from Gmail",
        sender="valere.jeantet@gmail.com",
        text="A text section",
        html=None,
        attachments=(("B05.gif", "image/gif", 123, False),),
    ),
    "mail/qp-ascii-header.raw": Expected(
        subject="Test QP Subject!",
        sender="james@hillyerd.com",
        text="This is a test mailing\n\n",
        html=None,
    ),
    "mail/qp-utf8-header-no-break.raw": Expected(
        subject="MIME UTF8 Test ¢ More Text",
        sender="jamehi03@jamehi03lx.noa.com",
        text="Lorem ipsum dolor sit amet, consectetur adipiscing elit.",
        html="<html>\n  <head>\n\n    <meta http-equiv",
    ),
    # policy.default raises on this From; two From, one Sender: accepted.
    "mail/qp-utf8-header-recursed.raw": Expected(
        subject="MIME UTF8 Test ¢ More Text",
        sender="jamehi03@jamehi03lx.noa.com",
        text="Lorem ipsum dolor sit amet, consectetur adipiscing elit.",
        html="<html>\n  <head>\n\n    <meta http-equiv",
    ),
    "mail/qp-utf8-header.raw": Expected(
        subject="MIME UTF8 Test ¢ More Text",
        sender="jamehi03@jamehi03lx.noa.com",
        text="Lorem ipsum dolor sit amet, consectetur adipiscing elit.",
        html="<html>\n  <head>\n\n    <meta http-equiv",
    ),
    "mail/quoted-printable-mime.raw": Expected(
        subject="MIME Quoted Printable",
        sender="jamehi03@jamehi03lx.noa.com",
        text="Lorem ipsum dolor sit amet, consectetur adipiscing elit.",
        html="<html>\n  <head>\n\n    <meta http-equiv",
    ),
    "mail/quoted-printable.raw": Expected(
        subject="Quoted Printable",
        sender="james@makita.skynet",
        text="Lorem ipsum dolor sit amet, consectetur adipiscing elit.",
        html=None,
    ),
    "mail/unknown-part-type.raw": Expected(
        subject="Emoji from Gmail",
        sender="valere.jeantet@gmail.com",
        text="A text section",
        html=None,
        attachments=(("B05.gif", "image/gif", 123, False),),
    ),
}

_UNREADABLE = object()


def _stdlib_reading(data: bytes) -> dict[str, object]:
    """
    What C{email.message_from_bytes(data, policy=policy.default)} reads:
    subject, first From addr-spec, text and HTML body (C{get_body}), and
    the number of leaf parts that are not those bodies.  Values it raises
    on are L{_UNREADABLE}.
    """
    msg = email.message_from_bytes(data, policy=email.policy.default)
    reading: dict[str, object] = {}
    try:
        subject = msg["subject"]
        reading["subject"] = "" if subject is None else str(subject)
    except Exception:
        reading["subject"] = _UNREADABLE
    try:
        author = msg["from"]
        reading["sender"] = author.addresses[0].addr_spec if author else None
    except Exception:
        reading["sender"] = _UNREADABLE
    bodies = []
    for kind in ("text", "html"):
        part = msg.get_body(("plain",) if kind == "text" else ("html",))
        bodies.append(part)
        try:
            content = part.get_content() if part is not None else None
            reading[kind] = content.replace("\r\n", "\n") if content is not None else None
        except Exception:
            reading[kind] = _UNREADABLE
    leaves = [p for p in msg.walk() if not p.is_multipart()]
    reading["attachments"] = len([p for p in leaves if all(p is not b for b in bodies)])
    return reading


class CorpusTests(SynchronousTestCase):
    """
    Every message of the enmime corpus, and what the upstream receives.
    """

    def setUp(self) -> None:
        if not ENMIME.is_dir():
            raise SkipTest(f"corpus not found at {ENMIME}")

    def read(self, name: str) -> bytes:
        return (ENMIME / name).read_bytes()

    def test_every_file_has_an_entry(self) -> None:
        """
        The table covers exactly the files of the corpus.
        """
        files = {str(p.relative_to(ENMIME)).replace(os.sep, "/") for p in ENMIME.glob("*/*.raw")}
        self.assertEqual(files, set(CORPUS_TABLE))

    def check(self, name: str) -> None:
        expected = CORPUS_TABLE[name]
        data = self.read(name)
        if isinstance(expected, Rejected):
            error = self.assertRaises(Refused, parse, data)
            self.assertEqual(
                (error.reply.code, error.reply.status, error.reply.text),
                (550, expected.status, expected.text),
            )
            return
        result = parse(data)
        self.assertEqual(result.subject, expected.subject)
        self.assertEqual(result.author_address, expected.sender)
        for kind in ("text", "html"):
            want = getattr(expected, kind)
            got = getattr(result, kind)
            if want is None:
                self.assertIsNone(got, kind)
            else:
                self.assertIsNotNone(got, kind)
                self.assertTrue(got.startswith(want), f"{kind}: {got[: len(want) + 20]!r}")
        self.assertEqual(
            tuple(
                (a.filename, a.content_type, len(a.content), a.inline) for a in result.attachments
            ),
            expected.attachments,
        )
        self.assertEqual(result.raw_only, expected.raw_only)
        self.assertEqual(result.raw, data)

        # Agreement with the standard library, aspect by aspect.
        reading = _stdlib_reading(data)
        ours = {
            "subject": result.subject,
            "sender": result.author_address,
            "text": result.text,
            "html": result.html,
            "attachments": len(result.attachments),
        }
        for aspect, value in ours.items():
            theirs = reading[aspect]
            if theirs is _UNREADABLE:
                continue
            if aspect in expected.differs:
                self.assertNotEqual(value, theirs, f"{aspect} now agrees: update the table")
            else:
                self.assertEqual(value, theirs, aspect)

    def test_decoded_addresses(self) -> None:
        """
        Encoded display names in From, Sender and To are decoded; the
        second author is covered by the single Sender.
        """
        for name in ("mail/qp-utf8-header.raw", "mail/qp-utf8-header-recursed.raw"):
            result = parse(self.read(name), rcpt=("marczak@inbucket.com", "x@example.org"))
            self.assertEqual(result.from_, "James Hillyerd <jamehi03@jamehi03lx.noa.com>")
            self.assertEqual(result.sender, "André Pirard <PIRARD@vm1.ulg.ac.be>")
            self.assertEqual(result.to, ("Mirosław Marczak <marczak@inbucket.com>",))
            self.assertEqual(result.bcc, ("x@example.org",))

    def test_quoted_printable_latin1_body(self) -> None:
        """
        The ISO-8859-1 quoted-printable alternative decodes to Unicode.
        """
        result = parse(self.read("mail/quoted-printable-mime.raw"))
        reading = _stdlib_reading(self.read("mail/quoted-printable-mime.raw"))
        self.assertEqual(result.text, reading["text"])
        self.assertNotIn("=\n", result.text or "")

    def test_inline_image_content(self) -> None:
        """
        The inline image keeps its Content-ID and decodes to a PNG.
        """
        result = parse(self.read("mail/html-mime-inline.raw"))
        (image,) = result.attachments
        self.assertEqual(image.content_id, "8B8481A2-25CA-4886-9B5A-8EB9115DD064@skynet")
        self.assertTrue(image.content.startswith(b"\x89PNG\r\n"))
        self.assertIn(f"cid:{image.content_id}", result.html or "")

    def test_header_policy_on_real_headers(self) -> None:
        """
        Trace and authentication fields of a real message are stripped,
        X- fields kept.
        """
        result = parse(self.read("mail/ctype-bug.raw"))
        self.assertIn(("X-Mandrill-User", "md_30112948"), result.headers)
        for name in ("Received", "DKIM-Signature", "Authentication-Results", "Date"):
            self.assertIn(name, result.stripped)
        self.assertEqual(result.mapped, ())


def _corpus_test(name: str) -> Callable[[CorpusTests], None]:
    def test(self: CorpusTests) -> None:
        self.check(name)

    entry = CORPUS_TABLE[name]
    test.__doc__ = f"{name}: " + (
        f"refused with 550 {entry.status} {entry.text}."
        if isinstance(entry, Rejected)
        else "subject, sender, bodies and attachments as in the table."
    )
    return test


for _name in CORPUS_TABLE:
    setattr(
        CorpusTests,
        "test_" + re.sub(r"\W+", "_", _name.removesuffix(".raw")),
        _corpus_test(_name),
    )


class Base64PassthroughTests(SynchronousTestCase):
    """
    Large attachments that arrive as clean base64 are passed on encoded,
    without decoding and encoding them again.
    """

    def build(self, b64: bytes) -> bytes:
        return (
            b"From: a@example.com\r\nSubject: big\r\nMIME-Version: 1.0\r\n"
            b"Content-Type: multipart/mixed; boundary=XX\r\n\r\n--XX\r\n"
            b"Content-Type: text/plain\r\n\r\nhello\r\n--XX\r\n"
            b"Content-Type: application/pdf\r\nContent-Transfer-Encoding: base64\r\n"
            b'Content-Disposition: attachment; filename="a.pdf"\r\n\r\n' + b64 + b"--XX--\r\n"
        )

    def test_clean_base64_is_passed_on(self) -> None:
        import base64 as b64module
        import json

        from relayd.dialects import get_dialect

        raw = bytes(range(256)) * 400 + b"x"
        encoded = b64module.encodebytes(raw).replace(b"\n", b"\r\n")
        result = parse(self.build(encoded))
        (attachment,) = result.attachments
        self.assertEqual(attachment.content, b"")
        self.assertEqual(attachment.encoded, encoded.replace(b"\r\n", b""))
        self.assertEqual(attachment.payload(), raw)
        body = json.loads(get_dialect("native").body(result))
        self.assertEqual(b64module.b64decode(body["attachments"][0]["content"]), raw)

    def test_unclean_base64_is_decoded_leniently(self) -> None:
        import base64 as b64module

        raw = bytes(range(256)) * 400
        encoded = b64module.encodebytes(raw).replace(b"\n", b"\r\n")
        broken = encoded[:100] + b"!" + encoded[100:]
        (attachment,) = parse(self.build(broken)).attachments
        self.assertIsNone(attachment.encoded)
        self.assertEqual(attachment.content, raw)
