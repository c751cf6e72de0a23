# -*- test-case-name: tests.dialects -*-
"""
What the provider dialects need beyond "a JSON body and a token header": the
whole HTTP request (body, content type, authentication, idempotency key) and
the answer's headers.

The provider dialects (C{sendgrid}, C{mailgun}, C{ses}, C{resend},
C{brevo}, C{sparkpost}, C{mailjet}) subclass L{ProviderDialect} and use the
two override points of L{JSONDialect}, which the upstream client
(L{relayd.upstream.UpstreamClient.prepare} and C{post_prepared}) calls:

  - L{JSONDialect.request}: C{(message, token, url, now, idempotency_key)}
    to an L{HTTPRequest} whose C{headers} replace the upstream client's
    defaults of the same name (C{Content-Type}, C{Authorization}) or add to
    them (C{Idempotency-Key}, C{X-Amz-Date}).  Needed for multipart bodies
    (Mailgun), HTTP Basic authentication (Mailgun, Mailjet), AWS SigV4
    request signing (SES, which signs the URL, the time and the body) and
    idempotency keys (Resend's header, Brevo's body field).
  - L{JSONDialect.answer}: C{(status, headers, body)}, for providers that
    put the message id in a response header (SendGrid's C{X-Message-Id}) or
    the error type (SES's C{X-Amzn-ErrorType}).

L{ProviderDialect.body} and L{ProviderDialect.result} keep the
L{relayd.dialects.IDialect} contract (see C{docs/upstream-api.md},
"Provider dialects").

The rest are the helpers those dialects share: the Bcc-safe recipient split
(L{visible_recipients}), reading and consuming provider control headers
(L{ControlHeaders}), removing header fields from a raw message
(L{strip_raw_headers}), the documented limits (L{check_limits}), HTTP Basic
credentials (L{basic_authorization}).  The idempotency key is the
transaction's (L{relayd.idempotency.idempotency_key}), given to
L{JSONDialect.request}.

No reactor code here: the time comes in as C{now}.
"""

from __future__ import annotations

import json
from base64 import b64encode
from collections.abc import Iterable
from email.utils import parseaddr
from typing import Any

# The shared dialect helpers, imported in this one place for every provider
# dialect (they re-import them from here).
from relayd.dialects.base import (
    Base64,
    Body,
    HTTPRequest,
    JSONDialect,
    clean_id,
    clean_text,
    encode_json,
    envelope_recipients,
    failure_for_status,
    parse_answer,
    refuse_raw_only,
    require_to,
    strip_raw_headers,
)
from relayd.message import OutboundMessage
from relayd.reply import FALLBACK_REJECTED, FALLBACK_TEMPORARY, FALLBACK_TOKEN, Refused, Reply
from relayd.result import Accepted, UpstreamResult

__all__ = [
    "FALLBACK_REJECTED",
    "FALLBACK_TEMPORARY",
    "FALLBACK_TOKEN",
    "Accepted",
    "Base64",
    "Body",
    "ControlHeaders",
    "HTTPRequest",
    "JSONDialect",
    "ProviderDialect",
    "Refused",
    "Reply",
    "UpstreamResult",
    "basic_authorization",
    "check_limits",
    "clean_id",
    "clean_text",
    "encode_json",
    "failure_for_status",
    "mailbox",
    "parse_answer",
    "header_object",
    "json_header",
    "refuse_raw_only",
    "require_to",
    "require_visible",
    "strip_raw_headers",
    "token_pair",
    "visible_envelope",
    "visible_recipients",
]

#: The replies of the documented limits, checked before sending.
TOO_BIG = "Message exceeds the {name} API limit of {limit} bytes"
TOO_MANY = "Too many recipients for the {name} API (at most {limit})"


def mailbox(formatted: str) -> tuple[str, str]:
    """
    Split a formatted mailbox.

    @param formatted: C{"Name <a@example.com>"} or C{"a@example.com"}.
    @return: C{(name, address)}; C{name} may be C{""}.
    """
    name, address = parseaddr(formatted)
    return name, address or formatted


#: To, Cc and Bcc for an API that delivers to the addresses it is given: see
#: L{relayd.dialects.base.envelope_recipients}.
visible_recipients = envelope_recipients


def require_visible(name: str, to: tuple[str, ...], cc: tuple[str, ...]) -> None:
    """
    Refuse a message none of whose envelope recipients is in To or Cc, before
    sending it to an API that requires a To address: sending a Bcc recipient
    as To would show that address to every recipient.

    @param name: The dialect's name, for the reply text.
    @param to: The visible To addresses (L{visible_recipients}).
    @param cc: The visible Cc addresses.
    @raise Refused: C{550 5.6.0} when both are empty.
    """
    if not to and not cc:
        raise Refused(
            Reply(
                550,
                "5.6.0",
                f"The {name} API needs a To or Cc address among the recipients",
            )
        )


def visible_envelope(
    name: str,
    message: OutboundMessage,
    *,
    max_bytes: int | None = None,
    max_recipients: int | None = None,
) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    """
    The recipients for an API that builds the MIME message itself from
    fields and requires a To address: refuse what it cannot carry
    (L{refuse_raw_only}, L{check_limits}, L{require_visible}), then split the
    envelope recipients (L{visible_recipients}), the Cc addresses moved to
    To when there is no To (a Cc recipient is visible anyway).

    @param name: The dialect's name, for the reply text.
    @param message: The message.
    @param max_bytes: The provider's size limit in bytes, or C{None}.
    @param max_recipients: The provider's limit on recipients per message,
        or C{None}.
    @return: C{(to, cc, bcc)}; C{to} is not empty.
    @raise Refused: C{554 5.6.0} for a C{raw_only} message; C{550 5.6.0}
        when no recipient is in To or Cc; C{552 5.3.4} / C{452 4.5.3} over
        the limits.
    """
    refuse_raw_only(name, message)
    check_limits(name, message, max_bytes=max_bytes, max_recipients=max_recipients)
    to, cc, bcc = visible_recipients(message)
    require_visible(name, to, cc)
    if not to:
        to, cc = cc, ()
    return to, cc, bcc


def json_header(value: str | None, field: str) -> dict[str, Any]:
    """
    Parse a control header whose value is a JSON object (C{X-SMTPAPI},
    C{X-MSYS-API}, C{X-Mailgun-Variables}).

    @param value: The header's value, or C{None} when it is absent.
    @param field: The header's name as written in the reply text.
    @return: The object; C{{}} when C{value} is C{None}.
    @raise Refused: C{550 5.6.0} when the value is not a JSON object.
    """
    if value is None:
        return {}
    try:
        document = json.loads(value)
    except ValueError:
        document = None
    if not isinstance(document, dict):
        raise Refused(Reply(550, "5.6.0", f"{field} header is not a JSON object"))
    return document


def token_pair(token: str, text: str) -> tuple[str, str]:
    """
    Split a token made of two halves, C{<id>:<secret>} (Mailjet's API and
    secret keys, SES's access key id and secret access key).

    @param token: The client's token (the SMTP password).
    @param text: The reply text when the token is not two halves.
    @return: C{(id, secret)}, neither empty.
    @raise Refused: C{554 5.7.1} with C{text} when a half is missing.
    """
    first, _, secret = token.partition(":")
    if not first or not secret:
        raise Refused(Reply(554, "5.7.1", text))
    return first, secret


def check_limits(
    name: str,
    message: OutboundMessage,
    *,
    max_bytes: int | None = None,
    size: int | None = None,
    max_recipients: int | None = None,
) -> None:
    """
    Refuse a message over a provider's documented limits before sending it.

    @param name: The dialect's name, for the reply text.
    @param message: The message.
    @param max_bytes: The provider's size limit in bytes, or C{None}.
    @param size: The size the provider counts, in bytes; by default the
        raw message's (C{len(message.raw)}).
    @param max_recipients: The provider's limit on recipients per message
        (To, Cc and Bcc together), or C{None}.
    @raise Refused: C{552 5.3.4} for too big a message (RFC 3463: message
        too big for system); C{452 4.5.3} for too many recipients (RFC 5321
        section 4.5.3.1.10: the client sends the rest in another
        transaction).
    """
    if max_bytes is not None:
        counted = len(message.raw) if size is None else size
        if counted > max_bytes:
            raise Refused(Reply(552, "5.3.4", TOO_BIG.format(name=name, limit=max_bytes)))
    if max_recipients is not None and len(message.envelope.rcpt_to) > max_recipients:
        raise Refused(Reply(452, "4.5.3", TOO_MANY.format(name=name, limit=max_recipients)))


def basic_authorization(user: str, password: str) -> str:
    """
    An HTTP Basic C{Authorization} value (RFC 7617 section 2).

    @param user: The user id (no C{:}).
    @param password: The password.
    @return: C{"Basic <base64(user:password)>"}.
    """
    return "Basic " + b64encode(f"{user}:{password}".encode()).decode("ascii")


class ControlHeaders:
    """
    The header fields a provider's own SMTP service reads as instructions
    (C{X-SMTPAPI}, C{X-Mailgun-*}, C{X-SES-*}...), found among the kept
    headers of a message.  A dialect maps them to API fields and sends the
    other headers (L{rest}).

    @ivar found: Lower-case name to its values, in message order.
    @ivar rest: The other kept headers, as C{(name, value)}.
    """

    def __init__(self, message: OutboundMessage, is_control: Any) -> None:
        """
        @param message: The message.
        @param is_control: Called with a lower-case header name; true for a
            control header of this provider.
        """
        self.found: dict[str, list[str]] = {}
        rest: list[tuple[str, str]] = []
        for name, value in message.headers:
            key = name.lower()
            if is_control(key):
                self.found.setdefault(key, []).append(value.strip())
            else:
                rest.append((name, value))
        self.rest = tuple(rest)

    def first(self, name: str) -> str | None:
        """
        @param name: A header name, any case.
        @return: Its first non-empty value, or C{None}.
        """
        for value in self.found.get(name.lower(), []):
            if value:
                return value
        return None

    def all(self, name: str) -> list[str]:
        """
        @param name: A header name, any case.
        @return: Its non-empty values, in message order.
        """
        return [v for v in self.found.get(name.lower(), []) if v]


def header_object(
    headers: Iterable[tuple[str, str]], list_unsubscribe: str | None = None
) -> dict[str, str]:
    """
    Headers for an API that takes them as one JSON object (name to value).

    @param headers: C{(name, value)} pairs in message order.
    @param list_unsubscribe: L{OutboundMessage.list_unsubscribe}, added as
        C{List-Unsubscribe} (RFC 2369 section 3.2) unless a kept header has
        that name already.
    @return: Name to value; of fields with the same name (any case), the
        first, since an object cannot hold repeats.
    """
    document: dict[str, str] = {}
    seen: set[str] = set()
    for name, value in headers:
        if name.lower() not in seen:
            seen.add(name.lower())
            document[name] = value
    if list_unsubscribe and "list-unsubscribe" not in seen:
        document["List-Unsubscribe"] = list_unsubscribe
    return document


class ProviderDialect(JSONDialect):
    """
    A provider dialect: L{JSONDialect}, whose L{JSONDialect.request} and
    L{JSONDialect.answer} hooks subclasses override for what their API
    needs beyond a JSON body and one token header (see the module
    docstring).  Subclasses implement L{payload} (or L{request} for bodies
    that are not JSON).
    """
