"""
Tests for L{relayd.policy.MessageRates}: messages per minute per customer,
per token and per client address, counted at MAIL FROM in an
L{relayd.interfaces.ICounters} (here the in-process one on a fake clock;
C{tests/test_fleet_redis.py} shares them in Redis between two daemons).
"""

from __future__ import annotations

from treq.testing import StubTreq
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from relayd import reply as R
from relayd.config import HeadersConfig, UpstreamConfig
from relayd.delivery import Pipeline, RelayDelivery
from relayd.dialects import get_dialect
from relayd.policy import MessageRates
from relayd.reply import Refused, Reply
from relayd.smtp.guards import LocalCounters
from relayd.testing import FakeUpstream
from relayd.tokens import TokenPolicy
from relayd.upstream import UpstreamClient

WEB = TokenPolicy("web")


class MessageRatesTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        self.counters = LocalCounters(self.clock)

    def refusal(
        self, rates: MessageRates, token: str, ip: str | None, policy: TokenPolicy
    ) -> Reply:
        failure = self.failureResultOf(rates.check(token, ip, policy), Refused)
        return failure.value.reply  # type: ignore[no-any-return]

    def test_off_by_default(self) -> None:
        rates = MessageRates(self.counters)
        self.assertFalse(rates.applies(WEB))
        self.assertTrue(rates.applies(TokenPolicy("web", messages_per_minute=5)))

    def test_per_token_with_the_time_to_wait(self) -> None:
        """
        The N+1th message within 60 seconds is refused with 451 4.7.1,
        saying when the oldest message leaves the window.
        """
        rates = MessageRates(self.counters, per_token=3)
        for _ in range(3):
            self.assertIsNone(self.successResultOf(rates.check("tok", "192.0.2.1", WEB)))
            self.clock.advance(5)
        # Messages at 1000, 1005, 1010; now 1015: the first leaves at 1060.
        reply = self.refusal(rates, "tok", "192.0.2.1", WEB)
        self.assertEqual(
            (reply.code, reply.status, reply.text),
            (451, "4.7.1", "Too many messages from this token, try again in 45 seconds"),
        )
        self.assertEqual(reply, R.token_rate_exceeded(45))
        # Another token is counted apart.
        self.assertIsNone(self.successResultOf(rates.check("other", "192.0.2.1", WEB)))
        self.clock.advance(45)
        self.assertIsNone(self.successResultOf(rates.check("tok", "192.0.2.1", WEB)))

    def test_per_ip_and_ipv6_per_64(self) -> None:
        rates = MessageRates(self.counters, per_ip=2)
        self.successResultOf(rates.check("a", "2001:db8:1:2::1", WEB))
        self.successResultOf(rates.check("b", "2001:db8:1:2::99", WEB))
        reply = self.refusal(rates, "c", "2001:db8:1:2::abc", WEB)
        self.assertEqual(
            reply.text, "Too many messages from this IP address, try again in 60 seconds"
        )
        self.assertEqual((reply.code, reply.status), (451, "4.7.1"))
        self.successResultOf(rates.check("c", "2001:db8:1:3::1", WEB))
        self.successResultOf(rates.check("c", None, WEB))  # no address: not counted

    def test_customer_policy(self) -> None:
        rates = MessageRates(self.counters)
        policy = TokenPolicy("web", messages_per_minute=1)
        self.successResultOf(rates.check("tok", "192.0.2.1", policy))
        self.assertEqual(self.refusal(rates, "tok", "192.0.2.1", policy), R.MESSAGE_RATE_EXCEEDED)

    def test_refused_message_uses_up_nothing(self) -> None:
        """
        A MAIL refused by the per-IP limit is not counted for its token.
        """
        rates = MessageRates(self.counters, per_token=2, per_ip=1)
        self.successResultOf(rates.check("tok", "192.0.2.1", WEB))
        self.refusal(rates, "tok", "192.0.2.1", WEB)
        self.refusal(rates, "tok", "192.0.2.1", WEB)
        self.successResultOf(rates.check("tok", "192.0.2.2", WEB))

    def test_keys_hold_no_credential(self) -> None:
        rates = MessageRates(self.counters, per_token=5)
        self.successResultOf(rates.check("secret-token", "192.0.2.1", WEB))
        self.assertFalse([k for k in self.counters._events if "secret-token" in k])


class ValidateFromTests(SynchronousTestCase):
    """
    L{RelayDelivery.validateFrom} answers at once without a limit, and with
    a Deferred (the session waits for it) when one applies.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        client = UpstreamClient(
            self.clock,
            UpstreamConfig(url="http://upstream.test/send"),
            get_dialect("native"),
            http=StubTreq(FakeUpstream()),
        )
        self.rates = MessageRates(LocalCounters(self.clock), per_ip=1)
        self.pipeline = Pipeline(client, HeadersConfig(), self.clock, rates=self.rates)

    def test_no_limit_answers_at_once(self) -> None:
        pipeline = Pipeline(
            None, HeadersConfig(), self.clock, rates=MessageRates(self.rates.counters)
        )
        avatar = RelayDelivery("tok", WEB, pipeline)
        self.assertEqual(avatar.validateFrom(("c", "192.0.2.1"), "a@example.com"), "a@example.com")

    def test_limit_counts_then_refuses(self) -> None:
        avatar = RelayDelivery("tok", WEB, self.pipeline)
        d = avatar.validateFrom(("c", "192.0.2.1"), "a@example.com")
        self.assertEqual(self.successResultOf(d), "a@example.com")
        self.assertIsNotNone(avatar._current)
        avatar._current = None
        failure = self.failureResultOf(avatar.validateFrom(("c", "192.0.2.1"), "a@x.test"), Refused)
        self.assertEqual(failure.value.reply, R.ip_rate_exceeded(60))
        self.assertIsNone(avatar._current)
