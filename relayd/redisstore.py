# -*- test-case-name: tests.test_redisstore -*-
"""
Shared state in Redis: the guards' counters (L{ICounters}), the
idempotency outcomes (L{IOutcomeStore}) and an auth cache, so that one
limit and one record hold across every relayd process of a fleet.

The client is txredisapi (U{https://github.com/IlyaSkriblovsky/txredisapi}):
Twisted-native, it returns Deferreds on any reactor, so relayd keeps its
default reactor in the supervisor and in every worker (see
C{docs/scaling.md}, "Shared state").

Each read-modify-write is one Lua script (C{EVAL}), atomic in Redis
(U{https://redis.io/docs/latest/develop/interact/programmability/eval-intro/}).
Values are JSON.  Keys are C{<key_prefix>c:<name>} (counters, a sorted
set of event times), C{<key_prefix>o:<key>} (outcomes) and
C{<key_prefix>a:<key>} (auth cache).

When Redis does not answer within C{[redis] timeout} seconds, or refuses,
the in-process implementation given as C{fallback} answers instead: relayd
keeps relaying, with per-process limits and records for the outage.  The
outage is logged once (and once more when Redis is back) and counted in
C{relayd_redis_fallbacks_total}; each failed command in
C{relayd_redis_errors_total}.  While Redis is down it is tried again every
C{[redis] retry_interval} seconds, the fallback answering at once meanwhile.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from relayd import metrics
from relayd.config import RedisConfig
from relayd.interfaces import ICounters, IOutcomeStore
from relayd.reply import Reply
from relayd.result import Accepted, InFlight, Outcome

__all__ = [
    "RedisAuthCache",
    "RedisConnection",
    "RedisCounters",
    "RedisOutcomeStore",
    "connect",
]

log = Logger()

T = TypeVar("T")

# KEYS[1]: the counter; ARGV: window (ms), a unique member, 1 to count.
# Time is the Redis server's, the same for every relayd process.  A read
# (ARGV[3] '0') trims nothing: it may look at a shorter window than the
# counter's (relayd.policy.MessageRates, the time to wait).
_HIT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = tonumber(ARGV[1])
if ARGV[3] ~= '1' then
  return redis.call('ZCOUNT', KEYS[1], '(' .. (now - window), '+inf')
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
redis.call('ZADD', KEYS[1], now, ARGV[2])
redis.call('PEXPIRE', KEYS[1], window)
return redis.call('ZCARD', KEYS[1])
"""

# KEYS[1]: the outcome; ARGV: the in-flight record, its lifetime (ms).
_CLAIM = """
local current = redis.call('GET', KEYS[1])
if current then return current end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return false
"""

# KEYS[1]: the outcome; ARGV: the refusal record, its lifetime (ms).
_REFUSE = """
local current = redis.call('GET', KEYS[1])
if current and cjson.decode(current)['state'] == 'accepted' then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""

# KEYS[1]: the outcome; ARGV[1]: the caller's own claim record, or "" for
# any claim.  Compare, then delete: a later attempt's claim is kept.
_RELEASE = """
local current = redis.call('GET', KEYS[1])
if current and ((ARGV[1] ~= '' and current == ARGV[1])
    or (ARGV[1] == '' and cjson.decode(current)['state'] == 'in_flight')) then
  redis.call('DEL', KEYS[1])
end
return 0
"""


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


class RedisConnection:
    """
    One pool of connections to Redis and the fallback policy its users
    share: L{run} sends a command with a timeout, and answers with the
    fallback while Redis is unreachable.

    @ivar prefix: The C{key_prefix}.
    @ivar available: Redis answered the last command (or none was sent).
    """

    def __init__(self, client: Any, config: RedisConfig, clock: IReactorTime) -> None:
        """
        @param client: A txredisapi connection handler (L{connect}), or a
            fake with the same methods.
        @param config: The C{[redis]} table.
        @param clock: For timeouts and retries.
        """
        self.client = client
        self.prefix = config.key_prefix
        self.timeout = config.timeout
        self.retry_interval = config.retry_interval
        self.clock = clock
        self.available = True
        self._retry_at = 0.0

    async def run(
        self, command: Callable[[Any], Deferred[T]], fallback: Callable[[], Awaitable[T]]
    ) -> T:
        """
        Run C{command} on Redis, or C{fallback} when Redis fails or is down.

        @param command: Sends one command to the client given; returns its
            Deferred.
        @param fallback: The in-process answer.
        @return: Redis's answer, or the fallback's; never raises for a Redis
            problem.
        """
        if not self.available and self.clock.seconds() < self._retry_at:
            return await fallback()
        try:
            d = command(self.client)
            d.addTimeout(self.timeout, self.clock)
            result = await d
        except Exception as e:
            self._failed(e)
            return await fallback()
        if not self.available:
            self.available = True
            log.info("Redis answers again: shared state is back")
        return result

    def _failed(self, error: Exception) -> None:
        kind = _kind(error)
        metrics.redis_error(kind)
        self._retry_at = self.clock.seconds() + self.retry_interval
        if self.available:
            self.available = False
            metrics.redis_fallback()
            log.warn(
                "Redis unreachable ({kind}: {error}): using in-process state until it answers",
                kind=kind,
                error=str(error)[:200] or type(error).__name__,
            )

    def ping(self) -> Deferred[bool]:
        """
        @return: A Deferred firing with whether Redis answered C{PING}
            within the timeout (for C{/readyz}); it updates L{available}.
        """

        async def go() -> bool:
            async def down() -> bool:
                return False

            return await self.run(lambda c: c.ping().addCallback(lambda _: True), down)

        return Deferred.fromCoroutine(go())

    def close(self) -> Deferred[None]:
        """
        Close the connections (on service stop).
        """
        d: Deferred[None] = defer.maybeDeferred(self.client.disconnect)
        d.addErrback(lambda _: None)
        return d


def _kind(error: Exception) -> str:
    if isinstance(error, defer.TimeoutError | defer.CancelledError):
        return "timeout"
    name = type(error).__name__
    if "Connection" in name:
        return "connection"
    return "error"


def connect(config: RedisConfig) -> Any:
    """
    Make the txredisapi connection pool for C{config.url} (lazy: it connects
    in the background and again after a loss; commands wait for it within
    their timeout).

    @param config: The C{[redis]} table, its C{url} set.
    @return: The txredisapi connection handler.
    """
    import txredisapi  # type: ignore[import-untyped]

    url = urlsplit(config.url)
    db = url.path.strip("/")
    return txredisapi.lazyConnectionPool(
        host=url.hostname or "127.0.0.1",
        port=url.port or 6379,
        dbid=int(db) if db else None,
        poolsize=4,
        password=unquote(url.password) if url.password else None,
        username=unquote(url.username) if url.username else None,
        connectTimeout=config.connect_timeout,
        replyTimeout=config.timeout,
        convertNumbers=False,
    )


@implementer(ICounters)
class RedisCounters:
    """
    Sliding counters in Redis: one sorted set per counter, one member per
    event, scored with the Redis server's time in milliseconds (so every
    process counts on one clock).  Exact over the window; a counter's key
    expires one window after its last event.
    """

    def __init__(self, redis: RedisConnection, fallback: ICounters) -> None:
        """
        @param redis: The shared connection.
        @param fallback: The in-process counters used while Redis is down.
        """
        self.redis = redis
        self.fallback = fallback

    def _key(self, key: str) -> str:
        return f"{self.redis.prefix}c:{key}"

    def _call(self, key: str, window: float, hit: bool) -> Deferred[int]:
        args = [str(_ms(window)), uuid.uuid4().hex, "1" if hit else "0"]

        async def fallback() -> int:
            d = self.fallback.hit(key, window) if hit else self.fallback.count(key, window)
            return int(await d)

        async def go() -> int:
            return int(
                await self.redis.run(lambda c: c.eval(_HIT, [self._key(key)], args), fallback)
            )

        return Deferred.fromCoroutine(go())

    def hit(self, key: str, window: float) -> Deferred[int]:
        """
        See L{ICounters.hit}.
        """
        return self._call(key, window, True)

    def count(self, key: str, window: float) -> Deferred[int]:
        """
        See L{ICounters.count}.
        """
        return self._call(key, window, False)


def _encode(outcome: Outcome) -> str:
    if isinstance(outcome, InFlight):
        return json.dumps({"state": "in_flight", "since": outcome.since})
    if isinstance(outcome, Accepted):
        return json.dumps({"state": "accepted", "id": outcome.message_id})
    return json.dumps(
        {"state": "refused", "code": outcome.code, "status": outcome.status, "text": outcome.text}
    )


def _decode(value: Any) -> Outcome | None:
    """
    A stored record, or C{None} for none (or one this version cannot read).
    """
    if value is None:
        return None
    try:
        record = json.loads(value)
        state = record["state"]
        if state == "in_flight":
            return InFlight(float(record["since"]))
        if state == "accepted":
            return Accepted(str(record["id"]))
        if state == "refused":
            return Reply(int(record["code"]), str(record["status"]), str(record["text"]))
    except (ValueError, KeyError, TypeError):
        pass
    log.warn("unreadable idempotency record in Redis; taken as none")
    return None


@implementer(IOutcomeStore)
class RedisOutcomeStore:
    """
    Idempotency outcomes in Redis, with the semantics of the in-memory
    L{relayd.idempotency.OutcomeStore}: a claim lives C{in_flight_window}
    seconds, a finished outcome C{window} seconds (Redis expires them,
    C{PX}); an acceptance overwrites anything, a refusal anything but an
    acceptance; a release drops only a claim.  There is no C{max_entries}:
    Redis's C{maxmemory} policy bounds it.
    """

    def __init__(
        self,
        redis: RedisConnection,
        fallback: IOutcomeStore,
        window: float = 24 * 3600.0,
        in_flight_window: float = 600.0,
    ) -> None:
        """
        @param redis: The shared connection.
        @param fallback: The in-process store used while Redis is down.
        @param window: Seconds a finished outcome is kept.
        @param in_flight_window: Seconds an open claim is kept.
        """
        self.redis = redis
        self.fallback = fallback
        self.window = window
        self.in_flight_window = in_flight_window

    def _key(self, key: str) -> str:
        return f"{self.redis.prefix}o:{key}"

    def _run(
        self, command: Callable[[Any], Deferred[Any]], fallback: Callable[[], Deferred[T]]
    ) -> Deferred[Any]:
        async def local() -> Any:
            return await fallback()

        return Deferred.fromCoroutine(self.redis.run(command, local))

    def lookup(self, key: str) -> Deferred[Outcome | None]:
        """
        See L{IOutcomeStore.lookup}.
        """

        async def go() -> Outcome | None:
            async def local() -> Outcome | None:
                return await self.fallback.lookup(key)

            value = await self.redis.run(lambda c: c.get(self._key(key)), _Raw.wrap(local))
            return _Raw.unwrap(value)

        return Deferred.fromCoroutine(go())

    def claim(self, key: str, since: float | None = None) -> Deferred[Outcome | None]:
        """
        See L{IOutcomeStore.claim}.

        @param since: The claim's own time (the caller's token for
            L{release}); C{None}: now.
        """
        record = _encode(InFlight(self.redis.clock.seconds() if since is None else since))
        args = [record, str(_ms(self.in_flight_window))]

        async def go() -> Outcome | None:
            async def local() -> Outcome | None:
                return await self.fallback.claim(key, since)

            value = await self.redis.run(
                lambda c: c.eval(_CLAIM, [self._key(key)], args), _Raw.wrap(local)
            )
            return _Raw.unwrap(value)

        return Deferred.fromCoroutine(go())

    def record_accepted(
        self, key: str, upstream_id: str, lifetime: float | None = None
    ) -> Deferred[None]:
        """
        See L{IOutcomeStore.record_accepted}.

        @param lifetime: Seconds it is kept; C{None}: C{window}.
        """
        record = _encode(Accepted(upstream_id or ""))
        ms = _ms(lifetime or self.window)
        return self._run(
            lambda c: c.set(self._key(key), record, pexpire=ms),
            lambda: self.fallback.record_accepted(key, upstream_id, lifetime),
        ).addCallback(lambda _: None)

    def record_refused(
        self, key: str, reply: Reply, lifetime: float | None = None
    ) -> Deferred[None]:
        """
        See L{IOutcomeStore.record_refused}.

        @param lifetime: Seconds it is kept; C{None}: C{window}.
        """
        args = [_encode(reply), str(_ms(lifetime or self.window))]
        return self._run(
            lambda c: c.eval(_REFUSE, [self._key(key)], args),
            lambda: self.fallback.record_refused(key, reply, lifetime),
        ).addCallback(lambda _: None)

    def release(self, key: str, since: float | None = None) -> Deferred[None]:
        """
        See L{IOutcomeStore.release}.

        @param since: The C{since} of the caller's own claim: only that
            claim is dropped (compare, then delete); C{None}: any claim.
        """
        mine = "" if since is None else _encode(InFlight(since))
        return self._run(
            lambda c: c.eval(_RELEASE, [self._key(key)], [mine]),
            lambda: self.fallback.release(key, since),
        ).addCallback(lambda _: None)


class _Raw:
    """
    Tells a fallback's decoded outcome from Redis's raw record.
    """

    def __init__(self, outcome: Outcome | None) -> None:
        self.outcome = outcome

    @staticmethod
    def wrap(local: Callable[[], Awaitable[Outcome | None]]) -> Callable[[], Awaitable[Any]]:
        async def go() -> _Raw:
            return _Raw(await local())

        return go

    @staticmethod
    def unwrap(value: Any) -> Outcome | None:
        if isinstance(value, _Raw):
            return value.outcome
        return _decode(value)


class _Down:
    """
    Tells a fallback's answer from Redis's value.
    """

    def __init__(self, value: Any) -> None:
        self.value = value


class RedisAuthCache:
    """
    A cache of recent authentication answers for the http auth backend
    (L{relayd.auth_http.HTTPAuthChecker}): opaque string values under
    opaque keys (hash a credential before it becomes a key), each with its
    own lifetime.  While Redis is down L{get} answers with its fallback
    (the checker's in-process cache), or misses, and L{set} does nothing.
    """

    def __init__(self, redis: RedisConnection) -> None:
        """
        @param redis: The shared connection.
        """
        self.redis = redis

    def _key(self, key: str) -> str:
        return f"{self.redis.prefix}a:{key}"

    def get(self, key: str, fallback: Callable[[], Awaitable[Any]] | None = None) -> Deferred[Any]:
        """
        @param key: The cache key.
        @param fallback: What answers while Redis is down (not on a miss);
            by default a miss.
        @return: A Deferred firing with the cached value (a C{str}), C{None}
            for none, or the fallback's answer.
        """

        async def down() -> Any:
            return _Down(await fallback() if fallback is not None else None)

        async def go() -> Any:
            value = await self.redis.run(lambda c: c.get(self._key(key)), down)
            if isinstance(value, _Down):
                return value.value
            return None if value is None else str(value)

        return Deferred.fromCoroutine(go())

    def set(self, key: str, value: str, ttl: float) -> Deferred[None]:
        """
        @param key: The cache key.
        @param value: What to cache.
        @param ttl: Seconds it is kept.
        @return: A Deferred firing with C{None} once stored (or skipped).
        """

        async def skip() -> None:
            return None

        async def go() -> None:
            await self.redis.run(lambda c: c.set(self._key(key), value, pexpire=_ms(ttl)), skip)

        return Deferred.fromCoroutine(go())
