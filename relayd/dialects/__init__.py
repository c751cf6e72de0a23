# -*- test-case-name: tests.test_dialects -*-
"""
Upstream API dialects: how one L{OutboundMessage} becomes one JSON request
body, and how the upstream's HTTP answer becomes an L{UpstreamResult}.

One module per request format:

  - L{relayd.dialects.native}: relayd's own schema (C{docs/upstream-api.md}).
  - L{relayd.dialects.raw}: the raw MIME message, base64 encoded.
  - L{relayd.dialects.mailpace}: U{https://docs.mailpace.com/reference/send}.
  - L{relayd.dialects.postmark}:
    U{https://postmarkapp.com/developer/api/email-api}.

The behaviour every dialect shares lives here, in L{JSONDialect}: JSON
encoding, reading the answer, and the mapping from the HTTP status of the
answer to an SMTP reply (L{failure_for_status}).  A dialect overrides only
what its upstream does differently.

The status line is the upstream's verdict; the answer's body only supplies
the message id or the reason text.  A 2xx answer therefore always becomes
L{Accepted}, even when its body cannot be read (the message id is then
C{""}): telling the SMTP client to retry a message the upstream already took
would send it twice.

No reactor code here: dialects are pure functions of their input.
"""

from __future__ import annotations

import json
import secrets
import unicodedata
from base64 import b64encode
from collections.abc import Iterable, Mapping
from email.utils import parseaddr
from typing import Any

from zope.interface import Attribute, Interface, implementer

from relayd.config import ConfigError
from relayd.message import Attachment, OutboundMessage, address_key
from relayd.reply import Refused, Reply
from relayd.upstream import Accepted, UpstreamResult

__all__ = [
    "DIALECTS",
    "FALLBACK_REJECTED",
    "FALLBACK_TEMPORARY",
    "FALLBACK_TOKEN",
    "IDialect",
    "JSONDialect",
    "Base64",
    "clean_id",
    "clean_text",
    "encode_json",
    "failure_for_status",
    "get_dialect",
    "header_value",
    "parse_answer",
    "refuse_raw_only",
    "envelope_recipients",
    "require_to",
]

#: Longest reason text taken from an upstream answer, in characters.
MAX_TEXT = 200

#: Longest message id taken from an upstream answer, in characters.
MAX_ID = 100

FALLBACK_REJECTED = "Message rejected by upstream"
FALLBACK_TOKEN = "Upstream refused the API token"
FALLBACK_TOO_BIG = "Message too big"
FALLBACK_RATE = "Upstream rate limit reached, try again later"
FALLBACK_TEMPORARY = "Temporary failure, try again later"

#: The dialect names L{get_dialect} knows, in the order the docs list them.
DIALECTS = (
    "native",
    "raw",
    "mailpace",
    "postmark",
    "sendgrid",
    "mailgun",
    "ses",
    "resend",
    "brevo",
    "sparkpost",
    "mailjet",
)


class IDialect(Interface):
    """
    One upstream API's request format and answer format.
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
        @raise relayd.message.Refused: When this upstream cannot
            carry the message (for example a signed message through an API
            that rebuilds the MIME structure).
        """

    def result(status: int, body: bytes) -> UpstreamResult:
        """
        Read the upstream's answer.

        @param status: The HTTP status code of the answer.
        @param body: The answer's body (possibly truncated, possibly not
            JSON at all).
        @return: L{Accepted} or L{Reply}; never raises.
        """


class Base64:
    """
    Bytes that go into a JSON document as a base64 string (RFC 4648
    section 4, no line breaks): attachment contents, raw messages.

    L{encode_json} splices the encoded bytes into the finished document
    instead of passing them through the JSON encoder: base64 never needs
    JSON escaping, and this saves a scan and two copies of what is most of
    the body (a 25 MB message would otherwise hold the reactor for tens of
    milliseconds).
    """

    __slots__ = ("data", "encoded")

    def __init__(self, data: bytes, encoded: bool = False) -> None:
        """
        @param data: The bytes to encode.
        @param encoded: C{data} is already base64 (no line breaks).
        """
        self.data = data
        self.encoded = encoded

    @classmethod
    def of(cls, attachment: Attachment) -> Base64:
        """
        The content of C{attachment}, without decoding a part that arrived
        as clean base64 (L{Attachment.encoded}).
        """
        if attachment.encoded is not None:
            return cls(attachment.encoded, encoded=True)
        return cls(attachment.content)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Base64) and other.text() == self.text()

    def text(self) -> bytes:
        """
        @return: The base64 text.
        """
        return self.data if self.encoded else b64encode(self.data)

    def __hash__(self) -> int:
        return hash(self.data)

    def __repr__(self) -> str:
        return f"Base64({len(self.data)} bytes)"


def encode_json(document: object) -> bytes:
    """
    Encode C{document} as compact UTF-8 JSON (RFC 8259).

    Non-ASCII text is written as UTF-8, not as C{\\u} escapes, which keeps
    bodies smaller.  Text that cannot be UTF-8 (lone surrogates left by a
    lenient decoder) falls back to ASCII-only JSON with escapes, which is
    still valid JSON.  L{Base64} values become base64 strings.

    @param document: JSON-compatible data, plus L{Base64} values.
    @return: The encoded document.
    """
    blobs: list[bytes] = []
    # A fresh random marker per document: no text in the message can
    # guess it, so it cannot be mistaken for a placeholder.
    marker = secrets.token_hex(12)

    def placeholder(value: object) -> str:
        if not isinstance(value, Base64):
            raise TypeError(f"{type(value).__name__} is not JSON serializable")
        blobs.append(value.text())
        return f"{marker}{len(blobs) - 1:08d}"

    try:
        data = json.dumps(
            document, ensure_ascii=False, separators=(",", ":"), default=placeholder
        ).encode("utf-8")
    except UnicodeEncodeError:
        blobs.clear()
        data = json.dumps(document, separators=(",", ":"), default=placeholder).encode("ascii")
    if not blobs:
        return data
    pieces = data.split(b'"' + marker.encode("ascii"))
    out = [pieces[0]]
    for piece in pieces[1:]:
        out += (b'"', blobs[int(piece[:8])], piece[8:])
    return b"".join(out)


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
    return "".join(c for c in str(value) if "!" <= c <= "~")[:limit]


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
    rather than to an envelope: header recipients that are not envelope
    recipients of this transaction are left out (a client that splits one
    message over several transactions, or retries some recipients, must
    not make the API deliver to the others again), and envelope recipients
    in neither header are Bcc (RFC 5321 section 3.3: the envelope decides
    who gets the message).

    When no To address is an envelope recipient, the envelope recipients
    from Cc (else from Bcc) become the To addresses, so that an API that
    requires To still gets the message.

    @param message: The message.
    @return: C{(to, cc, bcc)}, formatted mailboxes.
    """
    wanted = {address_key(r) for r in message.envelope.rcpt_to}

    def keep(addresses: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(a for a in addresses if address_key(parseaddr(a)[1] or a) in wanted)

    to, cc, bcc = keep(message.to), keep(message.cc), message.bcc
    if not to:
        if cc:
            to, cc = cc, ()
        else:
            to, bcc = bcc, ()
    return to, cc, bcc


def require_to(name: str, to: tuple[str, ...]) -> None:
    """
    Refuse a message without a To address before sending it to an API that
    requires one: the answer would be a rejection anyway, less clear.

    @param name: The dialect's name, for the reply text.
    @param to: The To addresses to send (from L{envelope_recipients}).
    @raise Refused: C{550 5.6.0} when C{to} is empty.
    """
    if not to:
        raise Refused(Reply(550, "5.6.0", f"The {name} API needs at least one To address"))


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
        return Reply(552, "5.3.4", FALLBACK_TOO_BIG)
    if status == 429:
        return Reply(451, "4.7.1", FALLBACK_RATE)
    return Reply(451, "4.3.0", FALLBACK_TEMPORARY)


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


@implementer(IDialect)
class JSONDialect:
    """
    The behaviour every dialect shares.  Subclasses set the class attributes
    and implement L{payload}; they override L{message_id}, L{error_text} or
    L{failure} only where their upstream differs.

    @cvar id_keys: Answer keys the message id is read from, first match wins.
    @cvar error_keys: Answer keys the error text is read from, first match
        wins.
    """

    name = ""
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
        @raise relayd.message.Refused: When this upstream cannot
            carry the message.
        """
        raise NotImplementedError

    def body(self, message: OutboundMessage) -> bytes:
        """
        See L{IDialect.body}.
        """
        return encode_json(self.payload(message))

    def result(self, status: int, body: bytes) -> UpstreamResult:
        """
        See L{IDialect.result}.
        """
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


def get_dialect(name: str) -> IDialect:
    """
    Look up a dialect by its C{upstream.dialect} name.

    @param name: One of L{DIALECTS}.
    @return: A new dialect object.
    @raise ConfigError: For any other name.
    """
    from relayd.dialects import (
        brevo,
        mailgun,
        mailjet,
        mailpace,
        native,
        postmark,
        raw,
        resend,
        sendgrid,
        ses,
        sparkpost,
    )

    classes: dict[str, type[JSONDialect]] = {
        "native": native.NativeDialect,
        "raw": raw.RawDialect,
        "mailpace": mailpace.MailPaceDialect,
        "postmark": postmark.PostmarkDialect,
        "sendgrid": sendgrid.SendGridDialect,
        "mailgun": mailgun.MailgunDialect,
        "ses": ses.SESDialect,
        "resend": resend.ResendDialect,
        "brevo": brevo.BrevoDialect,
        "sparkpost": sparkpost.SparkPostDialect,
        "mailjet": mailjet.MailjetDialect,
    }
    try:
        return classes[name]()
    except KeyError:
        raise ConfigError(
            f"upstream.dialect: unknown dialect {name!r}; expected one of "
            + ", ".join(repr(n) for n in DIALECTS)
        ) from None
