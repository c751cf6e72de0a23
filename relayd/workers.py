# -*- test-case-name: tests.test_workers -*-
"""
Worker processes: use every CPU core by sharing the listening sockets.

One Python process runs on one core.  With C{[server] workers = N} (C{0}:
one per core), the first process (the supervisor) binds every listener as
usual, then starts C{N - 1} more processes of the same program, each given
the listening sockets as inherited file descriptors (C{childFDs}) and
adopting them with L{IReactorSocket.adoptStreamPort}.  The kernel hands each
new connection to one of the processes accepting on the socket.  The
supervisor serves connections too, restarts a worker that dies, forwards
C{SIGHUP} (tokens reload) and stops the workers when it stops, waiting for
them to drain.

A worker's standard input is a pipe from the supervisor, which never
writes to it.  When the supervisor is gone, even by C{SIGKILL}, the pipe
reaches end of file and the worker stops as on C{SIGTERM} (L{SupervisorWatch}):
no orphan keeps serving on the sockets.  Unlike C{PR_SET_PDEATHSIG} this
works on every POSIX system and cannot miss a supervisor that died before
the worker started watching.

Limits held in memory (connection caps, failed-AUTH counters) are per
process.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
from collections.abc import Callable, Sequence
from typing import Any

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.interfaces import IReadDescriptor
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

#: The workers' HMAC key for credential counters (hex, one per supervisor,
#: never logged), in this environment variable (L{relayd.smtp.guards}).
AUTH_SECRET_ENV = "RELAYD_AUTH_SECRET"

__all__ = ["AdoptedPortService", "SupervisorWatch", "WorkerPool", "worker_count"]

log = Logger()

# Seconds to wait before restarting a worker that died, and (by default) for
# a worker to stop before it is killed.
RESTART_DELAY = 1.0
STOP_TIMEOUT = 10.0


def worker_count(configured: int) -> int:
    """
    @param configured: C{[server] workers}: C{0} for one per CPU core.
    @return: How many processes should accept connections (at least 1).
    """
    if configured > 0:
        return configured
    return max(
        1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    )


def accept_one_at_a_time(port: Any) -> None:
    """
    Make a listening port accept one connection per wake-up.

    Twisted's TCP port accepts up to a hundred connections each time the
    socket is readable, so a burst of clients lands on whichever process
    woke first.  Accepting one at a time lets every process sharing the
    socket take its share.

    @param port: A L{twisted.internet.tcp.Port} (others are left alone).
    """
    if not hasattr(port, "numberAccepts"):
        return
    read = port.doRead

    def doRead() -> Any:
        port.numberAccepts = 1
        return read()

    port.doRead = doRead


class AdoptedPortService(Service):
    """
    Listens on an inherited listening socket (in a worker process).

    @ivar fd: The inherited file descriptor of a listening stream socket.
    """

    def __init__(self, reactor: Any, fd: int, factory: Any) -> None:
        self.reactor = reactor
        self.fd = fd
        self.factory = factory
        self.port: Any = None

    def startService(self) -> None:
        super().startService()
        sock = socket.socket(fileno=self.fd)
        family = sock.family
        sock.detach()
        self.port = self.reactor.adoptStreamPort(self.fd, family, self.factory)
        os.close(self.fd)
        accept_one_at_a_time(self.port)
        log.info("listening on {address} (inherited socket)", address=str(self.port.getHost()))

    def stopService(self) -> Any:
        super().stopService()
        if self.port is not None:
            return self.port.stopListening()
        return None


@implementer(IReadDescriptor)
class SupervisorWatch(Service):
    """
    Stops a worker when its supervisor is gone: the pipe from the
    supervisor (the worker's standard input) reaches end of file.

    @ivar fd: The read end of the pipe.
    @ivar stop: Called once, with the reason for the log, to stop the
        process as on C{SIGTERM} (finish the messages in flight, bounded).
    """

    def __init__(self, reactor: Any, fd: int, stop: Callable[[str], None]) -> None:
        self.reactor = reactor
        self.fd = fd
        self.stop = stop

    def startService(self) -> None:
        super().startService()
        os.set_blocking(self.fd, False)
        self.reactor.addReader(self)

    def stopService(self) -> Any:
        self.reactor.removeReader(self)
        return super().stopService()

    def fileno(self) -> int:
        return self.fd

    def logPrefix(self) -> str:
        return "supervisor"

    def doRead(self) -> Any:
        try:
            data = os.read(self.fd, 512)
        except BlockingIOError:
            return None
        except OSError:
            data = b""
        if data:
            return None  # the supervisor writes nothing; ignore
        self.reactor.removeReader(self)
        self.stop("supervisor gone")
        return None

    def connectionLost(self, reason: Failure) -> None:
        # The reactor saw the pipe hang up before any read.
        self.stop("supervisor gone")


class _WorkerProtocol(ProcessProtocol):
    def __init__(self, pool: WorkerPool, index: int) -> None:
        self.pool = pool
        self.index = index
        self.ended: defer.Deferred[None] = defer.Deferred()
        self.pid: int | None = None

    def processEnded(self, reason: Failure) -> None:
        self.ended.callback(None)
        self.pool._ended(self, reason)


class WorkerPool(Service):
    """
    Starts and supervises the worker processes (in the supervisor).

    @ivar listening: The supervisor's listening services, in listener order
        (L{twisted.application.internet.StreamServerEndpointService}).
    @ivar count: How many workers to run besides the supervisor.
    @ivar argv: The worker's command line, without the file descriptors
        argument (appended here).
    @ivar env: The workers' environment; C{None}: this process's
        (L{relayd.sdnotify.SystemdReadiness} gives them their own C{NOTIFY_SOCKET}).
    @ivar stop_timeout: Seconds a stopping worker has to drain (finish its
        messages in flight and close its sessions) before it is killed.
    """

    def __init__(
        self,
        reactor: Any,
        listening: list[Any],
        count: int,
        argv: list[str],
        stop_timeout: float = STOP_TIMEOUT,
    ) -> None:
        self.reactor = reactor
        self.listening = listening
        self.count = count
        self.argv = argv
        self.env: dict[str, str] | None = None
        self.stop_timeout = stop_timeout
        self._fds: list[int] = []
        self.workers: dict[int, Any] = {}
        self._protocols: dict[int, _WorkerProtocol] = {}

    def startService(self) -> None:
        super().startService()
        fds: list[int] = []

        def record(port: Any) -> Any:
            fds.append(port.fileno())
            accept_one_at_a_time(port)
            return port

        for service in self.listening:
            service._waitingForPort.addCallback(record)
        if len(fds) != len(self.listening):
            log.error("worker processes not started: a listener is not bound yet")
            return
        self._fds = fds
        for index in range(self.count):
            self._spawn(index)

    def _spawn(self, index: int) -> None:
        if not self.running:
            return
        # Standard input: a pipe the worker watches (SupervisorWatch).
        child_fds: dict[int, Any] = {0: "w", 1: 1, 2: 2}
        inherited = []
        for i, fd in enumerate(self._fds):
            child_fds[3 + i] = fd
            inherited.append(str(3 + i))
        argv = self.argv + ["--inherit-fds", ",".join(inherited)]
        proto = _WorkerProtocol(self, index)
        try:
            # RELAYD_WORKER: the worker's name in its log lines (relayd.events);
            # the AUTH throttle's key: one for every worker (relayd.smtp.guards).
            env = dict(os.environ if self.env is None else self.env, RELAYD_WORKER=str(index))
            # The supervisor's key (relayd.smtp.guards.process_secret draws
            # it the same way, whichever comes first).
            env[AUTH_SECRET_ENV] = os.environ.setdefault(AUTH_SECRET_ENV, os.urandom(32).hex())
            self.workers[index] = self.reactor.spawnProcess(
                proto,
                argv[0],
                argv,
                env=env,
                childFDs=child_fds,
            )
        except OSError:
            log.failure("could not start worker {index}; trying again", index=index)
            self.reactor.callLater(RESTART_DELAY, self._spawn, index)
            return
        self._protocols[index] = proto
        proto.pid = self.workers[index].pid
        log.info("started worker {index} (pid {pid})", index=index, pid=self.workers[index].pid)

    def _ended(self, proto: _WorkerProtocol, reason: Failure) -> None:
        self.workers.pop(proto.index, None)
        self._protocols.pop(proto.index, None)
        if proto.pid is not None:
            from relayd import metrics  # not at import: see relayd.tap

            metrics.process_dead(proto.pid)  # its live gauges end with it
        if self.running:
            log.warn(
                "worker {index} ended ({reason}); restarting",
                index=proto.index,
                reason=reason.getErrorMessage(),
            )
            self.reactor.callLater(RESTART_DELAY, self._spawn, proto.index)

    def signal_all(self, signum: int) -> None:
        """
        Send C{signum} to every worker (C{SIGHUP}: reload the tokens file).
        """
        for process in list(self.workers.values()):
            try:
                process.signalProcess(signum)
            except Exception:
                pass

    def stopService(self) -> Any:
        super().stopService()
        ended = [p.ended for p in self._protocols.values()]
        self.signal_all(signal.SIGTERM)
        if not ended:
            return None

        def kill() -> None:
            self.signal_all(signal.SIGKILL)

        timer = self.reactor.callLater(self.stop_timeout, kill)
        d = defer.DeferredList(ended)
        d.addBoth(lambda _: timer.cancel() if timer.active() else None)
        return d


def worker_argv(config_path: str, log_args: Sequence[str] = ()) -> list[str]:
    """
    The command line that starts one worker of this program.

    @param config_path: The configuration file the supervisor loaded.
    @param log_args: C{twist}'s log options, the supervisor's own
        (C{--log-format=json}, C{--log-level=warn}), so that every process
        logs alike; C{--log-format=text} when empty.
    """
    return [
        sys.executable,
        "-m",
        "twisted",
        *(log_args or ["--log-format=text"]),
        "relayd",
        "--config",
        config_path,
    ]
