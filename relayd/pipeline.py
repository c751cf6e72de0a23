# -*- test-case-name: tests.test_delivery,tests.test_idempotent_delivery -*-
"""
The pipeline: one message's bytes to one upstream outcome.

L{Pipeline} parses a transaction's content with the header policy, runs the
end of DATA checks, names the transaction by its idempotency key
(L{relayd.idempotency}), claims the key in an L{IOutcomeStore}, sends the
request to the upstreams of its route (L{relayd.routing}) and records the
outcome, still awaiting an answer that comes after the client was told
C{451}.  L{relayd.delivery} is the avatar that hands it each transaction.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, TypeVar

import attrs
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure

from relayd import events
from relayd import reply as R
from relayd.config import HeadersConfig
from relayd.idempotency import (
    OutcomeStore,
    content_digest,
    credential_identity,
    idempotency_key,
)
from relayd.interfaces import IOutcomeStore
from relayd.message import Envelope, OutboundMessage
from relayd.policy import (
    MessageRates,
    check_message,
    parse_with_policy,
    upstream_refused_credential,
)
from relayd.reply import Refused, Reply
from relayd.result import Accepted, InFlight, NotSent, Outcome, UpstreamResult
from relayd.routing import Candidate, Route, Router, failover, single_router
from relayd.tokens import TokenPolicy
from relayd.upstream import UpstreamClient

__all__ = [
    "PARSE_IN_THREAD",
    "Pipeline",
    "message_id",
]

log = Logger()

_T = TypeVar("_T")


def _printable(text: str, limit: int = 64) -> str:
    """
    C{text} as printable ASCII, at most C{limit} characters, for a reply.
    """
    return "".join(c if " " <= c <= "~" else "?" for c in text[:limit])


# Messages larger than this many bytes are parsed off the reactor thread.
PARSE_IN_THREAD = 4 * 1024 * 1024

_END_OF_HEADER = re.compile(rb"\r?\n\r?\n")
_MESSAGE_ID = re.compile(rb"^message-id[ \t]*:(.*(?:\r?\n[ \t].*)*)", re.IGNORECASE | re.MULTILINE)


def message_id(data: bytes) -> str | None:
    """
    The C{Message-ID} header field of a message (RFC 5322 section 3.6.4),
    read from its top-level header section only.

    @param data: The message as received (CRLF or LF line ends).
    @return: The first field's value, unfolded, or C{None} when there is
        none.
    """
    end = _END_OF_HEADER.search(data)
    header = data[: end.start()] if end else data
    found = _MESSAGE_ID.search(header)
    if found is None:
        return None
    return " ".join(found.group(1).decode("utf-8", "surrogateescape").split())


@attrs.frozen
class _Sent:
    """
    What L{Pipeline.relay} knows of a message once it is prepared: for the
    log lines of its outcome.
    """

    key: str
    token_name: str
    size: int
    recipients: int
    mapped: tuple[str, ...]
    stripped: tuple[str, ...]
    started: float
    held: bool = False
    no_message_id: bool = False


@attrs.frozen
class _Built:
    """
    A message ready to send (L{Pipeline._build}).

    @ivar sent: For the log lines of its outcome.
    @ivar route: Its route: the upstreams, in failover order.
    @ivar request: The first upstream's prepared request.
    @ivar message: The parsed message, kept only when the route has a
        failover upstream (whose request is built if it is tried); else
        C{None}, so that only the request stays in memory.
    """

    sent: _Sent
    route: Route
    request: Any
    message: OutboundMessage | None


def _prepare(
    candidate: Candidate, message: OutboundMessage, token: str, key: str, now: float
) -> Any:
    """
    C{candidate}'s request for C{message}: its credential (else C{token}),
    the transaction's key, signed at C{now} (no reactor call: it may run
    in a worker thread).
    """
    return candidate.client.prepare(message, candidate.credential_for(token), key, now=now)


@attrs.frozen
class Pipeline:
    """
    What turns received bytes into upstream requests: the header policy,
    the router (which upstreams a message goes to) and the store of
    idempotency outcomes.

    @ivar upstream: The C{[upstream]} client: the default route's upstream
        when no C{router} is given.
    @ivar headers: The C{[headers]} policy for L{parse_message}.
    @ivar clock: Time source (the reply timeout, the duration in the log,
        the time a request is signed at).
    @ivar threads: An L{IReactorThreads} provider: a message larger than
        L{PARSE_IN_THREAD} bytes is parsed, digested, keyed, routed and its
        upstream request built (JSON, base64: every O(size) step) in one
        call in its thread pool, so that a 25 MiB message does not stall
        every other session (smaller ones take a few milliseconds: cheaper
        than the hand-over); C{None} does everything on the calling
        thread.
    @ivar store: Where each idempotency key is claimed before its request
        is sent and its outcome recorded (L{IOutcomeStore}); by default an
        in-memory L{OutcomeStore} on C{clock}.
    @ivar timeout: Seconds the client waits for the upstream's answer
        (C{upstream.timeout}); then it gets C{451 4.3.0}, and the request
        goes on.
    @ivar window: Seconds relayd waits for the upstream's answer in all
        (C{idempotency.window}), more than C{timeout}: an answer that
        comes in this window is recorded for the client's retry.
    @ivar router: Chooses each message's upstreams (C{[[routes]]},
        L{relayd.routing.make_router}); by default C{upstream} alone.
    @ivar identity_secret: The HMAC key of L{identity} (the same in every
        process of a deployment), or C{None}: derived from each credential.
    """

    upstream: UpstreamClient | None
    headers: HeadersConfig
    clock: IReactorTime
    threads: Any = None
    rates: MessageRates | None = None
    revoke_on_upstream_refusal: bool = False
    store: IOutcomeStore = attrs.field(
        default=attrs.Factory(lambda self: OutcomeStore(self.clock), takes_self=True)
    )
    timeout: float = 30.0
    window: float = 600.0
    router: Router = attrs.field(
        default=attrs.Factory(lambda self: single_router(self.upstream), takes_self=True)
    )
    identity_secret: bytes | None = None
    #: Large messages are built one at a time: the work holds the GIL, and
    #: with several pool threads at it a session's reply waits for each of
    #: them in turn (issue 9: another session's NOOP waited up to 300 ms
    #: during ten 24 MB messages).  One thread does the same work in the
    #: same time, since the GIL lets only one run anyway.
    _large: defer.DeferredSemaphore = attrs.field(
        init=False, factory=lambda: defer.DeferredSemaphore(1)
    )

    def identity(self, token: str, policy: TokenPolicy) -> str:
        """
        Who sends, for the idempotency key and C{messages_per_minute}: the
        policy's name and, when C{token} is the client's own credential
        (no held one), its HMAC (L{credential_identity}, keyed with
        C{identity_secret}), so that two customers with one name never
        share a key or a rate.

        @param token: The avatar's credential.
        @param policy: Its policy.
        @return: An opaque string that holds no credential.
        """
        own = token if policy.upstream_credential is None else None
        return credential_identity(policy.name, own, self.identity_secret)

    async def _off_thread(self, size: int, f: Callable[..., _T], *args: Any) -> _T:
        """
        C{f(*args)}: in the thread pool for a message of more than
        L{PARSE_IN_THREAD} bytes, one such call at a time (L{_large}),
        else now.
        """
        if self.threads is None or size <= PARSE_IN_THREAD:
            return f(*args)
        pool = self.threads.getThreadPool()
        result: _T = await self._large.run(deferToThreadPool, self.threads, pool, f, *args)
        return result

    def _build(
        self,
        envelope: Envelope,
        data: bytes | bytearray,
        token: str,
        policy: TokenPolicy,
        now: float,
        identity: str | None = None,
    ) -> _Built:
        """
        Everything before the claim, with no reactor call (it may run in a
        worker thread): parse, check, key, route, and build the first
        upstream's request signed at C{now}.

        @param data: The content (a C{bytearray} from the DATA reader is
            copied to C{bytes} here, off the reactor for a large message).
        @param identity: L{identity} of C{token} and C{policy}, when the
            caller has it already; C{None}: computed here.
        @raise Refused: The token's policy or the dialect refuses the
            message.
        """
        if not isinstance(data, bytes):
            data = bytes(data)
        message = parse_with_policy(data, envelope, self.headers)
        if not policy.allows_sender(message.author_address):
            raise Refused(R.SENDER_NOT_ALLOWED)
        if not policy.allows_stream(message.stream):
            raise Refused(
                R.stream_not_allowed(_printable(message.stream))
                if message.stream
                else R.STREAM_REQUIRED
            )
        check_message(message, policy)
        # SHA-256 over the content: about 0.7 ms per MiB; 3 us for 4 KiB.
        mid = message_id(data)
        key = idempotency_key(
            self.identity(token, policy) if identity is None else identity,
            envelope.mail_from,
            envelope.rcpt_to,
            mid,
            content_digest(data),
        )
        route = self.router.route(policy, envelope, message)
        first = route.candidates[0]
        request = _prepare(first, message, token, key, now)
        sent = _Sent(
            key,
            policy.name,
            len(data),
            len(envelope.rcpt_to),
            message.mapped,
            message.stripped,
            now,
            policy.upstream_credential is not None,
            not (mid or "").strip(),
        )
        return _Built(sent, route, request, message if len(route.candidates) > 1 else None)

    async def relay(
        self,
        envelope: Envelope,
        data: bytes | bytearray,
        token: str,
        policy: TokenPolicy,
        identity: str | None = None,
    ) -> Reply:
        """
        Parse, check and send one message to its route's upstreams, at most
        once per idempotency key.

        @param envelope: The transaction's envelope.
        @param data: The message (RFC 5322), CRLF line ends; not changed.
        @param token: The avatar's credential (the token's held one, else
            the client's token), for an upstream without its own.
        @param policy: What the token allows; its name is the identity of
            the idempotency key and a route criterion.
        @param identity: L{identity}C{(token, policy)} when the caller
            keeps it (the avatar computes it once per session); C{None}:
            computed for this message.
        @return: The reply to the final dot: C{250 2.0.0} with the
            upstream's id (also for a repeat of a message it took: then
            nothing is sent); L{R.FIRST_ATTEMPT_IN_FLIGHT} while an earlier
            attempt of the same message is open; C{451 4.3.0} when the
            upstream has not answered within C{timeout} seconds, or when
            no upstream of the route could be reached; else the
            C{4xx}/C{5xx} that says why not (a permanent refusal is given
            again to a repeat).  Never raises.
        """
        # Read on the reactor thread: the request is signed at this time.
        started = self.clock.seconds()
        try:
            built = await self._off_thread(
                len(data), self._build, envelope, data, token, policy, started, identity
            )
            # Only the request is needed from here on: let a large
            # message's other copies go before the upstream call.
            del data
            earlier = await self.store.claim(built.sent.key, built.sent.started)
        except Refused as e:
            return e.reply
        except Exception:
            log.failure("relaying a message failed")
            return R.LOCAL_ERROR
        if earlier is not None:
            return self._repeat(earlier, built.sent)
        return await self._answer(built, token)

    def _repeat(self, earlier: Outcome, sent: _Sent) -> Reply:
        """
        The reply to a message whose key was claimed before: nothing is
        sent.
        """
        if isinstance(earlier, Accepted):
            log.info(
                "repeated message {key} for token {token_name}: the upstream took it"
                " as {upstream_id}; not sent again",
                key=sent.key,
                token_name=sent.token_name,
                upstream_id=earlier.message_id,
            )
            if sent.no_message_id:
                log.info(
                    "message {key} for token {token_name} has no Message-ID: identical"
                    " bytes within the window are taken as a retry",
                    key=sent.key,
                    token_name=sent.token_name,
                )
            events.note(idempotency="replayed", upstream_id=earlier.message_id)
            return R.queued(earlier.message_id)
        if isinstance(earlier, InFlight):
            log.info(
                "repeated message {key} for token {token_name}: the first attempt"
                " (since {since:.3f}) is still open; not sent",
                key=sent.key,
                token_name=sent.token_name,
                since=earlier.since,
            )
            events.note(idempotency="in_flight")
            return R.FIRST_ATTEMPT_IN_FLIGHT
        log.info(
            "repeated message {key} for token {token_name}: refused before with"
            " {code} {status}; not sent again",
            key=sent.key,
            token_name=sent.token_name,
            code=earlier.code,
            status=earlier.status,
        )
        events.note(idempotency="refused_before")
        return earlier

    async def _answer(self, built: _Built, token: str) -> Reply:
        """
        Send the claimed message; answer the client with its result, or
        with C{451 4.3.0} after L{timeout} seconds while the request goes
        on (it is never cancelled before L{window}).
        """
        sent = built.sent
        answered: defer.Deferred[Reply] = defer.Deferred()

        def too_late() -> None:
            log.warn(
                "upstream gave no answer for message {key} within {timeout}s: answered"
                " {code} {status}; waiting up to {window}s to record its answer",
                key=sent.key,
                timeout=self.timeout,
                window=self.window,
                code=R.TEMPORARY_FAILURE.code,
                status=R.TEMPORARY_FAILURE.status,
            )
            answered.callback(R.TEMPORARY_FAILURE)

        timer = self.clock.callLater(self.timeout, too_late)

        def done(reply: Reply) -> None:
            if timer.active():
                timer.cancel()
            if not answered.called:
                answered.callback(reply)

        def failed(f: Failure) -> None:
            log.failure("relaying message {key} failed", f, key=sent.key)
            done(R.LOCAL_ERROR)

        sending = defer.Deferred.fromCoroutine(self._send(built, token, timer.active))
        sending.addCallback(done).addErrback(failed)
        return await answered

    async def _post(self, built: _Built, token: str, tried: list[Any]) -> UpstreamResult:
        """
        POST the first request; while an upstream certainly did not take
        it (L{NotSent}), build the next upstream's request (same key, in
        the thread pool for a large message) and POST that.

        @param tried: Filled with C{[candidate, prepared request]} of the
            last upstream tried.
        """
        message = built.message

        async def request(index: int, candidate: Candidate) -> Any:
            tried[:] = [candidate]
            if index == 0:
                prepared = built.request
            else:
                assert message is not None
                now = self.clock.seconds()
                prepared = await self._off_thread(
                    built.sent.size, _prepare, candidate, message, token, built.sent.key, now
                )
            tried.append(prepared)
            return prepared

        return await failover(
            built.route.candidates, request, deadline=self.window, route=built.route.name
        )

    async def _send(self, built: _Built, token: str, in_time: Callable[[], bool]) -> Reply:
        """
        Send the message, record its outcome under its key, and say what
        the client is told (if it still waits: C{in_time()}).
        """
        sent = built.sent
        tried: list[Any] = []
        try:
            result = await self._post(built, token, tried)
        except Refused as e:
            # A failover upstream's dialect cannot carry the message.
            await self._record(self.store.release(sent.key, sent.started))
            return e.reply
        except Exception:
            log.failure("sending message {key} failed", key=sent.key)
            await self._record(self.store.release(sent.key, sent.started))
            return R.LOCAL_ERROR
        elapsed = self.clock.seconds() - sent.started
        late = "" if in_time() else " (late: the client was told 451)"
        carries_key = len(tried) == 2 and bool(getattr(tried[1], "carries_key", False))
        if isinstance(result, Accepted):
            return await self._accepted(result, sent, elapsed, late)
        return await self._not_accepted(result, sent, tried, carries_key, elapsed, late)

    async def _accepted(self, result: Accepted, sent: _Sent, elapsed: float, late: str) -> Reply:
        """
        The upstream took the message: record its id under the key, and
        the C{250} with it.
        """
        await self._record(
            self.store.record_accepted(sent.key, result.message_id, *self._lifetime(sent))
        )
        events.note(
            upstream_id=result.message_id,
            mapped=sent.mapped,
            stripped=sent.stripped,
            idempotency="new",
        )
        if late:
            # The transaction's event went out with the 451: say what
            # became of the message in a line of its own.
            log.info(
                "relayed message {upstream_id} for token {token_name}: {size} bytes,"
                " {recipients} recipients, {elapsed:.3f}s; key {key}{late}",
                upstream_id=result.message_id,
                token_name=sent.token_name,
                size=sent.size,
                recipients=sent.recipients,
                elapsed=elapsed,
                key=sent.key,
                late=late,
            )
        if not result.message_id:
            log.warn(
                "upstream answered 2xx without a message id for token {token_name};"
                " check upstream.url",
                token_name=sent.token_name,
            )
        return R.queued(result.message_id)

    async def _not_accepted(
        self,
        result: Any,
        sent: _Sent,
        tried: list[Any],
        carries_key: bool,
        elapsed: float,
        late: str,
    ) -> Reply:
        """
        The upstream did not take the message (or may have, unanswered):
        release, keep or record the claim, and the reply for the client.
        """
        if isinstance(result, NotSent):
            reply: Reply = result.reply
            await self._record(self.store.release(sent.key, sent.started))
        elif result == R.TEMPORARY_FAILURE and not carries_key:
            # Maybe sent (no answer after the request was written), to an
            # API that takes no idempotency key: a retry would be a second
            # message, so the claim stays until it expires (window +
            # timeout) and a retry meanwhile gets FIRST_ATTEMPT_IN_FLIGHT.
            reply = result
            log.info(
                "message {key} for token {token_name} may have been sent and the upstream"
                " takes no idempotency key: its claim is kept; a retry is not sent",
                key=sent.key,
                token_name=sent.token_name,
            )
        elif upstream_refused_credential(result) and self._relay_credential(tried, sent):
            # 401/403 for a credential relayd holds: relayd's mistake, not
            # the client's; temporary and not recorded.
            log.error(
                "upstream refused relayd's own credential for message {key} of token"
                " {token_name}: check the held or route credential",
                key=sent.key,
                token_name=sent.token_name,
            )
            reply = R.UPSTREAM_REFUSED_RELAY_CREDENTIAL
            await self._record(self.store.release(sent.key, sent.started))
        else:
            reply = result
            if reply.permanent:
                await self._record(
                    self.store.record_refused(sent.key, reply, *self._lifetime(sent))
                )
            else:
                await self._record(self.store.release(sent.key, sent.started))
        events.note(idempotency="new")
        if late:
            log.info(
                "upstream did not take message {key} for token {token_name}: {code} {status}"
                " {reason} ({elapsed:.3f}s){late}",
                key=sent.key,
                token_name=sent.token_name,
                code=reply.code,
                status=reply.status,
                reason=reply.text,
                elapsed=elapsed,
                late=late,
            )
        return reply

    def _lifetime(self, sent: _Sent) -> tuple[float, ...]:
        """
        The lifetime argument of a record: L{window} seconds for a message
        without a Message-ID (identical bytes within the retry window are
        a retry; later they are a new message), else none (the store's
        window).
        """
        return (self.window,) if sent.no_message_id else ()

    @staticmethod
    def _relay_credential(tried: list[Any], sent: _Sent) -> bool:
        """
        Was the credential sent relayd's own (the token's held one or the
        route upstream's), not the client's?
        """
        route_own = bool(tried) and getattr(tried[0], "credential", None) is not None
        return sent.held or route_own

    async def _record(self, d: defer.Deferred[None]) -> None:
        """
        Wait for a store write; a failing store is logged, never the
        client's problem (the key still protects at an upstream that
        honours it).
        """
        try:
            await d
        except Exception:
            log.failure("recording an idempotency outcome failed")
