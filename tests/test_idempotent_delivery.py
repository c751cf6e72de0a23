"""
Tests for the idempotent delivery of L{relayd.delivery.Pipeline}: every
transaction is claimed under its idempotency key before it is sent, a late
answer is recorded for the retry, and a retry is answered from the record.

Units on a L{Clock} with a fake upstream client that implements the
C{prepare} / C{post_prepared} contract of L{relayd.upstream.UpstreamClient}
and answers only when the test says so.
"""

from __future__ import annotations

import re
from typing import Any

import attrs
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from relayd import reply as R
from relayd.config import CredentialSource, HeadersConfig
from relayd.delivery import Pipeline, RelayDelivery, message_id
from relayd.idempotency import OutcomeStore, content_digest, idempotency_key
from relayd.message import OutboundMessage
from relayd.pipeline import _MESSAGE_ID
from relayd.policy import MessageRates
from relayd.reply import Refused, Reply
from relayd.result import Accepted, InFlight, NotSent, UpstreamResult
from relayd.routing import Candidate, Route, Router
from relayd.smtp.guards import LocalCounters
from relayd.tokens import TokenPolicy

MESSAGE = (
    b"From: Ann <ann@example.com>\r\nTo: bob@example.net\r\nSubject: hello\r\n"
    b"Message-ID: <m1@example.com>\r\n\r\nbody\r\n"
)
TIMEOUT = 30.0
WINDOW = 600.0


@attrs.frozen
class Prepared:
    """
    What L{FakeClient.prepare} returns (the C{PreparedRequest} contract).
    """

    body: bytes
    headers: dict[str, list[str]]
    size: int
    idempotency_key: str | None
    carries_key: bool = False


class FakeClient:
    """
    An upstream client whose requests stay open until the test answers
    them with L{answer}.

    @ivar requests: C{(request, deadline)} of every C{post_prepared} call.
    """

    def __init__(self, carries_key: bool = False) -> None:
        self.carries_key = carries_key
        self.requests: list[tuple[Prepared, float | None]] = []
        self._open: list[Deferred[UpstreamResult]] = []

    def prepare(
        self, message: OutboundMessage, token: str, key: str | None, now: float | None = None
    ) -> Prepared:
        body = message.subject.encode()
        return Prepared(body, {"Idempotency-Key": [key or ""]}, len(body), key, self.carries_key)

    def post_prepared(
        self, request: Prepared, deadline: float | None = None
    ) -> Deferred[UpstreamResult]:
        self.requests.append((request, deadline))
        d: Deferred[UpstreamResult] = Deferred()
        self._open.append(d)
        return d

    def answer(self, result: Any) -> None:
        """
        Answer the oldest open request.
        """
        self._open.pop(0).callback(result)


class IdempotentDeliveryTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.client = FakeClient()
        self.store = OutcomeStore(self.clock, in_flight_window=WINDOW)
        self.pipeline = Pipeline(
            self.client,  # type: ignore[arg-type]
            HeadersConfig(),
            self.clock,
            store=self.store,
            timeout=TIMEOUT,
            window=WINDOW,
        )
        self.avatar = RelayDelivery("tok-1", TokenPolicy("web"), self.pipeline)

    def submit(self, data: bytes = MESSAGE, rcpt: str = "bob@example.net") -> Deferred[Reply]:
        """
        One transaction from C{ann@example.com}; the reply's Deferred.
        """
        self.avatar.validateFrom(None, "ann@example.com")
        message = self.avatar.validateTo(rcpt)()
        message.bodyReceived(data)
        return message.eomReceived()

    def key(self, data: bytes = MESSAGE) -> str:
        return idempotency_key(
            self.pipeline.identity("tok-1", TokenPolicy("web")),
            "ann@example.com",
            ["bob@example.net"],
            message_id(data),
            content_digest(data),
        )

    def test_request_carries_the_key_and_the_window(self) -> None:
        """
        The request is prepared with the transaction's idempotency key
        (token name, envelope, Message-ID, digest) and posted with the
        window as its deadline.
        """
        d = self.submit()
        ((request, deadline),) = self.client.requests
        self.assertEqual(request.idempotency_key, self.key())
        self.assertEqual(deadline, WINDOW)
        self.client.answer(Accepted("up-1"))
        self.assertEqual(self.successResultOf(d), R.queued("up-1"))
        self.assertEqual(self.successResultOf(self.store.lookup(self.key())), Accepted("up-1"))

    def test_identity_computed_once_per_session(self) -> None:
        """
        The avatar computes its identity (an HMAC of the token) once, for
        every transaction of the session; each key is the one of that
        identity.
        """
        calls: list[str] = []
        real = Pipeline.identity

        def counted(pipeline: Pipeline, token: str, policy: TokenPolicy) -> str:
            calls.append(token)
            return real(pipeline, token, policy)

        self.patch(Pipeline, "identity", counted)
        other = MESSAGE.replace(b"<m1@", b"<m2@")
        replies = [self.submit(data) for data in (MESSAGE, other)]
        self.assertEqual(calls, ["tok-1"])
        keys = [request.idempotency_key for request, _ in self.client.requests]
        self.assertEqual(keys, [self.key(MESSAGE), self.key(other)])
        self.assertEqual(self.avatar.identity, real(self.pipeline, "tok-1", TokenPolicy("web")))
        self.client.answer(Accepted("up-1"))
        self.client.answer(Accepted("up-2"))
        self.assertEqual(
            [self.successResultOf(d) for d in replies], [R.queued("up-1"), R.queued("up-2")]
        )

    def test_retry_while_in_flight_gets_451_and_sends_nothing(self) -> None:
        """
        A retry while the first attempt is open gets C{451 4.3.0} saying
        so, and no second request.
        """
        first = self.submit()
        self.assertNoResult(first)
        self.assertEqual(
            self.successResultOf(self.submit()),
            Reply(
                451,
                "4.3.0",
                "The first attempt of this message is still being processed, try again later",
            ),
        )
        self.assertEqual(len(self.client.requests), 1)

    def test_timeout_answers_451_and_keeps_waiting(self) -> None:
        """
        After C{upstream.timeout} seconds the client gets C{451 4.3.0};
        the request is not cancelled, and its late acceptance is recorded.
        A retry then gets C{250} with the original id and sends nothing.
        """
        first = self.submit()
        self.clock.advance(TIMEOUT)
        self.assertEqual(self.successResultOf(first), R.TEMPORARY_FAILURE)
        self.assertIsInstance(self.successResultOf(self.store.lookup(self.key())), InFlight)
        self.clock.advance(100)
        with capturedLogs() as events:
            self.client.answer(Accepted("up-late"))
        self.assertIn("late", "".join(str(e.get("late", "")) for e in events))
        retry = self.successResultOf(self.submit())
        self.assertEqual(retry, Reply(250, "2.0.0", "Ok: queued as up-late"))
        self.assertEqual(len(self.client.requests), 1)

    def test_permanent_refusal_is_replayed(self) -> None:
        """
        A permanent refusal that came after the timeout is given to the
        retry, which sends nothing.
        """
        refusal = Reply(550, "5.7.1", "Sender domain not verified")
        first = self.submit()
        self.clock.advance(TIMEOUT)
        self.assertEqual(self.successResultOf(first), R.TEMPORARY_FAILURE)
        self.client.answer(refusal)
        self.assertEqual(self.successResultOf(self.submit()), refusal)
        self.assertEqual(len(self.client.requests), 1)

    def test_permanent_refusal_in_time(self) -> None:
        refusal = Reply(552, "5.3.4", "Message too big")
        first = self.submit()
        self.client.answer(refusal)
        self.assertEqual(self.successResultOf(first), refusal)
        self.assertEqual(self.successResultOf(self.store.lookup(self.key())), refusal)

    def test_not_sent_releases_the_key(self) -> None:
        """
        A request that certainly did not reach the upstream releases the
        key: the retry is sent at once.
        """
        first = self.submit()
        self.client.answer(NotSent(R.TEMPORARY_FAILURE))
        self.assertEqual(self.successResultOf(first), R.TEMPORARY_FAILURE)
        self.assertIsNone(self.successResultOf(self.store.lookup(self.key())))
        retry = self.submit()
        self.assertEqual(len(self.client.requests), 2)
        self.client.answer(Accepted("up-2"))
        self.assertEqual(self.successResultOf(retry), R.queued("up-2"))

    def test_late_temporary_failure_releases_the_key(self) -> None:
        """
        A temporary failure (even after the timeout) releases the key.
        """
        first = self.submit()
        self.clock.advance(TIMEOUT)
        self.successResultOf(first)
        self.client.answer(R.UPSTREAM_RATE_LIMITED)
        self.assertIsNone(self.successResultOf(self.store.lookup(self.key())))
        self.submit()
        self.assertEqual(len(self.client.requests), 2)

    def test_maybe_sent_without_upstream_key_keeps_the_claim(self) -> None:
        """
        No answer after the request was written (maybe sent), to a dialect
        that carries no idempotency key: the claim stays, and a retry gets
        C{451} saying the first attempt is open instead of a second send.
        """
        first = self.submit()
        self.client.answer(R.TEMPORARY_FAILURE)
        self.assertEqual(self.successResultOf(first), R.TEMPORARY_FAILURE)
        self.assertEqual(self.successResultOf(self.store.lookup(self.key())), InFlight(0.0))
        self.assertEqual(self.successResultOf(self.submit()), R.FIRST_ATTEMPT_IN_FLIGHT)
        self.assertEqual(len(self.client.requests), 1)

    def test_maybe_sent_with_upstream_key_releases_the_claim(self) -> None:
        """
        The same with a dialect that carries the key: the upstream sends a
        repeat once, so the retry is sent at once.
        """
        self.client.carries_key = True
        self.submit()
        self.client.answer(R.TEMPORARY_FAILURE)
        self.assertIsNone(self.successResultOf(self.store.lookup(self.key())))
        self.submit()
        self.assertEqual(len(self.client.requests), 2)

    def test_release_keeps_a_later_attempts_claim(self) -> None:
        """
        The first attempt's claim expired and a retry claimed the key: the
        first attempt's release does not drop the retry's claim.
        """
        self.submit()
        self.clock.advance(WINDOW + 1)
        self.submit()
        self.assertEqual(len(self.client.requests), 2)
        self.client.answer(NotSent(R.TEMPORARY_FAILURE))
        self.assertEqual(self.successResultOf(self.store.lookup(self.key())), InFlight(WINDOW + 1))
        self.assertEqual(self.successResultOf(self.submit()), R.FIRST_ATTEMPT_IN_FLIGHT)

    def test_refusal_of_a_held_credential_is_temporary(self) -> None:
        """
        401/403 (C{554 5.7.1}) for the credential relayd holds for the
        token: C{451 4.7.0}, logged at error without the credential, not
        recorded; the retry is sent.
        """
        held = CredentialSource("env", "HELD", "tokens.x")
        self.avatar = RelayDelivery(
            "held-secret", TokenPolicy("web", upstream_credential=held), self.pipeline
        )
        with capturedLogs() as events:
            d = self.submit()
            self.client.answer(Reply(554, "5.7.1", "Upstream refused the credential"))
        self.assertEqual(
            self.successResultOf(d),
            Reply(451, "4.7.0", "Upstream refused relayd's credential, try again later"),
        )
        errors = [e for e in events if e["log_level"].name == "error"]
        self.assertEqual(len(errors), 1)
        self.assertNotIn("held-secret", repr(errors))
        self.assertEqual(len(self.store), 0)
        self.submit()
        self.assertEqual(len(self.client.requests), 2)

    def test_refusal_of_the_clients_credential_is_permanent(self) -> None:
        refusal = Reply(554, "5.7.1", "Upstream refused the credential")
        d = self.submit()
        self.client.answer(refusal)
        self.assertEqual(self.successResultOf(d), refusal)
        self.assertEqual(self.successResultOf(self.submit()), refusal)

    def test_without_message_id_kept_only_for_the_window(self) -> None:
        """
        Identical bytes without a Message-ID: within the window the repeat
        gets the first id (logged at info); after it, it is a new message.
        """
        data = MESSAGE.replace(b"Message-ID: <m1@example.com>\r\n", b"")
        first = self.submit(data)
        self.client.answer(Accepted("up-1"))
        self.assertEqual(self.successResultOf(first), R.queued("up-1"))
        with capturedLogs() as events:
            self.assertEqual(self.successResultOf(self.submit(data)), R.queued("up-1"))
        self.assertTrue(any("no Message-ID" in e["log_format"] for e in events))
        self.clock.advance(WINDOW)
        self.submit(data)
        self.assertEqual(len(self.client.requests), 2)

    def test_other_message_other_key(self) -> None:
        """
        Another recipient or another Message-ID is another transaction:
        both are sent.
        """
        self.submit()
        self.submit(rcpt="cy@example.org")
        self.submit(MESSAGE.replace(b"m1@", b"m2@"))
        keys = {request.idempotency_key for request, _ in self.client.requests}
        self.assertEqual(len(keys), 3)

    def test_refused_by_relayd_claims_nothing(self) -> None:
        """
        A message relayd itself refuses (no From) is neither sent nor
        recorded.
        """
        reply = self.successResultOf(self.submit(b"Subject: x\r\n\r\nbody\r\n"))
        self.assertEqual(reply, R.NO_FROM_HEADER)
        self.assertEqual(len(self.store), 0)
        self.assertEqual(self.client.requests, [])


class _RecordingClient(FakeClient):
    """
    A L{FakeClient} that also records the credential and signing time of
    each prepared request.
    """

    def __init__(self) -> None:
        super().__init__()
        self.prepared: list[tuple[str, float | None]] = []

    def prepare(
        self, message: OutboundMessage, token: str, key: str | None, now: float | None = None
    ) -> Prepared:
        self.prepared.append((token, now))
        return super().prepare(message, token, key, now)


class IdentityTests(SynchronousTestCase):
    """
    The key's identity tells credentials apart where policy names do not
    (passthrough, an http backend answer without a name), and so does
    C{messages_per_minute}.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.client = FakeClient()
        self.pipeline = Pipeline(
            self.client,  # type: ignore[arg-type]
            HeadersConfig(),
            self.clock,
            rates=MessageRates(LocalCounters(self.clock)),
            timeout=TIMEOUT,
            window=WINDOW,
        )

    def send(self, avatar: RelayDelivery) -> Deferred[Reply]:
        avatar.validateFrom(None, "ann@example.com")
        message = avatar.validateTo("bob@example.net")()
        message.bodyReceived(MESSAGE)
        return message.eomReceived()

    def test_two_passthrough_clients_are_two_senders(self) -> None:
        """
        tokenA then tokenB send the same bytes under the one policy name
        C{passthrough}: two upstream requests, each with its own key (no
        250 with tokenA's id for tokenB), and no credential in the key.
        """
        policy = TokenPolicy("passthrough")
        first = self.send(RelayDelivery("tokenA", policy, self.pipeline))
        self.client.answer(Accepted("up-a"))
        self.assertEqual(self.successResultOf(first), R.queued("up-a"))
        second = self.send(RelayDelivery("tokenB", policy, self.pipeline))
        self.client.answer(Accepted("up-b"))
        self.assertEqual(self.successResultOf(second), R.queued("up-b"))
        keys = [request.idempotency_key for request, _ in self.client.requests]
        self.assertEqual(len(keys), 2)
        self.assertNotEqual(keys[0], keys[1])
        identity = self.pipeline.identity("tokenA", policy)
        self.assertNotIn("tokenA", identity)
        self.assertEqual(
            identity, Pipeline(None, HeadersConfig(), self.clock).identity("tokenA", policy)
        )

    def test_secret_keys_the_identity(self) -> None:
        policy = TokenPolicy("customer")
        other = Pipeline(None, HeadersConfig(), self.clock, identity_secret=b"s" * 32)
        self.assertNotEqual(
            self.pipeline.identity("tokenA", policy), other.identity("tokenA", policy)
        )

    def test_rate_is_per_token_not_per_held_credential(self) -> None:
        """
        Two tokens that share one held upstream credential each have their
        own C{messages_per_minute}.
        """
        held = CredentialSource("env", "HELD", "tokens.x")
        a = RelayDelivery(
            "held-cred",
            TokenPolicy("a", messages_per_minute=1, upstream_credential=held),
            self.pipeline,
        )
        b = RelayDelivery(
            "held-cred",
            TokenPolicy("b", messages_per_minute=1, upstream_credential=held),
            self.pipeline,
        )
        self.assertEqual(
            self.successResultOf(a.validateFrom(None, "ann@example.com")), "ann@example.com"
        )
        self.assertEqual(
            self.successResultOf(b.validateFrom(None, "ann@example.com")), "ann@example.com"
        )
        refused = self.failureResultOf(a.validateFrom(None, "ann@example.com"), Refused)
        self.assertEqual(refused.value.reply, R.MESSAGE_RATE_EXCEEDED)


class RoutedDeliveryTests(SynchronousTestCase):
    """
    The pipeline sends through its router: the route's first upstream,
    the next only after a L{NotSent}, with the same key.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        self.first, self.second = _RecordingClient(), _RecordingClient()
        self.store = OutcomeStore(self.clock, in_flight_window=WINDOW)
        route = Route(
            "web",
            frozenset({"web"}),
            frozenset(),
            frozenset(),
            (Candidate(self.first), Candidate(self.second, "backup-key")),
        )
        other = Route("default", frozenset(), frozenset(), frozenset(), (Candidate(None),))
        pipeline = Pipeline(
            None,
            HeadersConfig(),
            self.clock,
            store=self.store,
            timeout=TIMEOUT,
            window=WINDOW,
            router=Router([route], other),
        )
        self.avatar = RelayDelivery("tok-1", TokenPolicy("web"), pipeline)

    def submit(self) -> Deferred[Reply]:
        self.avatar.validateFrom(None, "ann@example.com")
        message = self.avatar.validateTo("bob@example.net")()
        message.bodyReceived(bytearray(MESSAGE))  # as the DATA reader gives it
        return message.eomReceived()

    def test_failover_after_not_sent_with_the_same_key(self) -> None:
        """
        The first upstream certainly did not take it: the second gets the
        same key, its own credential, the time read when it was tried; the
        client gets the second's id, recorded under the key.
        """
        d = self.submit()
        self.assertEqual(self.first.prepared, [("tok-1", 1000.0)])
        self.clock.advance(2)
        self.first.answer(NotSent(R.TEMPORARY_FAILURE))
        self.assertEqual(self.second.prepared, [("backup-key", 1002.0)])
        ((first, _),), ((second, deadline),) = self.first.requests, self.second.requests
        assert first.idempotency_key is not None
        self.assertEqual(second.idempotency_key, first.idempotency_key)
        self.assertEqual(deadline, WINDOW)
        self.second.answer(Accepted("up-2"))
        self.assertEqual(self.successResultOf(d), R.queued("up-2"))
        self.assertEqual(
            self.successResultOf(self.store.lookup(first.idempotency_key)), Accepted("up-2")
        )

    def test_an_answer_is_final(self) -> None:
        """
        A temporary failure that may have been a delivery is the answer:
        the second upstream is not asked; the claim is kept (this dialect
        carries no idempotency key: a retry would be a second message).
        """
        d = self.submit()
        self.first.answer(R.TEMPORARY_FAILURE)
        self.assertEqual(self.successResultOf(d), R.TEMPORARY_FAILURE)
        self.assertEqual(self.second.requests, [])
        self.assertEqual(len(self.store), 1)

    def test_no_upstream_reached_releases_the_key(self) -> None:
        """
        Neither upstream could be reached: C{451 4.3.0}, the claim is
        released, and the retry is sent again.
        """
        d = self.submit()
        self.first.answer(NotSent(R.TEMPORARY_FAILURE))
        self.second.answer(NotSent(R.TEMPORARY_FAILURE))
        self.assertEqual(self.successResultOf(d), R.TEMPORARY_FAILURE)
        self.assertEqual(len(self.store), 0)
        self.submit()
        self.assertEqual(len(self.first.requests), 2)


class MessageIdTests(SynchronousTestCase):
    def test_message_id_of_the_top_level_header(self) -> None:
        self.assertEqual(message_id(MESSAGE), "<m1@example.com>")
        self.assertEqual(message_id(b"message-id:\r\n <a@b>\r\n\r\n"), "<a@b>")
        self.assertIsNone(message_id(b"Subject: x\r\n\r\nMessage-ID: <body@x>\r\n"))

    def test_field_name_anywhere_on_a_line(self) -> None:
        """
        Only a line that starts with the field name (any case) counts; the
        first such field whose name is followed by a colon is taken.
        """
        self.assertEqual(message_id(b"X-Message-ID: <no@x>\r\nMESSAGE-ID : <y@x>\r\n\r\n"), "<y@x>")
        self.assertEqual(message_id(b"Message-IDs: <no@x>\nMessage-Id:<z@x>\n\n"), "<z@x>")
        self.assertIsNone(message_id(b"Subject: Message-ID: <no@x>\r\n\r\n"))

    @given(
        st.lists(
            st.sampled_from(
                [
                    b"Message-ID: <a@b>",
                    b"message-id:<c@d>",
                    b"MESSAGE-ID :\r\n <e@f>",
                    b"X-Message-ID: <g@h>",
                    b"Message-IDx: <i@j>",
                    b"Subject: x",
                    b"\tfolded",
                    b"",
                    b"\r",
                    b" message-id: <k@l>",
                    b"Message-Id\t:\t<m@n>",
                ]
            ),
            max_size=8,
        ),
        st.sampled_from([b"\r\n", b"\n"]),
        st.binary(max_size=20),
    )
    def test_same_as_searching_the_section(
        self, lines: list[bytes], end: bytes, body: bytes
    ) -> None:
        """
        The value is what a case-insensitive search of the top-level header
        section (up to the first empty line) finds.
        """
        data = end.join(lines) + end + end + body
        match = re.search(rb"\r?\n\r?\n", data)
        header = data[: match.start()] if match else data
        found = _MESSAGE_ID.search(header)
        expected = (
            None
            if found is None
            else " ".join(found.group(1).decode("utf-8", "surrogateescape").split())
        )
        self.assertEqual(message_id(data), expected)
