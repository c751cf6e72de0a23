# -*- test-case-name: tests.test_metrics -*-
"""
The admin listener: C{/metrics} (Prometheus text format), C{/healthz}
(the process is alive) and C{/readyz} (it should be sent connections), as a
L{twisted.web} resource tree.

C{/readyz} answers C{200 ready} when every SMTP listener is bound, the
daemon is not draining (stopping), the upstream is not failing (see
L{metrics.recent_upstream}: it recovers by itself), and Redis answers when C{[redis] url} is set; otherwise C{503}
with one line per problem.  Load balancers (HAProxy's C{option httpchk},
Kubernetes readiness probes) take a server out of rotation on a non-2xx.

The listener has no authentication: bind it to a loopback or management
address (C{[admin] listen}).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from relayd import metrics

__all__ = ["ReadinessChecks", "make_site"]


class ReadinessChecks:
    """
    The checks behind C{/readyz}: whether this daemon should get traffic
    (not the systemd notification, L{relayd.sdnotify.SystemdReadiness}).

    @ivar listening: The SMTP listening services (strports services).
    @ivar tracker: The L{relayd.smtp.DeliveryTracker}: C{stopping} means
        draining.
    @ivar redis: The L{relayd.redisstore.RedisConnection}, or C{None}.
    @ivar upstream_fresh: Seconds a failing upstream keeps the daemon
        unready (L{metrics.recent_upstream}).
    """

    def __init__(
        self,
        clock: Any,
        listening: Sequence[Any],
        tracker: Any,
        redis: Any = None,
        upstream_fresh: float = 60.0,
    ) -> None:
        self.clock = clock
        self.listening = listening
        self.tracker = tracker
        self.redis = redis
        self.upstream_fresh = upstream_fresh

    def _unbound(self) -> list[str]:
        out = []
        for service in self.listening:
            waiting = getattr(service, "_waitingForPort", None)
            bound = (
                service.running
                and waiting is not None
                and waiting.called
                and not isinstance(getattr(waiting, "result", None), Failure)
            )
            if not bound:
                out.append(f"listener {service.name} not bound")
        return out

    async def problems(self) -> list[str]:
        """
        @return: What keeps the daemon from being ready; empty when ready.
        """
        found = self._unbound()
        if getattr(self.tracker, "stopping", False):
            found.append("draining")
        if not metrics.recent_upstream(self.clock.seconds(), self.upstream_fresh):
            found.append(
                f"upstream did not answer the last {metrics.UPSTREAM_FAILURES} requests"
                f" (in the last {self.upstream_fresh:g}s)"
            )
        if self.redis is not None and not await self.redis.ping():
            found.append("redis unreachable")
        return found


class _Metrics(Resource):
    isLeaf = True

    def __init__(self, reactor: Any) -> None:
        super().__init__()
        self.reactor = reactor

    def render_GET(self, request: Request) -> Any:
        if not os.environ.get(metrics.MULTIPROC_ENV):
            kind, body = metrics.render()
            request.setHeader(b"Content-Type", kind.encode())
            return body
        # Multiprocess mode reads every process's files: not on the reactor.
        d = deferToThreadPool(self.reactor, self.reactor.getThreadPool(), metrics.render)

        def write(result: tuple[str, bytes]) -> None:
            request.setHeader(b"Content-Type", result[0].encode())
            request.write(result[1])
            request.finish()

        def failed(f: Failure) -> None:
            request.setResponseCode(500)
            request.write(b"metrics unavailable\n")
            request.finish()

        d.addCallbacks(write, failed)
        return NOT_DONE_YET


class _Healthz(Resource):
    isLeaf = True

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
        return b"ok\n"


class _Readyz(Resource):
    isLeaf = True

    def __init__(self, readiness: ReadinessChecks) -> None:
        super().__init__()
        self.readiness = readiness

    def render_GET(self, request: Request) -> Any:
        request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
        d = Deferred.fromCoroutine(self.readiness.problems())

        def write(problems: list[str]) -> None:
            if problems:
                request.setResponseCode(503)
                request.write("".join(p + "\n" for p in problems).encode())
            else:
                request.write(b"ready\n")
            request.finish()

        def failed(f: Failure) -> None:
            request.setResponseCode(503)
            request.write(b"readiness check failed\n")
            request.finish()

        d.addCallbacks(write, failed)
        return NOT_DONE_YET


def make_site(readiness: ReadinessChecks, reactor: Any) -> Site:
    """
    The admin listener's site.

    @param readiness: What C{/readyz} asks.
    @param reactor: For the thread pool of a multiprocess scrape.
    @return: A L{Site} serving C{/metrics}, C{/healthz} and C{/readyz}.
    """
    root = Resource()
    root.putChild(b"metrics", _Metrics(reactor))
    root.putChild(b"healthz", _Healthz())
    root.putChild(b"readyz", _Readyz(readiness))
    site = Site(root)
    site.noisy = False
    site.displayTracebacks = False
    return site
