"""
Routes end to end: the real daemon (C{twist relayd}) with C{[[routes]]},
real SMTP clients (smtplib over STARTTLS) and fault upstreams
(L{tests.faultupstream}) on 127.0.0.1.

Each message goes to the upstreams of its route (chosen by the token's
name or the sender domain), fails over to the next upstream only when the
first certainly did not take it (connection refused), with the same
idempotency key, and is sent with the route upstream's own credential
when it has one, else the token's held credential, else the client's.
"""

from __future__ import annotations

import smtplib
import time
import uuid

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from relayd.tokens import digest
from tests.daemon import RelaydProcess, config, free_port
from tests.faultupstream import FaultUpstream

WEB = "routes-web-token-not-a-secret"
SHOP = "routes-shop-token-not-a-secret"
HELD = "SG.routes-held-key-not-a-secret"
ROUTE_KEY = "routes-upstream-key-not-a-secret"


def message(subject: str) -> bytes:
    """
    A message with its own C{Message-ID} (a distinct idempotency key).
    """
    return (
        f"From: a@example.com\r\nTo: b@example.net\r\nSubject: {subject}\r\n"
        f"Message-ID: <{uuid.uuid4().hex}@routes.test>\r\n\r\nbody\r\n"
    ).encode()


class Relayd(RelaydProcess):
    """
    The real relayd on a temporary configuration: one STARTTLS listener,
    two tokens (C{web}; C{shop}, whose entry holds an upstream credential
    in a file), C{[upstream]} and the given C{[[routes]]}.
    """

    stop_wait = 15

    def __init__(self, upstream_url: str, routes: str, timeout: float = 5) -> None:
        super().__init__("relayd-routes-")
        self.write("held.key", HELD + "\n")
        self.write("route.key", ROUTE_KEY + "\n")
        self.write(
            "tokens.toml",
            f'[tokens.web]\nsha256 = "{digest(WEB).hex()}"\n'
            f'[tokens.shop]\nsha256 = "{digest(SHOP).hex()}"\n'
            'upstream_credential_file = "held.key"\n',
        )
        self.port = free_port()
        self.start(
            config(upstream_url, [(self.port, "starttls")], timeout, extra=routes), [self.port]
        )

    def send(
        self, data: bytes, token: str = WEB, mail_from: str = "a@example.com"
    ) -> tuple[int, str]:
        """
        Send one message (blocking: call it in a thread).

        @return: The reply code and text to the final dot.
        """
        with smtplib.SMTP("127.0.0.1", self.port, local_hostname="client.test", timeout=15) as c:
            c.starttls(context=self.tls_context())
            c.login("apikey", token)
            assert c.mail(mail_from)[0] == 250
            assert c.rcpt("b@example.net")[0] == 250
            code, text = c.data(data)
            return code, text.decode()


class RoutesEndToEndTests(TestCase):
    """
    The real daemon, routes to fault upstreams in this process's reactor.
    """

    timeout = 60

    def upstream(self, mode: str, **kwargs: float) -> FaultUpstream:
        upstream = FaultUpstream(reactor, mode, **kwargs)  # type: ignore[arg-type]
        upstream.start()
        self.addCleanup(upstream.stop)
        return upstream

    async def relayd(self, default: FaultUpstream, routes: str, timeout: float = 5) -> Relayd:
        daemon: Relayd = await deferToThread(Relayd, default.url, routes, timeout)
        self.addCleanup(lambda: deferToThread(daemon.stop))
        self.addCleanup(lambda: self.assertNotIn("Traceback", daemon.logtext()))
        return daemon

    def send(self, daemon: Relayd, data: bytes, **kwargs: str) -> Deferred[tuple[int, str]]:
        return deferToThread(daemon.send, data, **kwargs)

    async def test_down_first_upstream_fails_over_once_each(self) -> None:
        """
        A route whose first upstream refuses connections: every message is
        answered C{250} with the second upstream's id, which recorded each
        once, with the route's own credential and one idempotency key per
        message; the default upstream gets nothing.
        """
        default, down, ok = self.upstream("ok"), self.upstream("down"), self.upstream("ok")
        daemon = await self.relayd(
            default,
            f"""
[[routes]]
name = "web"
tokens = ["web"]
[[routes.upstreams]]
url = "{down.url}"
credential_file = "route.key"
[[routes.upstreams]]
url = "{ok.url}"
credential_file = "route.key"
""",
        )
        subjects = [f"failover {n}" for n in range(5)]
        replies = [await self.send(daemon, message(s)) for s in subjects]
        self.assertEqual(replies, [(250, f"2.0.0 Ok: queued as fault-{n + 1}") for n in range(5)])
        self.assertEqual(ok.subjects(), subjects)
        self.assertEqual(len(ok.requests), 5)
        keys = [r.key for r in ok.requests]
        self.assertEqual(len(set(keys)), 5)
        self.assertTrue(all(keys))
        self.assertEqual({r.headers["authorization"] for r in ok.requests}, {f"Bearer {ROUTE_KEY}"})
        self.assertEqual(default.requests, [])
        self.assertIn(
            "route web: upstream web[0] native did not take the message", daemon.logtext()
        )

    async def test_slow_first_upstream_gets_451_and_the_second_nothing(self) -> None:
        """
        A first upstream that reads the request and answers after the
        client's timeout: the client gets C{451 4.3.0}; the second upstream
        gets nothing (the first may have taken it, and had).  Its late
        answer is recorded: the client's retry gets C{250} with the first
        id, and nothing is sent again.
        """
        default = self.upstream("ok")
        slow, backup = self.upstream("slow", delay=2.5), self.upstream("ok")
        daemon = await self.relayd(
            default,
            f"""
[[routes]]
name = "web"
tokens = ["web"]
[[routes.upstreams]]
url = "{slow.url}"
[[routes.upstreams]]
url = "{backup.url}"
""",
            timeout=1,
        )
        data = message("slow")
        code, text = await self.send(daemon, data)
        self.assertEqual((code, text[:5]), (451, "4.3.0"))
        self.assertEqual(backup.requests, [])
        await deferToThread(time.sleep, 2.5)  # the late answer comes
        self.assertEqual(await self.send(daemon, data), (250, "2.0.0 Ok: queued as fault-1"))
        self.assertEqual(slow.subjects(), ["slow"])
        self.assertEqual(len(slow.requests), 1)
        self.assertEqual(backup.requests, [])
        self.assertEqual(default.requests, [])

    async def test_sender_domain_route_goes_to_its_own_upstream(self) -> None:
        """
        A route chosen by sender domain (of the reverse-path or the From
        address, without case): its messages go to its upstream, the
        others to C{[upstream]}.
        """
        default, shop = self.upstream("ok"), self.upstream("ok")
        daemon = await self.relayd(
            default,
            f"""
[[routes]]
name = "shop"
sender_domains = ["Shop.Example"]
[[routes.upstreams]]
url = "{shop.url}"
""",
        )
        self.assertEqual(
            await self.send(daemon, message("to shop"), mail_from="orders@shop.example"),
            (250, "2.0.0 Ok: queued as fault-1"),
        )
        self.assertEqual(
            await self.send(daemon, message("to default")), (250, "2.0.0 Ok: queued as fault-1")
        )
        self.assertEqual(shop.subjects(), ["to shop"])
        self.assertEqual(default.subjects(), ["to default"])
        self.assertEqual(shop.requests[0].headers["authorization"], f"Bearer {WEB}")

    async def test_route_credentials_replace_the_client_token(self) -> None:
        """
        A route upstream with a credential of its own sends that one; one
        without sends the token's held credential; neither sends the
        client's token, and no credential is in the log.
        """
        default, own, held = self.upstream("ok"), self.upstream("ok"), self.upstream("ok")
        daemon = await self.relayd(
            default,
            f"""
[[routes]]
name = "own"
tokens = ["web"]
[[routes.upstreams]]
url = "{own.url}"
credential_file = "route.key"

[[routes]]
name = "held"
tokens = ["shop"]
[[routes.upstreams]]
url = "{held.url}"
""",
        )
        self.assertEqual((await self.send(daemon, message("own")))[0], 250)
        self.assertEqual((await self.send(daemon, message("held"), token=SHOP))[0], 250)
        self.assertEqual(own.requests[0].headers["authorization"], f"Bearer {ROUTE_KEY}")
        self.assertEqual(held.requests[0].headers["authorization"], f"Bearer {HELD}")
        self.assertEqual((own.subjects(), held.subjects()), (["own"], ["held"]))
        self.assertEqual(default.requests, [])
        log = daemon.logtext()
        for secret in (WEB, SHOP, HELD, ROUTE_KEY):
            self.assertNotIn(secret, log)
