# -*- test-case-name: tests.dialects.test_mailgun -*-
"""
The C{mailgun} dialect: Mailgun's MIME endpoint,
U{https://documentation.mailgun.com/docs/mailgun/api-reference/send/mailgun/messages/post-v3--domain-name--messages-mime}
(C{POST https://api.mailgun.net/v3/<domain>/messages.mime}: the domain is
part of C{upstream.url}), HTTP Basic C{api:<key>}; the C{X-Mailgun-*}
headers of Mailgun's SMTP service from
U{https://documentation.mailgun.com/docs/mailgun/user-manual/sending-messages/send-smtp}.

The message goes as written: C{multipart/form-data} (RFC 7578) with one
C{to} field per envelope recipient and the raw MIME as the C{message} file.
Only the C{Bcc} field, the mapped C{X-Mailgun-*} fields and relayd's own
consumed control fields (L{OutboundMessage.mapped}) are removed from it;
other headers need no C{h:} field, they are in the MIME already.  No
idempotency key: Mailgun documents none.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Mapping
from typing import Any

from relayd.dialects.request import (
    ControlHeaders,
    ProviderDialect,
    Refused,
    Reply,
    basic_authorization,
    check_limits,
    json_header,
    strip_raw_headers,
)
from relayd.message import OutboundMessage

__all__ = ["MailgunDialect", "OPTIONS"]

#: Mailgun's maximum message size, 25 MB, in bytes.
MAX_BYTES = 25 * 1024 * 1024

#: At most 1000 recipients per message.
MAX_RECIPIENTS = 1000

#: "Send options (parameters starting with o:, h:, v:, or t:) are limited
#: to 16KB total."
MAX_OPTIONS = 16 * 1024

#: X-Mailgun-* header (lower case) -> the API's C{o:} option.
OPTIONS = {
    "x-mailgun-tag": "o:tag",
    "x-mailgun-dkim": "o:dkim",
    "x-mailgun-deliver-by": "o:deliverytime",
    "x-mailgun-delivery-time-optimize-period": "o:deliverytime-optimize-period",
    "x-mailgun-time-zone-localize": "o:time-zone-localize",
    "x-mailgun-drop-message": "o:testmode",
    "x-mailgun-track": "o:tracking",
    "x-mailgun-track-clicks": "o:tracking-clicks",
    "x-mailgun-track-opens": "o:tracking-opens",
    "x-mailgun-require-tls": "o:require-tls",
    "x-mailgun-skip-verification": "o:skip-verification",
    "x-mailgun-sending-ip": "o:sending-ip",
    "x-mailgun-sending-ip-pool": "o:sending-ip-pool",
}

#: The JSON object whose keys become C{v:} user variables.
VARIABLES = "x-mailgun-variables"


def _variables(values: list[str]) -> list[tuple[str, str]]:
    """
    @raise Refused: C{550 5.6.0} when a value is not a JSON object.
    """
    fields = []
    for value in values:
        for key, item in json_header(value, "X-Mailgun-Variables").items():
            text = item if isinstance(item, str) else json.dumps(item)
            fields.append((f"v:{key}", text))
    return fields


def _part(name: str, value: bytes, boundary: bytes, filename: str | None = None) -> bytes:
    # RFC 7578 section 4.2 / the HTML form encoding: quote " CR LF.
    quoted = name.replace('"', "%22").replace("\r", "%0D").replace("\n", "%0A")
    disposition = f'form-data; name="{quoted}"'
    head = b"--" + boundary + b"\r\nContent-Disposition: " + disposition.encode("utf-8")
    if filename is not None:
        head += f'; filename="{filename}"\r\nContent-Type: message/rfc822'.encode("ascii")
    return head + b"\r\n\r\n" + value + b"\r\n"


class MailgunDialect(ProviderDialect):
    """
    Mailgun: C{Authorization: Basic base64("api:" + key)}.

    Form fields (see C{docs/upstream-api.md}): C{to} (each envelope
    recipient), C{message} (the raw MIME, as a file), C{o:tag} (each tag,
    then each C{X-Mailgun-Tag}), C{o:tracking} from the message's tracking
    flag, the other C{o:} options from L{OPTIONS}, C{v:<key>} from the
    metadata and from C{X-Mailgun-Variables}.

    Answers: C{200 {"id": "<...>", "message": "Queued. Thank you."}};
    errors C{{"message": "..."}} (or the text C{Forbidden} for a bad key,
    401), with the common status mapping.
    """

    name = "mailgun"
    token_header = "Authorization"
    token_format = "Basic {token}"
    path = "/v3/<domain>/messages.mime"
    error_keys = ("message",)

    def fields(self, message: OutboundMessage) -> list[tuple[str, bytes]]:
        """
        The form fields for C{message}, in order.

        @param message: The message.
        @return: C{(name, value)} pairs, C{message} last.
        @raise Refused: C{552 5.3.4} / C{452 4.5.3} over the limits; C{550
            5.6.0} for a bad X-Mailgun-Variables header or too many send
            options.
        """
        check_limits(self.name, message, max_bytes=MAX_BYTES, max_recipients=MAX_RECIPIENTS)
        controls = ControlHeaders(message, lambda key: key in OPTIONS or key == VARIABLES)
        options: list[tuple[str, str]] = [("o:tag", t) for t in message.tags]
        if message.track is not None:
            options.append(("o:tracking", "yes" if message.track else "no"))
        for header, option in OPTIONS.items():
            options += [(option, value) for value in controls.all(header)]
        options += [(f"v:{k}", v) for k, v in message.metadata]
        options += _variables(controls.all(VARIABLES))
        if sum(len(k) + len(v.encode()) for k, v in options) > MAX_OPTIONS:
            raise Refused(Reply(550, "5.6.0", "Mailgun send options exceed 16 KB"))
        raw = strip_raw_headers(message.raw, ["Bcc", *controls.found, *message.mapped])
        fields = [("to", r.encode("utf-8")) for r in message.envelope.rcpt_to]
        fields += [(k, v.encode("utf-8")) for k, v in options]
        return fields + [("message", raw)]

    def encode(self, message: OutboundMessage) -> tuple[bytes, str]:
        """
        @return: The multipart body and its C{Content-Type}.
        @raise Refused: See L{fields}.
        """
        fields = self.fields(message)
        boundary = secrets.token_hex(16).encode("ascii")
        parts = [
            _part(name, value, boundary, "message.mime" if name == "message" else None)
            for name, value in fields
        ]
        body = b"".join(parts) + b"--" + boundary + b"--\r\n"
        return body, "multipart/form-data; boundary=" + boundary.decode("ascii")

    def body(self, message: OutboundMessage) -> bytes:
        """
        See L{IDialect.body}: the multipart body (its boundary is only in
        L{request}'s C{Content-Type}).
        """
        return self.encode(message)[0]

    def payload(self, message: OutboundMessage) -> dict[str, Any]:
        """
        Not JSON: see L{fields}.
        """
        raise NotImplementedError("mailgun sends multipart/form-data")

    def credentials(self, token: str) -> dict[str, str]:
        """
        See L{JSONDialect.credentials}: HTTP Basic C{api:<token>}.
        """
        return {"Authorization": basic_authorization("api", token)}

    def request_content(
        self, message: OutboundMessage, key: str | None
    ) -> tuple[bytes, dict[str, str]]:
        """
        See L{JSONDialect.request_content}: the multipart body and its content
        type.
        """
        body, content_type = self.encode(message)
        return body, {"Content-Type": content_type}

    def message_id(self, answer: object) -> str:
        """
        See L{JSONDialect.message_id}: C{id}, without its angle brackets.
        """
        if isinstance(answer, Mapping) and isinstance(answer.get("id"), str):
            answer = {"id": answer["id"].strip().strip("<>")}
        return super().message_id(answer)
