"""
AUTH throttling that holds (L{relayd.smtp.guards.AuthGuard} on
L{LocalCounters}): failures per client network and per credential, a
success clears nothing, a throttled network gets C{454 4.7.0} for AUTH only,
exemptions; units on a L{Clock}, and the real daemon with clients on two
loopback source addresses.
"""

from __future__ import annotations

import base64
import smtplib
import unittest
from typing import Any

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from relayd.config import LimitsConfig
from relayd.interfaces import ICounters
from relayd.smtp.guards import LocalCounters, network_key
from relayd.testing import SMTPDriver
from tests.smtp.support import AUTH_BAD, AUTH_OK, NOOP_OK, TOKEN, plain, session
from tests.test_e2e import TOKEN as E2E_TOKEN
from tests.test_e2e import Daemon

THROTTLED = "454 4.7.0 Too many failed authentication attempts, try again in 900 seconds"


def attempt(s: SMTPDriver, password: str) -> list[str]:
    """
    One AUTH PLAIN with C{password}; the clock runs past any delay.
    """
    s.send("EHLO c\r\n")
    out = s.send(f"AUTH PLAIN {plain('apikey', password)}\r\n")
    s.clock.advance(10)
    return out + s.replies()


class CounterTests(SynchronousTestCase):
    def test_provides_icounters(self) -> None:
        self.assertTrue(verifyObject(ICounters, LocalCounters(Clock())))

    def test_counts_slide_with_the_window(self) -> None:
        clock = Clock()
        c = LocalCounters(clock)
        self.assertEqual(self.successResultOf(c.hit("k", 60)), 1)
        clock.advance(30)
        self.assertEqual(self.successResultOf(c.hit("k", 60)), 2)
        clock.advance(31)
        self.assertEqual(self.successResultOf(c.count("k", 60)), 1)
        self.assertEqual(self.successResultOf(c.count("other", 60)), 0)

    def test_memory_is_bounded(self) -> None:
        clock = Clock()
        c = LocalCounters(clock, max_keys=100, max_events=10)
        for i in range(1000):
            c.hit(f"k{i}", 60)
            c.hit("busy", 60)
        self.assertLessEqual(len(c._events), 101)
        self.assertEqual(self.successResultOf(c.count("busy", 60)), 10)
        clock.advance(61)
        c.hit("new", 60)
        self.assertEqual(list(c._events), ["new"])

    def test_network_of_an_address(self) -> None:
        self.assertEqual(network_key("192.0.2.1"), "192.0.2.1")
        self.assertEqual(network_key("2001:db8:1:2:3:4:5:6"), "2001:db8:1:2::/64")
        self.assertEqual(network_key("::ffff:192.0.2.1"), "192.0.2.1")


class ThrottleTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.first = session(clock=self.clock, limits=LimitsConfig(auth_failures_per_ip=3))

    def session(self, ip: str = "192.0.2.1") -> SMTPDriver:
        return session(clock=self.clock, factory=self.first.factory, ip=ip)

    def test_failures_slow_down_then_throttle_auth_only(self) -> None:
        """
        Distinct failed credentials from one IP are answered later each
        time; at the limit AUTH gets C{454 4.7.0} saying when to retry, the
        session goes on, and other addresses are not affected.
        """
        self.assertEqual(self.first.send("EHLO c\r\n")[-1], "250 HELP")
        self.assertEqual(self.first.send(f"AUTH PLAIN {plain('u', 'guess1')}\r\n"), [AUTH_BAD])
        s = self.session()
        s.send("EHLO c\r\n")
        self.assertEqual(s.send(f"AUTH PLAIN {plain('u', 'guess2')}\r\n"), [])
        self.clock.advance(1)
        self.assertEqual(s.replies(), [AUTH_BAD])
        self.assertEqual(attempt(self.session(), "guess3"), [AUTH_BAD])
        late = self.session()
        self.assertEqual(attempt(late, TOKEN), [THROTTLED])
        self.assertEqual(late.send("NOOP\r\n"), [NOOP_OK])
        self.assertFalse(late.transport.disconnecting)
        self.assertEqual(attempt(self.session("198.51.100.7"), TOKEN), [AUTH_OK])
        self.clock.advance(901)
        self.assertEqual(attempt(self.session(), TOKEN), [AUTH_OK])

    def test_success_clears_no_failure(self) -> None:
        """
        A guesser who also holds one valid token cannot reset the count by
        logging in between guesses.
        """
        self.assertEqual(attempt(self.first, "guess1"), [AUTH_BAD])
        self.assertEqual(attempt(self.session(), "guess2"), [AUTH_BAD])
        self.assertEqual(attempt(self.session(), TOKEN), [AUTH_OK])
        self.assertEqual(attempt(self.session(), "guess3"), [AUTH_BAD])
        self.assertEqual(attempt(self.session(), TOKEN), [THROTTLED])

    def test_one_client_retrying_one_wrong_token_does_not_lock_its_nat(self) -> None:
        """
        Behind one address (NAT), a client retrying the same wrong token
        counts once for the address: the others still log in.  That
        credential itself is refused after C{auth_failures_per_credential}.
        """
        for _ in range(5):
            self.assertEqual(attempt(self.session(), "stale-token"), [AUTH_BAD])
        self.assertEqual(attempt(self.session(), "stale-token"), [THROTTLED])
        self.assertEqual(attempt(self.session(), TOKEN), [AUTH_OK])

    def test_ipv6_counts_per_64(self) -> None:
        for i in range(3):
            attempt(self.session(f"2001:db8:1:2::{i + 1}"), f"guess{i}")
        self.assertEqual(attempt(self.session("2001:db8:1:2::99"), TOKEN), [THROTTLED])
        self.assertEqual(attempt(self.session("2001:db8:1:3::1"), TOKEN), [AUTH_OK])

    def test_credentials_are_not_kept_in_clear(self) -> None:
        attempt(self.first, "hunter2-secret")
        keys = " ".join(self.first.factory.guard.counters._events)  # type: ignore[attr-defined]
        self.assertNotIn("hunter2", keys)
        self.assertNotIn(base64.b64encode(b"hunter2-secret").decode(), keys)
        self.assertNotIn("apikey", keys)


class ExemptionTests(SynchronousTestCase):
    def test_exempt_network_is_not_throttled(self) -> None:
        clock = Clock()
        limits = LimitsConfig(auth_failures_per_ip=2, auth_exempt_networks=("10.0.0.0/8",))
        first = session(clock=clock, limits=limits, ip="10.1.2.3")
        for i in range(4):
            s = first if i == 0 else session(clock=clock, factory=first.factory, ip="10.1.2.3")
            self.assertEqual(attempt(s, f"guess{i}"), [AUTH_BAD])
        s = session(clock=clock, factory=first.factory, ip="10.1.2.3")
        self.assertEqual(attempt(s, TOKEN), [AUTH_OK])

    def test_exempt_listener_is_not_throttled(self) -> None:
        clock = Clock()
        limits = LimitsConfig(auth_failures_per_ip=2)
        first = session(clock=clock, limits=limits, auth_exempt=True)
        for i in range(4):
            s = first if i == 0 else session(clock=clock, factory=first.factory)
            self.assertEqual(attempt(s, f"guess{i}"), [AUTH_BAD])
        self.assertEqual(attempt(session(clock=clock, factory=first.factory), TOKEN), [AUTH_OK])


@implementer(ICounters)
class LaterCounters:
    """
    Counters that answer only when told (as a shared store over the
    network): every Deferred waits in C{pending}.
    """

    def __init__(self) -> None:
        self.local = LocalCounters(Clock())
        self.pending: list[tuple[defer.Deferred[int], int]] = []

    def _later(self, d: defer.Deferred[int]) -> defer.Deferred[int]:
        later: defer.Deferred[int] = defer.Deferred()
        self.pending.append((later, self.successResultOf(d)))
        return later

    def successResultOf(self, d: defer.Deferred[Any]) -> Any:
        out: list[Any] = []
        d.addCallback(out.append)
        return out[0]

    def hit(self, key: str, window: float) -> defer.Deferred[int]:
        return self._later(self.local.hit(key, window))

    def count(self, key: str, window: float) -> defer.Deferred[int]:
        return self._later(self.local.count(key, window))

    def answer(self) -> None:
        while self.pending:
            d, value = self.pending.pop(0)
            d.callback(value)


class AsyncCounterTests(SynchronousTestCase):
    def test_late_throttle_answer_keeps_reply_order(self) -> None:
        """
        With counters that answer later, commands pipelined behind AUTH
        wait, and replies come in command order.
        """
        counters = LaterCounters()
        s = session(counters=counters)
        s.send("EHLO c\r\n")
        out = s.send(f"AUTH PLAIN {plain('apikey', 'bad')}\r\nNOOP\r\n")
        self.assertEqual(out, [])
        self.assertEqual(s.transport.producerState, "paused")
        counters.answer()
        self.assertEqual(s.replies(), [AUTH_BAD, NOOP_OK])
        self.assertEqual(s.transport.producerState, "producing")
        self.assertEqual(s.send(f"AUTH PLAIN {plain('apikey', TOKEN)}\r\nNOOP\r\n"), [])
        counters.answer()
        self.assertEqual(s.replies(), [AUTH_OK, NOOP_OK])


class AuthThrottleEndToEndTests(unittest.TestCase):
    def test_one_address_throttled_another_not(self) -> None:
        """
        The real daemon (3 failures per address): three wrong tokens from
        127.0.0.2 get AUTH there refused with C{454 4.7.0} while NOOP still
        works; 127.0.0.3 logs in.  (Linux routes all of 127/8 to lo.)
        """
        daemon = Daemon("http://127.0.0.1:9/send", extra="[limits]\nauth_failures_per_ip = 3\n")
        try:
            for n in range(3):
                with self.client(daemon, "127.0.0.2") as c:
                    code, _ = c.docmd("AUTH", "PLAIN " + self.plain(f"wrong-{n}"))
                    self.assertEqual(code, 535)
            with self.client(daemon, "127.0.0.2") as c:
                code, text = c.docmd("AUTH", "PLAIN " + self.plain(E2E_TOKEN))
                self.assertEqual(code, 454)
                self.assertIn(b"try again in 900 seconds", text)
                self.assertEqual(c.noop()[0], 250)
            with self.client(daemon, "127.0.0.3") as c:
                code, _ = c.docmd("AUTH", "PLAIN " + self.plain(E2E_TOKEN))
                self.assertEqual(code, 235)
        finally:
            log = daemon.logtext()
            daemon.stop()
        self.assertNotIn("Traceback", log)
        self.assertNotIn("wrong-0", log)

    def plain(self, token: str) -> str:
        return base64.b64encode(f"\0apikey\0{token}".encode()).decode()

    def client(self, daemon: Daemon, source: str) -> smtplib.SMTP_SSL:
        context = daemon.tls_context()
        context.check_hostname = False
        c = smtplib.SMTP_SSL(
            "127.0.0.1",
            daemon.implicit_port,
            local_hostname="client.test",
            context=context,
            timeout=10,
            source_address=(source, 0),
        )
        c.ehlo()
        return c
