# -*- test-case-name: tests.test_smtp -*-
"""
The in-process guards of the SMTP listeners: connection caps, failed-AUTH
throttling, and the count of messages whose reply is still owed.

One instance of each may be shared by several listeners (the service
builds them); time comes from an injected clock.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime

__all__ = ["AuthThrottle", "ConnectionLimiter", "DeliveryTracker"]


@attrs.define
class ConnectionLimiter:
    """
    Counts open connections, in all and per client IP.

    @ivar max_connections: Global cap.
    @ivar max_per_ip: Cap per client IP address.
    """

    max_connections: int
    max_per_ip: int
    total: int = 0
    per_ip: dict[str, int] = attrs.field(factory=dict)

    def acquire(self, ip: str) -> bool:
        """
        Count a new connection from C{ip}.

        @return: C{False} (and count nothing) when a cap is reached.
        """
        if self.total >= self.max_connections:
            return False
        if self.per_ip.get(ip, 0) >= self.max_per_ip:
            return False
        self.total += 1
        self.per_ip[ip] = self.per_ip.get(ip, 0) + 1
        return True

    def release(self, ip: str) -> None:
        """
        Forget one connection from C{ip} (only after a successful
        L{acquire}).
        """
        self.total -= 1
        left = self.per_ip.get(ip, 1) - 1
        if left <= 0:
            self.per_ip.pop(ip, None)
        else:
            self.per_ip[ip] = left


@attrs.define
class AuthThrottle:
    """
    Failed AUTH attempts per client IP, across connections, held in memory
    with expiry.

    Each failure inside C{window} seconds grows the delay before the next
    C{535} reply (one second per earlier failure, at most C{max_delay});
    at C{limit} failures the IP is refused for C{lockout} seconds.  A
    success from one IP resets nothing for another.
    """

    clock: IReactorTime
    limit: int = 10
    window: float = 600.0
    lockout: float = 900.0
    max_delay: float = 5.0
    _failures: dict[str, list[float]] = attrs.field(factory=dict)
    _locked: dict[str, float] = attrs.field(factory=dict)

    def _expire(self, ip: str) -> list[float]:
        now = self.clock.seconds()
        if len(self._failures) > 100000:
            # Bound memory under a distributed attack: forget the oldest.
            for old in list(self._failures)[:50000]:
                del self._failures[old]
        times = [t for t in self._failures.get(ip, []) if now - t < self.window]
        if times:
            self._failures[ip] = times
        else:
            self._failures.pop(ip, None)
        return times

    def _prune_locked(self) -> None:
        """
        Forget lockouts that have expired, oldest first: every lockout lasts
        as long, so the table is in expiry order.  Amortized constant time.
        """
        now = self.clock.seconds()
        while self._locked:
            ip, until = next(iter(self._locked.items()))
            if until > now and len(self._locked) <= 100000:
                break
            del self._locked[ip]

    def locked(self, ip: str) -> bool:
        """
        @return: Whether C{ip} is refused AUTH right now.
        """
        until = self._locked.get(ip)
        if until is None:
            return False
        if self.clock.seconds() >= until:
            del self._locked[ip]
            return False
        return True

    def failed(self, ip: str) -> float:
        """
        Record one failed AUTH from C{ip}.

        @return: Seconds to wait before answering C{535}.
        """
        times = self._expire(ip)
        times.append(self.clock.seconds())
        self._failures[ip] = times
        if len(times) >= self.limit:
            self._prune_locked()
            self._locked.pop(ip, None)
            self._locked[ip] = self.clock.seconds() + self.lockout
            self._failures.pop(ip, None)
        return min(float(len(times) - 1), self.max_delay)

    def succeeded(self, ip: str) -> None:
        """
        Forget the failures of C{ip} after a successful AUTH from it.
        """
        self._failures.pop(ip, None)


class DeliveryTracker:
    """
    Knows the open sessions and the messages whose final reply is still
    owed, so that stopping the daemon can wait for them: a client cut off
    while the upstream takes its message would send it again.

    Stopping (L{relayd.service.SessionCloser}) calls L{stop}: idle sessions
    are told to close at once, the others right after their reply.

    @ivar sessions: The open sessions (L{relayd.smtp.session.RelaySMTP}).
    @ivar delivering: The sessions whose message's reply is still owed.
    @ivar stopping: The daemon is stopping: a session that opens or whose
        reply has been written is told to close.
    """

    def __init__(self) -> None:
        self.sessions: set[Any] = set()
        self.delivering: set[Any] = set()
        self.stopping = False
        self._waiters: list[tuple[Callable[[], bool], defer.Deferred[None]]] = []

    @property
    def pending(self) -> int:
        """
        How many messages are owed a reply.
        """
        return len(self.delivering)

    def opened(self, session: Any) -> None:
        """
        A session started (after its greeting).
        """
        self.sessions.add(session)
        if self.stopping:
            session.shut_down()

    def closed(self, session: Any) -> None:
        """
        A session's connection is closed: every reply written to it was
        flushed, or the client is gone.
        """
        self.sessions.discard(session)
        self._check()

    def begin(self, session: Any) -> None:
        """
        C{session}'s message is being relayed.
        """
        self.delivering.add(session)

    def end(self, session: Any) -> None:
        """
        Its reply has been written (or the client is gone).
        """
        self.delivering.discard(session)
        if self.stopping:
            session.shut_down(after_reply=True)
        self._check()

    def stop(self) -> None:
        """
        The daemon is stopping: tell every session without a message under
        way to close now; the others close after their reply (L{end}).
        """
        self.stopping = True
        for session in list(self.sessions - self.delivering):
            session.shut_down()

    def drained(self, clock: IReactorTime, timeout: float) -> defer.Deferred[None]:
        """
        @param clock: Time source for the timeout.
        @param timeout: Seconds to wait at most.
        @return: A Deferred that fires when no message is pending, or after
            C{timeout} seconds, whichever comes first.
        """
        return self._until(lambda: not self.delivering, clock, timeout)

    def all_closed(self, clock: IReactorTime, timeout: float) -> defer.Deferred[None]:
        """
        @param clock: Time source for the timeout.
        @param timeout: Seconds to wait at most.
        @return: A Deferred that fires when no session is open and no
            message pending, or after C{timeout} seconds.
        """
        return self._until(lambda: not self.sessions and not self.delivering, clock, timeout)

    def _until(
        self, done: Callable[[], bool], clock: IReactorTime, timeout: float
    ) -> defer.Deferred[None]:
        if done():
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred()
        self._waiters.append((done, d))

        def expire() -> None:
            if not d.called:
                d.callback(None)

        timer = clock.callLater(timeout, expire)

        def stop_timer(result: None) -> None:
            if timer.active():
                timer.cancel()

        d.addCallback(stop_timer)
        return d

    def _check(self) -> None:
        waiters, self._waiters = self._waiters, []
        for done, d in waiters:
            if d.called:  # a timed-out wait has fired already
                continue
            if done():
                d.callback(None)
            else:
                self._waiters.append((done, d))
