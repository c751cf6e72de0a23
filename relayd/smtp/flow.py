# -*- test-case-name: tests.smtp.test_backpressure -*-
"""
Flow control of one SMTP connection: stop reading from a client that does
not read its replies, and keep a DATA transfer above a minimum rate.

L{ReadGate} pauses the transport while any reason to hold input exists (a
command waiting for a Deferred, replies the client is not reading).
L{OutputFlow} is registered with the transport as a streaming producer
(L{twisted.internet.interfaces.IPushProducer}): Twisted calls its
C{pauseProducing} when the transport's write buffer is full (64 KiB for
TCP; a TLS transport passes the TCP event on, and also pauses while its
handshake is under way) and C{resumeProducing} once it drained.  The
session handles no buffered command meanwhile, and reading stops once
L{INPUT_LIMIT} bytes of input wait (not at once: a TLS handshake, which
pauses its producer, must still read), so a client pipelining commands
without reading makes relayd hold at most one transport buffer of replies
and about L{INPUT_LIMIT} bytes of input.

L{DataRate} is the minimum DATA rate after a grace period (the slow-drip
defence: RFC 5321 section 4.5.3.2 only bounds the wait between packets).
L{IdleTimer} is the session's idle timer (RFC 5321 section 4.5.3.2),
re-armed by every command and packet without a reactor call each time.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from zope.interface import implementer

__all__ = [
    "INPUT_LIMIT",
    "OUTPUT",
    "WAITING",
    "DataRate",
    "IdleTimer",
    "OutputFlow",
    "ReadGate",
]

#: Bytes of input buffered while the output is blocked before reading stops.
INPUT_LIMIT = 65536

#: A reason to hold input: a command waits for a Deferred (RFC 2920).
WAITING = "waiting"
#: A reason to hold input: the client is not reading its replies.
OUTPUT = "output"


class ReadGate:
    """
    Pauses reading from a transport while at least one reason holds.

    @ivar reasons: The reasons holding input now.
    """

    __slots__ = ("reasons", "transport")

    def __init__(self, transport: Any) -> None:
        """
        @param transport: An L{twisted.internet.interfaces.IPushProducer}
            transport (TCP, or C{TLSMemoryBIOProtocol}, which passes
            C{pauseProducing} to the TCP transport under it).
        """
        self.transport = transport
        # Immutable: the empty frozenset is shared, not one per session.
        self.reasons: frozenset[str] = frozenset()

    def hold(self, reason: str) -> None:
        """
        Stop reading for C{reason} (idempotent).
        """
        if not self.reasons:
            self.transport.pauseProducing()
        self.reasons = self.reasons | {reason}

    def release(self, reason: str) -> None:
        """
        Forget C{reason}; read again when no reason is left.
        """
        if reason not in self.reasons:
            return
        self.reasons = self.reasons - {reason}
        if not self.reasons:
            self.transport.resumeProducing()


@implementer(IPushProducer)
class OutputFlow:
    """
    The session's replies, as a streaming producer registered with its
    transport: while the transport's write buffer is full, input is held.

    @ivar blocked: The transport asked to stop writing: the client is not
        reading.  The session handles no further command meanwhile.
    """

    __slots__ = ("blocked", "drained", "gate", "stopped")

    def __init__(self, gate: ReadGate, drained: Callable[[], None]) -> None:
        """
        @param gate: The session's read gate.
        @param drained: Called when the transport drained after C{blocked}:
            the session goes on with the input it has buffered.
        """
        self.gate = gate
        self.drained = drained
        self.blocked = False
        self.stopped = False

    def register(self) -> None:
        """
        Register with the transport (C{registerProducer(self, True)}).
        """
        self.gate.transport.registerProducer(self, True)

    def unregister(self) -> None:
        """
        Unregister from the transport as the session closes (once; not
        after C{stopProducing}): Twisted's TLS sends its close alert and
        closes the connection only once no producer is registered, so a
        closing TLS session that kept its producer stayed open until the
        client closed it.
        """
        if not self.stopped:
            self.stopped = True
            self.gate.transport.unregisterProducer()

    def pauseProducing(self) -> None:
        """
        The transport's write buffer is full: handle no more commands.
        """
        self.blocked = not self.stopped

    def received(self, buffered: int) -> None:
        """
        Input arrived: stop reading if the output is blocked and C{buffered}
        bytes of input wait.

        @param buffered: Bytes of input not handled yet.
        """
        if self.blocked and buffered >= INPUT_LIMIT:
            self.gate.hold(OUTPUT)

    def resumeProducing(self) -> None:
        """
        The transport drained: read and handle input again.
        """
        if self.stopped or not self.blocked:
            return
        self.blocked = False
        self.gate.release(OUTPUT)
        self.drained()

    def stopProducing(self) -> None:
        """
        The connection is gone: nothing more happens.
        """
        self.stopped = True


class DataRate:
    """
    The minimum rate of a DATA transfer after a grace period.

    A transfer that started C{t} seconds ago must have delivered at least
    C{min_rate * (t - grace)} bytes; one that did not is too slow (answered
    C{421 4.4.2} by the session).
    """

    def __init__(self, clock: IReactorTime, min_rate: float, grace: float) -> None:
        """
        @param clock: Time source.
        @param min_rate: Bytes per second the transfer must keep.
        @param grace: Seconds from the C{354} reply before the rate counts.
        """
        self.clock = clock
        self.min_rate = min_rate
        self.grace = grace
        self.started = clock.seconds()
        self.received = 0

    def took(self, size: int) -> bool:
        """
        Count C{size} received bytes.

        @return: C{False} when the transfer is below the minimum rate.
        """
        self.received += size
        elapsed = self.clock.seconds() - self.started
        return self.received >= self.min_rate * (elapsed - self.grace)


class IdleTimer:
    """
    A timer that is restarted far more often than it expires: the idle
    timer of a session (RFC 5321 section 4.5.3.2), restarted by every
    command, reply and DATA packet.

    Restarting only moves the deadline; the one delayed call, when it
    comes before the deadline, is moved on to it then.  So a transaction
    costs no reactor call, and the timer expires exactly when a delayed
    call restarted each time (C{reset}) would: at the last restart plus
    its timeout.

    @ivar deadline: When it expires (C{clock} seconds), or C{None} while
        stopped.
    """

    __slots__ = ("_call", "_clock", "_expired", "deadline")

    def __init__(self, clock: IReactorTime, expired: Callable[[], None]) -> None:
        """
        @param clock: Time source.
        @param expired: Called once the deadline passes.
        """
        self._clock = clock
        self._expired = expired
        self._call: IDelayedCall | None = None
        self.deadline: float | None = None

    def start(self, timeout: float) -> None:
        """
        (Re)start: expire C{timeout} seconds from now, unless restarted or
        stopped before.
        """
        call = self._call
        deadline = self.deadline = self._clock.seconds() + timeout
        if call is None:
            self._call = self._clock.callLater(timeout, self._check)
        elif call.getTime() > deadline:
            # Sooner than the call (a shorter timeout): bring it forward.
            call.reset(timeout)

    def stop(self) -> None:
        """
        Do not expire until started again.
        """
        self.deadline = None

    def cancel(self) -> None:
        """
        Stop and cancel the delayed call (the session ended).
        """
        self.deadline = None
        call, self._call = self._call, None
        if call is not None and call.active():
            call.cancel()

    def _check(self) -> None:
        self._call = None
        deadline = self.deadline
        if deadline is None:
            return
        now = self._clock.seconds()
        if now >= deadline:
            self.deadline = None
            self._expired()
            return
        delay = deadline - now
        # Not a float's width after the deadline (a test clock advanced
        # exactly to it must see it expire).
        while delay > 0 and now + delay > deadline:
            delay = math.nextafter(delay, 0.0)
        self._call = self._clock.callLater(delay, self._check)


def no_delay(transport: Any) -> None:
    """
    Turn off Nagle's algorithm on the TCP connection under C{transport}
    (also under a TLS wrapper): SMTP is a dialogue of small writes, and a
    reply held back for 40 ms waiting for an ACK stalls the client.

    @param transport: The session's transport (TCP, or TLS over TCP).
    """
    for _ in range(3):
        if transport is None:
            return
        set_no_delay = getattr(transport, "setTcpNoDelay", None)
        if set_no_delay is not None:
            set_no_delay(True)
            return
        transport = getattr(transport, "transport", None)
