# -*- test-case-name: tests.smtp.test_limits,tests.smtp.test_auth,tests.smtp.test_auth_throttle -*-
"""
The guards of the SMTP listeners: connection caps, failed-AUTH throttling,
the memory held by messages, and the count of messages whose reply is
still owed.

One instance of each may be shared by several listeners (the service
builds them); time comes from an injected clock.  L{AuthGuard} keeps its
counts in an L{ICounters}: L{LocalCounters} in this process, or a shared
store (Redis) so that one limit holds across a fleet.
"""

from __future__ import annotations

import bisect
import hashlib
import hmac
import ipaddress
import os
from collections.abc import Callable, Iterable
from typing import Any

import attrs
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from zope.interface import implementer

from relayd import reply as R
from relayd.interfaces import ICounters
from relayd.reply import Reply
from relayd.smtp.syntax import MAIL_ARGS, parse_parameters

__all__ = [
    "AuthGuard",
    "ConnectionLimiter",
    "DeliveryTracker",
    "LocalCounters",
    "MemoryBudget",
    "MessageHold",
    "declared_size",
    "network_key",
]


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


@implementer(ICounters)
class LocalCounters:
    """
    In-process sliding counters (L{ICounters}): the times of recent events
    per key, in memory.

    Memory is bounded: at most C{max_events} times per key (a count stops
    growing there) and C{max_keys} keys; keys are kept in the order of
    their last event and the oldest are forgotten first, expired ones in
    amortized constant time.
    """

    def __init__(self, clock: IReactorTime, max_keys: int = 100000, max_events: int = 1000) -> None:
        """
        @param clock: Time source.
        @param max_keys: Most keys held.
        @param max_events: Most event times held per key.
        """
        self.clock = clock
        self.max_keys = max_keys
        self.max_events = max_events
        self._events: dict[str, list[float]] = {}
        self._longest = 0.0

    def _recent(self, times: list[float], now: float, window: float) -> int:
        """
        @return: The index of the first time in C{times} inside C{window}.
        """
        return bisect.bisect_right(times, now - window)

    def hit(self, key: str, window: float) -> defer.Deferred[int]:
        """
        See L{ICounters.hit}.
        """
        now = self.clock.seconds()
        self._longest = max(self._longest, window)
        times = self._events.pop(key, [])
        del times[: self._recent(times, now, window)]
        times.append(now)
        if len(times) > self.max_events:
            del times[: len(times) - self.max_events]
        self._events[key] = times
        self._forget(now)
        return defer.succeed(len(times))

    def count(self, key: str, window: float) -> defer.Deferred[int]:
        """
        See L{ICounters.count}.
        """
        times = self._events.get(key, [])
        return defer.succeed(len(times) - self._recent(times, self.clock.seconds(), window))

    def _forget(self, now: float) -> None:
        """
        Drop keys from the front (oldest last event): those past the
        longest window, and any over C{max_keys}.
        """
        events = self._events
        while events:
            key, times = next(iter(events.items()))
            if times[-1] > now - self._longest and len(events) <= self.max_keys:
                return
            del events[key]


def network_key(ip: str) -> str:
    """
    The network a client address counts for: the address itself for IPv4,
    its /64 for IPv6 (one subscriber's usual allocation, RFC 6177), the
    IPv4 address for an IPv4-mapped IPv6 one.

    @param ip: The client address as text (anything else is used as is).
    @return: A key such as C{"192.0.2.1"} or C{"2001:db8:1:2::/64"}.
    """
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return ip
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


#: The environment variable that gives a worker its supervisor's HMAC key
#: for credential counters (hex; set by L{relayd.workers}, never logged).
SECRET_ENV = "RELAYD_AUTH_SECRET"


def process_secret() -> bytes:
    """
    The HMAC key of credential counters in this process when
    C{limits.auth_hmac_key_file} gives none: the supervisor's
    (C{RELAYD_AUTH_SECRET}, so that every worker counts one credential
    under one key).  The first process to ask (the supervisor) draws a
    random one and puts it in its environment, which its workers inherit
    (L{relayd.workers}).

    @return: 32 bytes (or what the supervisor gave).
    """
    text = os.environ.setdefault(SECRET_ENV, os.urandom(32).hex())
    try:
        secret = bytes.fromhex(text)
    except ValueError:
        secret = b""
    return secret or os.urandom(32)


def read_secret(path: str) -> bytes:
    """
    The HMAC key of credential counters from C{limits.auth_hmac_key_file}:
    every host that shares one Redis reads the same file, so that one
    credential is counted under one key across the fleet.

    @param path: The file; its content (whitespace stripped) is the secret.
    @return: The SHA-256 of that content (32 bytes).
    @raise OSError: When the file cannot be read.
    @raise ValueError: When it is empty.
    """
    with open(path, "rb") as f:
        content = f.read().strip()
    if not content:
        raise ValueError("the file is empty")
    return hashlib.sha256(b"relayd-auth-hmac-key/1\0" + content).digest()


#: The HMAC key of credential counters in this process.
_SECRET = process_secret()


def _networks(
    networks: Iterable[str | ipaddress.IPv4Network | ipaddress.IPv6Network],
) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    """
    @param networks: CIDR texts (C{"10.0.0.0/8"}) or networks.
    @return: The networks.
    @raise ValueError: One is not a network.
    """
    return tuple(ipaddress.ip_network(n) for n in networks)


@attrs.define
class AuthGuard:
    """
    Failed-AUTH throttling that holds, on an L{ICounters}.

    Failures are counted per client network (L{network_key}) and per
    attempted credential (an HMAC of username and password, never the
    credential itself).  A credential that already failed counts once for
    the network: a client retrying one wrong password does not lock out
    the others behind the same address (NAT), a client guessing does.
    Each failure inside C{window} seconds delays the next C{535} by one
    more second (at most C{max_delay}); at C{limit_per_ip} distinct
    failures the network, and at C{limit_per_credential} failures the
    credential, is refused AUTH for C{lockout} seconds (L{R.auth_throttled},
    other commands still work).  A success clears nothing.  Networks in
    C{exempt} are not counted (the credential still is).

    @ivar secret: The HMAC key for credentials (random per process; give
        the same one to every node sharing the counters).
    """

    counters: ICounters
    limit_per_ip: int = 10
    limit_per_credential: int = 5
    window: float = 600.0
    lockout: float = 900.0
    max_delay: float = 5.0
    exempt: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = attrs.field(
        default=(), converter=_networks
    )
    secret: bytes = attrs.field(factory=lambda: _SECRET)

    def _network(self, ip: str) -> str | None:
        """
        @return: The counter key of C{ip}'s network, C{None} if exempt.
        """
        try:
            address = ipaddress.ip_address(ip)
        except ValueError:
            return "auth-net:" + ip
        if any(address in net for net in self.exempt if net.version == address.version):
            return None
        return "auth-net:" + network_key(ip)

    def _credential(self, username: str, password: bytes) -> str:
        mac = hmac.new(self.secret, username.encode("utf-8") + b"\0" + password, hashlib.sha256)
        return "auth-cred:" + mac.hexdigest()

    def check(self, ip: str) -> defer.Deferred[Reply | None]:
        """
        May C{ip} try AUTH now?

        @return: A Deferred firing with C{None}, or the L{R.auth_throttled}
            reply when its network is locked out.
        """
        return defer.Deferred.fromCoroutine(self._locked(self._network(ip)))

    def check_credential(self, username: str, password: bytes) -> defer.Deferred[Reply | None]:
        """
        May this credential be checked now?

        @return: A Deferred firing with C{None}, or the L{R.auth_throttled}
            reply when it failed too often.
        """
        key = self._credential(username, password)
        return defer.Deferred.fromCoroutine(self._locked(key))

    async def _locked(self, key: str | None) -> Reply | None:
        if key is None:
            return None
        if await self.counters.count("lock:" + key, self.lockout):
            return R.auth_throttled(self.lockout)
        return None

    def failed(
        self, ip: str, username: str | None = None, password: bytes = b""
    ) -> defer.Deferred[float]:
        """
        Count one failed AUTH from C{ip}, with the credential tried (or
        none, for an exchange that gave none).

        @return: A Deferred firing with the seconds to wait before the
            C{535} reply.
        """
        return defer.Deferred.fromCoroutine(self._failed(ip, username, password))

    async def _failed(self, ip: str, username: str | None, password: bytes) -> float:
        network = self._network(ip)
        counts = [1]
        distinct = True
        if username is not None:
            credential = self._credential(username, password)
            n = await self.counters.hit(credential, self.window)
            counts.append(n)
            distinct = n == 1
            if n >= self.limit_per_credential:
                await self.counters.hit("lock:" + credential, self.lockout)
        if network is not None:
            n = await (
                self.counters.hit(network, self.window)
                if distinct
                else self.counters.count(network, self.window)
            )
            counts.append(max(n, 1))
            if distinct and n >= self.limit_per_ip:
                await self.counters.hit("lock:" + network, self.lockout)
        return min(float(max(counts) - 1), self.max_delay)


def declared_size(mail: str) -> int:
    """
    The message size a MAIL command declares (RFC 1870 SIZE parameter).

    @param mail: The MAIL command's argument (C{"FROM:<a@b> SIZE=1000"}).
    @return: The size in bytes, or 0 when none (or no valid one) is given.
    """
    m = MAIL_ARGS.match(mail)
    params = parse_parameters(m.group(2)) if m else None
    value = (params or {}).get("SIZE")
    return int(value) if value is not None and value.isdigit() and len(value) <= 20 else 0


class MessageHold:
    """
    The memory one message takes from a L{MemoryBudget}: its declared size
    from DATA on, or what arrived when more, until L{release}.
    """

    def __init__(self, budget: MemoryBudget, reserved: int) -> None:
        self.budget = budget
        self.reserved = reserved
        self.charged = reserved

    def grow(self, size: int) -> bool:
        """
        The message holds C{size} bytes now.

        @return: C{False} when that would take the budget over its limit
            (nothing more is charged: the message should fail with
            C{452 4.3.1}).
        """
        want = max(self.reserved, size)
        extra = want - self.charged
        if extra <= 0:
            return True
        # One message alone may take more than the limit (when the limit is
        # below max_message_size): at least one is always admitted.
        if self.budget.used + extra > self.budget.limit and self.budget.used > self.charged:
            return False
        self.budget.used += extra
        self.charged = want
        return True

    def release(self) -> None:
        """
        The transaction ended: give the memory back (idempotent).
        """
        self.budget.used -= self.charged
        self.charged = self.reserved = 0


class MemoryBudget:
    """
    A bound on the message bytes held in memory by all sessions of a
    process (C{[limits] max_memory_bytes}).

    A new DATA is admitted only while its declared size (RFC 1870) fits;
    a message that grows past what is left fails at its final dot.  Both
    get C{452 4.3.1} (RFC 3463 X.3.1).  A message alone is always
    admitted, so the bound is the larger of the limit and one message.

    @ivar used: Bytes held now.
    """

    def __init__(self, limit: int) -> None:
        """
        @param limit: Most bytes held, in bytes.
        """
        self.limit = limit
        self.used = 0

    def admit(self, reserve: int) -> MessageHold | None:
        """
        Admit a new message.

        @param reserve: Its declared size in bytes (0 when unknown).
        @return: Its hold, or C{None} when the budget cannot take it.
        """
        if self.used and self.used + max(reserve, 1) > self.limit:
            return None
        self.used += reserve
        return MessageHold(self, reserve)


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
