# -*- test-case-name: tests.test_dialects,tests.dialects.test_postmark_smtp_headers -*-
"""
The C{postmark} dialect: Postmark's single email endpoint,
U{https://postmarkapp.com/developer/api/email-api} (C{POST
https://api.postmarkapp.com/email}); status codes and C{ErrorCode} values
from U{https://postmarkapp.com/developer/api/overview}.

Postmark builds the MIME message itself from the fields below.

Postmark's own SMTP service reads control header fields that applications
written for it already set; this dialect understands them too, so such an
application can move to relayd unchanged (L{smtp_controls}):

  - C{X-PM-Tag: <tag>} is C{Tag} (one tag),
    U{https://postmarkapp.com/support/article/1284-tags-faq};
  - C{X-PM-Message-Stream: <stream ID>} is C{MessageStream},
    U{https://postmarkapp.com/developer/user-guide/send-email-with-smtp} and
    U{https://postmarkapp.com/support/article/1207-how-to-create-and-send-through-message-streams};
  - C{X-PM-Metadata-<name>: <value>} is C{Metadata {name: value}},
    U{https://postmarkapp.com/support/article/1125-custom-metadata-faq};
  - C{X-PM-TrackOpens: true|false} is C{TrackOpens},
    U{https://postmarkapp.com/developer/user-guide/tracking-opens/tracking-opens-per-email}.

Postmark's SMTP documentation defines no C{X-PM-TrackLinks} header (link
tracking per message is an API field only,
U{https://postmarkapp.com/developer/user-guide/tracking-links}), so it is not
read.  Every C{X-PM-*} field is left out of C{Headers}: they are
instructions to Postmark, which does not show them to recipients either.
A control field the header policy (C{[headers]}) already filled wins over
its C{X-PM-*} counterpart.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from attrs import frozen

from relayd.dialects.base import (
    Base64,
    JSONDialect,
    envelope_recipients,
    refuse_raw_only,
    require_to,
)
from relayd.message import Attachment, OutboundMessage
from relayd.message.decoding import decode_words
from relayd.reply import FALLBACK_REJECTED, FALLBACK_TEMPORARY, FALLBACK_TOKEN, Reply

__all__ = ["PostmarkDialect", "SMTPControls", "smtp_controls"]

#: Postmark API error codes that get their own SMTP reply.
BAD_TOKEN = 10
NOT_ALLOWED_TO_SEND = 405
INACTIVE_RECIPIENT = 406


#: The prefix of Postmark's SMTP control header fields (lower case).
CONTROL_PREFIX = "x-pm-"
#: The prefix of Postmark's SMTP metadata header fields (lower case).
METADATA_PREFIX = "x-pm-metadata-"


@frozen
class SMTPControls:
    """
    What Postmark's SMTP control header fields of one message say.

    @ivar tag: The first non-empty C{X-PM-Tag} value, or C{None}.
    @ivar stream: The first non-empty C{X-PM-Message-Stream} value, or
        C{None}.
    @ivar track_opens: C{X-PM-TrackOpens} (C{true}/C{false}, any case) as a
        bool; C{None} when absent or neither.
    @ivar metadata: C{(name, value)} of the C{X-PM-Metadata-<name>} fields,
        in message order, values RFC 2047 decoded; of names equal but for
        case the first (Postmark refuses duplicate keys).
    @ivar headers: The other header fields, C{X-PM-*} ones left out.
    """

    tag: str | None = None
    stream: str | None = None
    track_opens: bool | None = None
    metadata: tuple[tuple[str, str], ...] = ()
    headers: tuple[tuple[str, str], ...] = ()


def smtp_controls(headers: tuple[tuple[str, str], ...]) -> SMTPControls:
    """
    Read Postmark's SMTP control header fields (see the module docstring).

    @param headers: Kept header fields, C{(name, value)}, as in
        L{OutboundMessage.headers}.
    @return: The controls, and the fields without any C{X-PM-*} one.
    """
    tag = stream = None
    track_opens = None
    metadata: list[tuple[str, str]] = []
    seen: set[str] = set()
    kept = []
    for name, value in headers:
        key = name.lower()
        if not key.startswith(CONTROL_PREFIX):
            kept.append((name, value))
            continue
        text = decode_words(value).strip()
        if key.startswith(METADATA_PREFIX):
            meta = name[len(METADATA_PREFIX) :].strip()
            if meta and meta.lower() not in seen:
                seen.add(meta.lower())
                metadata.append((meta, text))
        elif key == "x-pm-tag" and tag is None and text:
            tag = text
        elif key == "x-pm-message-stream" and stream is None and text:
            stream = text
        elif key == "x-pm-trackopens" and track_opens is None:
            track_opens = {"true": True, "false": False}.get(text.lower())
    return SMTPControls(tag, stream, track_opens, tuple(metadata), tuple(kept))


def _attachment(attachment: Attachment) -> dict[str, Any]:
    document = {
        "Name": attachment.filename,
        "Content": Base64.of(attachment),
        "ContentType": attachment.content_type,
    }
    if attachment.content_id:
        # Postmark's documented inline form: "cid:<id>".
        document["ContentID"] = "cid:" + attachment.content_id
    return document


class PostmarkDialect(JSONDialect):
    """
    Postmark: C{X-Postmark-Server-Token: <token>}.

    Field mapping (see C{docs/upstream-api.md}): C{From}; C{To}, C{Cc},
    C{Bcc}, C{ReplyTo} as comma-separated strings; C{Subject}; C{HtmlBody};
    C{TextBody} (C{""} when the message has neither body); C{Headers} as
    C{[{Name, Value}]} (plus C{List-Unsubscribe}, which has no field of its
    own); C{Tag}: the first tag only (Postmark takes one); C{Metadata};
    C{MessageStream}; C{TrackOpens} and C{TrackLinks} (C{"HtmlAndText"} or
    C{"None"}) only when the message says; C{Attachments} (C{Name},
    C{Content} base64, C{ContentType}, C{ContentID}).  Empty optional
    fields are left out.  Postmark's SMTP control headers (C{X-PM-Tag},
    C{X-PM-Message-Stream}, C{X-PM-Metadata-<name>}, C{X-PM-TrackOpens})
    fill C{Tag}, C{MessageStream}, C{Metadata} and C{TrackOpens} where the
    header policy left them empty, and no C{X-PM-*} field is sent in
    C{Headers} (L{smtp_controls}).

    Answers: C{200 {"ErrorCode": 0, "Message": "OK", "MessageID": ...}};
    errors C{{"ErrorCode": n, "Message": "..."}}, mostly with 422.  Beyond
    the common status mapping, C{ErrorCode} 10 (bad or missing token) is
    C{554 5.7.1} whatever the status, 405 (not allowed to send: the account
    is out of credits) is C{451 4.3.0} so the client keeps the mail until
    the account is fixed, and 406 (inactive recipient) is C{550 5.1.1}.
    """

    name = "postmark"
    token_header = "X-Postmark-Server-Token"
    token_format = "{token}"
    path = "/email"
    id_keys = ("MessageID",)
    error_keys = ("Message",)

    def payload(self, message: OutboundMessage) -> dict[str, Any]:
        """
        See L{JSONDialect.payload}.

        @raise relayd.reply.Refused: For a C{raw_only} message
            (C{554 5.6.0}) or one none of whose recipients is in To or Cc (C{550 5.6.0}: a
            Bcc recipient is never shown as To).
        """
        refuse_raw_only(self.name, message)
        to, cc, bcc = envelope_recipients(message)
        to, cc = require_to(self.name, to, cc)
        document: dict[str, Any] = {
            "From": message.from_,
            "To": ", ".join(to),
            "Subject": message.subject,
        }
        if message.html is not None:
            document["HtmlBody"] = message.html
        if message.text is not None or message.html is None:
            document["TextBody"] = message.text or ""
        controls = smtp_controls(message.headers)
        headers = [{"Name": n, "Value": v} for n, v in controls.headers]
        if message.list_unsubscribe and not any(
            n.lower() == "list-unsubscribe" for n, _ in message.headers
        ):
            headers.append({"Name": "List-Unsubscribe", "Value": message.list_unsubscribe})
        metadata = dict(message.metadata)
        taken = {key.lower() for key in metadata}
        metadata.update((k, v) for k, v in controls.metadata if k.lower() not in taken)
        optional: dict[str, Any] = {
            "Cc": ", ".join(cc),
            "Bcc": ", ".join(bcc),
            "ReplyTo": ", ".join(message.reply_to),
            "Headers": headers,
            "Tag": message.tags[0] if message.tags else controls.tag,
            "Metadata": metadata,
            "MessageStream": message.stream or controls.stream,
            "Attachments": [_attachment(a) for a in message.attachments],
        }
        document.update((k, v) for k, v in optional.items() if v)
        if message.track is not None:
            document["TrackOpens"] = message.track
            document["TrackLinks"] = "HtmlAndText" if message.track else "None"
        elif controls.track_opens is not None:
            document["TrackOpens"] = controls.track_opens
        return document

    def failure(self, status: int, answer: object) -> Reply:
        """
        See L{JSONDialect.failure}; some C{ErrorCode} values have their own
        reply (see the class docstring).
        """
        text = self.error_text(answer)
        code = answer.get("ErrorCode") if isinstance(answer, Mapping) else None
        if code == BAD_TOKEN:
            return Reply(554, "5.7.1", text or FALLBACK_TOKEN)
        if code == NOT_ALLOWED_TO_SEND:
            return Reply(451, "4.3.0", text or FALLBACK_TEMPORARY)
        if code == INACTIVE_RECIPIENT and status in (400, 422):
            return Reply(550, "5.1.1", text or FALLBACK_REJECTED)
        return super().failure(status, answer)
