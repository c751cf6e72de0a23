# -*- test-case-name: tests.test_upstream_body,tests.test_upstream -*-
"""
The request body producer: a request body already in memory (C{bytes} or
a dialect's L{Body}) written to the upstream's HTTP connection a piece at a
time (L{twisted.web.iweb.IBodyProducer}).

L{relayd.upstream} gives it to treq for every request it sends and re-exports
it (C{from relayd.upstream import BytesProducer} works).
"""

from __future__ import annotations

from collections.abc import Iterator

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IConsumer
from twisted.web.iweb import IBodyProducer
from zope.interface import implementer

from relayd.dialects.base import Body

__all__ = ["BODY_CHUNK", "BytesProducer"]


#: Bytes of a request body written to the transport at a time: a large
#: body goes out in pieces as the transport drains (it pauses this producer
#: above its 64 KiB buffer), so that no reactor iteration copies or
#: encrypts the whole body at once.
BODY_CHUNK = 64 * 1024


@implementer(IBodyProducer)
class BytesProducer:
    """
    A request body already in memory: C{bytes} of at most L{BODY_CHUNK}
    bytes written in one C{write}; a larger one, or a L{Body}, written a
    piece at a time as the transport takes them.

    treq adapts C{bytes} to L{twisted.web.client.FileBodyProducer}, which
    copies 64 KiB per reactor iteration through a cooperator: several
    iterations and copies per message.  This writes C{bytes} at once; the
    transport buffers them.  A L{Body} is written as a streaming producer
    (the HTTP client registers it with the transport, which pauses it while
    its buffer is full), so that its pieces are neither joined nor all
    buffered at once: a 25 MB attachment goes out without a second copy.

    It can be produced again: L{UpstreamPool} resends it on a fresh
    connection when a pooled one turns out stale.

    @ivar length: The body's length in bytes (sent as C{Content-Length}).
    @ivar replayable: The request carries the transaction's idempotency key
        (L{PreparedRequest.carries_key}): a repeat is the same message to an
        upstream that honours the key.
    """

    def __init__(self, body: bytes | Body | BytesProducer, replayable: bool = False) -> None:
        """
        @param body: The whole request body (or a L{BytesProducer}, taken
            as it is: treq adapts the C{data} it is given).
        @param replayable: See L{replayable}.
        """
        if isinstance(body, BytesProducer):
            self._body: bytes | Body = body._body
            self.replayable: bool = body.replayable
        else:
            self._body, self.replayable = body, replayable
        if isinstance(self._body, Body) and len(self._body.pieces) == 1:
            only = self._body.pieces[0]
            if isinstance(only, bytes):
                self._body = only  # one piece: written at once
        self.length = len(self._body)
        self._consumer: IConsumer | None = None
        self._chunks: Iterator[bytes] | None = None
        self._next: bytes | None = None
        self._finished: Deferred[None] | None = None
        self._paused = False
        self._writing = False

    def startProducing(self, consumer: IConsumer) -> Deferred[None]:
        """
        Write the body: C{bytes} at once; a L{Body} while C{consumer} is
        not paused, the rest as it resumes.

        @param consumer: The request's body consumer.
        @return: A L{Deferred} that fires once the whole body is written.
        """
        body = self._body
        if isinstance(body, bytes):
            if len(body) <= BODY_CHUNK:
                consumer.write(body)
                return succeed(None)
            # A large body in pieces, so that the transport (TLS above all)
            # never takes the whole of it in one reactor iteration.
            view = memoryview(body)
            chunks: Iterator[bytes] = (
                bytes(view[i : i + BODY_CHUNK]) for i in range(0, len(body), BODY_CHUNK)
            )
        else:
            chunks = body.chunks()
        self._consumer = consumer
        self._chunks, self._next = chunks, None
        self._paused = False
        finished: Deferred[None] = Deferred()
        self._finished = finished
        self._write()
        return finished

    def _write(self) -> None:
        """
        Write pieces until the consumer pauses or the body ends.
        """
        if self._writing:
            return  # resumed from within a write: the loop below goes on
        self._writing = True
        try:
            while not self._paused and self._chunks is not None:
                chunk, self._next = self._next, None
                if chunk is None:
                    chunk = next(self._chunks, None)
                if chunk is not None:
                    assert self._consumer is not None
                    self._consumer.write(chunk)
                    # One piece ahead: the result fires with the last
                    # write, even when that write pauses this producer.
                    self._next = next(self._chunks, None) if self._chunks is not None else None
                if chunk is None or (self._next is None and self._chunks is not None):
                    self._chunks = self._consumer = None
                    finished, self._finished = self._finished, None
                    if finished is not None:
                        finished.callback(None)
                    return
        finally:
            self._writing = False

    def pauseProducing(self) -> None:
        """
        The transport's buffer is full: stop writing pieces.
        """
        self._paused = True

    def resumeProducing(self) -> None:
        """
        The transport took what it had: write more pieces.
        """
        self._paused = False
        self._write()

    def stopProducing(self) -> None:
        """
        The request is abandoned: write nothing more; the L{Deferred} of
        L{startProducing} never fires (L{IBodyProducer.stopProducing}).
        """
        self._chunks = self._consumer = self._finished = None
        self._next = None
