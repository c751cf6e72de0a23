# -*- test-case-name: tests.smtp -*-
"""
One SMTP session: states, verbs, reply order, timers, STARTTLS and AUTH.

L{RelaySMTP} is a plain L{Protocol}, not a C{twisted.mail.smtp.ESMTP}
(see docs and STYLE.md for why).  It keeps Twisted's cred seam: AUTH
credentials go to a C{twisted.cred} portal, whose realm returns an
L{ISubmission} avatar that validates the envelope and takes the message.
Beside it, with no Twisted code: L{relayd.smtp.framing}, L{relayd.smtp.syntax}
and L{relayd.smtp.sasl}; the verbs in L{relayd.smtp.commands},
L{relayd.smtp.envelope} and L{relayd.smtp.auth}.

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

import enum
import secrets
from collections.abc import Callable
from typing import Any

from twisted.cred.portal import Portal
from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import Protocol, ServerFactory
from twisted.logger import Logger
from twisted.python.failure import Failure

from relayd import events, metrics
from relayd import reply as R
from relayd.config import LimitsConfig
from relayd.interfaces import ICounters, ISubmission, ISubmissionMessage
from relayd.reply import Reply
from relayd.replytexts import ReplyTexts
from relayd.smtp import auth, commands, envelope
from relayd.smtp.envelope import Transaction
from relayd.smtp.flow import WAITING, DataRate, IdleTimer, OutputFlow, ReadGate, no_delay
from relayd.smtp.framing import Framer, LineError, line_of, wire_line
from relayd.smtp.guards import (
    AuthGuard,
    ConnectionLimiter,
    DeliveryTracker,
    LocalCounters,
    MemoryBudget,
    MessageHold,
    declared_size,
    process_secret,
)
from relayd.smtp.sasl import SASLExchange
from relayd.tlsbuffers import RELEASE_AFTER, release_buffers

__all__ = ["RelaySMTP", "RelaySMTPFactory", "State"]

log = Logger()


#: Seconds a closing connection waits for the client to read the last
#: replies and answer the TLS close alert before it is cut (at most the
#: idle timeout).
CLOSE_GRACE = 30.0


#: The verbs handled wholly in another module: verb -> C{f(session, rest)}.
#: MAIL and DATA, which the session takes part in, are its C{smtp_}
#: methods.
_COMMANDS: dict[str, Callable[[Any, str], defer.Deferred[None] | None]] = {
    "EHLO": commands.ehlo,
    "HELO": commands.helo,
    "STARTTLS": commands.starttls,
    "RSET": commands.rset,
    "NOOP": commands.noop,
    "VRFY": commands.vrfy,
    "HELP": commands.help,
    "QUIT": commands.quit,
    "AUTH": auth.auth,
    "RCPT": envelope.rcpt,
    "BDAT": envelope.bdat,
    **dict.fromkeys(("EXPN", "ETRN", "TURN", "SEND", "SOML", "SAML"), commands.expn),
}


class State(enum.Enum):
    """
    What the session reads next.
    """

    COMMAND = "command"  # a command line
    DATA = "data"  # message content, up to the end of data
    AUTH = "auth"  # an AUTH response line
    CLOSED = "closed"  # nothing: the connection is closing


class RelaySMTP(Protocol):
    """
    One SMTP session.

    @ivar secure: The connection is TLS-protected: an implicit-TLS listener
        (RFC 8314) or after STARTTLS (RFC 3207).  Explicit protocol state,
        never guessed from the transport.
    @ivar ehlo: The EHLO/HELO argument, or C{None} before it.
    @ivar authenticated: AUTH succeeded (RFC 4954).
    @ivar avatar: The L{ISubmission} avatar after AUTH, else C{None}.
    @ivar transaction: The current mail transaction, or C{None}.
    @ivar framing: The input buffer, cut into lines and DATA.
    @ivar negotiated_tls: The connection's TLS version once known
        (L{relayd.events.begin} reads it once), else C{""}.
    """

    # Slots, not a dictionary, for the attributes (Protocol's transport
    # and connected too): a kilobyte less for each idle session
    # (docs/performance.md).
    __slots__ = tuple(
        "_auth_delay _auth_failures _counted _declared_size _errors _expire_after_reply "
        "_hold _idle _logout _messages _metrics_labels _pending _rate _sasl "
        "_session_call _state _tls_input authenticated avatar clock connected ehlo "
        "factory flow framing gate hostname limits negotiated_tls peer_ip portal secure "
        "session_id transaction transport".split()
    )

    factory: RelaySMTPFactory
    transport: Any

    def __init__(self, factory: RelaySMTPFactory) -> None:
        self.factory = factory
        self.transport = None
        self.connected = 0
        self.portal: Portal = factory.portal
        self.clock = factory.clock
        self.limits: LimitsConfig = factory.limits
        self.hostname = factory.hostname
        self.secure = factory.implicit_tls
        self._tls_input: int | None = None  # bytes since the buffers' release
        self.peer_ip = ""
        self.negotiated_tls = ""
        self.framing = Framer(
            self.limits.max_command_length,
            self.limits.max_line_length,
            self.limits.bare_newline == "reject",
        )
        self._state = State.COMMAND
        self._counted = False
        self._pending = False
        self.session_id = secrets.token_hex(6)
        self._errors = 0
        self._auth_failures = 0
        self._messages = 0
        self._idle = IdleTimer(self.clock, self._idle_expired)
        self._session_call: IDelayedCall | None = None
        self._auth_delay: IDelayedCall | None = None
        self._expire_after_reply: Reply | None = None
        self._hold: MessageHold | None = None  # memory of the message in DATA
        self._rate: DataRate | None = None  # the DATA minimum rate
        self._declared_size = 0  # the last MAIL's SIZE (RFC 1870)
        self._reset_session()

    # -- session state --

    def _reset_session(self) -> None:
        """
        Forget everything a client said: the state at the greeting, and
        after STARTTLS (RFC 3207 section 4.2).
        """
        self.ehlo: str | None = None
        self.authenticated = False
        self.avatar: ISubmission | None = None
        self._logout: Callable[[], None] | None = None
        self._sasl: SASLExchange | None = None
        self.transaction: Transaction | None = None

    def _lower(self, configured: int, own: int | None) -> int:
        return min(configured, own) if own else configured

    @property
    def max_message_size(self) -> int:
        """
        The message size limit in bytes: the configured one, or the
        avatar's (L{ISubmission.max_message_size}) when lower.
        """
        own = self.avatar.max_message_size if self.avatar is not None else None
        return self._lower(self.limits.max_message_size, own)

    @property
    def max_recipients(self) -> int:
        """
        The recipient limit per transaction: the configured one, or the
        avatar's (L{ISubmission.max_recipients}) when lower.
        """
        own = self.avatar.max_recipients if self.avatar is not None else None
        return self._lower(self.limits.max_recipients, own)

    # -- connection --

    def connectionMade(self) -> None:
        # Back-pressure (relayd.smtp.flow): no input is read or handled
        # while a command waits or the client does not read its replies.
        self.gate = ReadGate(self.transport)
        self.flow = OutputFlow(self.gate, self._drained)
        self.flow.register()
        peer = self.transport.getPeer()
        self.peer_ip = str(getattr(peer, "host", peer))
        if not self.factory.limiter.acquire(self.peer_ip):
            log.info("refused connection from {peer}: too many", peer=self.peer_ip)
            metrics.limit_refused("connections")
            self.closing(R.TOO_MANY_CONNECTIONS)
            return
        self._counted = True
        no_delay(self.transport)
        self.send(R.GREETING.with_text(f"{self.hostname} {R.GREETING.text}"))
        self._arm_idle()
        self._session_call = self.clock.callLater(
            self.limits.session_timeout, self._timed_out, R.SESSION_LIFETIME_EXCEEDED
        )
        self.factory.tracker.opened(self)
        metrics.session_opened(self)

    def connectionLost(self, reason: Failure | None = None) -> None:  # type: ignore[override]
        self._state = State.CLOSED
        self._idle.cancel()
        for call in (self._session_call, self._auth_delay):
            if call is not None and call.active():
                call.cancel()
        self._session_call = self._auth_delay = None
        if self._counted:
            self.factory.limiter.release(self.peer_ip)
            self._counted = False
        envelope.abort(self.transaction)
        self._release_hold()
        if self._logout is not None:
            self._logout()
            self._logout = None
        self.framing.buffer = bytearray()
        metrics.session_closed(self, reason)
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
        if self._state in (State.CLOSED, State.DATA):
            return
        # Read on, paused or not: a TLS close waits for the client's
        # close_notify or its FIN.
        self.transport.resumeProducing()
        if after_reply:
            self._close()
        else:
            self.closing(R.SHUTTING_DOWN)

    def _close(self) -> None:
        """
        Close the connection after the replies already written.
        """
        self._state = State.CLOSED
        self.framing.buffer = bytearray()
        self.flow.unregister()  # or a TLS close waits for the client (flow)
        self.transport.loseConnection()
        # The close waits for the client to read what was written and,
        # over TLS, to answer the close alert: for CLOSE_GRACE at most.
        self._idle.start(min(self.limits.idle_timeout, CLOSE_GRACE))

    def _arm_idle(self) -> None:
        """
        (Re)start the idle timer: RFC 5321 section 4.5.3.2 (5 minutes for
        commands, the DATA block timeout while a message streams in).
        """
        if self._state == State.CLOSED:
            return
        data = self._state == State.DATA
        self._idle.start(self.limits.data_timeout if data else self.limits.idle_timeout)

    def _idle_expired(self) -> None:
        self._timed_out(R.IDLE_TIMEOUT)

    def _timed_out(self, why: Reply) -> None:
        if self._state == State.CLOSED:
            # Closed, and the client has not let the close finish.
            self.transport.abortConnection()
            return
        if self._pending and self in self.factory.tracker.delivering:
            # relayd is waiting for the upstream (bounded by its own
            # timeout): closing now would leave the client to retry a
            # message the upstream may still take.  Close right after the
            # reply instead.  Any other wait (AUTH, MAIL/RCPT checks) ends
            # at the session lifetime, the only timer running meanwhile.
            self._expire_after_reply = why
            return
        log.info(
            "closing session from {peer}: {why}",
            peer=self.peer_ip,
            why=why.text.removesuffix(", closing connection"),
        )
        self.closing(why)
        if self.flow.blocked:
            # The client reads nothing: waiting to flush would keep the
            # connection (and its buffers) forever.
            self.transport.abortConnection()

    @property
    def closed(self) -> bool:
        """
        The connection is closing: nothing more is read or written.
        """
        return self._state == State.CLOSED

    def read_data(self) -> None:
        """
        Read message content next (DATA accepted, its 354 follows).
        """
        self._state = State.DATA
        self._arm_idle()
        self._rate = DataRate(self.clock, self.limits.data_min_rate, self.limits.data_grace)
        reader = self.transaction.data if self.transaction is not None else None
        if reader is not None and self._hold is not None:
            reader.grow = self._hold.grow

    # -- replies --

    def reply(self, code: int, status: str, text: str) -> None:
        """
        Send one reply line.

        @param code: The reply code.
        @param status: The enhanced status code (RFC 3463) or C{""}.
        @param text: One line of text (UTF-8 allowed).
        """
        if self._state != State.CLOSED:
            self.write(wire_line(code, status, text))

    def send(self, r: Reply) -> None:
        """
        Send the reply L{Reply} C{r}, with the deployment's text for it
        (C{[replies]}, L{relayd.replytexts}).
        """
        r = self.factory.reply_texts.apply(r)
        if self._state != State.CLOSED:
            self.write(line_of(r))

    def write(self, data: bytes) -> None:
        """
        Send whole reply lines; then, over TLS, give back the TLS buffers
        (L{relayd.tlsbuffers.release_buffers}) after the handshake, and after
        each L{RELEASE_AFTER} bytes of input since the last time.

        @param data: The lines, with their CRLFs.
        """
        self.transport.write(data)
        if self._tls_input is not None and self._tls_input >= RELEASE_AFTER:
            self._tls_input = 0
            release_buffers(self.transport)

    def closing(self, r: Reply) -> None:
        """
        Send the C{421} C{r}, the hostname before its text (RFC 5321
        section 3.8), and close the connection.
        """
        self.send(r.with_text(f"{self.hostname} {r.text}"))
        self._close()

    def error(self, r: Reply) -> None:
        """
        Reply C{r} to a command the client got wrong, and close the session
        once it made too many mistakes.
        """
        self.send(r)
        self._errors += 1
        if self._errors >= self.limits.max_errors and self._state != State.CLOSED:
            metrics.limit_refused("errors")
            self.closing(R.TOO_MANY_ERRORS)

    # -- input --

    def dataReceived(self, data: bytes) -> None:
        """
        Frame the byte stream into command lines or DATA.

        While a command waits for a Deferred, input is only buffered (and
        the transport paused), so replies keep command order (RFC 2920).
        """
        if self._state == State.CLOSED:
            return
        if self.secure:
            # Input over TLS comes after the handshake, whose flight the
            # first release gives back (relayd.tlsbuffers.release_buffers).
            t = self._tls_input
            self._tls_input = RELEASE_AFTER if t is None else t + len(data)
        if self._state == State.DATA:
            self._arm_idle()
            if self._rate is not None and not self._rate.took(len(data)):
                log.info("closing session from {peer}: DATA too slow", peer=self.peer_ip)
                self.closing(R.DATA_TOO_SLOW)
                return
        elif not self._pending and not self.framing.buffer and not self.framing.discarding:
            # A command line must be whole within the idle timeout from
            # its first byte: later packets do not restart the timer.
            self._arm_idle()
        if not self.framing.feed(data):
            self.closing(R.LINE_TOO_LONG_CLOSING)
            return
        self.flow.received(len(self.framing.buffer))
        if self._pending:
            self._hold_input()
            return
        self._process()

    def _process(self) -> None:
        """
        Handle buffered input until it runs out or a command is pending.
        """
        while (
            self.framing.buffer
            and not self._pending
            and self._state != State.CLOSED
            and not self.flow.blocked
        ):
            if self._state == State.DATA:
                assert self.transaction is not None and self.transaction.data is not None
                if not self.framing.read_data(self.transaction.data):
                    return
                self._data_end()
                continue
            line = self.framing.read_line(auth=self._state == State.AUTH)
            if line is None:
                return
            if isinstance(line, LineError):
                self._end_auth()
                if line is LineError.TOO_LONG:
                    self.error(R.LINE_TOO_LONG)
                else:
                    self.error(R.BARE_LF_IN_COMMAND)
                continue
            self._line(line)

    def _drained(self) -> None:
        """
        The client read its replies: handle the input buffered meanwhile.
        """
        if self._pending or self._state == State.CLOSED:
            return
        try:
            self._process()
        except Exception:
            log.failure("handling pipelined input failed")
            self.closing(R.LOCAL_ERROR_CLOSING)

    def _line(self, line: bytes) -> None:
        """
        Handle one command line (or AUTH response line).
        """
        if b"\0" in line:
            self._end_auth()
            self.error(R.NUL_IN_COMMAND)
            return
        if self._state == State.AUTH:
            d = auth.respond(self, line)
            if d is not None:
                self._wait(d)
            return
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            self.error(R.COMMAND_NOT_UTF8)
            return
        verb, _, rest = text.strip().partition(" ")
        # Only ASCII verbs: str.upper() maps some other letters onto ASCII
        # ("\u017f" to "S"), which must not make a command.
        if not (verb.isascii() and verb.isalpha()):
            self.error(R.COMMAND_NOT_RECOGNIZED)
            return
        verb = verb.upper()
        command = _COMMANDS.get(verb)
        if command is not None:
            result = command(self, rest.strip())
        else:
            handler = getattr(self, "smtp_" + verb, None)
            if handler is None:
                self.error(R.COMMAND_NOT_RECOGNIZED)
                return
            result = handler(rest.strip())
        if isinstance(result, defer.Deferred):
            self._wait(result)

    def _wait(self, d: defer.Deferred[Any]) -> None:
        """
        Hold further input until C{d} fires (RFC 2920 section 3.1: replies
        in command order).  The transport is paused as soon as input is
        buffered, so a client cannot make relayd buffer without bound; until
        then reading goes on, so that a client that leaves (after the final
        dot, say) is noticed by L{connectionLost} while relayd waits.
        """
        self._pending = True
        waiting = False

        def done(result: object) -> None:
            self._pending = False
            if self._expire_after_reply is not None and self._state != State.CLOSED:
                self._timed_out(self._expire_after_reply)
            if not waiting or self._state == State.CLOSED:
                return
            self.gate.release(WAITING)
            self._arm_idle()
            try:
                self._process()
            except Exception:
                log.failure("handling pipelined input failed")
                self.closing(R.LOCAL_ERROR_CLOSING)

        def failed(f: Failure) -> None:
            log.failure("command handler failed", f)
            self.send(R.LOCAL_ERROR)

        d.addErrback(failed).addBoth(done)
        if self._pending:
            waiting = True
            self._hold_input()
            # relayd is the one waiting: the client's idle timer stops.
            self._idle.stop()

    def _hold_input(self) -> None:
        """
        While a command is pending, stop reading once input waits in the
        buffer (RFC 2920 order).  With nothing buffered, reading goes on, so
        that a client that leaves while the upstream decides is noticed.
        """
        if self.framing.buffer:
            self.gate.hold(WAITING)

    # -- DATA --

    def _data_end(self) -> None:
        """
        The final dot arrived: hand the message over, then reply.
        """
        self._state = State.COMMAND
        transaction, self.transaction = self.transaction, None
        assert transaction is not None and transaction.data is not None
        messages, data = transaction.messages, transaction.data
        body = data.body()
        self._messages += 1
        self._rate = None
        if data.error is not None:
            metrics.limit_refused(data.error.name.lower())
            for m in messages:
                m.connectionLost()
            self._release_hold()
            self.send(envelope.data_error_reply(data.error, self.limits.max_line_length))
            return
        self.factory.tracker.begin(self)
        d = defer.Deferred.fromCoroutine(self._deliver(messages, body))
        self._wait(d)

    async def _deliver(self, messages: list[ISubmissionMessage], body: bytes | bytearray) -> None:
        """
        Hand the message over, wait for the verdict, reply.  The tracker
        counts the message until the reply is written.
        """
        events.begin(self)
        try:
            for m in messages:
                m.bodyReceived(body)
            del body  # the messages hold it now; let them release it
            results: list[Reply] = [await m.eomReceived() for m in messages]
            # One reply for the transaction: 250 only if every message was
            # taken.
            refused = [r for r in results if r.code != 250]
            reply = refused[0] if refused else results[0]
            if self._state == State.CLOSED:
                events.left_before_reply(self, reply)
            self.send(reply)
        finally:
            self._release_hold()
            self.factory.tracker.end(self)

    def _release_hold(self) -> None:
        """
        The transaction ended: give its memory back to the budget.
        """
        if self._hold is not None:
            self._hold.release()
            self._hold = None

    # -- commands: the session (in relayd.smtp.commands) --

    def _need_ehlo(self) -> bool:
        if self.ehlo is None:
            self.error(R.NEED_EHLO)
            return True
        return False

    # -- commands: AUTH (in relayd.smtp.auth) --

    def read_sasl(self, exchange: SASLExchange) -> None:
        """Read AUTH response lines next, for C{exchange} (RFC 4954 section 4)."""
        self._sasl = exchange
        self._state = State.AUTH

    def _end_auth(self) -> None:
        """Leave the AUTH exchange (if in one): the next line is a command."""
        if self._state == State.AUTH:
            self._state = State.COMMAND
            self._sasl = None

    # -- commands: the transaction (in relayd.smtp.envelope) --

    def smtp_MAIL(self, rest: str) -> defer.Deferred[None] | None:
        """MAIL FROM: see L{envelope.mail}."""
        self._declared_size = declared_size(rest)
        return envelope.mail(self, rest)

    def smtp_DATA(self, rest: str) -> None:
        """
        DATA: see L{envelope.data}; C{452 4.3.1} when the message does not
        fit in L{MemoryBudget} (its declared SIZE, RFC 1870).
        """
        transaction = self.transaction
        if not rest and transaction is not None and transaction.forward_paths:
            reserve = min(self._declared_size, self.max_message_size)
            self._hold = self.factory.memory.admit(reserve)
            if self._hold is None:
                log.info("DATA refused to {peer}: memory bound reached", peer=self.peer_ip)
                envelope._refuse_data(self, R.INSUFFICIENT_STORAGE)
                return
        envelope.data(self, rest)
        if self._state != State.DATA:
            self._release_hold()


class RelaySMTPFactory(ServerFactory):
    """
    Builds L{RelaySMTP} sessions for one listener.

    @ivar portal: The C{twisted.cred} portal that turns AUTH credentials into
        an L{ISubmission} avatar.
    @ivar hostname: The name in the greeting and EHLO reply.
    @ivar limits: The C{[limits]} configuration.
    @ivar clock: Time source for every timer.
    @ivar context_factory: TLS server context, or C{None} when TLS is not
        available.
    @ivar implicit_tls: Connections are TLS from the first byte (the
        factory is wrapped in TLS by L{relayd.tls.implicit_tls_factory}).
    @ivar limiter: Open-connection counters (may be shared by listeners).
    @ivar guard: Failed-AUTH throttling (L{AuthGuard}) on C{counters}
        (may be shared, as the counters).
    @ivar memory: The bound on message bytes in memory (may be shared).
    @ivar tracker: Messages whose reply is still owed (may be shared).
    """

    protocol = RelaySMTP  # type: ignore[assignment]
    noisy = False
    #: The deployment's reply texts (C{[replies]}); the service sets them.
    reply_texts = ReplyTexts()

    def __init__(
        self,
        portal: Portal,
        hostname: str,
        limits: LimitsConfig,
        clock: IReactorTime,
        context_factory: Any = None,
        implicit_tls: bool = False,
        limiter: ConnectionLimiter | None = None,
        counters: ICounters | None = None,
        tracker: DeliveryTracker | None = None,
        memory: MemoryBudget | None = None,
        auth_exempt: bool = False,
        auth_secret: bytes | None = None,
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
        self.memory = memory or MemoryBudget(limits.max_memory_bytes)
        self.guard = AuthGuard(
            counters or LocalCounters(clock),
            limit_per_ip=limits.auth_failures_per_ip,
            limit_per_credential=limits.auth_failures_per_credential,
            window=limits.auth_failure_window,
            lockout=limits.auth_lockout,
            # An exempt listener counts no network (credentials still are).
            exempt=("0.0.0.0/0", "::/0") if auth_exempt else limits.auth_exempt_networks,
            secret=process_secret() if auth_secret is None else auth_secret,
        )

    def buildProtocol(self, addr: Any) -> RelaySMTP:  # type: ignore[override]
        p = RelaySMTP(self)
        p.factory = self
        return p
