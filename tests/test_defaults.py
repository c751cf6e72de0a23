"""
Defaults that fit real mail: long lines of minified HTML are taken (the
line bound is a memory bound; DATA still ends at CRLF.CRLF only),
C{Auto-Submitted}, C{Precedence} and C{Feedback-ID} reach the upstreams
that carry custom headers, and C{RCPT TO:<postmaster>} reaches the
upstream as the postmaster of this host (RFC 5321 section 4.5.1).
"""

from __future__ import annotations

import json

from twisted.trial.unittest import SynchronousTestCase

from relayd import reply as R
from relayd.config import HeadersConfig, LimitsConfig
from relayd.dialects import get_dialect
from relayd.message import Envelope, parse_message
from relayd.testing import SMTPDriver, reply_line

HTML_LINE = b"<html><body>" + b"<div class=x><a href='https://example.com/'>x</a></div>" * 100
AUTOMATIC = (
    b"Auto-Submitted: auto-generated\r\nPrecedence: bulk\r\n"
    b"Feedback-ID: 111:campaign:mailer:example\r\n"
)


def logged_in() -> SMTPDriver:
    s = SMTPDriver(implicit_tls=True)
    s.login()
    return s


class LongLineTests(SynchronousTestCase):
    def test_default_bound_is_65536_octets(self) -> None:
        self.assertEqual(LimitsConfig().max_line_length, 65536)

    def test_5000_octet_html_line_is_relayed(self) -> None:
        """
        A 5,000-octet line of minified HTML gets 250, unchanged.
        """
        self.assertGreater(len(HTML_LINE), 5000)
        s = logged_in()
        s.start()
        data = b"Subject: x\r\nContent-Type: text/html\r\n\r\n" + HTML_LINE + b"\r\n"
        self.assertEqual(s.send(data + b".\r\n"), [reply_line(R.queued("fake-1"))])
        self.assertEqual(s.delivery.sent[0].data, data)

    def test_line_over_the_bound_still_fails(self) -> None:
        s = logged_in()
        s.start()
        s.send(b"Subject: x\r\n\r\n" + b"a" * 65537)
        self.assertEqual(s.send(b"\r\n.\r\n"), [reply_line(R.message_line_too_long(65536))])
        self.assertEqual(s.delivery.sent, [])

    def test_long_line_does_not_hide_the_end_of_data(self) -> None:
        """
        LF.LF inside a long line is content; only CRLF.CRLF ends DATA.
        """
        s = logged_in()
        s.start()
        self.assertEqual(s.send(b"a" * 4000 + b"\n.\nMAIL FROM:<e@example.com>\r\n"), [])
        self.assertEqual(s.send(b".\r\n"), [reply_line(R.queued("fake-1"))])
        self.assertEqual(len(s.delivery.sent), 1)


class AutomaticMailHeaderTests(SynchronousTestCase):
    """
    Auto-Submitted (RFC 3834 section 5), Precedence and Feedback-ID are
    kept by default, so the dialects that send custom headers send them.
    """

    def payload(self, dialect: str) -> dict[str, object]:
        data = b"From: a@example.com\r\nTo: b@example.net\r\nSubject: s\r\n" + AUTOMATIC
        message = parse_message(
            data + b"\r\nhi\r\n", Envelope("a@example.com", ("b@example.net",)), HeadersConfig()
        )
        self.assertEqual(message.stripped, ())
        result: dict[str, object] = json.loads(get_dialect(dialect).body(message))
        return result

    def test_native_sends_them(self) -> None:
        self.assertEqual(
            self.payload("native")["headers"],
            [
                ["Auto-Submitted", "auto-generated"],
                ["Precedence", "bulk"],
                ["Feedback-ID", "111:campaign:mailer:example"],
            ],
        )

    def test_postmark_sends_them(self) -> None:
        self.assertEqual(
            self.payload("postmark")["Headers"],
            [
                {"Name": "Auto-Submitted", "Value": "auto-generated"},
                {"Name": "Precedence", "Value": "bulk"},
                {"Name": "Feedback-ID", "Value": "111:campaign:mailer:example"},
            ],
        )

    def test_mailpace_has_no_field_for_them(self) -> None:
        self.assertNotIn("auto-generated", json.dumps(self.payload("mailpace")))


class PostmasterTests(SynchronousTestCase):
    def test_postmaster_is_qualified_with_the_hostname(self) -> None:
        """
        RCPT TO:<Postmaster> (RFC 5321 section 4.1.1.3) reaches the upstream
        as postmaster@<server.hostname> (section 4.5.1).
        """
        s = logged_in()
        s.send("MAIL FROM:<a@example.com>\r\n")
        self.assertEqual(s.send("RCPT TO:<Postmaster>\r\n"), [reply_line(R.RECIPIENT_OK)])
        s.send("DATA\r\n")
        s.send("Subject: x\r\n\r\nhi\r\n.\r\n")
        self.assertEqual(s.delivery.sent[0].rcpt_to, ["postmaster@mx.example.test"])
