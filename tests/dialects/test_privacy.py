"""
No dialect discloses a blind copy: over every built-in dialect, as the
upstream client prepares its request, an envelope recipient absent from the
header To and Cc fields never appears in a To or Cc field of the request,
nor in a Bcc header of a raw message (RFC 5322 section 3.6.3); a dialect
whose API needs a To address it cannot fill refuses with C{550 5.6.0}.
"""

from __future__ import annotations

import json
from base64 import b64decode
from email.utils import getaddresses
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from relayd.config import HeadersConfig, UpstreamConfig
from relayd.dialects import DIALECTS, get_dialect
from relayd.message import Envelope, parse_message
from relayd.reply import Refused
from relayd.upstream import UpstreamClient

#: Tokens in the form each dialect checks.
TOKENS = {"ses": "AKID:secret", "mailjet": "key:secret"}


def _addresses(values: list[str]) -> set[str]:
    return {a.lower() for _, a in getaddresses(values) if a}


def _emails(entries: list[Any]) -> set[str]:
    return {(e.get("email") or e.get("Email") or "").lower() for e in entries}


def shown(name: str, body: bytes) -> tuple[set[str], bytes]:
    """
    The addresses C{name}'s request shows as To or Cc, and the raw message
    it sends (C{b""} when it sends fields only).
    """
    if name == "mailgun":
        part = body.rsplit(b'filename="message.mime"', 1)[1]
        return set(), part.split(b"\r\n\r\n", 1)[1]
    doc = json.loads(body)
    if name in ("native", "resend"):
        return _addresses(doc["to"] + doc.get("cc", [])), b""
    if name == "raw":
        return set(), b64decode(doc["raw"])
    if name == "postmark":
        return _addresses([doc["To"], doc.get("Cc", "")]), b""
    if name == "mailpace":
        return _addresses([doc["to"], doc.get("cc", "")]), b""
    if name == "sendgrid":
        p = doc["personalizations"][0]
        return _emails(p["to"] + p.get("cc", [])), b""
    if name == "ses":
        d = doc["Destination"]
        raw = b64decode(doc["Content"]["Raw"]["Data"])
        return _addresses(d.get("ToAddresses", []) + d.get("CcAddresses", [])), raw
    if name == "brevo":
        return _emails(doc["to"] + doc.get("cc", [])), b""
    if name == "mailjet":
        m = doc["Messages"][0]
        return _emails(m["To"] + m.get("Cc", [])), b""
    if name == "sparkpost":
        headers = doc["content"].get("headers", {})
        header_to = [r["address"].get("header_to", "") for r in doc["recipients"]]
        return _addresses(header_to + [headers.get("CC", "")]), b""
    raise AssertionError(name)


def clients() -> dict[str, UpstreamClient]:
    return {
        name: UpstreamClient(
            Clock(), UpstreamConfig(url="https://api.example.com/send"), get_dialect(name), http=1
        )
        for name in DIALECTS
    }


POOL = [f"u{i}@example.{tld}" for i in range(5) for tld in ("com", "net")]
names = st.sampled_from(["", "Ann", "Bob Smith", '"Doe, Jane"'])
places = st.sampled_from(["to", "cc", "bcc", "header-only"])
groups = st.sampled_from([None, "undisclosed-recipients:;", "friends: {members};"])


class PrivacyTests(SynchronousTestCase):
    """
    The property over all dialects, and the cases that motivated it.
    """

    def setUp(self) -> None:
        self.clients = clients()

    def check(self, raw: bytes, envelope: list[str], visible_header: set[str]) -> dict[str, Any]:
        """
        Prepare C{raw} for every dialect; assert the property.

        @return: Dialect name to the L{Refused} reply or the shown set.
        """
        message = parse_message(raw, Envelope("b@example.com", tuple(envelope)), HeadersConfig())
        blind = {a.lower() for a in envelope} - visible_header
        outcome: dict[str, Any] = {}
        for name, client in self.clients.items():
            try:
                request = client.prepare(message, TOKENS.get(name, "key-1"), "k-1")
            except Refused as e:
                self.assertEqual((e.reply.code, e.reply.status), (550, "5.6.0"), name)
                # Only when no envelope recipient may be shown.
                self.assertFalse({a.lower() for a in envelope} & visible_header, name)
                outcome[name] = e.reply
                continue
            visible, sent_raw = shown(name, request.body)
            self.assertFalse(visible & blind, (name, visible, blind))
            self.assertLessEqual(visible, visible_header, name)
            if sent_raw:
                head = sent_raw.split(b"\r\n\r\n", 1)[0].lower()
                self.assertNotIn(b"\nbcc:", b"\n" + head, name)
            outcome[name] = visible
        return outcome

    @settings(max_examples=80, deadline=None)
    @given(
        st.lists(st.sampled_from(POOL), min_size=1, max_size=7, unique=True),
        groups,
        st.data(),
    )
    def test_blind_copies_never_shown(
        self, pool: list[str], group: str | None, data: st.DataObject
    ) -> None:
        """
        Whatever the split of the recipients between To (plain or in a
        group), Cc, Bcc and header-only, with or without display names, no
        dialect shows a blind copy.
        """
        where = {a: data.draw(places) for a in pool}
        envelope = [a for a in pool if where[a] != "header-only"]
        if not envelope:
            return

        def mailbox(address: str) -> str:
            name = data.draw(names)
            return f"{name} <{address}>" if name else address

        to = [mailbox(a) for a in pool if where[a] in ("to", "header-only")]
        cc = [mailbox(a) for a in pool if where[a] == "cc"]
        bcc = [a for a in envelope if where[a] == "bcc"]
        lines = [b"From: zoe@example.com"]
        if group is not None:
            members = ", ".join(to) if "{members}" in group else ""
            to_field = group.format(members=members) if members else "undisclosed-recipients:;"
            if not members and to:
                to_field = ", ".join(to) + ", " + to_field
            lines.append(b"To: " + to_field.encode())
        elif to:
            lines.append(b"To: " + ", ".join(to).encode())
        if cc:
            lines.append(b"Cc: " + ", ".join(cc).encode())
        if bcc:
            lines.append(b"Bcc: " + ", ".join(bcc).encode())
        raw = b"\r\n".join(lines) + b"\r\nSubject: hi\r\n\r\nHello\r\n"
        header = {a for a in pool if where[a] in ("to", "header-only", "cc")}
        self.check(raw, envelope, header)

    def test_undisclosed_recipients(self) -> None:
        """
        C{To: undisclosed-recipients:;} with three envelope recipients: the
        APIs that deliver to To refuse with C{550 5.6.0} (the three used to
        be sent as To), the others send all three as Bcc only.
        """
        raw = (
            b"From: zoe@example.com\r\nTo: undisclosed-recipients:;\r\nSubject: hi\r\n\r\nHello\r\n"
        )
        envelope = ["a@example.com", "b@example.net", "c@example.org"]
        outcome = self.check(raw, envelope, set())
        refused = sorted(n for n, o in outcome.items() if not isinstance(o, set))
        self.assertEqual(
            refused, ["brevo", "mailjet", "mailpace", "postmark", "resend", "sendgrid", "sparkpost"]
        )
        self.assertEqual(
            outcome["postmark"].text,
            "The postmark API needs a To or Cc address among the recipients",
        )
        for name in ("native", "raw", "mailgun", "ses"):
            self.assertEqual(outcome[name], set(), name)

    def test_cc_only_is_sent_as_to_where_to_is_required(self) -> None:
        """
        A Cc recipient is visible anyway: where the API needs a To, a
        Cc-only message sends the Cc address as To; the blind copy stays
        Bcc.
        """
        raw = (
            b"From: zoe@example.com\r\nTo: undisclosed-recipients:;\r\n"
            b"Cc: Bob <bob@example.org>\r\nSubject: hi\r\n\r\nHello\r\n"
        )
        outcome = self.check(raw, ["bob@example.org", "hidden@example.org"], {"bob@example.org"})
        for name in ("postmark", "mailpace", "sendgrid", "resend", "brevo", "mailjet", "ses"):
            self.assertEqual(outcome[name], {"bob@example.org"}, name)
