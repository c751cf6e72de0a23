"""
Tests for the http auth backend's cache shared in Redis
(L{relayd.auth_http.HTTPAuthChecker} with a L{relayd.redisstore.RedisAuthCache}):
two checkers (two processes) over one fake Redis client; the in-process
cache while Redis is down.  C{tests/test_redisstore.py} runs the cache on a
real redis-server.
"""

from __future__ import annotations

import json
from typing import Any

from treq.testing import StubTreq
from twisted.cred.credentials import UsernamePassword
from twisted.internet import defer, task
from twisted.trial.unittest import SynchronousTestCase

from relayd.auth import AuthRefused, CredentialRules, Login
from relayd.auth_http import HTTPAuthChecker
from relayd.config import PolicyConfig, RedisConfig
from relayd.redisstore import RedisAuthCache, RedisConnection
from tests.test_auth_http import TOKEN, AuthEndpoint


class FakeRedis:
    """
    The txredisapi calls the auth cache makes, on a dict; C{down} refuses.
    """

    def __init__(self) -> None:
        self.values: dict[str, tuple[str, int]] = {}
        self.down = False

    def get(self, key: str) -> defer.Deferred[Any]:
        if self.down:
            return defer.fail(ConnectionRefusedError("down"))
        value = self.values.get(key)
        return defer.succeed(value[0] if value else None)

    def set(self, key: str, value: str, pexpire: int) -> defer.Deferred[Any]:
        if self.down:
            return defer.fail(ConnectionRefusedError("down"))
        self.values[key] = (value, pexpire)
        return defer.succeed("OK")


class SharedCacheTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = task.Clock()
        self.redis = FakeRedis()
        self.endpoint = AuthEndpoint()
        self.endpoint.answer = (200, {"name": "acme", "max_recipients": 7})

    def checker(self) -> HTTPAuthChecker:
        connection = RedisConnection(self.redis, RedisConfig(url="redis://x"), self.clock)
        return HTTPAuthChecker(
            StubTreq(self.endpoint),
            "https://auth.example/smtp-auth",
            self.clock,
            rules=CredentialRules(usernames=("apikey",)),
            defaults=PolicyConfig(),
            ttl=60.0,
            negative_ttl=10.0,
            shared=RedisAuthCache(connection),
        )

    def login(self, checker: HTTPAuthChecker, password: str = TOKEN) -> Any:
        return checker.requestAvatarId(UsernamePassword(b"apikey", password.encode()))

    def test_accepted_answer_shared_by_two_processes(self) -> None:
        """
        A's answer is in Redis, keyed by a digest, for C{cache_ttl}: B logs
        in with it and asks the endpoint nothing, with the same policy.
        """
        a, b = self.checker(), self.checker()
        first = self.successResultOf(self.login(a))
        second = self.successResultOf(self.login(b))
        self.assertIsInstance(second, Login)
        self.assertEqual(second.policy, first.policy)
        self.assertEqual(second.policy.max_recipients, 7)
        self.assertEqual((a.requests, b.requests, b.hits), (1, 0, 1))
        ((key, (value, ttl)),) = self.redis.values.items()
        self.assertNotIn(TOKEN, key + value)
        self.assertEqual(ttl, 60000)
        self.assertEqual(json.loads(value), {"accepted": {"name": "acme", "max_recipients": 7}})

    def test_refusal_shared_with_its_own_lifetime(self) -> None:
        self.endpoint.answer = (401, {"error": "revoked key"})
        a, b = self.checker(), self.checker()
        self.failureResultOf(self.login(a), AuthRefused)
        failure = self.failureResultOf(self.login(b), AuthRefused)
        self.assertEqual(failure.value.reply.code, 535)
        self.assertIn("revoked key", failure.value.reply.text)
        self.assertEqual(len(self.endpoint.received), 1)
        ((_, ttl),) = self.redis.values.values()
        self.assertEqual(ttl, 10000)

    def test_redis_down_uses_the_process_cache(self) -> None:
        """
        While Redis refuses, a checker answers from its own cache (no new
        request for a credential it saw), and asks the endpoint otherwise.
        """
        a = self.checker()
        self.successResultOf(self.login(a))
        self.redis.down = True
        self.successResultOf(self.login(a))
        self.assertEqual(a.requests, 1)
        b = self.checker()
        self.successResultOf(self.login(b))
        self.assertEqual(b.requests, 1)

    def test_unreadable_entry_is_a_miss(self) -> None:
        a = self.checker()
        self.successResultOf(self.login(a))
        for key in self.redis.values:
            self.redis.values[key] = ("not json", 1)
        b = self.checker()
        self.successResultOf(self.login(b))
        self.assertEqual(b.requests, 1)
