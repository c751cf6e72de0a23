# -*- test-case-name: tests.test_delivery -*-
"""
Delivery: the avatar a client gets after AUTH, and the one message of each
SMTP transaction.

The SMTP session asks the avatar (an L{ISubmission}) to validate the
reverse-path and each forward-path, and gets one message factory per
recipient.  relayd's avatar hands out factories that all return the same
L{TransactionMessage}: one SMTP transaction, however many recipients, makes
exactly one upstream request carrying every envelope recipient (RFC 5321
section 3.3: one transaction is one message with one envelope).

Each message goes to the upstreams of its route (L{relayd.routing}: by
token name, sender domain and stream), the next one only when the one
before certainly did not take it.  The reply to the final dot of DATA
comes from L{Pipeline.relay}: C{250} only when an upstream accepted the
message.  Every transaction is named
by its idempotency key (L{relayd.idempotency}) and claimed in an
L{IOutcomeStore} before it is sent, so that a message is never lost and
never sent twice: a retry of a message the upstream took gets C{250} with
the first id, a retry while the first attempt is open gets C{451}, and an
answer that comes after the client was told C{451} (the upstream timeout)
is still awaited, up to C{[idempotency] window} seconds, and recorded for
the retry.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from twisted.internet import defer
from zope.interface import implementer

from relayd import events
from relayd import reply as R
from relayd.interfaces import ISubmission, ISubmissionMessage
from relayd.message import Envelope
from relayd.pipeline import Pipeline, message_id
from relayd.policy import upstream_refused_credential
from relayd.reply import Refused, Reply
from relayd.tokens import TokenPolicy

__all__ = [
    "Pipeline",
    "RelayDelivery",
    "TransactionMessage",
    "message_id",
]


@implementer(ISubmissionMessage)
class TransactionMessage:
    """
    The message of one SMTP transaction, shared by all its recipients.

    @ivar envelope: MAIL FROM and every RCPT TO, filled in as the avatar
        validates them.
    """

    def __init__(self, avatar: RelayDelivery, mail_from: str, smtputf8: bool) -> None:
        self._avatar = avatar
        self.mail_from = mail_from
        self.smtputf8 = smtputf8
        self.rcpt_to: list[str] = []
        self._parts: list[bytes | bytearray] = []

    def bodyReceived(self, data: bytes | bytearray) -> None:
        """
        See L{ISubmissionMessage.bodyReceived}.
        """
        self._parts.append(data)

    def lineReceived(self, line: bytes) -> None:
        """
        Take one line of content without its line end.
        """
        self._parts.append(line + b"\r\n")

    def eomReceived(self) -> defer.Deferred[Reply]:
        """
        The final dot: relay the message once.

        @return: A Deferred that fires with the L{Reply} for the client; it
            never fails.
        """
        # One part (the session's content, a bytearray): taken as it is;
        # the pipeline makes bytes of it (in its thread pool when large).
        parts, self._parts = self._parts, []
        data = parts[0] if len(parts) == 1 else b"".join(parts)
        del parts
        envelope = Envelope(self.mail_from, tuple(self.rcpt_to), self.smtputf8)
        avatar = self._avatar
        # Only the pipeline's coroutine holds the content: it lets its
        # copies go once the request is built.
        relaying = avatar.pipeline.relay(
            envelope, data, avatar.token, avatar.policy, identity=avatar.identity
        )
        size = len(data)
        del data
        return defer.Deferred.fromCoroutine(self._relay(relaying, envelope, size))

    async def _relay(
        self, relaying: Coroutine[Any, Any, Reply], envelope: Envelope, size: int
    ) -> Reply:
        """
        Await the pipeline's C{relaying} in the transaction's event
        (L{events.observed}): one coroutine for the whole delivery.
        """
        avatar = self._avatar
        reply: Reply = await events.observed(
            relaying, envelope, size, avatar.pipeline.clock, avatar.name
        )
        return avatar.judged(reply)

    def connectionLost(self) -> None:
        """
        The transaction was abandoned: forget the content.
        """
        self._parts = []


@implementer(ISubmission)
class RelayDelivery:
    """
    The avatar of one authenticated API token: validates the envelope with
    the token's policy and builds one L{TransactionMessage} per transaction.

    relayd's protocol passes addresses as C{str} mailboxes
    (C{local@domain}, C{""} for the null reverse-path), already checked for
    RFC 5321 syntax.
    """

    # One per authenticated session: slots keep idle sessions small.
    __slots__ = ("_current", "_identity", "_revoked", "pipeline", "policy", "token")

    def __init__(self, token: str, policy: TokenPolicy, pipeline: Pipeline) -> None:
        self.token = token
        self.policy = policy
        self.pipeline = pipeline
        self._current: TransactionMessage | None = None
        self._revoked = False
        self._identity: str | None = None

    @property
    def identity(self) -> str:
        """
        The identity of this avatar's idempotency keys and message rates
        (L{Pipeline.identity} of its token and policy), computed once per
        authenticated session: an HMAC-SHA256, the same for every
        transaction of the session.
        """
        identity = self._identity
        if identity is None:
            identity = self._identity = self.pipeline.identity(self.token, self.policy)
        return identity

    def judged(self, reply: Reply) -> Reply:
        """
        Note the reply to the final dot: after the upstream refused the
        credential (HTTP 401/403, with C{revoke_on_upstream_refusal}, the
        C{passthrough} backend), the session's later transactions are
        refused at MAIL.

        @return: C{reply}.
        """
        if self.pipeline.revoke_on_upstream_refusal and upstream_refused_credential(reply):
            self._revoked = True
        return reply

    @property
    def name(self) -> str:
        """
        The token's name (for logs; never the token).
        """
        return self.policy.name

    @property
    def max_recipients(self) -> int | None:
        """
        The token's own recipient limit, or C{None}.
        """
        return self.policy.max_recipients

    @property
    def max_message_size(self) -> int | None:
        """
        The token's own message size limit in bytes, or C{None}.
        """
        return self.policy.max_message_size

    def receivedHeader(self, helo: Any, origin: Any, recipients: Any) -> None:
        """
        relayd adds no C{Received} header: the upstream API builds the
        message it sends (and strips C{Received}).
        """
        return None

    def validateFrom(self, helo: Any, origin: str, smtputf8: bool = False) -> Any:
        """
        Start a transaction from the reverse-path C{origin}.

        @param helo: C{(EHLO argument, client IP)}.
        @param origin: The reverse-path mailbox, C{""} for C{<>}.
        @return: C{origin}, or a Deferred firing with it once the message
            rates (L{relayd.policy.MessageRates}, maybe shared in Redis)
            counted the transaction.
        @raise Refused: C{550 5.7.1 Sender not allowed} when the
            token may not send from that address; a C{451 4.7.1} (raised,
            or the Deferred's failure) when a message rate is used up.
        """
        if self._revoked:
            raise Refused(R.CREDENTIAL_REFUSED_UPSTREAM)
        if not self.policy.allows_sender(origin):
            raise Refused(R.SENDER_NOT_ALLOWED)
        rates = self.pipeline.rates
        if rates is None or not rates.applies(self.policy):
            self._current = TransactionMessage(self, origin, smtputf8)
            return origin
        ip = helo[1] if isinstance(helo, tuple) and len(helo) > 1 else None

        def counted(_: None) -> str:
            self._current = TransactionMessage(self, origin, smtputf8)
            return origin

        return rates.check(self.identity, ip, self.policy).addCallback(counted)

    def validateTo(self, user: str) -> Callable[[], TransactionMessage]:
        """
        Add the forward-path C{user} to the current transaction.

        @param user: The recipient mailbox.
        @return: A factory of the transaction's one message.
        """
        current = self._current
        if current is None:
            raise Refused(R.NEED_MAIL)
        # A repeated RCPT is one recipient: the same mailbox, the domain
        # compared without case and the local part exactly (RFC 5321
        # section 2.4), the rule of the idempotency key.
        same = _mailbox_key(user)
        if all(_mailbox_key(r) != same for r in current.rcpt_to):
            current.rcpt_to.append(user)
        return lambda: current


def _mailbox_key(path: str) -> str:
    """
    A mailbox with its domain in lower case (RFC 5321 section 2.4: local
    parts are case-sensitive, domains are not).
    """
    local, at, domain = path.rpartition("@")
    return f"{local}{at}{domain.lower()}" if at else path


def make_avatar_factory(pipeline: Pipeline) -> Callable[[str, TokenPolicy], RelayDelivery]:
    """
    The realm's avatar factory: token and policy to L{RelayDelivery}.
    """
    return lambda token, policy: RelayDelivery(token, policy, pipeline)
