# -*- test-case-name: tests.test_smtp -*-
"""
relayd's ESMTP server protocol: the SMTP dialogue, its extensions, its
TLS and AUTH policy, and its limits.

L{RelaySMTP} subclasses L{twisted.mail.smtp.ESMTP} and keeps its seams (a
C{twisted.cred} portal whose avatar provides
L{twisted.mail.interfaces.IMessageDelivery}, and L{IMessage} objects that
receive the message), but replaces the parts that Twisted's defaults get
wrong for a server facing the internet:

  - its own framing: command lines are bounded (RFC 5321 section
    4.5.3.1.4) and dropped, not buffered, when too long; DATA is processed
    in whole buffers and only C{<CR><LF>.<CR><LF>} ends it (section 4.1.1.4,
    section 4.5.2), so that no "SMTP smuggling" variant can start a second
    transaction;
  - replies always come in command order (RFC 2920 PIPELINING): while a
    command waits for a Deferred, reading stops and later input waits;
  - AUTH (RFC 4954) only once the connection is secure, with
    C{538 5.7.11} before; a malformed exchange gets C{501 5.5.2};
  - input after STARTTLS in the same packet is discarded and the session
    starts over after the handshake (RFC 3207 section 4.2, CVE-2011-0411);
  - enhanced status codes (RFC 2034, RFC 3463) on every reply, SIZE
    (RFC 1870), 8BITMIME (RFC 6152), SMTPUTF8 (RFC 6531);
  - time limits (RFC 5321 section 4.5.3.2), connection caps and failed-AUTH
    throttling, with time from an injected clock.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable
from typing import Any

import attrs
from twisted.cred.credentials import UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import Portal
from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import ServerFactory
from twisted.logger import Logger
from twisted.mail import smtp
from twisted.mail.interfaces import IMessageDelivery
from twisted.python.failure import Failure

from relayd.config import LimitsConfig
from relayd.reply import Refused, Reply

__all__ = [
    "AuthThrottle",
    "ConnectionLimiter",
    "DeliveryTracker",
    "Reply",
    "RelaySMTP",
    "RelaySMTPFactory",
    "parse_path",
]

log = Logger()

# RFC 4954 section 4: an AUTH line may be up to 12288 octets long.
AUTH_LINE_LIMIT = 12288

# How much of one over-long command line is read (and dropped) before the
# connection is closed instead.
COMMAND_DISCARD_LIMIT = 65536


# -- addresses ------------------------------------------------------------

# RFC 5321 section 4.1.2, with RFC 6531's UTF-8 extensions: atext in the
# local part may be any non-ASCII UTF-8 character.
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~\-\u0080-\U0010ffff]"
_DOT_STRING = rf"{_ATEXT}+(?:\.{_ATEXT}+)*"
_QUOTED = r'"(?:[\x20\x21\x23-\x5b\x5d-\x7e\u0080-\U0010ffff]|\\[\x20-\x7e])*"'
_LABEL = (
    r"[A-Za-z0-9\u0080-\U0010ffff](?:[A-Za-z0-9\-\u0080-\U0010ffff]*[A-Za-z0-9\u0080-\U0010ffff])?"
)
_DOMAIN = rf"{_LABEL}(?:\.{_LABEL})*\.?"
_LITERAL = r"\[[\x21-\x5a\x5e-\x7e]+\]"
_MAILBOX = re.compile(rf"(?:{_DOT_STRING}|{_QUOTED})@(?:{_DOMAIN}|{_LITERAL})")
# An obsolete source route (RFC 5321 section 4.1.2, "A-d-l") is ignored.
_SOURCE_ROUTE = re.compile(r"^@[^:,]+(?:,@[^:,]+)*:")

# MAIL and RCPT: "FROM:" / "TO:", optional space (common), the path, then
# space-separated ESMTP parameters.
_MAIL_ARGS = re.compile(r"^FROM:\s*(<[^>]*>|[^\s<>]+)(.*)$", re.I | re.S)
_RCPT_ARGS = re.compile(r"^TO:\s*(<[^>]*>|[^\s<>]+)(.*)$", re.I | re.S)
_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f]")
_ESMTP_KEYWORD = re.compile(r"^[A-Za-z0-9][A-Za-z0-9\-]*$")
_XTEXT_VALUE = re.compile(r"^[\x21-\x3c\x3e-\x7e]+$")


class PathError(ValueError):
    """
    A reverse-path or forward-path is not valid RFC 5321 syntax.
    """


def parse_path(text: str, allow_empty: bool = False) -> str:
    """
    Parse a reverse-path or forward-path of MAIL FROM / RCPT TO.

    Angle brackets may be omitted (as many clients do); an obsolete source
    route is dropped (RFC 5321 section 4.1.2 and appendix C).

    @param text: The path as the client sent it, decoded as UTF-8.
    @param allow_empty: Accept the null path C{<>} (MAIL FROM only).
    @return: The mailbox (C{local@domain}), or C{""} for C{<>}.
    @raise PathError: The path is not a valid mailbox.
    """
    if text.startswith("<"):
        if not text.endswith(">"):
            raise PathError("unbalanced angle brackets")
        text = text[1:-1]
    if text == "":
        if allow_empty:
            return ""
        raise PathError("empty address")
    text = _SOURCE_ROUTE.sub("", text)
    if len(text) > 254 + 64 or not _MAILBOX.fullmatch(text):
        raise PathError("not a valid mailbox")
    return text


def _parse_parameters(text: str) -> dict[str, str | None] | None:
    """
    Split the ESMTP parameters of MAIL or RCPT (RFC 5321 section 4.1.2,
    C{Mail-parameters}).

    @return: Upper-cased keyword to value (C{None} for a bare keyword), or
        C{None} when the syntax is wrong.
    """
    params: dict[str, str | None] = {}
    for item in text.split():
        keyword, sep, value = item.partition("=")
        if not _ESMTP_KEYWORD.match(keyword):
            return None
        if sep and not _XTEXT_VALUE.match(value):
            return None
        params[keyword.upper()] = value if sep else None
    return params


def _is_ascii(text: str) -> bool:
    return text.isascii()


# -- connection and AUTH bookkeeping ---------------------------------------


@attrs.define
class ConnectionLimiter:
    """
    Counts open connections, in all and per client IP.

    @ivar max_connections: Global cap.
    @ivar max_per_ip: Cap per client IP address.
    """

    max_connections: int
    max_per_ip: int
    total: int = 0
    per_ip: dict[str, int] = attrs.field(factory=dict)

    def acquire(self, ip: str) -> bool:
        """
        Count a new connection from C{ip}.

        @return: C{False} (and count nothing) when a cap is reached.
        """
        if self.total >= self.max_connections:
            return False
        if self.per_ip.get(ip, 0) >= self.max_per_ip:
            return False
        self.total += 1
        self.per_ip[ip] = self.per_ip.get(ip, 0) + 1
        return True

    def release(self, ip: str) -> None:
        """
        Forget one connection from C{ip} (only after a successful
        L{acquire}).
        """
        self.total -= 1
        left = self.per_ip.get(ip, 1) - 1
        if left <= 0:
            self.per_ip.pop(ip, None)
        else:
            self.per_ip[ip] = left


@attrs.define
class AuthThrottle:
    """
    Failed AUTH attempts per client IP, across connections, held in memory
    with expiry.

    Each failure inside C{window} seconds grows the delay before the next
    C{535} reply (one second per earlier failure, at most C{max_delay});
    at C{limit} failures the IP is refused for C{lockout} seconds.  A
    success from one IP resets nothing for another.
    """

    clock: IReactorTime
    limit: int = 10
    window: float = 600.0
    lockout: float = 900.0
    max_delay: float = 5.0
    _failures: dict[str, list[float]] = attrs.field(factory=dict)
    _locked: dict[str, float] = attrs.field(factory=dict)

    def _expire(self, ip: str) -> list[float]:
        now = self.clock.seconds()
        if len(self._failures) > 100000:
            # Bound memory under a distributed attack: forget the oldest.
            for old in list(self._failures)[:50000]:
                del self._failures[old]
        times = [t for t in self._failures.get(ip, []) if now - t < self.window]
        if times:
            self._failures[ip] = times
        else:
            self._failures.pop(ip, None)
        return times

    def _prune_locked(self) -> None:
        """
        Forget lockouts that have expired, oldest first: every lockout lasts
        as long, so the table is in expiry order.  Amortized constant time.
        """
        now = self.clock.seconds()
        while self._locked:
            ip, until = next(iter(self._locked.items()))
            if until > now and len(self._locked) <= 100000:
                break
            del self._locked[ip]

    def locked(self, ip: str) -> bool:
        """
        @return: Whether C{ip} is refused AUTH right now.
        """
        until = self._locked.get(ip)
        if until is None:
            return False
        if self.clock.seconds() >= until:
            del self._locked[ip]
            return False
        return True

    def failed(self, ip: str) -> float:
        """
        Record one failed AUTH from C{ip}.

        @return: Seconds to wait before answering C{535}.
        """
        times = self._expire(ip)
        times.append(self.clock.seconds())
        self._failures[ip] = times
        if len(times) >= self.limit:
            self._prune_locked()
            self._locked.pop(ip, None)
            self._locked[ip] = self.clock.seconds() + self.lockout
            self._failures.pop(ip, None)
        return min(float(len(times) - 1), self.max_delay)

    def succeeded(self, ip: str) -> None:
        """
        Forget the failures of C{ip} after a successful AUTH from it.
        """
        self._failures.pop(ip, None)


class DeliveryTracker:
    """
    Knows the open sessions and the messages whose final reply is still
    owed, so that stopping the daemon can wait for them: a client cut off
    while the upstream takes its message would send it again.

    Stopping (L{relayd.service.SessionCloser}) calls L{stop}: idle sessions
    are told to close at once, the others right after their reply.

    @ivar sessions: The open sessions (L{RelaySMTP}).
    @ivar delivering: The sessions whose message's reply is still owed.
    @ivar stopping: The daemon is stopping: a session that opens or whose
        reply has been written is told to close.
    """

    def __init__(self) -> None:
        self.sessions: set[Any] = set()
        self.delivering: set[Any] = set()
        self.stopping = False
        self._waiters: list[tuple[Callable[[], bool], defer.Deferred[None]]] = []

    @property
    def pending(self) -> int:
        """
        How many messages are owed a reply.
        """
        return len(self.delivering)

    def opened(self, session: Any) -> None:
        """
        A session started (after its greeting).
        """
        self.sessions.add(session)
        if self.stopping:
            session.shut_down()

    def closed(self, session: Any) -> None:
        """
        A session's connection is closed: every reply written to it was
        flushed, or the client is gone.
        """
        self.sessions.discard(session)
        self._check()

    def begin(self, session: Any) -> None:
        """
        C{session}'s message is being relayed.
        """
        self.delivering.add(session)

    def end(self, session: Any) -> None:
        """
        Its reply has been written (or the client is gone).
        """
        self.delivering.discard(session)
        if self.stopping:
            session.shut_down(after_reply=True)
        self._check()

    def stop(self) -> None:
        """
        The daemon is stopping: tell every session without a message under
        way to close now; the others close after their reply (L{end}).
        """
        self.stopping = True
        for session in list(self.sessions - self.delivering):
            session.shut_down()

    def drained(self, clock: IReactorTime, timeout: float) -> defer.Deferred[None]:
        """
        @param clock: Time source for the timeout.
        @param timeout: Seconds to wait at most.
        @return: A Deferred that fires when no message is pending, or after
            C{timeout} seconds, whichever comes first.
        """
        return self._until(lambda: not self.delivering, clock, timeout)

    def all_closed(self, clock: IReactorTime, timeout: float) -> defer.Deferred[None]:
        """
        @param clock: Time source for the timeout.
        @param timeout: Seconds to wait at most.
        @return: A Deferred that fires when no session is open and no
            message pending, or after C{timeout} seconds.
        """
        return self._until(lambda: not self.sessions and not self.delivering, clock, timeout)

    def _until(
        self, done: Callable[[], bool], clock: IReactorTime, timeout: float
    ) -> defer.Deferred[None]:
        if done():
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred()
        self._waiters.append((done, d))

        def expire() -> None:
            if not d.called:
                d.callback(None)

        timer = clock.callLater(timeout, expire)

        def stop_timer(result: None) -> None:
            if timer.active():
                timer.cancel()

        d.addCallback(stop_timer)
        return d

    def _check(self) -> None:
        waiters, self._waiters = self._waiters, []
        for done, d in waiters:
            if d.called:  # a timed-out wait has fired already
                continue
            if done():
                d.callback(None)
            else:
                self._waiters.append((done, d))


# -- the protocol -----------------------------------------------------------


def _no_delay(transport: Any) -> None:
    """
    Turn off Nagle's algorithm on the TCP connection under C{transport}
    (also under a TLS wrapper): SMTP is a dialogue of small writes, and a
    reply held back for 40 ms waiting for an ACK stalls the client.
    """
    for _ in range(3):
        if transport is None:
            return
        set_no_delay = getattr(transport, "setTcpNoDelay", None)
        if set_no_delay is not None:
            set_no_delay(True)
            return
        transport = getattr(transport, "transport", None)


_COMMAND, _DATA, _AUTH, _CLOSED = "COMMAND", "DATA", "AUTH", "CLOSED"


class RelaySMTP(smtp.ESMTP):
    """
    One SMTP session.

    @ivar secure: The connection is TLS-protected: an implicit-TLS listener
        (RFC 8314) or after STARTTLS (RFC 3207).  Explicit protocol state,
        never guessed from the transport.
    @ivar authenticated: AUTH succeeded (RFC 4954).
    """

    factory: RelaySMTPFactory
    transport: Any
    portal: Any

    def __init__(self, factory: RelaySMTPFactory) -> None:
        super().__init__(chal={}, contextFactory=factory.context_factory)
        self.factory = factory
        self.portal = factory.portal
        self.clock = factory.clock
        self.limits: LimitsConfig = factory.limits
        self.hostname = factory.hostname
        self.secure = factory.implicit_tls
        self.peer_ip = ""
        self._counted = False
        self._inbuf = bytearray()
        self._data_messages: list[Any] = []
        self._data_parts: list[bytes] = []
        self._state = _COMMAND
        self._pending = False
        self._discarding = 0
        self._errors = 0
        self._auth_failures = 0
        self._messages = 0
        self._idle_call: IDelayedCall | None = None
        self._session_call: IDelayedCall | None = None
        self._auth_delay: IDelayedCall | None = None
        self._expire_after_reply: str | None = None
        self._reset_session()

    # -- session state --

    def _reset_session(self) -> None:
        """
        Forget everything a client said: the state at the greeting, and
        after STARTTLS (RFC 3207 section 4.2).
        """
        self.ehlo: str | None = None
        self.authenticated = False
        self.token_avatar: Any = None
        self._logout: Callable[[], None] | None = None
        self._reset_transaction()

    def _reset_transaction(self) -> None:
        """
        Forget the current mail transaction (RSET, EHLO, after DATA).
        """
        self.mail_from: str | None = None
        self.rcpt_to: list[str] = []
        self._factories: list[Callable[[], Any]] = []
        self.smtputf8 = False

    @property
    def max_message_size(self) -> int:
        """
        The message size limit in bytes: the configured one, or the
        authenticated token's when lower.
        """
        limit = self.limits.max_message_size
        own = getattr(self.token_avatar, "max_message_size", None)
        if own:
            limit = min(limit, own)
        return limit

    @property
    def max_recipients(self) -> int:
        """
        The recipient limit per transaction: the configured one, or the
        authenticated token's when lower.
        """
        limit = self.limits.max_recipients
        own = getattr(self.token_avatar, "max_recipients", None)
        if own:
            limit = min(limit, own)
        return limit

    # -- connection --

    def connectionMade(self) -> None:
        peer = self.transport.getPeer()
        self.peer_ip = str(getattr(peer, "host", peer))
        if not self.factory.limiter.acquire(self.peer_ip):
            log.info("refused connection from {peer}: too many", peer=self.peer_ip)
            self.reply(421, "4.7.0", f"{self.hostname} Too many connections, try again later")
            self._close()
            return
        self._counted = True
        _no_delay(self.transport)
        self.reply(220, "", f"{self.hostname} ESMTP relayd ready")
        self._arm_idle()
        self._session_call = self.clock.callLater(
            self.limits.session_timeout, self._timed_out, "Session lifetime exceeded"
        )
        self.factory.tracker.opened(self)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self._state = _CLOSED
        for call in (self._idle_call, self._session_call, self._auth_delay):
            if call is not None and call.active():
                call.cancel()
        self._idle_call = self._session_call = self._auth_delay = None
        if self._counted:
            self.factory.limiter.release(self.peer_ip)
            self._counted = False
        self._abort_data()
        if self._logout is not None:
            self._logout()
            self._logout = None
        self._inbuf = bytearray()
        self.factory.tracker.closed(self)

    def shut_down(self, after_reply: bool = False) -> None:
        """
        The daemon is stopping (L{DeliveryTracker.stop}): reply C{421 4.3.2}
        and close (RFC 5321 section 3.8), unless a message is streaming in
        (its delivery's end calls this again).

        @param after_reply: The reply to a message was just written: close
            without a C{421}, which a client's C{QUIT} would read as a
            failure (Python's C{smtplib} raises) after its C{250}.
        """
        if self._state in (_CLOSED, _DATA):
            return
        # Read on, paused or not: a TLS close waits for the client's
        # close_notify or its FIN.
        self.transport.resumeProducing()
        if not after_reply:
            self.reply(421, "4.3.2", f"{self.hostname} Service shutting down, closing connection")
        self._close()

    def _close(self) -> None:
        """
        Close the connection after the replies already written.
        """
        self._state = _CLOSED
        self._inbuf = bytearray()
        self.transport.loseConnection()

    def _arm_idle(self) -> None:
        """
        (Re)start the idle timer: RFC 5321 section 4.5.3.2 (5 minutes for
        commands, the DATA block timeout while a message streams in).
        """
        if self._state == _CLOSED:
            return
        timeout = self.limits.data_timeout if self._state == _DATA else self.limits.idle_timeout
        if self._idle_call is not None and self._idle_call.active():
            self._idle_call.reset(timeout)
        else:
            self._idle_call = self.clock.callLater(timeout, self._timed_out, "Timeout exceeded")

    def _timed_out(self, why: str) -> None:
        if self._state == _CLOSED:
            return
        if self._pending:
            # relayd is waiting (for the upstream): closing now would leave
            # the client to retry a message the upstream may still take.
            # Close right after the reply instead.
            self._expire_after_reply = why
            return
        log.info("closing session from {peer}: {why}", peer=self.peer_ip, why=why)
        self.reply(421, "4.4.2", f"{self.hostname} {why}, closing connection")
        self._close()

    # -- replies --

    def reply(self, code: int, status: str, text: str) -> None:
        """
        Send one reply line.

        @param code: The reply code.
        @param status: The enhanced status code (RFC 3463) or C{""}.
        @param text: One line of text (UTF-8 allowed).
        """
        if self._state == _CLOSED:
            return
        # One line: nothing in the text may end the reply or forge another.
        text = _UNPRINTABLE.sub(" ", text)
        line = f"{code} {status} {text}" if status else f"{code} {text}"
        self.transport.write(line.encode("utf-8", "replace") + b"\r\n")

    def send(self, r: Reply) -> None:
        """
        Send the reply L{Reply} C{r}.
        """
        self.reply(r.code, r.status, r.text)

    def error(self, code: int, status: str, text: str) -> None:
        """
        Reply to a command the client got wrong, and close the session once
        it made too many mistakes.
        """
        self.reply(code, status, text)
        self._errors += 1
        if self._errors >= self.limits.max_errors and self._state != _CLOSED:
            self.reply(421, "4.7.0", f"{self.hostname} Too many errors, closing connection")
            self._close()

    # -- input framing --

    def dataReceived(self, data: bytes) -> None:
        """
        Frame the byte stream into command lines or DATA.

        While a command waits for a Deferred, input is only buffered (and
        the transport paused), so replies keep command order (RFC 2920).
        """
        if self._state == _CLOSED:
            return
        self._arm_idle()
        if self._discarding:
            newline = data.find(b"\n")
            if newline < 0:
                self._discarding += len(data)
                if self._discarding > COMMAND_DISCARD_LIMIT:
                    self.reply(421, "4.7.0", f"{self.hostname} Line too long, closing connection")
                    self._close()
                return
            self._discarding = 0
            data = data[newline + 1 :]
        self._inbuf += data
        self._process()

    def _process(self) -> None:
        """
        Handle buffered input until it runs out or a command is pending.
        """
        while self._inbuf and not self._pending and self._state != _CLOSED:
            if self._state == _DATA:
                if not self._data_process():
                    return
                continue
            newline = self._inbuf.find(b"\n")
            limit = AUTH_LINE_LIMIT if self._state == _AUTH else self.limits.max_command_length
            head = self._inbuf[:5].upper()
            if head == b"MAIL ":
                limit += 500  # RFC 4954 section 5: room for AUTH=<mailbox>
            elif head == b"AUTH ":
                limit = AUTH_LINE_LIMIT  # RFC 4954 section 4: initial response
            # RFC 5321 section 4.5.3.1.4: at most `limit` octets with CRLF.
            if newline < 0 or newline >= limit:
                if newline < 0 and len(self._inbuf) < limit:
                    return
                if newline < 0:
                    self._discarding = len(self._inbuf)
                    self._inbuf = bytearray()
                else:
                    del self._inbuf[: newline + 1]
                self._state = _COMMAND if self._state == _AUTH else self._state
                self.error(500, "5.5.2", "Line too long")
                continue
            line = bytes(self._inbuf[:newline])
            del self._inbuf[: newline + 1]
            if line.endswith(b"\r"):
                line = line[:-1]
            elif self.limits.bare_newline == "reject":
                if self._state == _AUTH:
                    self._state = _COMMAND
                self.error(550, "5.6.0", "Bare <LF> received; lines must end with <CR><LF>")
                continue
            self._line(line)

    def _line(self, line: bytes) -> None:
        """
        Handle one command line (or AUTH response line).
        """
        if b"\0" in line:
            if self._state == _AUTH:
                self._state = _COMMAND
            self.error(501, "5.5.2", "NUL character in command")
            return
        if self._state == _AUTH:
            self._auth_response(line)
            return
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            self.error(500, "5.5.2", "Command is not valid UTF-8")
            return
        verb, _, rest = text.strip().partition(" ")
        # Only ASCII verbs: str.upper() maps some other letters onto ASCII
        # ("\u017f" to "S"), which must not make a command.
        handler = (
            getattr(self, "smtp_" + verb.upper(), None)
            if verb.isascii() and verb.isalpha()
            else None
        )
        if handler is None:
            self.error(500, "5.5.2", "Error: command not recognized")
            return
        result = handler(rest.strip())
        if isinstance(result, defer.Deferred):
            self._wait(result)

    def _wait(self, d: defer.Deferred[Any]) -> None:
        """
        Hold further input until C{d} fires (RFC 2920 section 3.1: replies
        in command order).  The transport is paused meanwhile, so a client
        cannot make relayd buffer without bound.
        """
        self._pending = True
        waiting = False

        def done(result: object) -> None:
            self._pending = False
            if self._expire_after_reply is not None and self._state != _CLOSED:
                self._timed_out(self._expire_after_reply)
            if not waiting or self._state == _CLOSED:
                return
            self.transport.resumeProducing()
            self._arm_idle()
            try:
                self._process()
            except Exception:
                log.failure("handling pipelined input failed")
                self.reply(421, "4.3.0", f"{self.hostname} Local error, closing connection")
                self._close()

        def failed(f: Failure) -> None:
            log.failure("command handler failed", f)
            self.reply(451, "4.3.0", "Local error in processing, try again later")

        d.addErrback(failed).addBoth(done)
        if self._pending:
            waiting = True
            self.transport.pauseProducing()
            # relayd is the one waiting: the client's idle timer stops.
            if self._idle_call is not None and self._idle_call.active():
                self._idle_call.cancel()
            self._idle_call = None

    # -- DATA --

    def _data_begin(self) -> None:
        self._state = _DATA
        self._data_parts = []
        self._data_size = 0
        self._data_crlf = True  # the line before ended with CRLF
        self._data_error: Reply | None = None
        self._data_skip_line = False
        self._data_skip_cr = False
        self._arm_idle()

    def _data_fail(self, reply: Reply) -> None:
        if self._data_error is None:
            self._data_error = reply
        self._data_parts = []

    def _data_process(self) -> bool:
        """
        Consume buffered DATA: complete lines at once, in whole buffers.

        Only a line C{.<CR><LF>} that follows a C{<CR><LF>} ends the data
        (RFC 5321 section 4.1.1.4); dot-stuffing is undone on whole buffers
        (section 4.5.2); bare C{<LF>} and C{<CR>} are normalized to
        C{<CR><LF>} or make the message fail, as configured.  An over-long
        line is dropped as it arrives (never buffered) and fails the
        message; its line end still counts for finding the end of data.

        @return: Whether there may be more to do with the buffer (the end
            of data was found); C{False} when more input is needed.
        """
        buf = self._inbuf
        if self._data_skip_line:
            newline = buf.find(b"\n")
            if newline < 0:
                self._data_skip_cr = buf.endswith(b"\r")
                self._inbuf = bytearray()
                return False
            if newline > 0:
                self._data_skip_cr = buf[newline - 1] == 0x0D
            self._data_crlf = self._data_skip_cr
            del buf[: newline + 1]
            self._data_skip_line = False
            if not buf:
                return False
        last = buf.rfind(b"\n")
        if last < 0:
            if len(buf) > self.limits.max_line_length + 2:
                self._skip_long_line(buf)
            return False
        # Find the end of data among the complete lines.
        if self._data_crlf and buf.startswith(b".\r\n"):
            end = 0
        else:
            end = buf.find(b"\r\n.\r\n", 0, last + 1)
            if end >= 0:
                end += 2
        if end >= 0:
            self._data_block(bytes(buf[:end]))
            self._inbuf = buf[end + 3 :]
            self._data_end()
            return True
        self._data_block(bytes(buf[: last + 1]))
        rest = buf[last + 1 :]
        self._inbuf = rest
        if len(rest) > self.limits.max_line_length + 2:
            self._skip_long_line(rest)
        return False

    def _skip_long_line(self, partial: bytearray) -> None:
        """
        The line being received is over the limit: fail the message and
        drop the line up to its end.

        @param partial: What has arrived of the line (no LF in it).
        """
        self._line_too_long()
        self._data_skip_line = True
        self._data_skip_cr = partial.endswith(b"\r")
        self._inbuf = bytearray()

    def _line_too_long(self) -> None:
        self._data_fail(
            Reply(
                552,
                "5.3.4",
                f"Message line too long (limit {self.limits.max_line_length} octets)",
            )
        )

    def _data_block(self, block: bytes) -> None:
        """
        Take complete lines of message content (each ends with LF).
        """
        if not block:
            return
        self._data_crlf = block.endswith(b"\r\n")
        if self._data_error is not None:
            return
        # Undo dot-stuffing (RFC 5321 section 4.5.2).
        if block.startswith(b"."):
            block = block[1:]
        if b"\n." in block:
            block = block.replace(b"\n.", b"\n")
        # Line length (RFC 5321 section 4.5.3.1.6): at most the limit, plus
        # the CR (the split is on LF), measured as received (a bare CR is
        # not a line end), once the dot-stuffing is undone.
        limit = self.limits.max_line_length + 1
        if len(block) > limit and max(map(len, block.split(b"\n"))) > limit:
            self._line_too_long()
            return
        # Line ends: every LF must be part of CRLF, and no bare CR.
        lf = block.count(b"\n")
        if block.count(b"\r") != lf or block.count(b"\r\n") != lf:
            if self.limits.bare_newline == "reject":
                self._data_fail(
                    Reply(
                        550,
                        "5.6.0",
                        "Message contains bare <CR> or <LF>; lines must end with <CR><LF>",
                    )
                )
                return
            block = block.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")
        self._data_size += len(block)
        if self._data_size > self.max_message_size:
            self._data_fail(Reply(552, "5.3.4", "Message size exceeds fixed maximum message size"))
            return
        self._data_parts.append(block)

    def _data_end(self) -> None:
        """
        The final dot arrived: hand the message over, then reply.
        """
        self._state = _COMMAND
        messages = self._data_messages
        self._data_messages = []
        body, self._data_parts = b"".join(self._data_parts), []
        self._messages += 1
        self._reset_transaction()
        if self._data_error is not None:
            for m in messages:
                m.connectionLost()
            self.send(self._data_error)
            return
        self.factory.tracker.begin(self)
        d = defer.Deferred.fromCoroutine(self._deliver(messages, body))
        self._wait(d)

    async def _deliver(self, messages: list[Any], body: bytes) -> None:
        """
        Hand the message over, wait for the verdict, reply.  The tracker
        counts the message until the reply is written.
        """
        try:
            for m in messages:
                m.bodyReceived(body)
            del body  # the messages hold it now; let them release it
            results: list[Reply] = [await m.eomReceived() for m in messages]
            # One reply for the transaction: 250 only if every message was
            # taken.
            refused = [r for r in results if r.code != 250]
            reply = refused[0] if refused else results[0]
            if self._state == _CLOSED and reply.code == 250:
                log.warn(
                    "client {peer} left before the reply to a relayed message"
                    " ({reply}); it may send the message again",
                    peer=self.peer_ip,
                    reply=reply.text,
                )
            self.send(reply)
        finally:
            self.factory.tracker.end(self)

    def _abort_data(self) -> None:
        for m in self._data_messages:
            m.connectionLost()
        self._data_messages = []
        self._data_parts = []

    # -- commands --

    def _need_ehlo(self) -> bool:
        if self.ehlo is None:
            self.error(503, "5.5.1", "Error: send HELO/EHLO first")
            return True
        return False

    def _extensions(self) -> list[str]:
        ext = ["PIPELINING", f"SIZE {self.max_message_size}"]
        if not self.secure and self.factory.context_factory is not None:
            ext.append("STARTTLS")
        if self.secure:
            # The old "AUTH=" form too, for clients that only look for it
            # (as Postfix's broken_sasl_auth_clients).
            ext += ["AUTH PLAIN LOGIN", "AUTH=PLAIN LOGIN"]
        ext += ["ENHANCEDSTATUSCODES", "8BITMIME", "SMTPUTF8", "HELP"]
        return ext

    def _greet(self, rest: str, esmtp: bool) -> None:
        if not rest:
            verb = "EHLO" if esmtp else "HELO"
            self.error(501, "5.5.4", f"Syntax: {verb} hostname")
            return
        self.ehlo = rest
        self._reset_transaction()
        if not esmtp:
            self.reply(250, "", self.hostname)
            return
        lines = [self.hostname] + self._extensions()
        out = [f"250-{x}" for x in lines[:-1]] + [f"250 {lines[-1]}"]
        self.transport.write(("\r\n".join(out) + "\r\n").encode("ascii"))

    def smtp_EHLO(self, rest: str) -> None:
        """
        EHLO (RFC 5321 section 4.1.1.1): list the extensions that apply now.
        """
        self._greet(rest, True)

    def smtp_HELO(self, rest: str) -> None:
        """
        HELO (RFC 5321 section 4.1.1.1).
        """
        self._greet(rest, False)

    def smtp_STARTTLS(self, rest: str) -> None:
        """
        STARTTLS (RFC 3207): begin TLS; discard pipelined input after it.
        """
        if rest:
            self.error(501, "5.5.4", "Syntax: STARTTLS")
        elif self.secure or self.factory.context_factory is None:
            self.error(
                503,
                "5.5.1",
                "Error: TLS already active" if self.secure else "Error: STARTTLS not available",
            )
        elif self._need_ehlo():
            return
        else:
            self.reply(220, "2.0.0", "Ready to start TLS")
            # RFC 3207 section 4.2 / CVE-2011-0411: what followed STARTTLS
            # in the clear is thrown away, and the session starts over.
            self._inbuf = bytearray()
            self._discarding = 0
            self.transport.startTLS(self.factory.context_factory)
            self.secure = True
            self._reset_session()

    def smtp_AUTH(self, rest: str) -> None:
        """
        AUTH (RFC 4954) with the PLAIN (RFC 4616) and LOGIN mechanisms.
        """
        if self._need_ehlo():
            return
        if not self.secure:
            self.error(538, "5.7.11", "Encryption required for requested authentication mechanism")
            return
        if self.authenticated:
            self.error(503, "5.5.1", "Error: already authenticated")
            return
        if self.mail_from is not None:
            self.error(503, "5.5.1", "Error: AUTH not allowed during a mail transaction")
            return
        if self.factory.throttle.locked(self.peer_ip):
            self.reply(
                421,
                "4.7.0",
                f"{self.hostname} Too many failed authentication attempts, try again later",
            )
            self._close()
            return
        parts = rest.split()
        if not parts or len(parts) > 2:
            self.error(501, "5.5.4", "Syntax: AUTH mechanism [initial-response]")
            return
        mechanism = parts[0].upper()
        initial = parts[1] if len(parts) == 2 else None
        if mechanism not in ("PLAIN", "LOGIN"):
            self.error(504, "5.5.4", "Unrecognized authentication type")
            return
        self._auth_mechanism = mechanism
        self._auth_username: str | None = None
        if initial is None:
            self._state = _AUTH
            self.reply(334, "", "" if mechanism == "PLAIN" else "VXNlcm5hbWU6")
            return
        self._state = _AUTH
        self._auth_response(initial.encode("ascii", "replace"))

    def _auth_response(self, line: bytes) -> None:
        """
        One AUTH response line (RFC 4954 section 4): base64, C{*} to cancel,
        C{=} for an empty initial response.
        """
        self._state = _COMMAND
        line = line.strip()
        if line == b"*":
            self.error(501, "5.7.0", "Authentication aborted")
            return
        try:
            decoded = b"" if line == b"=" else base64.b64decode(line, validate=True)
        except (binascii.Error, ValueError):
            self.error(501, "5.5.2", "Cannot decode AUTH response")
            return
        if self._auth_mechanism == "LOGIN":
            if self._auth_username is None:
                self._auth_username = decoded.decode("utf-8", "replace")
                self._state = _AUTH
                self.reply(334, "", "UGFzc3dvcmQ6")
                return
            username, password = self._auth_username, decoded
        else:
            fields = decoded.split(b"\0")
            if len(fields) != 3:
                self.error(501, "5.5.2", "Malformed AUTH PLAIN response")
                return
            authzid, authcid, password = fields
            if authzid and authzid != authcid:
                self._auth_failed()
                return
            username = authcid.decode("utf-8", "replace")
        self._wait(defer.Deferred.fromCoroutine(self._login(username, password)))

    async def _login(self, username: str, password: bytes) -> None:
        portal: Portal = self.portal
        credentials = UsernamePassword(username.encode("utf-8"), password)
        try:
            iface, avatar, logout = await portal.login(credentials, None, IMessageDelivery)
        except UnauthorizedLogin:
            await self._auth_failed_async()
            return
        self.factory.throttle.succeeded(self.peer_ip)
        self.authenticated = True
        self.token_avatar = avatar
        self._logout = logout
        log.info(
            "authenticated {peer} as token {name}",
            peer=self.peer_ip,
            name=getattr(avatar, "name", "?"),
        )
        self.reply(235, "2.7.0", "Authentication successful")

    def _auth_failed(self) -> None:
        self._wait(defer.Deferred.fromCoroutine(self._auth_failed_async()))

    async def _auth_failed_async(self) -> None:
        delay = self.factory.throttle.failed(self.peer_ip)
        self._auth_failures += 1
        log.info("failed AUTH from {peer}", peer=self.peer_ip)
        if delay > 0:
            d: defer.Deferred[None] = defer.Deferred()
            self._auth_delay = self.clock.callLater(delay, d.callback, None)
            await d
            self._auth_delay = None
        self.error(535, "5.7.8", "Authentication credentials invalid")
        if self._auth_failures >= self.limits.max_auth_failures and self._state != _CLOSED:
            self.reply(
                421,
                "4.7.0",
                f"{self.hostname} Too many failed authentication attempts, closing connection",
            )
            self._close()

    def smtp_MAIL(self, rest: str) -> defer.Deferred[None] | None:
        """
        MAIL FROM (RFC 5321 section 4.1.1.2) with SIZE (RFC 1870), BODY
        (RFC 6152), SMTPUTF8 (RFC 6531) and AUTH (RFC 4954 section 5).
        """
        if self._need_ehlo():
            return None
        if not self.authenticated:
            self.error(530, "5.7.0", "Authentication required")
            return None
        if self.mail_from is not None:
            self.error(503, "5.5.1", "Error: nested MAIL command")
            return None
        if self._messages >= self.limits.max_messages_per_connection:
            self.reply(
                421,
                "4.7.0",
                f"{self.hostname} Too many messages in this session, closing connection",
            )
            self._close()
            return None
        m = _MAIL_ARGS.match(rest)
        if m is None:
            self.error(501, "5.5.4", "Syntax: MAIL FROM:<address>")
            return None
        params = _parse_parameters(m.group(2))
        if params is None:
            self.error(501, "5.5.4", "Syntax error in parameters")
            return None
        smtputf8 = False
        size: int | None = None
        for keyword, value in params.items():
            if keyword == "SIZE":
                if value is None or not value.isdigit() or len(value) > 20:
                    self.error(501, "5.5.4", "Bad SIZE parameter")
                    return None
                size = int(value)
            elif keyword == "BODY":
                if value is None or value.upper() not in ("7BIT", "8BITMIME"):
                    self.error(501, "5.5.4", "Unsupported BODY parameter")
                    return None
            elif keyword == "SMTPUTF8":
                if value is not None:
                    self.error(501, "5.5.4", "SMTPUTF8 takes no value")
                    return None
                smtputf8 = True
            elif keyword == "AUTH":
                pass  # RFC 4954 section 5: accepted, not used for relaying.
            else:
                self.error(555, "5.5.4", f"Unsupported parameter {keyword}")
                return None
        try:
            address = parse_path(m.group(1), allow_empty=True)
        except PathError:
            self.error(501, "5.1.7", "Bad sender address syntax")
            return None
        if not smtputf8 and not _is_ascii(address):
            self.error(553, "5.6.7", "Non-ASCII address requires SMTPUTF8")
            return None
        if size is not None and size > self.max_message_size:
            self.error(552, "5.3.4", "Message size exceeds fixed maximum message size")
            return None
        avatar = self.token_avatar
        return self._validate(
            lambda: avatar.validateFrom((self.ehlo, self.peer_ip), address, smtputf8=smtputf8),
            lambda _: self._mail_accepted(address, smtputf8),
        )

    def _validate(
        self, call: Callable[[], Any], accepted: Callable[[Any], None]
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
            self.error(e.reply.code, e.reply.status, e.reply.text)
            return None
        except Exception:
            log.failure("validation failed")
            self.reply(451, "4.3.0", "Local error in processing, try again later")
            return None
        if not isinstance(result, defer.Deferred):
            accepted(result)
            return None

        async def later() -> None:
            try:
                value = await result
            except Refused as e:
                self.error(e.reply.code, e.reply.status, e.reply.text)
                return
            accepted(value)

        return defer.Deferred.fromCoroutine(later())

    def _mail_accepted(self, address: str, smtputf8: bool) -> None:
        self.mail_from = address
        self.smtputf8 = smtputf8
        self.reply(250, "2.1.0", "Ok")

    def smtp_RCPT(self, rest: str) -> defer.Deferred[None] | None:
        """
        RCPT TO (RFC 5321 section 4.1.1.3).
        """
        if self.mail_from is None:
            self.error(503, "5.5.1", "Error: need MAIL command")
            return None
        m = _RCPT_ARGS.match(rest)
        if m is None:
            self.error(501, "5.5.4", "Syntax: RCPT TO:<address>")
            return None
        params = _parse_parameters(m.group(2))
        if params is None:
            self.error(501, "5.5.4", "Syntax error in parameters")
            return None
        if params:
            self.error(555, "5.5.4", f"Unsupported parameter {next(iter(params))}")
            return None
        try:
            address = parse_path(m.group(1))
        except PathError:
            if m.group(1).strip("<>").lower() != "postmaster":
                self.error(501, "5.1.3", "Bad recipient address syntax")
                return None
            address = "postmaster"  # RFC 5321 section 4.1.1.3: always accepted
        if not self.smtputf8 and not _is_ascii(address):
            self.error(553, "5.6.7", "Non-ASCII address requires SMTPUTF8")
            return None
        if len(self.rcpt_to) >= self.max_recipients:
            self.reply(452, "4.5.3", "Error: too many recipients")
            return None
        avatar = self.token_avatar
        return self._validate(
            lambda: avatar.validateTo(address),
            lambda factory: self._rcpt_accepted(address, factory),
        )

    def _rcpt_accepted(self, address: str, factory: Callable[[], Any]) -> None:
        if self.mail_from is None:  # RSET raced us; cannot happen in order
            return
        self.rcpt_to.append(address)
        self._factories.append(factory)
        self.reply(250, "2.1.5", "Ok")

    def _refuse_data(self, code: int, status: str, text: str) -> None:
        """
        Refuse DATA.  A client that sent message content behind DATA
        without waiting for the 354 (against RFC 2920 section 3.1) would
        have it read as commands: treat DATA as a synchronisation point and
        close the session instead.
        """
        self.error(code, status, text)
        if self._inbuf and self._state != _CLOSED:
            self.reply(
                421, "4.5.0", f"{self.hostname} Improper pipelining after DATA, closing connection"
            )
            self._close()

    def smtp_DATA(self, rest: str) -> None:
        """
        DATA (RFC 5321 section 4.1.1.4).
        """
        if rest:
            self._refuse_data(501, "5.5.4", "Syntax: DATA")
            return
        if self.mail_from is None:
            self._refuse_data(503, "5.5.1", "Error: need MAIL command")
            return
        if not self.rcpt_to:
            self._refuse_data(554, "5.5.1", "Error: no valid recipients")
            return
        messages: list[Any] = []
        try:
            for factory in self._factories:
                message = factory()
                if not any(message is m for m in messages):
                    messages.append(message)
        except Exception:
            log.failure("could not open the message")
            for m in messages:
                m.connectionLost()
            self._reset_transaction()
            self.reply(451, "4.3.0", "Local error in processing, try again later")
            return
        self._data_messages = messages
        self._data_begin()
        self.reply(354, "", "End data with <CR><LF>.<CR><LF>")

    def smtp_BDAT(self, rest: str) -> None:
        """
        BDAT (RFC 3030) without CHUNKING advertised.
        """
        self.error(502, "5.5.1", "Error: command not implemented (no CHUNKING)")

    def smtp_RSET(self, rest: str) -> None:
        """
        RSET (RFC 5321 section 4.1.1.5).
        """
        self._reset_transaction()
        self.reply(250, "2.0.0", "Ok")

    def smtp_NOOP(self, rest: str) -> None:
        """
        NOOP (RFC 5321 section 4.1.1.9).
        """
        self.reply(250, "2.0.0", "Ok")

    def smtp_VRFY(self, rest: str) -> None:
        """
        VRFY (RFC 5321 section 3.5.3): never confirms an address.
        """
        self.reply(252, "2.5.0", "Cannot VRFY user, but will accept message and attempt delivery")

    def smtp_EXPN(self, rest: str) -> None:
        """
        EXPN (RFC 5321 section 3.5.2): lists are not expanded.
        """
        self.error(502, "5.5.1", "Error: command not implemented")

    def smtp_HELP(self, rest: str) -> None:
        """
        HELP (RFC 5321 section 4.1.1.8).
        """
        self.reply(
            214,
            "2.0.0",
            "See RFC 5321; commands: EHLO HELO STARTTLS AUTH MAIL RCPT DATA RSET NOOP VRFY HELP QUIT",
        )

    def smtp_QUIT(self, rest: str) -> None:
        """
        QUIT (RFC 5321 section 4.1.1.10).
        """
        self.reply(221, "2.0.0", "Bye")
        self._close()

    smtp_ETRN = smtp_TURN = smtp_SEND = smtp_SOML = smtp_SAML = smtp_EXPN


class RelaySMTPFactory(ServerFactory):
    """
    Builds L{RelaySMTP} sessions for one listener.

    @ivar portal: The C{twisted.cred} portal that turns AUTH credentials into
        an L{IMessageDelivery} avatar.
    @ivar hostname: The name in the greeting and EHLO reply.
    @ivar limits: The C{[limits]} configuration.
    @ivar clock: Time source for every timer.
    @ivar context_factory: TLS server context, or C{None} when TLS is not
        available.
    @ivar implicit_tls: Connections are TLS from the first byte (the
        factory is wrapped in TLS by L{relayd.tls.implicit_tls_factory}).
    @ivar limiter: Open-connection counters (may be shared by listeners).
    @ivar throttle: Failed-AUTH counters per IP (may be shared).
    @ivar tracker: Messages whose reply is still owed (may be shared).
    """

    protocol = RelaySMTP  # type: ignore[assignment]
    noisy = False

    def __init__(
        self,
        portal: Portal,
        hostname: str,
        limits: LimitsConfig,
        clock: IReactorTime,
        context_factory: Any = None,
        implicit_tls: bool = False,
        limiter: ConnectionLimiter | None = None,
        throttle: AuthThrottle | None = None,
        tracker: DeliveryTracker | None = None,
    ) -> None:
        self.portal = portal
        self.hostname = hostname
        self.limits = limits
        self.clock = clock
        self.context_factory = context_factory
        self.implicit_tls = implicit_tls
        self.tracker = tracker or DeliveryTracker()
        self.limiter = limiter or ConnectionLimiter(
            limits.max_connections, limits.max_connections_per_ip
        )
        self.throttle = throttle or AuthThrottle(
            clock,
            limit=limits.auth_failures_per_ip,
            window=limits.auth_failure_window,
            lockout=limits.auth_lockout,
        )

    def buildProtocol(self, addr: Any) -> RelaySMTP:  # type: ignore[override]
        p = RelaySMTP(self)
        p.factory = self
        return p
