# -*- test-case-name: tests.test_upstream -*-
"""
The upstream client: one L{OutboundMessage} in, one JSON POST to the
upstream API (treq over a persistent connection pool), one typed
L{UpstreamResult} out.

The request's format and the reading of the answer belong to the dialect
(L{relayd.dialects}); this module owns the HTTP exchange: headers, the
overall timeout, the bounded read of the answer, and turning every network
problem into a temporary failure.
"""

from __future__ import annotations

from http.cookiejar import CookieJar, DefaultCookiePolicy
from typing import TYPE_CHECKING, Any

from hyperlink import EncodedURL
from treq.client import HTTPClient
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IConsumer
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import Agent, HTTPConnectionPool, ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.iweb import IBodyProducer, IResponse
from zope.interface import implementer

from relayd import __version__, events
from relayd.dialects import get_dialect
from relayd.interfaces import IDialect
from relayd.reply import TEMPORARY_FAILURE
from relayd.result import Accepted, UpstreamResult

try:
    from treq.cookies import IndexableCookieJar as _JarClass
except ImportError:  # pragma: no cover (older treq)
    _JarClass = CookieJar  # type: ignore[misc,assignment]

if TYPE_CHECKING:
    from relayd.config import UpstreamConfig
    from relayd.message import OutboundMessage

__all__ = [
    "BytesProducer",
    "MAX_ANSWER",
    "UpstreamClient",
    "make_client",
    "make_http_client",
    "make_pool",
]

log = Logger()

#: At most this many bytes of an answer's body are kept; the rest is read
#: and discarded, so the connection can go back to the pool.
MAX_ANSWER = 64 * 1024

#: Seconds an idle persistent connection stays in the pool.
IDLE_CONNECTION_TIMEOUT = 110

USER_AGENT = f"relayd/{__version__}"


@implementer(IBodyProducer)
class BytesProducer:
    """
    A request body already in memory, written in one C{write}.

    treq adapts C{bytes} to L{twisted.web.client.FileBodyProducer}, which
    copies 64 KiB per reactor iteration through a cooperator: several
    iterations and copies per message.  This writes the whole body at once;
    the transport buffers it.

    @ivar length: The body's length in bytes (sent as C{Content-Length}).
    """

    def __init__(self, body: bytes) -> None:
        """
        @param body: The whole request body.
        """
        self._body = body
        self.length = len(body)

    def startProducing(self, consumer: IConsumer) -> Deferred[None]:
        """
        Write the body.

        @param consumer: The request's body consumer.
        @return: An already fired L{Deferred}.
        """
        consumer.write(self._body)
        return succeed(None)

    def pauseProducing(self) -> None:
        """
        Nothing to pause: everything was written at once.
        """

    def resumeProducing(self) -> None:
        """
        Nothing to resume.
        """

    def stopProducing(self) -> None:
        """
        Nothing to stop.
        """


def make_pool(reactor: Any, config: UpstreamConfig) -> HTTPConnectionPool:
    """
    Build the persistent connection pool for the upstream: up to
    C{config.max_connections} idle connections per host, each kept
    L{IDLE_CONNECTION_TIMEOUT} seconds.

    @param reactor: The reactor.
    @param config: The C{[upstream]} table.
    @return: The pool.
    """
    pool = HTTPConnectionPool(reactor, persistent=True)
    pool.maxPersistentPerHost = config.max_connections
    pool.cachedConnectionTimeout = IDLE_CONNECTION_TIMEOUT
    return pool


def make_http_client(reactor: Any, pool: HTTPConnectionPool, connect_timeout: float) -> HTTPClient:
    """
    Build the treq client L{UpstreamClient} uses by default.

      - An L{Agent} over C{pool}; HTTPS certificates are verified as a
        browser would (the L{Agent} default).
      - C{bytes} request bodies become a L{BytesProducer}.
      - A cookie jar that stores nothing: one client serves many tokens,
        and a cookie set for one must never travel with another.

    @param reactor: The reactor (L{IReactorTime}, L{IReactorTCP}, ...).
    @param pool: The connection pool (see L{make_pool}).
    @param connect_timeout: Seconds to wait for a TCP connection.
    @return: The client.
    """
    agent = Agent(reactor, connectTimeout=connect_timeout, pool=pool)
    jar = _JarClass(policy=DefaultCookiePolicy(allowed_domains=[]))
    return HTTPClient(agent, cookiejar=jar, data_to_body_producer=BytesProducer)


class _BoundedBody(Protocol):
    """
    Collect the first C{limit} bytes of a response body into C{sink},
    discard the rest, fire C{finished} when the body ends.
    """

    def __init__(self, sink: bytearray, limit: int, finished: Deferred[None]) -> None:
        self.sink = sink
        self.limit = limit
        self.finished = finished

    def dataReceived(self, data: bytes) -> None:
        room = self.limit - len(self.sink)
        if room > 0:
            self.sink += data[:room]

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.finished.called:
            return
        if reason.check(ResponseDone, PotentialDataLoss):
            self.finished.callback(None)
        else:
            self.finished.errback(reason)


def _read_body(response: IResponse, sink: bytearray, limit: int) -> Deferred[None]:
    """
    Read C{response}'s body, keeping at most C{limit} bytes in C{sink}.

    @return: A L{Deferred} that fires when the body is complete; cancelling
        it closes the connection (the rest of the answer is not wanted, and
        the connection cannot serve another request before it ends).
    """
    protocol: _BoundedBody

    def cancel(d: Deferred[None]) -> None:
        # The body's transport is a proxy to the connection; it offers
        # loseConnection (twisted.web._newclient.TransportProxyProducer),
        # other IResponse implementations may offer abortConnection.
        transport = protocol.transport
        close = getattr(transport, "abortConnection", None) or getattr(
            transport, "loseConnection", None
        )
        if close is not None:
            close()

    finished: Deferred[None] = Deferred(cancel)
    protocol = _BoundedBody(sink, limit, finished)
    response.deliverBody(protocol)
    return finished


def _describe(error: Exception, timed_out: bool, token: str) -> str:
    """
    Say in one line why a request got no (complete) answer, for the log.

    @param error: What the request raised.
    @param timed_out: The timeout cancelled it.
    @param token: The client's token, removed from the text just in case.
    @return: For example C{"ConnectionRefusedError: Connection was refused
        by other side: 111: Connection refused."}.
    """
    if timed_out:
        return "timeout"
    reasons = getattr(error, "reasons", None)  # ResponseFailed and subclasses
    if reasons:
        detail = "; ".join(str(r.getErrorMessage()) for r in reasons)
    else:
        detail = str(error)
    text = f"{type(error).__name__}: {detail}"
    if token:
        text = text.replace(token, "<token>")
    return " ".join(text.split())[:300]


class _Exchange:
    """
    What one request got before it ended, however it ended.

    @ivar status: The answer's HTTP status, once its headers arrived.
    @ivar body: The (bounded) body read so far.
    @ivar timed_out: The timeout cancelled the request.
    """

    def __init__(self) -> None:
        self.status: int | None = None
        self.body = bytearray()
        self.timed_out = False


class _ParsedURI(EncodedURL):
    """
    The upstream URL, parsed and IDNA-encoded once at start-up.

    treq parses and IDNA-encodes the URL it is given on every request
    (C{EncodedURL.from_text(...).to_uri()}), which costs more than the
    rest of building the request.  An instance of this class is already a
    URI, so converting it again returns it unchanged.
    """

    @classmethod
    def parse(cls, url: str) -> _ParsedURI:
        """
        @param url: The configured C{upstream.url}.
        @return: Its URI form (IRI host names IDNA-encoded, RFC 3987).
        """
        uri = EncodedURL.from_text(url).to_uri()
        parsed = cls.from_text(uri.to_text())
        assert isinstance(parsed, cls)
        return parsed

    def to_uri(self) -> _ParsedURI:  # type: ignore[override]
        return self


class UpstreamClient:
    """
    Sends messages to the upstream API.

    @ivar http: The treq-like HTTP client (C{post(url, data=, headers=,
        ...)}), for example L{treq.testing.StubTreq} in tests.
    """

    def __init__(
        self,
        reactor: Any,
        config: UpstreamConfig,
        dialect: IDialect,
        http: Any = None,
    ) -> None:
        """
        @param reactor: Provides L{IReactorTime} (timeouts, elapsed time);
            with C{http=None}, also what L{Agent} needs (L{IReactorTCP}...).
        @param config: The C{[upstream]} table: URL, timeout, token header.
        @param dialect: The upstream's request and answer format.
        @param http: A treq-like client; L{None} builds one with
            L{make_pool} and L{make_http_client}.  A custom L{HTTPClient} should use
            C{data_to_body_producer=BytesProducer}: bodies are passed as
            C{bytes}.
        """
        self._reactor = reactor
        self._config = config
        self._dialect = dialect
        self._pool: HTTPConnectionPool | None = None
        if http is None:
            self._pool = make_pool(reactor, config)
            http = make_http_client(reactor, self._pool, config.timeout)
        self.http = http
        self._url = _ParsedURI.parse(config.url)
        self._header = config.token_header or dialect.token_header
        self._format = config.token_format or dialect.token_format

    def _headers(self, token: str) -> dict[str, list[str]]:
        return {
            "Content-Type": ["application/json"],
            "Accept": ["application/json"],
            "User-Agent": [USER_AGENT],
            self._header: [self._format.replace("{token}", token)],
        }

    async def _post(self, body: bytes, token: str, exchange: _Exchange) -> None:
        response = await self.http.post(
            self._url,
            data=body,
            headers=self._headers(token),
            allow_redirects=False,
            unbuffered=True,
            reactor=self._reactor,
        )
        exchange.status = response.code
        await _read_body(response, exchange.body, MAX_ANSWER)

    def encode(self, message: OutboundMessage) -> bytes:
        """
        Build the request body for C{message} in the upstream's dialect.

        @param message: The message.
        @return: The body (JSON, UTF-8).
        @raise relayd.reply.Refused: When the dialect cannot
            carry this message.
        """
        return self._dialect.body(message)

    async def send(self, message: OutboundMessage, token: str) -> UpstreamResult:
        """
        L{encode} C{message}, then L{post} it.

        @param message: The message.
        @param token: The client's API token.
        @return: See L{post}.
        @raise relayd.reply.Refused: See L{encode}.
        """
        return await self.post(self.encode(message), token)

    async def post(self, body: bytes, token: str) -> UpstreamResult:
        """
        POST an encoded message to the upstream and say what it did with it.

        The request carries C{Content-Type: application/json}, C{Accept:
        application/json}, C{User-Agent: relayd/<version>} and the token
        header (C{upstream.token_header} / C{upstream.token_format}, else
        the dialect's).  Redirects are not followed.  C{upstream.timeout}
        seconds cover the whole exchange, connecting to reading the answer.

          - The answer's status is the upstream's verdict, read by the
            dialect (L{relayd.dialects.base.JSONDialect.result}), even when the
            answer's body then fails or times out: a 2xx is then
            L{Accepted} with an empty id, since retrying would send the
            message twice.
          - No answer at all (timeout, refused connection, DNS, TLS,
            garbage) is L{TEMPORARY_FAILURE}: C{451 4.3.0}.

        @param body: The request body, from L{encode}.
        @param token: The client's API token, sent to the upstream as is.
        @return: L{Accepted} or L{relayd.reply.Reply}; network problems never
            raise.
        """
        exchange = _Exchange()
        start = self._reactor.seconds()
        d = Deferred.fromCoroutine(self._post(body, token, exchange))

        def expire() -> None:
            exchange.timed_out = True
            d.cancel()

        timer = self._reactor.callLater(self._config.timeout, expire)
        error: Exception | None = None
        try:
            await d
        except Exception as e:
            error = e
        finally:
            if timer.active():
                timer.cancel()
            events.upstream(exchange, start, error, self._reactor)
        fields = {
            "dialect": self._dialect.name,
            "size": len(body),
            "elapsed": round(self._reactor.seconds() - start, 3),
        }
        if error is not None:
            reason = _describe(error, exchange.timed_out, token)
            if exchange.status is None:
                log.warn(
                    "upstream {dialect}: no answer after {elapsed}s: {reason}",
                    reason=reason,
                    **fields,
                )
                return TEMPORARY_FAILURE
            log.warn(
                "upstream {dialect}: answer {status} cut short after {elapsed}s: {reason}",
                status=exchange.status,
                reason=reason,
                **fields,
            )
        assert exchange.status is not None
        result = self._result(exchange.status, bytes(exchange.body))
        if isinstance(result, Accepted):
            # The delivery log line already says so at info level.
            log.debug(
                "upstream {dialect}: {status} accepted {message_id} in {elapsed}s",
                status=exchange.status,
                message_id=result.message_id,
                **fields,
            )
        else:
            log.info(
                "upstream {dialect}: {status} -> {code} {enhanced} {reply} in {elapsed}s",
                status=exchange.status,
                code=result.code,
                enhanced=result.status,
                reply=result.text,
                **fields,
            )
        return result

    def _result(self, status: int, body: bytes) -> UpstreamResult:
        """
        The dialect's reading of the answer; a dialect bug is logged and
        does not turn a 2xx into a retry.
        """
        try:
            return self._dialect.result(status, body)
        except Exception:
            log.failure("dialect {dialect} cannot read an answer", dialect=self._dialect.name)
            return Accepted("") if 200 <= status < 300 else TEMPORARY_FAILURE

    def close(self) -> Deferred[None]:
        """
        Close the idle pooled connections (on service stop).

        @return: A L{Deferred} that fires when they are closed.
        """
        if self._pool is None:
            return succeed(None)
        d: Deferred[None] = self._pool.closeCachedConnections()
        return d


def make_client(reactor: Any, config: UpstreamConfig) -> UpstreamClient:
    """
    Build the client for C{config}: its dialect and a pooled treq client.

    @param reactor: The reactor.
    @param config: The C{[upstream]} table.
    @return: The client.
    @raise relayd.config.ConfigError: For an unknown dialect.
    """
    return UpstreamClient(reactor, config, get_dialect(config.dialect))
