"""
Tests for L{relayd.upstream}: the request the upstream gets, every answer
mapped to a result, timeouts and network failures, over L{StubTreq} and
over real loopback sockets.
"""

from __future__ import annotations

import json
import socket
from base64 import b64decode
from typing import Any

from treq.testing import StubTreq
from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.interfaces import (
    IAddress,
    IConsumer,
    IProducer,
    IProtocolFactory,
)
from twisted.internet.task import Clock, deferLater
from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.iweb import IBodyProducer
from twisted.web.server import Site
from zope.interface import implementer
from zope.interface.verify import verifyObject

from relayd import __version__
from relayd.config import UpstreamConfig
from relayd.dialects import get_dialect
from relayd.message import Attachment
from relayd.reply import TEMPORARY_FAILURE, Refused, Reply
from relayd.result import Accepted
from relayd.testing import FakeUpstream, async_test, sample_message
from relayd.upstream import MAX_ANSWER, BytesProducer, UpstreamClient, make_client

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


class BytesProducerTests(SynchronousTestCase):
    """
    L{BytesProducer}.
    """

    def test_one_write(self) -> None:
        """
        The whole body is written at once and the result fires at once.
        """
        producer = BytesProducer(b"x" * 200_000)
        self.assertTrue(verifyObject(IBodyProducer, producer))
        self.assertEqual(producer.length, 200_000)
        consumer = _Consumer()
        self.assertIsNone(self.successResultOf(producer.startProducing(consumer)))
        self.assertEqual(consumer.writes, [b"x" * 200_000])
        producer.pauseProducing()
        producer.resumeProducing()
        producer.stopProducing()


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
