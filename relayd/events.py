# -*- test-case-name: tests.test_events -*-
"""
One structured log event per SMTP transaction, and the log observers that
print relayd's events as text or as JSON lines.

The event is one L{twisted.logger} event (namespace C{relayd.transaction})
whose named fields are listed in L{FIELDS}.  Its parts come from three
places, gathered in one L{TransactionRecord} that travels with the
transaction in a L{contextvars.ContextVar} (Twisted runs every coroutine
given to C{Deferred.fromCoroutine} in a copy of the caller's context):

  - the session (L{begin}): session id, client address, listener, TLS
    version, authenticated identity;
  - the upstream client (L{upstream}): HTTP status and latency; the delivery path (L{note}): the upstream's id, the
    idempotency outcome, mapped and stripped headers;
  - the delivery's Deferred (L{observe}): reverse-path, recipient count,
    size, reply code and enhanced status code, total latency.

A credential or a message body is never a field: the identity is the
token's policy name.

This module imports no reactor code.
"""

from __future__ import annotations

import json
import os
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import IO, Any

import attrs
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import (
    FileLogObserver,
    ILogObserver,
    Logger,
    LogLevel,
    formatEvent,
)

from relayd import metrics
from relayd.metrics import tls_version

__all__ = [
    "FIELDS",
    "TransactionRecord",
    "begin",
    "left_before_reply",
    "log_observer_factory",
    "note",
    "observe",
    "observed",
    "tls_version",
    "upstream",
    "worker_name",
]

log = Logger(namespace="relayd.transaction")

#: Whether debug events are written at all (C{twist --log-level=debug}):
#: code on the per-message path skips a debug event nobody would see (a
#: filtered event still costs about 6 us to build and drop).  Set by
#: L{relayd.tap} from the log level it passes on; C{True} elsewhere, so
#: that embedders and tests see every event.
debug_enabled = True

#: The named fields of the transaction event, in order (stable names: the
#: JSON lines carry them as they are).
FIELDS = (
    "session_id",
    "client",
    "listener",
    "tls_version",
    "identity",
    "reverse_path",
    "recipients",
    "size",
    "reply_code",
    "enhanced_code",
    "reply_text",
    "upstream_status",
    "upstream_id",
    "upstream_seconds",
    "latency",
    "idempotency",
    "mapped",
    "stripped",
)

_TEXT = (
    "transaction {session_id} from {client} on {listener} ({tls_version}) as {identity}:"
    " {reply_code} {enhanced_code} {reply_text}; <{reverse_path}> to {recipients} recipient(s),"
    " {size} bytes, {latency:.3f}s; upstream {upstream_status} {upstream_id}"
    " ({upstream_seconds}s); idempotency {idempotency}; mapped {mapped}; stripped {stripped}"
)


@attrs.define
class TransactionRecord:
    """
    What is known of one transaction so far (mutable: filled in as the
    transaction goes).  Unknown values are C{"-"}.
    """

    session_id: str = "-"
    client: str = "-"
    listener: str = "-"
    tls_version: str = "-"
    identity: str = "-"
    upstream_status: int | str = "-"
    upstream_id: str = "-"
    upstream_seconds: float | str = "-"
    idempotency: str = "-"
    mapped: str = "-"
    stripped: str = "-"


#: L{TransactionRecord}'s fields (C{attrs.asdict} is several times slower
#: than reading them by name).
_RECORD_FIELDS = tuple(f.name for f in attrs.fields(TransactionRecord))

_current: ContextVar[TransactionRecord | None] = ContextVar("relayd_transaction", default=None)


#: The session's own log lines (L{left_before_reply}) keep its namespace.
_session_log = Logger(namespace="relayd.smtp.session")


def left_before_reply(session: Any, reply: Any) -> None:
    """
    Warn that the client of C{session} left before the reply to a message
    that was relayed (or refused): it did not see C{reply}, so it may send
    the message again (the idempotency key answers such a retry).

    @param session: The L{relayd.smtp.session.RelaySMTP}.
    @param reply: The L{relayd.reply.Reply} it would have got.
    """
    _session_log.warn(
        "client {peer} left before the reply to a relayed message"
        " (session {session_id}: {code} {status} {reply}); it may send"
        " the message again",
        peer=session.peer_ip,
        session_id=session.session_id,
        code=reply.code,
        status=reply.status,
        reply=reply.text,
    )


def begin(session: Any) -> TransactionRecord:
    """
    Start the record of a transaction whose final dot just arrived, in the
    current context (call it at the top of the coroutine that delivers it).

    @param session: The L{relayd.smtp.session.RelaySMTP}.
    @return: The record.
    """
    avatar = getattr(session, "avatar", None)
    session_id = getattr(session, "session_id", None) or f"{id(session):x}"
    # A connection's TLS version, once negotiated, stays: it is read from
    # the TLS connection once per session (C{negotiated_tls}).
    version = getattr(session, "negotiated_tls", "")
    if not version:
        version = tls_version(getattr(session, "transport", None))
        if version and hasattr(session, "negotiated_tls"):
            session.negotiated_tls = version
    record = TransactionRecord(
        session_id=str(session_id),
        client=str(getattr(session, "peer_ip", "") or "-"),
        listener=str(getattr(getattr(session, "factory", None), "listener", "") or "-"),
        tls_version=version or "none",
        identity=str(getattr(avatar, "name", "") or "-"),
    )
    _current.set(record)
    return record


def note(**fields: Any) -> None:
    """
    Add fields to the current transaction's record (nothing happens outside
    a transaction).

    @param fields: Fields of L{TransactionRecord}: C{upstream_status},
        C{upstream_id}, C{upstream_seconds}, C{idempotency} (C{"new"},
        C{"replayed"}, C{"in_flight"} ...), C{mapped}, C{stripped}.
    """
    record = _current.get()
    if record is None:
        return
    for name, value in fields.items():
        if value is None:
            continue
        if isinstance(value, (list, tuple)):
            value = ",".join(value) or "-"
        setattr(record, name, value)


def upstream(
    exchange: Any, started: float, error: BaseException | None, clock: IReactorTime
) -> None:
    """
    One upstream request ended: count it (L{relayd.metrics.upstream}) and
    note its HTTP status and duration in the current transaction's record.

    @param exchange: What it got: C{status} (the HTTP status, or C{None}
        without an answer) and C{timed_out}.
    @param started: When it was sent, in C{clock}'s seconds.
    @param error: What it raised, if anything.
    @param clock: The upstream client's clock.
    """
    now = clock.seconds()
    metrics.upstream(exchange, now - started, error, now)
    note(
        upstream_status=getattr(exchange, "status", None), upstream_seconds=round(now - started, 3)
    )


def observe(
    start: Callable[[], defer.Deferred[Any]],
    envelope: Any,
    size: int,
    clock: IReactorTime,
    identity: str = "",
) -> defer.Deferred[Any]:
    """
    Run one transaction's delivery and emit its event once it has its
    reply; count it in the metrics meanwhile.

    @param start: Starts the delivery: returns a Deferred of its
        L{relayd.reply.Reply} that never fails.  It runs with the record in
        its context, so that the delivery and the upstream client can
        L{note} fields.
    @param envelope: The transaction's L{relayd.message.Envelope}.
    @param size: The message's size in bytes.
    @param clock: For the latency (seconds from now to the reply).
    @param identity: The authenticated identity's name (the token's policy
        name, never the token).
    @return: The Deferred of the reply.
    """
    record = _record(identity)
    token = _current.set(record)
    started = clock.seconds()
    metrics.flight_begin(size)
    try:
        d = start()
    finally:
        _current.reset(token)

    def done(reply: Any) -> Any:
        metrics.flight_end(size)
        _emit(record, envelope, size, reply, clock.seconds() - started)
        return reply

    return d.addCallback(done)


async def observed(
    delivery: Awaitable[Any],
    envelope: Any,
    size: int,
    clock: IReactorTime,
    identity: str = "",
) -> Any:
    """
    L{observe} for a delivery that is awaited in the caller's coroutine
    (no Deferred of its own): await C{delivery} and emit the transaction's
    event once it has its reply; count it in the metrics meanwhile.

    Call it from a coroutine run by C{Deferred.fromCoroutine} (so that the
    record is set in that coroutine's own copy of the context).

    @param delivery: The delivery's coroutine, not started: it runs with
        the record in its context (L{note}).
    @param envelope: The transaction's L{relayd.message.Envelope}.
    @param size: The message's size in bytes.
    @param clock: For the latency (seconds from now to the reply).
    @param identity: The authenticated identity's name.
    @return: The reply (L{relayd.reply.Reply}) C{delivery} returned.
    """
    record = _record(identity)
    _current.set(record)
    started = clock.seconds()
    metrics.flight_begin(size)
    reply = await delivery
    metrics.flight_end(size)
    _emit(record, envelope, size, reply, clock.seconds() - started)
    return reply


def _record(identity: str) -> TransactionRecord:
    """
    The current transaction's record (a new one outside L{begin}), with
    C{identity} when given.
    """
    record = _current.get() or TransactionRecord()
    if identity:
        record.identity = identity
    return record


def _emit(record: TransactionRecord, envelope: Any, size: int, reply: Any, latency: float) -> None:
    try:
        metrics.transaction(reply, size)
        fields = {name: getattr(record, name) for name in _RECORD_FIELDS}
        fields.update(
            reverse_path=envelope.mail_from,
            recipients=len(envelope.rcpt_to),
            size=size,
            reply_code=reply.code,
            enhanced_code=reply.status or "-",
            reply_text=reply.text,
            latency=round(latency, 3),
        )
        log.info(_TEXT, log_event="transaction", **fields)
    except Exception:
        log.failure("the transaction event failed")


# -- log output ----------------------------------------------------------------

# syslog(3) priorities, as journald's PRIORITY field.
_PRIORITY = {
    LogLevel.debug: 7,
    LogLevel.info: 6,
    LogLevel.warn: 4,
    LogLevel.error: 3,
    LogLevel.critical: 2,
}


def _message(event: dict[str, Any]) -> str:
    """
    An event's text.  The transaction event is formatted with C{str.format}
    (in C), several times cheaper than L{formatEvent}'s pure-Python
    formatter for its 18 fields; the others by L{formatEvent}.
    """
    if event.get("log_event") == "transaction":
        try:
            return _TEXT.format_map(event)
        except (KeyError, ValueError, TypeError):
            pass
    return formatEvent(event)


def worker_name() -> str:
    """
    @return: Which process this is: C{"main"} for the supervisor (or the
        only process), C{"0"}, C{"1"} ... for the workers, as the
        supervisor's log numbers them (L{relayd.workers} sets
        C{RELAYD_WORKER}).
    """
    return os.environ.get("RELAYD_WORKER", "main")


_PLAIN = frozenset({type(None), bool, int, float, str})

#: C{json.dumps(..., ensure_ascii=False)} builds an encoder per call.
_ENCODER = json.JSONEncoder(ensure_ascii=False)

# The time stamp of the last second logged: (whole second, its text).
_second: list[Any] = [None, ""]


def _json_value(value: Any) -> Any:
    if type(value) in _PLAIN or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def _iso_time(when: float) -> str:
    """
    C{when} in ISO 8601, UTC, to the millisecond (as
    C{datetime.isoformat(timespec="milliseconds")}); the text of the
    whole second is made once per second.
    """
    whole = int(when // 1)
    # As datetime.fromtimestamp: rounded to the microsecond, then cut.
    micros = round((when - whole) * 1e6)
    if micros >= 1_000_000 or whole < 0:
        return datetime.fromtimestamp(when, UTC).isoformat(timespec="milliseconds")
    if _second[0] != whole:
        stamp = datetime.fromtimestamp(whole, UTC).isoformat(timespec="seconds")
        _second[0], _second[1] = whole, stamp.removesuffix("+00:00")
    return f"{_second[1]}.{micros // 1000:03d}+00:00"


def format_json(event: dict[str, Any], worker: str) -> str:
    """
    One event as one JSON line (with its line end).

    Stable fields: C{time} (ISO 8601, UTC), C{level}, C{priority} (syslog
    number, as journald's C{PRIORITY}), C{namespace}, C{worker}, C{pid},
    C{message} (the text rendering); then the event's own named fields
    (those of L{FIELDS} for a transaction), and C{failure} with the
    traceback for a logged failure.
    """
    if event.get("log_event") == "transaction":
        line = _transaction_json(event, worker)
        if line is not None:
            return line
    level = event.get("log_level", LogLevel.info)
    out: dict[str, Any] = {
        "time": _iso_time(event.get("log_time", 0.0)),
        "level": level.name,
        "priority": _PRIORITY.get(level, 6),
        "namespace": event.get("log_namespace", "-"),
        "worker": worker,
        "pid": os.getpid(),
        "message": _message(event),
    }
    if event.get("log_event") == "transaction":
        out["event"] = "transaction"
        get = event.get
        for name in FIELDS:
            value = get(name)
            out[name] = value if type(value) in _PLAIN else _json_value(value)
    else:
        fmt = event.get("log_format") or ""
        for name, value in event.items():
            if not name.startswith("log_") and "{" + name in fmt and name not in out:
                out[name] = _json_value(value)
    failure = event.get("log_failure")
    if failure is not None:
        out["failure"] = failure.getTraceback()
    return _ENCODER.encode(out) + "\n"


#: JSON text of a string (as C{json.dumps(..., ensure_ascii=False)}).
_json_str = json.encoder.encode_basestring
#: The text of each transaction field's name and separator, in order.
_FIELD_KEYS = tuple(f", {_json_str(name)}: " for name in FIELDS)
_FLOAT_SPECIAL = {float("inf"): "Infinity", float("-inf"): "-Infinity"}


def _json_scalar(value: Any) -> str | None:
    """
    JSON text of a value of a plain type, as L{_ENCODER} writes it; C{None}
    for any other type (a subclass too).
    """
    kind = type(value)
    if kind is str:
        return _json_str(value)
    if kind is int:
        return int.__repr__(value)
    if kind is float:
        if value != value:
            return "NaN"
        return _FLOAT_SPECIAL.get(value) or float.__repr__(value)
    if value is None:
        return "null"
    if kind is bool:
        return "true" if value else "false"
    return None


def _transaction_json(event: dict[str, Any], worker: str) -> str | None:
    """
    L{format_json} of a transaction event, written field by field: the
    same text as its dictionary through L{_ENCODER}, for about half of the
    time.  C{None} for an event with a value of another type, or a
    failure: L{format_json} then encodes it as any other.
    """
    level = event.get("log_level", LogLevel.info)
    namespace = event.get("log_namespace", "-")
    if (
        type(worker) is not str
        or type(namespace) is not str
        or type(getattr(level, "name", None)) is not str
        or event.get("log_failure") is not None
    ):
        return None
    parts = [
        '{"time": "',
        _iso_time(event.get("log_time", 0.0)),
        '", "level": ',
        _json_str(level.name),
        ', "priority": ',
        str(_PRIORITY.get(level, 6)),
        ', "namespace": ',
        _json_str(namespace),
        ', "worker": ',
        _json_str(worker),
        ', "pid": ',
        str(os.getpid()),
        ', "message": ',
        _json_str(_message(event)),
        ', "event": "transaction"',
    ]
    get = event.get
    append = parts.append
    for name, key in zip(FIELDS, _FIELD_KEYS, strict=True):
        value: Any = get(name)
        # Strings and ints first: nearly every field is one.
        kind = type(value)
        text = (
            _json_str(value)
            if kind is str
            else int.__repr__(value)
            if kind is int
            else _json_scalar(value)
        )
        if text is None:
            return None
        append(key)
        append(text)
    parts.append("}\n")
    return "".join(parts)


def format_text(event: dict[str, Any], worker: str) -> str | None:
    """
    One event as one readable line: time, namespace and level, worker, text
    (and a failure's traceback).
    """
    text = _message(event)
    failure = event.get("log_failure")
    if failure is not None:
        text = f"{text}\n{failure.getTraceback()}"
    text = text.rstrip("\n").replace("\n", "\n\t")
    when = datetime.fromtimestamp(event.get("log_time", 0.0)).astimezone()
    level = event.get("log_level", LogLevel.info)
    namespace = event.get("log_namespace", "-")
    stamp = when.isoformat(timespec="seconds")
    return f"{stamp} [{namespace}#{level.name}] [worker {worker}] {text}\n"


def log_observer_factory(fmt: str, worker: str | None = None) -> Callable[[IO[Any]], ILogObserver]:
    """
    A replacement for C{twist}'s C{fileLogObserverFactory}.

    @param fmt: C{"json"} or C{"text"}.
    @param worker: The process's name in each line (default
        L{worker_name}).
    @return: A function of the output file to an L{ILogObserver}.
    """
    name = worker if worker is not None else worker_name()
    if fmt == "json":
        return lambda out: FileLogObserver(out, lambda e: format_json(e, name))
    return lambda out: FileLogObserver(out, lambda e: format_text(e, name))
