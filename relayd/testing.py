# -*- test-case-name: tests.test_upstream -*-
"""
Test helpers shipped with relayd, for its own tests and for anyone testing
code built on it.

Sections:
  - Fake upstream API (L{FakeUpstream}): a twisted.web resource that
    records requests and answers from a queue.
  - Outbound messages (L{sample_message}).
  - SMTP sessions: L{TLSStringTransport}, L{FakeDelivery} (an
    L{ISubmission} avatar that records transactions) and
    L{make_fake_portal}, to drive L{relayd.smtp} without a network.
"""

from __future__ import annotations

import functools
import json
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

import attrs
from attrs import field, frozen
from twisted.cred.portal import Portal
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import ITLSTransport
from twisted.internet.testing import StringTransport
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request
from zope.interface import implementer

from relayd.interfaces import ISubmission, ISubmissionMessage
from relayd.message import Attachment, Envelope, OutboundMessage
from relayd.reply import SENDER_NOT_ALLOWED, Refused, Reply

__all__ = [
    "TOKEN",
    "async_test",
    "Answer",
    "FakeDelivery",
    "FakeUpstream",
    "RecordedRequest",
    "SentMessage",
    "TLSStringTransport",
    "make_fake_portal",
    "sample_message",
]


# ---------------------------------------------------------------------------
# Fake upstream API
# ---------------------------------------------------------------------------


@frozen
class RecordedRequest:
    """
    One request L{FakeUpstream} received.

    @ivar method: The HTTP method, e.g. C{"POST"}.
    @ivar path: The request path (without the query), e.g. C{"/send"}.
    @ivar headers: Header name (lower case) to its values, in order.
    @ivar body: The raw request body.
    @ivar json: The body parsed as JSON, or C{None} when it is not JSON.
    """

    method: str
    path: str
    headers: dict[str, list[str]]
    body: bytes
    json: Any

    def header(self, name: str) -> str | None:
        """
        @param name: A header name (any case).
        @return: The last value of that header, or C{None}.
        """
        values = self.headers.get(name.lower())
        return values[-1] if values else None


@frozen
class Answer:
    """
    One queued answer of L{FakeUpstream}.

    @ivar status: The HTTP status code.
    @ivar json: A document to send as C{application/json}; ignored when
        C{body} is given.
    @ivar body: Raw body bytes to send instead (garbage, HTML, ...).
    @ivar headers: Extra response headers.
    @ivar hang: Never answer: the request stays open (see
        L{FakeUpstream.pending}) until the client gives up.
    """

    status: int = 200
    json: Any = None
    body: bytes | None = None
    headers: dict[str, str] = field(factory=dict)
    hang: bool = False


class FakeUpstream(Resource):
    """
    A fake upstream HTTP API: every request, whatever its path, is recorded
    in L{requests} and answered with the next queued L{Answer}, or with
    L{default} once the queue is empty.

    Use it in memory with C{treq.testing.StubTreq(FakeUpstream())}, or over
    a real socket with C{Site(FakeUpstream())} listening on 127.0.0.1.

    @ivar requests: The recorded requests, in arrival order.
    @ivar pending: Requests held open by a C{hang} answer.
    @ivar default: Factory of the answer used when the queue is empty; by
        default C{200 {"id": "fake-<n>"}} with n counting requests from 1.
    """

    isLeaf = True

    def __init__(self, answers: Iterable[Answer] = ()) -> None:
        """
        @param answers: Answers to queue, in order.
        """
        super().__init__()
        self.requests: list[RecordedRequest] = []
        self.pending: list[Request] = []
        self._answers: deque[Answer] = deque(answers)
        self.default = lambda: Answer(200, {"id": f"fake-{len(self.requests)}"})

    def enqueue(
        self,
        status: int = 200,
        json: Any = None,
        *,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        hang: bool = False,
    ) -> None:
        """
        Queue one answer (see L{Answer} for the parameters).
        """
        self._answers.append(Answer(status, json, body, dict(headers or {}), hang))

    @property
    def last(self) -> RecordedRequest:
        """
        The most recent request.

        @raise IndexError: When there has been none.
        """
        return self.requests[-1]

    def render(self, request: Request) -> bytes | int:
        """
        Record C{request} and answer it.
        """
        assert request.content is not None
        request.content.seek(0)
        body = request.content.read()
        try:
            document = json.loads(body) if body else None
        except ValueError:
            document = None
        headers: dict[str, list[str]] = {}
        for name, values in request.requestHeaders.getAllRawHeaders():
            headers.setdefault(name.decode("latin-1").lower(), []).extend(
                v.decode("latin-1") for v in values
            )
        self.requests.append(
            RecordedRequest(
                method=request.method.decode("ascii"),
                path=request.path.decode("utf-8", "replace"),
                headers=headers,
                body=body,
                json=document,
            )
        )
        answer = self._answers.popleft() if self._answers else self.default()
        if answer.hang:
            self.pending.append(request)
            return NOT_DONE_YET
        request.setResponseCode(answer.status)
        for name, value in answer.headers.items():  # type: ignore[assignment]
            request.setHeader(name, value)
        if answer.body is not None:
            return answer.body
        request.setHeader(b"Content-Type", b"application/json")
        return b"" if answer.json is None else json.dumps(answer.json).encode("utf-8")


# ---------------------------------------------------------------------------
# Outbound messages
# ---------------------------------------------------------------------------


def sample_message(**changes: Any) -> OutboundMessage:
    """
    A complete L{OutboundMessage} that uses every field, for tests of code
    that consumes messages (dialects, the upstream client).

    @param changes: Fields to replace.
    @return: The message.
    """
    fields: dict[str, Any] = dict(
        envelope=Envelope(
            mail_from="bounces@example.com",
            rcpt_to=("ann@example.net", "bob@example.org", "hidden@example.org"),
        ),
        from_="Zoë Sender <zoe@example.com>",
        author_address="zoe@example.com",
        to=("Ann <ann@example.net>",),
        cc=("bob@example.org",),
        bcc=("hidden@example.org",),
        reply_to=("help@example.com",),
        subject="Café order #42",
        text="Hello Ann,\nyour order shipped.\n",
        html="<p>Hello Ann,</p><p>your order shipped.</p>",
        attachments=(
            Attachment("invoice.pdf", "application/pdf", b"%PDF-1.7 fake"),
            Attachment(
                "logo.png", "image/png", b"\x89PNG fake", content_id="logo@example.com", inline=True
            ),
        ),
        tags=("orders", "shipping"),
        headers=(
            ("In-Reply-To", "<order-42@example.com>"),
            ("References", "<thread-1@example.com> <order-42@example.com>"),
            ("X-Campaign", "spring"),
            ("X-Campaign", "eu"),
        ),
        stream="outbound",
        track=True,
        list_unsubscribe="<mailto:unsubscribe@example.com>",
        metadata=(("order", "42"), ("customer", "ann")),
        raw=b"From: zoe@example.com\r\nSubject: order\r\n\r\nHello\r\n",
    )
    fields.update(changes)
    return OutboundMessage(**fields)


# ---------------------------------------------------------------------------
# Trial helpers


def async_test(f: Callable[[Any], Any]) -> Callable[[Any], Deferred[Any]]:
    """
    Run an C{async def} test method as a Deferred-returning one for trial.

    @param f: The coroutine function (a test method).
    @return: A test method returning L{Deferred.fromCoroutine} of it.
    """

    @functools.wraps(f)
    def run(self: Any) -> Deferred[Any]:
        return Deferred.fromCoroutine(f(self))

    return run


# ---------------------------------------------------------------------------
# SMTP sessions
# ---------------------------------------------------------------------------


# A test token: public, for tests only.
TOKEN = "test-token-not-a-secret"


@implementer(ITLSTransport)
class TLSStringTransport(StringTransport):  # type: ignore[misc]
    """
    A L{StringTransport} that records L{startTLS} instead of doing TLS.
    """

    tls_started = False

    def startTLS(self, contextFactory: Any, normal: bool = True) -> None:
        self.tls_started = True


@attrs.define(slots=False)
class SentMessage:
    """
    What a L{FakeDelivery} was given for one transaction.
    """

    mail_from: str
    rcpt_to: list[str]
    data: bytes = b""


@implementer(ISubmission)
class FakeDelivery:
    """
    An L{ISubmission} avatar that records messages and answers with
    C{result}; with C{hold}, validations wait for L{release}.
    """

    name = "test"
    max_recipients: int | None = None
    max_message_size: int | None = None

    def __init__(self) -> None:
        self.sent: list[SentMessage] = []
        self.allowed_senders: tuple[str, ...] = ()
        self.result: tuple[str, str, str] | None = None
        self.hold = False
        self.hold_eom = False
        self._held: list[tuple[defer.Deferred[Any], Any]] = []
        self._held_eom: list[tuple[defer.Deferred[Any], Any]] = []
        self._current: SentMessage | None = None
        self._count = 0

    def _answer(self, value: Any) -> Any:
        if not self.hold:
            return value
        d: defer.Deferred[Any] = defer.Deferred()
        self._held.append((d, value))
        return d

    def release(self) -> None:
        d, value = self._held.pop(0)
        d.callback(value)

    def release_eom(self) -> None:
        d, value = self._held_eom.pop(0)
        d.callback(value)

    def receivedHeader(self, helo: Any, origin: Any, recipients: Any) -> None:
        return None

    def validateFrom(self, helo: Any, origin: str, smtputf8: bool = False) -> Any:
        if self.allowed_senders and origin not in self.allowed_senders:
            raise Refused(SENDER_NOT_ALLOWED)
        self._current = SentMessage(origin, [])
        return self._answer(origin)

    def validateTo(self, user: str) -> Any:
        current = self._current
        assert current is not None
        current.rcpt_to.append(user)
        if not hasattr(current, "message"):
            current.message = _FakeMessage(self, current)  # type: ignore[attr-defined]
        message = current.message  # type: ignore[attr-defined]
        return self._answer(lambda: message)

    def _deliver(self, message: SentMessage) -> defer.Deferred[Reply]:
        self.sent.append(message)
        self._count += 1
        if self.result is None:
            reply = Reply(250, "2.0.0", f"Ok: queued as fake-{self._count}")
        else:
            code, status, text = self.result
            reply = Reply(int(code), status, text)
        if self.hold_eom:
            d: defer.Deferred[Reply] = defer.Deferred()
            self._held_eom.append((d, reply))
            return d
        return defer.succeed(reply)


@implementer(ISubmissionMessage)
class _FakeMessage:
    def __init__(self, owner: FakeDelivery, record: SentMessage) -> None:
        self.owner = owner
        self.record = record
        self.parts: list[bytes] = []

    def bodyReceived(self, data: bytes) -> None:
        self.parts.append(data)

    def lineReceived(self, line: bytes) -> None:
        self.parts.append(line + b"\r\n")

    def eomReceived(self) -> defer.Deferred[Reply]:
        self.record.data = b"".join(self.parts)
        return self.owner._deliver(self.record)

    def connectionLost(self) -> None:
        self.parts = []


def make_fake_portal(avatar: Any, token: str = TOKEN) -> Portal:
    """
    A portal with relayd's real checker for the single token C{token},
    whose realm returns C{avatar}.
    """
    from relayd.auth import make_portal
    from relayd.tokens import TokenStore

    def factory(t: str, policy: Any) -> Any:
        return avatar

    return make_portal(TokenStore.from_tokens({"test": token}), factory)
