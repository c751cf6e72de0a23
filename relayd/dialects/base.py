# -*- test-case-name: tests.test_dialects -*-
"""
What every upstream API dialect shares: L{JSONDialect}, its JSON body
(L{Base64} values, L{encode_body}: from L{relayd.dialects.body}), reading
the answer, and the mapping from the HTTP status
of the answer to an SMTP reply (L{failure_for_status}).  A dialect
overrides only what its upstream does differently.

The status line is the upstream's verdict; the answer's body only supplies
the message id or the reason text.  A 2xx answer therefore always becomes
L{Accepted}, even when its body cannot be read (the message id is then
C{""}): telling the SMTP client to retry a message the upstream already took
would send it twice.

No reactor code here: dialects are pure functions of their input.
"""

from __future__ import annotations

import json
import math
import re
import unicodedata
from collections.abc import Iterable, Mapping
from email.utils import parseaddr, parsedate_to_datetime
from typing import Any

from attrs import field, frozen
from zope.interface import implementer

from relayd.dialects.body import BASE64_CHUNK as BASE64_CHUNK
from relayd.dialects.body import LONG_TEXT as LONG_TEXT
from relayd.dialects.body import Base64, Body, encode_body, encode_json
from relayd.interfaces import IDialect
from relayd.message import OutboundMessage, address_key
from relayd.reply import (
    FALLBACK_REJECTED,
    FALLBACK_TOKEN,
    TEMPORARY_FAILURE,
    UPSTREAM_RATE_LIMITED,
    UPSTREAM_TOO_BIG,
    Refused,
    Reply,
)
from relayd.result import Accepted, UpstreamResult

__all__ = [
    "Base64",
    "Body",
    "HTTPRequest",
    "JSONDialect",
    "clean_id",
    "clean_text",
    "encode_body",
    "encode_json",
    "envelope_recipients",
    "failure_for_status",
    "header_value",
    "id_only",
    "parse_answer",
    "refuse_raw_only",
    "require_to",
    "retry_after_seconds",
    "strip_raw_headers",
]

#: The longest C{Retry-After} wait passed on to a client, in seconds (a
#: day): beyond that, the figure says nothing a client's queue can use.
MAX_RETRY_AFTER = 86400

#: Longest reason text taken from an upstream answer, in characters.
MAX_TEXT = 200

#: Longest message id taken from an upstream answer, in characters.
MAX_ID = 100


@frozen
class HTTPRequest:
    """
    One request to an upstream API, as a dialect builds it.

    @ivar content: The request body: bytes, or a L{Body} written piece by
        piece (L{encode_body}).
    @ivar headers: Header name to value; each replaces the upstream
        client's header of the same name (case-insensitive) or is added.
    @ivar carries_key: The request carries the transaction's idempotency
        key (in a header or in the body), so an upstream that honours it
        takes a repeat of this request as the same message.
    """

    content: bytes | Body
    headers: dict[str, str] = field(factory=dict)
    carries_key: bool = False

    @property
    def body(self) -> bytes:
        """
        The request body as one C{bytes} (a copy when L{content} is a
        L{Body}).
        """
        content = self.content
        return content if isinstance(content, bytes) else bytes(content)


#: Characters an id keeps (L{clean_id}): visible US-ASCII, C{!} to C{~}.
_NOT_VISIBLE = re.compile(r"[^!-~]+")

#: A JSON object whose only member is C{"id"}, a string of visible US-ASCII
#: without escapes (no C{"} or C{\\}): the common small 2xx answer
#: (C{{"id": "..."}}, RFC 8259 section 2 for the white space).  Its id is the
#: string's bytes as they are.
_ID_ONLY = re.compile(
    rb'[ \t\n\r]*\{[ \t\n\r]*"id"[ \t\n\r]*:[ \t\n\r]*"([!#-\[\]-~]+)"[ \t\n\r]*\}[ \t\n\r]*'
)


def id_only(body: bytes) -> str | None:
    """
    Read the id of an answer that is only C{{"id": "<visible ASCII>"}}
    without parsing it as JSON: L{clean_id} of what L{parse_answer} would
    find under C{"id"}, for the answer most upstreams give to a message
    they took.

    @param body: An answer's body.
    @return: The cleaned id (L{clean_id}: at most L{MAX_ID} characters), or
        C{None} when the body is anything else (then parse it).
    """
    match = _ID_ONLY.fullmatch(body)
    if match is None:
        return None
    return match.group(1)[:MAX_ID].decode("ascii")


def parse_answer(body: bytes) -> object:
    """
    Parse an upstream answer's body as JSON.

    @param body: The body, possibly empty, truncated or not JSON.
    @return: The parsed document, or C{None} when it is not JSON.
    """
    if not body:
        return None
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        return None


def clean_text(text: object, limit: int = MAX_TEXT) -> str:
    """
    Make upstream text safe for an SMTP reply line (RFC 5321 section 4.2):
    one line of printable US-ASCII.

    Accented letters lose their accents (NFKD), other non-ASCII characters
    are dropped, control characters and runs of white space become one
    space.

    @param text: Text from the upstream (anything else gives C{""}).
    @param limit: Maximum length of the result, in characters.
    @return: The cleaned text, possibly C{""}.
    """
    if not isinstance(text, str):
        return ""
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    printable = "".join(c if " " <= c <= "~" else " " for c in ascii_text)
    return " ".join(printable.split())[:limit].rstrip()


def clean_id(value: object, limit: int = MAX_ID) -> str:
    """
    Make an upstream message id safe to quote in an SMTP reply.

    @param value: The id from the answer: a string or a number.
    @param limit: Maximum length of the result, in characters.
    @return: The id restricted to visible US-ASCII (no spaces), at most
        C{limit} characters; C{""} when there is none.
    """
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        return ""
    return _NOT_VISIBLE.sub("", str(value))[:limit]


def refuse_raw_only(name: str, message: OutboundMessage) -> None:
    """
    Refuse a message that must travel unchanged through an API that rebuilds
    the MIME structure (a signature would no longer verify).

    @param name: The dialect's name, for the reply text.
    @param message: The message.
    @raise Refused: C{554 5.6.0} when C{message.raw_only}.
    """
    if message.raw_only:
        raise Refused(
            Reply(
                554,
                "5.6.0",
                f"Signed or encrypted messages cannot be relayed through the {name} API",
            )
        )


def envelope_recipients(
    message: OutboundMessage,
) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    """
    To, Cc and Bcc for an API that delivers to the addresses it is given
    and writes the To and Cc header fields from them.

    The envelope decides who gets the message (RFC 5321 section 3.3), the
    header fields decide who is shown (RFC 5322 section 3.6.3):

      - To: the header To mailboxes that are envelope recipients, as
        written; Cc likewise.  Header recipients outside the envelope are
        left out: they are not recipients of this transaction (a client
        that splits one message over several transactions, or retries some
        recipients, must not make the API deliver to the others again).
      - Bcc: every envelope recipient in neither header field
        (L{OutboundMessage.bcc}).

    An envelope recipient that is in neither header field never appears in
    To or Cc, not even when To would otherwise be empty (C{To:
    undisclosed-recipients:;}): see L{require_to} for APIs that need one.

    @param message: The message.
    @return: C{(to, cc, bcc)}, formatted mailboxes.
    """
    wanted = {address_key(r) for r in message.envelope.rcpt_to}

    def keep(addresses: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(a for a in addresses if address_key(parseaddr(a)[1] or a) in wanted)

    return keep(message.to), keep(message.cc), message.bcc


def require_to(
    name: str, to: tuple[str, ...], cc: tuple[str, ...] = ()
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """
    The To and Cc to send to an API that requires a To address.

    A Cc recipient is shown to every recipient anyway, so when To is empty
    the Cc addresses become the To addresses.  A Bcc recipient is never
    promoted: showing it would disclose it to everyone else (RFC 5322
    section 3.6.3).  So a message none of whose envelope recipients is in
    To or Cc is refused before any request.

    @param name: The dialect's name, for the reply text.
    @param to: The visible To addresses (L{envelope_recipients}).
    @param cc: The visible Cc addresses.
    @return: C{(to, cc)}, C{to} not empty.
    @raise Refused: C{550 5.6.0} when both are empty.
    """
    if not to and not cc:
        raise Refused(
            Reply(550, "5.6.0", f"The {name} API needs a To or Cc address among the recipients")
        )
    return (to, cc) if to else (cc, ())


def header_value(message: OutboundMessage, name: str) -> str | None:
    """
    The value of the last header called C{name} (case-insensitive).

    @param message: The message.
    @param name: The header name.
    @return: Its value, or C{None}.
    """
    wanted = name.lower()
    found = None
    for key, value in message.headers:
        if key.lower() == wanted:
            found = value
    return found


def failure_for_status(status: int, text: str = "") -> Reply:
    """
    Map a non-2xx HTTP status to the SMTP reply given to the client.

    ============  ===================  =============================================
    HTTP status   Reply                Text
    ============  ===================  =============================================
    400, 422      550 5.6.0            upstream text, else "Message rejected by ..."
    401, 403      554 5.7.1            upstream text, else "Upstream refused the ..."
    413           552 5.3.4            "Message too big"
    429           451 4.7.1            "Upstream rate limit reached, try again later"
    anything else 451 4.3.0            "Temporary failure, try again later"
    ============  ===================  =============================================

    Enhanced status codes are from RFC 3463 (X.6.0 other media error, X.7.1
    delivery not authorized, X.3.4 message too big for system, X.7.1 / X.3.0
    for temporary conditions).  Any other status, including 3xx (redirects
    are not followed: they would resend the token elsewhere), 404 and 405,
    is a misconfiguration of this relay or an upstream outage: never bounce
    mail for our own mistake, so the client keeps it and retries.

    @param status: The HTTP status code (not 2xx).
    @param text: The upstream's reason, already cleaned (see L{clean_text}).
    @return: The reply.
    """
    if status in (400, 422):
        return Reply(550, "5.6.0", text or FALLBACK_REJECTED)
    if status in (401, 403):
        return Reply(554, "5.7.1", text or FALLBACK_TOKEN)
    if status == 413:
        return UPSTREAM_TOO_BIG
    if status == 429:
        return UPSTREAM_RATE_LIMITED
    return TEMPORARY_FAILURE


def retry_after_seconds(value: str | None, now: float) -> int | None:
    """
    Read a C{Retry-After} header (RFC 9110 section 10.2.3): a number of
    seconds, or an HTTP date (RFC 9110 section 5.6.7).

    @param value: The header's value, or C{None}.
    @param now: The current time, seconds since the epoch (for a date).
    @return: The wait in whole seconds, rounded up, from 0 to
        L{MAX_RETRY_AFTER}; C{None} when there is no usable value.
    """
    if value is None:
        return None
    text = value.strip()
    if text.isdigit():
        return min(int(text), MAX_RETRY_AFTER)
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # an HTTP date is always GMT
        return None
    wait = math.ceil(when.timestamp() - now)
    return min(max(wait, 0), MAX_RETRY_AFTER)


def _texts(value: object) -> Iterable[str]:
    """
    Yield the human-readable strings of an error value: a string, a list of
    them, or an object of field name to message(s).
    """
    if isinstance(value, str):
        yield value
    elif isinstance(value, list):
        for item in value:
            yield from _texts(item)
    elif isinstance(value, Mapping):
        for key in ("message", "Message", "detail", "error"):
            if isinstance(value.get(key), str):
                yield value[key]
                return
        for key, item in value.items():
            messages = ", ".join(_texts(item))
            if messages:
                yield f"{key}: {messages}"


_FIELD_NAME = re.compile(rb"([!-9;-~]+)[ \t]*:")


def strip_raw_headers(raw: bytes, names: Iterable[str]) -> bytes:
    """
    Remove header fields from the top-level header section of a raw message
    (RFC 5322 section 2.2), continuation lines included; the rest of the
    message is returned byte for byte.

    @param raw: The message as received (CRLF or LF line ends).
    @param names: Field names to remove, any case; a name ending in C{*} is a
        prefix.
    @return: The message without those fields.
    """
    exact: set[bytes] = set()
    prefixes: list[bytes] = []
    for name in names:
        lowered = name.strip().lower().encode("ascii", "replace")
        if lowered.endswith(b"*"):
            prefixes.append(lowered[:-1])
        elif lowered:
            exact.add(lowered)
    starts = tuple(prefixes)
    out: list[bytes] = []
    dropping = False
    position = 0
    while position < len(raw):
        end = raw.find(b"\n", position)
        end = len(raw) if end < 0 else end + 1
        line = raw[position:end]
        if line in (b"\r\n", b"\n"):
            if position == sum(map(len, out)):
                return raw  # nothing dropped: no copy
            # One copy of the rest (a view of it joins without another).
            return b"".join([*out, memoryview(raw)[position:]])
        if line[:1] in (b" ", b"\t"):
            if not dropping:
                out.append(line)
        else:
            match = _FIELD_NAME.match(line)
            key = match.group(1).lower() if match else b""
            dropping = bool(key) and (key in exact or key.startswith(starts))
            if not dropping:
                out.append(line)
        position = end
    return b"".join(out)


@implementer(IDialect)
class JSONDialect:
    """
    The behaviour every dialect shares.  Subclasses set the class attributes
    and implement L{payload}; they override L{message_id}, L{error_text} or
    L{failure} only where their upstream differs.

    The upstream client (L{relayd.upstream.UpstreamClient}) calls
    L{request} to build the whole request and L{answer} to read the answer;
    by default they wrap L{body} and L{result}.

    @cvar id_keys: Answer keys the message id is read from, first match wins.
    @cvar error_keys: Answer keys the error text is read from, first match
        wins.
    @cvar idempotency_header: The request header the upstream's API reads
        an idempotency key from (C{"Idempotency-Key"},
        draft-ietf-httpapi-idempotency-key-header), or C{None} when its
        API documents none: then no key is sent.
    @cvar key_in_body: The upstream's API reads the idempotency key from
        the body, where L{request_content} puts it.
    """

    name = ""
    idempotency_header: str | None = None
    key_in_body = False
    token_header = "Authorization"
    token_format = "Bearer {token}"
    path = "/send"
    id_keys: tuple[str, ...] = ("id", "message_id", "MessageID")
    error_keys: tuple[str, ...] = (
        "error",
        "errors",
        "message",
        "Message",
        "detail",
    )

    def payload(self, message: OutboundMessage) -> dict[str, Any]:
        """
        Build the request document for C{message}.

        @param message: The message to relay.
        @return: JSON-compatible data, with L{Base64} for binary values.
        @raise relayd.reply.Refused: When this upstream cannot
            carry the message.
        """
        raise NotImplementedError

    def body(self, message: OutboundMessage) -> bytes:
        """
        See L{IDialect.body}.
        """
        return encode_json(self.payload(message))

    def chunked_body(self, message: OutboundMessage) -> Body:
        """
        The same body as L{body}, as a L{Body}: its base64 values are
        encoded as it is written, so a large message is not held twice.

        @param message: The message to relay.
        @return: The body.
        @raise relayd.reply.Refused: When this upstream cannot carry the
            message.
        """
        return self.encode_document(self.payload(message), message)

    def encode_document(self, document: object, message: OutboundMessage) -> Body:
        """
        Encode a request document for C{message} as a L{Body} (long text
        values apart when the message is large, see L{encode_body}).

        @param document: JSON-compatible data, with L{Base64} values.
        @param message: The message it was built from.
        @return: The body.
        """
        return encode_body(document, long_text=len(message.raw) >= LONG_TEXT)

    def request(
        self,
        message: OutboundMessage,
        token: str,
        url: str,
        now: float,
        idempotency_key: str | None = None,
    ) -> HTTPRequest:
        """
        The whole request for C{message}: the L{credentials} headers, the
        L{request_content} and the L{idempotency_header} when there is one
        and a key (L{request_key}).

        @param message: The message to relay.
        @param token: The client's API token (the SMTP password).
        @param url: The configured C{upstream.url}.
        @param now: The current time, in seconds since the epoch (from the
            reactor's clock), for signatures.
        @param idempotency_key: The transaction's key
            (L{relayd.idempotency.idempotency_key}), or C{None}.
        @return: The body and the headers the upstream needs beyond the
            upstream client's defaults.
        @raise Refused: When this upstream cannot carry the message, or
            the token is not in the form it needs.
        """
        credentials = self.credentials(token)
        key = self.request_key(message, idempotency_key)
        content, headers = self.request_content(message, key)
        headers.update(credentials)
        if key and self.idempotency_header:
            headers[self.idempotency_header] = key
        carries_key = bool(key) and (self.idempotency_header is not None or self.key_in_body)
        return HTTPRequest(content, headers, carries_key=carries_key)

    def credentials(self, token: str) -> dict[str, str]:
        """
        The headers that carry C{token} when the upstream client's default
        (L{token_header}, L{token_format}) does not do.

        @param token: The client's API token (the SMTP password).
        @return: Header name to value; by default none.
        @raise Refused: When the token is not in the form the upstream
            needs.
        """
        return {}

    def request_key(self, message: OutboundMessage, idempotency_key: str | None) -> str | None:
        """
        The idempotency key a request for C{message} carries.

        @param message: The message to relay.
        @param idempotency_key: The transaction's key, or C{None}.
        @return: The key, or C{None}; by default C{idempotency_key}.
        """
        return idempotency_key

    def request_content(
        self, message: OutboundMessage, key: str | None
    ) -> tuple[bytes | Body, dict[str, str]]:
        """
        The request body for C{message}: L{chunked_body}, or L{body} when
        a subclass (a plugin) overrides it; a dialect with C{key_in_body}
        puts C{key} in it.

        @param message: The message to relay.
        @param key: The idempotency key (L{request_key}), or C{None}.
        @return: The body, and the headers that go with it (C{Content-Type}
            for a body that is not JSON).
        @raise Refused: When this upstream cannot carry the message.
        """
        # A subclass (a plugin) that overrides body() keeps its own body.
        own = type(self).body is not JSONDialect.body
        return (self.body(message) if own else self.chunked_body(message)), {}

    def answer(self, status: int, headers: Mapping[str, str], body: bytes) -> UpstreamResult:
        """
        Read the upstream's answer, headers included.

        @param status: The HTTP status code.
        @param headers: Lower-case header name to its last value.
        @param body: The answer's body (possibly truncated or not JSON).
        @return: L{Accepted} or L{Reply}; never raises.
        """
        return self.result(status, body)

    def result(self, status: int, body: bytes) -> UpstreamResult:
        """
        See L{IDialect.result}.

        A 2xx answer that is only C{{"id": "..."}} (L{id_only}) is read
        without parsing JSON, when the id comes from L{message_id} as
        L{JSONDialect} defines it and C{"id"} is one of L{id_keys}: the same
        result, for less work.
        """
        if 200 <= status < 300 and "id" in self.id_keys:
            if type(self).message_id is JSONDialect.message_id:
                found = id_only(body)
                if found is not None:
                    return Accepted(found)
        answer = parse_answer(body)
        if 200 <= status < 300:
            return Accepted(self.message_id(answer))
        return self.failure(status, answer)

    def message_id(self, answer: object) -> str:
        """
        Read the message id from a 2xx answer.

        @param answer: The parsed answer (see L{parse_answer}).
        @return: The cleaned id (L{clean_id}), or C{""} when the answer has
            none: the upstream took the message, the SMTP layer then just
            says it is queued.
        """
        if isinstance(answer, Mapping):
            for key in self.id_keys:
                found = clean_id(answer.get(key))
                if found:
                    return found
        return ""

    def error_text(self, answer: object) -> str:
        """
        Read the reason from an error answer.

        @param answer: The parsed answer (see L{parse_answer}).
        @return: One cleaned line (L{clean_text}), or C{""}.
        """
        if isinstance(answer, Mapping):
            for key in self.error_keys:
                try:
                    text = clean_text("; ".join(_texts(answer.get(key))))
                except RecursionError:  # absurdly nested error values
                    continue
                if text:
                    return text
        return ""

    def failure(self, status: int, answer: object) -> Reply:
        """
        Map an error answer to the SMTP reply (see L{failure_for_status}).

        @param status: The HTTP status code (not 2xx).
        @param answer: The parsed answer (see L{parse_answer}).
        @return: The reply.
        """
        return failure_for_status(status, self.error_text(answer))
