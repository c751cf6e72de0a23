# -*- test-case-name: tests.dialects.test_ses -*-
"""
The C{ses} dialect: Amazon SES API v2 C{SendEmail} with raw content,
U{https://docs.aws.amazon.com/ses/latest/APIReference-V2/API_SendEmail.html}
(C{POST https://email.<region>.amazonaws.com/v2/email/outbound-emails}),
signed with AWS Signature Version 4
(U{https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_sigv.html});
the C{X-SES-*} headers from
U{https://docs.aws.amazon.com/ses/latest/dg/event-publishing-send-email.html}
and U{https://docs.aws.amazon.com/ses/latest/dg/sending-authorization-delegate-sender-tasks-email.html};
limits from U{https://docs.aws.amazon.com/ses/latest/dg/quotas.html}.

The message goes as written, base64 in C{Content.Raw.Data}; the envelope
goes in C{Destination}.  Only the C{Bcc} field, the mapped C{X-SES-*} fields
and relayd's own consumed control fields are removed from it.

The token is C{ACCESS_KEY_ID:SECRET_ACCESS_KEY} of an IAM user allowed
C{ses:SendEmail}; the region is read from C{upstream.url}
(C{email.<region>.amazonaws.com}, else C{us-east-1}).  Signing uses
botocore's L{SigV4Auth} (AWS's own implementation, maintained with the SDKs;
no network or credential lookup is involved: the credentials are the
token), given the reactor's time instead of the wall clock.  No idempotency
key: SendEmail has none.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from relayd.config import ConfigError
from relayd.dialects.request import (
    FALLBACK_REJECTED,
    FALLBACK_TEMPORARY,
    FALLBACK_TOKEN,
    Base64,
    ControlHeaders,
    HTTPRequest,
    ProviderDialect,
    Refused,
    Reply,
    UpstreamResult,
    check_limits,
    encode_json,
    parse_answer,
    strip_raw_headers,
    token_pair,
    visible_recipients,
)
from relayd.message import OutboundMessage

__all__ = ["SESDialect", "sign"]

#: "The maximum message size, including attachments, is 40 MB" (API v2),
#: in bytes, counted on the raw message.
MAX_BYTES = 40 * 1024 * 1024

#: "The maximum number of recipients per message is 50."
MAX_RECIPIENTS = 50

CONFIGURATION_SET = "x-ses-configuration-set"
MESSAGE_TAGS = "x-ses-message-tags"
FROM_ARN = "x-ses-from-arn"
SOURCE_ARN = "x-ses-source-arn"
RETURN_PATH_ARN = "x-ses-return-path-arn"
CONTROLS = frozenset({CONFIGURATION_SET, MESSAGE_TAGS, FROM_ARN, SOURCE_ARN, RETURN_PATH_ARN})

#: Message tag names and values: "only ASCII letters (a-z, A-Z), numbers
#: (0-9), underscores (_), or dashes (-)", at most 256 characters.
_TAG = re.compile(r"[A-Za-z0-9_-]{1,256}")

_REGION = re.compile(r"email(?:-fips)?\.([a-z0-9-]+)\.amazonaws\.com(?:\.cn)?$")

#: SES error types (C{X-Amzn-ErrorType}, before any C{:}) with their own reply.
ERRORS = {
    "MessageRejected": Reply(550, "5.6.0", FALLBACK_REJECTED),
    "MailFromDomainNotVerifiedException": Reply(550, "5.7.1", "Sender domain not verified"),
    "AccountSuspendedException": Reply(554, "5.7.1", "Sending account suspended"),
    "SendingPausedException": Reply(451, "4.3.0", FALLBACK_TEMPORARY),
    "LimitExceededException": Reply(451, "4.7.1", "Upstream rate limit reached, try again later"),
    "TooManyRequestsException": Reply(451, "4.7.1", "Upstream rate limit reached, try again later"),
}


def region_of(url: str) -> str:
    """
    @param url: The configured C{upstream.url}.
    @return: Its AWS region, or C{"us-east-1"}.
    """
    match = _REGION.search(urlsplit(url).hostname or "")
    return match.group(1) if match else "us-east-1"


def sign(
    url: str, headers: dict[str, str], body: bytes, key_id: str, secret: str, now: float
) -> dict[str, str]:
    """
    Sign a POST with AWS Signature Version 4 for the C{ses} service.

    @param url: The request URL.
    @param headers: The headers to sign (C{Content-Type}).
    @param body: The request body.
    @param key_id: The access key id.
    @param secret: The secret access key.
    @param now: The request time, seconds since the epoch.
    @return: C{headers} plus C{X-Amz-Date} and C{Authorization}.
    """
    from botocore.auth import SigV4Auth  # type: ignore[import-untyped]
    from botocore.awsrequest import AWSRequest  # type: ignore[import-untyped]
    from botocore.credentials import Credentials  # type: ignore[import-untyped]

    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
    request = AWSRequest(method="POST", url=url, data=body, headers=dict(headers))
    request.context["timestamp"] = stamp
    request.headers["X-Amz-Date"] = stamp
    auth = SigV4Auth(Credentials(key_id, secret), "ses", region_of(url))
    # SigV4Auth.add_auth with the given time instead of the wall clock.
    string_to_sign = auth.string_to_sign(request, auth.canonical_request(request))
    signature = auth.signature(string_to_sign, request)
    signed = auth.signed_headers(auth.headers_to_sign(request))
    authorization = (
        f"AWS4-HMAC-SHA256 Credential={auth.scope(request)}, "
        f"SignedHeaders={signed}, Signature={signature}"
    )
    return {**headers, "X-Amz-Date": stamp, "Authorization": authorization}


def _tags(values: list[str], metadata: tuple[tuple[str, str], ...]) -> list[dict[str, str]]:
    """
    C{EmailTags} from C{X-SES-MESSAGE-TAGS} (C{name=value, ...}) and the
    message's metadata.

    @raise Refused: C{550 5.6.0} for a name or value SES does not accept.
    """
    pairs = list(metadata)
    for value in values:
        for item in value.split(","):
            if item.strip():
                name, _, tag = item.partition("=")
                pairs.append((name.strip(), tag.strip()))
    tags: list[dict[str, str]] = []
    seen: set[str] = set()
    for name, value in pairs:
        if not (_TAG.fullmatch(name) and _TAG.fullmatch(value)):
            raise Refused(Reply(550, "5.6.0", "SES message tags allow only A-Z a-z 0-9 _ -"))
        if name not in seen:
            seen.add(name)
            tags.append({"Name": name, "Value": value})
    return tags


class SESDialect(ProviderDialect):
    """
    Amazon SES v2: SigV4 C{Authorization}, C{X-Amz-Date}.

    Fields (see C{docs/upstream-api.md}): C{Destination.ToAddresses},
    C{CcAddresses} (header To and Cc mailboxes that are envelope
    recipients), C{BccAddresses} (the other envelope recipients);
    C{Content.Raw.Data}; C{ConfigurationSetName} (C{X-SES-CONFIGURATION-SET},
    else the message's stream); C{EmailTags} (metadata, then
    C{X-SES-MESSAGE-TAGS}); C{FromEmailAddressIdentityArn}
    (C{X-SES-FROM-ARN}, else C{X-SES-SOURCE-ARN});
    C{FeedbackForwardingEmailAddressIdentityArn} (C{X-SES-RETURN-PATH-ARN}).

    Answers: C{200 {"MessageId": "..."}}; errors C{{"message": "..."}}
    with the error type in C{X-Amzn-ErrorType} (see L{ERRORS}); 403
    (bad signature or key) is C{554 5.7.1}.
    """

    name = "ses"
    token_header = "Authorization"
    token_format = "{token}"
    path = "/v2/email/outbound-emails"
    id_keys = ("MessageId",)
    error_keys = ("message", "Message")

    def __init__(self) -> None:
        """
        @raise ConfigError: When botocore (the C{ses} extra) is missing.
        """
        try:
            import botocore.auth  # type: ignore[import-untyped]  # noqa: F401
        except ImportError:
            raise ConfigError(
                "upstream.dialect: 'ses' needs botocore: pip install 'relayd[ses]'"
            ) from None

    def payload(self, message: OutboundMessage) -> dict[str, Any]:
        """
        See L{JSONDialect.payload}.

        @raise Refused: C{552 5.3.4} / C{452 4.5.3} over the limits; C{550
            5.6.0} for a bad message tag.
        """
        check_limits(self.name, message, max_bytes=MAX_BYTES, max_recipients=MAX_RECIPIENTS)
        controls = ControlHeaders(message, CONTROLS.__contains__)
        to, cc, bcc = visible_recipients(message)
        destination = {"ToAddresses": list(to), "CcAddresses": list(cc), "BccAddresses": list(bcc)}
        raw = strip_raw_headers(message.raw, ["Bcc", *controls.found, *message.mapped])
        document: dict[str, Any] = {
            "Destination": {k: v for k, v in destination.items() if v},
            "Content": {"Raw": {"Data": Base64(raw)}},
        }
        optional = {
            "ConfigurationSetName": controls.first(CONFIGURATION_SET) or message.stream,
            "EmailTags": _tags(controls.all(MESSAGE_TAGS), message.metadata),
            "FromEmailAddressIdentityArn": controls.first(FROM_ARN) or controls.first(SOURCE_ARN),
            "FeedbackForwardingEmailAddressIdentityArn": controls.first(RETURN_PATH_ARN),
        }
        document.update((k, v) for k, v in optional.items() if v)
        return document

    def request(
        self,
        message: OutboundMessage,
        token: str,
        url: str,
        now: float,
        idempotency_key: str | None = None,
    ) -> HTTPRequest:
        """
        See L{JSONDialect.request}: the JSON body, signed (L{sign}).

        @raise Refused: C{554 5.7.1} when the token is not
            C{ACCESS_KEY_ID:SECRET_ACCESS_KEY}.
        """
        key_id, secret = token_pair(token, "The ses token must be ACCESS_KEY_ID:SECRET_ACCESS_KEY")
        body = encode_json(self.payload(message))
        headers = sign(url, {"Content-Type": "application/json"}, body, key_id, secret, now)
        return HTTPRequest(body, headers)

    def answer(self, status: int, headers: Mapping[str, str], body: bytes) -> UpstreamResult:
        """
        See L{JSONDialect.answer}: an error's type is in
        C{X-Amzn-ErrorType} (or the body's C{__type}).
        """
        if 200 <= status < 300:
            return self.result(status, body)
        parsed = parse_answer(body)
        kind = headers.get("x-amzn-errortype", "")
        if not kind and isinstance(parsed, Mapping):
            kind = str(parsed.get("__type") or parsed.get("code") or "")
        kind = kind.split(":", 1)[0].rsplit("#", 1)[-1]
        known = ERRORS.get(kind)
        if known is not None:
            text = self.error_text(parsed)
            return known.with_text(text) if text and known.code >= 500 else known
        if status in (401, 403):
            return Reply(554, "5.7.1", self.error_text(parsed) or FALLBACK_TOKEN)
        return self.failure(status, parsed)
