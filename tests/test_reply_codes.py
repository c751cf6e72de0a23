# -*- test-case-name: tests.test_reply_codes -*-
"""
Reply codes that must fit the command they answer (RFC 5321 section 4.3.2)
and the condition they name (RFC 3463).
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from relayd import reply as R
from relayd.policy import upstream_refused_credential
from relayd.smtp.framing import line_of, wire_line

#: The reply codes RFC 5321 section 4.3.2 allows after MAIL.
MAIL_CODES = {250, 451, 452, 455, 503, 550, 552, 553, 555}


class ReplyCodeTests(SynchronousTestCase):
    def test_refused_credential_at_mail(self) -> None:
        """
        The MAIL refusal after the upstream refused the session's
        credential is a MAIL reply code, C{550 5.7.1}, and is not itself
        read as the upstream's refusal of a credential.
        """
        r = R.CREDENTIAL_REFUSED_UPSTREAM
        self.assertIn(r.code, MAIL_CODES)
        self.assertEqual((r.code, r.status), (550, "5.7.1"))
        self.assertFalse(upstream_refused_credential(r))

    def test_bare_lf_in_command_is_a_syntax_error(self) -> None:
        """
        A command line ending in a bare LF is a command syntax error:
        C{500 5.5.2} (RFC 5321 section 4.2.2, RFC 3463 X.5.2).
        """
        self.assertEqual((R.BARE_LF_IN_COMMAND.code, R.BARE_LF_IN_COMMAND.status), (500, "5.5.2"))

    def test_retry_after(self) -> None:
        """
        A 503 with C{Retry-After} is unavailable (X.3.0), a 429 a rate
        limit (X.7.1).
        """
        self.assertEqual(R.upstream_retry_after(503, 5).status, "4.3.0")
        self.assertEqual(R.upstream_retry_after(429, 5).status, "4.7.1")


class WireLineTests(SynchronousTestCase):
    """
    The line a reply is on the wire (L{wire_line}, L{line_of}).
    """

    def test_code_status_text_crlf(self) -> None:
        self.assertEqual(
            line_of(R.MESSAGE_TOO_BIG), b"552 5.3.4 " + R.MESSAGE_TOO_BIG.text.encode() + b"\r\n"
        )
        self.assertEqual(wire_line(220, "", "relay.test ESMTP"), b"220 relay.test ESMTP\r\n")

    def test_control_characters_cannot_forge_a_reply(self) -> None:
        line = wire_line(550, "5.7.1", "no\r\n250 2.0.0 Ok\x00\x7f")
        self.assertEqual(line, b"550 5.7.1 no  250 2.0.0 Ok  \r\n")
        self.assertEqual(line.count(b"\n"), 1)

    def test_a_reply_with_other_text_is_not_cached_as_the_named_one(self) -> None:
        """
        A deployment's text for a named reply (C{[replies]}) is its own
        line: the named reply's cached line does not stand in for it.
        """
        self.assertIn(b"Message size", line_of(R.MESSAGE_TOO_BIG))
        other = R.MESSAGE_TOO_BIG.with_text("Too large for us")
        self.assertEqual(line_of(other), b"552 5.3.4 Too large for us\r\n")
        self.assertIn(b"Message size", line_of(R.MESSAGE_TOO_BIG))
        self.assertEqual(line_of(R.queued("abc")), b"250 2.0.0 Ok: queued as abc\r\n")
