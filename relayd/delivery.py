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

The reply to the final dot of DATA comes from L{Pipeline.relay}: C{250}
only when the upstream accepted the message.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from zope.interface import implementer

from relayd import events
from relayd import reply as R
from relayd.config import HeadersConfig
from relayd.interfaces import ISubmission, ISubmissionMessage
from relayd.message import Envelope, OutboundMessage, parse_message
from relayd.reply import Refused, Reply
from relayd.result import Accepted
from relayd.tokens import TokenPolicy
from relayd.upstream import UpstreamClient

__all__ = [
    "Pipeline",
    "RelayDelivery",
    "TransactionMessage",
]

log = Logger()


def _printable(text: str, limit: int = 64) -> str:
    """
    C{text} as printable ASCII, at most C{limit} characters, for a reply.
    """
    return "".join(c if " " <= c <= "~" else "?" for c in text[:limit])


# Messages larger than this many bytes are parsed off the reactor thread.
PARSE_IN_THREAD = 4 * 1024 * 1024


@attrs.frozen
class Pipeline:
    """
    What turns received bytes into an upstream request: the header policy
    and the upstream client.

    @ivar upstream: Sends the mapped message and says what became of it.
    @ivar headers: The C{[headers]} policy for L{parse_message}.
    @ivar clock: Time source (for the duration in the log).
    @ivar threads: An L{IReactorThreads} provider: messages larger than
        L{PARSE_IN_THREAD} bytes are parsed in its thread pool, so that a
        25 MiB message does not stall every other session (smaller ones
        take a few milliseconds: cheaper than the hand-over); C{None} parses
        everything on the calling thread.
    """

    upstream: UpstreamClient
    headers: HeadersConfig
    clock: IReactorTime
    threads: Any = None

    async def _parse(self, data: bytes, envelope: Envelope) -> OutboundMessage:
        if self.threads is None or len(data) <= PARSE_IN_THREAD:
            return parse_message(data, envelope, self.headers)
        return await deferToThreadPool(
            self.threads,
            self.threads.getThreadPool(),
            parse_message,
            data,
            envelope,
            self.headers,
        )

    async def relay(
        self, envelope: Envelope, data: bytes, token: str, policy: TokenPolicy
    ) -> Reply:
        """
        Parse, check and send one message.

        @param envelope: The transaction's envelope.
        @param data: The message (RFC 5322), CRLF line ends.
        @param token: The client's API token, for the upstream request.
        @param policy: What the token allows.
        @return: The reply to the final dot: C{250 2.0.0} with the
            upstream's id, or the C{4xx}/C{5xx} that says why not.  Never
            raises.
        """
        try:
            message = await self._parse(data, envelope)
            if not policy.allows_sender(message.author_address):
                raise Refused(R.SENDER_NOT_ALLOWED)
            if not policy.allows_stream(message.stream):
                raise Refused(
                    R.stream_not_allowed(_printable(message.stream))
                    if message.stream
                    else R.STREAM_REQUIRED
                )
            body = self.upstream.encode(message)
            mapped, stripped = message.mapped, message.stripped
            # Only the request body is needed from here on: let a large
            # message's other copies go before the upstream call.
            del message, data
            result = await self.upstream.post(body, token)
        except Refused as e:
            return e.reply
        except Exception:
            log.failure("relaying a message failed")
            return R.LOCAL_ERROR
        if isinstance(result, Accepted):
            events.note(upstream_id=result.message_id, mapped=mapped, stripped=stripped)
            if not result.message_id:
                log.warn(
                    "upstream answered 2xx without a message id for token {token_name};"
                    " check upstream.url",
                    token_name=policy.name,
                )
            return R.queued(result.message_id)
        return Reply(result.code, result.status, result.text)


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
        self._parts: list[bytes] = []

    def bodyReceived(self, data: bytes) -> None:
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
        data = b"".join(self._parts)
        self._parts = []
        envelope = Envelope(self.mail_from, tuple(self.rcpt_to), self.smtputf8)
        avatar = self._avatar
        return events.observe(
            lambda: defer.Deferred.fromCoroutine(
                avatar.pipeline.relay(envelope, data, avatar.token, avatar.policy)
            ),
            envelope,
            len(data),
            avatar.pipeline.clock,
            avatar.name,
        )

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

    def __init__(self, token: str, policy: TokenPolicy, pipeline: Pipeline) -> None:
        self.token = token
        self.policy = policy
        self.pipeline = pipeline
        self._current: TransactionMessage | None = None

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

    def validateFrom(self, helo: Any, origin: str, smtputf8: bool = False) -> str:
        """
        Start a transaction from the reverse-path C{origin}.

        @param helo: C{(EHLO argument, client IP)}.
        @param origin: The reverse-path mailbox, C{""} for C{<>}.
        @return: C{origin}.
        @raise Refused: C{550 5.7.1 Sender not allowed} when the
            token may not send from that address.
        """
        if not self.policy.allows_sender(origin):
            raise Refused(R.SENDER_NOT_ALLOWED)
        self._current = TransactionMessage(self, origin, smtputf8)
        return origin

    def validateTo(self, user: str) -> Callable[[], TransactionMessage]:
        """
        Add the forward-path C{user} to the current transaction.

        @param user: The recipient mailbox.
        @return: A factory of the transaction's one message.
        """
        current = self._current
        if current is None:
            raise Refused(R.NEED_MAIL)
        if user.casefold() not in (r.casefold() for r in current.rcpt_to):
            current.rcpt_to.append(user)  # a repeated RCPT is one recipient
        return lambda: current


def make_avatar_factory(pipeline: Pipeline) -> Callable[[str, TokenPolicy], RelayDelivery]:
    """
    The realm's avatar factory: token and policy to L{RelayDelivery}.
    """
    return lambda token, policy: RelayDelivery(token, policy, pipeline)
