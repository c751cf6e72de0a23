"""
Tests for L{relayd.upstream}: the request the upstream gets, every answer
mapped to a result, timeouts and network failures, over L{StubTreq} and
over real loopback sockets.
"""

from __future__ import annotations

import json
import socket
from base64 import b64decode, b64encode
from typing import Any

from treq.testing import StubTreq
from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import (
    IAddress,
    IConsumer,
    IProducer,
    IProtocolFactory,
)
from twisted.internet.task import Clock, deferLater
from twisted.logger import capturedLogs
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web._newclient import (
    RequestNotSent,
    RequestTransmissionFailed,
    ResponseFailed,
    ResponseNeverReceived,
)
from twisted.web.iweb import IBodyProducer
from twisted.web.server import Site
from zope.interface import implementer
from zope.interface.verify import verifyObject

from relayd import __version__
from relayd.config import ConfigError, UpstreamConfig
from relayd.dialects import get_dialect
from relayd.message import Attachment
from relayd.reply import TEMPORARY_FAILURE, Refused, Reply
from relayd.result import Accepted, NotSent
from relayd.testing import FakeUpstream, async_test, sample_message
from relayd.upstream import (
    BODY_CHUNK,
    MAX_ANSWER,
    BytesProducer,
    PreparedRequest,
    UpstreamClient,
    UpstreamPool,
    _StaleRetry,
    make_client,
    make_pool,
)
from tests.faultupstream import FaultUpstream

TOKEN = "tok-3f9a-SECRET"


@implementer(IConsumer)
class _Consumer:
    def __init__(self) -> None:
        self.writes: list[bytes] = []

    def registerProducer(self, producer: IProducer, streaming: bool) -> None:
        raise NotImplementedError

    def unregisterProducer(self) -> None:
        raise NotImplementedError

    def write(self, data: bytes) -> None:
        self.writes.append(data)


class _PausingConsumer(_Consumer):
    """
    A transport whose buffer is full after each write: it pauses the
    producer.
    """

    def __init__(self, producer: BytesProducer) -> None:
        super().__init__()
        self.producer = producer

    def write(self, data: bytes) -> None:
        super().write(data)
        self.producer.pauseProducing()


class BytesProducerTests(SynchronousTestCase):
    """
    L{BytesProducer}.
    """

    def test_small_body_in_one_write(self) -> None:
        """
        A body of at most L{BODY_CHUNK} bytes is written at once and the
        result fires at once.
        """
        producer = BytesProducer(b"x" * BODY_CHUNK)
        self.assertTrue(verifyObject(IBodyProducer, producer))
        self.assertEqual(producer.length, BODY_CHUNK)
        consumer = _Consumer()
        self.assertIsNone(self.successResultOf(producer.startProducing(consumer)))
        self.assertEqual(consumer.writes, [b"x" * BODY_CHUNK])
        producer.pauseProducing()
        producer.resumeProducing()
        producer.stopProducing()

    def test_large_body_in_pieces_as_the_transport_drains(self) -> None:
        """
        A large body is written in pieces of L{BODY_CHUNK} bytes while the
        transport does not pause the producer: no reactor iteration copies
        the whole body (the transport would join it in one).  The result
        fires when the last piece is written.
        """
        body = bytes(range(256)) * 1000  # 256000 bytes
        producer = BytesProducer(body)
        consumer = _PausingConsumer(producer)
        d = producer.startProducing(consumer)
        self.assertEqual([len(w) for w in consumer.writes], [BODY_CHUNK])
        self.assertNoResult(d)
        producer.resumeProducing()
        producer.resumeProducing()
        self.assertNoResult(d)
        producer.resumeProducing()
        self.assertEqual(b"".join(consumer.writes), body)
        self.assertEqual([len(w) for w in consumer.writes], [BODY_CHUNK] * 3 + [59392])
        self.assertIsNone(self.successResultOf(d))

    def test_stopped_never_fires_and_restarts_from_the_start(self) -> None:
        """
        After C{stopProducing} nothing more is written and the first
        result never fires (L{IBodyProducer}); producing again (a resend
        on a fresh connection) writes the whole body.
        """
        body = b"y" * (3 * BODY_CHUNK)
        producer = BytesProducer(body)
        first = _PausingConsumer(producer)
        d = producer.startProducing(first)
        producer.stopProducing()
        producer.resumeProducing()
        self.assertEqual(len(first.writes), 1)
        self.assertNoResult(d)
        second = _Consumer()
        self.assertIsNone(self.successResultOf(producer.startProducing(second)))
        self.assertEqual(b"".join(second.writes), body)
        self.assertNoResult(d)


class StubbedClientTests(SynchronousTestCase):
    """
    L{UpstreamClient} against an in-memory L{FakeUpstream}.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.upstream = FakeUpstream()

    def client(self, dialect: str = "native", **config: object) -> UpstreamClient:
        settings: dict[str, object] = {"url": "https://api.example.com/v1/send", "timeout": 10.0}
        settings.update(config)
        return UpstreamClient(
            self.clock,
            UpstreamConfig(**settings),  # type: ignore[arg-type]
            get_dialect(dialect),
            http=StubTreq(self.upstream),
        )

    def send(self, client: UpstreamClient, **changes: object) -> object:
        d = Deferred.fromCoroutine(client.send(sample_message(**changes), TOKEN))
        return self.successResultOf(d)

    def test_request(self) -> None:
        """
        One POST to the configured URL with the dialect's JSON body and the
        documented headers.
        """
        self.upstream.enqueue(200, {"id": "m-1"})
        result = self.send(self.client())
        self.assertEqual(result, Accepted("m-1"))
        self.assertEqual(len(self.upstream.requests), 1)
        request = self.upstream.last
        self.assertEqual((request.method, request.path), ("POST", "/v1/send"))
        self.assertEqual(request.header("Content-Type"), "application/json")
        self.assertEqual(request.header("Accept"), "application/json")
        self.assertEqual(request.header("User-Agent"), f"relayd/{__version__}")
        self.assertEqual(request.header("Authorization"), f"Bearer {TOKEN}")
        self.assertEqual(request.header("Host"), "api.example.com")
        self.assertEqual(request.body, get_dialect("native").body(sample_message()))
        self.assertEqual(request.json["envelope"]["mail_from"], "bounces@example.com")

    def test_dialect_token_header(self) -> None:
        """
        Without configuration, the dialect's own token header is used.
        """
        self.upstream.enqueue(200, {"MessageID": "pm-1"})
        self.assertEqual(self.send(self.client("postmark")), Accepted("pm-1"))
        self.assertEqual(self.upstream.last.header("X-Postmark-Server-Token"), TOKEN)
        self.assertIsNone(self.upstream.last.header("Authorization"))
        self.assertEqual(self.upstream.last.json["From"], "Zoë Sender <zoe@example.com>")

        self.upstream.enqueue(200, {"id": 9, "status": "pending"})
        self.assertEqual(self.send(self.client("mailpace")), Accepted("9"))
        self.assertEqual(self.upstream.last.header("MailPace-Server-Token"), TOKEN)

    def test_configured_token_header(self) -> None:
        """
        C{token_header} and C{token_format} override the dialect's.
        """
        client = self.client(token_header="X-Api-Key", token_format="Token {token}")
        self.send(client)
        self.assertEqual(self.upstream.last.header("X-Api-Key"), f"Token {TOKEN}")
        self.assertIsNone(self.upstream.last.header("Authorization"))

    def test_every_status(self) -> None:
        """
        Each answer status becomes the documented result.
        """
        rejected = Reply(550, "5.6.0", "Message rejected by upstream")
        token = Reply(554, "5.7.1", "Upstream refused the API token")
        cases = {
            200: Accepted("m"),
            201: Accepted("m"),
            202: Accepted("m"),
            400: rejected,
            422: rejected,
            401: token,
            403: token,
            413: Reply(552, "5.3.4", "Message too big"),
            429: Reply(451, "4.7.1", "Upstream rate limit reached, try again later"),
            404: TEMPORARY_FAILURE,
            405: TEMPORARY_FAILURE,
            500: TEMPORARY_FAILURE,
            502: TEMPORARY_FAILURE,
            503: TEMPORARY_FAILURE,
            504: TEMPORARY_FAILURE,
        }
        client = self.client()
        for status, expected in cases.items():
            self.upstream.enqueue(status, {"id": "m"} if status < 300 else None)
            self.assertEqual(self.send(client), expected, status)

    def test_error_text_passed_on(self) -> None:
        """
        The upstream's rejection reason reaches the reply.
        """
        self.upstream.enqueue(422, {"error": "Sender domain not verified"})
        self.assertEqual(
            self.send(self.client()), Reply(550, "5.6.0", "Sender domain not verified")
        )

    def test_2xx_without_json(self) -> None:
        """
        A 2xx with a body that is not JSON is still accepted.
        """
        self.upstream.enqueue(200, body=b"<html>thanks</html>")
        self.assertEqual(self.send(self.client()), Accepted(""))

    def test_redirect_not_followed(self) -> None:
        """
        A redirect is not followed (it would send the token elsewhere): it
        is a misconfiguration, a temporary failure.
        """
        self.upstream.enqueue(302, headers={"Location": "https://evil.example.com/steal"})
        self.upstream.enqueue(200, {"id": "never"})
        self.assertEqual(self.send(self.client()), TEMPORARY_FAILURE)
        self.assertEqual(len(self.upstream.requests), 1)

    def test_large_answer_is_bounded(self) -> None:
        """
        Only the first 64 KiB of an answer are kept: a larger rejection is
        not JSON any more and gets the fallback text.
        """
        self.upstream.enqueue(422, {"error": "x" * (MAX_ANSWER * 2)})
        self.assertEqual(
            self.send(self.client()), Reply(550, "5.6.0", "Message rejected by upstream")
        )

    def test_timeout(self) -> None:
        """
        An upstream that does not answer within C{timeout} seconds is a
        temporary failure.
        """
        self.upstream.enqueue(hang=True)
        d = Deferred.fromCoroutine(self.client().send(sample_message(), TOKEN))
        self.clock.advance(9.9)
        self.assertNoResult(d)
        self.clock.advance(0.1)
        self.assertEqual(self.successResultOf(d), TEMPORARY_FAILURE)

    def test_no_timer_left_behind(self) -> None:
        """
        A finished request cancels its timer.
        """
        self.send(self.client())
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_dialect_refusal_propagates(self) -> None:
        """
        L{Refused} from the dialect propagates; nothing is sent.
        """
        client = self.client("postmark")
        d = Deferred.fromCoroutine(client.send(sample_message(raw_only=True), TOKEN))
        failure = self.failureResultOf(d, Refused)
        self.assertEqual(failure.value.reply.code, 554)
        self.assertEqual(self.upstream.requests, [])

    def test_logs_status_and_elapsed_never_token_or_body(self) -> None:
        """
        The log says status and elapsed time, never the token or the body.
        """
        self.upstream.enqueue(422, {"error": "nope"})
        with capturedLogs() as events:
            self.send(self.client())
        self.assertEqual(len(events), 1)
        event = events[0]
        self.assertEqual(event["status"], 422)
        self.assertEqual(event["code"], 550)
        self.assertIn("elapsed", event)
        text = repr(events)
        self.assertNotIn(TOKEN, text)
        self.assertNotIn("Hello Ann", text)
        self.assertNotIn("zoe@example.com", text)

    def test_timeout_is_logged(self) -> None:
        """
        A timeout is logged as such, with the elapsed time.
        """
        self.upstream.enqueue(hang=True)
        with capturedLogs() as events:
            d = Deferred.fromCoroutine(self.client().send(sample_message(), TOKEN))
            self.clock.advance(10)
        self.successResultOf(d)
        [event] = events
        self.assertEqual((event["reason"], event["elapsed"]), ("timeout", 10.0))

    def test_dialect_bug(self) -> None:
        """
        A dialect that cannot read an answer is logged; a 2xx stays
        accepted, anything else is a temporary failure.
        """

        class Broken(type(get_dialect("native"))):  # type: ignore[misc]
            def message_id(self, answer: object) -> str:
                raise RuntimeError("bug")

            def error_text(self, answer: object) -> str:
                raise RuntimeError("bug")

        client = UpstreamClient(
            self.clock, UpstreamConfig(), Broken(), http=StubTreq(self.upstream)
        )
        self.upstream.enqueue(200, {"id": "x"})
        self.upstream.enqueue(422, {"error": "x"})
        self.assertEqual(self.send(client), Accepted(""))
        self.assertEqual(self.send(client), TEMPORARY_FAILURE)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 2)

    def test_close_without_pool(self) -> None:
        """
        With an injected client there is no pool to close.
        """
        self.assertIsNone(self.successResultOf(self.client().close()))


class _CountingSite(Site):
    """
    A site that counts the connections it accepted.
    """

    connections = 0

    def buildProtocol(self, addr: IAddress | None) -> Any:  # the channel's type is private
        self.connections += 1
        return super().buildProtocol(addr)


class RealSocketTests(TestCase):
    """
    L{make_client} over real loopback sockets.
    """

    timeout = 20

    def listen(self, factory: IProtocolFactory) -> str:
        """
        Listen with C{factory} on a free 127.0.0.1 port until the test ends.

        @return: The upstream URL on that port.
        """
        server = TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1")
        port = self.successResultOf(server.listen(factory))
        self.addCleanup(port.stopListening)
        address = port.getHost()
        assert isinstance(address, IPv4Address)
        return f"http://127.0.0.1:{address.port}/send"

    def serve(self) -> tuple[FakeUpstream, _CountingSite, str]:
        upstream = FakeUpstream()
        site = _CountingSite(upstream)
        return upstream, site, self.listen(site)

    def client(self, url: str, timeout: float = 10.0) -> UpstreamClient:
        client = make_client(reactor, UpstreamConfig(url=url, timeout=timeout))
        self.addCleanup(lambda: deferLater(reactor, 0.05, lambda: None))
        self.addCleanup(client.close)
        return client

    @async_test
    async def test_large_message_and_connection_reuse(self) -> None:
        """
        A large body arrives intact, and the second message reuses the
        pooled connection.
        """
        upstream, site, url = self.serve()
        client = self.client(url)
        big = bytes(range(256)) * 1000
        message = sample_message(
            attachments=(Attachment("big.bin", "application/octet-stream", big),)
        )
        first = await client.send(message, TOKEN)
        second = await client.send(sample_message(), TOKEN)
        self.assertEqual((first, second), (Accepted("fake-1"), Accepted("fake-2")))
        content = upstream.requests[0].json["attachments"][0]["content"]
        self.assertEqual(b64decode(content), big)
        self.assertEqual(
            upstream.requests[0].header("Content-Length"), str(len(upstream.requests[0].body))
        )
        self.assertEqual(site.connections, 1)

    @async_test
    async def test_cookies_never_kept_and_host_sent_every_time(self) -> None:
        """
        A C{Set-Cookie} of the upstream is never sent back, and every
        request carries the C{Host} header and reaches the configured path
        (the agent parses the URL and builds its endpoint once).
        """
        upstream, site, url = self.serve()
        upstream.enqueue(200, {"id": "c-1"}, headers={"Set-Cookie": "session=abc; Path=/"})
        client = self.client(url)
        first = await client.send(sample_message(), TOKEN)
        second = await client.send(sample_message(), TOKEN)
        self.assertEqual((first, second), (Accepted("c-1"), Accepted("fake-2")))
        host = url.split("/")[2]
        for request in upstream.requests:
            self.assertIsNone(request.header("Cookie"))
            self.assertEqual(request.header("Host"), host)
            self.assertEqual(request.path, "/send")
        self.assertEqual(site.connections, 1)

    @async_test
    async def test_connection_refused(self) -> None:
        """
        A closed port is a temporary failure.
        """
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        client = self.client(f"http://127.0.0.1:{port}/send")
        with capturedLogs() as events:
            self.assertEqual(await client.send(sample_message(), TOKEN), TEMPORARY_FAILURE)
        [event] = [e for e in events if e["log_namespace"] == "relayd.upstream"]
        self.assertIn("ConnectionRefusedError", event["reason"])

    @async_test
    async def test_timeout(self) -> None:
        """
        An upstream that never answers is a temporary failure after the
        timeout, and the connection is dropped.
        """
        upstream, site, url = self.serve()
        upstream.enqueue(hang=True)
        client = self.client(url, timeout=0.3)
        self.assertEqual(await client.send(sample_message(), TOKEN), TEMPORARY_FAILURE)
        await deferLater(reactor, 0.05, lambda: None)
        self.assertTrue(upstream.pending[0]._disconnected)

    def scripted(self, answer: bytes, close: bool) -> str:
        """
        Serve C{answer} as the raw bytes of every answer, then close the
        connection or keep it open.
        """
        from twisted.internet.protocol import Factory, Protocol

        class Scripted(Protocol):
            def dataReceived(self, data: bytes) -> None:
                assert self.transport is not None
                self.transport.write(answer)
                if close:
                    self.transport.loseConnection()

        return self.listen(Factory.forProtocol(Scripted))

    @async_test
    async def test_2xx_cut_short_is_accepted(self) -> None:
        """
        A 2xx whose body never completes is still accepted: the upstream
        took the message, retrying would send it twice.
        """
        url = self.scripted(b'HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{"id":', close=False)
        client = self.client(url, timeout=0.3)
        with capturedLogs() as events:
            self.assertEqual(await client.send(sample_message(), TOKEN), Accepted(""))
        ours = [e for e in events if e["log_namespace"] == "relayd.upstream"]
        self.assertEqual((ours[0]["reason"], ours[0]["status"]), ("timeout", 200))

    @async_test
    async def test_rejection_cut_short_keeps_status(self) -> None:
        """
        A rejection whose body is cut short is still a rejection.
        """
        url = self.scripted(
            b'HTTP/1.1 422 Unprocessable\r\nContent-Length: 100\r\n\r\n{"error":"x', close=True
        )
        client = self.client(url)
        self.assertEqual(
            await client.send(sample_message(), TOKEN),
            Reply(550, "5.6.0", "Message rejected by upstream"),
        )

    @async_test
    async def test_garbage_answer(self) -> None:
        """
        An answer that is not HTTP is a temporary failure.
        """
        from twisted.internet.protocol import Factory, Protocol

        class Garbage(Protocol):
            def dataReceived(self, data: bytes) -> None:
                assert self.transport is not None
                self.transport.write(b"SMTP? 220 hello\r\n\r\n")
                self.transport.loseConnection()

        client = self.client(self.listen(Factory.forProtocol(Garbage)))
        self.assertEqual(await client.send(sample_message(), TOKEN), TEMPORARY_FAILURE)

    @async_test
    async def test_rejection_over_socket(self) -> None:
        """
        An error answer is read and mapped over a real connection.
        """
        upstream, site, url = self.serve()
        upstream.enqueue(401, {"error": "Unknown token"})
        client = self.client(url)
        self.assertEqual(
            await client.send(sample_message(), TOKEN), Reply(554, "5.7.1", "Unknown token")
        )
        self.assertEqual(json.loads(upstream.last.body)["subject"], "Café order #42")


class ParsedURITests(SynchronousTestCase):
    def test_url_is_encoded_once(self) -> None:
        """
        The upstream URL is IDNA-encoded at start-up; treq's per-request
        conversion then returns it unchanged.
        """
        from relayd.upstream import _ParsedURI

        url = _ParsedURI.parse("https://bücher.example/v1/send?x=1")
        self.assertEqual(url.to_text(), "https://xn--bcher-kva.example/v1/send?x=1")
        self.assertIs(url.to_uri(), url)


KEY = "87a73aa4-df80-8f4b-a629-9be219685a1e"


class PreparedRequestTests(SynchronousTestCase):
    """
    L{UpstreamClient.prepare} and L{UpstreamClient.post_prepared} over
    L{StubTreq}.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.upstream = FakeUpstream()

    def client(self, dialect: str = "native", **config: object) -> UpstreamClient:
        settings: dict[str, object] = {"url": "https://api.example.com/v1/send", "timeout": 10.0}
        settings.update(config)
        return UpstreamClient(
            self.clock,
            UpstreamConfig(**settings),  # type: ignore[arg-type]
            get_dialect(dialect),
            http=StubTreq(self.upstream),
        )

    def post(self, client: UpstreamClient, request: PreparedRequest) -> object:
        return self.successResultOf(Deferred.fromCoroutine(client.post_prepared(request)))

    def test_prepare_builds_the_whole_request(self) -> None:
        """
        C{prepare} gives the body, every header (the key in
        C{Idempotency-Key} for C{native}), the size and the key; the
        upstream gets exactly those.
        """
        client = self.client()
        request = client.prepare(sample_message(), TOKEN, KEY)
        self.assertEqual(request.body, get_dialect("native").body(sample_message()))
        self.assertEqual(request.size, len(request.body))
        self.assertEqual((request.idempotency_key, request.carries_key), (KEY, True))
        self.assertEqual(
            dict(request.headers),
            {
                "Content-Type": "application/json",
                "Accept": "application/json",
                "User-Agent": f"relayd/{__version__}",
                "Authorization": f"Bearer {TOKEN}",
                "Idempotency-Key": KEY,
            },
        )
        self.assertEqual(self.upstream.requests, [])
        self.upstream.enqueue(200, {"id": "m-1"})
        self.assertEqual(self.post(client, request), Accepted("m-1"))
        sent = self.upstream.last
        self.assertEqual(sent.body, request.body)
        for name, value in request.headers.items():
            self.assertEqual(sent.header(name), value, name)

    def test_no_key_no_header(self) -> None:
        """
        Without a key, or for a dialect whose API documents none, no
        C{Idempotency-Key} is sent.
        """
        plain = self.client().prepare(sample_message(), TOKEN, None)
        self.assertNotIn("Idempotency-Key", plain.headers)
        self.assertFalse(plain.carries_key)
        postmark = self.client("postmark").prepare(sample_message(), TOKEN, KEY)
        self.assertNotIn("Idempotency-Key", postmark.headers)
        self.assertEqual((postmark.idempotency_key, postmark.carries_key), (KEY, False))

    def test_prepare_refuses_before_sending(self) -> None:
        """
        A message the dialect cannot carry raises L{Refused} from
        C{prepare}.
        """
        client = self.client("postmark")
        error = self.assertRaises(
            Refused, client.prepare, sample_message(raw_only=True), TOKEN, KEY
        )
        self.assertEqual(error.reply.code, 554)
        self.assertEqual(self.upstream.requests, [])

    def test_dialect_headers_replace_defaults(self) -> None:
        """
        The dialect's C{Content-Type} and C{Authorization} replace the
        client's (Mailgun: multipart and HTTP Basic C{api:<key>}).
        """
        request = self.client("mailgun").prepare(sample_message(), TOKEN, KEY)
        names = [n.lower() for n in request.headers]
        self.assertEqual(len(names), len(set(names)))
        self.assertTrue(request.headers["Content-Type"].startswith("multipart/form-data;"))
        self.assertEqual(
            request.headers["Authorization"],
            "Basic " + b64encode(f"api:{TOKEN}".encode()).decode(),
        )

    def test_ses_signs_with_the_reactor_time(self) -> None:
        """
        SES requests are signed at the reactor's time.
        """
        self.clock.advance(1_700_000_000)
        request = self.client("ses").prepare(sample_message(), "AKID:secret", KEY)
        self.assertEqual(request.headers["X-Amz-Date"], "20231114T221320Z")
        self.assertTrue(request.headers["Authorization"].startswith("AWS4-HMAC-SHA256 "))

    def test_deadline(self) -> None:
        """
        The request waits C{deadline} seconds when given, else
        C{upstream.timeout}; then it is a temporary failure, maybe sent.
        """
        client = self.client()
        request = client.prepare(sample_message(), TOKEN, KEY)
        self.upstream.enqueue(hang=True)
        d = Deferred.fromCoroutine(client.post_prepared(request, deadline=45.0))
        self.clock.advance(44.9)
        self.assertNoResult(d)
        self.clock.advance(0.1)
        self.assertEqual(self.successResultOf(d), TEMPORARY_FAILURE)
        self.upstream.enqueue(hang=True)
        d = Deferred.fromCoroutine(client.post_prepared(request))
        self.clock.advance(10)
        self.assertEqual(self.successResultOf(d), TEMPORARY_FAILURE)

    def test_retry_after_seconds(self) -> None:
        """
        A 429 or 503 with C{Retry-After} in seconds says when to retry.
        """
        client = self.client()
        cases = [
            (
                429,
                "30",
                Reply(451, "4.7.1", "Upstream rate limit reached, try again in 30 seconds"),
            ),
            (429, "1", Reply(451, "4.7.1", "Upstream rate limit reached, try again in 1 second")),
            (503, "120", Reply(451, "4.3.0", "Upstream unavailable, try again in 120 seconds")),
            (429, "soon", Reply(451, "4.7.1", "Upstream rate limit reached, try again later")),
            (503, "", TEMPORARY_FAILURE),
            (500, "30", TEMPORARY_FAILURE),
        ]
        for status, value, expected in cases:
            self.upstream.enqueue(status, {"error": "slow down"}, headers={"Retry-After": value})
            request = client.prepare(sample_message(), TOKEN, KEY)
            self.assertEqual(self.post(client, request), expected, (status, value))

    def test_retry_after_http_date(self) -> None:
        """
        A C{Retry-After} HTTP date is counted from the reactor's time.
        """
        self.clock.advance(1_700_000_000)  # Tue, 14 Nov 2023 22:13:20 GMT
        client = self.client()
        self.upstream.enqueue(429, headers={"Retry-After": "Tue, 14 Nov 2023 22:14:05 GMT"})
        self.assertEqual(
            self.post(client, client.prepare(sample_message(), TOKEN, KEY)),
            Reply(451, "4.7.1", "Upstream rate limit reached, try again in 45 seconds"),
        )
        self.upstream.enqueue(503, headers={"Retry-After": "Tue, 14 Nov 2023 22:00:00 GMT"})
        self.assertEqual(
            self.post(client, client.prepare(sample_message(), TOKEN, KEY)),
            Reply(451, "4.3.0", "Upstream unavailable, try again in 0 seconds"),
        )

    def test_answer_headers_reach_the_dialect(self) -> None:
        """
        SendGrid's id is read from the answer's C{X-Message-Id} header.
        """
        client = self.client("sendgrid")
        self.upstream.enqueue(202, body=b"", headers={"X-Message-Id": "sg-77"})
        result = self.post(client, client.prepare(sample_message(), TOKEN, KEY))
        self.assertEqual(result, Accepted("sg-77"))

    def test_idle_timeout(self) -> None:
        """
        The pool closes idle connections after C{upstream.idle_timeout}
        seconds (4 by default); the value must be positive.
        """
        self.assertEqual(make_pool(self.clock, UpstreamConfig()).cachedConnectionTimeout, 4.0)
        pool = make_pool(self.clock, UpstreamConfig(idle_timeout=1.5, max_connections=3))
        self.assertIsInstance(pool, UpstreamPool)
        self.assertEqual((pool.cachedConnectionTimeout, pool.maxPersistentPerHost), (1.5, 3))
        self.assertFalse(pool.retryAutomatically)
        error = self.assertRaises(ConfigError, UpstreamConfig, idle_timeout=0.0)
        self.assertEqual(str(error), "upstream.idle_timeout: expected more than 0 seconds")


class _Connection:
    """
    A pooled connection whose request fails with C{error} (or answers).
    """

    def __init__(self, error: Exception | None = None) -> None:
        self.error = error
        self.requests: list[Any] = []

    def request(self, request: Any) -> Deferred[Any]:
        self.requests.append(request)
        if self.error is not None:
            return fail(self.error)
        return succeed("response")


class _Request:
    def __init__(self, producer: Any) -> None:
        self.bodyProducer = producer


class StaleRetryTests(SynchronousTestCase):
    """
    L{_StaleRetry}: which failures of a reused connection are sent again on
    a fresh one.
    """

    def attempt(self, error: Exception, replayable: bool) -> tuple[object, int]:
        """
        @return: The result, and how many requests the fresh connection got.
        """
        fresh = _Connection()
        wrapper = _StaleRetry(_Connection(error), lambda: succeed(fresh))
        request = _Request(BytesProducer(b"{}", replayable=replayable))
        d = wrapper.request(request)
        if fresh.requests:
            self.assertIs(fresh.requests[0], request)
            return self.successResultOf(d), len(fresh.requests)
        return self.failureResultOf(d).value, 0

    def test_not_sent_is_always_retried(self) -> None:
        """
        L{RequestNotSent}: nothing was written, the request goes again.
        """
        self.assertEqual(self.attempt(RequestNotSent(), False), ("response", 1))

    def test_maybe_sent_is_retried_only_with_the_key(self) -> None:
        """
        A request that may have been written is sent again only when it
        carries the idempotency key.
        """
        for error in (
            ResponseNeverReceived([Failure(ConnectionDone())]),
            RequestTransmissionFailed([Failure(ConnectionDone())]),
        ):
            self.assertEqual(self.attempt(error, True), ("response", 1))
            result, retried = self.attempt(error, False)
            self.assertEqual((result, retried), (error, 0))

    def test_cancelled_or_answered_is_not_retried(self) -> None:
        """
        A request cancelled by the deadline, or that got part of an answer,
        is not sent again.
        """
        cancelled = ResponseNeverReceived([Failure(CancelledError())])
        self.assertEqual(self.attempt(cancelled, True), (cancelled, 0))
        partial = ResponseFailed([Failure(ConnectionDone())])
        self.assertEqual(self.attempt(partial, True), (partial, 0))


class NotSentTests(TestCase):
    """
    L{NotSent} over real sockets: what certainly never left.
    """

    timeout = 20

    @async_test
    async def test_connection_refused_is_not_sent(self) -> None:
        """
        A closed port: C{post_prepared} says L{NotSent} with C{451 4.3.0},
        and logs it as not sent; C{send} keeps giving the plain reply.
        """
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        client = make_client(reactor, UpstreamConfig(url=f"http://127.0.0.1:{port}/send"))
        self.addCleanup(client.close)
        request = client.prepare(sample_message(), TOKEN, KEY)
        with capturedLogs() as events:
            self.assertEqual(await client.post_prepared(request), NotSent(TEMPORARY_FAILURE))
        [event] = [e for e in events if e["log_namespace"] == "relayd.upstream"]
        self.assertEqual(event["sent"], "not sent")
        self.assertNotIn(TOKEN, repr(events))

    @async_test
    async def test_lost_after_writing_is_maybe_sent(self) -> None:
        """
        A connection reset after the request was read is not L{NotSent}:
        the upstream may have taken the message.
        """
        upstream = FaultUpstream(reactor, "reset_after_read")
        upstream.start()
        self.addCleanup(upstream.stop)
        client = make_client(reactor, UpstreamConfig(url=upstream.url, timeout=5.0))
        self.addCleanup(client.close)
        result = await client.post_prepared(client.prepare(sample_message(), TOKEN, KEY))
        self.assertEqual(result, TEMPORARY_FAILURE)
        self.assertEqual(len(upstream.accepted), 1)


class StaleConnectionTests(TestCase):
    """
    Stale pooled connections end to end, against L{FaultUpstream}.
    """

    timeout = 60

    @async_test
    async def test_close_after_each_never_451(self) -> None:
        """
        An upstream that closes every keep-alive connection after its
        answer: 100 messages, one after the other, each accepted once,
        none gets a C{451}.
        """
        upstream = FaultUpstream(reactor, "close_after_each", honour_key=True)
        upstream.start()
        self.addCleanup(upstream.stop)
        client = make_client(reactor, UpstreamConfig(url=upstream.url, timeout=5.0))
        self.addCleanup(client.close)
        results = []
        for i in range(100):
            message = sample_message(subject=f"message {i}")
            key = f"{KEY[:-3]}{i:03d}"
            results.append(await client.post_prepared(client.prepare(message, TOKEN, key)))
        self.assertEqual([r for r in results if not isinstance(r, Accepted)], [])
        self.assertEqual(upstream.subjects(), [f"message {i}" for i in range(100)])

    @async_test
    async def test_idle_connection_closed_by_relayd(self) -> None:
        """
        After C{upstream.idle_timeout} seconds idle, relayd closes the
        pooled connection itself: the next message opens a new one.
        """
        upstream = FaultUpstream(reactor, "ok")
        upstream.start()
        self.addCleanup(upstream.stop)
        client = make_client(reactor, UpstreamConfig(url=upstream.url, idle_timeout=0.2))
        self.addCleanup(client.close)
        for pause in (0.0, 0.05, 0.4):
            await deferLater(reactor, pause, lambda: None)
            result = await client.post_prepared(client.prepare(sample_message(), TOKEN, KEY))
            self.assertIsInstance(result, Accepted)
        self.assertEqual(upstream.connections, 2)
