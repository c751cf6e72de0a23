"""
Tests for L{relayd.message.decoding}: encoded words (RFC 2047) in the
Subject, transfer encodings and charsets of bodies, and the charset
fallback rule.
"""

from __future__ import annotations

import base64

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from relayd.message import decode_text, decoding
from relayd.message.decoding import canonical_base64, clean_base64_length
from tests.message.support import (
    FROM,
    message,
    parse,
)


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


class BodyDecodingTests(SynchronousTestCase):
    """
    Bodies: transfer encodings (RFC 2045 section 6) and the charset
    fallback rule.
    """

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


#: Octets a base64 body may be made of, and some it may not.
_BASE64_BODY = st.lists(
    st.sampled_from([b"Q", b"U", b"+", b"/", b"=", b"\r", b"\n", b"\r\n", b"*", b".", b" "]),
    max_size=60,
).map(b"".join)


class CleanBase64LengthTests(SynchronousTestCase):
    """
    L{clean_base64_length}, which reads the body in place, slice by slice,
    against L{canonical_base64}, which copies it.
    """

    def length(self, body: bytes, chunk: int) -> int | None:
        self.patch(decoding, "_CHECK_CHUNK", chunk)
        framed = b"--head\r\n" + body + b"\r\n--tail"
        return clean_base64_length(framed, 8, 8 + len(body))

    def test_padding(self) -> None:
        for body, expected in [
            (b"QUJD\r\nQUI=\r\n", 8),
            (b"QUJD\r\nQQ==\r\n", 8),
            (b"QUJD\r\nQQ=\r\n=\r\n", 8),
            (b"QUJD\r\nQ===\r\n", None),
            (b"QUI=\r\nQUJD\r\n", None),
            (b"QQ=A\r\n", None),
            (b"QUJD\r\nQQ=\r\nA=\r\n", None),
            (b"=\r\n", None),
        ]:
            for chunk in (1, 3, 4, 6, 1024):
                self.assertEqual(self.length(body, chunk), expected, (body, chunk))

    def test_stray_character_in_any_slice(self) -> None:
        body = b"QUJD\r\n" * 50
        for chunk in (7, 64, 1024):
            self.assertEqual(self.length(body, chunk), 200)
            for at in (0, 6, 150, len(body) - 1):
                for stray in (b"*", b".", b" ", b"\t", b"\x00", b"\xff"):
                    broken = body[:at] + stray + body[at + 1 :]
                    self.assertIsNone(self.length(broken, chunk), (at, stray, chunk))

    def test_line_breaks_of_any_kind_do_not_count(self) -> None:
        for body in (b"QUJD\rQUJD\r", b"QUJD\nQUJD\n", b"QU\r\n\r\nJDQUJD", b"QUJDQUJD"):
            self.assertEqual(self.length(body, 3), 8, body)
        self.assertIsNone(self.length(b"QUJD\r\nQUJ\r\n", 3))

    @given(_BASE64_BODY, st.integers(min_value=1, max_value=70))
    def test_agrees_with_canonical_base64(self, body: bytes, chunk: int) -> None:
        canonical = canonical_base64(body)
        expected = None if canonical is None else len(canonical)
        self.assertEqual(self.length(body, chunk), expected)
