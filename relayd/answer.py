# -*- test-case-name: tests.test_upstream -*-
"""
The upstream's answer to one request, or its absence: the answer's status,
headers and bounded body as they arrive (L{Exchange}, L{read_body},
L{answer_headers}), and, when there was no (complete) answer, whether the
request certainly never left (L{never_sent}) and one log line saying why,
with no credential in it (L{describe_failure}, L{credentials_in}).

L{relayd.upstream.UpstreamClient.post_prepared} runs the exchange; the
dialect reads the answer (L{relayd.dialects}).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

from OpenSSL import SSL
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectError, ConnectingCancelledError
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure
from twisted.web._newclient import (
    RequestNotSent,
    RequestTransmissionFailed,
    ResponseNeverReceived,
)
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.iweb import IResponse

__all__ = [
    "Exchange",
    "answer_headers",
    "credentials_in",
    "describe_failure",
    "never_sent",
    "read_body",
]

_T = TypeVar("_T")

#: Request headers that never carry a credential.
_PUBLIC_HEADERS = frozenset({"content-type", "accept", "user-agent", "idempotency-key"})


class Exchange:
    """
    What one request got before it ended, however it ended.

    @ivar status: The answer's HTTP status, once its headers arrived.
    @ivar headers: The answer's headers: lower-case name to last value.
    @ivar body: The (bounded) body read so far.
    @ivar timed_out: The deadline cancelled the request.
    @ivar pending: What the exchange waits for now (the answer's headers,
        then its body), for the deadline to cancel; C{None} when it waits
        for nothing.
    """

    def __init__(self) -> None:
        self.status: int | None = None
        self.headers: dict[str, str] = {}
        self.body = bytearray()
        self.timed_out = False
        self.pending: Deferred[Any] | None = None

    def wait(self, d: Deferred[_T]) -> Deferred[_T]:
        """
        Note C{d} as what the exchange now waits for (L{pending}).

        @param d: A L{Deferred} of the exchange.
        @return: C{d}.
        """
        self.pending = d
        return d

    def expire(self) -> None:
        """
        The deadline passed: cancel what the exchange waits for.
        """
        self.timed_out = True
        pending, self.pending = self.pending, None
        if pending is not None:
            pending.cancel()


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
        if reason.check(ResponseDone, PotentialDataLoss):  # type: ignore[no-untyped-call]
            self.finished.callback(None)
        else:
            self.finished.errback(reason)


def read_body(response: IResponse, sink: bytearray, limit: int) -> Deferred[None]:
    """
    Read C{response}'s body, keeping at most C{limit} bytes in C{sink}
    (the rest is read and discarded, so the connection can go back to the
    pool).

    @param response: The answer, its headers received.
    @type response: L{IResponse}
    @param sink: Where the kept bytes go (L{Exchange.body}).
    @type sink: L{bytearray}
    @param limit: At most this many bytes are kept.
    @type limit: L{int}
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
    response.deliverBody(protocol)  # type: ignore[no-untyped-call]
    return finished


def answer_headers(response: IResponse) -> dict[str, str]:
    """
    The headers of an answer, as the dialects read them.

    @param response: The answer.
    @type response: L{IResponse}
    @return: The response's headers, lower-case name to last value (Latin-1
        decoded, RFC 9110 section 5.5).
    @rtype: L{dict} of L{str} to L{str}
    """
    return {
        name.decode("latin-1").lower(): values[-1].decode("latin-1")
        for name, values in response.headers.getAllRawHeaders()
        if values
    }


def never_sent(error: BaseException) -> bool:
    """
    Whether a request that got no answer certainly never reached the
    upstream: no connection (refused, unreachable, DNS: L{ConnectError}),
    the deadline passed while connecting (L{ConnectingCancelledError}),
    the request was refused by a connection already lost
    (L{RequestNotSent}), or the TLS handshake failed (an L{SSL.Error} before
    any answer byte: TLS sends application data only after its handshake,
    RFC 8446 section 2).

    @param error: What the request raised.
    @type error: L{BaseException}
    @rtype: L{bool}
    """
    if isinstance(error, (ConnectError, ConnectingCancelledError, RequestNotSent)):
        return True
    if isinstance(error, (ResponseNeverReceived, RequestTransmissionFailed)):
        return any(r.check(SSL.Error) for r in error.reasons)
    return False


def describe_failure(error: Exception, timed_out: bool, secrets: Iterable[str]) -> str:
    """
    Say in one line why a request got no (complete) answer, for the log.

    @param error: What the request raised.
    @param timed_out: The timeout cancelled it.
    @param secrets: Credentials (the token, header values that hold it),
        removed from the text just in case.
    @return: For example C{"ConnectionRefusedError: Connection was refused
        by other side: 111: Connection refused."}: one line of at most 300
        characters.
    @rtype: L{str}
    """
    if timed_out:
        return "timeout"
    reasons = getattr(error, "reasons", None)  # ResponseFailed and subclasses
    if reasons:
        detail = "; ".join(str(r.getErrorMessage()) for r in reasons)
    else:
        detail = str(error)
    text = f"{type(error).__name__}: {detail}"
    for secret in sorted(secrets, key=len, reverse=True):
        if len(secret) >= 4:
            text = text.replace(secret, "<token>")
    return " ".join(text.split())[:300]


def credentials_in(headers: Mapping[str, str]) -> list[str]:
    """
    The values of a request's headers that may hold a credential: every
    header but L{_PUBLIC_HEADERS}.

    @param headers: The request's headers, name to value.
    @type headers: L{Mapping} of L{str} to L{str}
    @return: Those values, and their last word (C{"Bearer <token>"}), to
        keep out of log lines (L{describe_failure}).
    @rtype: L{list} of L{str}
    """
    values = [v for k, v in headers.items() if k.lower() not in _PUBLIC_HEADERS]
    return values + [v.rsplit(" ", 1)[-1] for v in values]
