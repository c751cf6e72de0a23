# -*- test-case-name: tests.dialects.test_mailjet -*-
"""
The C{mailjet} dialect: Mailjet's Send API v3.1,
U{https://dev.mailjet.com/email/reference/send-emails/#v3_1_post_send}
(C{POST https://api.mailjet.com/v3.1/send}, HTTP Basic
C{<API key>:<secret key>}); answers and limits from
U{https://dev.mailjet.com/email/guides/send-api-v31/}; the C{X-MJ-*} and
C{X-Mailjet-*} headers of Mailjet's SMTP relay from
U{https://dev.mailjet.com/smtp-relay/custom-headers/}.

Mailjet builds the MIME message itself from the fields below.  No
idempotency key: Mailjet documents none (C{DeduplicateCampaign} is a
campaign setting, not a request key).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from relayd.dialects.request import (
    FALLBACK_TOKEN,
    Base64,
    ControlHeaders,
    ProviderDialect,
    Reply,
    basic_authorization,
    clean_id,
    clean_text,
    encode_json,
    failure_for_status,
    header_object,
    mailbox,
    token_pair,
    visible_envelope,
)
from relayd.message import Attachment, OutboundMessage

__all__ = ["MailjetDialect", "FIELDS"]

#: "The total size of the message, including attachments, cannot exceed
#: 15 MB", in bytes.
MAX_BYTES = 15 * 1024 * 1024

#: "up to 50 recipients" (To, Cc and Bcc together) per message.
MAX_RECIPIENTS = 50

#: SMTP relay header (lower case) -> Send API v3.1 message field (strings).
FIELDS = {
    "x-mj-customid": "CustomID",
    "x-mj-eventpayload": "EventPayload",
    "x-mailjet-campaign": "CustomCampaign",
    "x-mj-monitoringcategory": "MonitoringCategory",
}

#: SMTP relay tracking headers: C{0} account default, C{1} disabled,
#: C{2} enabled.
TRACKING = {"x-mailjet-trackopen": "TrackOpens", "x-mailjet-trackclick": "TrackClicks"}
_TRACK_VALUES = {"0": "account_default", "1": "disabled", "2": "enabled"}

DEDUPLICATE = "x-mailjet-deduplicatecampaign"
PRIORITY = "x-mailjet-prio"
CONTROLS = frozenset({*FIELDS, *TRACKING, DEDUPLICATE, PRIORITY})


def _address(formatted: str) -> dict[str, str]:
    name, email = mailbox(formatted)
    return {"Email": email, "Name": name} if name else {"Email": email}


def _attachment(attachment: Attachment) -> dict[str, Any]:
    document: dict[str, Any] = {
        "ContentType": attachment.content_type,
        "Filename": attachment.filename,
        "Base64Content": Base64.of(attachment),
    }
    if attachment.inline and attachment.content_id:
        document["ContentID"] = attachment.content_id
    return document


class MailjetDialect(ProviderDialect):
    """
    Mailjet: C{Authorization: Basic base64("<API key>:<secret key>")}; the
    token is C{<API key>:<secret key>}.

    Fields (see C{docs/upstream-api.md}): C{Messages[0]} with C{From};
    C{To}, C{Cc} (header To and Cc mailboxes that are envelope recipients),
    C{Bcc} (the other envelope recipients), as C{[{Email, Name}]};
    C{ReplyTo} (the first Reply-To); C{Subject}; C{TextPart}; C{HTMLPart};
    C{Attachments} and C{InlinedAttachments}; C{Headers}; C{CustomID},
    C{EventPayload}, C{CustomCampaign}, C{MonitoringCategory},
    C{TrackOpens}, C{TrackClicks}, C{DeduplicateCampaign}, C{Priority}
    from the SMTP relay headers (L{FIELDS}); C{EventPayload} is otherwise
    the metadata as JSON, C{CustomCampaign} the first tag, C{TrackOpens}
    and C{TrackClicks} the tracking flag.

    Answers: C{200 {"Messages": [{"Status": "success", "To": [{"Email",
    "MessageUUID", "MessageID", "MessageHref"}]}]}}; errors C{{"Messages":
    [{"Status": "error", "Errors": [{"ErrorCode", "StatusCode",
    "ErrorMessage"}]}]}} (400) or C{{"StatusCode": 401, "ErrorMessage"}}.
    """

    name = "mailjet"
    token_header = "Authorization"
    token_format = "Basic {token}"
    path = "/v3.1/send"

    def payload(self, message: OutboundMessage) -> dict[str, Any]:
        """
        See L{JSONDialect.payload}.

        @raise Refused: C{554 5.6.0} for a C{raw_only} message; C{550
            5.6.0} when no recipient is in To or Cc; C{552 5.3.4} / C{452
            4.5.3} over the limits.
        """
        to, cc, bcc = visible_envelope(
            self.name, message, max_bytes=MAX_BYTES, max_recipients=MAX_RECIPIENTS
        )
        controls = ControlHeaders(message, CONTROLS.__contains__)
        document: dict[str, Any] = {
            "From": _address(message.from_),
            "To": [_address(a) for a in to],
            "Subject": message.subject,
        }
        if message.text is not None or message.html is None:
            document["TextPart"] = message.text or ""
        inline = [a for a in message.attachments if a.inline and a.content_id]
        optional: dict[str, Any] = {
            "Cc": [_address(a) for a in cc],
            "Bcc": [_address(a) for a in bcc],
            "ReplyTo": _address(message.reply_to[0]) if message.reply_to else None,
            "HTMLPart": message.html,
            "Attachments": [_attachment(a) for a in message.attachments if a not in inline],
            "InlinedAttachments": [_attachment(a) for a in inline],
            "Headers": header_object(controls.rest, message.list_unsubscribe),
            "CustomCampaign": message.tags[0] if message.tags else None,
            "EventPayload": encode_json(dict(message.metadata)).decode("utf-8")
            if message.metadata
            else None,
        }
        if message.track is not None:
            optional["TrackOpens"] = optional["TrackClicks"] = (
                "enabled" if message.track else "disabled"
            )
        for header, key in FIELDS.items():
            optional[key] = controls.first(header) or optional.get(key)
        for header, key in TRACKING.items():
            value = _TRACK_VALUES.get(controls.first(header) or "")
            optional[key] = value or optional.get(key)
        if (controls.first(DEDUPLICATE) or "").lower() in ("1", "true", "yes"):
            optional["DeduplicateCampaign"] = True
        priority = controls.first(PRIORITY)
        if priority in ("0", "1", "2", "3"):
            optional["Priority"] = int(priority)
        document.update((k, v) for k, v in optional.items() if v or k == "Priority" and v == 0)
        return {"Messages": [document]}

    def credentials(self, token: str) -> dict[str, str]:
        """
        See L{JSONDialect.credentials}: HTTP Basic with the token's two
        halves.

        @raise Refused: C{554 5.7.1} when the token is not
            C{<API key>:<secret key>}.
        """
        key, secret = token_pair(token, "The mailjet token must be APIKEY:SECRETKEY")
        return {"Authorization": basic_authorization(key, secret)}

    def message_id(self, answer: object) -> str:
        """
        See L{JSONDialect.message_id}: C{Messages[0].To[0].MessageID}, else
        its C{MessageUUID}.
        """
        try:
            first = answer["Messages"][0]["To"][0]  # type: ignore[index]
        except (KeyError, IndexError, TypeError):
            return ""
        if not isinstance(first, Mapping):
            return ""
        return clean_id(first.get("MessageID")) or clean_id(first.get("MessageUUID"))

    def error_text(self, answer: object) -> str:
        """
        See L{JSONDialect.error_text}: C{ErrorMessage}, at the top or in
        C{Messages[].Errors[]}.
        """
        if not isinstance(answer, Mapping):
            return ""
        texts = [answer.get("ErrorMessage")]
        messages = answer.get("Messages")
        for item in messages if isinstance(messages, list) else []:
            errors = item.get("Errors") if isinstance(item, Mapping) else None
            for error in errors if isinstance(errors, list) else []:
                if isinstance(error, Mapping):
                    texts.append(error.get("ErrorMessage"))
        return clean_text("; ".join(t for t in texts if isinstance(t, str)))

    def failure(self, status: int, answer: object) -> Reply:
        """
        See L{JSONDialect.failure}.
        """
        text = self.error_text(answer)
        if status in (401, 403):
            return Reply(554, "5.7.1", text or FALLBACK_TOKEN)
        return failure_for_status(status, text)
