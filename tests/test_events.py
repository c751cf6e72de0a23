"""
Tests for L{relayd.events}: the one structured event per transaction and
its text and JSON renderings.
"""

from __future__ import annotations

import contextvars
import json
from typing import Any

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.logger import LogLevel, capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from relayd import events
from relayd.message import Envelope
from relayd.reply import Reply
from relayd.testing import TOKEN


class FakeFactory:
    listener = "submission"
    implicit_tls = True


class FakeAvatar:
    name = "billing"


class FakeSession:
    factory = FakeFactory()
    avatar = FakeAvatar()
    peer_ip = "192.0.2.7"
    session_id = "a1b2c3"
    transport = None


ENVELOPE = Envelope("bounces@example.com", ("ann@example.net", "bob@example.org"), False)


def transaction(
    reply: Reply, upstream_id: str = "up-1", awaited: bool = False
) -> list[dict[str, Any]]:
    """
    Run one transaction through L{events.begin} and L{events.observe} (or,
    C{awaited}, L{events.observed} in a coroutine of its own, as the
    delivery does) as the session and the delivery do; return the events
    logged.
    """
    clock = Clock()
    answer: defer.Deferred[Reply] = defer.Deferred()

    async def relay() -> Reply:
        events.note(upstream_status=202, upstream_seconds=0.25, upstream_id=upstream_id)
        return await answer

    async def observed() -> Reply:
        reply: Reply = await events.observed(relay(), ENVELOPE, 1234, clock, "billing")
        return reply

    async def deliver() -> Reply:
        events.begin(FakeSession())
        if awaited:
            return await defer.Deferred.fromCoroutine(observed())

        def start() -> defer.Deferred[Reply]:
            return defer.Deferred.fromCoroutine(relay())

        reply: Reply = await events.observe(start, ENVELOPE, 1234, clock, "billing")
        return reply

    with capturedLogs() as logged:
        d = defer.Deferred.fromCoroutine(deliver())
        clock.advance(0.5)
        answer.callback(reply)
    assert d.called
    return [e for e in logged if e.get("log_event") == "transaction"]


class TransactionEventTests(SynchronousTestCase):
    def test_one_event_with_named_fields(self) -> None:
        """
        A transaction logs exactly one event, with every field of
        L{events.FIELDS} named: the session's, the upstream's and the
        reply's.
        """
        (event,) = transaction(Reply(250, "2.0.0", "Ok: queued as up-1"))
        (same,) = transaction(Reply(250, "2.0.0", "Ok: queued as up-1"), awaited=True)
        for name in (*events.FIELDS, "log_namespace", "log_level", "log_format"):
            self.assertEqual(same[name], event[name], name)
        self.assertEqual(event["log_namespace"], "relayd.transaction")
        self.assertEqual(event["log_level"], LogLevel.info)
        expected = {
            "session_id": "a1b2c3",
            "client": "192.0.2.7",
            "listener": "submission",
            "tls_version": "none",
            "identity": "billing",
            "reverse_path": "bounces@example.com",
            "recipients": 2,
            "size": 1234,
            "reply_code": 250,
            "enhanced_code": "2.0.0",
            "upstream_status": 202,
            "upstream_id": "up-1",
            "upstream_seconds": 0.25,
            "latency": 0.5,
            "idempotency": "-",
        }
        self.assertEqual({k: event[k] for k in expected}, expected)
        self.assertEqual(set(events.FIELDS) - set(event), set())
        self.assertEqual(
            formatEvent(event),
            "transaction a1b2c3 from 192.0.2.7 on submission (none) as billing:"
            " 250 2.0.0 Ok: queued as up-1; <bounces@example.com> to 2 recipient(s),"
            " 1234 bytes, 0.500s; upstream 202 up-1 (0.25s); idempotency -;"
            " mapped -; stripped -",
        )

    def test_tls_version_read_once_per_session(self) -> None:
        """
        The record names the session's TLS version; it is read from the TLS
        connection until it is known, then once for all transactions.
        """
        reads: list[str] = []

        class Handle:
            version = "Unknown"  # the handshake is not done yet

            def get_protocol_version_name(self) -> str:
                reads.append(self.version)
                return self.version

        class Transport:
            handle = Handle()

            def getHandle(self) -> Handle:
                return self.handle

        class Session(FakeSession):
            transport = Transport()  # type: ignore[assignment]
            negotiated_tls = ""

        session = Session()

        def begin() -> str:
            # In a context of its own, as the session's coroutine.
            return contextvars.copy_context().run(events.begin, session).tls_version

        self.assertEqual(begin(), "none")
        Transport.handle.version = "TLSv1.3"
        versions = [begin() for _ in range(3)]
        self.assertEqual(versions, ["TLSv1.3"] * 3)
        self.assertEqual(reads, ["Unknown", "TLSv1.3"])

    def test_never_a_credential(self) -> None:
        """
        The event names the token's policy, never the token.
        """
        (event,) = transaction(Reply(451, "4.3.0", "try later"))
        self.assertNotIn(TOKEN, json.dumps({k: str(v) for k, v in event.items()}))
        self.assertEqual(event["reply_code"], 451)

    def test_note_outside_a_transaction_does_nothing(self) -> None:
        events.note(upstream_id="x")


class RenderingTests(SynchronousTestCase):
    def test_json_line_has_stable_fields_and_priority(self) -> None:
        """
        C{--log-format=json}: one JSON object per line, with C{priority}
        (syslog, for journald), the worker and the event's fields.
        """
        (event,) = transaction(Reply(550, "5.7.1", "Sender not allowed"))
        line = events.format_json(event, "1")
        self.assertTrue(line.endswith("\n"))
        self.assertEqual(line.count("\n"), 1)
        data = json.loads(line)
        self.assertEqual(
            (data["level"], data["priority"], data["worker"], data["event"]),
            ("info", 6, "1", "transaction"),
        )
        self.assertEqual((data["reply_code"], data["enhanced_code"]), (550, "5.7.1"))
        self.assertIn("550 5.7.1 Sender not allowed", data["message"])

    def test_json_of_a_transaction_as_the_json_encoder_writes_it(self) -> None:
        """
        The transaction event's JSON line (written field by field) is the
        text the JSON encoder makes of its fields, for values of every
        kind: quotes, control characters, non-ASCII text, numbers of
        every sort, C{null}, booleans, and other types (as text).
        """
        import enum

        class Code(enum.IntEnum):
            OK = 250

        class Text(str):
            pass

        (event,) = transaction(Reply(250, "2.0.0", "Ok: queued as up-1"))
        values: list[Any] = [
            'quo"te\\back\x00\x1f\x7f\u2028',
            "caf\u00e9 \U0001f600",
            "",
            0,
            -17,
            10**30,
            0.1,
            -0.0,
            1e300,
            float("nan"),
            float("inf"),
            float("-inf"),
            None,
            True,
            False,
            Code.OK,
            Text("sub"),
            ("a", "b"),
            ["x"],
        ]

        changed = [
            {**event, name: value}
            for value in values
            for name in ("reverse_path", "upstream_seconds", "recipients")
        ]
        fast = [events.format_json(e, "w\u00f6rker") for e in changed]
        # Plain values take the field-by-field way.
        self.assertIsNotNone(events._transaction_json(changed[0], "w\u00f6rker"))
        self.assertIsNotNone(events._transaction_json(changed[3 * 14], "w\u00f6rker"))

        def general(e: dict[str, Any], worker: str) -> None:
            return None

        self.patch(events, "_transaction_json", general)
        for e, line in zip(changed, fast, strict=True):
            self.assertEqual(line, events.format_json(e, "w\u00f6rker"))

    def test_json_of_an_ordinary_event(self) -> None:
        event = {
            "log_format": "refused connection from {peer}: too many",
            "log_level": LogLevel.warn,
            "log_namespace": "relayd.smtp.session",
            "log_time": 0.0,
            "peer": "192.0.2.1",
        }
        data = json.loads(events.format_json(event, "main"))
        self.assertEqual((data["priority"], data["peer"]), (4, "192.0.2.1"))
        self.assertEqual(data["message"], "refused connection from 192.0.2.1: too many")

    def test_json_time_to_the_millisecond_in_utc(self) -> None:
        """
        The C{time} of a JSON line is ISO 8601 in UTC to the millisecond,
        as C{datetime.isoformat} writes it, also within one second (whose
        text is made once) and at its edge (rounded to the microsecond).
        """
        from datetime import UTC, datetime

        for when in (0.0, 1700000000.25, 1700000000.9994, 1700000000.9999999, 1700000001.001):
            event = {"log_format": "x", "log_level": LogLevel.info, "log_time": when}
            self.assertEqual(
                json.loads(events.format_json(event, "main"))["time"],
                datetime.fromtimestamp(when, UTC).isoformat(timespec="milliseconds"),
            )

    def test_text_names_the_worker(self) -> None:
        event = {
            "log_format": "hello {x}",
            "log_level": LogLevel.info,
            "log_namespace": "relayd.x",
            "log_time": 0.0,
            "x": 1,
        }
        line = events.format_text(event, "0")
        assert line is not None
        self.assertTrue(line.endswith(" [relayd.x#info] [worker 0] hello 1\n"), line)
