"""
Tests for L{relayd.httpagent}: the request the upstream gets on the wire
from L{make_client} (request line, headers, no cookies, a token that cannot
add a header), gzip answers decoded and redirects not followed on the
client's own agent stack (L{UpstreamHTTPClient}), treq's own path for any
other request, the headers encoded once (L{HeaderEncoder},
L{RequestHeaders}), and the deadline of an exchange (L{Exchange}).
"""

from __future__ import annotations

import gzip
from typing import Any

from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.http_headers import Headers, InvalidHeaderName
from twisted.web.iweb import IAgent
from zope.interface import implementer

from relayd import __version__
from relayd.answer import Exchange
from relayd.body import BytesProducer
from relayd.config import UpstreamConfig
from relayd.httpagent import (
    NO_COOKIES,
    HeaderEncoder,
    NoCookies,
    RequestHeaders,
    UpstreamHTTPClient,
)
from relayd.reply import TEMPORARY_FAILURE
from relayd.result import Accepted
from relayd.testing import async_test, sample_message
from relayd.upstream import UpstreamClient, _ParsedURI, make_client

TOKEN = "tok-3f9a-SECRET"
KEY = "87a73aa4-df80-8f4b-a629-9be219685a1e"


class _Wire(Protocol):
    """
    Record each raw request (head and body, by C{Content-Length}) and answer
    it with the next of the factory's raw answers.
    """

    def connectionMade(self) -> None:
        self.buffer = b""

    def dataReceived(self, data: bytes) -> None:
        factory: Any = self.factory
        self.buffer += data
        while b"\r\n\r\n" in self.buffer:
            head, rest = self.buffer.split(b"\r\n\r\n", 1)
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            if len(rest) < length:
                return
            factory.requests.append((head, rest[:length]))
            self.buffer = rest[length:]
            assert self.transport is not None
            self.transport.write(factory.answers.pop(0))


def _answer(status: bytes, body: bytes, *headers: bytes) -> bytes:
    lines = [b"HTTP/1.1 " + status, b"Content-Length: %d" % len(body), *headers]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


class WireTests(TestCase):
    """
    What L{make_client} sends and reads over a real loopback socket.
    """

    timeout = 20

    def serve(self, *answers: bytes, path: str = "/send") -> tuple[Any, UpstreamClient]:
        factory: Any = Factory.forProtocol(_Wire)
        factory.requests, factory.answers = [], list(answers)
        server = TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1")
        port = self.successResultOf(server.listen(factory))
        self.addCleanup(port.stopListening)
        address = port.getHost()
        assert isinstance(address, IPv4Address)
        url = f"http://127.0.0.1:{address.port}{path}"
        client = make_client(reactor, UpstreamConfig(url=url, timeout=5.0))
        self.addCleanup(lambda: deferLater(reactor, 0.05, lambda: None))
        self.addCleanup(client.close)
        return factory, client

    async def post(self, client: UpstreamClient, token: str = TOKEN) -> Any:
        return await client.post_prepared(client.prepare(sample_message(), token, KEY))

    @async_test
    async def test_request_on_the_wire(self) -> None:
        """
        Every request, the first and one on the reused connection, has the
        configured path and query, the defaults, the token, the key, the
        C{Host}, C{Accept-Encoding: gzip} and no cookie.
        """
        ok = _answer(b"200 OK", b'{"id":"w-1"}', b"Set-Cookie: s=1")
        factory, client = self.serve(ok, ok, path="/v1/send?region=eu")
        self.assertEqual(await self.post(client), Accepted("w-1"))
        self.assertEqual(await self.post(client), Accepted("w-1"))
        port = client._url.port
        assert port is not None
        for head, body in factory.requests:
            lines = head.split(b"\r\n")
            self.assertEqual(lines[0], b"POST /v1/send?region=eu HTTP/1.1")
            headers = dict(line.split(b": ", 1) for line in lines[1:])
            self.assertEqual(
                headers,
                {
                    b"Content-Type": b"application/json",
                    b"Accept": b"application/json",
                    b"User-Agent": f"relayd/{__version__}".encode(),
                    b"Authorization": f"Bearer {TOKEN}".encode(),
                    b"Idempotency-Key": KEY.encode(),
                    b"Accept-Encoding": b"gzip",
                    b"Host": b"127.0.0.1:%d" % port,
                    b"Content-Length": b"%d" % len(body),
                },
            )
            self.assertTrue(body.startswith(b"{"))

    @async_test
    async def test_token_cannot_add_a_header(self) -> None:
        """
        A line break in the token is sent as a space: it never starts a
        header of its own.
        """
        factory, client = self.serve(_answer(b"200 OK", b'{"id":"w-2"}'))
        self.assertEqual(await self.post(client, "tok\r\nX-Evil: 1"), Accepted("w-2"))
        lines = factory.requests[0][0].split(b"\r\n")
        self.assertIn(b"Authorization: Bearer tok X-Evil: 1", lines)
        self.assertFalse([line for line in lines if line.startswith(b"X-Evil")])

    @async_test
    async def test_gzip_answer_is_decoded(self) -> None:
        """
        An answer with C{Content-Encoding: gzip} is read decoded.
        """
        body = gzip.compress(b'{"id":"gz-1"}')
        factory, client = self.serve(_answer(b"200 OK", body, b"Content-Encoding: gzip"))
        self.assertEqual(await self.post(client), Accepted("gz-1"))

    @async_test
    async def test_redirect_not_followed(self) -> None:
        """
        A redirect is not followed: one request, a temporary failure.
        """
        moved = _answer(b"302 Found", b"", b"Location: http://127.0.0.1:1/steal")
        factory, client = self.serve(moved, _answer(b"200 OK", b'{"id":"never"}'))
        self.assertEqual(await self.post(client), TEMPORARY_FAILURE)
        self.assertEqual(len(factory.requests), 1)


class _Response:
    def __init__(self, code: int, headers: dict[bytes, list[bytes]]) -> None:
        self.code = code
        self.headers = Headers(headers)
        self.version = (b"HTTP", 1, 1)
        self.phrase = b""
        self.length = 0
        self.request = None
        self.previousResponse = None

    def deliverBody(self, protocol: Any) -> None:
        from twisted.python.failure import Failure
        from twisted.web.client import ResponseDone

        protocol.connectionLost(Failure(ResponseDone()))

    def setPreviousResponse(self, response: Any) -> None:
        self.previousResponse = response


@implementer(IAgent)
class _Agent:
    """
    Answers each request with the next response, recording what it got.
    """

    def __init__(self, *responses: _Response) -> None:
        self.responses = list(responses)
        self.requests: list[tuple[bytes, bytes, Headers | None, Any]] = []

    def request(
        self, method: bytes, uri: bytes, headers: Headers | None = None, bodyProducer: Any = None
    ) -> Deferred[Any]:
        self.requests.append((method, uri, headers, bodyProducer))
        return succeed(self.responses.pop(0))


URL = "http://api.example.com/send"


class UpstreamHTTPClientTests(SynchronousTestCase):
    """
    L{UpstreamHTTPClient}: relayd's requests on its own agent stack, any
    other through treq's L{HTTPClient.request}.
    """

    def client(self, *responses: _Response) -> tuple[_Agent, UpstreamHTTPClient]:
        agent = _Agent(*responses)
        return agent, UpstreamHTTPClient(agent, NoCookies(), BytesProducer)

    def test_relayd_request(self) -> None:
        """
        A relayd-shaped request reaches the agent once, with the caller's
        headers plus C{Accept-Encoding: gzip} (the caller's left unchanged),
        its body as a producer; the answer comes back as treq's response.
        """
        agent, http = self.client(_Response(302, {b"Location": [b"http://elsewhere/"]}))
        headers = RequestHeaders({b"Authorization": [b"Bearer x"]})
        d = http.post(
            _ParsedURI.parse(URL),
            data=b"{}",
            headers=headers,
            allow_redirects=False,
            unbuffered=True,
            reactor=reactor,  # type: ignore[arg-type]
            cookies=NO_COOKIES,
        )
        response = self.successResultOf(d)
        self.assertEqual(response.code, 302)
        self.assertTrue(callable(response.json))  # treq's response
        ((method, uri, sent, producer),) = agent.requests
        self.assertEqual((method, uri), (b"POST", URL.encode()))
        assert sent is not None
        self.assertEqual(sent.getRawHeaders(b"Accept-Encoding"), [b"gzip"])
        self.assertEqual(sent.getRawHeaders(b"Authorization"), [b"Bearer x"])
        self.assertIsNone(sent.getRawHeaders(b"Cookie"))
        self.assertFalse(headers.hasHeader(b"Accept-Encoding"))
        self.assertEqual(producer.length, 2)

    def test_other_requests_are_treqs(self) -> None:
        """
        A request that asks for what treq does beyond relayd's requests
        (here: following a redirect, C{303}: a C{GET} of its C{Location};
        headers as a dict) gets it.
        """
        agent, http = self.client(
            _Response(303, {b"Location": [b"http://api.example.com/other"]}),
            _Response(200, {}),
        )
        d = http.post(URL, data=b"{}", headers={"X-A": "1"}, allow_redirects=True)  # type: ignore[arg-type]
        self.assertEqual(self.successResultOf(d).code, 200)
        self.assertEqual(
            [(method, uri) for method, uri, _, _ in agent.requests],
            [(b"POST", URL.encode()), (b"GET", b"http://api.example.com/other")],
        )

    def test_jar_that_keeps_cookies_is_treqs(self) -> None:
        """
        With a jar that is not L{NoCookies}, every request is treq's (its
        cookie handling included).
        """
        from treq.cookies import IndexableCookieJar

        agent = _Agent(_Response(200, {b"Set-Cookie": [b"s=1; Path=/"]}), _Response(200, {}))
        http = UpstreamHTTPClient(agent, IndexableCookieJar(), BytesProducer)  # type: ignore[arg-type]
        for _ in range(2):
            d = http.post(
                _ParsedURI.parse(URL),
                data=b"{}",
                headers=RequestHeaders(),
                allow_redirects=False,
                unbuffered=True,
            )
            self.successResultOf(d)
        second = agent.requests[1][2]
        assert second is not None
        self.assertEqual(second.getRawHeaders(b"Cookie"), [b"s=1"])


class HeaderTests(SynchronousTestCase):
    """
    L{HeaderEncoder} and L{RequestHeaders} give what L{Headers} gives.
    """

    def test_encoder_matches_headers(self) -> None:
        """
        Known and unknown names and values are encoded as
        L{Headers.setRawHeaders} encodes them, in the same order.
        """
        encoder = HeaderEncoder({"Content-Type": "application/json", "x-lower": "a"})
        given = {
            "Content-Type": "application/json",
            "x-lower": "b",
            "authorization": "Bearer é\r\nX: 1",
            "X-Lower": "c",
        }
        expected = Headers()
        for name, value in given.items():
            expected.setRawHeaders(name, [value])
        encoded = encoder.encode(given)
        self.assertIsInstance(encoded, RequestHeaders)
        self.assertEqual(list(encoded.getAllRawHeaders()), list(expected.getAllRawHeaders()))

    def test_invalid_name_raises(self) -> None:
        self.assertRaises(InvalidHeaderName, HeaderEncoder({}).encode, {"Bad Name": "x"})
        self.assertRaises(InvalidHeaderName, HeaderEncoder, {"Bad\r\nName": "x"})

    def test_encoded_values_are_not_shared(self) -> None:
        """
        Adding to one request's header (as an agent does) changes neither
        the next request's nor a copy's.
        """
        encoder = HeaderEncoder({"Accept": "application/json"})
        first = encoder.encode({"Accept": "application/json"})
        copy = first.copy()
        first.addRawHeader(b"Accept", b"text/plain")
        copy.addRawHeader(b"Accept", b"image/png")
        self.assertEqual(
            encoder.encode({"Accept": "application/json"}).getRawHeaders(b"Accept"),
            [b"application/json"],
        )
        self.assertEqual(copy.getRawHeaders(b"Accept"), [b"application/json", b"image/png"])
        self.assertIsInstance(copy, RequestHeaders)


class ExchangeTests(SynchronousTestCase):
    """
    L{Exchange}: the deadline cancels what the exchange waits for.
    """

    def test_expire_cancels_what_is_awaited(self) -> None:
        exchange = Exchange()
        d: Deferred[None] = exchange.wait(Deferred())
        exchange.expire()
        self.failureResultOf(d, CancelledError)
        self.assertTrue(exchange.timed_out)
        self.assertIsNone(exchange.pending)

    def test_expire_with_nothing_awaited(self) -> None:
        exchange = Exchange()
        exchange.expire()
        self.assertTrue(exchange.timed_out)
