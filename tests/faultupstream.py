# -*- test-case-name: tests.test_faultupstream -*-
"""
A fault-injecting HTTP upstream for the test suite: a twisted.web server
on a free 127.0.0.1 port that speaks enough of the C{native} dialect
(C{docs/upstream-api.md}) to accept messages, and misbehaves as its mode
says.

Modes (L{MODES}):
  - C{ok}: C{200 {"id": "fault-<n>"}}; the message is recorded.
  - C{down}: nothing listens on the port: connection refused.
  - C{slow}: the message is recorded when the request has been read, the
    answer (C{200}) comes C{delay} seconds later.
  - C{reset_after_read}: the message is recorded, then the connection is
    reset (TCP RST) without an answer.
  - C{reset_before}: the connection is reset as soon as it is accepted,
    before anything is read.
  - C{5xx}: C{503}, nothing recorded.
  - C{429}: C{429} with C{Retry-After: <retry_after>}, nothing recorded.
  - C{garbage_200}: the message is recorded, the answer is C{200} with a
    body that is not JSON.
  - C{close_after_each}: the message is recorded, the answer is C{200},
    then the server closes the connection (without C{Connection: close}):
    the keep-alive connection a client pools is dead.

Which requests meet the fault: all of them by default; with
C{fault_first=n} only the first C{n} requests of each message (a message
is known by its C{subject}), so that a client's retry gets through; with
C{fault_every=k} (for C{reset_before}, where nothing is read) only every
C{k}-th connection, starting with the first.

With C{honour_key=True}, a request whose C{Idempotency-Key} was seen on an
accepted message is answered with the first message's id and not
recorded again (draft-ietf-httpapi-idempotency-key-header), whatever the
fault does with the answer afterwards.

Runs on the real reactor, in the test process (trial's reactor under
pytest), as L{tests.test_devupstream} does: start it with L{start}, stop
it with L{stop} in a cleanup.
"""

from __future__ import annotations

import json
import socket
import struct
from typing import Any

import attrs
from twisted.internet.base import DelayedCall
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.interfaces import IListeningPort
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

__all__ = ["MODES", "FaultUpstream", "Received", "Recorded"]

MODES = (
    "ok",
    "down",
    "slow",
    "reset_after_read",
    "reset_before",
    "5xx",
    "429",
    "garbage_200",
    "close_after_each",
)

# Modes in which a request that was read is recorded as accepted.
_ACCEPTING = {"ok", "slow", "reset_after_read", "garbage_200", "close_after_each"}


@attrs.frozen
class Received:
    """
    One request the upstream read (whatever it then did).

    @ivar number: 1 for the first request, and so on.
    @ivar key: The C{Idempotency-Key}, unquoted, or C{None}.
    @ivar subject: The C{subject} of the JSON body, or C{None}.
    @ivar fault: The mode applied to it (C{"ok"} when it met no fault).
    @ivar headers: The request headers, names lower-cased (last value).
    """

    number: int
    key: str | None
    subject: str | None
    fault: str
    headers: dict[str, str]


@attrs.frozen
class Recorded:
    """
    One message the upstream accepted.

    @ivar upstream_id: The id it gave (or would have given) the message.
    @ivar key: The request's C{Idempotency-Key}, or C{None}.
    @ivar subject: The message's C{subject}, or C{None}.
    @ivar document: The JSON body.
    """

    upstream_id: str
    key: str | None
    subject: str | None
    document: Any


def reset(transport: Any) -> None:
    """
    Reset a TCP connection: C{SO_LINGER} 0 and close, so that the peer
    gets an RST instead of an orderly FIN.

    @param transport: A TCP transport (or a wrapper delegating to one).
    """
    handle = transport.getHandle()
    handle.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abortConnection()


def _idempotency_key(request: Request) -> str | None:
    raw = request.getHeader(b"Idempotency-Key")
    if raw is None:
        return None
    value = raw.decode("latin-1").strip()
    if len(value) >= 2 and value[0] == value[-1] == '"':
        value = value[1:-1]
    return value


class _Connection(ProtocolWrapper):
    """
    Counts connections and resets them in C{reset_before} mode.
    """

    def makeConnection(self, transport: Any) -> None:
        upstream = self.factory.upstream  # type: ignore[attr-defined]
        upstream.connections += 1
        if upstream.mode == "reset_before" and upstream._every(upstream.connections):
            ProtocolWrapper.makeConnection(self, transport)
            reset(transport)
            return
        ProtocolWrapper.makeConnection(self, transport)


class _Send(Resource):
    isLeaf = True

    def __init__(self, upstream: FaultUpstream) -> None:
        super().__init__()
        self.upstream = upstream

    def render_POST(self, request: Request) -> bytes | int:
        return self.upstream._render(request)

    def render_GET(self, request: Request) -> bytes:
        request.setResponseCode(405)
        return b""


class FaultUpstream:
    """
    The fault-injecting upstream.

    @ivar mode: The current mode (one of L{MODES}); change it with
        L{set_mode}.
    @ivar requests: Every request read, in order (L{Received}).
    @ivar accepted: Every message accepted, in order (L{Recorded}); with
        C{honour_key}, a repeated key adds nothing.
    @ivar repeats: Requests answered from an earlier key (C{honour_key}).
    @ivar connections: Connections accepted so far.
    """

    def __init__(
        self,
        reactor: Any,
        mode: str = "ok",
        *,
        delay: float = 2.0,
        retry_after: int = 1,
        honour_key: bool = False,
        fault_first: int | None = None,
        fault_every: int = 1,
        port: int = 0,
    ) -> None:
        """
        @param reactor: An L{IReactorTCP} and L{IReactorTime} provider.
        @param mode: The starting mode.
        @param delay: Seconds C{slow} waits before answering.
        @param retry_after: The C{Retry-After} of C{429}, seconds.
        @param honour_key: Answer a repeated C{Idempotency-Key} with the
            first id.
        @param fault_first: Apply the fault to the first this many
            requests of each message only; C{None}: to every request.
        @param fault_every: Apply the fault to every this-many-th request
            (or connection, in C{reset_before}), starting with the first.
        @param port: The port to listen on; 0 picks a free one (reserved
            even while C{down}).
        """
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}")
        self._reactor = reactor
        self.mode = mode
        self.delay = delay
        self.retry_after = retry_after
        self.honour_key = honour_key
        self.fault_first = fault_first
        self.fault_every = fault_every
        self.requests: list[Received] = []
        self.accepted: list[Recorded] = []
        self.repeats = 0
        self.connections = 0
        self._by_key: dict[str, str] = {}
        self._tries: dict[str | None, int] = {}
        self._pending: list[DelayedCall] = []
        self._listening: IListeningPort | None = None
        if port == 0:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = int(s.getsockname()[1])
        self.port = port
        root = Resource()
        root.putChild(b"send", _Send(self))
        site = Site(root, reactor=reactor)
        site.displayTracebacks = False
        site.noisy = False
        self._factory = WrappingFactory(site)
        self._factory.protocol = _Connection
        self._factory.upstream = self  # type: ignore[attr-defined]
        self._factory.noisy = False

    @property
    def url(self) -> str:
        """
        The URL to post messages to.
        """
        return f"http://127.0.0.1:{self.port}/send"

    def subjects(self) -> list[str | None]:
        """
        @return: The subject of each accepted message, in order.
        """
        return [r.subject for r in self.accepted]

    def start(self) -> None:
        """
        Listen (unless the mode is C{down}).
        """
        if self.mode != "down" and self._listening is None:
            self._listening = self._reactor.listenTCP(
                self.port, self._factory, interface="127.0.0.1"
            )

    def set_mode(self, mode: str) -> Deferred[None]:
        """
        Switch modes: to C{down} stops listening (open connections are
        aborted), from C{down} listens again on the same port.

        @return: A Deferred that fires once the switch is done.
        """
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}")
        self.mode = mode
        if mode == "down":
            return self._close()
        self.start()
        return succeed(None)

    def _close(self) -> Deferred[None]:
        listening, self._listening = self._listening, None
        for connection in list(self._factory.protocols):
            connection.transport.abortConnection()
        if listening is None:
            return succeed(None)
        stopped: Deferred[None] = maybeDeferred(listening.stopListening)  # type: ignore[call-overload]
        return stopped

    def stop(self) -> Deferred[None]:
        """
        Stop listening, abort every open connection and cancel pending
        slow answers.

        @return: A Deferred that fires once the port is closed.
        """
        for call in self._pending:
            if call.active():
                call.cancel()
        self._pending.clear()
        return self._close()

    def _every(self, n: int) -> bool:
        return (n - 1) % self.fault_every == 0

    def _faulty(self, n: int, subject: str | None) -> bool:
        if self.fault_first is not None:
            tries = self._tries.get(subject, 0)
            self._tries[subject] = tries + 1
            return tries < self.fault_first
        return self._every(n)

    def _render(self, request: Request) -> bytes | int:
        assert request.content is not None
        body = request.content.read()
        try:
            document = json.loads(body)
        except ValueError:
            document = None
        subject = document.get("subject") if isinstance(document, dict) else None
        key = _idempotency_key(request)
        number = len(self.requests) + 1
        # reset_before acts on connections: a request that was read met no fault.
        faulty = self.mode != "reset_before" and self._faulty(number, subject)
        fault = self.mode if faulty else "ok"
        headers = {
            name.decode("latin-1").lower(): values[-1].decode("latin-1")
            for name, values in request.requestHeaders.getAllRawHeaders()
        }
        self.requests.append(Received(number, key, subject, fault, headers))
        if fault == "5xx":
            return self._json(request, 503, {"error": "Service unavailable"})
        if fault == "429":
            request.setHeader(b"Retry-After", str(self.retry_after).encode())
            return self._json(request, 429, {"error": "Too many requests"})
        if document is None:
            return self._json(request, 400, {"error": "Request body is not JSON"})
        assert fault in _ACCEPTING, fault
        if self.honour_key and key is not None and key in self._by_key:
            upstream_id = self._by_key[key]
            self.repeats += 1
        else:
            upstream_id = f"fault-{len(self.accepted) + 1}"
            self.accepted.append(Recorded(upstream_id, key, subject, document))
            if key is not None:
                self._by_key[key] = upstream_id
        answer = {"id": upstream_id}
        if fault == "reset_after_read":
            reset(request.channel.transport)
            return NOT_DONE_YET
        if fault == "slow":
            self._answer_later(request, answer)
            return NOT_DONE_YET
        if fault == "garbage_200":
            request.setHeader(b"Content-Type", b"text/html")
            return b"<html><body>Queued!</body></html>"
        if fault == "close_after_each":
            transport: Any = request.channel.transport

            def close(_: object) -> None:
                transport.loseConnection()

            request.notifyFinish().addBoth(close)
        return self._json(request, 200, answer)

    def _answer_later(self, request: Request, answer: dict[str, str]) -> None:
        gone: list[object] = []
        request.notifyFinish().addErrback(gone.append)

        def answer_now() -> None:
            if not gone:
                request.write(self._json(request, 200, answer))
                request.finish()

        self._pending.append(self._reactor.callLater(self.delay, answer_now))

    @staticmethod
    def _json(request: Request, status: int, document: object) -> bytes:
        request.setResponseCode(status)
        request.setHeader(b"Content-Type", b"application/json")
        return json.dumps(document).encode()
