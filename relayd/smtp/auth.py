# -*- test-case-name: tests.smtp.test_auth,tests.smtp.test_auth_throttle -*-
"""
The AUTH verb of an SMTP session (RFC 4954), with the PLAIN (RFC 4616) and
LOGIN mechanisms, the failed-AUTH throttle and the login to the portal.

The functions here are verbs of L{relayd.smtp.session.RelaySMTP}, kept in
their own module as L{relayd.smtp.envelope} holds MAIL, RCPT and DATA.
Each takes the session as a L{Session}: the state and replies a verb uses,
described here so that this module does not import the one that calls it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, cast

from twisted.cred.credentials import UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import Portal
from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from relayd import metrics
from relayd import reply as R
from relayd.config import LimitsConfig
from relayd.interfaces import ISubmission
from relayd.reply import Refused, Reply
from relayd.smtp.envelope import Transaction
from relayd.smtp.guards import AuthGuard
from relayd.smtp.sasl import MECHANISMS, Aborted, Challenge, Credentials, SASLExchange, Step

__all__ = ["Session", "auth", "respond"]

log = Logger()


class _Factory(Protocol):
    """
    What the verbs of this module need from the session's factory.

    @ivar guard: Failed-AUTH throttling (L{AuthGuard}).
    """

    guard: AuthGuard


class Session(Protocol):
    """
    What the verbs of this module need from the SMTP session
    (L{relayd.smtp.session.RelaySMTP} provides it).

    @ivar authenticated: AUTH succeeded (RFC 4954); set on success.
    @ivar avatar: The L{ISubmission} avatar after AUTH, else C{None}.
    @ivar _logout: The avatar's logout callable, or C{None}.
    @ivar _sasl: The AUTH exchange under way, or C{None}.
    @ivar _auth_failures: Failed AUTH exchanges in this session.
    @ivar _auth_delay: The pending delay before a failure reply, or C{None}.
    """

    authenticated: bool
    avatar: ISubmission | None
    _logout: Callable[[], None] | None
    _sasl: SASLExchange | None
    _auth_failures: int
    _auth_delay: IDelayedCall | None

    @property
    def factory(self) -> _Factory:
        """The factory that built the session (its C{guard})."""

    @property
    def portal(self) -> Portal:
        """The C{twisted.cred} portal that turns credentials into an avatar."""

    @property
    def clock(self) -> IReactorTime:
        """Time source for every timer."""

    @property
    def secure(self) -> bool:
        """The connection is TLS-protected."""

    @property
    def transaction(self) -> Transaction | None:
        """The current mail transaction, or C{None}."""

    @property
    def peer_ip(self) -> str:
        """The client's IP address, as text."""

    @property
    def limits(self) -> LimitsConfig:
        """The C{[limits]} configuration."""

    @property
    def closed(self) -> bool:
        """The connection is closing: nothing more is read or written."""

    def _need_ehlo(self) -> bool:
        """Reply C{503} and return C{True} before EHLO/HELO."""

    def _wait(self, d: defer.Deferred[Any]) -> None:
        """Stop reading until C{d} fires (replies stay in command order)."""

    def _end_auth(self) -> None:
        """Leave the AUTH exchange (if in one): the next line is a command."""

    def read_sasl(self, exchange: SASLExchange) -> None:
        """Read AUTH response lines next, for C{exchange}."""

    def send(self, r: Reply) -> None:
        """Send the reply C{r}."""

    def error(self, r: Reply) -> None:
        """Reply C{r} to a command the client got wrong (counts errors)."""

    def closing(self, r: Reply) -> None:
        """Send the C{421} C{r} and close the connection."""


def auth(session: Session, rest: str) -> None:
    """
    AUTH (RFC 4954) with the PLAIN (RFC 4616) and LOGIN mechanisms.

    Replies C{538 5.7.11} before TLS, C{503} when already authenticated or
    in a transaction, C{501}/C{504} to a bad argument; otherwise waits for
    the throttle (L{AuthGuard.check}) and begins the exchange.

    @param session: The SMTP session.
    @param rest: The command's argument: the mechanism and an optional
        initial response.
    """
    if session._need_ehlo():
        return
    if not session.secure:
        session.error(R.ENCRYPTION_REQUIRED)
    elif session.authenticated:
        session.error(R.ALREADY_AUTHENTICATED)
    elif session.transaction is not None:
        session.error(R.AUTH_DURING_TRANSACTION)
    else:
        parts = rest.split()
        if not parts or len(parts) > 2:
            session.error(R.SYNTAX_AUTH)
        elif parts[0].upper() not in MECHANISMS:
            session.error(R.UNRECOGNIZED_AUTH_TYPE)
        else:
            # The throttle may answer later (shared counters): wait for
            # it, replies stay in order.
            session._wait(defer.Deferred.fromCoroutine(_start(session, parts)))


async def _start(session: Session, parts: list[str]) -> None:
    """
    Begin the AUTH exchange, unless the client's network is throttled
    (L{AuthGuard.check}: C{454 4.7.0}, the session goes on).
    """
    refusal = await session.factory.guard.check(session.peer_ip)
    if refusal is not None:
        metrics.auth("locked_out")
        session.send(refusal)
        return
    exchange = SASLExchange(parts[0].upper())
    session.read_sasl(exchange)
    initial = parts[1].encode("ascii", "replace") if len(parts) == 2 else None
    d = _step(session, exchange.start(initial))
    if d is not None:
        await d


def respond(session: Session, line: bytes) -> defer.Deferred[None] | None:
    """
    Handle one AUTH response line (RFC 4954 section 4).

    @param session: The SMTP session, in an AUTH exchange.
    @param line: The client's line, without its CRLF.
    @return: The Deferred of the login or failure to wait for, if any.
    """
    assert session._sasl is not None
    return _step(session, session._sasl.respond(line))


def _step(session: Session, step: Step) -> defer.Deferred[None] | None:
    """
    Act on what the AUTH exchange says comes next.

    @return: The Deferred of the login or failure to wait for, if any.
    """
    if isinstance(step, Challenge):
        session.send(step.reply)
        return None
    session._end_auth()
    if isinstance(step, Aborted):
        session.error(step.reply)
        return None
    if isinstance(step, Credentials):
        return defer.Deferred.fromCoroutine(_login(session, step.username, step.password))
    return defer.Deferred.fromCoroutine(_failed(session))


async def _login(session: Session, username: str, password: bytes) -> None:
    """
    Log in with the credentials of an exchange: C{235} and the avatar, the
    credential's throttle (C{454 4.7.0}), C{535} or the backend's C{454}.
    """
    refusal = await session.factory.guard.check_credential(username, password)
    if refusal is not None:
        metrics.auth("locked_out")
        session.send(refusal)
        return
    credentials = UsernamePassword(username.encode("utf-8"), password)
    try:
        iface, avatar, logout = await session.portal.login(credentials, None, ISubmission)
    except UnauthorizedLogin as e:
        await _failed(session, username, password, getattr(e, "reply", R.AUTH_INVALID))
        return
    except Refused as e:  # the auth backend cannot answer: 454
        session.send(e.reply)
        return
    # A success clears no failure count (docs/security.md).
    metrics.auth("success")
    session.authenticated = True
    session.avatar = cast(ISubmission, avatar)
    session._logout = logout
    log.info("authenticated {peer} as token {name}", peer=session.peer_ip, name=session.avatar.name)
    session.send(R.AUTH_SUCCESSFUL)


async def _failed(
    session: Session,
    username: str | None = None,
    password: bytes = b"",
    refusal: Reply = R.AUTH_INVALID,
) -> None:
    """
    Count a failed AUTH (L{AuthGuard.failed}), reply C{refusal} after the
    throttle's delay, and close with C{421} after too many in the session.
    """
    delay = await session.factory.guard.failed(session.peer_ip, username, password)
    session._auth_failures += 1
    metrics.auth("failure")
    log.info("failed AUTH from {peer}", peer=session.peer_ip)
    if delay > 0:
        d: defer.Deferred[None] = defer.Deferred()
        session._auth_delay = session.clock.callLater(delay, d.callback, None)
        await d
        session._auth_delay = None
    session.error(refusal)
    if session._auth_failures >= session.limits.max_auth_failures and not session.closed:
        session.closing(R.TOO_MANY_AUTH_FAILURES)
