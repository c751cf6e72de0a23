"""
Tests for L{relayd.redisstore} against a real C{redis-server} on a free
127.0.0.1 port: the shared counters and outcome store, the auth cache, and
the fallback to in-process state when Redis goes away.

The guards' AUTH throttle does not read L{ICounters} yet (another branch
rewrites it), so "two relayd processes share one lockout" is tested here at
the store level: two stores, each with its own connection pool, as two
processes would have.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.logger import capturedLogs
from twisted.trial.unittest import TestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from relayd import metrics
from relayd.config import RedisConfig
from relayd.idempotency import OutcomeStore
from relayd.interfaces import ICounters, IOutcomeStore
from relayd.redisstore import (
    RedisAuthCache,
    RedisConnection,
    RedisCounters,
    RedisOutcomeStore,
    connect,
)
from relayd.reply import Reply
from relayd.result import Accepted, InFlight
from relayd.testing import async_test

REDIS_SERVER = shutil.which("redis-server")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """
    A real redis-server on a free port, without persistence.
    """

    def __init__(self) -> None:
        assert REDIS_SERVER is not None
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="relayd-redis-")
        self.process = subprocess.Popen(
            [
                REDIS_SERVER,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                self.dir,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return
            except OSError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise RuntimeError("redis-server did not start") from None
                time.sleep(0.02)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)


@implementer(ICounters)
class LocalCounters:
    """
    A minimal in-process L{ICounters} (on the real clock) for the fallback.
    """

    def __init__(self) -> None:
        self.events: dict[str, list[float]] = {}

    def _live(self, key: str, window: float) -> list[float]:
        now = reactor.seconds()  # type: ignore[attr-defined]
        live = [t for t in self.events.get(key, []) if now - t < window]
        self.events[key] = live
        return live

    def hit(self, key: str, window: float) -> Deferred[int]:
        live = self._live(key, window)
        live.append(reactor.seconds())  # type: ignore[attr-defined]
        return Deferred.fromCoroutine(_value(len(live)))

    def count(self, key: str, window: float) -> Deferred[int]:
        return Deferred.fromCoroutine(_value(len(self._live(key, window))))


async def _value(n: int) -> int:
    return n


class RedisTestCase(TestCase):
    """
    Starts a redis-server per test; makes connections to it.
    """

    def setUp(self) -> None:
        if REDIS_SERVER is None:
            self.skipTest("redis-server is not installed (apt-get install redis-server)")
        self.server = RedisServer()
        self.addCleanup(self.server.stop)

    def connection(self, **config: Any) -> RedisConnection:
        settings = RedisConfig(url=self.server.url, key_prefix="test:", **config)
        client = connect(settings)
        conn = RedisConnection(client, settings, reactor)
        self.addCleanup(conn.close)
        return conn


# -- outcome semantics, the same for the in-memory and the Redis store -------


class OutcomeSemantics:
    """
    The claim semantics of L{IOutcomeStore}, run against each store (the
    cases of C{tests/test_idempotency.py} that do not depend on a fake
    clock or on C{max_entries}).
    """

    def make_store(self, window: float = 100.0, in_flight_window: float = 10.0) -> Any:
        raise NotImplementedError

    def test_provides_the_interface(self: Any) -> None:
        self.assertTrue(verifyObject(IOutcomeStore, self.make_store()))

    @async_test
    async def test_claim_then_accepted(self: Any) -> None:
        """
        The first claim fires with C{None} (send the request) and records it
        in flight; a second claim gets that record; once accepted, claims
        and lookups get the upstream id.
        """
        store = self.make_store()
        self.assertIsNone(await store.claim("k"))
        self.assertIsInstance(await store.claim("k"), InFlight)
        self.assertIsNone(await store.record_accepted("k", "up-1"))
        self.assertEqual(await store.claim("k"), Accepted("up-1"))
        self.assertEqual(await store.lookup("k"), Accepted("up-1"))
        self.assertIsNone(await store.lookup("other"))

    @async_test
    async def test_refused_permanently(self: Any) -> None:
        """
        A refusal is kept with its reply but never overwrites an
        acceptance; an acceptance (a late answer) overwrites a refusal.
        """
        store = self.make_store()
        reply = Reply(550, "5.6.0", "Invalid recipient")
        await store.claim("k")
        await store.record_refused("k", reply)
        self.assertEqual(await store.claim("k"), reply)
        await store.record_accepted("k", "")
        self.assertEqual(await store.lookup("k"), Accepted(""))
        await store.record_refused("k", reply)
        self.assertEqual(await store.lookup("k"), Accepted(""))

    @async_test
    async def test_release_drops_only_a_claim(self: Any) -> None:
        """
        Releasing an open claim lets the next claim send again; releasing a
        finished outcome keeps it; releasing an unknown key is harmless.
        """
        store = self.make_store()
        await store.claim("k")
        self.assertIsNone(await store.release("k"))
        self.assertIsNone(await store.lookup("k"))
        self.assertIsNone(await store.claim("k"))
        await store.record_accepted("k", "up-1")
        await store.release("k")
        self.assertEqual(await store.lookup("k"), Accepted("up-1"))
        await store.release("never-seen")

    @async_test
    async def test_release_drops_only_its_own_claim(self: Any) -> None:
        """
        A release names its claim (its C{since}): a later attempt's claim
        under the same key is kept; a lifetime given to a record is used.
        """
        store = self.make_store()
        await store.claim("k", 100.0)
        await store.release("k", 99.0)
        self.assertEqual(await store.lookup("k"), InFlight(100.0))
        await store.release("k", 100.0)
        self.assertIsNone(await store.lookup("k"))

    @async_test
    async def test_claim_and_outcome_expire(self: Any) -> None:
        """
        An open claim lives C{in_flight_window} seconds, a finished outcome
        C{window} seconds; then the key may be claimed again.
        """
        store = self.make_store(window=0.4, in_flight_window=0.2)
        await store.claim("claimed")
        await store.record_accepted("done", "up-1")
        await deferLater(reactor, 0.25)
        self.assertIsNone(await store.claim("claimed"))
        self.assertEqual(await store.lookup("done"), Accepted("up-1"))
        await deferLater(reactor, 0.25)
        self.assertIsNone(await store.lookup("done"))


class InMemoryOutcomeSemanticsTests(OutcomeSemantics, TestCase):
    def make_store(self, window: float = 100.0, in_flight_window: float = 10.0) -> Any:
        return OutcomeStore(reactor, window=window, in_flight_window=in_flight_window)


class RedisOutcomeSemanticsTests(OutcomeSemantics, RedisTestCase):
    def make_store(self, window: float = 100.0, in_flight_window: float = 10.0) -> Any:
        return RedisOutcomeStore(
            self.connection(),
            OutcomeStore(reactor),
            window=window,
            in_flight_window=in_flight_window,
        )


class RedisOutcomeStoreTests(RedisTestCase):
    @async_test
    async def test_two_processes_share_outcomes(self) -> None:
        """
        A key claimed through one relayd's store is in flight for another's
        (each its own connection pool, as two processes): the retry on the
        second relayd is not sent; the acceptance recorded by the first is
        the second's answer.
        """
        one = RedisOutcomeStore(self.connection(), OutcomeStore(reactor))
        two = RedisOutcomeStore(self.connection(), OutcomeStore(reactor))
        self.assertIsNone(await one.claim("k"))
        self.assertIsInstance(await two.claim("k"), InFlight)
        await one.record_accepted("k", "up-7")
        self.assertEqual(await two.claim("k"), Accepted("up-7"))

    @async_test
    async def test_values_are_json(self) -> None:
        """
        Records are JSON documents under C{<prefix>o:<key>}, with their
        lifetime set.
        """
        conn = self.connection()
        store = RedisOutcomeStore(conn, OutcomeStore(reactor), window=50.0)
        await store.record_refused("k", Reply(550, "5.7.1", "no"))
        self.assertEqual(
            await conn.client.get("test:o:k"),
            '{"state": "refused", "code": 550, "status": "5.7.1", "text": "no"}',
        )
        ttl = int(await conn.client.execute_command("PTTL", "test:o:k"))
        self.assertTrue(0 < ttl <= 50_000, ttl)


class RedisCountersTests(RedisTestCase):
    def test_provides_the_interface(self) -> None:
        self.assertTrue(verifyObject(ICounters, RedisCounters(self.connection(), LocalCounters())))

    @async_test
    async def test_two_processes_count_together(self) -> None:
        """
        Failures counted by two relayd processes (two stores, two pools) add
        up in one counter: a lockout at 5 failures holds across both.
        """
        one = RedisCounters(self.connection(), LocalCounters())
        two = RedisCounters(self.connection(), LocalCounters())
        counts = []
        for store in (one, two, one, two, one):
            counts.append(await store.hit("auth:192.0.2.1", 60.0))
        self.assertEqual(counts, [1, 2, 3, 4, 5])
        self.assertEqual(await two.count("auth:192.0.2.1", 60.0), 5)
        self.assertEqual(await one.count("auth:198.51.100.2", 60.0), 0)

    @async_test
    async def test_count_over_a_shorter_window_keeps_the_events(self) -> None:
        """
        A read over a shorter window (how L{relayd.policy.MessageRates}
        finds the time to wait) counts only the recent events and drops
        none of the older ones.
        """
        counters = RedisCounters(self.connection(), LocalCounters())
        await counters.hit("m", 60.0)
        await deferLater(reactor, 0.3)
        await counters.hit("m", 60.0)
        self.assertEqual(await counters.count("m", 0.2), 1)
        self.assertEqual(await counters.count("m", 60.0), 2)

    @async_test
    async def test_window_slides(self) -> None:
        """
        An event stops counting C{window} seconds after it happened.
        """
        counters = RedisCounters(self.connection(), LocalCounters())
        await counters.hit("k", 0.3)
        await deferLater(reactor, 0.2)
        self.assertEqual(await counters.hit("k", 0.3), 2)
        await deferLater(reactor, 0.15)
        self.assertEqual(await counters.count("k", 0.3), 1)


class AuthCacheTests(RedisTestCase):
    @async_test
    async def test_get_set_with_ttl(self) -> None:
        cache = RedisAuthCache(self.connection())
        self.assertIsNone(await cache.get("h1"))
        await cache.set("h1", '{"policy": "billing"}', 0.2)
        self.assertEqual(await cache.get("h1"), '{"policy": "billing"}')
        await deferLater(reactor, 0.3)
        self.assertIsNone(await cache.get("h1"))


class FallbackTests(RedisTestCase):
    @async_test
    async def test_redis_stopped_mid_test_falls_back(self) -> None:
        """
        Redis stops: counters and outcomes are answered by the in-process
        fallbacks without an exception, within the timeout; the outage is
        logged once (not per call) and counted; the next answer after a
        restart comes from Redis again.
        """
        conn = self.connection(timeout=0.3, retry_interval=0.2)
        local_counters = LocalCounters()
        local_outcomes = OutcomeStore(reactor)
        counters = RedisCounters(conn, local_counters)
        outcomes = RedisOutcomeStore(conn, local_outcomes)
        self.assertEqual(await counters.hit("k", 60.0), 1)
        self.assertIsNone(await outcomes.claim("shared"))
        fallbacks = metrics.REDIS_FALLBACKS._value.get()

        self.server.process.terminate()
        self.server.process.wait(10)
        with capturedLogs() as events:
            started = reactor.seconds()  # type: ignore[attr-defined]
            self.assertEqual(await counters.hit("k", 60.0), 1)  # the local count
            self.assertEqual(await counters.hit("k", 60.0), 2)
            self.assertIsNone(await outcomes.claim("during-outage"))
            self.assertIsInstance(await outcomes.claim("during-outage"), InFlight)
            await outcomes.record_accepted("during-outage", "up-1")
            self.assertEqual(await local_outcomes.lookup("during-outage"), Accepted("up-1"))
            self.assertLess(reactor.seconds() - started, 2.0)  # type: ignore[attr-defined]
        warnings = [e for e in events if "Redis unreachable" in e.get("log_format", "")]
        self.assertEqual(len(warnings), 1)
        self.assertFalse(conn.available)
        self.assertEqual(metrics.REDIS_FALLBACKS._value.get(), fallbacks + 1)
        self.assertFalse(await conn.ping())
