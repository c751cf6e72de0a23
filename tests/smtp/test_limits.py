"""
Tests for the limits of L{relayd.smtp.session}: timeouts (RFC 5321
section 4.5.3.2), connection and message caps, errors, command line
length (RFC 5321 section 4.5.3.1.4) and message size (RFC 1870).
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from relayd import reply as R
from relayd.config import LimitsConfig
from relayd.smtp.guards import ConnectionLimiter
from relayd.testing import FakeDelivery, SMTPDriver, reply_line
from tests.smtp.support import (
    HOST,
    QUEUED,
    WireChecks,
    data_parts,
    inbuf,
    logged_in,
    roomy,
)


class TimeoutTests(SynchronousTestCase, WireChecks):
    """
    Idle, DATA and session timeouts.
    """

    def test_idle_timeout_closes_with_421(self) -> None:
        s = SMTPDriver()
        s.replies()
        s.clock.advance(299)
        self.assertEqual(s.send("NOOP\r\n"), [reply_line(R.OK)])
        s.clock.advance(299)
        self.assertEqual(s.replies(), [])
        s.clock.advance(2)
        self.assertEqual(s.replies(), [reply_line(R.IDLE_TIMEOUT, HOST)])
        self.assertTrue(s.transport.disconnecting)

    def test_idle_timeout_at_exactly_300_seconds(self) -> None:
        s = SMTPDriver(implicit_tls=True)
        s.replies()
        s.clock.advance(299.9)
        self.assertEqual(s.replies(), [])
        s.clock.advance(0.1)
        self.assertEqual(s.replies(), [reply_line(R.IDLE_TIMEOUT, HOST)])
        self.assertTrue(s.transport.disconnecting)
        self.assertEqual(s.send("NOOP\r\n"), [])

    def test_idle_timeout_in_auth_exchange(self) -> None:
        s = SMTPDriver(implicit_tls=True)
        s.ehlo()
        s.send("AUTH LOGIN\r\n")
        s.clock.advance(300)
        self.assertEqual(s.replies(), [reply_line(R.IDLE_TIMEOUT, HOST)])

    def test_data_timeout_is_per_block(self) -> None:
        # The minimum DATA rate (tests/smtp/test_slow_clients.py) is out of
        # the way here: this is the timeout between blocks alone.
        s = logged_in(limits=LimitsConfig(data_grace=10_000))
        s.start()
        s.send("partial")
        s.clock.advance(599)
        self.assertEqual(s.replies(), [])
        s.send(" more\r\n")
        s.clock.advance(599)
        self.assertEqual(s.replies(), [])
        s.clock.advance(1)
        self.assertEqual(s.replies(), [reply_line(R.IDLE_TIMEOUT, HOST)])
        s.close()
        self.assertEqual(s.delivery.sent, [])

    def test_back_to_idle_timeout_after_data(self) -> None:
        s = logged_in()
        s.start()
        s.send("x\r\n.\r\n")
        s.send("NOOP\r\n")
        s.clock.advance(300)
        self.assertEqual(s.replies(), [reply_line(R.IDLE_TIMEOUT, HOST)])

    def test_session_lifetime_closes_the_connection(self) -> None:
        s = SMTPDriver(limits=LimitsConfig(session_timeout=100))
        s.replies()
        for _ in range(11):
            s.clock.advance(10)
            s.send("NOOP\r\n")
        self.assertTrue(s.transport.disconnecting)

    def test_session_lifetime_even_when_busy(self) -> None:
        s = logged_in(limits=LimitsConfig(session_timeout=100, data_grace=10_000))
        s.start()
        for _ in range(99):
            s.clock.advance(1)
            self.assertEqual(s.send("more\r\n"), [])
        s.clock.advance(1)
        self.assertEqual(s.replies(), [reply_line(R.SESSION_LIFETIME_EXCEEDED, HOST)])
        self.assertEqual(s.send(".\r\n"), [])
        s.close()
        self.assertEqual(s.delivery.sent, [])

    def test_session_lifetime_waits_for_the_upstream_reply(self) -> None:
        """
        The session lifetime ends while relayd waits for the upstream: the
        client still gets the upstream's verdict, then 421, so it never
        retries a message the upstream took.
        """
        s = SMTPDriver(implicit_tls=True, limits=LimitsConfig(session_timeout=100))
        s.login()
        s.delivery.hold_eom = True
        s.send("MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n")
        s.send("x\r\n.\r\n")
        s.clock.advance(150)
        self.assertEqual(s.replies(), [])
        s.delivery.release_eom()
        self.assertEqual(
            s.replies(),
            [
                reply_line(R.queued("fake-1")),
                reply_line(R.SESSION_LIFETIME_EXCEEDED, HOST),
            ],
        )
        self.assertTrue(s.transport.disconnecting)

    def test_no_write_after_quit_even_with_pending_reply(self) -> None:
        s = logged_in()
        s.delivery.hold_eom = True
        s.start()
        s.send("x\r\n.\r\n")
        s.clock.advance(600)
        s.delivery.release_eom()
        self.assertEqual(bytes(s.transport.after_close), b"")

    def test_timers_cancelled_on_connection_lost(self) -> None:
        for state in ("greeting", "data", "auth", "timed-out"):
            s = logged_in() if state == "data" else SMTPDriver(implicit_tls=True)
            if state == "data":
                s.start()
            elif state == "auth":
                s.ehlo()
                s.send("AUTH PLAIN\r\n")
            elif state == "timed-out":
                s.clock.advance(300)
            s.close()
            self.assertEqual(s.clock.getDelayedCalls(), [], state)


class ConnectionCapTests(SynchronousTestCase):
    """
    Connections and messages per connection are capped.
    """

    def test_connections_per_ip_are_capped(self) -> None:
        clock = Clock()
        first = SMTPDriver(clock=clock, limits=LimitsConfig(max_connections_per_ip=2))
        SMTPDriver(clock=clock, factory=first.factory)
        third = SMTPDriver(clock=clock, factory=first.factory)
        self.assertEqual(third.replies(), [reply_line(R.TOO_MANY_CONNECTIONS, HOST)])
        other = SMTPDriver(clock=clock, factory=first.factory, ip="198.51.100.1")
        self.assertTrue(other.replies()[0].startswith("220 "))
        first.close()
        again = SMTPDriver(clock=clock, factory=first.factory)
        self.assertTrue(again.replies()[0].startswith("220 "))

    def test_connection_over_the_cap_gets_421_at_greeting(self) -> None:
        clock = Clock()
        first = SMTPDriver(
            implicit_tls=True,
            clock=clock,
            limits=LimitsConfig(max_connections_per_ip=1, max_connections=2),
        )
        refused = SMTPDriver(clock=clock, factory=first.factory)
        self.assertEqual(refused.replies(), [reply_line(R.TOO_MANY_CONNECTIONS, HOST)])
        self.assertTrue(refused.transport.disconnecting)
        self.assertEqual(refused.send("EHLO c\r\nNOOP\r\n"), [])
        refused.close()  # must not release a slot it never had
        other = SMTPDriver(clock=clock, factory=first.factory, ip="198.51.100.2")
        self.assertEqual(other.replies()[0][:4], "220 ")
        third = SMTPDriver(clock=clock, factory=first.factory, ip="198.51.100.3")
        self.assertEqual(third.replies()[0][:9], "421 4.7.0")
        self.assertEqual(first.factory.limiter.total, 2)
        first.close()
        other.close()
        self.assertEqual(first.factory.limiter.total, 0)
        self.assertEqual(first.factory.limiter.per_ip, {})

    def test_limiter_caps_all_connections(self) -> None:
        limiter = ConnectionLimiter(1, 5)
        self.assertTrue(limiter.acquire("a"))
        self.assertFalse(limiter.acquire("b"))
        limiter.release("a")
        self.assertTrue(limiter.acquire("b"))

    def test_messages_per_connection_are_capped(self) -> None:
        s = SMTPDriver(implicit_tls=True, limits=LimitsConfig(max_messages_per_connection=1))
        s.login()
        s.send("MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nDATA\r\nx\r\n.\r\n")
        self.assertEqual(
            s.send("MAIL FROM:<a@example.com>\r\n"),
            [reply_line(R.TOO_MANY_MESSAGES, HOST)],
        )


class ErrorLimitTests(SynchronousTestCase, WireChecks):
    """
    Too many errors close the session.
    """

    def test_too_many_errors_close_with_421(self) -> None:
        s = SMTPDriver()
        s.replies()
        lines = s.send(b"BAD\r\n" * 12)
        self.assertEqual(lines[-1], reply_line(R.TOO_MANY_ERRORS, HOST))
        self.assertEqual(len(lines), 11)
        self.assertTrue(s.transport.disconnecting)

    def test_nothing_is_read_after_too_many_errors(self) -> None:
        s = SMTPDriver(implicit_tls=True)
        s.replies()
        lines = s.send(b"X\r\n" * 9 + b"EHLO\r\n" + b"NOOP\r\n")
        self.assertEqual(lines[-1], reply_line(R.TOO_MANY_ERRORS, HOST))
        self.assertEqual(len(lines), 11)
        self.assertEqual(s.send("NOOP\r\n"), [])
        self.check_wire(s)


class CommandLineTests(SynchronousTestCase, WireChecks):
    """
    A command line is at most 512 octets; a longer one is dropped.
    """

    def endless(self, s: SMTPDriver) -> None:
        lines: list[str] = []
        for _ in range(1024):
            lines += s.send(b"z" * 65536)
            self.assertLess(len(inbuf(s.proto)), 65536 + 1024)
        self.assertEqual(
            lines, [reply_line(R.LINE_TOO_LONG), reply_line(R.LINE_TOO_LONG_CLOSING, HOST)]
        )
        self.assertTrue(s.transport.disconnecting)
        self.assertEqual(s.send(b"\r\nNOOP\r\n"), [])
        self.assertEqual(bytes(s.transport.after_close), b"")

    def test_512_octet_line_is_accepted(self) -> None:
        s = logged_in()
        line = b"NOOP " + b"x" * 505 + b"\r\n"
        self.assertEqual(len(line), 512)
        self.assertEqual(s.send(line), [reply_line(R.OK)])

    def test_command_line_of_513_octets_is_too_long(self) -> None:
        """
        RFC 5321 section 4.5.3.1.4: 512 octets including CRLF; a
        513-octet line gets 500.
        """
        s = logged_in()
        line = b"NOOP " + b"x" * 506 + b"\r\n"
        self.assertEqual(len(line), 513)
        self.assertEqual(s.send(line), [reply_line(R.LINE_TOO_LONG)])

    def test_long_command_line_gets_500_at_every_split(self) -> None:
        s = SMTPDriver(implicit_tls=True, limits=roomy())
        s.replies()
        stream = b"NOOP " + b"x" * 700 + b"\r\nNOOP\r\n"
        for cuts in [[], *[[i] for i in range(1, len(stream))]]:
            self.assertEqual(
                s.feed(stream, cuts), [reply_line(R.LINE_TOO_LONG), reply_line(R.OK)], cuts
            )
        self.check_wire(s)

    def test_64_mib_without_line_break_before_ehlo(self) -> None:
        s = SMTPDriver(implicit_tls=True)
        s.replies()
        self.endless(s)

    def test_64_mib_without_line_break_after_auth(self) -> None:
        self.endless(logged_in())

    def test_64_mib_without_line_break_in_auth_exchange(self) -> None:
        s = SMTPDriver(implicit_tls=True)
        s.replies()
        s.ehlo()
        self.assertEqual(s.send("AUTH PLAIN\r\n"), [reply_line(R.PLAIN_CHALLENGE)])
        lines: list[str] = []
        for _ in range(1024):
            lines += s.send(b"Q" * 65536)
        self.assertEqual(
            lines, [reply_line(R.LINE_TOO_LONG), reply_line(R.LINE_TOO_LONG_CLOSING, HOST)]
        )
        self.assertTrue(s.transport.disconnecting)

    def test_64_mib_in_one_packet_then_more(self) -> None:
        s = logged_in()
        self.assertEqual(s.send(b"y" * (8 * 1024 * 1024)), [reply_line(R.LINE_TOO_LONG)])
        self.assertEqual(len(inbuf(s.proto)), 0)
        self.assertEqual(s.send(b"y" * 65536), [reply_line(R.LINE_TOO_LONG_CLOSING, HOST)])

    def test_many_long_lines_close_after_max_errors(self) -> None:
        s = logged_in()
        lines: list[str] = []
        for _ in range(1000):
            lines += s.send((b"w" * 600 + b"\r\n") * 100)
        self.assertEqual(
            lines,
            [reply_line(R.LINE_TOO_LONG)] * 9
            + [reply_line(R.LINE_TOO_LONG), reply_line(R.TOO_MANY_ERRORS, HOST)],
        )
        self.assertTrue(s.transport.disconnecting)

    def test_long_line_that_ends_after_discarding_gets_one_500(self) -> None:
        s = logged_in()
        self.assertEqual(s.send(b"NOOP " + b"v" * 10000), [reply_line(R.LINE_TOO_LONG)])
        self.assertEqual(s.send(b"v" * 10000 + b"\r\nNOOP\r\n"), [reply_line(R.OK)])


class LongCommandLineTests(SynchronousTestCase):
    """
    Over-long command lines after AUTH.
    """

    def setUp(self) -> None:
        self.s = SMTPDriver(implicit_tls=True)
        self.s.login()

    def test_long_command_line_gets_500(self) -> None:
        self.assertEqual(
            self.s.send(b"NOOP " + b"x" * 600 + b"\r\n"), [reply_line(R.LINE_TOO_LONG)]
        )
        self.assertEqual(self.s.send(b"NOOP\r\n"), [reply_line(R.OK)])

    def test_endless_command_line_closes_the_connection(self) -> None:
        lines = []
        for _ in range(1024):
            lines += self.s.send(b"z" * 65536)
            if self.s.transport.disconnecting:
                break
        self.assertEqual(
            lines,
            [
                reply_line(R.LINE_TOO_LONG),
                reply_line(R.LINE_TOO_LONG_CLOSING, HOST),
            ],
        )
        self.assertLess(len(self.s.proto.framing.buffer), 1024)


class SizeTests(SynchronousTestCase, WireChecks):
    """
    The message size limit: declared with SIZE and counted as DATA streams in.
    """

    def test_declared_size_over_the_limit_gets_552(self) -> None:
        s = logged_in(limits=LimitsConfig(max_message_size=1000))
        self.assertEqual(
            s.send("MAIL FROM:<a@example.com> SIZE=1001\r\n"), [reply_line(R.MESSAGE_TOO_BIG)]
        )
        self.assertEqual(
            s.send("MAIL FROM:<a@example.com> SIZE=" + "9" * 20 + "\r\n"),
            [reply_line(R.MESSAGE_TOO_BIG)],
        )
        self.assertEqual(
            s.send("MAIL FROM:<a@example.com> SIZE=1000\r\n"), [reply_line(R.SENDER_OK)]
        )

    def test_malformed_size_gets_501(self) -> None:
        s = logged_in(limits=roomy())
        for value in (
            "SIZE",
            "SIZE=",
            "SIZE=-1",
            "SIZE=1e3",
            "SIZE=0x10",
            "SIZE=" + "1" * 21,
            "SIZE=1.5",
        ):
            line = f"MAIL FROM:<a@example.com> {value}\r\n"
            self.assertEqual(s.send(line)[0][:9], "501 5.5.4", value)
        self.assertEqual(s.send("MAIL FROM:<a@example.com> SIZE=abc\r\n"), [reply_line(R.BAD_SIZE)])
        self.check_wire(s)

    def test_lower_token_size_limit_is_advertised_and_applies(self) -> None:
        delivery = FakeDelivery()
        delivery.max_message_size = 500  # type: ignore[assignment]
        s = logged_in(delivery=delivery)
        self.assertIn("250-SIZE 500", s.ehlo())
        self.assertEqual(
            s.send("MAIL FROM:<a@example.com> SIZE=501\r\n"), [reply_line(R.MESSAGE_TOO_BIG)]
        )

    def test_token_size_limit_is_advertised_and_enforced(self) -> None:
        """
        A token's own message size limit is advertised in SIZE after AUTH
        and enforced at MAIL FROM SIZE=.
        """
        s = SMTPDriver(implicit_tls=True)
        s.delivery.max_message_size = 1000  # type: ignore[assignment]
        s.login()
        names = [line[4:] for line in s.send("EHLO c\r\n")[1:]]
        self.assertIn("SIZE 1000", names)
        self.assertEqual(
            s.send("MAIL FROM:<a@example.com> SIZE=2000\r\n"),
            [reply_line(R.MESSAGE_TOO_BIG)],
        )

    def test_token_recipient_limit_applies_to_rcpt(self) -> None:
        s = SMTPDriver(implicit_tls=True)
        s.delivery.max_recipients = 2  # type: ignore[assignment]
        s.login()
        s.send("MAIL FROM:<a@example.com>\r\n")
        lines = s.send(
            "RCPT TO:<a@b.example>\r\nRCPT TO:<c@b.example>\r\nRCPT TO:<d@b.example>\r\n"
        )
        self.assertEqual(
            lines,
            [
                reply_line(R.RECIPIENT_OK),
                reply_line(R.RECIPIENT_OK),
                reply_line(R.TOO_MANY_RECIPIENTS),
            ],
        )

    def test_message_of_exactly_the_limit_passes(self) -> None:
        s = logged_in(limits=roomy(max_message_size=1000))
        exact = (b"x" * 98 + b"\r\n") * 10
        self.assertEqual(len(exact), 1000)
        s.start()
        self.assertRegex(s.send(exact + b".\r\n")[0], QUEUED)
        s.start()
        self.assertEqual(s.send(exact + b"y\r\n.\r\n"), [reply_line(R.MESSAGE_TOO_BIG)])
        self.assertEqual(s.send("NOOP\r\n"), [reply_line(R.OK)])
        self.assertEqual(len(s.delivery.sent), 1)

    def test_streaming_limit_counts_stuffed_dots_once(self) -> None:
        s = logged_in(limits=LimitsConfig(max_message_size=1000))
        s.start()
        body = (b".." + b"x" * 97 + b"\r\n") * 10  # 1010 octets sent, 1000 after unstuffing
        self.assertRegex(s.send(body + b".\r\n")[0], QUEUED)

    def test_memory_does_not_grow_past_the_limit(self) -> None:
        s = logged_in(limits=LimitsConfig(max_message_size=10000))
        s.start()
        line = b"z" * 900 + b"\r\n"
        for _ in range(5000):
            self.assertEqual(s.send(line * 10), [])
            self.assertLessEqual(sum(map(len, data_parts(s.proto))), 10000)
            self.assertLess(len(inbuf(s.proto)), 1002)
        self.assertEqual(s.send(b".\r\n"), [reply_line(R.MESSAGE_TOO_BIG)])
        self.assertEqual(s.delivery.sent, [])
        s.start()
        self.assertRegex(s.send(b"small\r\n.\r\n")[0], QUEUED)

    def test_message_bigger_than_declared_size_gets_552(self) -> None:
        s = logged_in(limits=LimitsConfig(max_message_size=100))
        s.send("MAIL FROM:<a@example.com> SIZE=10\r\nRCPT TO:<b@example.com>\r\nDATA\r\n")
        self.assertEqual(
            s.send(b"q" * 90 + b"\r\n" + b"q" * 90 + b"\r\n.\r\n"), [reply_line(R.MESSAGE_TOO_BIG)]
        )
