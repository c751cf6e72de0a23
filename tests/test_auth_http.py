"""
Tests for L{relayd.auth_http}: the http auth backend, its caches, and the
replies a client gets through the SMTP session.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from treq.testing import StubTreq
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import UsernamePassword
from twisted.internet import defer, task
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request
from zope.interface.verify import verifyObject

from relayd import reply as R
from relayd.auth import AuthRefused, CredentialRules, Login, make_auth_portal
from relayd.auth_http import HTTPAuthChecker, TTLCache
from relayd.config import AuthConfig, LimitsConfig, PolicyConfig
from relayd.reply import Refused
from relayd.smtp import RelaySMTPFactory
from relayd.tokens import TokenPolicy

TOKEN = "kr_live_abc123"


class AuthEndpoint(Resource):
    """
    A provider's auth endpoint: answers from C{self.answer}, records what
    it got, and holds requests while C{self.hold} is set.
    """

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.answer: tuple[int, Any] = (200, {"name": "acme"})
        self.received: list[tuple[str | None, Any]] = []
        self.hold = False
        self.held: list[Request] = []

    def render_POST(self, request: Request) -> bytes | int:
        assert request.content is not None
        auth = request.getHeader(b"Authorization")
        self.received.append((auth.decode() if auth else None, json.loads(request.content.read())))
        if self.hold:
            self.held.append(request)
            return NOT_DONE_YET
        return self._body(request)

    def _body(self, request: Request) -> bytes:
        status, document = self.answer
        request.setResponseCode(status)
        return document if isinstance(document, bytes) else json.dumps(document).encode()

    def release(self) -> None:
        for request in self.held:
            request.write(self._body(request))
            request.finish()
        self.held = []


class _Never:
    """
    An HTTP client whose requests never get an answer.
    """

    def __init__(self) -> None:
        self.cancelled = 0

    def post(self, url: str, **kwargs: Any) -> defer.Deferred[Any]:
        def cancel(d: defer.Deferred[Any]) -> None:
            self.cancelled += 1

        return defer.Deferred(cancel)


def _credentials(password: str = TOKEN, username: str = "apikey") -> UsernamePassword:
    return UsernamePassword(username.encode(), password.encode())


class HTTPAuthCheckerTests(SynchronousTestCase):
    """
    The checker against a stub auth endpoint.
    """

    def setUp(self) -> None:
        self.clock = task.Clock()
        self.endpoint = AuthEndpoint()
        self.http = StubTreq(self.endpoint)
        self.checker = self.make()

    def make(self, http: Any = None, **kwargs: Any) -> HTTPAuthChecker:
        options: dict[str, Any] = {
            "rules": CredentialRules(usernames=("apikey",)),
            "defaults": PolicyConfig(max_recipients=5),
            "ttl": 60.0,
            "negative_ttl": 10.0,
            "timeout": 5.0,
        }
        options.update(kwargs)
        return HTTPAuthChecker(
            http or self.http, "https://auth.example/smtp-auth", self.clock, **options
        )

    def login(self, credentials: Any = None) -> defer.Deferred[Any]:
        return self.checker.requestAvatarId(credentials or _credentials())

    def test_interface(self) -> None:
        verifyObject(ICredentialsChecker, self.checker)

    def test_accepted_with_policy(self) -> None:
        """
        A 2xx with a JSON policy logs in with that policy, over the
        C{[auth.defaults]}; the endpoint got the credential as the upstream
        would and the user name.
        """
        self.endpoint.answer = (
            200,
            {
                "name": "acme",
                "senders": ["ops@acme.example"],
                "sender_domains": ["acme.example"],
                "streams": ["transactional"],
                "max_message_size": 1000,
                "attachments": False,
                "messages_per_minute": 30,
            },
        )
        login = self.successResultOf(self.login())
        self.assertIsInstance(login, Login)
        self.assertEqual(login.credential, TOKEN)
        self.assertEqual(
            login.policy,
            TokenPolicy(
                "acme",
                senders=("ops@acme.example", "acme.example"),
                streams=("transactional",),
                max_recipients=5,
                max_message_size=1000,
                attachments=False,
                messages_per_minute=30,
            ),
        )
        self.assertEqual(self.endpoint.received, [(f"Bearer {TOKEN}", {"username": "apikey"})])
        self.assertNotIn(TOKEN, repr(login))

    def test_empty_2xx_is_defaults(self) -> None:
        self.endpoint.answer = (204, b"")
        login = self.successResultOf(self.login())
        self.assertEqual(login.policy.max_recipients, 5)

    def test_basic_forwarding(self) -> None:
        """
        Account credentials go as HTTP Basic (RFC 7617).
        """
        self.checker = self.make(rules=CredentialRules(credentials="account", forward="basic"))
        login = self.successResultOf(self.login(_credentials("s3cret", "jane")))
        pair = base64.b64encode(b"jane:s3cret").decode()
        self.assertEqual(login.credential, pair)
        self.assertEqual(self.endpoint.received[0][0], f"Bearer {pair}")

    def test_fifty_logins_one_request(self) -> None:
        """
        Within the positive TTL, 50 logins with one token make one request.
        """
        for _ in range(50):
            self.successResultOf(self.login())
            self.clock.advance(1)
        self.assertEqual((self.checker.requests, self.checker.hits), (1, 49))

    def test_concurrent_logins_one_request(self) -> None:
        """
        Logins with one credential while the first is being asked wait for
        its answer: one request, and every login gets the answer.
        """
        self.endpoint.hold = True
        pending = [self.login() for _ in range(50)]
        self.http.flush()
        for d in pending:
            self.assertNoResult(d)
        self.endpoint.release()
        self.http.flush()
        for d in pending:
            self.assertEqual(self.successResultOf(d).policy.name, "acme")
        self.assertEqual(len(self.endpoint.received), 1)

    def test_refused_with_text_and_negative_cache(self) -> None:
        """
        401 with an error text becomes 535 with that text (cleaned); it is
        remembered for the negative TTL only.
        """
        self.endpoint.answer = (401, {"error": "wrong api key\r\n250 forged"})
        f = self.failureResultOf(self.login(), AuthRefused)
        self.assertEqual(f.value.reply, R.AUTH_INVALID.with_text("wrong api key 250 forged"))
        self.failureResultOf(self.login(), AuthRefused)
        self.assertEqual(self.checker.requests, 1)
        self.clock.advance(11)
        self.endpoint.answer = (200, {})
        self.successResultOf(self.login())
        self.assertEqual(self.checker.requests, 2)

    def test_403_without_text(self) -> None:
        self.endpoint.answer = (403, b"")
        f = self.failureResultOf(self.login(), AuthRefused)
        self.assertEqual(f.value.reply, R.AUTH_INVALID)

    def test_failing_endpoint_is_454_and_not_cached(self) -> None:
        """
        A 5xx (or a 2xx whose body is not a JSON object) is a temporary
        failure, never a 535, and is asked again next time.
        """
        for answer in ((500, {"error": "down"}), (200, b"<html>"), (302, b"")):
            self.endpoint.answer = answer
            f = self.failureResultOf(self.login(), Refused)
            self.assertEqual(f.value.reply, R.AUTH_TEMPORARY_FAILURE)
        self.assertEqual(self.checker.requests, 3)

    def test_slow_endpoint_times_out_with_454(self) -> None:
        """
        No answer within the timeout: 454 at the timeout, the request is
        cancelled, and nothing hangs.
        """
        never = _Never()
        self.checker = self.make(http=never)
        d = self.login()
        self.clock.advance(4.9)
        self.assertNoResult(d)
        self.clock.advance(0.2)
        self.assertEqual(self.failureResultOf(d, Refused).value.reply, R.AUTH_TEMPORARY_FAILURE)
        self.assertEqual(never.cancelled, 1)

    def test_revoked_token_stops_within_ttl(self) -> None:
        """
        A token revoked upstream keeps working until its positive TTL ends,
        then is refused.
        """
        self.successResultOf(self.login())
        self.endpoint.answer = (401, {"error": "API key revoked"})
        self.clock.advance(59)
        self.successResultOf(self.login())
        self.clock.advance(2)
        f = self.failureResultOf(self.login(), AuthRefused)
        self.assertEqual(f.value.reply.text, "API key revoked")

    def test_username_rules_refuse_without_request(self) -> None:
        f = self.failureResultOf(self.login(_credentials(username="someone")), AuthRefused)
        self.assertEqual(f.value.reply, R.AUTH_USERNAME_REFUSED)
        self.assertEqual(self.endpoint.received, [])

    def test_cache_is_bounded(self) -> None:
        cache: TTLCache[int] = TTLCache(self.clock, 2)
        for i in range(3):
            cache.put(bytes([i]), i, 10)
        self.assertEqual((len(cache), cache.get(b"\0"), cache.get(b"\2")), (2, None, 2))


class SessionRepliesTests(SynchronousTestCase):
    """
    What an SMTP client sees with the http backend.
    """

    def setUp(self) -> None:
        self.clock = task.Clock()
        self.endpoint = AuthEndpoint()
        checker = HTTPAuthChecker(
            StubTreq(self.endpoint),
            "https://auth.example/a",
            self.clock,
            rules=CredentialRules(),
            defaults=PolicyConfig(),
        )
        portal = make_auth_portal(
            AuthConfig(backend="http", url="https://auth.example/a"),
            lambda token, policy: _Avatar(policy),
            checker=checker,
        )
        factory = RelaySMTPFactory(portal, "mx.example", LimitsConfig(), self.clock)
        factory.implicit_tls = True
        self.proto = factory.buildProtocol(None)
        self.transport = StringTransport()
        self.proto.makeConnection(self.transport)
        self.proto.dataReceived(b"EHLO client.example\r\n")
        self.transport.clear()

    def auth(self, token: str) -> str:
        plain = base64.b64encode(f"\0\0{token}".encode()).decode()
        self.proto.dataReceived(f"AUTH PLAIN {plain}\r\n".encode())
        self.clock.advance(30)
        out: str = self.transport.value().decode()
        self.transport.clear()
        return out

    def test_accepted(self) -> None:
        self.assertEqual(self.auth(TOKEN), "235 2.7.0 Authentication successful\r\n")

    def test_refused_text_from_endpoint(self) -> None:
        self.endpoint.answer = (401, {"error": "wrong api key"})
        self.assertEqual(self.auth(TOKEN), "535 5.7.8 wrong api key\r\n")

    def test_endpoint_down_is_454(self) -> None:
        self.endpoint.answer = (503, b"")
        self.assertEqual(self.auth(TOKEN), "454 4.7.0 Temporary authentication failure\r\n")
        self.endpoint.answer = (200, {})
        self.assertEqual(self.auth(TOKEN), "235 2.7.0 Authentication successful\r\n")


class _Avatar:
    def __init__(self, policy: TokenPolicy) -> None:
        self.policy = policy
        self.name = policy.name
        self.max_recipients = None
        self.max_message_size = None
