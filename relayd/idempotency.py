# -*- test-case-name: tests.test_idempotency -*-
"""
Idempotency: the key that names one SMTP transaction, and the store of what
became of each key's upstream request.

An MTA that does not get a reply to the final dot of C{DATA} (a timeout, a
reset connection, a C{451}) sends the same message again later (RFC 5321
section 4.5.4.1).  If the upstream did take the first attempt, a plain
retry delivers the message twice.  relayd therefore names every
transaction with an I{idempotency key}: it sends the key with the upstream
request (the C{Idempotency-Key} header, draft-ietf-httpapi-idempotency-
key-header), so that an upstream that honours it answers a repeated key
with the first result instead of sending again, and it records each key's
outcome in an L{IOutcomeStore}, so that a late answer for a request whose
client has already been told C{451} becomes the reply of the retry.

What makes two transactions I{the same}, and thus gives them one key:
  - the same authenticated identity: the token's policy name in the tokens
    file (never the token itself: the key travels to the upstream and to
    logs, and a credential must not be derivable from it); two clients
    sending identical mail never share a key;
  - the same envelope: the reverse-path, and the same I{set} of
    forward-paths (RFC 5321 section 3.3: order and repetition of C{RCPT
    TO} do not change the transaction; domains compared without case,
    local parts exactly, RFC 5321 section 2.4);
  - the same message: the C{Message-ID} header field where present (RFC
    5322 section 3.6.4) I{and} the SHA-256 digest of the content as
    received (after dot-unstuffing, CRLF line ends).

Why both the C{Message-ID} and the digest: the C{Message-ID} alone is not
enough, because some senders reuse one (a template, a broken generator, a
forwarded copy), and a different message under a reused id must never be
suppressed as a duplicate; the digest alone is not enough either, because
two messages with identical content but distinct C{Message-ID}s (a client
that deliberately sends the same text twice) are two messages.  An MTA's
retry resends its queued copy byte for byte, so its key is stable.

The key is a UUID (version 8, RFC 9562 section 5.8, built from the first
128 bits of a SHA-256 hash as in its Appendix B.2): 36 characters of
hex digits and hyphens, which every known API accepts as an idempotency
key, safe in an HTTP header, a log line and a Redis key.

This module imports no reactor: time comes from an injected
L{IReactorTime}.
"""

from __future__ import annotations

import hashlib
import hmac
from collections import OrderedDict
from collections.abc import Iterable, Sequence

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from zope.interface import implementer

from relayd.interfaces import IOutcomeStore
from relayd.reply import Reply
from relayd.result import Accepted, InFlight, Outcome

__all__ = [
    "Accepted",
    "ContentDigest",
    "InFlight",
    "Outcome",
    "OutcomeStore",
    "content_digest",
    "credential_identity",
    "idempotency_key",
]

# Domain separation: a key of another scheme (or a later version of this
# one) can never equal one of these.
_SCHEME = b"relayd-idempotency-key/1"


class ContentDigest:
    """
    The SHA-256 digest of message content, computed incrementally as the
    content arrives (so that a 25 MiB message is hashed without a second
    copy).

    Feed it exactly the bytes relayd relays: the content after dot-
    unstuffing (RFC 5321 section 4.5.2), with CRLF line ends.
    """

    def __init__(self) -> None:
        self._hash = hashlib.sha256()

    def update(self, data: bytes) -> None:
        """
        Add the next piece of content.

        @param data: Content bytes, in order.
        """
        self._hash.update(data)

    def digest(self) -> bytes:
        """
        @return: The SHA-256 digest of everything added so far (32 bytes);
            more content may still be added afterwards.
        """
        return self._hash.digest()


def content_digest(data: bytes | Iterable[bytes]) -> bytes:
    """
    The SHA-256 digest of message content.

    @param data: The whole content, or its pieces in order.
    @return: 32 bytes, equal to what L{ContentDigest} gives for the same
        bytes however they are split.
    """
    digest = ContentDigest()
    if isinstance(data, bytes):
        digest.update(data)
    else:
        for piece in data:
            digest.update(piece)
    return digest.digest()


def credential_identity(name: str, credential: str | None, secret: bytes | None = None) -> str:
    """
    The identity of an idempotency key (L{idempotency_key}) for a policy
    and the client's credential: names alone do not tell customers apart
    (every C{passthrough} client is C{"passthrough"}, every http-backend
    answer without a C{name} is C{"customer"}), so the credential is added
    as a keyed HMAC-SHA256 (RFC 2104): never the credential itself, and
    nothing from which it can be recovered.

    @param name: The policy's name (L{relayd.tokens.TokenPolicy.name}).
    @param credential: The client's own credential, or C{None} when the
        name alone identifies the client (a tokens-file token whose
        upstream credential relayd holds: names are unique there, and a
        rotated held credential must not change the key of a retry).
    @param secret: The per-deployment HMAC key; C{None}: the SHA-256 of
        the credential (what the tokens file stores), so that every
        process and host agrees without configuration.
    @return: C{name}, or C{name} and 64 hex digits.
    """
    if credential is None:
        return name
    data = credential.encode("utf-8", "surrogatepass")
    key = secret if secret is not None else hashlib.sha256(data).digest()
    tag = hmac.new(key, b"relayd-identity/1\0" + data, hashlib.sha256).hexdigest()
    return f"{name}\0{tag}"


def _forward_path(path: str) -> str:
    """
    A forward-path with its domain in lower case: RFC 5321 section 2.4
    makes domains case-insensitive; the local part is compared exactly.
    """
    local, at, domain = path.rpartition("@")
    return f"{local}{at}{domain.lower()}" if at else path


def _field(value: str | bytes) -> bytes:
    """
    One field of the hashed input: its length (8 bytes, big-endian) and its
    bytes, so that no two field sequences encode the same.
    """
    data = value.encode("utf-8", "surrogateescape") if isinstance(value, str) else value
    return len(data).to_bytes(8, "big") + data


#: The hash of the scheme's field, the start of every key's input: copied
#: per key (L{idempotency_key}).
_KEYED = hashlib.sha256(_field(_SCHEME))


def idempotency_key(
    identity: str,
    reverse_path: str,
    forward_paths: Sequence[str],
    message_id: str | None,
    content_digest: bytes,
) -> str:
    """
    The idempotency key of one SMTP transaction (see the module docstring
    for what makes two transactions the same).

    @param identity: The authenticated identity: the token's policy name
        (L{relayd.tokens.TokenPolicy.name}), never the token.
    @param reverse_path: The reverse-path of C{MAIL FROM}, without angle
        brackets (C{""} for the null reverse-path).
    @param forward_paths: The accepted forward-paths of C{RCPT TO}, without
        angle brackets; order and repeats do not matter.
    @param message_id: The C{Message-ID} header field's value (angle
        brackets and surrounding white space do not matter), or C{None}
        (or C{""}) when the message has none.
    @param content_digest: The SHA-256 digest of the content
        (L{ContentDigest}, L{content_digest}), 32 bytes.
    @return: A UUID string (RFC 9562 version 8), 36 ASCII characters, the
        same for the same inputs in every process and release of this key
        scheme.
    @raise ValueError: If C{content_digest} is not 32 bytes.
    """
    if len(content_digest) != 32:
        raise ValueError("content_digest must be a SHA-256 digest (32 bytes)")
    mid = (message_id or "").strip().removeprefix("<").removesuffix(">").strip()
    if len(forward_paths) == 1:
        recipients: Sequence[str] = (_forward_path(forward_paths[0]),)
    else:
        recipients = sorted({_forward_path(p) for p in forward_paths})
    # The hashed input, as in earlier releases: each field length-prefixed
    # (L{_field}), after the scheme's own field (hashed once, L{_KEYED}).
    parts = [_field(identity), _field(reverse_path), len(recipients).to_bytes(8, "big")]
    parts += [_field(recipient) for recipient in recipients]
    # Absent and present-but-empty both mean "no Message-ID".
    parts.append(_field(b"\x01" + mid.encode("utf-8", "surrogateescape") if mid else b""))
    parts.append(_field(content_digest))
    h = _KEYED.copy()
    h.update(b"".join(parts))
    raw = bytearray(h.digest()[:16])
    raw[6] = (raw[6] & 0x0F) | 0x80  # version 8 (RFC 9562 section 5.8)
    raw[8] = (raw[8] & 0x3F) | 0x80  # variant 10xx (RFC 9562 section 4.1)
    # As str(uuid.UUID(bytes=raw)), without building the UUID object.
    x = raw.hex()
    return f"{x[:8]}-{x[8:12]}-{x[12:16]}-{x[16:20]}-{x[20:]}"


# -- outcomes -----------------------------------------------------------------


@implementer(IOutcomeStore)
class OutcomeStore:
    """
    The outcomes of recent upstream requests, in this process's memory.

    Bounded: at most C{max_entries} keys; when one more is written, the key
    written longest ago is dropped (whatever its state: a dropped key only
    costs the protection for that one message).  Expiring: a finished
    outcome lives C{window} seconds after it was recorded, an in-flight
    claim C{in_flight_window} seconds after it was made (after that the
    request is taken as lost, and the key may be claimed again: the retry
    carries the same idempotency key, so an upstream that honours it still
    sends once).  Reading does not extend a lifetime.

    Every method returns an already-fired L{Deferred}, as a shared store
    (Redis) will return a pending one: callers C{await} them.

    @ivar max_entries: See above; at least 1.
    @ivar window: Seconds a finished outcome is kept.
    @ivar in_flight_window: Seconds an open claim is kept.
    """

    def __init__(
        self,
        clock: IReactorTime,
        max_entries: int = 100_000,
        window: float = 24 * 3600.0,
        in_flight_window: float = 600.0,
    ) -> None:
        """
        @param clock: Time source (C{clock.seconds()}).
        @raise ValueError: For C{max_entries} below 1 or a window not above
            0 seconds.
        """
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        if window <= 0 or in_flight_window <= 0:
            raise ValueError("windows must be positive numbers of seconds")
        self._clock = clock
        self.max_entries = max_entries
        self.window = window
        self.in_flight_window = in_flight_window
        # Key to (expiry time, outcome), oldest-written first.
        self._entries: OrderedDict[str, tuple[float, Outcome]] = OrderedDict()

    def __len__(self) -> int:
        """
        @return: How many keys are held (expired ones included until they
            are next looked at or swept).
        """
        return len(self._entries)

    def _sweep(self, now: float) -> None:
        # Oldest-written first; entries written later with a shorter life
        # (claims) are dropped when read or evicted.
        entries = self._entries
        while entries:
            key, (expires, _) = next(iter(entries.items()))
            if expires > now:
                break
            del entries[key]

    def _current(self, key: str, now: float) -> Outcome | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry[0] <= now:
            del self._entries[key]
            return None
        return entry[1]

    def _write(self, key: str, outcome: Outcome, lifetime: float, now: float) -> None:
        entries = self._entries
        entries.pop(key, None)
        entries[key] = (now + lifetime, outcome)
        while len(entries) > self.max_entries:
            entries.popitem(last=False)

    def lookup(self, key: str) -> Deferred[Outcome | None]:
        """
        See L{IOutcomeStore.lookup}.
        """
        now = self._clock.seconds()
        self._sweep(now)
        return defer.succeed(self._current(key, now))

    def claim(self, key: str, since: float | None = None) -> Deferred[Outcome | None]:
        """
        See L{IOutcomeStore.claim}.

        @param since: The claim's own time (the caller's token for
            L{release}); C{None}: now.
        """
        now = self._clock.seconds()
        self._sweep(now)
        existing = self._current(key, now)
        if existing is not None:
            return defer.succeed(existing)
        self._write(key, InFlight(now if since is None else since), self.in_flight_window, now)
        return defer.succeed(None)

    def record_accepted(
        self, key: str, upstream_id: str, lifetime: float | None = None
    ) -> Deferred[None]:
        """
        See L{IOutcomeStore.record_accepted}.

        @param lifetime: Seconds it is kept; C{None}: L{window}.
        """
        now = self._clock.seconds()
        self._sweep(now)
        self._write(key, Accepted(upstream_id or ""), lifetime or self.window, now)
        return defer.succeed(None)

    def record_refused(
        self, key: str, reply: Reply, lifetime: float | None = None
    ) -> Deferred[None]:
        """
        See L{IOutcomeStore.record_refused}.

        @param lifetime: Seconds it is kept; C{None}: L{window}.
        """
        now = self._clock.seconds()
        self._sweep(now)
        current = self._current(key, now)
        if not isinstance(current, Accepted):
            self._write(key, reply, lifetime or self.window, now)
        return defer.succeed(None)

    def release(self, key: str, since: float | None = None) -> Deferred[None]:
        """
        See L{IOutcomeStore.release}.

        @param since: The C{since} of the claim to drop (the caller's own,
            given to L{claim}): a later attempt's claim, made after this
            one expired, is kept; C{None}: any claim.
        """
        now = self._clock.seconds()
        current = self._current(key, now)
        if isinstance(current, InFlight) and (since is None or current.since == since):
            del self._entries[key]
        return defer.succeed(None)
