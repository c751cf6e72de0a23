# -*- test-case-name: tests.test_auth_http -*-
"""
The C{http} auth backend: ask the provider's auth endpoint whether a
credential is valid, and cache the answer.

The contract (C{docs/upstream-api.md}, "Auth contract"): relayd sends
C{POST <auth.url>} with the credential in the header the upstream gets it
in (C{upstream.token_header} / C{token_format}, else the dialect's), and a
JSON body C{{"username": "..."}}.  The endpoint answers:

  - 2xx, optionally with a JSON object holding the customer's policy
    (L{relayd.auth.policy_from}): the login succeeds (C{235}).
  - 401 or 403, optionally with C{{"error": "text"}}: the login fails with
    C{535 5.7.8 <text>}.
  - anything else, a body that is not what it should be, a refused
    connection or no complete answer (headers and body) within
    C{auth.timeout} seconds:
    C{454 4.7.0 Temporary authentication failure} (RFC 4954 section 6),
    never a 535.

Accepted credentials are remembered C{auth.cache_ttl} seconds, refused
ones C{auth.negative_cache_ttl} seconds, at most C{auth.cache_size} of
each (the oldest forgotten first); temporary failures are not remembered.
Concurrent logins with one credential make one request.  Cache keys are
SHA-256 digests of the user name and password, never the credential.

With C{[redis]}, the answers are kept in Redis as well
(L{relayd.redisstore.RedisAuthCache}, the same lifetimes), so every relayd
process of a fleet uses one cache: Redis is read first, and the
in-process cache answers while Redis is down.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any, Generic, TypeVar

from attrs import frozen
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import IUsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from relayd import reply as R
from relayd.answer import read_body
from relayd.auth import AuthRefused, CredentialRules, Login, policy_from
from relayd.config import PolicyConfig
from relayd.reply import Refused, Reply
from relayd.tokens import TokenPolicy

__all__ = ["HTTPAuthChecker", "TTLCache"]

log = Logger()

#: Most bytes of an auth endpoint's answer relayd keeps (the rest is
#: discarded as it arrives).
MAX_ANSWER = 64 * 1024

#: Most characters of the endpoint's error text put in the 535.
MAX_ERROR_TEXT = 200

V = TypeVar("V")


class TTLCache(Generic[V]):
    """
    A bounded map whose entries expire: least recently stored first out.
    """

    def __init__(self, clock: IReactorTime, size: int) -> None:
        """
        @param clock: Time source.
        @param size: Most entries kept.
        """
        self._clock = clock
        self._size = size
        self._entries: OrderedDict[bytes, tuple[float, V]] = OrderedDict()

    def get(self, key: bytes) -> V | None:
        """
        @return: The value stored under C{key}, or C{None} when there is
            none or it expired.
        """
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry[0] <= self._clock.seconds():
            del self._entries[key]
            return None
        return entry[1]

    def put(self, key: bytes, value: V, ttl: float) -> None:
        """
        Store C{value} under C{key} for C{ttl} seconds.
        """
        self._entries.pop(key, None)
        self._entries[key] = (self._clock.seconds() + ttl, value)
        while len(self._entries) > self._size:
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)


@frozen
class _Verdict:
    """
    What the endpoint said: a policy (accepted), a 535 reply (refused), or
    neither (temporary failure).
    """

    policy: TokenPolicy | None = None
    refusal: Reply | None = None
    answer: Mapping[str, Any] | None = None  # the endpoint's JSON, to share


def _clean(text: object) -> str:
    """
    The endpoint's error text as printable ASCII, at most
    L{MAX_ERROR_TEXT} characters; C{""} when it is not a string.
    """
    if not isinstance(text, str):
        return ""
    cleaned = "".join(c if " " <= c <= "~" else " " for c in text[:MAX_ERROR_TEXT])
    return " ".join(cleaned.split())


@implementer(ICredentialsChecker)
class HTTPAuthChecker:
    """
    Check credentials against the provider's auth endpoint.

    @ivar requests: How many requests were sent to the endpoint.
    @ivar hits: How many logins were answered from the cache.
    """

    credentialInterfaces = (IUsernamePassword,)

    def __init__(
        self,
        http: Any,
        url: str,
        clock: IReactorTime,
        *,
        rules: CredentialRules,
        defaults: PolicyConfig,
        header: str = "Authorization",
        header_format: str = "Bearer {token}",
        timeout: float = 5.0,
        ttl: float = 60.0,
        negative_ttl: float = 10.0,
        size: int = 10000,
        shared: Any = None,
    ) -> None:
        """
        @param http: A treq-like client (C{post}), for example
            L{treq.testing.StubTreq} in tests.
        @param url: The auth endpoint.
        @param clock: Time source for the cache and the timeout.
        @param rules: User name rules and what is forwarded.
        @param defaults: The policy where the endpoint says nothing.
        @param header: The request header that carries the credential.
        @param header_format: Its value; C{{token}} is replaced.
        @param timeout: Seconds to wait for the endpoint's whole answer,
            its body too.
        @param ttl: Seconds an accepted credential is remembered.
        @param negative_ttl: Seconds a refused credential is remembered.
        @param size: Most entries of each cache.
        @param shared: A cache shared by the fleet
            (L{relayd.redisstore.RedisAuthCache}), or C{None}.
        """
        self._http = http
        self._url = url
        self._clock = clock
        self._rules = rules
        self._defaults = defaults
        self._header = header
        self._format = header_format
        self._timeout = timeout
        self._ttl = ttl
        self._negative_ttl = negative_ttl
        self._accepted: TTLCache[TokenPolicy] = TTLCache(clock, size)
        self._refused: TTLCache[Reply] = TTLCache(clock, size)
        self._shared = shared
        self._inflight: dict[bytes, list[defer.Deferred[_Verdict]]] = {}
        self.requests = 0
        self.hits = 0

    def requestAvatarId(self, credentials: Any) -> defer.Deferred[Any]:
        """
        Ask the endpoint (or the cache) about C{credentials}.

        @param credentials: The client's user name and password.
        @return: A Deferred firing with a L{relayd.auth.Login}; failing
            with L{UnauthorizedLogin} (an L{AuthRefused} with the endpoint's
            text when it gave one), or with L{Refused} carrying
            C{454 4.7.0} when the endpoint could not answer.
        """
        try:
            username, password, forwarded = self._rules.credential(credentials)
        except UnauthorizedLogin as e:
            return defer.fail(e)
        key = hashlib.sha256(
            username.encode("utf-8", "surrogatepass")
            + b"\0"
            + password.encode("utf-8", "surrogatepass")
        ).digest()
        if self._shared is not None:
            return defer.Deferred.fromCoroutine(self._shared_login(key, username, forwarded))
        verdict = self._cached(key)
        if verdict is not None:
            self.hits += 1
            return defer.maybeDeferred(self._login, verdict, forwarded)
        return self._verdict(key, username, forwarded).addCallback(self._login, forwarded)

    def _cached(self, key: bytes) -> _Verdict | None:
        """
        The in-process cache's verdict for C{key}, or C{None}.
        """
        policy = self._accepted.get(key)
        if policy is not None:
            return _Verdict(policy=policy)
        refusal = self._refused.get(key)
        if refusal is not None:
            return _Verdict(refusal=refusal)
        return None

    async def _shared_login(self, key: bytes, username: str, forwarded: str) -> Login:
        """
        The shared cache's verdict (the in-process one while Redis is
        down), else the endpoint's.
        """

        async def local() -> _Verdict | None:
            return self._cached(key)

        value = await self._shared.get("http:" + key.hex(), local)
        verdict = self._decode(value) if isinstance(value, str) else value
        if verdict is not None:
            self.hits += 1
        else:
            verdict = await self._verdict(key, username, forwarded)
        return self._login(verdict, forwarded)

    def _decode(self, value: str) -> _Verdict | None:
        """
        A verdict stored in the shared cache, or C{None} for one this
        version cannot read.
        """
        try:
            record = json.loads(value)
            if "accepted" in record:
                answer = record["accepted"]
                return _Verdict(
                    policy=policy_from("customer", answer, self._defaults), answer=answer
                )
            code, status, text = record["refused"]
            return _Verdict(refusal=Reply(int(code), str(status), str(text)))
        except Exception:
            log.warn("unreadable auth cache entry in Redis; taken as none")
            return None

    def _share(self, key: bytes, verdict: _Verdict) -> None:
        """
        Store C{verdict} in the shared cache, with its lifetime.
        """
        if verdict.policy is not None and verdict.answer is not None:
            value, ttl = json.dumps({"accepted": dict(verdict.answer)}), self._ttl
        elif verdict.refusal is not None:
            reply = verdict.refusal
            value = json.dumps({"refused": [reply.code, reply.status, reply.text]})
            ttl = self._negative_ttl
        else:
            return
        self._shared.set("http:" + key.hex(), value, ttl).addErrback(
            lambda f: log.failure("auth cache write failed", f)
        )

    def _login(self, verdict: _Verdict, forwarded: str) -> Login:
        if verdict.policy is not None:
            return Login(forwarded, verdict.policy)
        if verdict.refusal is not None:
            raise AuthRefused(verdict.refusal)
        raise Refused(R.AUTH_TEMPORARY_FAILURE)

    def _verdict(self, key: bytes, username: str, forwarded: str) -> defer.Deferred[_Verdict]:
        """
        One request per credential at a time: later callers wait for the
        first one's answer, each with a Deferred of its own.
        """
        mine: defer.Deferred[_Verdict] = defer.Deferred()
        waiting = self._inflight.get(key)
        if waiting is not None:
            waiting.append(mine)
            return mine
        waiting = self._inflight[key] = [mine]

        def answered(verdict: _Verdict) -> None:
            del self._inflight[key]
            if verdict.policy is not None:
                self._accepted.put(key, verdict.policy, self._ttl)
            elif verdict.refusal is not None:
                self._refused.put(key, verdict.refusal, self._negative_ttl)
            if self._shared is not None:
                self._share(key, verdict)
            for d in waiting:
                d.callback(verdict)

        defer.Deferred.fromCoroutine(self._ask(username, forwarded)).addCallback(answered)
        return mine

    async def _ask(self, username: str, forwarded: str) -> _Verdict:
        """
        Send the request and read the answer, all within C{timeout}
        seconds; never raises.
        """
        self.requests += 1
        d = defer.Deferred.fromCoroutine(self._exchange(username, forwarded))
        # Cancelling the coroutine cancels what it waits for: the POST, or
        # reading the body (which closes the connection).
        timer = self._clock.callLater(self._timeout, d.cancel)
        try:
            status, content = await d
        except Exception as e:
            log.warn(
                "auth endpoint did not answer: {error}",
                error=type(e).__name__,
            )
            return _Verdict()
        finally:
            if timer.active():
                timer.cancel()
        return self._read(status, content)

    async def _exchange(self, username: str, forwarded: str) -> tuple[int, bytes]:
        """
        POST the question, read at most L{MAX_ANSWER} bytes of the answer.

        @return: The answer's HTTP status and (bounded) body.
        """
        body = json.dumps({"username": username}).encode("utf-8")
        headers = {
            "Content-Type": ["application/json"],
            self._header: [self._format.replace("{token}", forwarded)],
        }
        response = await self._http.post(self._url, data=body, headers=headers)
        content = bytearray()
        await read_body(response, content, MAX_ANSWER)
        return response.code, bytes(content)

    def _read(self, status: int, content: bytes) -> _Verdict:
        """
        Turn the endpoint's answer into a verdict.
        """
        answer: Any = {}
        if content.strip():
            try:
                answer = json.loads(content[:MAX_ANSWER])
            except ValueError:
                answer = None
        if 200 <= status < 300:
            if not isinstance(answer, Mapping):
                log.warn("auth endpoint answered {status} without a JSON object", status=status)
                return _Verdict()
            return _Verdict(policy=policy_from("customer", answer, self._defaults), answer=answer)
        if status in (401, 403):
            text = _clean(answer.get("error")) if isinstance(answer, Mapping) else ""
            return _Verdict(refusal=R.auth_refused(text))
        log.warn("auth endpoint answered {status}", status=status)
        return _Verdict()
