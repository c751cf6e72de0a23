# -*- test-case-name: tests.test_devupstream -*-
"""
The bundled development API: a small twisted.web site that speaks the
C{native} dialect (C{docs/upstream-api.md}) and keeps every message it
receives as C{<outbox>/<id>.json}, so relayd runs end to end with no
external service.  Development only: bind it to 127.0.0.1.

  - C{POST /send}: a native request.  Needs C{Authorization: Bearer <any
    token>} (401 otherwise; the token is not checked, stored or echoed).
    A body that is not a JSON object is 400; one without a C{from} or
    without recipients in C{envelope.rcpt_to} is 422; errors are
    C{{"error": "..."}}.  Otherwise the message is stored and the answer
    is C{200 {"id": "<id>"}}, once the file is written.
  - C{GET /messages}: JSON list of C{{id, from, to, subject, received_at}},
    oldest first.
  - C{GET /messages/<id>}: the stored document C{{"id", "received_at",
    "message": <the request>}}.
  - C{Idempotency-Key} (draft-ietf-httpapi-idempotency-key-header; a
    bare value or a quoted sf-string, at most 255 visible ASCII
    characters, else 400): the first request with a key is stored as
    usual and its id remembered for L{KEY_WINDOW} seconds (at most
    L{MAX_KEYS} keys, the oldest forgotten first); a later request with
    the same key gets the same C{200 {"id": ...}} and stores nothing.
    While the first is still being stored, a repeat is C{409}.  A request
    that was refused (400, 422, 500) leaves no trace of its key.  Keys
    are not told apart by token, and are forgotten on restart.
  - C{POST /auth}: the auth contract (C{docs/upstream-api.md}, "Auth
    contract"; L{auth_resource}) for C{[auth] backend = "http"}.
  - Testing knob: a request header C{X-Relayd-Dev-Status: <code>} makes
    C{POST /send} answer that status (with C{{"error": ...}}) and store
    nothing, to try relayd's error paths by hand.

Parsing and file I/O run in the reactor's thread pool: a 25 MB message
does not stall the reactor.
"""

from __future__ import annotations

import json
import os
import re
import uuid
from datetime import UTC, datetime
from typing import IO, Any

from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from relayd import devinbox
from relayd.idempotency import Accepted, OutcomeStore
from relayd.interfaces import IOutcomeStore

__all__ = [
    "REFUSED_PREFIX",
    "auth_resource",
    "DEV_STATUS_HEADER",
    "IDEMPOTENCY_KEY_HEADER",
    "KEY_WINDOW",
    "MAX_KEYS",
    "make_site",
]

log = Logger()

DEV_STATUS_HEADER = b"X-Relayd-Dev-Status"
IDEMPOTENCY_KEY_HEADER = b"Idempotency-Key"

# How long (seconds) and how many idempotency keys are remembered.
KEY_WINDOW = 24 * 3600.0
MAX_KEYS = 10_000

_KEY = re.compile(r"\A[\x21\x23-\x7e]{1,255}\Z")

_ID = re.compile(r"\A[0-9a-f]{8,64}\Z")


class _BadRequest(Exception):
    """
    The request cannot be stored: answer C{status} with C{error}.
    """

    def __init__(self, status: int, error: str) -> None:
        super().__init__(status, error)
        self.status = status
        self.error = error


def _answer(request: Request, status: int, document: object) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"Content-Type", b"application/json")
    request.setHeader(b"Cache-Control", b"no-store")
    return json.dumps(document).encode("utf-8")


def _watch(request: Request) -> list[bool]:
    """
    @return: A list that gets an item when the client goes away before the
        answer is finished.
    """
    gone: list[bool] = []
    request.notifyFinish().addErrback(lambda _: gone.append(True))
    return gone


def _finish(request: Request, gone: list[bool], status: int, document: object) -> None:
    if not gone:
        request.write(_answer(request, status, document))
        request.finish()


def _validate(data: bytes) -> dict[str, Any]:
    """
    Parse and check a native request body.

    @raise _BadRequest: 400 for non-JSON, 422 for a wrong shape.
    """
    try:
        document = json.loads(data)
    except (ValueError, RecursionError):
        raise _BadRequest(400, "Request body is not JSON") from None
    if not isinstance(document, dict):
        raise _BadRequest(400, "Request body is not a JSON object")
    sender = document.get("from")
    if not isinstance(sender, str) or not sender:
        raise _BadRequest(422, "'from' must be a non-empty string")
    envelope = document.get("envelope")
    recipients = envelope.get("rcpt_to") if isinstance(envelope, dict) else None
    if (
        not isinstance(recipients, list)
        or not recipients
        or not all(isinstance(r, str) and r for r in recipients)
    ):
        raise _BadRequest(422, "'envelope.rcpt_to' must be a non-empty list of addresses")
    return document


class _Outbox:
    """
    The folder of stored messages.  Every method blocks: call them in a
    thread.
    """

    def __init__(self, path: str) -> None:
        self.path = path

    def _file(self, message_id: str) -> str:
        return os.path.join(self.path, message_id + ".json")

    def store(self, content: IO[bytes], received: float, key: str | None = None) -> str:
        """
        Validate the request body and write it as a new message.

        @param content: The request body (twisted.web keeps large ones in a
            temporary file).
        @param received: When it arrived, POSIX seconds.
        @param key: The request's idempotency key, kept in the stored
            document as C{idempotency_key} when given.
        @return: The new message's id.
        @raise _BadRequest: When it is not a valid native request.
        """
        content.seek(0)
        document = _validate(content.read())
        # Time first, so names sort by arrival; random tail for uniqueness.
        message_id = f"{int(received * 1_000_000):016x}{uuid.uuid4().hex[:16]}"
        stamp = datetime.fromtimestamp(received, UTC).isoformat(timespec="microseconds")
        stored: dict[str, Any] = {"id": message_id, "received_at": stamp, "message": document}
        if key is not None:
            stored["idempotency_key"] = key
        os.makedirs(self.path, exist_ok=True)
        final = self._file(message_id)
        partial = final + ".tmp"
        with open(partial, "w", encoding="utf-8") as f:
            json.dump(stored, f, ensure_ascii=False)
        os.replace(partial, final)
        return message_id

    def load(self, message_id: str) -> bytes | None:
        """
        @return: The stored document of C{message_id}, or C{None}.
        """
        if not _ID.match(message_id):
            return None
        try:
            with open(self._file(message_id), "rb") as f:
                return f.read()
        except FileNotFoundError:
            return None

    def summaries(self) -> list[dict[str, Any]]:
        """
        @return: C{{id, from, to, subject, received_at}} of every stored
            message, oldest first.
        """
        try:
            names = sorted(os.listdir(self.path))
        except FileNotFoundError:
            return []
        found = []
        for name in names:
            if not name.endswith(".json"):
                continue
            try:
                with open(os.path.join(self.path, name), encoding="utf-8") as f:
                    stored = json.load(f)
                message = stored["message"]
                found.append(
                    {
                        "id": stored["id"],
                        "from": message.get("from"),
                        "to": message.get("to"),
                        "subject": message.get("subject"),
                        "received_at": stored["received_at"],
                    }
                )
            except (OSError, ValueError, KeyError, TypeError, AttributeError):
                continue
        found.sort(key=lambda s: (s["received_at"], s["id"]))
        return found


def _idempotency_key(request: Request) -> str | None:
    """
    The request's C{Idempotency-Key}: a bare value or an sf-string (RFC
    8941 section 3.3.3) without escapes.

    @return: The key, or C{None} when the header is absent.
    @raise _BadRequest: 400 for an empty, overlong or malformed key.
    """
    raw = request.getHeader(IDEMPOTENCY_KEY_HEADER)
    if raw is None:
        return None
    value = raw.decode("latin-1").strip()
    if len(value) >= 2 and value.startswith('"') and value.endswith('"'):
        value = value[1:-1]
    if not _KEY.match(value):
        raise _BadRequest(400, "Bad Idempotency-Key")
    return value


class _Send(Resource):
    """
    C{POST /send}.
    """

    isLeaf = True

    def __init__(self, outbox: _Outbox, reactor: Any, keys: IOutcomeStore) -> None:
        super().__init__()
        self._outbox = outbox
        self._reactor = reactor
        self._keys = keys

    def render_POST(self, request: Request) -> bytes | int:
        authorization = request.getHeader(b"Authorization") or b""
        scheme, _, token = authorization.partition(b" ")
        if scheme.lower() != b"bearer" or not token.strip():
            return _answer(request, 401, {"error": "Missing API token"})
        forced = request.getHeader(DEV_STATUS_HEADER)
        if forced is not None:
            try:
                status = int(forced)
                if not 200 <= status <= 599:
                    raise ValueError(status)
            except ValueError:
                return _answer(request, 400, {"error": "Bad X-Relayd-Dev-Status"})
            return _answer(request, status, {"error": f"Forced status {status}"})
        try:
            key = _idempotency_key(request)
        except _BadRequest as e:
            return _answer(request, e.status, {"error": e.error})
        assert request.content is not None
        gone = _watch(request)
        d = Deferred.fromCoroutine(self._send(request.content, key))

        def answered(answer: tuple[int, dict[str, Any]]) -> None:
            _finish(request, gone, *answer)

        def failed(failure: Failure) -> None:
            log.failure("dev upstream cannot store a message", failure)
            _finish(request, gone, 500, {"error": "Cannot store the message"})

        d.addCallbacks(answered, failed)
        return NOT_DONE_YET

    async def _send(self, content: IO[bytes], key: str | None) -> tuple[int, dict[str, Any]]:
        """
        Store one message, once per idempotency key.

        @return: The status and the JSON document of the answer.
        @raise Exception: When the message cannot be stored (then the key
            is forgotten, so that a retry may succeed).
        """
        if key is not None:
            previous = await self._keys.claim(key)
            if isinstance(previous, Accepted):
                log.info(
                    "dev upstream: repeated idempotency key, message {message_id}",
                    message_id=previous.message_id,
                )
                return 200, {"id": previous.message_id}
            if previous is not None:
                return 409, {"error": "A request with this Idempotency-Key is in progress"}
        try:
            message_id: str = await deferToThreadPool(
                self._reactor,
                self._reactor.getThreadPool(),
                self._outbox.store,
                content,
                self._reactor.seconds(),
                key,
            )
        except Exception as e:
            if key is not None:
                await self._keys.release(key)
            if isinstance(e, _BadRequest):
                return e.status, {"error": e.error}
            raise
        if key is not None:
            await self._keys.record_accepted(key, message_id)
        log.info("dev upstream stored message {message_id}", message_id=message_id)
        return 200, {"id": message_id}


class _Messages(Resource):
    """
    C{GET /messages} and C{GET /messages/<id>}.
    """

    def __init__(self, outbox: _Outbox, reactor: Any, message_id: str | None = None) -> None:
        super().__init__()
        self._outbox = outbox
        self._reactor = reactor
        self._id = message_id

    def getChild(self, path: bytes, request: Request) -> Resource:
        if self._id is not None or not path:
            return self
        return _Messages(self._outbox, self._reactor, path.decode("ascii", "replace"))

    def render_GET(self, request: Request) -> int:
        gone = _watch(request)
        pool = self._reactor.getThreadPool()
        if self._id is None:
            listing = deferToThreadPool(self._reactor, pool, self._outbox.summaries)
            listing.addCallback(lambda found: _finish(request, gone, 200, found))
            listing.addErrback(self._failed, request, gone)
        else:
            one = deferToThreadPool(self._reactor, pool, self._outbox.load, self._id)
            one.addCallback(self._one, request, gone)
            one.addErrback(self._failed, request, gone)
        return NOT_DONE_YET

    def _one(self, stored: bytes | None, request: Request, gone: list[bool]) -> None:
        if stored is None:
            _finish(request, gone, 404, {"error": "No such message"})
        elif not gone:
            request.setHeader(b"Content-Type", b"application/json")
            request.write(stored)
            request.finish()

    def _failed(self, failure: Failure, request: Request, gone: list[bool]) -> None:
        log.failure("dev upstream cannot read the outbox", failure)
        _finish(request, gone, 500, {"error": "Cannot read the outbox"})


#: Credentials the development API's C{POST /auth} refuses, with the text
#: of the refusal: a way to see a 535 with the endpoint's own text.
REFUSED_PREFIX = "revoked"


class _Auth(Resource):
    """
    C{POST /auth}: the auth contract, for development.  Any credential in
    C{Authorization: Bearer <token>} or C{Basic <base64>} is valid and gets
    an unrestricted policy named C{"dev"}; a token that starts with
    L{REFUSED_PREFIX} gets C{401 {"error": "API key revoked"}}; no
    credential gets C{401 {"error": "Missing credential"}}.
    """

    isLeaf = True

    def render_POST(self, request: Request) -> bytes:
        authorization = request.getHeader(b"Authorization") or b""
        scheme, _, credential = authorization.partition(b" ")
        credential = credential.strip()
        if scheme.lower() not in (b"bearer", b"basic") or not credential:
            return _answer(request, 401, {"error": "Missing credential"})
        if credential.startswith(REFUSED_PREFIX.encode("ascii")):
            return _answer(request, 401, {"error": "API key revoked"})
        return _answer(request, 200, {"name": "dev"})


def auth_resource() -> Resource:
    """
    The development API's C{/auth} resource (the auth contract).

    @return: A leaf resource answering C{POST}.
    """
    return _Auth()


def make_site(outbox: str, reactor: Any) -> Site:
    """
    Build the development API.

    @param outbox: Folder where messages are stored (created on first
        use).
    @param reactor: Provides L{IReactorTime} and L{IReactorThreads}.
    @return: The site, to serve on a loopback endpoint.
    """
    store = _Outbox(outbox)
    keys = OutcomeStore(
        reactor, max_entries=MAX_KEYS, window=KEY_WINDOW, in_flight_window=KEY_WINDOW
    )
    root = Resource()
    root.putChild(b"send", _Send(store, reactor, keys))
    root.putChild(b"messages", _Messages(store, reactor))
    root.putChild(b"auth", auth_resource())
    devinbox.mount(root, outbox, reactor)  # the inbox pages: / and /inbox/...
    site = Site(root, reactor=reactor)
    site.displayTracebacks = False
    return site
