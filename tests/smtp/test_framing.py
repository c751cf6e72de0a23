"""
Tests for L{relayd.smtp.framing} and L{relayd.smtp.sasl} on their own: no
protocol, no transport, no Twisted.
"""

from __future__ import annotations

import base64

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from relayd.reply import (
    AUTH_ABORTED,
    CANNOT_DECODE_AUTH,
    LOGIN_PASSWORD_CHALLENGE,
    MALFORMED_AUTH_PLAIN,
    PLAIN_CHALLENGE,
)
from relayd.smtp.framing import COMMAND_DISCARD_LIMIT, DataError, DataReader, Framer, LineError
from relayd.smtp.sasl import Aborted, Challenge, Credentials, Denied, SASLExchange


def framer(reject: bool = False) -> Framer:
    return Framer(512, 998, reject)


def reader(max_size: int = 10**6, reject: bool = False) -> DataReader:
    return DataReader(998, max_size, reject)


def read_message(f: Framer, r: DataReader, data: bytes) -> bool:
    f.feed(data)
    return f.read_data(r)


class CommandLineTests(SynchronousTestCase):
    def test_crlf_line_is_returned_without_its_line_end(self) -> None:
        f = framer()
        f.feed(b"NOOP\r\nQUIT\r\n")
        self.assertEqual(f.read_line(), b"NOOP")
        self.assertEqual(f.read_line(), b"QUIT")
        self.assertIsNone(f.read_line())

    def test_partial_line_waits_for_more_input(self) -> None:
        f = framer()
        f.feed(b"NO")
        self.assertIsNone(f.read_line())
        f.feed(b"OP\r\n")
        self.assertEqual(f.read_line(), b"NOOP")

    def test_bare_lf_is_a_line_or_an_error_as_configured(self) -> None:
        f = framer()
        f.feed(b"NOOP\n")
        self.assertEqual(f.read_line(), b"NOOP")
        f = framer(reject=True)
        f.feed(b"NOOP\n")
        self.assertIs(f.read_line(), LineError.BARE_LF)

    def test_513_octet_line_is_too_long_and_dropped(self) -> None:
        f = framer()
        f.feed(b"x" * 511 + b"\r\nNOOP\r\n")
        self.assertIs(f.read_line(), LineError.TOO_LONG)
        self.assertEqual(f.read_line(), b"NOOP")

    def test_auth_lines_may_be_12288_octets(self) -> None:
        f = framer()
        f.feed(b"A" * 12000 + b"\r\n")
        self.assertEqual(f.read_line(auth=True), b"A" * 12000)

    def test_endless_line_is_discarded_then_closes(self) -> None:
        f = framer()
        f.feed(b"z" * 600)
        self.assertIs(f.read_line(), LineError.TOO_LONG)
        self.assertEqual(f.buffer, bytearray())
        self.assertTrue(f.feed(b"z" * 1000))
        self.assertFalse(f.feed(b"z" * COMMAND_DISCARD_LIMIT))

    def test_discarded_line_ends_at_its_lf(self) -> None:
        f = framer()
        f.feed(b"z" * 600)
        f.read_line()
        f.feed(b"zz\r\nNOOP\r\n")
        self.assertEqual(f.read_line(), b"NOOP")


class DataTests(SynchronousTestCase):
    def test_only_crlf_dot_crlf_ends_data(self) -> None:
        f, r = framer(), reader()
        self.assertFalse(read_message(f, r, b"a\n.\nb\r.\rc\r\n"))
        self.assertTrue(read_message(f, r, b".\r\nNOOP\r\n"))
        # A dot after a bare LF is unstuffed (section 4.5.2), never the end.
        self.assertEqual(r.body(), b"a\r\n\r\nb\r\n.\r\nc\r\n")
        self.assertEqual(f.read_line(), b"NOOP")

    def test_dot_stuffing_is_undone(self) -> None:
        f, r = framer(), reader()
        self.assertTrue(read_message(f, r, b"..hidden\r\n...\r\n.\r\n"))
        self.assertEqual(r.body(), b".hidden\r\n..\r\n")

    def test_bare_newline_fails_the_message_in_reject_mode(self) -> None:
        f, r = framer(reject=True), reader(reject=True)
        self.assertTrue(read_message(f, r, b"a\nb\r\n.\r\n"))
        self.assertIs(r.error, DataError.BARE_NEWLINE)
        self.assertEqual(r.body(), b"")

    def test_too_big_message_fails_and_holds_nothing(self) -> None:
        f, r = framer(), reader(max_size=100)
        self.assertFalse(read_message(f, r, b"y" * 70 + b"\r\n" + b"y" * 70 + b"\r\n"))
        self.assertIs(r.error, DataError.TOO_BIG)
        self.assertEqual(r.parts, [])

    def test_long_line_fails_and_its_tail_is_dropped(self) -> None:
        f, r = framer(), reader()
        self.assertFalse(read_message(f, r, b"f" * 5000))
        self.assertIs(r.error, DataError.LINE_TOO_LONG)
        self.assertEqual(f.buffer, bytearray())
        self.assertTrue(read_message(f, r, b"f" * 10 + b"\r\n.\r\n"))

    @given(st.lists(st.binary(max_size=40).filter(lambda b: b"\r" not in b and b"\n" not in b)))
    def test_stuffed_lines_round_trip_at_any_split(self, lines: list[bytes]) -> None:
        content = b"".join(line + b"\r\n" for line in lines)
        stuffed = content.replace(b"\r\n.", b"\r\n..")
        if stuffed.startswith(b"."):
            stuffed = b"." + stuffed
        stream = stuffed + b".\r\n"
        f, r = framer(), reader()
        done = False
        for i in range(len(stream)):
            done = read_message(f, r, stream[i : i + 1]) or done
        self.assertTrue(done)
        self.assertEqual(r.body(), content)


class SASLTests(SynchronousTestCase):
    def test_plain_without_initial_response_gets_the_empty_challenge(self) -> None:
        self.assertEqual(SASLExchange("PLAIN").start(None), Challenge(PLAIN_CHALLENGE))

    def test_plain_initial_response_gives_credentials(self) -> None:
        step = SASLExchange("PLAIN").start(base64.b64encode(b"\0apikey\0secret"))
        self.assertEqual(step, Credentials("apikey", b"secret"))

    def test_plain_with_other_authzid_is_denied(self) -> None:
        step = SASLExchange("PLAIN").start(base64.b64encode(b"root\0apikey\0secret"))
        self.assertIsInstance(step, Denied)

    def test_malformed_responses_abort(self) -> None:
        self.assertEqual(SASLExchange("PLAIN").start(b"*"), Aborted(AUTH_ABORTED))
        self.assertEqual(SASLExchange("PLAIN").start(b"!!"), Aborted(CANNOT_DECODE_AUTH))
        self.assertEqual(
            SASLExchange("PLAIN").start(base64.b64encode(b"no-nul")), Aborted(MALFORMED_AUTH_PLAIN)
        )

    def test_login_asks_for_the_password_after_the_username(self) -> None:
        exchange = SASLExchange("LOGIN")
        self.assertEqual(exchange.respond(b"="), Challenge(LOGIN_PASSWORD_CHALLENGE))
        self.assertEqual(exchange.respond(base64.b64encode(b"tok")), Credentials("", b"tok"))
