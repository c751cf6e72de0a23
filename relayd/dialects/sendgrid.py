# -*- test-case-name: tests.dialects.test_sendgrid -*-
"""
The C{sendgrid} dialect: Twilio SendGrid's v3 Mail Send endpoint,
U{https://www.twilio.com/docs/sendgrid/api-reference/mail-send/mail-send}
(C{POST https://api.sendgrid.com/v3/mail/send}, C{Authorization: Bearer
<key>}); errors from
U{https://www.twilio.com/docs/sendgrid/api-reference/mail-send/errors};
the C{X-SMTPAPI} header of SendGrid's SMTP service from
U{https://www.twilio.com/docs/sendgrid/for-developers/sending-email/building-an-x-smtpapi-header}.

SendGrid builds the MIME message itself from the fields below.  No
idempotency key: SendGrid documents none for Mail Send.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from relayd.dialects.request import (
    Base64,
    ControlHeaders,
    ProviderDialect,
    UpstreamResult,
    clean_id,
    header_object,
    json_header,
    mailbox,
    visible_envelope,
)
from relayd.message import Attachment, OutboundMessage
from relayd.result import Accepted

__all__ = ["SendGridDialect"]

#: "The total size of your email, including attachments, must be less than
#: 30MB" (Mail Send reference), in bytes.
MAX_BYTES = 30 * 1000 * 1000

#: "There is a limit of 1000 total recipients (to + cc + bcc) per request."
MAX_RECIPIENTS = 1000

#: At most 10 categories per message, each at most 255 characters.
MAX_CATEGORIES = 10
MAX_CATEGORY_LENGTH = 255

#: The SMTP service's control header (a JSON object).
SMTPAPI = "x-smtpapi"


def _address(formatted: str) -> dict[str, str]:
    name, email = mailbox(formatted)
    return {"email": email, "name": name} if name else {"email": email}


def _attachment(attachment: Attachment) -> dict[str, Any]:
    document: dict[str, Any] = {
        "content": Base64.of(attachment),
        "type": attachment.content_type,
        "filename": attachment.filename,
        "disposition": "inline" if attachment.inline else "attachment",
    }
    if attachment.content_id:
        document["content_id"] = attachment.content_id
    return document


def _strings(value: object) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [v for v in value if isinstance(v, str)]
    return []


def _filter_enabled(filters: object, name: str) -> bool | None:
    """
    C{filters.<name>.settings.enable} of an X-SMTPAPI header (0/1, or a
    string of them), or C{None}.
    """
    if not isinstance(filters, Mapping):
        return None
    settings = (
        filters.get(name, {}).get("settings", {}) if isinstance(filters.get(name), Mapping) else {}
    )
    enable = settings.get("enable") if isinstance(settings, Mapping) else None
    if enable in (0, 1, "0", "1", True, False):
        return str(int(enable)) == "1"
    return None


class SendGridDialect(ProviderDialect):
    """
    SendGrid: C{Authorization: Bearer <key>}.

    Field mapping (see C{docs/upstream-api.md}): one C{personalizations}
    entry with C{to}, C{cc} (header To and Cc mailboxes that are envelope
    recipients) and C{bcc} (the other envelope recipients); C{from};
    C{reply_to_list}; C{subject}; C{content} (C{text/plain} then
    C{text/html}); C{attachments}; C{categories} (the message's tags, then
    X-SMTPAPI C{category}); C{custom_args} (metadata, then X-SMTPAPI
    C{unique_args}); C{send_at}, C{asm.group_id}, C{ip_pool_name} and
    C{tracking_settings} from X-SMTPAPI; C{headers} (kept headers without
    X-SMTPAPI, plus C{List-Unsubscribe}).  The X-SMTPAPI C{to} list is
    ignored: the envelope decides the recipients.

    Answers: C{202} with an empty body and the id in C{X-Message-Id};
    errors C{{"errors": [{"message", "field", "help"}]}} with 400, 401,
    403, 413, 429 or 5xx (the common mapping).
    """

    name = "sendgrid"
    token_header = "Authorization"
    token_format = "Bearer {token}"
    path = "/v3/mail/send"

    def payload(self, message: OutboundMessage) -> dict[str, Any]:
        """
        See L{JSONDialect.payload}.

        @raise Refused: C{554 5.6.0} for a C{raw_only} message; C{550
            5.6.0} when no recipient is in To or Cc, or for a bad X-SMTPAPI
            header; C{552 5.3.4} / C{452 4.5.3} over the limits.
        """
        # SendGrid requires "to"; a Cc recipient is visible anyway.
        to, cc, bcc = visible_envelope(
            self.name, message, max_bytes=MAX_BYTES, max_recipients=MAX_RECIPIENTS
        )
        controls = ControlHeaders(message, lambda key: key == SMTPAPI)
        smtpapi = json_header(controls.first(SMTPAPI), "X-SMTPAPI")

        personalization: dict[str, Any] = {"to": [_address(a) for a in to]}
        if cc:
            personalization["cc"] = [_address(a) for a in cc]
        if bcc:
            personalization["bcc"] = [_address(a) for a in bcc]
        content = []
        if message.text is not None or message.html is None:
            content.append({"type": "text/plain", "value": message.text or " "})
        if message.html is not None:
            content.append({"type": "text/html", "value": message.html})
        document: dict[str, Any] = {
            "personalizations": [personalization],
            "from": _address(message.from_),
            "subject": message.subject,
            "content": content,
        }
        categories: list[str] = []
        for category in list(message.tags) + _strings(smtpapi.get("category")):
            category = category[:MAX_CATEGORY_LENGTH]
            if category and category not in categories and len(categories) < MAX_CATEGORIES:
                categories.append(category)
        custom_args = dict(message.metadata)
        unique_args = smtpapi.get("unique_args")
        if isinstance(unique_args, Mapping):
            custom_args.update((str(k), str(v)) for k, v in unique_args.items())
        optional: dict[str, Any] = {
            "reply_to_list": [_address(a) for a in message.reply_to],
            "attachments": [_attachment(a) for a in message.attachments],
            "categories": categories,
            "custom_args": custom_args,
            "headers": header_object(controls.rest, message.list_unsubscribe),
            "ip_pool_name": smtpapi.get("ip_pool")
            if isinstance(smtpapi.get("ip_pool"), str)
            else None,
        }
        document.update((k, v) for k, v in optional.items() if v)
        if isinstance(smtpapi.get("send_at"), int):
            document["send_at"] = smtpapi["send_at"]
        if isinstance(smtpapi.get("asm_group_id"), int):
            document["asm"] = {"group_id": smtpapi["asm_group_id"]}
        tracking: dict[str, Any] = {}
        clicks = _filter_enabled(smtpapi.get("filters"), "clicktrack")
        opens = _filter_enabled(smtpapi.get("filters"), "opentrack")
        if message.track is not None:
            clicks = opens = message.track
        if clicks is not None:
            tracking["click_tracking"] = {"enable": clicks}
        if opens is not None:
            tracking["open_tracking"] = {"enable": opens}
        if tracking:
            document["tracking_settings"] = tracking
        return document

    def answer(self, status: int, headers: Mapping[str, str], body: bytes) -> UpstreamResult:
        """
        See L{JSONDialect.answer}: the id of a 2xx answer is its
        C{X-Message-Id} header.
        """
        if 200 <= status < 300:
            return Accepted(clean_id(headers.get("x-message-id")))
        return self.result(status, body)
