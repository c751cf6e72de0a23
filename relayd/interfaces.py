# -*- test-case-name: tests.test_interfaces -*-
"""
The seams between relayd's parts, as C{zope.interface} interfaces.

Each is implemented by the real component and by its fake in
L{relayd.testing}; tests check both with C{verifyObject}.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from zope.interface import Attribute, Interface

from relayd.message import OutboundMessage
from relayd.result import UpstreamResult

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred

    from relayd.reply import Reply
    from relayd.result import Outcome

# -- the avatar: what an authenticated SMTP session submits to -------------


class ISubmissionMessage(Interface):
    """
    The message of one SMTP transaction, as the session hands it over.
    """

    def bodyReceived(data: bytes | bytearray) -> None:
        """
        Take message content: complete lines with CRLF line ends, dot-
        stuffing already undone (RFC 5321 section 4.5.2).  Called once per
        message, with the whole content, in bytes (the DATA reader's own
        C{bytearray}, not copied: read it, do not change it).
        """

    def eomReceived() -> Deferred[Reply]:
        """
        The final dot arrived: deliver the message.

        @return: A Deferred that fires with the L{relayd.reply.Reply} for
            the client (C{250} only when the message was taken); it never
            fails.
        """

    def connectionLost() -> None:
        """
        The transaction was abandoned (or the message failed as it
        arrived): forget the content.
        """


class ISubmission(Interface):
    """
    relayd's avatar: what an authenticated SMTP session submits to (the
    realm returns it for this interface).

    Addresses arrive as C{str} mailboxes (C{local@domain}, C{""} for the
    null reverse-path), already checked for RFC 5321 section 4.1.2 syntax.
    A validation answers at once or with a Deferred; either raises (or
    fails with) L{relayd.reply.Refused} to refuse with its reply.
    """

    name = Attribute("The policy (token) name, for logs; never the token itself.")
    max_message_size = Attribute(
        "The avatar's own message size limit in bytes, or None; the session uses the lower"
        " of it and the configured one."
    )
    max_recipients = Attribute(
        "The avatar's own limit of forward-paths per transaction, or None; the session uses"
        " the lower of it and the configured one."
    )

    def validateFrom(helo: object, origin: str, smtputf8: bool = False) -> object:
        """
        Validate the reverse-path of MAIL FROM and begin a transaction.

        @param helo: C{(EHLO argument, client IP)}.
        @param origin: The reverse-path mailbox.
        @param smtputf8: The client gave the SMTPUTF8 parameter (RFC 6531).
        @return: Any value, or a Deferred of one.
        @raise relayd.reply.Refused: The reverse-path is refused.
        """

    def validateTo(user: str) -> object:
        """
        Validate one forward-path of RCPT TO in the current transaction.

        @param user: The forward-path mailbox.
        @return: A callable (or a Deferred of one) that begins the
            message at DATA: it returns an L{ISubmissionMessage}, the same
            one for every forward-path of the transaction.
        @raise relayd.reply.Refused: The forward-path is refused.
        """


# -- the upstream request format (a dialect) -------------------------------


class IDialect(Interface):
    """
    One upstream API's request format and answer format (implemented by
    the modules of L{relayd.dialects}, found by name with
    L{relayd.dialects.get_dialect}).
    """

    name = Attribute("The dialect's name in C{upstream.dialect} (C{str}).")
    token_header = Attribute(
        "Default request header carrying the client's token (C{str}), used "
        "when C{upstream.token_header} is empty."
    )
    token_format = Attribute(
        "Default value of that header (C{str}); C{{token}} is replaced by "
        "the token.  Used when C{upstream.token_format} is empty."
    )
    path = Attribute(
        "The provider's documented endpoint path (C{str}), for the "
        "documentation only: the request goes to C{upstream.url} as is."
    )

    def body(message: OutboundMessage) -> bytes:
        """
        Build the JSON request body for C{message}.

        @param message: The message to relay.
        @return: The UTF-8 encoded JSON document.
        @raise relayd.reply.Refused: When this upstream cannot
            carry the message (for example a signed message through an API
            that rebuilds the MIME structure).
        """

    def result(status: int, body: bytes) -> UpstreamResult:
        """
        Read the upstream's answer.

        @param status: The HTTP status code of the answer.
        @param body: The answer's body (possibly truncated, possibly not
            JSON at all).
        @return: L{relayd.result.Accepted} or L{relayd.reply.Reply}; never
            raises.
        """


# -- idempotency outcomes ---------------------------------------------------


class IOutcomeStore(Interface):
    """
    What became of the upstream request of each idempotency key
    (L{relayd.idempotency.idempotency_key}): open, accepted with the
    upstream's id, or refused for good.  Records expire after the store's
    window and the store may drop the oldest when full: a missing record
    means "unknown", never "not sent".

    Every method returns a L{Deferred} (already fired for the in-memory
    L{relayd.idempotency.OutcomeStore}, pending for a shared store such as
    Redis); callers C{await} them.  Outcomes are
    L{relayd.idempotency.InFlight}, L{relayd.idempotency.Accepted} and
    L{relayd.idempotency.RefusedPermanently}.
    """

    def lookup(key: str) -> Deferred[Outcome | None]:
        """
        Read a key's outcome, changing nothing.

        @param key: An idempotency key.
        @return: A Deferred firing with the outcome, or C{None} when the
            store holds none (never seen, expired or dropped).
        """

    def claim(key: str, since: float | None = None) -> Deferred[Outcome | None]:
        """
        Atomically: if the key has no outcome, record it as in flight (the
        caller now sends the request) and fire with C{None}; otherwise
        change nothing and fire with the existing outcome (the caller must
        not send: an L{Accepted} is answered C{250} with its id, a
        L{RefusedPermanently} with its reply, an L{InFlight} with a
        C{4xx}, since the first request may still succeed).

        @param key: An idempotency key.
        @param since: The claim's time (the caller's token for L{release});
            C{None}: now.
        @return: A Deferred firing with C{None} or the existing outcome.
        """

    def record_accepted(
        key: str, upstream_id: str, lifetime: float | None = None
    ) -> Deferred[None]:
        """
        Record that the upstream took the message, whatever was recorded
        before (a late 2xx answer is the truth even after a timeout or a
        refusal).

        @param key: An idempotency key.
        @param upstream_id: The upstream's id for the message, or C{""} when its answer carried none.
        @param lifetime: Seconds it is kept; C{None}: the store's window.
        @return: A Deferred firing with C{None} once it is recorded.
        """

    def record_refused(key: str, reply: Reply, lifetime: float | None = None) -> Deferred[None]:
        """
        Record that the upstream refused the message permanently, unless
        it is already recorded as accepted (an accepted message stays
        accepted).

        @param key: An idempotency key.
        @param reply: The C{5xx} L{relayd.reply.Reply} given to the client.
        @param lifetime: Seconds it is kept; C{None}: the store's window.
        @return: A Deferred firing with C{None} once it is recorded.
        """

    def release(key: str, since: float | None = None) -> Deferred[None]:
        """
        Drop an in-flight claim whose request certainly did not reach the
        upstream (connection refused, a 4xx/5xx status that took nothing),
        so that a retry is sent at once.  A finished outcome is kept, and
        so is another attempt's claim (C{since} differs).

        @param key: An idempotency key.
        @param since: The C{since} given to L{claim}; C{None}: any claim.
        @return: A Deferred firing with C{None}.
        """


# -- counters for the guards (AUTH throttling, rate limits) ----------------


class ICounters(Interface):
    """
    Sliding counters keyed by name, shared by the guards of
    L{relayd.smtp.guards}: AUTH failures per client network and per
    attempted credential, messages per token and per client address.

    The in-process implementation lives in L{relayd.smtp.guards}; a shared
    one (Redis) makes one limit hold across a fleet.  Every method returns a
    L{Deferred} (already fired for the in-process counters), so that the
    callers are the same for both.  Keys are opaque strings chosen by the
    caller (never a credential in clear: hash it first).
    """

    def hit(key: str, window: float) -> Deferred[int]:
        """
        Count one event for C{key}.

        @param key: The counter's name.
        @param window: How long an event counts, in seconds.
        @return: A Deferred firing with the number of events for C{key} in
            the last C{window} seconds, this one included.
        """

    def count(key: str, window: float) -> Deferred[int]:
        """
        Read a counter without counting.

        @param key: The counter's name.
        @param window: How far back events count, in seconds.
        @return: A Deferred firing with the number of events for C{key} in
            the last C{window} seconds.
        """
