"""
Tests for L{relayd.delivery}: the avatar and the transaction message,
over L{treq.testing.StubTreq} and a L{FakeUpstream}.
"""

from __future__ import annotations

from typing import Any

from treq.testing import StubTreq
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from relayd.config import HeadersConfig, UpstreamConfig
from relayd.delivery import Pipeline, RelayDelivery
from relayd.dialects import get_dialect
from relayd.interfaces import ISubmission, ISubmissionMessage
from relayd.reply import Refused, Reply
from relayd.testing import FakeUpstream
from relayd.tokens import TokenPolicy
from relayd.upstream import UpstreamClient

MESSAGE = (
    b"From: Ann <ann@example.com>\r\nTo: bob@example.net\r\nCc: cy@example.org\r\n"
    b"Subject: hello\r\nX-Stream: broadcast\r\n\r\nbody\r\n"
)


class DeliveryTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.upstream = FakeUpstream()
        client = UpstreamClient(
            self.clock,
            UpstreamConfig(url="http://upstream.test/send"),
            get_dialect("native"),
            http=StubTreq(self.upstream),
        )
        self.pipeline = Pipeline(
            client, HeadersConfig(streams=("outbound", "broadcast")), self.clock
        )

    def avatar(self, **policy: object) -> RelayDelivery:
        return RelayDelivery("tok-123", TokenPolicy("web", **policy), self.pipeline)  # type: ignore[arg-type]

    def transact(self, avatar: RelayDelivery, rcpts: list[str], data: bytes = MESSAGE) -> Reply:
        avatar.validateFrom(("c", "192.0.2.1"), "ann@example.com")
        factories = [avatar.validateTo(r) for r in rcpts]
        messages = {id(f()): f() for f in factories}
        (message,) = messages.values()
        message.bodyReceived(data)
        return self.successResultOf(message.eomReceived())

    def test_interfaces(self) -> None:
        avatar = self.avatar()
        verifyObject(ISubmission, avatar)
        avatar.validateFrom(None, "a@example.com")
        verifyObject(ISubmissionMessage, avatar.validateTo("b@example.com")())

    def test_three_recipients_one_upstream_request(self) -> None:
        """
        Every recipient's factory gives the same message; one request
        carries the whole envelope, and the reply has the upstream's id.
        """
        self.upstream.enqueue(200, {"id": "msg-7"})
        reply = self.transact(
            self.avatar(), ["bob@example.net", "cy@example.org", "dee@example.com"]
        )
        self.assertEqual(reply, Reply(250, "2.0.0", "Ok: queued as msg-7"))
        (request,) = self.upstream.requests
        self.assertEqual(request.header("authorization"), "Bearer tok-123")
        self.assertEqual(
            request.json["envelope"],
            {
                "mail_from": "ann@example.com",
                "rcpt_to": ["bob@example.net", "cy@example.org", "dee@example.com"],
            },
        )
        self.assertEqual(request.json["bcc"], ["dee@example.com"])
        self.assertEqual(request.json["stream"], "broadcast")

    def test_sender_not_allowed_at_mail_from(self) -> None:
        avatar = self.avatar(senders=("example.org",))
        e = self.assertRaises(Refused, avatar.validateFrom, None, "ann@example.com")
        self.assertEqual(
            (e.reply.code, e.reply.status, e.reply.text), (550, "5.7.1", "Sender not allowed")
        )

    def test_from_header_not_allowed(self) -> None:
        avatar = self.avatar(senders=("ann@example.com",))
        data = MESSAGE.replace(b"From: Ann <ann@example.com>", b"From: eve@example.com")
        self.assertEqual(
            self.transact(avatar, ["bob@example.net"], data),
            Reply(550, "5.7.1", "Sender not allowed"),
        )
        self.assertEqual(self.upstream.requests, [])

    def test_stream_not_allowed_for_token(self) -> None:
        avatar = self.avatar(streams=("outbound",))
        reply = self.transact(avatar, ["bob@example.net"])
        self.assertEqual(
            reply, Reply(550, "5.7.1", "Stream 'broadcast' not allowed for this token")
        )
        self.assertEqual(self.upstream.requests, [])

    def test_unknown_stream(self) -> None:
        data = MESSAGE.replace(b"X-Stream: broadcast", b"X-Stream: spam")
        self.assertEqual(
            self.transact(self.avatar(), ["bob@example.net"], data),
            Reply(550, "5.7.1", "unknown stream 'spam'"),
        )

    def test_message_without_from(self) -> None:
        reply = self.transact(self.avatar(), ["bob@example.net"], b"Subject: x\r\n\r\nbody\r\n")
        self.assertEqual((reply.code, reply.status), (550, "5.6.0"))

    def test_upstream_failure_is_passed_on(self) -> None:
        self.upstream.enqueue(503, {})
        reply = self.transact(self.avatar(), ["bob@example.net"])
        self.assertEqual(reply, Reply(451, "4.3.0", "Temporary failure, try again later"))

    def test_unexpected_error_is_451(self) -> None:
        def broken(*a: object) -> None:
            raise RuntimeError("boom")

        self.pipeline.store.claim = broken  # type: ignore[method-assign,assignment]
        reply = self.transact(self.avatar(), ["bob@example.net"])
        self.assertEqual(reply, Reply(451, "4.3.0", "Local error in processing, try again later"))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)


class _SyncPool:
    def __init__(self) -> None:
        self.calls = 0

    def callInThreadWithCallback(self, on_result, f, *args, **kwargs):  # type: ignore[no-untyped-def]
        self.calls += 1
        on_result(True, f(*args, **kwargs))


class _Threads:
    def __init__(self) -> None:
        self.pool = _SyncPool()

    def getThreadPool(self) -> _SyncPool:
        return self.pool

    def callFromThread(self, f, *args, **kwargs):  # type: ignore[no-untyped-def]
        f(*args, **kwargs)


def _threaded_pipeline(threads: Any) -> tuple[Pipeline, FakeUpstream]:
    """
    A pipeline to a fake native upstream that builds large messages in
    C{threads}' pool (C{None}: on the calling thread).
    """
    clock = Clock()
    upstream = FakeUpstream()
    client = UpstreamClient(clock, UpstreamConfig(), get_dialect("native"), http=StubTreq(upstream))
    return Pipeline(client, HeadersConfig(), clock, threads=threads), upstream


class ThreadedParseTests(SynchronousTestCase):
    def test_large_messages_are_parsed_in_the_thread_pool(self) -> None:
        """
        A message over 4 MiB is parsed in the reactor's thread pool; a
        small one on the reactor thread.
        """
        threads = _Threads()
        pipeline, upstream = _threaded_pipeline(threads)
        avatar = RelayDelivery("t", TokenPolicy("web"), pipeline)
        for size in (1000, 5 * 1024 * 1024):
            avatar.validateFrom(None, "ann@example.com")
            message = avatar.validateTo("bob@example.net")()
            message.bodyReceived(
                MESSAGE.replace(b"body\r\n", b"x" * 70 + b"\r\n")
                + b"y" * 70 * (size // 72)
                + b"\r\n"
            )
            reply = self.successResultOf(message.eomReceived())
            self.assertEqual(reply.code, 250)
        self.assertEqual(threads.pool.calls, 1)
        self.assertEqual(len(upstream.requests), 2)


class _HeldPool:
    """
    A thread pool whose calls wait until the test runs them.
    """

    def __init__(self) -> None:
        self.waiting: list[Any] = []

    def callInThreadWithCallback(self, on_result, f, *args, **kwargs):  # type: ignore[no-untyped-def]
        self.waiting.append(lambda: on_result(True, f(*args, **kwargs)))


class _HeldThreads(_Threads):
    def __init__(self) -> None:
        self.pool = _HeldPool()  # type: ignore[assignment]


class LargeMessagesOneAtATimeTests(SynchronousTestCase):
    def test_one_large_build_at_a_time(self) -> None:
        """
        Two large messages at once: the second is built in the pool only
        once the first build is done (the builds hold the GIL; several at
        once make every other session wait for each in turn).  Both are
        relayed.
        """
        threads = _HeldThreads()
        pipeline, upstream = _threaded_pipeline(threads)
        big = MESSAGE.replace(b"body\r\n", b"x" * 70 + b"\r\n") + (b"y" * 70 + b"\r\n") * 75000
        replies = []
        for n in range(2):
            avatar = RelayDelivery("t", TokenPolicy("web"), pipeline)
            avatar.validateFrom(None, "ann@example.com")
            message = avatar.validateTo(f"bob{n}@example.net")()
            message.bodyReceived(big)
            replies.append(message.eomReceived())
        pool = threads.pool
        assert isinstance(pool, _HeldPool)
        self.assertEqual(len(pool.waiting), 1)
        pool.waiting.pop(0)()
        self.assertEqual(len(pool.waiting), 1)
        pool.waiting.pop(0)()
        self.assertEqual([self.successResultOf(d).code for d in replies], [250, 250])
        self.assertEqual(len(upstream.requests), 2)


class DuplicateRecipientTests(SynchronousTestCase):
    def test_repeated_rcpt_is_one_recipient(self) -> None:
        pipeline, upstream = _threaded_pipeline(None)
        avatar = RelayDelivery("t", TokenPolicy("web"), pipeline)
        avatar.validateFrom(None, "ann@example.com")
        for rcpt in ("bob@example.net", "bob@Example.NET", "cy@example.org"):
            message = avatar.validateTo(rcpt)()
        message.bodyReceived(MESSAGE)
        self.assertEqual(self.successResultOf(message.eomReceived()).code, 250)
        self.assertEqual(
            upstream.requests[0].json["envelope"]["rcpt_to"], ["bob@example.net", "cy@example.org"]
        )

    def test_rcpt_differing_in_local_part_case_is_another_recipient(self) -> None:
        """
        Only exact repeats are dropped: the domain is compared without case,
        the local part exactly (RFC 5321 section 2.4), as in the
        idempotency key.
        """
        pipeline, upstream = _threaded_pipeline(None)
        avatar = RelayDelivery("t", TokenPolicy("web"), pipeline)
        avatar.validateFrom(None, "ann@example.com")
        for rcpt in ("bob@example.net", "Bob@example.net", "bob@EXAMPLE.net"):
            message = avatar.validateTo(rcpt)()
        message.bodyReceived(MESSAGE)
        self.assertEqual(self.successResultOf(message.eomReceived()).code, 250)
        self.assertEqual(
            upstream.requests[0].json["envelope"]["rcpt_to"], ["bob@example.net", "Bob@example.net"]
        )
