"""
Bcc recipients stay hidden in every provider dialect: for any split of the
envelope between To, Cc and neither, no envelope recipient outside the To
and Cc header fields appears in a field the provider shows to recipients.
"""

from __future__ import annotations

import json
from base64 import b64decode
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from relayd.config import HeadersConfig
from relayd.dialects.brevo import BrevoDialect
from relayd.dialects.mailgun import MailgunDialect
from relayd.dialects.mailjet import MailjetDialect
from relayd.dialects.request import ProviderDialect
from relayd.dialects.resend import ResendDialect
from relayd.dialects.sendgrid import SendGridDialect
from relayd.dialects.ses import SESDialect
from relayd.dialects.sparkpost import SparkPostDialect
from relayd.message import Envelope, parse_message
from relayd.reply import Refused


def _emails(entries: list[Any]) -> set[str]:
    return {(e.get("email") or e.get("Email") or "").lower() for e in entries}


def _split(text: str) -> set[str]:
    return {a.strip().lower() for a in text.split(",") if a.strip()}


def shown(name: str, body: bytes) -> tuple[set[str], bytes]:
    """
    The addresses C{name}'s request shows as To or Cc, and the raw message
    it sends (C{b""} when it sends fields).
    """
    if name == "mailgun":
        part = body.rsplit(b'filename="message.mime"', 1)[1]
        return set(), part.split(b"\r\n\r\n", 1)[1]
    doc = json.loads(body)
    if name == "sendgrid":
        p = doc["personalizations"][0]
        return _emails(p["to"] + p.get("cc", [])), b""
    if name == "ses":
        d = doc["Destination"]
        raw = b64decode(doc["Content"]["Raw"]["Data"])
        return {a.lower() for a in d.get("ToAddresses", []) + d.get("CcAddresses", [])}, raw
    if name == "resend":
        return {a.lower() for a in doc["to"] + doc.get("cc", [])}, b""
    if name == "brevo":
        return _emails(doc["to"] + doc.get("cc", [])), b""
    if name == "mailjet":
        m = doc["Messages"][0]
        return _emails(m["To"] + m.get("Cc", [])), b""
    if name == "sparkpost":
        headers = doc["content"].get("headers", {})
        visible = set()
        for r in doc["recipients"]:
            visible |= _split(r["address"].get("header_to", ""))
        return visible | _split(headers.get("CC", "")), b""
    raise AssertionError(name)


DIALECTS: list[ProviderDialect] = [
    SendGridDialect(),
    MailgunDialect(),
    SESDialect(),
    ResendDialect(),
    BrevoDialect(),
    SparkPostDialect(),
    MailjetDialect(),
]

addresses = st.lists(
    st.sampled_from([f"u{i}@example.{tld}" for i in range(6) for tld in ("com", "net")]),
    min_size=1,
    max_size=8,
    unique=True,
)
places = st.sampled_from(["to", "cc", "bcc", "header-only"])


class BccTests(SynchronousTestCase):
    @settings(max_examples=60, deadline=None)
    @given(addresses, st.data())
    def test_bcc_never_shown(self, pool: list[str], data: st.DataObject) -> None:
        """
        Whatever the split, Bcc recipients are in no To/Cc field and in no
        header of a raw message.
        """
        where = {a: data.draw(places) for a in pool}
        to = [a for a in pool if where[a] in ("to", "header-only") and data.draw(st.booleans())]
        cc = [a for a in pool if where[a] == "cc"]
        envelope = [a for a in pool if where[a] != "header-only"]
        if not envelope:
            return
        lines = [b"From: zoe@example.com"]
        if to:
            lines.append(b"To: " + ", ".join(to).encode())
        if cc:
            lines.append(b"Cc: " + ", ".join(cc).encode())
        bcc = [a for a in envelope if a not in to and a not in cc]
        if bcc:
            lines.append(b"Bcc: " + ", ".join(bcc).encode())
        raw = b"\r\n".join(lines) + b"\r\nSubject: hi\r\n\r\nHello\r\n"
        message = parse_message(raw, Envelope("b@example.com", tuple(envelope)), HeadersConfig())
        for dialect in DIALECTS:
            try:
                body = dialect.body(message)
            except Refused as e:
                # Only allowed when no envelope recipient may be shown.
                self.assertEqual(e.reply.code, 550, dialect.name)
                self.assertFalse(set(envelope) & (set(to) | set(cc)), dialect.name)
                continue
            visible, sent_raw = shown(dialect.name, body)
            self.assertFalse(visible & set(bcc), (dialect.name, visible, bcc))
            self.assertLessEqual(visible, {a.lower() for a in to + cc}, dialect.name)
            if sent_raw:
                head = sent_raw.split(b"\r\n\r\n", 1)[0].lower()
                self.assertNotIn(b"\nbcc:", b"\n" + head, dialect.name)
