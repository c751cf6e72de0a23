# -*- test-case-name: tests.test_presets_e2e -*-
"""
A fake provider API for the test suite: a twisted.web server on a free
127.0.0.1 port that implements relayd's auth contract (C{POST /auth},
C{docs/upstream-api.md}, "Auth contract") and a send endpoint (C{POST
/send}, whatever JSON dialect the deployment speaks), and records what it
got.

  - C{/auth}: the credential is read from the configured header
    (C{token_header}, the C{{token}} of C{token_format}).  A credential
    given to L{FakeProvider.account} gets C{200} and its policy as JSON; one
    given to L{FakeProvider.refuse} gets C{401 {"error": <its text>}}; any
    other gets C{401 {"error": <unknown_error>}}.
  - C{/send}: a known credential gets the next queued answer
    (L{FakeProvider.answer}), else C{200 {"id": "fake-<n>"}}; an unknown
    one gets C{401 {"error": "Invalid API Token"}}.  Every request is
    recorded (L{Call}), known or not.

Runs on the real reactor, in the test process, as L{tests.faultupstream}
does: L{start} in a test's C{setUp}, L{stop} in a cleanup.
"""

from __future__ import annotations

import json
import socket
from typing import Any

import attrs
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.interfaces import IListeningPort
from twisted.protocols.policies import WrappingFactory
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

__all__ = ["Call", "FakeProvider", "free_port"]


def free_port() -> int:
    """
    @return: A TCP port on 127.0.0.1 that was free a moment ago.
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@attrs.frozen
class Call:
    """
    One request the fake provider got.

    @ivar path: C{"/auth"} or C{"/send"}.
    @ivar token: The credential read from the token header (C{""} when
        there was none).
    @ivar headers: The request headers, names lower-cased (last value).
    @ivar document: The JSON body, or C{None} when it was not JSON.
    """

    path: str
    token: str
    headers: dict[str, str]
    document: Any


class _Endpoint(Resource):
    isLeaf = True

    def __init__(self, provider: FakeProvider, path: str) -> None:
        super().__init__()
        self.provider = provider
        self.path = path

    def render_POST(self, request: Request) -> bytes:
        return self.provider._render(self.path, request)


class FakeProvider:
    """
    The fake provider API.

    @ivar calls: Every request, in order (L{Call}).
    """

    def __init__(
        self,
        reactor: Any,
        *,
        token_header: str = "Authorization",
        token_format: str = "Bearer {token}",
        unknown_error: str = "Authentication credentials invalid",
        port: int = 0,
    ) -> None:
        """
        @param reactor: An L{IReactorTCP} provider.
        @param token_header: The header the credential comes in.
        @param token_format: How the header's value is made from it.
        @param unknown_error: The 401 text for an unknown credential.
        @param port: The port to listen on; 0 picks a free one.
        """
        self._reactor = reactor
        self.token_header = token_header
        self._prefix, _, self._suffix = token_format.partition("{token}")
        self.unknown_error = unknown_error
        self.port = port or free_port()
        self.calls: list[Call] = []
        self._accounts: dict[str, dict[str, Any]] = {}
        self._refused: dict[str, str] = {}
        self._answers: list[tuple[int, Any]] = []
        self._listening: IListeningPort | None = None
        root = Resource()
        root.putChild(b"auth", _Endpoint(self, "/auth"))
        root.putChild(b"send", _Endpoint(self, "/send"))
        site = Site(root, reactor=reactor)
        site.displayTracebacks = False
        site.noisy = False
        # Wrapped to know the open connections: stop() aborts them, so a
        # persistent connection relayd pooled never reaches a later fake.
        self._factory = WrappingFactory(site)
        self._factory.noisy = False

    def url(self, path: str) -> str:
        """
        @param path: C{"/auth"} or C{"/send"}.
        @return: Its URL.
        """
        return f"http://127.0.0.1:{self.port}{path}"

    def account(self, token: str, **policy: Any) -> None:
        """
        Know C{token}: its logins succeed with C{policy} as the answer.
        """
        self._accounts[token] = policy

    def refuse(self, token: str, error: str) -> None:
        """
        Refuse C{token} at C{/auth} with C{401 {"error": error}}.
        """
        self._refused[token] = error

    def answer(self, status: int, document: Any) -> None:
        """
        Queue the answer to the next send request of a known credential.
        """
        self._answers.append((status, document))

    def sends(self) -> list[Call]:
        """
        @return: The send requests, in order.
        """
        return [c for c in self.calls if c.path == "/send"]

    def last_send(self) -> Any:
        """
        @return: The JSON body of the last send request.
        @raise AssertionError: When there was none.
        """
        sends = self.sends()
        assert sends, "the provider got no send request"
        return sends[-1].document

    def start(self) -> None:
        """
        Listen.
        """
        if self._listening is None:
            self._listening = self._reactor.listenTCP(
                self.port, self._factory, interface="127.0.0.1"
            )

    def stop(self) -> Deferred[None]:
        """
        Stop listening and abort the open connections.

        @return: A Deferred that fires once the port is closed.
        """
        for connection in list(self._factory.protocols):
            connection.transport.abortConnection()
        listening, self._listening = self._listening, None
        if listening is None:
            return succeed(None)
        stopped: Deferred[None] = maybeDeferred(listening.stopListening)  # type: ignore[call-overload]
        return stopped

    def _token(self, request: Request) -> str:
        raw = request.getHeader(self.token_header)
        value = raw.decode("latin-1") if isinstance(raw, bytes) else (raw or "")
        if value.startswith(self._prefix) and value.endswith(self._suffix):
            return value[len(self._prefix) : len(value) - len(self._suffix)]
        return ""

    def _render(self, path: str, request: Request) -> bytes:
        assert request.content is not None
        body = request.content.read()
        try:
            document = json.loads(body)
        except ValueError:
            document = None
        token = self._token(request)
        headers = {
            name.decode("latin-1").lower(): values[-1].decode("latin-1")
            for name, values in request.requestHeaders.getAllRawHeaders()
        }
        self.calls.append(Call(path, token, headers, document))
        if path == "/auth":
            if token in self._accounts:
                return self._json(request, 200, self._accounts[token])
            return self._json(request, 401, {"error": self._refused.get(token, self.unknown_error)})
        if token not in self._accounts:
            return self._json(request, 401, {"error": "Invalid API Token"})
        if self._answers:
            return self._json(request, *self._answers.pop(0))
        return self._json(request, 200, {"id": f"fake-{len(self.sends())}"})

    @staticmethod
    def _json(request: Request, status: int, document: Any) -> bytes:
        request.setResponseCode(status)
        request.setHeader(b"Content-Type", b"application/json")
        return json.dumps(document).encode()
