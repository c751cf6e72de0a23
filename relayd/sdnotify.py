# -*- test-case-name: tests.test_systemd -*-
"""
Tells systemd how the daemon is doing: C{READY=1} once every listener of
every process accepts connections, C{STOPPING=1} when it starts to drain,
C{WATCHDOG=1} pings when the unit sets C{WatchdogSec=}.

The protocol is sd_notify(3): one datagram of C{NAME=value} lines to the
Unix socket named by C{$NOTIFY_SOCKET} (a path, or C{@name} for Linux's
abstract namespace).  Nothing is sent when the variable is not set, so the
same daemon runs under C{Type=notify}, C{Type=simple} or no systemd.

With worker processes (L{relayd.workers}) the supervisor alone talks to
systemd: it gives its workers its own C{NOTIFY_SOCKET} (an abstract socket
it listens on), counts their C{READY=1} and says C{READY=1} to systemd
only when it has heard from all of them.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from twisted.application.service import Service
from twisted.internet import defer, task
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger

__all__ = ["SystemdReadiness", "notify", "watchdog_interval"]

log = Logger()


def _socket_address(name: str) -> str | None:
    if name.startswith("@"):
        return "\0" + name[1:]
    if name.startswith("/"):
        return name
    return None  # vsock: and others: not supported


def notify(state: str, environ: Mapping[str, str] | None = None) -> bool:
    """
    Send C{state} to systemd (sd_notify(3)), without blocking.

    @param state: Newline-separated assignments: C{"READY=1"},
        C{"STOPPING=1"}, C{"WATCHDOG=1"}, C{"STATUS=..."}.
    @param environ: Where C{NOTIFY_SOCKET} is read; L{os.environ} when
        C{None}.
    @return: Whether the datagram was sent (C{False}: no C{NOTIFY_SOCKET},
        or it cannot be reached; the reason is logged).
    """
    env = os.environ if environ is None else environ
    name = env.get("NOTIFY_SOCKET", "")
    where = _socket_address(name)
    if where is None:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.setblocking(False)
            s.connect(where)
            s.send(state.encode("utf-8"))
    except OSError as e:
        log.warn("cannot notify systemd at {socket}: {error}", socket=name, error=str(e))
        return False
    return True


def watchdog_interval(environ: Mapping[str, str] | None = None, pid: int | None = None) -> float:
    """
    @param environ: Where C{WATCHDOG_USEC} and C{WATCHDOG_PID} are read.
    @param pid: This process's id (L{os.getpid} when C{None}).
    @return: Seconds between C{WATCHDOG=1} pings (half the watchdog
        timeout, as sd_watchdog_enabled(3) advises), or C{0} when the
        watchdog is off or meant for another process.
    """
    env = os.environ if environ is None else environ
    try:
        usec = int(env.get("WATCHDOG_USEC", "0"))
        owner = int(env.get("WATCHDOG_PID", "0"))
    except ValueError:
        return 0.0
    if usec <= 0 or (owner and owner != (os.getpid() if pid is None else pid)):
        return 0.0
    return usec / 2e6


class _WorkersReady(DatagramProtocol):
    """
    The supervisor's notification socket for its workers: counts C{READY=1}.
    """

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.ready = 0
        self.all_ready: defer.Deferred[None] = defer.Deferred()

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        if b"READY=1" in datagram.split(b"\n") and not self.all_ready.called:
            self.ready += 1
            if self.ready >= self.expected:
                self.all_ready.callback(None)


class SystemdReadiness(Service):
    """
    The systemd readiness protocol (sd_notify(3); not C{/readyz}, see
    L{relayd.admin.ReadinessChecks}): sends C{READY=1} when every listener listens (and every worker said
    so), C{STOPPING=1} when the daemon starts to stop, and the watchdog's
    pings.  Add it after the listeners and before the L{WorkerPool}.

    @ivar listeners: The listening services of this process: those with a
        C{when_listening()} (L{relayd.listeners.ListenerService}) are
        waited for; the others listen once started.
    @ivar pool: The worker pool (in the supervisor with workers), or
        C{None}.
    """

    def __init__(
        self,
        reactor: Any,
        listeners: Sequence[Any],
        pool: Any = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.reactor = reactor
        self.listeners = list(listeners)
        self.pool = pool
        self.environ = dict(os.environ if environ is None else environ)
        self.ready: defer.Deferred[None] | None = None
        self._relay: Any = None
        self._watchdog: task.LoopingCall | None = None
        self._stopping = False

    def _notify(self, state: str) -> bool:
        return notify(state, self.environ)

    def startService(self) -> None:
        super().startService()
        workers: defer.Deferred[None] = defer.succeed(None)
        if self.pool is not None and self.pool.count > 0 and "NOTIFY_SOCKET" in self.environ:
            relay = _WorkersReady(self.pool.count)
            name = f"relayd-notify-{os.getpid()}-{uuid.uuid4().hex[:8]}"
            self._relay = self.reactor.listenUNIXDatagram("\0" + name, relay)
            env = {k: v for k, v in self.environ.items() if not k.startswith("WATCHDOG_")}
            env["NOTIFY_SOCKET"] = "@" + name
            self.pool.env = env
            workers = relay.all_ready
        self.ready = defer.Deferred.fromCoroutine(self._when_ready(workers))
        self.ready.addErrback(lambda f: log.failure("readiness not reported", f))
        interval = watchdog_interval(self.environ)
        if interval:
            self._watchdog = task.LoopingCall(self._notify, "WATCHDOG=1")
            self._watchdog.clock = self.reactor
            self._watchdog.start(interval, now=True)
        self.reactor.addSystemEventTrigger("before", "shutdown", self._stop_notice)

    async def _when_ready(self, workers: defer.Deferred[None]) -> None:
        for listener in self.listeners:
            when = getattr(listener, "when_listening", None)
            if when is not None:
                await when()
        await workers
        if self._stopping:
            return
        self._notify("READY=1\nSTATUS=accepting connections")
        log.info("ready: every listener accepts connections")

    def _stop_notice(self) -> None:
        if not self._stopping:
            self._stopping = True
            self._notify("STOPPING=1\nSTATUS=draining")

    def stopService(self) -> Any:
        super().stopService()
        self._stop_notice()
        if self._watchdog is not None and self._watchdog.running:
            self._watchdog.stop()
        if self._relay is not None:
            relay, self._relay = self._relay, None
            return relay.stopListening()
        return None
