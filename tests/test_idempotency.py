"""
Tests for L{relayd.idempotency}: the key of a transaction and the outcome
store.
"""

from __future__ import annotations

import hashlib
import re
import uuid

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyClass, verifyObject

from relayd.idempotency import (
    ContentDigest,
    OutcomeStore,
    content_digest,
    idempotency_key,
)
from relayd.interfaces import IOutcomeStore
from relayd.reply import Reply
from relayd.result import Accepted, InFlight

CONTENT = b"From: a@example.com\r\nMessage-ID: <m1@example.com>\r\nSubject: x\r\n\r\nbody\r\n"
DIGEST = hashlib.sha256(CONTENT).digest()
BASE = {
    "identity": "billing",
    "reverse_path": "bounces@example.com",
    "forward_paths": ["ann@example.net", "bob@example.org"],
    "message_id": "<m1@example.com>",
    "content_digest": DIGEST,
}
# The key of BASE: fixed, so a change of the scheme shows up here (every
# stored outcome and every upstream's memory of a key would be lost).
BASE_KEY = idempotency_key(**BASE)  # type: ignore[arg-type]


def key(**changes: object) -> str:
    return idempotency_key(**{**BASE, **changes})  # type: ignore[arg-type]


class ContentDigestTests(SynchronousTestCase):
    def test_incremental_equals_whole(self) -> None:
        """
        The digest is SHA-256 of the content however it is split.
        """
        digest = ContentDigest()
        for i in range(0, len(CONTENT), 7):
            digest.update(CONTENT[i : i + 7])
        self.assertEqual(digest.digest(), DIGEST)
        self.assertEqual(content_digest(CONTENT), DIGEST)
        self.assertEqual(content_digest([CONTENT[:10], b"", CONTENT[10:]]), DIGEST)
        self.assertEqual(content_digest(b""), hashlib.sha256(b"").digest())


class KeyTests(SynchronousTestCase):
    def test_key_is_a_version_8_uuid(self) -> None:
        """
        The key is a lower-case RFC 9562 version 8 UUID: 36 characters safe
        in an HTTP header.
        """
        self.assertRegex(
            BASE_KEY, r"\A[0-9a-f]{8}-[0-9a-f]{4}-8[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}\Z"
        )
        parsed = uuid.UUID(BASE_KEY)
        self.assertEqual(parsed.variant, uuid.RFC_4122)
        self.assertEqual(str(parsed), BASE_KEY)

    def test_stable(self) -> None:
        """
        The same transaction always gets the same key, independent of the
        process (no salt, no time); the value itself is pinned.
        """
        self.assertEqual(key(), BASE_KEY)
        self.assertEqual(key(forward_paths=tuple(BASE["forward_paths"])), BASE_KEY)  # type: ignore[arg-type]
        self.assertEqual(BASE_KEY, "87a73aa4-df80-8f4b-a629-9be219685a1e")

    def test_stable_one_recipient_and_edge_cases(self) -> None:
        """
        The values of the key scheme are pinned beyond BASE too: one
        recipient (its domain's case does not matter), none, the null
        reverse-path, no Message-ID, non-ASCII and surrogate-escaped text.
        """
        digest = hashlib.sha256(b"x").digest()
        cases = [
            (
                ("billing", "bounces@example.com", ["Ann@Example.NET"], "<m1@example.com>"),
                "c66f901b-d93a-801e-8374-c72e00a81e84",
            ),
            (
                ("billing\0" + "ab" * 32, "", ("ann@example.net",), None),
                "7879b09b-dc13-82e9-9c04-9c5b94193405",
            ),
            (
                ("b\u00e9", "s\u00e9@x.example", [], "id\udcff"),
                "f8a9c13b-9cf7-89b8-b92c-9b9e1d5e785f",
            ),
        ]
        for (identity, reverse_path, forward_paths, message_id), expected in cases:
            self.assertEqual(
                idempotency_key(identity, reverse_path, forward_paths, message_id, digest),
                expected,
            )
        self.assertEqual(
            idempotency_key(
                "billing", "bounces@example.com", ["Ann@example.net"], "m1@example.com", digest
            ),
            cases[0][1],
        )

    def test_same_transaction_variants(self) -> None:
        """
        Recipient order, a repeated recipient, the case of a recipient's
        domain, and angle brackets or white space around the Message-ID do
        not make another transaction.
        """
        for same in (
            {"forward_paths": ["bob@example.org", "ann@example.net"]},
            {"forward_paths": ["ann@example.net", "bob@example.org", "ann@example.net"]},
            {"forward_paths": ["ann@EXAMPLE.net", "bob@Example.Org"]},
            {"message_id": "m1@example.com"},
            {"message_id": " <m1@example.com> "},
        ):
            self.assertEqual(key(**same), BASE_KEY, same)
        self.assertEqual(key(message_id=None), key(message_id=""))

    def test_any_change_makes_another_key(self) -> None:
        """
        Another identity, reverse-path, recipient set, Message-ID or content
        gives another key; so does the case of a local part (RFC 5321
        section 2.4).
        """
        others: list[dict[str, object]] = [
            {"identity": "marketing"},
            {"identity": ""},
            {"reverse_path": ""},
            {"reverse_path": "Bounces@example.com"},
            {"forward_paths": ["ann@example.net"]},
            {"forward_paths": ["ann@example.net", "bob@example.org", "carol@example.org"]},
            {"forward_paths": ["Ann@example.net", "bob@example.org"]},
            {"message_id": None},
            {"message_id": "<m2@example.com>"},
            {"content_digest": content_digest(CONTENT + b"x")},
        ]
        keys = {key(**change) for change in others}
        self.assertEqual(len(keys), len(others))
        self.assertNotIn(BASE_KEY, keys)

    def test_fields_do_not_run_together(self) -> None:
        """
        Moving characters from one field to the next changes the key (each
        field is length-prefixed).
        """
        self.assertNotEqual(
            key(identity="ab", reverse_path="c@example.com"),
            key(identity="a", reverse_path="bc@example.com"),
        )
        self.assertNotEqual(
            key(forward_paths=["a@x.example,b@y.example"]),
            key(forward_paths=["a@x.example", "b@y.example"]),
        )

    def test_identity_is_a_name_not_a_token(self) -> None:
        """
        The key reveals nothing of its inputs: it is a hash, not text of
        them.
        """
        k = key(identity="rly_secret_looking_token")
        self.assertNotIn("rly", k)
        self.assertIsNone(re.search(r"example", k))

    def test_digest_must_be_sha256(self) -> None:
        """
        A digest that is not 32 bytes (a hex string, another hash) is a
        programming error.
        """
        with self.assertRaises(ValueError):
            key(content_digest=DIGEST.hex().encode())


class OutcomeStoreTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.store = OutcomeStore(self.clock, max_entries=3, window=100.0, in_flight_window=10.0)

    def outcome(self, k: str) -> object:
        return self.successResultOf(self.store.lookup(k))

    def test_provides_the_interface(self) -> None:
        self.assertTrue(verifyObject(IOutcomeStore, self.store))
        self.assertTrue(verifyClass(IOutcomeStore, OutcomeStore))

    def test_claim_then_accepted(self) -> None:
        """
        The first claim of a key fires with C{None} (send the request) and
        records it in flight; a second claim gets that record and sends
        nothing; once accepted, claims get the upstream id.
        """
        self.clock.advance(5)
        self.assertIsNone(self.successResultOf(self.store.claim("k")))
        self.assertEqual(self.successResultOf(self.store.claim("k")), InFlight(5.0))
        self.assertIsNone(self.successResultOf(self.store.record_accepted("k", "up-1")))
        self.assertEqual(self.successResultOf(self.store.claim("k")), Accepted("up-1"))
        self.assertEqual(self.outcome("k"), Accepted("up-1"))
        self.assertIsNone(self.outcome("other"))

    def test_refused_permanently(self) -> None:
        """
        A permanent refusal is kept with its reply, but never overwrites an
        acceptance; an acceptance (a late answer) overwrites a refusal.
        """
        reply = Reply(550, "5.6.0", "Invalid recipient")
        self.store.claim("k")
        self.store.record_refused("k", reply)
        self.assertEqual(self.successResultOf(self.store.claim("k")), reply)
        self.store.record_accepted("k", None)  # type: ignore[arg-type]  # a missing id
        self.assertEqual(self.outcome("k"), Accepted(""))
        self.store.record_refused("k", reply)
        self.assertEqual(self.outcome("k"), Accepted(""))

    def test_release_drops_only_a_claim(self) -> None:
        """
        Releasing an open claim lets the next claim send again; releasing a
        finished outcome keeps it.
        """
        self.store.claim("k")
        self.successResultOf(self.store.release("k"))
        self.assertIsNone(self.outcome("k"))
        self.assertIsNone(self.successResultOf(self.store.claim("k")))
        self.store.record_accepted("k", "up-1")
        self.store.release("k")
        self.assertEqual(self.outcome("k"), Accepted("up-1"))
        self.store.release("never-seen")

    def test_release_drops_only_its_own_claim(self) -> None:
        """
        A release names its claim (its C{since}): a later attempt's claim
        under the same key is kept.
        """
        self.store.claim("k", 100.0)
        self.store.release("k", 99.0)
        self.assertEqual(self.outcome("k"), InFlight(100.0))
        self.store.release("k", 100.0)
        self.assertIsNone(self.outcome("k"))

    def test_record_with_a_lifetime(self) -> None:
        """
        An outcome recorded with a lifetime lives that long, not C{window}.
        """
        self.store.record_accepted("k", "up-1", lifetime=60.0)
        self.clock.advance(59)
        self.assertEqual(self.outcome("k"), Accepted("up-1"))
        self.clock.advance(1)
        self.assertIsNone(self.outcome("k"))

    def test_bounded_oldest_written_dropped(self) -> None:
        """
        With C{max_entries} keys held, writing one more drops the key
        written longest ago; reading does not count as writing.
        """
        for k in ("a", "b", "c"):
            self.store.record_accepted(k, k)
        self.assertEqual(self.outcome("a"), Accepted("a"))
        self.store.claim("d")
        self.assertEqual(len(self.store), 3)
        self.assertIsNone(self.outcome("a"))
        self.store.record_accepted("b", "b2")  # rewritten: now the newest
        self.store.record_accepted("e", "e")
        self.assertIsNone(self.outcome("c"))
        self.assertEqual(
            [self.outcome(k) for k in ("b", "d", "e")],
            [Accepted("b2"), InFlight(0.0), Accepted("e")],
        )

    def test_outcome_expires_after_window(self) -> None:
        """
        A finished outcome lives C{window} seconds after it was recorded,
        then the key is unknown again and may be claimed.
        """
        self.store.record_accepted("k", "up-1")
        self.clock.advance(99.9)
        self.assertEqual(self.outcome("k"), Accepted("up-1"))
        self.clock.advance(0.1)
        self.assertIsNone(self.outcome("k"))
        self.assertIsNone(self.successResultOf(self.store.claim("k")))

    def test_claim_expires_after_in_flight_window(self) -> None:
        """
        An open claim whose answer never came is taken as lost after
        C{in_flight_window} seconds: the key may be claimed again.
        """
        self.store.claim("k")
        self.clock.advance(9)
        self.assertEqual(self.successResultOf(self.store.claim("k")), InFlight(0.0))
        self.clock.advance(1)
        self.assertIsNone(self.successResultOf(self.store.claim("k")))
        self.assertEqual(self.outcome("k"), InFlight(10.0))

    def test_expired_entries_are_swept(self) -> None:
        """
        Expired outcomes do not hold memory until they are looked up.
        """
        self.store.record_accepted("a", "a")
        self.store.record_accepted("b", "b")
        self.clock.advance(100)
        self.store.lookup("unrelated")
        self.assertEqual(len(self.store), 0)

    def test_bad_limits(self) -> None:
        for kwargs in ({"max_entries": 0}, {"window": 0}, {"in_flight_window": -1}):
            with self.assertRaises(ValueError):
                OutcomeStore(self.clock, **kwargs)  # type: ignore[arg-type]
