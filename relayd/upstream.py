# -*- test-case-name: tests.test_upstream -*-
"""
The upstream client: one L{OutboundMessage} in, one POST to the upstream
API (treq over a persistent connection pool), one typed L{UpstreamResult}
out.

The request's format and the reading of the answer belong to the dialect
(L{relayd.dialects}: its C{request} and C{answer} hooks); this module owns
the HTTP exchange in two steps: L{UpstreamClient.prepare} builds the whole
request (L{PreparedRequest}), L{UpstreamClient.post_prepared} sends it with
a deadline, reads a bounded answer, tells a request that certainly never
left (L{NotSent}) from one that may have (both with L{relayd.answer}),
retries once a request that met a stale pooled connection
(L{UpstreamPool}), and turns C{Retry-After} into the reply's text.  Network problems never raise.
The body goes out through L{relayd.body.BytesProducer} (re-exported here).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Hashable, Mapping
from typing import TYPE_CHECKING, Any

from attrs import frozen
from hyperlink import EncodedURL
from treq.client import HTTPClient
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web._newclient import (
    RequestNotSent,
    RequestTransmissionFailed,
    ResponseNeverReceived,
)
from twisted.web.client import HTTPConnectionPool

from relayd import __version__, events
from relayd.answer import Exchange as _Exchange
from relayd.answer import answer_headers as _answer_headers
from relayd.answer import credentials_in as _secrets
from relayd.answer import describe_failure as _describe
from relayd.answer import never_sent as _not_sent
from relayd.answer import read_body as _read_body
from relayd.body import BODY_CHUNK, BytesProducer
from relayd.config import ConfigError
from relayd.dialects import get_dialect
from relayd.dialects.base import Body, HTTPRequest, retry_after_seconds
from relayd.httpagent import NO_COOKIES as _NO_COOKIES
from relayd.httpagent import HeaderEncoder as _HeaderEncoder
from relayd.httpagent import NoCookies as _NoCookies
from relayd.httpagent import UpstreamAgent as _UpstreamAgent
from relayd.httpagent import UpstreamHTTPClient as _UpstreamHTTPClient
from relayd.interfaces import IDialect
from relayd.reply import TEMPORARY_FAILURE, Reply, upstream_retry_after
from relayd.result import Accepted, NotSent, UpstreamResult

if TYPE_CHECKING:
    from relayd.config import UpstreamConfig
    from relayd.message import OutboundMessage

__all__ = [
    "BODY_CHUNK",
    "BytesProducer",
    "MAX_ANSWER",
    "PreparedRequest",
    "UpstreamClient",
    "UpstreamPool",
    "make_client",
    "make_http_client",
    "make_pool",
]

log = Logger()

#: At most this many bytes of an answer's body are kept; the rest is read
#: and discarded, so the connection can go back to the pool.
MAX_ANSWER = 64 * 1024

USER_AGENT = f"relayd/{__version__}"

#: The headers of every request, before the token header and the
#: dialect's own (L{UpstreamClient.prepare}).
_DEFAULT_HEADERS = {
    "Content-Type": "application/json",
    "Accept": "application/json",
    "User-Agent": USER_AGENT,
}


class _StaleRetry:
    """
    A pooled (reused) connection that sends its one request again, once, on
    a fresh connection when the pooled one turns out to have been closed by
    the upstream (a keep-alive timeout racing the request).

    The request is retried when it failed before any byte of the answer
    arrived and was not cancelled, and
      - it was certainly not written (L{RequestNotSent}), or
      - it may have been written (L{RequestTransmissionFailed},
        L{ResponseNeverReceived}) and it carries the idempotency key
        (L{BytesProducer.replayable}).
    RFC 9112 section 9.3.1: a client must not retry a non-idempotent
    request automatically unless it knows the request is idempotent or was
    never applied; the key is that knowledge (Go's net/http treats a POST
    with an C{Idempotency-Key} header the same way).  Twisted's own retry
    (L{HTTPConnectionPool.retryAutomatically}) covers bodiless idempotent
    methods only.
    """

    def __init__(self, connection: Any, fresh: Callable[[], Deferred[Any]]) -> None:
        self._connection = connection
        self._fresh = fresh

    def __getattr__(self, name: str) -> Any:
        return getattr(self._connection, name)

    def request(self, request: Any) -> Deferred[Any]:
        """
        Send C{request}, retrying once (see the class docstring).

        @param request: A L{twisted.web._newclient.Request}.
        @return: A Deferred firing with the response.
        """
        d: Deferred[Any] = self._connection.request(request)

        def failed(reason: Failure) -> Any:
            if reason.value is None or not _stale(reason.value, request.bodyProducer):
                return reason
            log.info("upstream: pooled connection was closed; retrying on a fresh one")
            return self._fresh().addCallback(lambda connection: connection.request(request))

        return d.addErrback(failed)


def _stale(error: BaseException, producer: Any) -> bool:
    """
    @return: Whether a request that failed with C{error} on a reused
        connection may be sent again (see L{_StaleRetry}).
    """
    if isinstance(error, RequestNotSent):
        return True
    if not isinstance(error, (RequestTransmissionFailed, ResponseNeverReceived)):
        return False
    if any(r.check(CancelledError) for r in error.reasons):
        return False
    return bool(getattr(producer, "replayable", False))


class UpstreamPool(HTTPConnectionPool):
    """
    The persistent connection pool for the upstream: Twisted's, plus one
    retry on a fresh connection of a request that met a stale pooled
    connection (L{_StaleRetry}).
    """

    retryAutomatically = False

    def getConnection(self, key: Hashable, endpoint: IStreamClientEndpoint) -> Deferred[Any]:
        """
        See L{HTTPConnectionPool.getConnection}: a cached connection comes
        wrapped in L{_StaleRetry}, a new one as it is.
        """
        reused = any(c.state == "QUIESCENT" for c in self._connections.get(key, ()))
        d: Deferred[Any] = super().getConnection(key, endpoint)
        if not reused:
            return d
        return d.addCallback(
            lambda connection: _StaleRetry(connection, lambda: self._newConnection(key, endpoint))
        )


def make_pool(reactor: Any, config: UpstreamConfig) -> HTTPConnectionPool:
    """
    Build the persistent connection pool for the upstream: up to
    C{config.max_connections} idle connections per host, each closed after
    C{config.idle_timeout} seconds idle, before a typical upstream's own
    keep-alive timeout closes it under a request (see
    L{relayd.config.UpstreamConfig.idle_timeout}).

    @param reactor: The reactor.
    @param config: The C{[upstream]} table.
    @return: The pool (an L{UpstreamPool}).
    """
    pool = UpstreamPool(reactor, persistent=True)
    pool.maxPersistentPerHost = config.max_connections
    # Seconds: Twisted's callLater takes a float (the class default is 240).
    pool.cachedConnectionTimeout = config.idle_timeout  # type: ignore[assignment]
    return pool


def make_http_client(reactor: Any, pool: HTTPConnectionPool, connect_timeout: float) -> HTTPClient:
    """
    Build the treq client L{UpstreamClient} uses by default.

      - An L{Agent} over C{pool}; HTTPS certificates are verified as a
        browser would (the L{Agent} default); each URL is parsed and its
        endpoint built once (L{_UpstreamAgent}).
      - C{bytes} request bodies become a L{BytesProducer}.
      - A cookie jar that stores and sends nothing (L{_NoCookies}): one
        client serves many tokens, and a cookie set for one must never
        travel with another.

    @param reactor: The reactor (L{IReactorTime}, L{IReactorTCP}, ...).
    @param pool: The connection pool (see L{make_pool}).
    @param connect_timeout: Seconds to wait for a TCP connection.
    @return: The client.
    """
    agent = _UpstreamAgent(reactor, connectTimeout=connect_timeout, pool=pool)
    return _UpstreamHTTPClient(agent, cookiejar=_NoCookies(), data_to_body_producer=BytesProducer)


def _is_ip_literal(host: str) -> bool:
    """
    @return: Whether C{host} is an IPv4 or IPv6 address (RFC 3986 section
        3.2.2), not a name.
    """
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


@frozen
class PreparedRequest:
    """
    One upstream request, built whole before it is sent
    (L{UpstreamClient.prepare}).

    @ivar content: The request body: bytes, or a L{Body} written piece by
        piece (its base64 values encoded only then).
    @ivar headers: Every request header: name to value.
    @ivar idempotency_key: The transaction's key given to
        L{UpstreamClient.prepare}, or C{None}.
    @ivar carries_key: The request carries that key to the upstream (in the
        dialect's header or body field); C{False} when the dialect's API
        accepts none or there is no key.
    """

    content: bytes | Body
    headers: Mapping[str, str]
    idempotency_key: str | None = None
    carries_key: bool = False

    @property
    def body(self) -> bytes:
        """
        The request body as one C{bytes} (a copy when L{content} is a
        L{Body}).
        """
        content = self.content
        return content if isinstance(content, bytes) else bytes(content)

    @property
    def size(self) -> int:
        """
        The body's size in bytes.
        """
        return len(self.content)


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
        @return: Its URI form (IRI host names IDNA-encoded, RFC 3987; an
            IP literal such as C{[::1]} as it is: hyperlink would
            IDNA-encode it, and fail).
        @raise ConfigError: The URL cannot be parsed.
        """
        try:
            uri = EncodedURL.from_text(url)
            if not _is_ip_literal(uri.host):
                uri = uri.to_uri()
        except (ValueError, UnicodeError) as e:
            raise ConfigError(f"upstream.url: {url!r}: {e}") from None
        parsed = cls.from_text(uri.to_text())
        assert isinstance(parsed, cls)
        parsed._text = EncodedURL.to_text(parsed)
        return parsed

    _text: str | None = None

    def to_uri(self) -> _ParsedURI:  # type: ignore[override]
        return self

    def to_text(self, with_password: bool = False) -> str:
        """
        The URL's text, made once (treq asks for it on every request).
        """
        if with_password or self._text is None:
            return EncodedURL.to_text(self, with_password)
        return self._text


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
        @param reactor: Provides L{IReactorTime} (deadlines, elapsed time,
            the time SigV4 signs); with C{http=None}, also what L{Agent}
            needs (L{IReactorTCP}...).
        @param config: The C{[upstream]} table: URL, timeout, token header.
        @param dialect: The upstream's request and answer format.
        @param http: A treq-like client; L{None} builds one with
            L{make_pool} and L{make_http_client}.  A custom L{HTTPClient}
            should use C{data_to_body_producer=BytesProducer}: bodies are
            passed as C{bytes}.
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
        self._encoder = _HeaderEncoder(_DEFAULT_HEADERS)

    def _headers(self, token: str) -> dict[str, str]:
        headers = dict(_DEFAULT_HEADERS)
        headers[self._header] = self._format.replace("{token}", token)
        return headers

    def _build(
        self, message: OutboundMessage, token: str, idempotency_key: str | None, now: float
    ) -> HTTPRequest:
        """
        The dialect's request: its C{request} hook, else (an L{IDialect}
        without one) its C{body}.
        """
        hook = getattr(self._dialect, "request", None)
        if hook is None:
            return HTTPRequest(self._dialect.body(message))
        built: HTTPRequest = hook(message, token, self._config.url, now, idempotency_key)
        return built

    def prepare(
        self,
        message: OutboundMessage,
        token: str,
        idempotency_key: str | None,
        now: float | None = None,
    ) -> PreparedRequest:
        """
        Build the whole request for C{message} now: the dialect's body and
        headers (C{request} hook: authentication, content type, SES SigV4
        signing at the reactor's time, the idempotency key where the
        dialect's API accepts one, see C{docs/upstream-api.md}) over the
        client's defaults (C{Content-Type: application/json}, C{Accept:
        application/json}, C{User-Agent: relayd/<version>}, the token header
        of C{upstream.token_header} / C{upstream.token_format}, else the
        dialect's); a dialect header replaces a default of the same name
        (case-insensitive).

        @param message: The message.
        @param token: The client's API token, sent to the upstream as is.
        @param idempotency_key: The transaction's key
            (L{relayd.idempotency.idempotency_key}), or C{None}.
        @param now: The time to sign the request at (POSIX seconds), read
            from the reactor by a caller that prepares off the reactor
            thread; C{None}: the reactor's C{seconds()} now.  Nothing else
            here touches the reactor, so with C{now} given this may run in
            a worker thread.
        @return: The request, ready for L{post_prepared}.
        @raise relayd.reply.Refused: When the dialect cannot carry this
            message (nothing is sent).
        """
        if now is None:
            now = self._reactor.seconds()
        built = self._build(message, token, idempotency_key, now)
        headers = self._headers(token)
        for name, value in built.headers.items():
            for default in [h for h in headers if h.lower() == name.lower()]:
                del headers[default]
            headers[name] = value
        return PreparedRequest(built.content, headers, idempotency_key, built.carries_key)

    def encode(self, message: OutboundMessage) -> bytes:
        """
        Build the request body for C{message} in the upstream's dialect.

        @param message: The message.
        @return: The body (JSON, UTF-8, for a JSON dialect).
        @raise relayd.reply.Refused: When the dialect cannot
            carry this message.
        """
        return self._dialect.body(message)

    async def send(self, message: OutboundMessage, token: str) -> Accepted | Reply:
        """
        L{prepare} C{message} (without an idempotency key), then
        L{post_prepared} it.

        @param message: The message.
        @param token: The client's API token.
        @return: See L{post}.
        @raise relayd.reply.Refused: See L{prepare}.
        """
        return _plain(await self.post_prepared(self.prepare(message, token, None)))

    async def post(self, body: bytes, token: str) -> Accepted | Reply:
        """
        POST a body from L{encode} with the client's default headers (no
        dialect hook: a dialect that needs one is sent by L{send} or
        L{post_prepared}).

        @param body: The request body, from L{encode}.
        @param token: The client's API token, sent to the upstream as is.
        @return: As L{post_prepared}, a L{NotSent} given as its reply.
        """
        prepared = PreparedRequest(body, self._headers(token))
        return _plain(await self.post_prepared(prepared))

    async def _post(self, request: PreparedRequest, exchange: _Exchange) -> None:
        # Our own pool retries a keyed request (L{UpstreamPool}): it reads
        # that from the producer.  An injected client gets plain bytes.
        data: bytes | BytesProducer
        extra: dict[str, Any] = {}
        if self._pool is not None:
            data = BytesProducer(request.content, replayable=request.carries_key)
            # An empty jar of our own: treq would build and merge a new one
            # for every request.
            extra["cookies"] = _NO_COOKIES
        else:
            data = request.body
        sent = self.http.post(
            self._url,
            data=data,
            headers=self._encoder.encode(request.headers),
            allow_redirects=False,
            unbuffered=True,
            reactor=self._reactor,
            **extra,
        )
        if not isinstance(sent, Deferred):  # a treq-like client's coroutine
            sent = Deferred.fromCoroutine(sent)
        response = await exchange.wait(sent)
        exchange.status = response.code
        exchange.headers = _answer_headers(response)
        await exchange.wait(_read_body(response, exchange.body, MAX_ANSWER))
        exchange.pending = None

    async def post_prepared(
        self, request: PreparedRequest, deadline: float | None = None
    ) -> UpstreamResult:
        """
        POST a prepared request and say what the upstream did with it.

        Redirects are not followed.  C{deadline} seconds cover the whole
        exchange, connecting to reading the answer; a request that met a
        stale pooled connection is sent once more on a fresh one within it
        (L{UpstreamPool}).

          - The answer's status is the upstream's verdict, read by the
            dialect (its C{answer} hook, else C{result}), even when the
            answer's body then fails or times out: a 2xx is then
            L{Accepted} with an empty id, since retrying would send the
            message twice.
          - A C{429} or C{503} with C{Retry-After} (seconds or an HTTP
            date, RFC 9110 section 10.2.3) is C{451 4.7.1} (429) or
            C{451 4.3.0} (503) saying when to retry
            (L{relayd.reply.upstream_retry_after}).
          - No answer, and the request certainly never left (refused
            connection, DNS, TLS handshake, deadline while connecting):
            L{NotSent} of L{TEMPORARY_FAILURE}.
          - No answer, and the request may have been sent (timeout,
            connection lost, garbage): L{TEMPORARY_FAILURE}, C{451 4.3.0}.

        @param request: From L{prepare}.
        @param deadline: Seconds before the request is abandoned; C{None}:
            C{upstream.timeout}.  The delivery path passes a longer one
            (its late-answer window) and answers the SMTP client itself.
        @return: L{Accepted}, a L{Reply} or L{NotSent}; network problems
            never raise.
        """
        start = self._reactor.seconds()
        exchange, error = await self._exchange(request, deadline)
        events.upstream(exchange, start, error, self._reactor)
        fields = {
            "dialect": self._dialect.name,
            "size": request.size,
            "elapsed": round(self._reactor.seconds() - start, 3),
        }
        if error is not None:
            reason = _describe(error, exchange.timed_out, _secrets(request.headers))
            if exchange.status is None:
                return _no_answer(error, reason, fields)
            log.warn(
                "upstream {dialect}: answer {status} cut short after {elapsed}s: {reason}",
                status=exchange.status,
                reason=reason,
                **fields,
            )
        assert exchange.status is not None
        result = self._result(exchange.status, exchange.headers, bytes(exchange.body))
        _log_answer(exchange.status, result, fields)
        return result

    async def _exchange(
        self, request: PreparedRequest, deadline: float | None
    ) -> tuple[_Exchange, Exception | None]:
        """
        Run one POST of C{request} (L{_post}) under its deadline: when it
        passes, what the exchange waits for (the answer's headers, then its
        body) is cancelled (L{_Exchange.expire}).

        @param request: From L{prepare}.
        @param deadline: Seconds before the request is cancelled; C{None}:
            C{upstream.timeout}.
        @return: What the request got before it ended, and what it raised
            (C{None} when it completed).
        """
        exchange = _Exchange()
        wait = self._config.timeout if deadline is None else deadline
        timer = self._reactor.callLater(wait, exchange.expire)
        try:
            await self._post(request, exchange)
        except Exception as e:
            return exchange, e
        finally:
            if timer.active():
                timer.cancel()
        return exchange, None

    def _result(self, status: int, headers: Mapping[str, str], body: bytes) -> UpstreamResult:
        """
        The dialect's reading of the answer, then the C{Retry-After} hint;
        a dialect bug is logged and does not turn a 2xx into a retry.
        """
        try:
            hook = getattr(self._dialect, "answer", None)
            if hook is not None:
                result: UpstreamResult = hook(status, headers, body)
            else:
                result = self._dialect.result(status, body)
        except Exception:
            log.failure("dialect {dialect} cannot read an answer", dialect=self._dialect.name)
            result = Accepted("") if 200 <= status < 300 else TEMPORARY_FAILURE
        if status in (429, 503) and isinstance(result, Reply) and result.code < 500:
            seconds = retry_after_seconds(headers.get("retry-after"), self._reactor.seconds())
            if seconds is not None:
                return upstream_retry_after(status, seconds)
        return result

    def close(self) -> Deferred[None]:
        """
        Close the idle pooled connections (on service stop).

        @return: A L{Deferred} that fires when they are closed.
        """
        if self._pool is None:
            return succeed(None)
        d: Deferred[None] = self._pool.closeCachedConnections()
        return d


def _no_answer(error: Exception, reason: str, fields: Mapping[str, Any]) -> UpstreamResult:
    """
    Log a request that got no answer, and say what it means for the
    message.

    @param error: What the request raised.
    @param reason: L{_describe}'s line about it.
    @param fields: The log fields of the request (dialect, size, elapsed).
    @return: L{NotSent} of L{TEMPORARY_FAILURE} when the request certainly
        never left (L{_not_sent}), else L{TEMPORARY_FAILURE}
        (C{451 4.3.0}: it may have been sent).
    """
    not_sent = _not_sent(error)
    log.warn(
        "upstream {dialect}: no answer after {elapsed}s ({sent}): {reason}",
        reason=reason,
        sent="not sent" if not_sent else "maybe sent",
        **fields,
    )
    return NotSent(TEMPORARY_FAILURE) if not_sent else TEMPORARY_FAILURE


def _log_answer(status: int, result: UpstreamResult, fields: Mapping[str, Any]) -> None:
    """
    Log what the dialect made of an answer: an acceptance at debug level
    (the delivery log line already says so at info level), a reply at
    info level.

    @param status: The answer's HTTP status.
    @param result: The dialect's reading of it (L{UpstreamClient._result}).
    @param fields: The log fields of the request (dialect, size, elapsed).
    """
    if isinstance(result, Accepted):
        if events.debug_enabled:
            log.debug(
                "upstream {dialect}: {status} accepted {message_id} in {elapsed}s",
                status=status,
                message_id=result.message_id,
                **fields,
            )
    elif isinstance(result, Reply):
        log.info(
            "upstream {dialect}: {status} -> {code} {enhanced} {reply} in {elapsed}s",
            status=status,
            code=result.code,
            enhanced=result.status,
            reply=result.text,
            **fields,
        )


def _plain(result: UpstreamResult) -> Accepted | Reply:
    """
    @return: C{result}, a L{NotSent} as its reply (for callers that do not
        tell them apart).
    """
    return result.reply if isinstance(result, NotSent) else result


def make_client(reactor: Any, config: UpstreamConfig) -> UpstreamClient:
    """
    Build the client for C{config}: its dialect and a pooled treq client.

    @param reactor: The reactor.
    @param config: The C{[upstream]} table.
    @return: The client.
    @raise relayd.config.ConfigError: For an unknown dialect.
    """
    return UpstreamClient(reactor, config, get_dialect(config.dialect))
