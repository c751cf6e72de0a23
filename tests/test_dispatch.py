"""
Tests for L{relayd.dispatch}: an epoll reactor that calls each ready
socket's handler directly still moves every byte over real 127.0.0.1
sockets, and still logs a protocol's error and closes its connection.
Each test runs a reactor of its own, not this test run's.
"""

from __future__ import annotations

from typing import Any, cast

from twisted.internet.epollreactor import EPollReactor
from twisted.internet.protocol import ClientFactory, Factory, Protocol
from twisted.internet.task import Clock
from twisted.logger import ILogObserver, globalLogPublisher
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


def _run(server: type[Protocol], payload: bytes, raising: bool = False) -> tuple[_Client, bool]:
    """
    On a new epoll reactor changed by L{direct_dispatch}: listen with
    C{server} on 127.0.0.1, connect a L{_Client} sending C{payload}, run
    until it is closed (at most 30 seconds).

    @param raising: The first socket event's handling raises after it is
        done (as a C{connectionLost} that raises would).
    @return: The client, and whether the reactor was changed.
    """
    reactor = EPollReactor()
    changed = direct_dispatch(reactor)
    if raising:
        original = reactor._doReadOrWrite
        raised: list[bool] = []

        def handle(selectable: Any, fd: int, event: int) -> None:
            original(selectable, fd, event)
            if not raised:
                raised.append(True)
                raise RuntimeError("escaped the handler")

        reactor._doReadOrWrite = handle  # type: ignore[method-assign]
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
        observer = cast(ILogObserver, events.append)
        globalLogPublisher.addObserver(observer)
        try:
            client, changed = _run(_Broken, b"x" * 1000)
        finally:
            globalLogPublisher.removeObserver(observer)
        self.assertTrue(changed)
        self.assertEqual(bytes(client.received), b"")
        self.assertIsNotNone(client.reason)
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)
        failures = [e.get("log_failure") or e.get("failure") for e in events]
        self.assertTrue(any(f is not None and f.check(ValueError) for f in failures))

    def test_error_escaping_the_handler_logged(self) -> None:
        """
        An error that escapes a socket's handling is logged, and the
        reactor goes on handling sockets: the echo still completes.
        """
        payload = b"y" * 100_000
        client, changed = _run(_Echo, payload, raising=True)
        self.assertTrue(changed)
        self.assertEqual(bytes(client.received), payload)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

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
