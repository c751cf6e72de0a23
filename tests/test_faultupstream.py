"""
Self-tests of the test harness: each mode of L{tests.faultupstream} over a
real 127.0.0.1 socket, and L{tests.mtaclient} against the real daemon.
"""

from __future__ import annotations

import json
import time
from typing import Any

from treq.client import HTTPClient
from twisted.internet import error, reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase
from twisted.web._newclient import ResponseFailed, _WrapperException
from twisted.web.client import Agent, HTTPConnectionPool

from relayd.testing import async_test
from tests.faultupstream import MODES, FaultUpstream
from tests.mtaclient import Attempt, make_messages, send_all
from tests.test_delivery_promise import Relayd, free_port


def document(subject: str = "hello") -> dict[str, Any]:
    return {"from": "a@example.com", "subject": subject, "envelope": {"rcpt_to": ["b@example.net"]}}


class FaultUpstreamTests(TestCase):
    """
    Each mode behaves as named, seen by a real HTTP client.
    """

    timeout = 20

    def upstream(self, mode: str, **kwargs: Any) -> FaultUpstream:
        upstream = FaultUpstream(reactor, mode, **kwargs)
        upstream.start()
        self.addCleanup(upstream.stop)
        return upstream

    def client(self, persistent: bool = False) -> HTTPClient:
        pool = HTTPConnectionPool(reactor, persistent=persistent)
        self.addCleanup(pool.closeCachedConnections)
        return HTTPClient(Agent(reactor, pool=pool))

    async def post(
        self,
        upstream: FaultUpstream,
        subject: str = "hello",
        http: HTTPClient | None = None,
        **headers: str,
    ) -> tuple[int, bytes, Any]:
        http = http or self.client()
        all_headers: dict[bytes | str, bytes | str] = {"Content-Type": "application/json"}
        all_headers.update({k.replace("_", "-"): v for k, v in headers.items()})
        response = await http.post(
            upstream.url,
            data=json.dumps(document(subject)).encode(),
            headers=all_headers,
        )
        return response.code, await response.content(), response.headers

    async def failure(self, upstream: FaultUpstream) -> Exception:
        try:
            await self.post(upstream)
        except Exception as e:
            return e
        raise AssertionError("the request did not fail")

    def test_unknown_mode(self) -> None:
        with self.assertRaises(ValueError):
            FaultUpstream(reactor, "flaky")
        self.assertEqual(len(MODES), 9)

    @async_test
    async def test_ok_records_and_answers_id(self) -> None:
        upstream = self.upstream("ok")
        status, body, _ = await self.post(upstream, Idempotency_Key="k1")
        self.assertEqual((status, json.loads(body)), (200, {"id": "fault-1"}))
        (recorded,) = upstream.accepted
        self.assertEqual(
            (recorded.upstream_id, recorded.key, recorded.subject), ("fault-1", "k1", "hello")
        )
        self.assertEqual(recorded.document, document())
        (received,) = upstream.requests
        self.assertEqual(
            (received.fault, received.headers["content-type"]), ("ok", "application/json")
        )

    @async_test
    async def test_down_refuses_connections(self) -> None:
        """
        C{down} listens on nothing: connection refused, on the same port
        that works again once the mode is switched back.
        """
        upstream = self.upstream("down")
        self.assertIsInstance(await self.failure(upstream), error.ConnectionRefusedError)
        await upstream.set_mode("ok")
        self.assertEqual((await self.post(upstream))[0], 200)
        await upstream.set_mode("down")
        self.assertIsInstance(await self.failure(upstream), error.ConnectionRefusedError)
        self.assertEqual(len(upstream.accepted), 1)

    @async_test
    async def test_slow_records_at_once_answers_late(self) -> None:
        """
        C{slow} records the message as soon as it is read and answers
        C{delay} seconds later.
        """
        upstream = self.upstream("slow", delay=0.5)
        started = time.monotonic()
        answer = Deferred.fromCoroutine(self.post(upstream))
        self.assertEqual(len(await deferLater(reactor, 0.25, lambda: upstream.accepted)), 1)
        self.assertNoResult(answer)
        status, body, _ = await answer
        self.assertGreaterEqual(time.monotonic() - started, 0.5)
        self.assertEqual((status, json.loads(body)), (200, {"id": "fault-1"}))

    @async_test
    async def test_slow_answer_to_a_client_that_left_is_dropped(self) -> None:
        upstream = self.upstream("slow", delay=0.3)
        http = self.client()
        d = Deferred.fromCoroutine(self.post(upstream, http=http))
        await deferLater(reactor, 0.1, lambda: None)
        d.cancel()
        await deferLater(reactor, 0.4, lambda: None)
        self.assertEqual(len(upstream.accepted), 1)
        self.failureResultOf(d)

    @async_test
    async def test_reset_after_read_records_then_resets(self) -> None:
        """
        The message is recorded, the client gets no answer and a reset
        (C{ConnectionLost}, not an orderly C{ConnectionDone}).
        """
        upstream = self.upstream("reset_after_read")
        failure = await self.failure(upstream)
        self.assertIsInstance(failure, ResponseFailed)
        assert isinstance(failure, _WrapperException)
        self.assertTrue(failure.reasons[0].check(error.ConnectionLost))
        self.assertFalse(failure.reasons[0].check(error.ConnectionDone))
        self.assertEqual(upstream.subjects(), ["hello"])

    @async_test
    async def test_reset_before_reads_nothing(self) -> None:
        upstream = self.upstream("reset_before", fault_every=2)
        failure = await self.failure(upstream)
        assert isinstance(failure, _WrapperException), failure
        self.assertTrue(failure.reasons[0].check(error.ConnectionLost))
        self.assertEqual((upstream.requests, upstream.connections), ([], 1))
        self.assertEqual((await self.post(upstream))[0], 200)  # the second connection is spared
        self.assertEqual(upstream.connections, 2)

    @async_test
    async def test_5xx_records_nothing(self) -> None:
        upstream = self.upstream("5xx")
        status, body, _ = await self.post(upstream)
        self.assertEqual((status, json.loads(body)), (503, {"error": "Service unavailable"}))
        self.assertEqual(upstream.accepted, [])
        self.assertEqual([r.fault for r in upstream.requests], ["5xx"])

    @async_test
    async def test_429_with_retry_after(self) -> None:
        upstream = self.upstream("429", retry_after=7)
        status, _, headers = await self.post(upstream)
        self.assertEqual(status, 429)
        self.assertEqual(headers.getRawHeaders(b"Retry-After"), [b"7"])
        self.assertEqual(upstream.accepted, [])

    @async_test
    async def test_garbage_200_records_and_answers_no_json(self) -> None:
        upstream = self.upstream("garbage_200")
        status, body, headers = await self.post(upstream)
        self.assertEqual(status, 200)
        self.assertRaises(ValueError, json.loads, body)
        self.assertEqual(headers.getRawHeaders(b"Content-Type"), [b"text/html"])
        self.assertEqual(upstream.subjects(), ["hello"])

    @async_test
    async def test_close_after_each_closes_keep_alive(self) -> None:
        """
        Two requests through one persistent pool: C{ok} serves both on one
        connection, C{close_after_each} needs two, and announces nothing.
        """
        for mode, connections in (("ok", 1), ("close_after_each", 2)):
            upstream = self.upstream(mode)
            http = self.client(persistent=True)
            status, _, headers = await self.post(upstream, "one", http=http)
            self.assertEqual(headers.getRawHeaders(b"Connection"), None, mode)
            await deferLater(reactor, 0.05, lambda: None)
            self.assertEqual((await self.post(upstream, "two", http=http))[0], 200)
            self.assertEqual(
                (upstream.connections, upstream.subjects()), (connections, ["one", "two"]), mode
            )
            await upstream.stop()

    @async_test
    async def test_honour_key_returns_first_id(self) -> None:
        """
        With C{honour_key}, a repeated key (bare or quoted) gets the first
        id and records nothing; without it, every request is recorded.
        """
        upstream = self.upstream("ok", honour_key=True)
        first = await self.post(upstream, Idempotency_Key="k")
        again = await self.post(upstream, "changed", Idempotency_Key='"k"')
        other = await self.post(upstream, Idempotency_Key="k2")
        self.assertEqual(json.loads(again[1]), json.loads(first[1]))
        self.assertEqual(json.loads(other[1]), {"id": "fault-2"})
        self.assertEqual((upstream.subjects(), upstream.repeats), (["hello", "hello"], 1))
        plain = self.upstream("ok")
        await self.post(plain, Idempotency_Key="k")
        await self.post(plain, Idempotency_Key="k")
        self.assertEqual(len(plain.accepted), 2)

    @async_test
    async def test_fault_first_and_fault_every(self) -> None:
        """
        C{fault_first=1} faults each message's first request only;
        C{fault_every=2} every other request.
        """
        first = self.upstream("5xx", fault_first=1)
        codes = [(await self.post(first, s))[0] for s in ("a", "a", "b", "a", "b")]
        self.assertEqual(codes, [503, 200, 503, 200, 200])
        every = self.upstream("5xx", fault_every=2)
        codes = [(await self.post(every, s))[0] for s in ("a", "a", "a", "a")]
        self.assertEqual(codes, [503, 200, 503, 200])


class MTAClientTests(TestCase):
    """
    L{tests.mtaclient.send_all} against the real daemon and a
    L{FaultUpstream}.
    """

    timeout = 30
    relayd: Relayd
    upstream_port: int

    @classmethod
    def setUpClass(cls) -> None:
        cls.upstream_port = free_port()
        cls.relayd = Relayd(f"http://127.0.0.1:{cls.upstream_port}/send")

    @classmethod
    def tearDownClass(cls) -> None:
        cls.relayd.stop()

    def upstream(self, mode: str, **kwargs: Any) -> FaultUpstream:
        upstream = FaultUpstream(reactor, mode, port=self.upstream_port, **kwargs)
        upstream.start()
        self.addCleanup(upstream.stop)
        return upstream

    @async_test
    async def test_retries_4xx_until_250(self) -> None:
        """
        Each message's first try gets the relay's 451; the client tries
        again and gets 250; each is recorded once.
        """
        upstream = self.upstream("5xx", fault_first=1)
        messages = make_messages(10, "retry")
        results = await deferToThread(self.relayd.send, messages, sessions=3, backoff=0.05)
        for result in results:
            self.assertEqual([a.code for a in result.attempts], [451, 250], result)
            self.assertEqual(
                result.attempts[0], Attempt(451, "4.3.0 Temporary failure, try again later")
            )
            self.assertRegex(result.final.text, r"^2\.0\.0 Ok: queued as fault-\d+$")
        self.assertEqual(sorted(upstream.subjects()), sorted(f"retry #{i}" for i in range(10)))

    @async_test
    async def test_retries_are_bounded_in_count(self) -> None:
        upstream = self.upstream("5xx")
        results = await deferToThread(
            self.relayd.send, make_messages(4, "count"), sessions=2, max_attempts=3, backoff=0.01
        )
        self.assertEqual([[a.code for a in r.attempts] for r in results], [[451] * 3] * 4)
        self.assertEqual(len(upstream.requests), 12)

    @async_test
    async def test_retries_are_bounded_in_time(self) -> None:
        self.upstream("429")
        started = time.monotonic()
        results = await deferToThread(
            self.relayd.send,
            make_messages(2, "time"),
            sessions=2,
            max_attempts=1000,
            backoff=0.2,
            max_backoff=0.2,
            deadline=1.0,
        )
        self.assertLess(time.monotonic() - started, 3.0)
        for result in results:
            self.assertLess(len(result.attempts), 10)
            self.assertEqual(result.final.code, 451)
            self.assertTrue(result.final.text.startswith("4.7.1 "), result.final)

    @async_test
    async def test_no_reply_is_retried(self) -> None:
        """
        A session that breaks (the relay is unreachable) is no reply
        (C{None}) and is retried like a 4xx.
        """
        results = await deferToThread(
            send_all,
            "127.0.0.1",
            1,
            make_messages(1, "broken"),
            username="apikey",
            password="x",
            tls_context=self.relayd.tls_context(),
            sessions=1,
            max_attempts=2,
            backoff=0.01,
        )
        (result,) = results
        self.assertEqual([a.code for a in result.attempts], [None, None])
        self.assertIn("ConnectionRefusedError", result.final.text)
