# -*- test-case-name: tests.test_testing -*-
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
  - The SMTP test driver (L{SMTPDriver}): one session on a recording
    transport, input in, reply lines out; L{reply_line} for the line a
    L{Reply} is on the wire.
"""

from __future__ import annotations

import base64
import functools
import json
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

import attrs
from attrs import field, frozen
from twisted.cred.portal import Portal
from twisted.internet import defer
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import ITLSTransport
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request
from zope.interface import implementer

from relayd.config import LimitsConfig
from relayd.interfaces import ISubmission, ISubmissionMessage
from relayd.message import Attachment, Envelope, OutboundMessage
from relayd.reply import (
    AUTH_SUCCESSFUL,
    RECIPIENT_OK,
    SENDER_NOT_ALLOWED,
    SENDER_OK,
    START_MAIL_INPUT,
    Refused,
    Reply,
)
from relayd.smtp.session import RelaySMTP, RelaySMTPFactory

__all__ = [
    "TOKEN",
    "async_test",
    "Answer",
    "FakeDelivery",
    "FakeUpstream",
    "RecordedRequest",
    "RecordingTransport",
    "SMTPDriver",
    "SentMessage",
    "TLSStringTransport",
    "auth_plain",
    "make_fake_portal",
    "reply_line",
    "sample_message",
    "split_at",
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
        self.parts: list[bytes | bytearray] = []

    def bodyReceived(self, data: bytes | bytearray) -> None:
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


# ---------------------------------------------------------------------------
# The SMTP test driver
# ---------------------------------------------------------------------------


def reply_line(reply: Reply, hostname: str | None = None) -> str:
    """
    The line a reply is on the wire, without its line end.

    @param reply: The reply.
    @param hostname: For a reply the session sends with its hostname
        before the text (the greeting, a C{421}: RFC 5321 section 3.8),
        that hostname.
    @return: C{"<code> <status> <text>"}, or C{"<code> <text>"} when the
        reply has no enhanced status code.
    """
    text = f"{hostname} {reply.text}" if hostname is not None else reply.text
    return f"{reply.code} {reply.status} {text}" if reply.status else f"{reply.code} {text}"


def auth_plain(user: str, password: str, authzid: str = "") -> str:
    """
    The base64 response of AUTH PLAIN (RFC 4616 section 2).

    @return: C{base64(authzid NUL user NUL password)}, as text.
    """
    return base64.b64encode(f"{authzid}\0{user}\0{password}".encode()).decode()


def split_at(data: bytes, cuts: Iterable[int]) -> list[bytes]:
    """
    Cut C{data} into packets.

    @param cuts: Offsets to cut at, in any order; those out of range
        (C{<= 0} or C{>= len(data)}) and repeated ones are ignored.
    @return: The non-empty pieces, in order.
    """
    points = sorted({c for c in cuts if 0 < c < len(data)})
    pieces, start = [], 0
    for p in points:
        pieces.append(data[start:p])
        start = p
    pieces.append(data[start:])
    return [p for p in pieces if p]


class RecordingTransport(TLSStringTransport):
    """
    A L{TLSStringTransport} that keeps every write, also after
    L{StringTransport.clear}.

    @ivar wire: Every byte written, in order.
    @ivar chunks: Every write, one item each.
    @ivar after_close: What was written after C{loseConnection} (a
        protocol must write nothing then).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.wire = bytearray()
        self.after_close = bytearray()
        self.chunks: list[bytes] = []

    def write(self, data: bytes) -> None:
        if self.disconnecting:
            self.after_close += data
        self.wire += data
        self.chunks.append(bytes(data))
        super().write(data)


#: The placeholder TLS context of L{SMTPDriver}: STARTTLS is offered, and
#: L{TLSStringTransport} only records that it began.
_FAKE_TLS_CONTEXT = object()


class SMTPDriver:
    """
    One SMTP session (L{RelaySMTP}) on a L{RecordingTransport}, driven as a
    client would: bytes in with L{send}, reply lines out.  Time comes from
    a L{Clock}, the avatar is a L{FakeDelivery} unless another portal is
    given.

    @ivar clock: The session's clock.
    @ivar delivery: The avatar behind the fake portal.
    @ivar factory: The session's factory (pass it to a second driver to
        share connection caps and AUTH throttling).
    @ivar transport: The recording transport.
    @ivar proto: The session.
    @ivar hostname: The server's name in the greeting and 421 replies.
    """

    def __init__(
        self,
        *,
        implicit_tls: bool = False,
        limits: LimitsConfig | None = None,
        clock: Clock | None = None,
        delivery: FakeDelivery | None = None,
        factory: RelaySMTPFactory | None = None,
        portal: Portal | None = None,
        hostname: str = "mx.example.test",
        ip: str = "192.0.2.1",
        context_factory: Any = _FAKE_TLS_CONTEXT,
        **factory_args: Any,
    ) -> None:
        """
        @param implicit_tls: The listener is implicit TLS (RFC 8314): the
            session is secure from the start.
        @param limits: The C{[limits]} configuration (default: defaults).
        @param factory: Build the session with this factory; the other
            parameters but C{ip} and C{delivery} are then ignored.
        @param portal: The cred portal (default: L{make_fake_portal} of
            C{delivery} with L{TOKEN}).
        @param ip: The client's IPv4 or IPv6 address.
        @param context_factory: The TLS context for STARTTLS, or C{None}
            for a listener without it.
        @param factory_args: More keyword arguments of L{RelaySMTPFactory}
            (C{counters}, C{auth_exempt}, ...).
        """
        self.clock = clock or Clock()
        self.delivery = delivery or FakeDelivery()
        self.factory = factory or RelaySMTPFactory(
            portal or make_fake_portal(self.delivery),
            hostname,
            limits or LimitsConfig(),
            self.clock,
            context_factory=context_factory,
            implicit_tls=implicit_tls,
            **factory_args,
        )
        self.hostname = self.factory.hostname
        peer: Any = IPv6Address("TCP", ip, 40000) if ":" in ip else IPv4Address("TCP", ip, 40000)
        self.transport = RecordingTransport(peerAddress=peer)
        self.proto: RelaySMTP = self.factory.buildProtocol(None)
        self.proto.makeConnection(self.transport)

    def send(self, data: bytes | str) -> list[str]:
        """
        Deliver C{data} to the session in one packet.

        @param data: Bytes, or text to encode as UTF-8.
        @return: The reply lines written since the last call (see
            L{replies}).
        """
        if isinstance(data, str):
            data = data.encode("utf-8")
        self.proto.dataReceived(data)
        return self.replies()

    def feed(self, data: bytes, cuts: Iterable[int]) -> list[str]:
        """
        Deliver C{data} in packets cut at C{cuts} (see L{split_at}).

        @return: All reply lines written meanwhile.
        """
        out: list[str] = []
        for piece in split_at(data, cuts):
            out += self.send(piece)
        return out

    def bytewise(self, data: bytes) -> list[str]:
        """
        Deliver C{data} one octet per packet.

        @return: All reply lines written meanwhile.
        """
        out: list[str] = []
        for i in range(len(data)):
            out += self.send(data[i : i + 1])
        return out

    def replies(self) -> list[str]:
        """
        The reply lines written since the last call, without line ends
        (decoded as UTF-8, undecodable octets replaced).
        """
        out = self.transport.value().decode("utf-8", "replace")
        self.transport.clear()
        return [line for line in out.split("\r\n") if line]

    def line(self, reply: Reply) -> str:
        """
        @return: The line this session sends for a reply that carries its
            hostname (the greeting, a C{421}); see L{reply_line}.
        """
        return reply_line(reply, self.hostname)

    def ehlo(self) -> list[str]:
        """
        Send C{EHLO client.example}.

        @return: The reply lines.
        """
        return self.send("EHLO client.example\r\n")

    def login(self, token: str = TOKEN) -> None:
        """
        Greet, STARTTLS unless the session is already secure, EHLO again,
        and AUTH PLAIN with C{token}.

        @raise AssertionError: When the EHLO or the AUTH is not accepted.
        """
        self.replies()
        if not self.proto.secure:
            self.send("EHLO client.example\r\nSTARTTLS\r\n")
        lines = self.ehlo()
        if not lines or lines[-1] != "250 HELP":
            raise AssertionError(lines)
        lines = self.send(f"AUTH PLAIN {auth_plain('apikey', token)}\r\n")
        if lines != [reply_line(AUTH_SUCCESSFUL)]:
            raise AssertionError(lines)

    def start(self, rcpt: str = "b@example.com") -> None:
        """
        Begin a transaction from C{a@example.com} to C{rcpt}, up to the
        C{354} of DATA.

        @raise AssertionError: When a reply is not the expected one.
        """
        lines = self.send(f"MAIL FROM:<a@example.com>\r\nRCPT TO:<{rcpt}>\r\nDATA\r\n")
        expected = [SENDER_OK, RECIPIENT_OK, START_MAIL_INPUT]
        if lines != [reply_line(r) for r in expected]:
            raise AssertionError(lines)

    def close(self) -> None:
        """
        The client goes away: the connection is lost.
        """
        self.proto.connectionLost(None)
