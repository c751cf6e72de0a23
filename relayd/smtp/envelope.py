# -*- test-case-name: tests.smtp.test_envelope,tests.smtp.test_data -*-
"""
The mail transaction of an SMTP session: MAIL, RCPT and DATA (RFC 5321
sections 3.3, 4.1.1.2 to 4.1.1.4), and the L{Transaction} they fill in.

The functions here are verbs of L{relayd.smtp.session.RelaySMTP}, kept in
their own module so that each stays short.  Each takes the session as a
L{Session}: the state and replies a verb uses, described here so that this
module does not import the one that calls it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import attrs
from twisted.internet import defer
from twisted.logger import Logger

from relayd import reply as R
from relayd.config import LimitsConfig
from relayd.interfaces import ISubmission, ISubmissionMessage
from relayd.reply import Refused, Reply
from relayd.smtp.framing import DataError, DataReader, Framer
from relayd.smtp.syntax import MAIL_ARGS, RCPT_ARGS, PathError, parse_parameters, parse_path

__all__ = [
    "Session",
    "Transaction",
    "abort",
    "bdat",
    "data",
    "data_error_reply",
    "mail",
    "rcpt",
]

log = Logger()


@attrs.define
class Transaction:
    """
    One mail transaction (RFC 5321 section 3.3), from MAIL to the final dot.

    @ivar reverse_path: The MAIL FROM mailbox (C{""} for C{<>}).
    @ivar smtputf8: MAIL FROM had the SMTPUTF8 parameter (RFC 6531).
    @ivar forward_paths: The accepted RCPT TO mailboxes, in order.
    @ivar factories: What the avatar gave for each forward-path: callables
        that begin the message at DATA.
    @ivar messages: The messages begun at DATA (distinct objects).
    @ivar data: The content being received, during DATA.
    """

    reverse_path: str
    smtputf8: bool
    forward_paths: list[str] = attrs.field(factory=list)
    factories: list[Callable[[], ISubmissionMessage]] = attrs.field(factory=list)
    messages: list[ISubmissionMessage] = attrs.field(factory=list)
    data: DataReader | None = None


class Session(Protocol):
    """
    What the verbs of this module need from the SMTP session
    (L{relayd.smtp.session.RelaySMTP} provides it).

    @ivar transaction: The current mail transaction, or C{None}; the verbs
        begin and end it.
    """

    transaction: Transaction | None
    #: The server's name (C{server.hostname}).
    hostname: str

    @property
    def ehlo(self) -> str | None:
        """The EHLO/HELO argument, or C{None} before it."""

    @property
    def authenticated(self) -> bool:
        """AUTH succeeded (RFC 4954)."""

    @property
    def avatar(self) -> ISubmission | None:
        """The L{ISubmission} avatar after AUTH, else C{None}."""

    @property
    def peer_ip(self) -> str:
        """The client's IP address, as text."""

    @property
    def limits(self) -> LimitsConfig:
        """The C{[limits]} configuration."""

    @property
    def framing(self) -> Framer:
        """The input buffer, cut into lines and DATA."""

    @property
    def max_message_size(self) -> int:
        """The message size limit in bytes that applies now."""

    @property
    def max_recipients(self) -> int:
        """The recipient limit per transaction that applies now."""

    @property
    def closed(self) -> bool:
        """The connection is closing: nothing more is read or written."""

    @property
    def _messages(self) -> int:
        """Messages ended with a final dot in this session."""

    def send(self, r: Reply) -> None:
        """Send the reply C{r}."""

    def error(self, r: Reply) -> None:
        """Reply C{r} to a command the client got wrong (counts errors)."""

    def closing(self, r: Reply) -> None:
        """Send the C{421} C{r} and close the connection."""

    def read_data(self) -> None:
        """Read message content next (DATA accepted)."""


def _mail_parameters(session: Session, text: str) -> tuple[bool, int | None] | None:
    """
    Check the ESMTP parameters of MAIL (RFC 1870 SIZE, RFC 6152 BODY,
    RFC 6531 SMTPUTF8, RFC 4954 section 5 AUTH) and reply to bad ones.

    @return: Whether SMTPUTF8 was given and the declared SIZE in bytes
        (or C{None}); C{None} after an error reply.
    """
    params = parse_parameters(text)
    if params is None:
        session.error(R.SYNTAX_PARAMETERS)
        return None
    smtputf8 = False
    size: int | None = None
    for keyword, value in params.items():
        if keyword == "SIZE":
            if value is None or not value.isdigit() or len(value) > 20:
                session.error(R.BAD_SIZE)
                return None
            size = int(value)
        elif keyword == "BODY":
            if value is None or value.upper() not in ("7BIT", "8BITMIME"):
                session.error(R.UNSUPPORTED_BODY)
                return None
        elif keyword == "SMTPUTF8":
            if value is not None:
                session.error(R.SMTPUTF8_TAKES_NO_VALUE)
                return None
            smtputf8 = True
        elif keyword != "AUTH":  # AUTH=: accepted, not used for relaying
            session.error(R.unsupported_parameter(keyword))
            return None
    return smtputf8, size


def mail(session: Session, rest: str) -> defer.Deferred[None] | None:
    """
    MAIL FROM (RFC 5321 section 4.1.1.2) with SIZE (RFC 1870), BODY
    (RFC 6152), SMTPUTF8 (RFC 6531) and AUTH (RFC 4954 section 5).
    """
    if session.ehlo is None:
        session.error(R.NEED_EHLO)
        return None
    if session.avatar is None or not session.authenticated:
        session.error(R.AUTH_REQUIRED)
        return None
    if session.transaction is not None:
        session.error(R.NESTED_MAIL)
        return None
    if session._messages >= session.limits.max_messages_per_connection:
        session.closing(R.TOO_MANY_MESSAGES)
        return None
    m = MAIL_ARGS.match(rest)
    if m is None:
        session.error(R.SYNTAX_MAIL)
        return None
    parameters = _mail_parameters(session, m.group(2))
    if parameters is None:
        return None
    smtputf8, size = parameters
    try:
        address = parse_path(m.group(1), allow_empty=True)
    except PathError:
        session.error(R.BAD_SENDER_SYNTAX)
        return None
    if not smtputf8 and not address.isascii():
        session.error(R.NON_ASCII_ADDRESS)
        return None
    if size is not None and size > session.max_message_size:
        session.error(R.MESSAGE_TOO_BIG)
        return None
    avatar = session.avatar
    return _validate(
        session,
        lambda: avatar.validateFrom((session.ehlo, session.peer_ip), address, smtputf8=smtputf8),
        lambda _: _mail_accepted(session, address, smtputf8),
    )


def _validate(
    session: Session, call: Callable[[], Any], accepted: Callable[[Any], None]
) -> defer.Deferred[None] | None:
    """
    Ask the avatar to validate, then call C{accepted} with its answer.

    The avatar may answer at once (most do: no Deferred is made) or
    with a Deferred, which the caller waits for (RFC 2920 ordering).
    L{Refused} becomes its reply; anything else a C{451}.

    @return: A Deferred to wait for, or C{None} when done already.
    """
    try:
        result = call()
    except Refused as e:
        session.error(e.reply)
        return None
    except Exception:
        log.failure("validation failed")
        session.send(R.LOCAL_ERROR)
        return None
    if not isinstance(result, defer.Deferred):
        accepted(result)
        return None

    async def later() -> None:
        try:
            value = await result
        except Refused as e:
            session.error(e.reply)
            return
        accepted(value)

    return defer.Deferred.fromCoroutine(later())


def _mail_accepted(session: Session, address: str, smtputf8: bool) -> None:
    session.transaction = Transaction(address, smtputf8)
    session.send(R.SENDER_OK)


def rcpt(session: Session, rest: str) -> defer.Deferred[None] | None:
    """
    RCPT TO (RFC 5321 section 4.1.1.3).
    """
    transaction = session.transaction
    if transaction is None or session.avatar is None:
        session.error(R.NEED_MAIL)
        return None
    m = RCPT_ARGS.match(rest)
    if m is None:
        session.error(R.SYNTAX_RCPT)
        return None
    params = parse_parameters(m.group(2))
    if params is None:
        session.error(R.SYNTAX_PARAMETERS)
        return None
    if params:
        session.error(R.unsupported_parameter(next(iter(params))))
        return None
    try:
        address = parse_path(m.group(1))
    except PathError:
        if m.group(1).strip("<>").lower() != "postmaster":
            session.error(R.BAD_RECIPIENT_SYNTAX)
            return None
        # RFC 5321 section 4.1.1.3: always accepted; section 4.5.1: the
        # postmaster of this host, so the upstream gets a whole address.
        address = f"postmaster@{session.hostname}"
    if not transaction.smtputf8 and not address.isascii():
        session.error(R.NON_ASCII_ADDRESS)
        return None
    if len(transaction.forward_paths) >= session.max_recipients:
        session.send(R.TOO_MANY_RECIPIENTS)
        return None
    avatar = session.avatar
    return _validate(
        session,
        lambda: avatar.validateTo(address),
        lambda factory: _rcpt_accepted(session, transaction, address, factory),
    )


def _rcpt_accepted(
    session: Session,
    transaction: Transaction,
    address: str,
    factory: Callable[[], ISubmissionMessage],
) -> None:
    if session.transaction is not transaction:  # RSET raced us; cannot happen in order
        return
    transaction.forward_paths.append(address)
    transaction.factories.append(factory)
    session.send(R.RECIPIENT_OK)


# -- commands: DATA --


def _refuse_data(session: Session, r: Reply) -> None:
    """
    Refuse DATA.  A client that sent message content behind DATA
    without waiting for the 354 (against RFC 2920 section 3.1) would
    have it read as commands: treat DATA as a synchronisation point and
    close the session instead.
    """
    session.error(r)
    if session.framing.buffer and not session.closed:
        session.closing(R.IMPROPER_PIPELINING)


def data(session: Session, rest: str) -> None:
    """
    DATA (RFC 5321 section 4.1.1.4).
    """
    transaction = session.transaction
    if rest:
        _refuse_data(session, R.SYNTAX_DATA)
        return
    if transaction is None:
        _refuse_data(session, R.NEED_MAIL)
        return
    if not transaction.forward_paths:
        _refuse_data(session, R.NO_VALID_RECIPIENTS)
        return
    messages: list[ISubmissionMessage] = []
    try:
        for factory in transaction.factories:
            message = factory()
            if not any(message is m for m in messages):
                messages.append(message)
    except Exception:
        log.failure("could not open the message")
        for m in messages:
            m.connectionLost()
        session.transaction = None
        session.send(R.LOCAL_ERROR)
        return
    transaction.messages = messages
    transaction.data = DataReader(
        session.limits.max_line_length,
        session.max_message_size,
        session.limits.bare_newline == "reject",
    )
    session.read_data()
    session.send(R.START_MAIL_INPUT)


def bdat(session: Session, rest: str) -> None:
    """
    BDAT (RFC 3030) without CHUNKING advertised.
    """
    session.error(R.NO_CHUNKING)


def data_error_reply(error: DataError, max_line_length: int) -> Reply:
    """
    The reply to the final dot of a message that failed as it arrived.

    @param error: Why the content was refused (L{DataReader.error}).
    @param max_line_length: C{limits.max_line_length}, for the text.
    @return: C{552 5.3.4} (a line too long, naming the limit; RFC 5321
        section 4.5.3.1.6), C{550 5.6.0} (a bare CR or LF), C{452 4.3.1}
        (the memory bound) or C{552 5.3.4} (the message too big).
    """
    if error is DataError.LINE_TOO_LONG:
        return R.message_line_too_long(max_line_length)
    if error is DataError.BARE_NEWLINE:
        return R.BARE_NEWLINE_IN_DATA
    if error is DataError.NO_MEMORY:
        return R.INSUFFICIENT_STORAGE
    return R.MESSAGE_TOO_BIG


def abort(transaction: Transaction | None) -> None:
    """
    End C{transaction} without a final dot (the connection was lost): each
    message begun at DATA is told, and its content dropped.
    """
    if transaction is None:
        return
    for m in transaction.messages:
        m.connectionLost()
    transaction.messages = []
    transaction.data = None
