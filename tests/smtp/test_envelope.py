"""
Tests for MAIL and RCPT (RFC 5321 sections 4.1.1.2, 4.1.1.3) in
L{relayd.smtp.envelope}: parameters, address syntax, sequence, limits,
and the path grammar of L{relayd.smtp.syntax}.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from relayd import reply as R
from relayd.smtp.syntax import PathError, parse_path
from relayd.testing import FakeDelivery, SMTPDriver, reply_line
from tests.smtp.support import (
    WireChecks,
    logged_in,
    roomy,
)


class MailTests(SynchronousTestCase):
    """
    MAIL and RCPT after AUTH.
    """

    def setUp(self) -> None:
        self.s = SMTPDriver(implicit_tls=True)
        self.s.login()

    def test_mail_rcpt_data_delivers_one_message(self) -> None:
        s = self.s
        self.assertEqual(s.send("MAIL FROM:<a@example.com>\r\n"), [reply_line(R.SENDER_OK)])
        self.assertEqual(s.send("RCPT TO:<b@example.net>\r\n"), [reply_line(R.RECIPIENT_OK)])
        self.assertEqual(s.send("RCPT TO:<c@example.net>\r\n"), [reply_line(R.RECIPIENT_OK)])
        self.assertEqual(s.send("DATA\r\n"), [reply_line(R.START_MAIL_INPUT)])
        self.assertEqual(
            s.send("Subject: hi\r\n\r\nbody\r\n..dot\r\n.\r\n"), [reply_line(R.queued("fake-1"))]
        )
        (sent,) = s.delivery.sent
        self.assertEqual(sent.mail_from, "a@example.com")
        self.assertEqual(sent.rcpt_to, ["b@example.net", "c@example.net"])
        self.assertEqual(sent.data, b"Subject: hi\r\n\r\nbody\r\n.dot\r\n")

    def test_size_over_the_limit_gets_552_and_bad_size_501(self) -> None:
        s = self.s
        self.assertEqual(
            s.send("MAIL FROM:<a@example.com> SIZE=999999999\r\n"),
            [reply_line(R.MESSAGE_TOO_BIG)],
        )
        self.assertEqual(s.send("MAIL FROM:<a@example.com> SIZE=big\r\n"), [reply_line(R.BAD_SIZE)])
        self.assertEqual(
            s.send("MAIL FROM:<a@example.com> SIZE=1000 BODY=8BITMIME\r\n"),
            [reply_line(R.SENDER_OK)],
        )

    def test_unknown_parameters_get_555(self) -> None:
        s = self.s
        self.assertEqual(
            s.send("MAIL FROM:<a@example.com> RET=FULL\r\n"),
            [reply_line(R.unsupported_parameter("RET"))],
        )
        s.send("MAIL FROM:<a@example.com>\r\n")
        self.assertEqual(
            s.send("RCPT TO:<b@example.com> NOTIFY=NEVER\r\n"),
            [reply_line(R.unsupported_parameter("NOTIFY"))],
        )

    def test_body_7bit_is_accepted_and_binarymime_refused(self) -> None:
        self.assertEqual(
            self.s.send("MAIL FROM:<a@example.com> BODY=7BIT\r\n"), [reply_line(R.SENDER_OK)]
        )
        self.s.send("RSET\r\n")
        self.assertEqual(
            self.s.send("MAIL FROM:<a@example.com> BODY=BINARYMIME\r\n"),
            [reply_line(R.UNSUPPORTED_BODY)],
        )

    def test_non_ascii_address_needs_smtputf8(self) -> None:
        s = self.s
        self.assertEqual(
            s.send("MAIL FROM:<jörg@example.com>\r\n"),
            [reply_line(R.NON_ASCII_ADDRESS)],
        )
        self.assertEqual(
            s.send("MAIL FROM:<jörg@example.com> SMTPUTF8\r\n"), [reply_line(R.SENDER_OK)]
        )
        self.assertEqual(s.send("RCPT TO:<用户@例子.广告>\r\n"), [reply_line(R.RECIPIENT_OK)])
        s.send("DATA\r\n")
        s.send("Subject: =?utf-8?q?x?=\r\n\r\nhé\r\n.\r\n")
        self.assertEqual(s.delivery.sent[0].rcpt_to, ["用户@例子.广告"])

    def test_commands_out_of_sequence_get_503_or_554(self) -> None:
        s = self.s
        self.assertEqual(s.send("RCPT TO:<b@example.com>\r\n"), [reply_line(R.NEED_MAIL)])
        self.assertEqual(s.send("DATA\r\n"), [reply_line(R.NEED_MAIL)])
        s.send("MAIL FROM:<a@example.com>\r\n")
        self.assertEqual(s.send("MAIL FROM:<a@example.com>\r\n"), [reply_line(R.NESTED_MAIL)])
        self.assertEqual(s.send("DATA\r\n"), [reply_line(R.NO_VALID_RECIPIENTS)])

    def test_bad_addresses_get_501(self) -> None:
        s = self.s
        self.assertEqual(s.send("MAIL FROM a@example.com\r\n"), [reply_line(R.SYNTAX_MAIL)])
        self.assertEqual(
            s.send("MAIL FROM:<not an address>\r\n"), [reply_line(R.BAD_SENDER_SYNTAX)]
        )
        self.assertEqual(s.send("MAIL FROM:<a@@b>\r\n"), [reply_line(R.BAD_SENDER_SYNTAX)])
        self.assertEqual(s.send("MAIL FROM:<>\r\n"), [reply_line(R.SENDER_OK)])
        self.assertEqual(s.send("RCPT TO:<>\r\n"), [reply_line(R.BAD_RECIPIENT_SYNTAX)])
        self.assertEqual(
            s.send("RCPT TO:<@relay.example:b@example.com>\r\n"), [reply_line(R.RECIPIENT_OK)]
        )

    def test_too_many_recipients_gets_452(self) -> None:
        s = self.s
        s.send("MAIL FROM:<a@example.com>\r\n")
        lines = s.send("".join(f"RCPT TO:<r{i}@example.com>\r\n" for i in range(101)))
        self.assertEqual(lines[:100], [reply_line(R.RECIPIENT_OK)] * 100)
        self.assertEqual(lines[100:], [reply_line(R.TOO_MANY_RECIPIENTS)])

    def test_sender_refused_by_the_avatar_gets_550(self) -> None:
        self.s.delivery.allowed_senders = ("ok@example.com",)
        self.assertEqual(
            self.s.send("MAIL FROM:<a@example.com>\r\n"), [reply_line(R.SENDER_NOT_ALLOWED)]
        )
        self.assertEqual(self.s.send("MAIL FROM:<ok@example.com>\r\n"), [reply_line(R.SENDER_OK)])

    def test_postmaster_without_domain_is_accepted(self) -> None:
        """
        RFC 5321 section 4.1.1.3: RCPT TO:<Postmaster> is accepted.
        """
        s = SMTPDriver(implicit_tls=True)
        s.login()
        s.send("MAIL FROM:<a@example.com>\r\n")
        self.assertEqual(s.send("RCPT TO:<Postmaster>\r\n"), [reply_line(R.RECIPIENT_OK)])
        self.assertEqual(s.send("RCPT TO:<nobody>\r\n"), [reply_line(R.BAD_RECIPIENT_SYNTAX)])

    def test_mail_line_may_be_500_octets_longer_for_auth(self) -> None:
        """
        RFC 4954 section 5: a MAIL FROM with AUTH= may exceed 512 octets by
        500; other commands may not.
        """
        s = SMTPDriver(implicit_tls=True)
        s.login()
        auth = "<" + "a" * 600 + "@example.com>"
        self.assertEqual(
            s.send(f"MAIL FROM:<a@example.com> AUTH={auth}\r\n"), [reply_line(R.SENDER_OK)]
        )
        self.assertEqual(s.send("NOOP " + "x" * 600 + "\r\n"), [reply_line(R.LINE_TOO_LONG)])


class EnvelopeTests(SynchronousTestCase, WireChecks):
    """
    Recipients, parameters and resets a hostile client may send.
    """

    def test_101st_recipient_gets_452_and_the_message_still_goes(self) -> None:
        s = logged_in()
        s.send("MAIL FROM:<a@example.com>\r\n")
        lines = s.send("".join(f"RCPT TO:<r{i}@example.com>\r\n" for i in range(103)))
        self.assertEqual(
            lines, [reply_line(R.RECIPIENT_OK)] * 100 + [reply_line(R.TOO_MANY_RECIPIENTS)] * 3
        )
        self.assertEqual(
            s.send("DATA\r\nx\r\n.\r\n"),
            [reply_line(R.START_MAIL_INPUT), reply_line(R.queued("fake-1"))],
        )
        self.assertEqual(len(s.delivery.sent[0].rcpt_to), 100)

    def test_token_recipient_limit_gets_452(self) -> None:
        delivery = FakeDelivery()
        delivery.max_recipients = 2  # type: ignore[assignment]
        s = logged_in(delivery=delivery)
        s.send("MAIL FROM:<a@example.com>\r\n")
        self.assertEqual(
            s.send(
                "RCPT TO:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nRCPT TO:<c@example.com>\r\n"
            ),
            [
                reply_line(R.RECIPIENT_OK),
                reply_line(R.RECIPIENT_OK),
                reply_line(R.TOO_MANY_RECIPIENTS),
            ],
        )

    def test_unknown_mail_and_rcpt_parameters_get_555(self) -> None:
        s = logged_in(limits=roomy())
        for param in ("RET=FULL", "ENVID=x", "MT-PRIORITY=3", "REQUIRETLS", "X-FOO"):
            self.assertEqual(
                s.send(f"MAIL FROM:<a@example.com> {param}\r\n")[0][:9], "555 5.5.4", param
            )
        s.send("MAIL FROM:<a@example.com>\r\n")
        for param in ("NOTIFY=NEVER", "ORCPT=rfc822;b@example.com", "X-FOO"):
            self.assertEqual(
                s.send(f"RCPT TO:<b@example.com> {param}\r\n")[0][:9], "555 5.5.4", param
            )
        self.check_wire(s)

    def test_rset_forgets_recipients(self) -> None:
        s = logged_in()
        s.send("MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nRSET\r\n")
        self.assertEqual(s.send("DATA\r\n"), [reply_line(R.NEED_MAIL)])
        s.send("MAIL FROM:<c@example.com>\r\nRCPT TO:<d@example.com>\r\nDATA\r\nx\r\n.\r\n")
        self.assertEqual(s.delivery.sent[0].rcpt_to, ["d@example.com"])

    def test_ehlo_mid_transaction_resets_it(self) -> None:
        s = logged_in()
        s.send("MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\n")
        s.ehlo()
        self.assertEqual(s.send("DATA\r\n"), [reply_line(R.NEED_MAIL)])
        self.assertTrue(s.proto.authenticated)


class PathTests(SynchronousTestCase):
    """
    The reverse-path and forward-path grammar (RFC 5321 section 4.1.2).
    """

    def test_valid_paths_give_the_mailbox(self) -> None:
        self.assertEqual(parse_path("<a@example.com>"), "a@example.com")
        self.assertEqual(parse_path("a@example.com"), "a@example.com")
        self.assertEqual(parse_path('<"a b"@example.com>'), '"a b"@example.com')
        self.assertEqual(parse_path("<a@[192.0.2.1]>"), "a@[192.0.2.1]")
        self.assertEqual(parse_path("<>", allow_empty=True), "")

    def test_invalid_paths_raise_path_error(self) -> None:
        for bad in ("<>", "<a>", "<a@>", "<@b>", "<a@b", "a b@c", "<a@-b.com>", "<a..b@c>"):
            self.assertRaises(PathError, parse_path, bad)
