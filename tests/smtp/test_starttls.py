"""
Tests for STARTTLS (RFC 3207) in L{relayd.smtp.session}: what EHLO offers
before and after TLS, and nothing sent in the clear survives the handshake
(RFC 3207 section 4.2, CVE-2011-0411).
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from relayd import reply as R
from relayd.smtp.envelope import Transaction
from relayd.testing import TOKEN, SMTPDriver, reply_line
from tests.smtp.support import (
    HOST,
    WireChecks,
    inbuf,
    plain,
)


class ExtensionTests(SynchronousTestCase):
    """
    EHLO offers STARTTLS in the clear and AUTH only under TLS.
    """

    def test_ehlo_before_tls_offers_starttls_not_auth(self) -> None:
        """
        On a plain connection EHLO lists STARTTLS and not AUTH (RFC 4954
        section 4: no plaintext mechanisms without TLS).
        """
        s = SMTPDriver()
        s.replies()
        lines = s.send("EHLO client.example\r\n")
        self.assertEqual(lines[0], "250-mx.example.test")
        names = [line[4:] for line in lines[1:]]
        self.assertIn("STARTTLS", names)
        self.assertIn("PIPELINING", names)
        self.assertIn("SIZE 26214400", names)
        self.assertIn("ENHANCEDSTATUSCODES", names)
        self.assertIn("8BITMIME", names)
        self.assertIn("SMTPUTF8", names)
        self.assertFalse([n for n in names if n.startswith("AUTH")])
        self.assertTrue(lines[-1].startswith("250 "))

    def test_ehlo_after_starttls_offers_auth_not_starttls(self) -> None:
        s = SMTPDriver()
        s.send("EHLO c\r\n")
        self.assertEqual(s.send("STARTTLS\r\n"), [reply_line(R.READY_TO_START_TLS)])
        self.assertTrue(s.transport.tls_started)
        names = [line[4:] for line in s.send("EHLO c\r\n")[1:]]
        self.assertIn("AUTH PLAIN LOGIN", names)
        self.assertNotIn("STARTTLS", names)

    def test_implicit_tls_offers_auth_and_no_starttls(self) -> None:
        s = SMTPDriver(implicit_tls=True)
        s.replies()
        names = [line[4:] for line in s.send("EHLO c\r\n")[1:]]
        self.assertIn("AUTH PLAIN LOGIN", names)
        self.assertNotIn("STARTTLS", names)
        self.assertEqual(s.send("STARTTLS\r\n"), [reply_line(R.TLS_ALREADY_ACTIVE)])


class StartTLSTests(SynchronousTestCase, WireChecks):
    """
    STARTTLS starts the session over and discards cleartext input.
    """

    def plain_session(self) -> SMTPDriver:
        s = SMTPDriver()
        s.replies()
        s.ehlo()
        return s

    def test_pipelined_commands_after_starttls_are_discarded(self) -> None:
        """
        RFC 3207 section 4.2 / CVE-2011-0411: commands sent in the clear
        after STARTTLS in the same packet are never answered.
        """
        s = SMTPDriver()
        s.send("EHLO c\r\n")
        lines = s.send(
            f"STARTTLS\r\nAUTH PLAIN {plain('apikey', TOKEN)}\r\nMAIL FROM:<a@example.com>\r\n"
        )
        self.assertEqual(lines, [reply_line(R.READY_TO_START_TLS)])
        self.assertEqual(s.send("MAIL FROM:<a@example.com>\r\n"), [reply_line(R.NEED_EHLO)])

    def test_session_restarts_after_starttls(self) -> None:
        s = SMTPDriver()
        s.send("EHLO c\r\n")
        s.send("STARTTLS\r\n")
        self.assertIsNone(s.proto.ehlo)
        self.assertEqual(s.send("STARTTLS\r\n"), [reply_line(R.TLS_ALREADY_ACTIVE)])

    def test_partial_command_after_starttls_is_discarded(self) -> None:
        """
        C{STARTTLS<CR><LF>NOOP} in one packet, C{<CR><LF>} after the
        handshake: the cleartext C{NOOP} must not be completed.
        """
        s = self.plain_session()
        self.assertEqual(s.send("STARTTLS\r\nNOOP"), [reply_line(R.READY_TO_START_TLS)])
        self.assertTrue(s.transport.tls_started)
        self.assertEqual(s.send("\r\n"), [reply_line(R.COMMAND_NOT_RECOGNIZED)])

    def test_injected_commands_discarded_at_every_split_inside_the_packet(self) -> None:
        injected = f"AUTH PLAIN {plain('apikey', TOKEN)}\r\nMAIL FROM:<a@example.com>\r\nNOOP\r\n"
        packet = ("STARTTLS\r\n" + injected).encode()
        for tail in range(len("STARTTLS\r\n"), len(packet) + 1):
            s = self.plain_session()
            self.assertEqual(s.send(packet[:tail]), [reply_line(R.READY_TO_START_TLS)])
            self.assertIsNone(s.proto.ehlo)
            self.assertFalse(s.proto.authenticated)
            self.assertEqual(inbuf(s.proto), bytearray())
            self.assertEqual(s.send("MAIL FROM:<a@example.com>\r\n"), [reply_line(R.NEED_EHLO)])

    def test_starttls_split_between_cr_and_lf(self) -> None:
        s = self.plain_session()
        self.assertEqual(s.send("STARTTLS\r"), [])
        self.assertEqual(s.send("\nNOOP\r\n"), [reply_line(R.READY_TO_START_TLS)])
        self.assertEqual(s.send("NOOP\r\n"), [reply_line(R.OK)])

    def test_starttls_discards_a_pending_long_line(self) -> None:
        s = self.plain_session()
        self.assertEqual(
            s.send(b"STARTTLS\r\n" + b"x" * 100000), [reply_line(R.READY_TO_START_TLS)]
        )
        self.assertEqual(s.proto.framing.discarding, 0)
        self.assertEqual(s.send("EHLO c\r\n")[0], f"250-{HOST}")

    def test_second_starttls_gets_503(self) -> None:
        s = self.plain_session()
        s.send("STARTTLS\r\n")
        s.ehlo()
        self.assertEqual(s.send("STARTTLS\r\n"), [reply_line(R.TLS_ALREADY_ACTIVE)])

    def test_starttls_with_argument_or_before_ehlo_is_refused(self) -> None:
        s = SMTPDriver()
        s.replies()
        self.assertEqual(s.send("STARTTLS\r\n"), [reply_line(R.NEED_EHLO)])
        s.ehlo()
        self.assertEqual(s.send("STARTTLS now\r\n"), [reply_line(R.SYNTAX_STARTTLS)])
        self.assertFalse(s.transport.tls_started)

    def test_starttls_not_offered_without_a_tls_context(self) -> None:
        s = SMTPDriver(context_factory=None)
        s.replies()
        self.assertNotIn("250-STARTTLS", s.ehlo())
        self.assertEqual(s.send("STARTTLS\r\n"), [reply_line(R.STARTTLS_NOT_AVAILABLE)])

    def test_starttls_forgets_ehlo_auth_and_the_transaction(self) -> None:
        """
        RFC 3207 section 4.2: everything learnt before TLS is forgotten:
        EHLO, AUTH, the transaction.
        """
        s = self.plain_session()
        s.proto.authenticated = True
        s.proto.avatar = s.delivery
        s.proto.transaction = Transaction("a@example.com", False, ["b@example.com"])
        s.send("STARTTLS\r\n")
        self.assertIsNone(s.proto.ehlo)
        self.assertFalse(s.proto.authenticated)
        self.assertIsNone(s.proto.avatar)
        self.assertIsNone(s.proto.transaction)
        self.assertEqual(s.send("MAIL FROM:<a@example.com>\r\n"), [reply_line(R.NEED_EHLO)])
        self.assertEqual(
            s.send(f"AUTH PLAIN {plain('apikey', TOKEN)}\r\n"),
            [reply_line(R.NEED_EHLO)],
        )
        s.ehlo()
        self.assertEqual(s.send("MAIL FROM:<a@example.com>\r\n"), [reply_line(R.AUTH_REQUIRED)])
        self.assertEqual(s.send("RCPT TO:<b@example.com>\r\n"), [reply_line(R.NEED_MAIL)])
        self.assertEqual(
            s.send(f"AUTH PLAIN {plain('apikey', TOKEN)}\r\n"), [reply_line(R.AUTH_SUCCESSFUL)]
        )
        self.check_wire(s)

    def test_auth_in_clear_is_refused_and_not_remembered(self) -> None:
        s = self.plain_session()
        self.assertEqual(
            s.send(f"AUTH PLAIN {plain('apikey', TOKEN)}\r\n"),
            [reply_line(R.ENCRYPTION_REQUIRED)],
        )
        self.assertEqual(
            s.send("AUTH LOGIN\r\n"),
            [reply_line(R.ENCRYPTION_REQUIRED)],
        )
        self.assertEqual(s.send("NOOP\r\n"), [reply_line(R.OK)])  # not in an AUTH exchange
        s.send("STARTTLS\r\n")
        s.ehlo()
        self.assertEqual(s.send("MAIL FROM:<a@example.com>\r\n"), [reply_line(R.AUTH_REQUIRED)])
