"""
Tests for L{relayd.message.parse}: the limits that keep parsing linear,
and any bytes giving a message or a refusal.
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from relayd.config import HeadersConfig
from relayd.message import (
    MAX_ADDRESS_BYTES,
    MAX_DEPTH,
    MAX_HEADER_BYTES,
    MAX_PARTS,
)
from relayd.reply import Refused
from tests.message.support import (
    FROM,
    MIXED,
    RejectionAssertions,
    message,
    parse,
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


class AnyBytesTests(SynchronousTestCase):
    """
    Whatever the bytes, parsing gives a message or a refusal.
    """

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
