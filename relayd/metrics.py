# -*- test-case-name: tests.test_metrics -*-
"""
Prometheus metrics: the counters, gauges and histograms relayd keeps, and
the one-line calls the session, the delivery path and the upstream client
make to update them.

The metric objects are L{prometheus_client} ones
(U{https://prometheus.github.io/client_python/}).  With several worker
processes (L{relayd.workers}) every process writes its figures to files in
the folder named by C{PROMETHEUS_MULTIPROC_DIR}, which the supervisor
creates before any of them imports this module (L{relayd.tap}) and removes
when it stops; the admin listener of the supervisor adds them all up in one
scrape (L{render}).  Without that variable the figures are this process's.

The calls never raise into their caller: a metric must not cost a message.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

__all__ = [
    "MULTIPROC_ENV",
    "auth",
    "flight_begin",
    "flight_end",
    "in_flight",
    "limit_refused",
    "recent_upstream",
    "redis_error",
    "redis_fallback",
    "render",
    "session_closed",
    "session_opened",
    "tls_version",
    "transaction",
    "upstream",
]

#: The environment variable prometheus_client's multiprocess mode reads.
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

_CLASSES = {n: f"{n}xx" for n in range(1, 10)}
_SIZE_BUCKETS = tuple(float(2**n) for n in range(10, 26, 2))  # 1 KiB .. 32 MiB
_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

CONNECTIONS = Counter(
    "relayd_connections", "TCP connections accepted, by listener and TLS mode.", ["listener", "tls"]
)
SESSIONS = Gauge(
    "relayd_sessions_open",
    "SMTP sessions open now, by listener and TLS mode.",
    ["listener", "tls"],
    multiprocess_mode="livesum",
)
TLS_FAILURES = Counter(
    "relayd_tls_handshake_failures",
    "Connections that ended in a failed TLS handshake (STARTTLS or implicit TLS).",
    ["listener"],
)
AUTH = Counter("relayd_auth", "AUTH outcomes: success, failure, locked_out.", ["outcome"])
TRANSACTIONS = Counter(
    "relayd_transactions",
    "Replies to the final dot of DATA, by reply class, reply code and enhanced status code.",
    ["reply_class", "code", "enhanced"],
)
MESSAGE_SIZE = Histogram(
    "relayd_message_size_bytes", "Size of each relayed message (bytes).", buckets=_SIZE_BUCKETS
)
UPSTREAM_LATENCY = Histogram(
    "relayd_upstream_request_seconds",
    "Duration of each upstream request (seconds), by HTTP status class (none: no answer).",
    ["status_class"],
    buckets=_LATENCY_BUCKETS,
)
UPSTREAM_ERRORS = Counter(
    "relayd_upstream_errors",
    "Upstream requests without a complete answer, by kind.",
    ["kind"],
)
IN_FLIGHT = Gauge(
    "relayd_messages_in_flight",
    "Messages whose reply is owed (being relayed).",
    multiprocess_mode="livesum",
)
IN_FLIGHT_BYTES = Gauge(
    "relayd_bytes_in_flight",
    "Bytes of the messages being relayed.",
    multiprocess_mode="livesum",
)
LIMIT_REFUSALS = Counter(
    "relayd_limit_refusals", "Sessions, commands or messages refused by a limit.", ["reason"]
)
REDIS_ERRORS = Counter("relayd_redis_errors", "Redis commands that failed, by kind.", ["kind"])
REDIS_FALLBACKS = Counter(
    "relayd_redis_fallbacks",
    "Outages of Redis: times relayd fell back to its in-process state.",
)

#: Children of labelled metrics already looked up, by metric and label
#: values: C{.labels(...)} checks and joins its values on every call.
_children: dict[tuple[Any, ...], Any] = {}


def _child(metric: Any, *values: str) -> Any:
    """
    C{metric.labels(*values)}, looked up once per label set.
    """
    key = (metric, *values)
    child = _children.get(key)
    if child is None:
        child = metric.labels(*values)
        if len(_children) < 4096:
            _children[key] = child
    return child


# When the upstream last failed (no answer), in the caller's clock seconds,
# and how many requests in a row got no answer: for /readyz (this process
# only).
_upstream_seen: dict[str, float] = {}

#: How many upstream requests in a row must get no answer before C{/readyz}
#: says the upstream is gone.
UPSTREAM_FAILURES = 3


def _listener(session: Any) -> str:
    return str(getattr(getattr(session, "factory", None), "listener", "") or "-")


def session_opened(session: Any) -> None:
    """
    A connection was accepted and its session greeted.

    @param session: The L{relayd.smtp.session.RelaySMTP}; its factory's
        C{listener} attribute names the listener.
    """
    listener = _listener(session)
    mode = "implicit" if getattr(session.factory, "implicit_tls", False) else "starttls"
    session._metrics_labels = (listener, mode)
    _child(CONNECTIONS, listener, mode).inc()
    _child(SESSIONS, listener, mode).inc()


def session_closed(session: Any, reason: Any = None) -> None:
    """
    A session's connection is closed.

    @param session: The session given to L{session_opened} (a session
        refused before it, by a connection cap, is not counted).
    @param reason: The L{twisted.python.failure.Failure} of
        C{connectionLost}: an OpenSSL error there is a failed handshake.
    """
    labels = getattr(session, "_metrics_labels", None)
    if labels is None:
        return
    session._metrics_labels = None
    _child(SESSIONS, *labels).dec()
    if reason is not None and _is_tls_error(reason) and not _handshake_done(session):
        TLS_FAILURES.labels(labels[0]).inc()


def _is_tls_error(reason: Any) -> bool:
    from OpenSSL.SSL import Error

    check = getattr(reason, "check", None)
    return bool(check is not None and check(Error))


def _handshake_done(session: Any) -> bool:
    return tls_version(session.transport) != ""


def tls_version(transport: Any) -> str:
    """
    @param transport: A session's transport (after STARTTLS, or a TLS
        wrapper's).
    @return: The negotiated TLS version (C{"TLSv1.3"}), or C{""} without
        TLS or before the handshake is done.
    """
    try:
        handle = transport.getHandle()
        name = getattr(handle, "get_protocol_version_name", None)
        version = str(name()) if name is not None else ""
    except Exception:
        return ""
    return "" if version in ("", "Unknown") else version


def auth(outcome: str) -> None:
    """
    @param outcome: C{"success"}, C{"failure"} or C{"locked_out"}.
    """
    _child(AUTH, outcome).inc()
    if outcome == "locked_out":
        LIMIT_REFUSALS.labels("auth_lockout").inc()


def limit_refused(reason: str) -> None:
    """
    A limit refused something.

    @param reason: A short fixed name: C{"connections"}, C{"auth_lockout"},
        C{"message_size"}, C{"recipients"}, C{"errors"} ...
    """
    LIMIT_REFUSALS.labels(reason).inc()


def transaction(reply: Any, size: int | None = None) -> None:
    """
    The final dot of a transaction got its reply.

    @param reply: The L{relayd.reply.Reply}.
    @param size: The message's size in bytes, when it was read whole.
    """
    code = reply.code
    _child(
        TRANSACTIONS,
        _CLASSES.get(code // 100) or f"{code // 100}xx",
        str(code),
        reply.status or "-",
    ).inc()
    if size is not None:
        MESSAGE_SIZE.observe(size)


@contextmanager
def in_flight(size: int) -> Iterator[None]:
    """
    Count one message of C{size} bytes in flight while the block runs.
    """
    flight_begin(size)
    try:
        yield
    finally:
        flight_end(size)


def flight_begin(size: int) -> None:
    """
    One message of C{size} bytes is in flight (L{in_flight} without a
    context manager: pair it with L{flight_end}).
    """
    IN_FLIGHT.inc()
    IN_FLIGHT_BYTES.inc(size)


def flight_end(size: int) -> None:
    """
    The message of L{flight_begin} got its reply.
    """
    IN_FLIGHT.dec()
    IN_FLIGHT_BYTES.dec(size)


def _error_kind(error: BaseException | None, timed_out: bool) -> str:
    if timed_out:
        return "timeout"
    text = repr(error) + " ".join(
        repr(getattr(r, "value", r)) for r in getattr(error, "reasons", None) or ()
    )
    for needle, kind in (
        ("ConnectionRefused", "refused"),
        ("DNSLookup", "dns"),
        ("SSL", "tls"),
        ("TimeoutError", "timeout"),
        ("ConnectionLost", "reset"),
        ("ConnectionDone", "reset"),
        ("ConnectionReset", "reset"),
    ):
        if needle in text:
            return kind
    return "other"


def upstream(
    exchange: Any, seconds: float, error: BaseException | None = None, now: float = 0.0
) -> None:
    """
    One upstream request ended.

    @param exchange: What it got: C{status} (the HTTP status, or C{None}
        without an answer) and C{timed_out}.
    @param seconds: How long it took.
    @param error: What it raised, if anything (after the status: an answer
        cut short).
    @param now: The clock's time, for L{recent_upstream}.
    """
    status = getattr(exchange, "status", None)
    timed_out = bool(getattr(exchange, "timed_out", False))
    label = _CLASSES.get(status // 100) or f"{status // 100}xx" if status else "none"
    _child(UPSTREAM_LATENCY, label).observe(seconds)
    if error is not None:
        kind = _error_kind(error, timed_out)
        _child(UPSTREAM_ERRORS, kind if status is None else "cut_short").inc()
    if status is not None:
        _upstream_seen["failures"] = 0
    else:
        _upstream_seen["failures"] = _upstream_seen.get("failures", 0) + 1
        _upstream_seen["failed"] = now


def recent_upstream(now: float, fresh: float) -> bool:
    """
    Whether this process's upstream counts as reachable, for C{/readyz}.

    It does not only while the last L{UPSTREAM_FAILURES} requests all got no
    answer (any HTTP status is an answer) and the last of them ended less
    than C{fresh} seconds ago.  Readiness recovers by itself: once C{fresh}
    seconds passed the daemon is ready again, so the balancer sends the
    traffic that shows whether the upstream is back (a daemon kept out of
    the pool would never learn it).  An idle daemon is ready.

    @param now: The clock's time (seconds).
    @param fresh: Seconds a failure counts as recent.
    @return: C{False} while the upstream is failing, else C{True}.
    """
    if _upstream_seen.get("failures", 0) < UPSTREAM_FAILURES:
        return True
    return now - _upstream_seen.get("failed", now) >= fresh


def redis_error(kind: str) -> None:
    """
    @param kind: C{"timeout"}, C{"connection"}, C{"error"}.
    """
    REDIS_ERRORS.labels(kind).inc()


def redis_fallback() -> None:
    """
    Redis became unreachable: relayd falls back to in-process state.
    """
    REDIS_FALLBACKS.inc()


def render() -> tuple[str, bytes]:
    """
    The scrape: every process's figures when C{PROMETHEUS_MULTIPROC_DIR} is
    set, else this process's.  Reads files in multiprocess mode: call it
    off the reactor thread.

    @return: The content type and the body, in Prometheus's text format.
    """
    if os.environ.get(MULTIPROC_ENV):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return CONTENT_TYPE_LATEST, generate_latest(registry)
    return CONTENT_TYPE_LATEST, generate_latest(REGISTRY)


def process_dead(pid: int) -> None:
    """
    Forget a dead worker's live gauges (multiprocess mode only).
    """
    if os.environ.get(MULTIPROC_ENV):
        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]
