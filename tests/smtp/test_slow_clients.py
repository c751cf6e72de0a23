"""
Slow clients: a command line must be whole within the idle timeout from its
first byte, and DATA must keep C{[limits] data_min_rate} after
C{data_grace} seconds (C{421 4.4.2}); units on a L{Clock}, and the real
daemon on a real socket fed one byte at a time.
"""

from __future__ import annotations

import socket
import time
import unittest

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from relayd.config import LimitsConfig
from relayd.smtp.flow import DataRate, IdleTimer
from relayd.testing import SMTPDriver
from tests.smtp.support import AUTH_OK, HOST, NOOP_OK, TOKEN, plain, session
from tests.test_e2e import Daemon

TIMEOUT = f"421 4.4.2 {HOST} Timeout exceeded, closing connection"
TOO_SLOW = f"421 4.4.2 {HOST} Data transfer too slow, closing connection"


def in_data(limits: LimitsConfig | None = None) -> SMTPDriver:
    s = session(limits=limits)
    s.send("EHLO client.example\r\n")
    assert s.send(f"AUTH PLAIN {plain('apikey', TOKEN)}\r\n") == [AUTH_OK]
    s.send("MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.net>\r\n")
    assert s.send("DATA\r\n") == ["354 End data with <CR><LF>.<CR><LF>"]
    return s


class CommandLineTests(SynchronousTestCase):
    def test_line_dripped_past_the_idle_timeout_is_cut_off(self) -> None:
        """
        Bytes of one command line arriving every 4 s do not restart the
        idle timer: the line must be whole 300 s after its first byte.
        """
        s = session()
        for _ in range(74):
            self.assertEqual(s.send("N"), [])
            s.clock.advance(4)
        s.clock.advance(4)
        self.assertEqual(s.replies(), [TIMEOUT])
        self.assertTrue(s.transport.disconnecting)

    def test_whole_commands_restart_the_timer(self) -> None:
        """
        Each whole command starts a new idle period.
        """
        s = session()
        for _ in range(3):
            s.clock.advance(299)
            self.assertEqual(s.send("NOOP\r\n"), [NOOP_OK])
        self.assertFalse(s.transport.disconnecting)

    def test_line_split_in_packets_in_time_is_answered(self) -> None:
        s = session()
        s.send("NO")
        s.clock.advance(200)
        self.assertEqual(s.send("OP\r\n"), [NOOP_OK])


class DataRateTests(SynchronousTestCase):
    def test_rate_counts_only_after_the_grace(self) -> None:
        clock = Clock()
        rate = DataRate(clock, 1000, 30)
        clock.advance(30)
        self.assertTrue(rate.took(0))
        clock.advance(10)
        self.assertFalse(rate.took(9999))
        self.assertTrue(rate.took(1))

    def test_slow_data_after_the_grace_gets_421(self) -> None:
        """
        100 bytes every 10 s is below 1 KiB/s: closed once past the 30 s
        grace, with C{421 4.4.2}; nothing is relayed.
        """
        s = in_data()
        out: list[str] = []
        for _ in range(5):
            s.clock.advance(10)
            out += s.send(b"x" * 98 + b"\r\n")
        self.assertEqual(out, [TOO_SLOW])
        self.assertTrue(s.transport.disconnecting)
        self.assertEqual(s.delivery.sent, [])

    def test_data_at_the_minimum_rate_is_relayed(self) -> None:
        """
        A slow link that keeps 1 KiB/s is never cut off.
        """
        s = in_data()
        for _ in range(120):
            s.clock.advance(1)
            self.assertEqual(s.send((b"y" * 398 + b"\r\n") * 3), [])
        self.assertEqual(s.send(".\r\n")[0][:3], "250")

    def test_rate_is_configurable(self) -> None:
        s = in_data(LimitsConfig(data_min_rate=10, data_grace=1))
        s.clock.advance(5)
        self.assertEqual(s.send(b"z\r\n"), [TOO_SLOW])


class IdleTimerTests(SynchronousTestCase):
    """
    L{IdleTimer}: restarted often, it expires exactly as a delayed call
    reset each time would, with one delayed call at most.
    """

    def timer(self) -> tuple[Clock, IdleTimer, list[float]]:
        clock = Clock()
        fired: list[float] = []
        return clock, IdleTimer(clock, lambda: fired.append(clock.seconds())), fired

    def test_expires_at_the_last_start_plus_its_timeout(self) -> None:
        clock, timer, fired = self.timer()
        timer.start(300)
        for _ in range(50):
            clock.advance(0.1)
            timer.start(300)
        self.assertEqual(len(clock.getDelayedCalls()), 1)
        deadline = clock.seconds() + 300
        clock.advance(deadline - clock.seconds() - 0.001)
        self.assertEqual(fired, [])
        clock.advance(0.001)
        self.assertEqual(fired, [clock.seconds()])
        self.assertGreaterEqual(fired[0], deadline)
        self.assertEqual(clock.getDelayedCalls(), [])
        clock.advance(1000)
        self.assertEqual(len(fired), 1)

    def test_exactly_at_the_deadline(self) -> None:
        """
        A clock advanced exactly to the deadline sees the timer expire,
        whatever the float arithmetic of the times in between.
        """
        for start in (0.1, 0.3, 1.7, 1e9 + 0.123):
            clock, timer, fired = self.timer()
            clock.advance(start)
            timer.start(30)
            clock.advance(0.7)
            timer.start(30.3)
            deadline = timer.deadline
            assert deadline is not None
            clock.advance(29.9)
            self.assertEqual(fired, [])
            clock.rightNow = deadline
            clock.advance(0)
            self.assertEqual(fired, [deadline], start)

    def test_shorter_timeout_brings_it_forward(self) -> None:
        clock, timer, fired = self.timer()
        timer.start(300)
        clock.advance(10)
        timer.start(60)
        clock.advance(60)
        self.assertEqual(fired, [70])

    def test_stopped_it_does_not_expire_until_started(self) -> None:
        clock, timer, fired = self.timer()
        timer.start(300)
        clock.advance(100)
        timer.stop()
        clock.advance(1000)
        self.assertEqual(fired, [])
        timer.start(300)
        clock.advance(299)
        self.assertEqual(fired, [])
        clock.advance(1)
        self.assertEqual(fired, [1400])

    def test_cancel_leaves_no_delayed_call(self) -> None:
        clock, timer, fired = self.timer()
        timer.start(300)
        timer.cancel()
        self.assertEqual(clock.getDelayedCalls(), [])
        clock.advance(1000)
        self.assertEqual(fired, [])

    def test_transactions_make_no_delayed_calls(self) -> None:
        """
        A session's transactions restart its idle timer without a new
        delayed call each; it still expires the DATA timeout after the
        last packet (the reply was at once: no wait restarted it).
        """
        s = in_data()
        s.send(b"hello\r\n.\r\n")
        calls = set(map(id, s.clock.getDelayedCalls()))
        for _ in range(5):
            s.clock.advance(10)
            self.assertEqual(
                s.send(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n")[-1][:3],
                "354",
            )
            self.assertEqual(s.send(b"hi\r\n.\r\n")[0][:3], "250")
        self.assertEqual(set(map(id, s.clock.getDelayedCalls())), calls)
        s.clock.advance(599)
        self.assertEqual(s.replies(), [])
        s.clock.advance(1)
        self.assertEqual(s.replies(), [TIMEOUT])


class SlowDripEndToEndTests(unittest.TestCase):
    def test_dripped_command_line_is_cut_off(self) -> None:
        """
        The real daemon (idle timeout 1.5 s): C{NOOP<CR><LF>} sent one byte
        every 0.5 s is cut off with C{421 4.4.2} about 1.5 s after its
        first byte, though every byte came well inside the timeout.
        """
        daemon = Daemon("http://127.0.0.1:9/send", extra="[limits]\nidle_timeout = 1.5\n")
        try:
            with socket.create_connection(("127.0.0.1", daemon.starttls_port), 10) as sock:
                f = sock.makefile("rb")
                self.assertTrue(f.readline().startswith(b"220 "))
                started = time.monotonic()
                try:
                    for byte in b"NOOP\r\n":
                        sock.sendall(bytes([byte]))
                        time.sleep(0.5)
                except OSError:
                    pass
                self.assertEqual(
                    f.readline(),
                    b"421 4.4.2 relay.test Timeout exceeded, closing connection\r\n",
                )
                elapsed = time.monotonic() - started
                self.assertEqual(f.read(), b"")
            self.assertLess(elapsed, 2.9)
        finally:
            daemon.stop()
