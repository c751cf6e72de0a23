# -*- test-case-name: tests.test_service,tests.test_drain -*-
"""
The daemon's lifecycle services: start, reload, drain and stop.

L{Daemon} is the top service (a listener that cannot listen ends start-up
with one line); L{TokensReloader} reloads the tokens file on C{SIGHUP};
on stop, L{DrainService} waits for the upstream calls under way,
L{SessionCloser} lets every reply reach its client before closing the
sessions, and the upstream and Redis connections are closed.
L{GracefulTermination} makes C{SIGTERM} end the process with status 0.
L{relayd.service} composes them.
"""

from __future__ import annotations

import signal
import sys
from typing import Any

from twisted.application.service import MultiService, Service
from twisted.internet.error import CannotListenError, ReactorNotRunning
from twisted.logger import Logger

from relayd.config import ConfigError
from relayd.redisstore import RedisConnection
from relayd.smtp.guards import DeliveryTracker
from relayd.tls import ServerTLS
from relayd.tokens import TokenStore
from relayd.workers import WorkerPool

__all__ = [
    "CannotStart",
    "Daemon",
    "DrainService",
    "GracefulTermination",
    "SessionCloser",
    "TokensReloader",
]

log = Logger()


class TokensReloader(Service):
    """
    Re-reads the tokens file, and the TLS certificate and key when C{tls}
    is given, on C{SIGHUP} (C{systemctl reload relayd}).

    The files are read on the reactor thread: they are small, and read only
    when the operator asks.  An invalid file keeps what was already loaded.
    """

    def __init__(
        self,
        store: TokenStore,
        reactor: Any,
        pool: WorkerPool | None = None,
        tls: ServerTLS | None = None,
    ) -> None:
        self.store = store
        self.reactor = reactor
        self.pool = pool
        self.tls = tls
        self._previous: Any = None

    def reload(self) -> None:
        """
        Re-read the tokens file (and the TLS files) now; log the outcome,
        never raise.
        """
        try:
            if self.store.path is not None:
                self.store.reload()
        except ConfigError as e:
            log.error("tokens file not reloaded: {error}", error=str(e))
        else:
            log.info("tokens file reloaded")
        if self.tls is not None:
            self.tls.reload()
        if self.pool is not None:
            self.pool.signal_all(signal.SIGHUP)

    def startService(self) -> None:
        super().startService()
        try:
            self._previous = signal.signal(
                signal.SIGHUP,
                lambda *_: self.reactor.callFromThread(self.reload),
            )
        except ValueError:  # not the main thread (tests)
            self._previous = None

    def stopService(self) -> Any:
        if self._previous is not None:
            signal.signal(signal.SIGHUP, self._previous)
            self._previous = None
        return super().stopService()


class DrainService(Service):
    """
    On stop, waits (at most C{timeout} seconds) for the messages whose
    upstream call is under way, so their clients get the upstream's
    verdict instead of a dropped connection and a retry that could send
    the message twice.  The listeners stop accepting meanwhile.
    """

    def __init__(self, tracker: DeliveryTracker, clock: Any, timeout: float) -> None:
        self.tracker = tracker
        self.clock = clock
        self.timeout = timeout

    def stopService(self) -> Any:
        super().stopService()
        if self.tracker.pending:
            log.info(
                "waiting for {count} message(s) in flight before stopping",
                count=self.tracker.pending,
            )
        return self.tracker.drained(self.clock, self.timeout)


class SessionCloser(Service):
    """
    On stop, closes every SMTP session and waits until its connection is
    closed, so that every reply written reaches the client: through TLS
    (the C{close_notify} after the last reply) and TCP (the write buffer is
    flushed before the socket closes).  Stopping the reactor any earlier
    drops what is still buffered: a client whose message the upstream took
    would get no C{250}, and send it again.

    An idle session gets C{421 4.3.2} at once (RFC 5321 section 3.8); one
    whose message is streaming in or under way gets its reply, then its
    connection is closed.  After C{timeout} seconds the connections still
    open are aborted.
    """

    def __init__(self, tracker: DeliveryTracker, clock: Any, timeout: float) -> None:
        """
        @param tracker: The sessions of every listener.
        @param clock: Time source for the timeout.
        @param timeout: Seconds to wait at most (the upstream timeout and
            some time to write the replies).
        """
        self.tracker = tracker
        self.clock = clock
        self.timeout = timeout

    def stopService(self) -> Any:
        super().stopService()
        self.tracker.stop()
        d = self.tracker.all_closed(self.clock, self.timeout)
        d.addCallback(lambda _: self._abort_the_rest())
        return d

    def _abort_the_rest(self) -> None:
        rest = list(self.tracker.sessions)
        if rest:
            log.warn(
                "{count} session(s) still open after {timeout}s; aborting them",
                count=len(rest),
                timeout=self.timeout,
            )
        for session in rest:
            session.transport.abortConnection()


class GracefulTermination(Service):
    """
    Makes C{SIGTERM} stop the reactor like Twisted's own handler, but end
    the process with exit status 0 once the services stopped: Twisted's
    handler makes the process end by the signal itself, which reads as a
    failure to anything that checks the status.

    The handler is installed once the reactor runs, after Twisted's own.
    """

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor
        self._previous: Any = None
        self._stopping = False

    def startService(self) -> None:
        super().startService()
        self.reactor.callWhenRunning(self._install)

    def _install(self) -> None:
        try:
            self._previous = signal.signal(
                signal.SIGTERM, lambda *_: self.reactor.callFromThread(self.stop, "SIGTERM")
            )
        except ValueError:  # not the main thread (tests)
            self._previous = None

    def stop(self, why: str) -> None:
        """
        Stop the reactor (once), which stops every service first.

        @param why: What asked, for the log: C{"SIGTERM"}, or the worker's
            supervisor being gone.
        """
        if self._stopping:
            return
        self._stopping = True
        log.info("{why}: stopping", why=why)
        try:
            self.reactor.stop()
        except ReactorNotRunning:
            pass

    def stopService(self) -> Any:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None
        return super().stopService()


class CannotStart(Exception):
    """
    A listener could not listen; the message names it, its endpoint and
    the operating system's error.
    """


class Daemon(MultiService):
    """
    The top service.  A listener that cannot listen (port in use, no
    permission) stops start-up with one line on standard error and exit
    status 1, not a traceback: unlike a configuration error (78), it may
    pass, so systemd's C{Restart=on-failure} may try again.

    @ivar endpoints: What each listening service is, by its name, for the
        error message: C{"listeners[0] 'submission' (tcp:587)"}.
    """

    def __init__(self) -> None:
        super().__init__()
        self.endpoints: dict[str, str] = {}

    def privilegedStartService(self) -> None:
        Service.privilegedStartService(self)
        for service in self:
            self._start(service, service.privilegedStartService)

    def startService(self) -> None:
        Service.startService(self)
        for service in self:
            self._start(service, service.startService)

    def _start(self, service: Any, start: Any) -> None:
        try:
            start()
        except CannotListenError as e:
            where = self.endpoints.get(service.name, service.name)
            why = e.socketError.strerror if isinstance(e.socketError, OSError) else e.socketError
            self._exit(f"{where}: cannot listen: {why}")
        except OSError as e:
            where = self.endpoints.get(service.name, service.name)
            self._exit(f"{where}: cannot listen: {e.strerror or e}")

    def _exit(self, message: str) -> None:
        sys.stderr.write(f"relayd: {message}\n")
        sys.stderr.flush()
        raise SystemExit(1)


class _UpstreamCloser(Service):
    """
    Closes the upstream clients' idle persistent connections on stop (a
    L{relayd.routing.Router}: every route's clients and C{[upstream]}'s).
    """

    def __init__(self, client: Any) -> None:
        self.client = client

    def stopService(self) -> Any:
        super().stopService()
        return self.client.close()


class _RedisCloser(Service):
    """
    Closes the Redis connections on stop.
    """

    def __init__(self, redis: RedisConnection) -> None:
        self.redis = redis

    def stopService(self) -> Any:
        super().stopService()
        return self.redis.close()
