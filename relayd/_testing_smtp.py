"""
Fakes for driving L{relayd.smtp} in tests: a TLS-capable string transport
and an in-memory delivery avatar.
"""

from __future__ import annotations

from typing import Any, Callable

import attrs
from twisted.cred.portal import Portal
from twisted.internet import defer
from twisted.internet.interfaces import ITLSTransport
from twisted.internet.testing import StringTransport
from twisted.mail.interfaces import IMessageDelivery
from zope.interface import implementer

from relayd.message import MessageRejected
from relayd.smtp import Reply

# A test token: public, for tests only.
TOKEN = "test-token-not-a-secret"


@implementer(ITLSTransport)
class TLSStringTransport(StringTransport):
    """
    A L{StringTransport} that records L{startTLS} instead of doing TLS.
    """

    tls_started = False

    def startTLS(self, contextFactory: Any, normal: bool = True) -> None:
        self.tls_started = True


@attrs.define
class SentMessage:
    """
    What a L{FakeDelivery} was given for one transaction.
    """

    mail_from: str
    rcpt_to: list[str]
    data: bytes = b""


@implementer(IMessageDelivery)
class FakeDelivery:
    """
    An L{IMessageDelivery} avatar that records messages and answers with
    C{result}; with C{hold}, validations wait for L{release}.
    """

    name = "test"
    max_recipients = None
    max_message_size = None

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
            raise MessageRejected(550, "5.7.1", "Sender not allowed")
        self._current = SentMessage(origin, [])
        return self._answer(origin)

    def validateTo(self, user: str) -> Any:
        current = self._current
        assert current is not None
        current.rcpt_to.append(user)
        return self._answer(lambda: _FakeMessage(self, current))

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

    factory: Callable[[str, Any], Any] = lambda t, policy: avatar
    return make_portal(TokenStore.from_tokens({"test": token}), factory)
