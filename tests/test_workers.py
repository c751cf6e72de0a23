"""
Tests for L{relayd.workers}: how many processes run, the worker's command
line, the supervisor's L{WorkerPool} (start, restart of a dead worker,
stop), and L{AdoptedPortService}; units on a fake reactor, then the real
thing across sockets and processes on 127.0.0.1.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import time
import unittest
from typing import Any

import attrs
from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.error import ProcessExitedAlready, ProcessTerminated
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import LogLevel, capturedLogs
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from relayd.testing import async_test
from relayd.workers import (
    RESTART_DELAY,
    STOP_TIMEOUT,
    AdoptedPortService,
    WorkerPool,
    worker_argv,
    worker_count,
)
from tests.test_e2e import TOKEN, Daemon, Upstream, children, distinct

ARGV = ["/usr/bin/python3", "-m", "twisted", "relayd", "--config", "/etc/relayd/relayd.toml"]


class FakeProcess:
    """
    A spawned process, as L{ProcessReactor} hands it out: records signals.
    """

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.signals: list[int] = []
        self.exited = False

    def signalProcess(self, signum: int) -> None:
        if self.exited:
            raise ProcessExitedAlready()
        self.signals.append(signum)


@attrs.define
class Spawned:
    protocol: Any
    executable: str
    args: list[str]
    env: dict[str, str]
    child_fds: dict[int, Any]
    process: FakeProcess


class ProcessReactor(MemoryReactorClock):
    """
    A memory reactor that also records C{spawnProcess} calls; the next
    C{failures} calls raise L{OSError} (as a fork may).
    """

    def __init__(self) -> None:
        super().__init__()
        self.spawned: list[Spawned] = []
        self.failures = 0

    def spawnProcess(
        self,
        processProtocol: Any,
        executable: str,
        args: list[str],
        env: dict[str, str] | None = None,
        path: str | None = None,
        uid: int | None = None,
        gid: int | None = None,
        usePTY: bool = False,
        childFDs: dict[int, Any] | None = None,
    ) -> FakeProcess:
        if self.failures:
            self.failures -= 1
            raise OSError(11, "Resource temporarily unavailable")
        process = FakeProcess(4000 + len(self.spawned))
        self.spawned.append(
            Spawned(
                processProtocol, executable, args, dict(env or {}), dict(childFDs or {}), process
            )
        )
        processProtocol.makeConnection(process)
        return process


class FakePort:
    """
    A bound TCP port: its descriptor, and Twisted's adaptive accept count.
    """

    numberAccepts = 100

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.accepts: list[int] = []

    def fileno(self) -> int:
        return self.fd

    def doRead(self) -> None:
        self.accepts.append(self.numberAccepts)
        self.numberAccepts += 20


class Listening:
    """
    A supervisor's listening service (as C{strports.service} makes), bound.
    """

    def __init__(self, fd: int, bound: bool = True) -> None:
        self.port = FakePort(fd)
        self._waitingForPort: defer.Deferred[Any] = (
            defer.succeed(self.port) if bound else defer.Deferred()
        )


def ended(spawned: Spawned, signum: int | None = signal.SIGKILL) -> None:
    """
    Tell the pool that C{spawned}'s process ended (killed by C{signum}).
    """
    spawned.process.exited = True
    spawned.protocol.processEnded(Failure(ProcessTerminated(signal=signum)))


class WorkerCountTests(SynchronousTestCase):
    def test_configured_count(self) -> None:
        self.assertEqual(worker_count(1), 1)
        self.assertEqual(worker_count(3), 3)

    def test_zero_is_one_per_usable_core(self) -> None:
        """
        C{workers = 0} runs one process per CPU core this process may run
        on (its affinity), not per core of the machine.
        """
        self.patch(os, "sched_getaffinity", lambda pid: {0, 2, 5})
        self.patch(os, "cpu_count", lambda: 64)
        self.assertEqual(worker_count(0), 3)

    def test_zero_without_affinity(self) -> None:
        """
        Where the affinity is unknown, the machine's cores count; where
        even that is unknown, one process runs.
        """
        affinity = os.sched_getaffinity
        del os.sched_getaffinity
        self.addCleanup(setattr, os, "sched_getaffinity", affinity)
        self.patch(os, "cpu_count", lambda: 4)
        self.assertEqual(worker_count(0), 4)
        self.patch(os, "cpu_count", lambda: None)
        self.assertEqual(worker_count(0), 1)


class WorkerArgvTests(SynchronousTestCase):
    def test_same_program_same_config(self) -> None:
        """
        A worker is this Python running C{twist relayd} on the file the
        supervisor loaded.
        """
        self.assertEqual(
            worker_argv("/etc/relayd/relayd.toml"),
            [
                sys.executable,
                "-m",
                "twisted",
                "--log-format=text",
                "relayd",
                "--config",
                "/etc/relayd/relayd.toml",
            ],
        )


class WorkerPoolTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = ProcessReactor()
        self.listening = [Listening(7), Listening(9)]
        self.pool = WorkerPool(self.reactor, self.listening, 2, list(ARGV))

    def test_workers_inherit_the_listening_sockets(self) -> None:
        """
        Each worker gets the supervisor's listening sockets as descriptors
        3, 4, ... in listener order, and is told so on its command line.
        """
        self.pool.startService()
        self.assertEqual(len(self.reactor.spawned), 2)
        for number, spawned in enumerate(self.reactor.spawned):
            self.assertEqual(spawned.executable, ARGV[0])
            self.assertEqual(spawned.args, ARGV + ["--inherit-fds", "3,4"])
            # Standard input is a pipe from the supervisor: its EOF stops the worker.
            self.assertEqual(spawned.child_fds, {0: "w", 1: 1, 2: 2, 3: 7, 4: 9})
            self.assertEqual(
                spawned.env,
                dict(
                    os.environ,
                    RELAYD_WORKER=str(number),
                    RELAYD_AUTH_SECRET=os.environ["RELAYD_AUTH_SECRET"],
                ),
            )
        self.assertEqual(sorted(self.pool.workers), [0, 1])

    def test_shared_ports_accept_one_at_a_time(self) -> None:
        """
        The supervisor's own ports take one connection per wake-up, so the
        workers get their share of a burst.
        """
        self.pool.startService()
        for listening in self.listening:
            listening.port.doRead()
            listening.port.doRead()
            self.assertEqual(listening.port.accepts, [1, 1])

    def test_dead_worker_is_restarted(self) -> None:
        """
        A worker that dies is started again, with the same sockets, after
        L{RESTART_DELAY} seconds; the others are left alone.
        """
        self.pool.startService()
        first, second = self.reactor.spawned
        with capturedLogs() as events:
            ended(first)
        (warning,) = [e for e in events if e["log_level"] == LogLevel.warn]
        self.assertEqual(warning["log_format"], "worker {index} ended ({reason}); restarting")
        self.assertEqual(warning["index"], 0)
        self.assertNotIn(0, self.pool.workers)
        self.reactor.advance(RESTART_DELAY - 0.01)
        self.assertEqual(len(self.reactor.spawned), 2)
        self.reactor.advance(0.01)
        self.assertEqual(len(self.reactor.spawned), 3)
        again = self.reactor.spawned[2]
        self.assertEqual(again.args, first.args)
        self.assertEqual(again.child_fds, first.child_fds)
        self.assertIs(self.pool.workers[0], again.process)
        self.assertIs(self.pool.workers[1], second.process)

    def test_worker_that_cannot_start_is_retried(self) -> None:
        self.reactor.failures = 1
        pool = WorkerPool(self.reactor, self.listening, 1, list(ARGV))
        pool.startService()
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)
        self.assertEqual(self.reactor.spawned, [])
        self.reactor.advance(RESTART_DELAY)
        self.assertEqual(len(self.reactor.spawned), 1)
        self.assertEqual(sorted(pool.workers), [0])

    def test_no_workers_when_a_listener_is_not_bound(self) -> None:
        pool = WorkerPool(self.reactor, [Listening(7), Listening(9, bound=False)], 2, list(ARGV))
        with capturedLogs() as events:
            pool.startService()
        self.assertEqual(self.reactor.spawned, [])
        self.assertIn(
            "worker processes not started: a listener is not bound yet",
            [e["log_format"] for e in events if e["log_level"] == LogLevel.error],
        )

    def test_sighup_is_forwarded(self) -> None:
        """
        L{WorkerPool.signal_all} reaches every live worker (the tokens file
        reload); one that already exited is skipped.
        """
        self.pool.startService()
        first, second = self.reactor.spawned
        first.process.exited = True
        self.pool.signal_all(signal.SIGHUP)
        self.assertEqual(first.process.signals, [])
        self.assertEqual(second.process.signals, [signal.SIGHUP])

    def test_stop_waits_for_the_workers(self) -> None:
        """
        Stopping sends C{SIGTERM} to every worker and finishes when they
        have all ended; none is restarted.
        """
        self.pool.startService()
        d = self.pool.stopService()
        for spawned in self.reactor.spawned:
            self.assertEqual(spawned.process.signals, [signal.SIGTERM])
        self.assertNoResult(d)
        ended(self.reactor.spawned[0], signal.SIGTERM)
        self.assertNoResult(d)
        ended(self.reactor.spawned[1], signal.SIGTERM)
        self.successResultOf(d)
        self.assertEqual(self.reactor.getDelayedCalls(), [])
        self.reactor.advance(RESTART_DELAY)
        self.assertEqual(len(self.reactor.spawned), 2)

    def test_stop_kills_a_worker_that_does_not_end(self) -> None:
        self.pool.startService()
        d = self.pool.stopService()
        ended(self.reactor.spawned[0], signal.SIGTERM)
        self.reactor.advance(STOP_TIMEOUT)
        stuck = self.reactor.spawned[1].process
        self.assertEqual(stuck.signals, [signal.SIGTERM, signal.SIGKILL])
        self.assertNoResult(d)
        ended(self.reactor.spawned[1])
        self.successResultOf(d)

    def test_stop_without_workers(self) -> None:
        pool = WorkerPool(self.reactor, self.listening, 0, list(ARGV))
        pool.startService()
        self.assertIsNone(pool.stopService())
        self.assertEqual(self.reactor.spawned, [])


class AdoptedPortUnitTests(SynchronousTestCase):
    def adopt(self, family: socket.AddressFamily, host: str) -> None:
        with socket.socket(family, socket.SOCK_STREAM) as listener:
            listener.bind((host, 0))
            listener.listen()
            fd = os.dup(listener.fileno())
        reactor = MemoryReactorClock()
        factory = Factory.forProtocol(Protocol)
        service = AdoptedPortService(reactor, fd, factory)
        service.startService()
        self.assertEqual(reactor.adoptedPorts, [(fd, family, factory)])
        # The inherited descriptor is closed once adopted (the reactor
        # holds its own copy).
        self.assertRaises(OSError, os.fstat, fd)
        self.assertTrue(service.running)
        service.stopService()
        self.assertFalse(service.running)

    def test_ipv4(self) -> None:
        self.adopt(socket.AF_INET, "127.0.0.1")

    def test_ipv6(self) -> None:
        if not socket.has_ipv6:
            raise unittest.SkipTest("no IPv6")
        try:
            self.adopt(socket.AF_INET6, "::1")
        except OSError as e:
            raise unittest.SkipTest(f"no IPv6 loopback: {e}") from None


class Greeter(Protocol):
    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(b"220 adopted\r\n")
        self.transport.loseConnection()


class Reader(Protocol):
    def __init__(self) -> None:
        self.data = b""
        self.done: defer.Deferred[bytes] = defer.Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.done.callback(self.data)


class AdoptedPortEndToEndTests(TestCase):
    @async_test
    async def test_adopted_socket_serves_connections(self) -> None:
        """
        A socket bound elsewhere and handed over as a descriptor serves
        connections with the service's factory on the real reactor.
        """
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        fd = os.dup(listener.fileno())
        listener.close()
        service = AdoptedPortService(reactor, fd, Factory.forProtocol(Greeter))
        service.startService()
        self.addCleanup(lambda: service.stopService() if service.running else None)
        reader = Reader()
        await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), reader)
        self.assertEqual(await reader.done, b"220 adopted\r\n")
        await service.stopService()
        with self.assertRaises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), 2).close()


def wait_for(condition: Any, timeout: float = 20) -> Any:
    """
    Poll C{condition()} until it returns something true.

    @return: What it returned.
    @raise AssertionError: It did not within C{timeout} seconds.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"not after {timeout} s")


class RestartEndToEndTests(unittest.TestCase):
    def test_killed_worker_is_replaced_and_mail_flows(self) -> None:
        """
        With C{workers = 2}, a worker killed with C{SIGKILL} is replaced by
        a new process, and every message sent afterwards is relayed.
        """
        upstream = Upstream()
        daemon = Daemon(f"http://127.0.0.1:{upstream.port}/send", workers=2)
        try:
            (worker,) = wait_for(lambda: children(daemon.process.pid))
            os.kill(worker, signal.SIGKILL)
            (replacement,) = wait_for(
                lambda: [p for p in children(daemon.process.pid) if p != worker]
            )
            wait_for(lambda: daemon.logtext().count("started worker 0") == 2)
            time.sleep(1)  # let the new worker adopt the sockets
            for _ in range(6):
                with daemon.implicit() as client:
                    client.login("apikey", TOKEN)
                    self.assertEqual(
                        client.sendmail("a@example.com", ["b@example.net"], distinct()), {}
                    )
            self.assertEqual(len(upstream.requests), 6)
            self.assertIn("worker 0 ended", daemon.logtext())
            self.assertEqual(children(daemon.process.pid), [replacement])
        finally:
            log = daemon.logtext()
            daemon.stop()
            upstream.stop()
        self.assertNotIn("Traceback", log)
