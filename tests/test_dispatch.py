"""
Tests for L{relayd.dispatch}: an epoll reactor that calls each ready
socket's handler directly still moves every byte over real 127.0.0.1
sockets, and still logs a protocol's error and closes its connection.
Each test runs a reactor of its own, not this test run's.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.epollreactor import EPollReactor
from twisted.internet.protocol import ClientFactory, Factory, Protocol
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher
from twisted.python import log
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from relayd.dispatch import direct_dispatch

SIZE = 4 * 1024 * 1024


class _Echo(Protocol):
    def dataReceived(self, data: bytes) -> None:
        self.transport.write(data)  # type: ignore[union-attr]


class _Broken(Protocol):
    def dataReceived(self, data: bytes) -> None:
        raise ValueError("broken protocol")


class _Client(Protocol):
    """
    Sends C{SIZE} bytes, then collects what comes back until the
    connection closes or all of it came back.
    """

    def __init__(self, reactor: EPollReactor, payload: bytes) -> None:
        self.reactor = reactor
        self.payload = payload
        self.received = bytearray()
        self.reason: Failure | None = None

    def connectionMade(self) -> None:
        self.transport.write(self.payload)  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if len(self.received) >= len(self.payload):
            self.transport.loseConnection()  # type: ignore[union-attr]

    def connectionLost(self, reason: Failure = Failure(Exception())) -> None:
        self.reason = reason
        self.reactor.stop()


def _run(server: type[Protocol], payload: bytes) -> tuple[_Client, bool]:
    """
    On a new epoll reactor changed by L{direct_dispatch}: listen with
    C{server} on 127.0.0.1, connect a L{_Client} sending C{payload}, run
    until it is closed (at most 30 seconds).

    @return: The client, and whether the reactor was changed.
    """
    reactor = EPollReactor()
    changed = direct_dispatch(reactor)
    port = reactor.listenTCP(0, Factory.forProtocol(server), interface="127.0.0.1")
    client = _Client(reactor, payload)
    factory = ClientFactory()
    factory.buildProtocol = lambda addr: client  # type: ignore[method-assign]
    reactor.connectTCP("127.0.0.1", port.getHost().port, factory)
    guard = reactor.callLater(30, reactor.stop)
    reactor.run(installSignalHandlers=False)
    if guard.active():
        guard.cancel()
    port.stopListening()
    return client, changed


class DirectDispatchTests(SynchronousTestCase):
    def test_bytes_both_ways(self) -> None:
        """
        4 MiB echoed back whole (many reads and writes, the write buffer
        full in between), none of them through
        C{twisted.python.log.callWithLogger}, and the connection closes.
        """
        calls: list[object] = []
        self.patch(log, "callWithLogger", lambda *a, **kw: calls.append(a))
        payload = bytes(range(256)) * (SIZE // 256)
        client, changed = _run(_Echo, payload)
        self.assertEqual(calls, [])  # not through the legacy log context
        self.assertTrue(changed)
        self.assertEqual(bytes(client.received), payload)
        self.assertIsNotNone(client.reason)

    def test_protocol_error_logged_and_connection_closed(self) -> None:
        """
        A protocol that raises in C{dataReceived}: the error is logged with
        its traceback and the connection is closed, as Twisted's own
        dispatch does.
        """
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        try:
            client, changed = _run(_Broken, b"x" * 1000)
        finally:
            globalLogPublisher.removeObserver(events.append)
        self.assertTrue(changed)
        self.assertEqual(bytes(client.received), b"")
        self.assertIsNotNone(client.reason)
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)
        failures = [e.get("log_failure") or e.get("failure") for e in events]
        self.assertTrue(any(f is not None and f.check(ValueError) for f in failures))

    def test_other_reactors_unchanged(self) -> None:
        """
        Not Twisted's C{EPollReactor} itself: nothing is changed.
        """
        clock = Clock()
        self.assertFalse(direct_dispatch(clock))
        self.assertFalse(hasattr(clock, "doIteration"))

        class Subclass(EPollReactor):
            pass

        sub = Subclass()
        self.assertFalse(direct_dispatch(sub))
        self.assertNotIn("doIteration", vars(sub))
