"""
Tests for L{relayd.routing}: C{[[routes]]} configuration, choosing a route
by token, sender domain and stream, and failover only when the first
upstream certainly did not take the message; end to end with fault
upstreams on 127.0.0.1 (one refusing connections, one slow, one answering
5xx), asserting one delivery per message.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase, TestCase

from relayd.config import ConfigError, HeadersConfig, parse_config
from relayd.message import Envelope, OutboundMessage, parse_message
from relayd.reply import TEMPORARY_FAILURE, Refused, Reply
from relayd.result import Accepted, NotSent
from relayd.routing import Candidate, Router, is_not_sent, make_router, send_with_failover
from relayd.tokens import TokenPolicy
from relayd.upstream import UpstreamClient
from tests.faultupstream import FaultUpstream

BASE = """
[[listeners]]
endpoint = "tcp:port=2525"
[tls]
certificate = "cert.pem"
key = "key.pem"
[auth]
tokens_file = "tokens.toml"
"""

ROUTES = """
[[routes]]
name = "marketing"
streams = ["broadcast"]
[[routes.upstreams]]
url = "http://127.0.0.1:1/broadcast"

[[routes]]
name = "shop"
sender_domains = ["Shop.Example."]
[[routes.upstreams]]
url = "http://127.0.0.1:1/shop"
[[routes.upstreams]]
url = "http://127.0.0.1:1/shop-backup"
dialect = "sendgrid"
credential_env = "SG_KEY"

[[routes]]
name = "billing"
tokens = ["billing"]
[[routes.upstreams]]
url = "http://127.0.0.1:1/billing"
"""


def message(
    mail_from: str = "a@example.com",
    author: str = "a@example.com",
    stream: str | None = None,
    subject: str = "hello",
) -> OutboundMessage:
    lines = [f"From: {author}", "To: b@example.net", f"Subject: {subject}"]
    if stream is not None:
        lines.append(f"X-Stream: {stream}")
    data = ("\r\n".join(lines) + "\r\n\r\nbody\r\n").encode()
    return parse_message(data, Envelope(mail_from, ("b@example.net",)), HeadersConfig())


class FakeClient:
    """
    Records what it is asked to send and answers from a list.
    """

    def __init__(self, name: str, *answers: object) -> None:
        self.name = name
        self.answers = list(answers)
        self.sent: list[tuple[OutboundMessage, str]] = []
        self.keys: list[str | None] = []

    def prepare(
        self, message: OutboundMessage, token: str, key: str | None, now: float | None = None
    ) -> object:
        self.sent.append((message, token))
        self.keys.append(key)
        return (message, token, key)

    async def post_prepared(self, request: object, deadline: float | None = None) -> object:
        return self.answers.pop(0) if self.answers else Accepted(f"{self.name}-id")

    def close(self) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        d.callback(None)
        return d


class RouteConfigTests(SynchronousTestCase):
    """
    The C{[[routes]]} keys and their checks.
    """

    def test_routes_parse_with_upstreams_in_order(self) -> None:
        config = parse_config(BASE + ROUTES, "/etc/relayd/relayd.toml")
        self.assertEqual([r.name for r in config.routes], ["marketing", "shop", "billing"])
        shop = config.routes[1]
        self.assertEqual(shop.sender_domains, ("shop.example",))
        self.assertEqual([u.url for u in shop.upstreams][1], "http://127.0.0.1:1/shop-backup")
        self.assertEqual(shop.upstreams[1].upstream_config().dialect, "sendgrid")

    def test_errors_name_the_dotted_key(self) -> None:
        cases = {
            '[[routes]]\nname = "r"\n[[routes.upstreams]]\nurl = "http://a"\n': (
                "routes[0]: give tokens, sender_domains or streams (or default = true)"
            ),
            '[[routes]]\nname = "r"\ntokens = ["a"]\n': (
                "routes[0].upstreams: at least one [[routes.upstreams]] is needed"
            ),
            '[[routes]]\nname = "r"\ntokens = ["a"]\n[[routes.upstreams]]\nurl = "ftp://a"\n': (
                "routes[0].upstreams[0].url: expected an http:// or https:// URL"
            ),
            (
                '[[routes]]\nname = "r"\ndefault = true\n[[routes.upstreams]]\nurl = "http://a"\n'
                '[[routes]]\nname = "s"\ndefault = true\n[[routes.upstreams]]\nurl = "http://a"\n'
            ): "routes[1].default: only one route can be the default (routes[0] is)",
            (
                '[[routes]]\nname = "r"\ndefault = true\nstreams = ["x"]\n'
                '[[routes.upstreams]]\nurl = "http://a"\n'
            ): "routes[0].default: the default route takes no tokens",
            (
                '[[routes]]\nname = "r"\ntokens = ["a"]\n[[routes.upstreams]]\nurl = "http://a"\n'
                '[[routes.upstreams]]\nurl = "http://b"\ndialect = "mailgun"\n'
            ): "routes[0].upstreams[1]: a failover upstream of another dialect needs its own",
            (
                '[[routes]]\nname = "r"\ntokens = ["a"]\n[[routes.upstreams]]\nurl = "http://a"\n'
                'credential = "SG.pasted-key"\n'
            ): 'routes[0].upstreams[0].credential: expected "systemd:NAME"',
            (
                '[[routes]]\nname = "r"\ntokens = ["a"]\n[[routes.upstreams]]\nurl = "http://a"\n'
                'credential_env = "A"\ncredential_file = "k"\n'
            ): "routes[0].upstreams[0]: give only one of credential_file",
            '[[routes]]\nname = "r"\ntokens = ["a"]\n[[routes.upstreams]]\nurl = "http://a"\nx = 1\n': (
                "routes[0].upstreams[0].x: unknown setting"
            ),
        }
        for text, expected in cases.items():
            with self.assertRaises(ConfigError) as caught:
                parse_config(BASE + text, "relayd.toml")
            self.assertIn("relayd.toml: " + expected, str(caught.exception))
            self.assertNotIn("SG.pasted-key", str(caught.exception))

    def test_unknown_dialect_and_missing_credential_stop_the_router(self) -> None:
        """
        Dialect names and credentials are checked when the router is built
        at start-up, with the dotted key.
        """
        bad_dialect = parse_config(
            BASE + ROUTES.replace('dialect = "sendgrid"', 'dialect = "sendmule"'), "r.toml"
        )
        with self.assertRaises(ConfigError) as caught:
            make_router(reactor, bad_dialect, FakeClient("default"), environ={"SG_KEY": "k"})
        self.assertIn(
            "r.toml: routes[1].upstreams[1].dialect: unknown dialect 'sendmule'",
            str(caught.exception),
        )
        config = parse_config(BASE + ROUTES, "r.toml")
        with self.assertRaises(ConfigError) as caught:
            make_router(reactor, config, FakeClient("default"), environ={})
        self.assertIn(
            "r.toml: routes[1].upstreams[1].credential_env: environment variable SG_KEY: not set",
            str(caught.exception),
        )


class RouterTests(SynchronousTestCase):
    """
    Choosing the route of a message.
    """

    def setUp(self) -> None:
        config = parse_config(BASE + ROUTES, "r.toml")
        self.made: list[tuple[str, str]] = []

        def make_client(reactor: Any, upstream: Any, dialect: Any) -> FakeClient:
            self.made.append((upstream.url, dialect.name))
            return FakeClient(upstream.url.rpartition("/")[2])

        self.default = FakeClient("default")
        self.router = make_router(
            reactor, config, self.default, environ={"SG_KEY": "SG.held"}, make_client=make_client
        )

    def names(self, policy: str = "web", **kwargs: Any) -> list[str]:
        m = message(**kwargs)
        return [c.client.name for c in self.router.candidates(TokenPolicy(policy), m.envelope, m)]

    def test_each_upstream_gets_a_client_with_its_dialect(self) -> None:
        self.assertIn(("http://127.0.0.1:1/shop-backup", "sendgrid"), self.made)
        self.assertEqual(len(self.router.clients()), 5)

    def test_no_match_takes_the_default(self) -> None:
        self.assertEqual(self.names(), ["default"])
        self.assertEqual(self.router.default.name, "default")

    def test_stream(self) -> None:
        self.assertEqual(self.names(stream="broadcast"), ["broadcast"])
        self.assertEqual(self.names(stream="outbound"), ["default"])

    def test_sender_domain_of_reverse_path_or_from(self) -> None:
        """
        The domain matches without case, from the reverse-path or the From
        address; the failover upstream carries its own credential.
        """
        self.assertEqual(self.names(mail_from="bounce@SHOP.example"), ["shop", "shop-backup"])
        self.assertEqual(self.names(author="news@shop.example"), ["shop", "shop-backup"])
        self.assertEqual(self.names(mail_from=""), ["default"])
        m = message(author="news@shop.example")
        credentials = [
            c.credential for c in self.router.candidates(TokenPolicy("w"), m.envelope, m)
        ]
        self.assertEqual(credentials, [None, "SG.held"])

    def test_token_name(self) -> None:
        self.assertEqual(self.names("billing"), ["billing"])

    def test_first_matching_route_wins(self) -> None:
        self.assertEqual(self.names("billing", stream="broadcast"), ["broadcast"])

    def test_a_default_route_replaces_upstream(self) -> None:
        config = parse_config(
            BASE + '[[routes]]\nname = "main"\ndefault = true\n[[routes.upstreams]]\n'
            'url = "http://127.0.0.1:1/main"\n',
            "r.toml",
        )
        router = make_router(
            reactor,
            config,
            FakeClient("unused"),
            make_client=lambda r, u, d: FakeClient(u.url.rpartition("/")[2]),
        )
        m = message()
        self.assertEqual(
            [c.client.name for c in router.candidates(TokenPolicy("w"), m.envelope, m)], ["main"]
        )

    def test_credential_never_in_repr(self) -> None:
        m = message(author="x@shop.example")
        self.assertNotIn("SG.held", repr(self.router.candidates(TokenPolicy("w"), m.envelope, m)))


class FailoverTests(SynchronousTestCase):
    """
    L{send_with_failover} with fake clients.
    """

    def send(self, *clients: FakeClient) -> object:
        candidates = [Candidate(c, None, c.name) for c in clients]
        d = Deferred.fromCoroutine(
            send_with_failover(candidates, message(), "client-token", "key-1")
        )
        return self.successResultOf(d)

    def test_not_sent_moves_to_the_next_with_the_same_message_and_key(self) -> None:
        first = FakeClient("first", NotSent(TEMPORARY_FAILURE))
        second = FakeClient("second")
        self.assertEqual(self.send(first, second), Accepted("second-id"))
        self.assertIs(first.sent[0][0], second.sent[0][0])
        self.assertEqual(first.keys, ["key-1"])
        self.assertEqual(second.keys, ["key-1"])

    def test_an_answer_is_final(self) -> None:
        """
        A 5xx, a 4xx (a timeout after sending) or an acceptance is final:
        the next upstream is not asked.
        """
        for answer in (Reply(550, "5.7.1", "no"), TEMPORARY_FAILURE, Accepted("x")):
            first, second = FakeClient("first", answer), FakeClient("second")
            self.assertEqual(self.send(first, second), answer)
            self.assertEqual(second.sent, [])

    def test_none_sent_gives_the_last_not_sent(self) -> None:
        reply = Reply(451, "4.4.1", "No answer from upstream")
        first = FakeClient("first", NotSent(TEMPORARY_FAILURE))
        second = FakeClient("second", NotSent(reply))
        self.assertEqual(self.send(first, second), NotSent(reply))

    def test_candidate_credential_or_avatar_token(self) -> None:
        first = FakeClient("first", NotSent(TEMPORARY_FAILURE))
        second = FakeClient("second")
        d = Deferred.fromCoroutine(
            send_with_failover(
                [Candidate(first, None), Candidate(second, "held")],
                message(),
                "client-token",
            )
        )
        self.successResultOf(d)
        self.assertEqual([first.sent[0][1], second.sent[0][1]], ["client-token", "held"])

    def test_refused_by_the_dialect_propagates(self) -> None:
        class Refusing(FakeClient):
            def prepare(
                self,
                message: OutboundMessage,
                token: str,
                key: str | None,
                now: float | None = None,
            ) -> object:
                raise Refused(Reply(554, "5.6.0", "cannot carry"))

        second = FakeClient("second")
        d = Deferred.fromCoroutine(
            send_with_failover([Candidate(Refusing("r")), Candidate(second)], message(), "t")
        )
        self.failureResultOf(d, Refused)
        self.assertEqual(second.sent, [])

    def test_is_not_sent_by_default_only_for_not_sent(self) -> None:
        for value in (Accepted("x"), TEMPORARY_FAILURE, Reply(550, "5.0.0", "no")):
            self.assertFalse(is_not_sent(value))
        self.assertTrue(is_not_sent(NotSent(TEMPORARY_FAILURE)))


class FailoverEndToEndTests(TestCase):
    """
    Real upstream clients and fault upstreams on 127.0.0.1: one delivery
    per message.
    """

    timeout = 20

    def upstream(self, mode: str, **kwargs: Any) -> FaultUpstream:
        upstream = FaultUpstream(reactor, mode, **kwargs)
        upstream.start()
        self.addCleanup(upstream.stop)
        return upstream

    def router(self, *upstreams: FaultUpstream, timeout: float = 5) -> Router:
        text = '[[routes]]\nname = "r"\ntokens = ["web"]\n'
        for i, upstream in enumerate(upstreams):
            text += f'[[routes.upstreams]]\nurl = "{upstream.url}"\ntimeout = {timeout}\n'
            text += f'credential_env = "KEY_{i}"\n'
        config = parse_config(BASE + text, "r.toml")
        environ = {f"KEY_{i}": f"relayd-key-{i}" for i in range(len(upstreams))}
        router = make_router(reactor, config, FakeClient("default"), environ=environ)
        self.addCleanup(router.close)
        return router

    async def send(self, router: Router, subject: str) -> object:
        return await router.send(
            message(subject=subject), "client-password", TokenPolicy("web"), f"key-{subject}"
        )

    async def test_first_accepts_second_never_asked(self) -> None:
        first, second = self.upstream("ok"), self.upstream("ok")
        result = await self.send(self.router(first, second), "one")
        self.assertEqual(result, Accepted("fault-1"))
        self.assertEqual(first.subjects(), ["one"])
        self.assertEqual(second.requests, [])
        self.assertEqual(first.requests[0].headers["authorization"], "Bearer relayd-key-0")

    async def test_refused_connection_fails_over_once(self) -> None:
        down, backup = self.upstream("down"), self.upstream("ok")
        result = await self.send(self.router(down, backup), "two")
        self.assertIsInstance(result, Accepted)
        self.assertEqual(backup.subjects(), ["two"])
        self.assertEqual(backup.requests[0].headers["authorization"], "Bearer relayd-key-1")
        self.assertEqual(backup.requests[0].key, "key-two")

    async def test_every_upstream_refusing_is_not_sent(self) -> None:
        """
        When no upstream of the route can be reached, the result is
        L{NotSent}: the client gets C{451}, nothing was delivered.
        """
        down, also_down = self.upstream("down"), self.upstream("down")
        result = await self.send(self.router(down, also_down), "five")
        self.assertEqual(result, NotSent(TEMPORARY_FAILURE))

    async def test_slow_upstream_is_not_failed_over(self) -> None:
        """
        A timeout after the request was sent may be a delivery: the client
        gets a 4xx, the backup nothing; the slow upstream has the one
        delivery.
        """
        slow, backup = self.upstream("slow", delay=1.5), self.upstream("ok")
        result = await self.send(self.router(slow, backup, timeout=0.3), "three")
        self.assertIsInstance(result, Reply)
        assert isinstance(result, Reply)
        self.assertTrue(result.temporary)
        self.assertEqual(slow.subjects(), ["three"])
        self.assertEqual(backup.requests, [])

    async def test_5xx_is_the_answer(self) -> None:
        failing, backup = self.upstream("5xx"), self.upstream("ok")
        result = await self.send(self.router(failing, backup), "four")
        self.assertIsInstance(result, Reply)
        self.assertEqual(len(failing.requests), 1)
        self.assertEqual(failing.accepted, [])
        self.assertEqual(backup.requests, [])

    async def test_every_message_is_delivered_once(self) -> None:
        """
        Several messages through a route whose first upstream answers:
        each delivered once, to it only.
        """
        first, second = self.upstream("ok"), self.upstream("ok")
        router = self.router(first, second)
        for n in range(5):
            self.assertIsInstance(await self.send(router, f"m{n}"), Accepted)
        self.assertEqual(first.subjects(), [f"m{n}" for n in range(5)])
        self.assertEqual(second.requests, [])


def test_router_clients_are_upstream_clients() -> None:
    """
    Without C{make_client}, route upstreams get real L{UpstreamClient}s.
    """
    config = parse_config(
        BASE
        + '[[routes]]\nname = "r"\ntokens = ["a"]\n[[routes.upstreams]]\nurl = "http://127.0.0.1:9/send"\n',
        "r.toml",
    )
    router = make_router(reactor, config, None)
    assert all(isinstance(c, UpstreamClient) for c in router.clients()[:1])
