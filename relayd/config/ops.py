# -*- test-case-name: tests.test_config -*-
"""
The operations tables: C{[idempotency]}, C{[dev_upstream]}, C{[redis]}
and C{[admin]}.

This module imports no reactor code.
"""

from __future__ import annotations

from typing import Any

from attrs import field, frozen

from relayd.config.reading import ConfigError

__all__ = ["AdminConfig", "DevUpstreamConfig", "IdempotencyConfig", "RedisConfig"]


@frozen
class IdempotencyConfig:
    """
    The C{[idempotency]} table: how long relayd remembers what became of
    each transaction's upstream request (L{relayd.idempotency}).

    @ivar window: Seconds relayd keeps waiting for the upstream's answer
        after the client was told C{451} at C{upstream.timeout}, and keeps
        a retry of that message from being sent meanwhile; more than
        C{upstream.timeout}.
    @ivar max_records: Most idempotency records kept in memory; the
        oldest written is dropped first.
    """

    window: float = 600.0
    max_records: int = 100_000


@frozen
class DevUpstreamConfig:
    """
    The C{[dev_upstream]} table: the bundled development API
    (L{relayd.devupstream}) run inside the daemon.

    @ivar enabled: Run it.
    @ivar endpoint: Where it listens (bind it to 127.0.0.1 only).
    @ivar outbox: Folder where each received message is stored as JSON.
    """

    enabled: bool = False
    endpoint: str = "tcp:port=8025:interface=127.0.0.1"
    outbox: str = "var/outbox"


def _check_redis_url(instance: Any, attribute: Any, value: str) -> None:
    """
    C{redis.url}: empty (no Redis), or C{redis://[user:password@]host[:port][/db]}.
    """
    if not value:
        return
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(value)
        port = parts.port
        db = parts.path.strip("/")
    except ValueError:
        raise ConfigError("redis.url: expected redis://host:port/db") from None
    if parts.scheme != "redis" or not parts.hostname or (db and not db.isdigit()):
        raise ConfigError("redis.url: expected redis://host:port/db") from None
    del port


@frozen
class RedisConfig:
    """
    The C{[redis]} table: the shared state of a fleet of relayd processes
    (AUTH throttling and rate counters, idempotency outcomes, the auth
    cache), see L{relayd.redisstore} and C{docs/scaling.md}.

    @ivar url: C{redis://[user:password@]host[:port][/db]} (port 6379 and
        database 0 by default); empty: no Redis, every process keeps its
        own state.
    @ivar key_prefix: Put before every key relayd writes, so that several
        deployments can share one Redis.
    @ivar connect_timeout: Seconds to wait for a TCP connection to Redis.
    @ivar timeout: Seconds to wait for one command's answer before the
        in-process fallback answers instead.
    @ivar retry_interval: Seconds between attempts to use Redis again while
        it is unreachable (meanwhile the in-process state answers at once).
    """

    url: str = field(default="", validator=_check_redis_url)
    key_prefix: str = "relayd:"
    connect_timeout: float = 1.0
    timeout: float = 0.5
    retry_interval: float = 5.0


@frozen
class AdminConfig:
    """
    The C{[admin]} table: the HTTP listener with C{/metrics} (Prometheus),
    C{/healthz} and C{/readyz} (L{relayd.admin}).

    @ivar listen: A Twisted server endpoint description, for example
        C{"tcp:9025:interface=127.0.0.1"}; empty (the default): no admin
        listener.  It has no authentication: bind it to a loopback or
        management address only.
    @ivar upstream_fresh: C{/readyz} fails when the upstream has not
        answered (any HTTP status) for this many seconds while it was
        asked; an idle daemon stays ready.
    """

    listen: str = ""
    upstream_fresh: float = 60.0
