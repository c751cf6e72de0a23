# -*- test-case-name: tests.test_readiness -*-
"""
C{/readyz} and the upstream: a failing upstream makes the daemon unready
for a while, never for good (L{relayd.metrics.recent_upstream}).
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from relayd import metrics
from relayd.admin import ReadinessChecks


class _Exchange:
    def __init__(self, status: int | None) -> None:
        self.status = status
        self.timed_out = status is None


class _Tracker:
    stopping = False


class UpstreamReadinessTests(SynchronousTestCase):
    def setUp(self) -> None:
        metrics._upstream_seen.clear()
        self.addCleanup(metrics._upstream_seen.clear)
        self.clock = Clock()
        self.readiness = ReadinessChecks(self.clock, [], _Tracker(), upstream_fresh=60.0)

    def problems(self) -> list[str]:
        d: Deferred[list[str]] = Deferred.fromCoroutine(self.readiness.problems())
        return self.successResultOf(d)

    def request(self, status: int | None) -> None:
        error: Any = TimeoutError() if status is None else None
        metrics.upstream(_Exchange(status), 1.0, error, now=self.clock.seconds())

    def test_idle_is_ready(self) -> None:
        """
        A daemon that never asked the upstream is ready.
        """
        self.assertEqual(self.problems(), [])

    def test_one_failure_keeps_ready(self) -> None:
        """
        Fewer than three failures in a row leave the daemon ready.
        """
        self.clock.advance(100)
        self.request(None)
        self.request(None)
        self.assertEqual(self.problems(), [])

    def test_failing_upstream_then_recovers(self) -> None:
        """
        Three requests in a row without an answer: 503 with why; once
        C{upstream_fresh} seconds passed with no new request the daemon is
        ready again (it gets traffic, which tells whether the upstream is
        back), though nothing was answered meanwhile.
        """
        self.clock.advance(100)
        for _ in range(3):
            self.request(None)
        self.assertEqual(
            self.problems(), ["upstream did not answer the last 3 requests (in the last 60s)"]
        )
        self.clock.advance(59)
        self.assertEqual(len(self.problems()), 1)
        self.clock.advance(1)
        self.assertEqual(self.problems(), [])
        # Another failure after the recovery: unready again.
        self.request(None)
        self.assertEqual(len(self.problems()), 1)

    def test_answer_clears(self) -> None:
        """
        Any HTTP answer (even a 500) ends the failing streak.
        """
        for _ in range(3):
            self.request(None)
        self.request(500)
        self.assertEqual(self.problems(), [])
        self.request(None)
        self.request(None)
        self.assertEqual(self.problems(), [])
