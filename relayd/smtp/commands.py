# -*- test-case-name: tests.smtp -*-
"""
The greeting and simple verbs of an SMTP session: EHLO and HELO with the
extension list (RFC 5321 section 4.1.1.1), STARTTLS (RFC 3207), and RSET,
NOOP, VRFY, EXPN, HELP and QUIT (RFC 5321 sections 3.5 and 4.1.1).

The functions here are verbs of L{relayd.smtp.session.RelaySMTP}, kept in
their own module as L{relayd.smtp.envelope} holds MAIL, RCPT and DATA.
Each takes the session as a L{Session}: the state and replies a verb uses,
described here so that this module does not import the one that calls it.
"""

from __future__ import annotations

from typing import Any, Protocol

from relayd import reply as R
from relayd.reply import Reply
from relayd.smtp.envelope import Transaction
from relayd.smtp.framing import Framer
from relayd.smtp.sasl import MECHANISMS

__all__ = [
    "Session",
    "ehlo",
    "expn",
    "extensions",
    "help",
    "helo",
    "noop",
    "quit",
    "rset",
    "starttls",
    "vrfy",
]


class _Factory(Protocol):
    """
    What the verbs of this module need from the session's factory.

    @ivar context_factory: TLS server context, or C{None} when TLS is not
        available.
    """

    context_factory: Any


class Session(Protocol):
    """
    What the verbs of this module need from the SMTP session
    (L{relayd.smtp.session.RelaySMTP} provides it).

    @ivar ehlo: The EHLO/HELO argument, or C{None} before it; set here.
    @ivar secure: The connection is TLS-protected; set by STARTTLS.
    @ivar transaction: The current mail transaction, or C{None}; EHLO, HELO
        and RSET end it.
    @ivar transport: The connection.
    """

    ehlo: str | None
    secure: bool
    transaction: Transaction | None
    transport: Any
    #: The server's name (C{server.hostname}).
    hostname: str

    @property
    def factory(self) -> _Factory:
        """The factory that built the session (its C{context_factory})."""

    @property
    def framing(self) -> Framer:
        """The input buffer, cut into lines and DATA."""

    @property
    def max_message_size(self) -> int:
        """The message size limit in bytes that applies now."""

    def _need_ehlo(self) -> bool:
        """Reply C{503} and return C{True} before EHLO/HELO."""

    def _reset_session(self) -> None:
        """Forget everything the client said (RFC 3207 section 4.2)."""

    def _close(self) -> None:
        """Close the connection after the replies already written."""

    def reply(self, code: int, status: str, text: str) -> None:
        """Send one reply line."""

    def write(self, data: bytes) -> None:
        """Send whole reply lines (octets with their CRLFs)."""

    def send(self, r: Reply) -> None:
        """Send the reply C{r}."""

    def error(self, r: Reply) -> None:
        """Reply C{r} to a command the client got wrong (counts errors)."""


def extensions(session: Session) -> list[str]:
    """
    The EHLO keywords that apply now (STARTTLS before TLS, AUTH after).
    """
    ext = ["PIPELINING", f"SIZE {session.max_message_size}"]
    if not session.secure and session.factory.context_factory is not None:
        ext.append("STARTTLS")
    if session.secure:
        # The old "AUTH=" form too, for clients that only look for it
        # (as Postfix's broken_sasl_auth_clients).
        mechanisms = " ".join(MECHANISMS)
        ext += [f"AUTH {mechanisms}", f"AUTH={mechanisms}"]
    ext += ["ENHANCEDSTATUSCODES", "8BITMIME", "SMTPUTF8", "HELP"]
    return ext


def _greet(session: Session, rest: str, esmtp: bool) -> None:
    if not rest:
        session.error(R.SYNTAX_EHLO if esmtp else R.SYNTAX_HELO)
        return
    session.ehlo = rest
    session.transaction = None
    if not esmtp:
        session.reply(250, "", session.hostname)
        return
    lines = [session.hostname] + extensions(session)
    out = [f"250-{x}" for x in lines[:-1]] + [f"250 {lines[-1]}"]
    session.write(("\r\n".join(out) + "\r\n").encode("ascii"))


def ehlo(session: Session, rest: str) -> None:
    """
    EHLO (RFC 5321 section 4.1.1.1): list the extensions that apply now.
    """
    _greet(session, rest, True)


def helo(session: Session, rest: str) -> None:
    """
    HELO (RFC 5321 section 4.1.1.1).
    """
    _greet(session, rest, False)


def starttls(session: Session, rest: str) -> None:
    """
    STARTTLS (RFC 3207): begin TLS; discard pipelined input after it.
    """
    if rest:
        session.error(R.SYNTAX_STARTTLS)
    elif session.secure:
        session.error(R.TLS_ALREADY_ACTIVE)
    elif session.factory.context_factory is None:
        session.error(R.STARTTLS_NOT_AVAILABLE)
    elif session._need_ehlo():
        return
    else:
        session.send(R.READY_TO_START_TLS)
        # RFC 3207 section 4.2 / CVE-2011-0411: what followed STARTTLS
        # in the clear is thrown away, and the session starts over.
        session.framing.clear()
        session.transport.startTLS(session.factory.context_factory)
        session.secure = True
        session._reset_session()


def rset(session: Session, rest: str) -> None:
    """
    RSET (RFC 5321 section 4.1.1.5).
    """
    session.transaction = None
    session.send(R.OK)


def noop(session: Session, rest: str) -> None:
    """
    NOOP (RFC 5321 section 4.1.1.9).
    """
    session.send(R.OK)


def vrfy(session: Session, rest: str) -> None:
    """
    VRFY (RFC 5321 section 3.5.3): never confirms an address.
    """
    session.send(R.CANNOT_VRFY)


def expn(session: Session, rest: str) -> None:
    """
    EXPN (RFC 5321 section 3.5.2): lists are not expanded.
    """
    session.error(R.COMMAND_NOT_IMPLEMENTED)


def help(session: Session, rest: str) -> None:
    """
    HELP (RFC 5321 section 4.1.1.8).
    """
    session.send(R.HELP)


def quit(session: Session, rest: str) -> None:
    """
    QUIT (RFC 5321 section 4.1.1.10).
    """
    session.send(R.BYE)
    session._close()
