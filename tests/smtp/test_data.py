"""
Tests for DATA (RFC 5321 section 4.1.1.4) in L{relayd.smtp.envelope} and
L{relayd.smtp.session}: line ends, line and size limits at the final dot,
the reply to the final dot, and a client that leaves before it.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.trial.unittest import SynchronousTestCase

from relayd import reply as R
from relayd.config import LimitsConfig
from relayd.reply import Reply
from relayd.testing import FakeDelivery, SMTPDriver, reply_line
from tests.smtp.support import (
    data_parts,
    logged_in,
)


class _TwoMessageDelivery(FakeDelivery):
    """
    An avatar whose recipients get separate messages; the second one is
    refused by its upstream.
    """

    def validateTo(self, user: str) -> Any:
        owner = self

        class Msg:
            def __init__(self) -> None:
                self.parts: list[bytes] = []

            def bodyReceived(self, data: bytes) -> None:
                self.parts.append(data)

            def eomReceived(self) -> defer.Deferred[Reply]:
                if user.startswith("refused"):
                    return defer.succeed(Reply(550, "5.1.1", "Mailbox unavailable"))
                owner.sent.append(b"".join(self.parts))  # type: ignore[arg-type]
                return defer.succeed(Reply(250, "2.0.0", "Ok"))

            def connectionLost(self) -> None:
                pass

        message = Msg()
        return lambda: message


class _RaisingFactoryDelivery(FakeDelivery):
    def validateTo(self, user: str) -> Any:
        def factory() -> Any:
            raise RuntimeError("cannot open message")

        return factory


class DataTests(SynchronousTestCase):
    """
    The message content after a 354.
    """

    def setUp(self) -> None:
        # The line limit pinned at RFC 5322's 998 octets (the default is
        # roomier): these tests are about that limit's enforcement.
        self.s = SMTPDriver(implicit_tls=True, limits=LimitsConfig(max_line_length=998))
        self.s.login()

    def test_bare_lf_in_data_is_normalized_to_crlf(self) -> None:
        self.s.start()
        self.s.send(b"Subject: a\nX: b\r\n\nline\rmore\r\n.\r\n")
        self.assertEqual(
            self.s.delivery.sent[0].data, b"Subject: a\r\nX: b\r\n\r\nline\r\nmore\r\n"
        )

    def test_bare_lf_in_data_gets_550_in_reject_mode(self) -> None:
        s = SMTPDriver(implicit_tls=True, limits=LimitsConfig(bare_newline="reject"))
        s.login()
        s.start()
        self.assertEqual(
            s.send(b"Subject: a\n\nbody\r\n.\r\n"),
            [reply_line(R.BARE_NEWLINE_IN_DATA)],
        )
        self.assertEqual(s.delivery.sent, [])

    def test_message_over_size_fails_at_the_dot_and_session_goes_on(self) -> None:
        s = SMTPDriver(implicit_tls=True, limits=LimitsConfig(max_message_size=1000))
        s.login()
        s.start()
        for _ in range(100):
            s.send(b"y" * 70 + b"\r\n")
        self.assertEqual(s.send(b".\r\n"), [reply_line(R.MESSAGE_TOO_BIG)])
        self.assertEqual(s.delivery.sent, [])
        self.assertLess(sum(map(len, data_parts(s.proto))), 2000)
        self.assertEqual(s.send("NOOP\r\n"), [reply_line(R.OK)])

    def test_long_data_line_fails_and_rest_is_not_read_as_commands(self) -> None:
        """
        A 16 KiB line in DATA makes the message fail at the final dot; the
        commands inside the body are never executed.
        """
        self.s.start()
        lines = self.s.send(
            b"a" * 16384
            + b"\r\nMAIL FROM:<evil@example.com>\r\nRCPT TO:<v@example.com>\r\nDATA\r\nevil\r\n"
        )
        self.assertEqual(lines, [])
        self.assertEqual(self.s.send(b"\r\n.\r\n"), [reply_line(R.message_line_too_long(998))])
        self.assertEqual(self.s.delivery.sent, [])

    def test_long_data_line_split_over_packets_fails(self) -> None:
        self.s.start()
        for _ in range(20):
            self.s.send(b"b" * 1000)
        self.assertEqual(self.s.send(b"\r\n.\r\n"), [reply_line(R.message_line_too_long(998))])

    def test_998_octet_lines_pass(self) -> None:
        self.s.start()
        self.s.send(b"." + b"c" * 997 + b"\r\n" + b"d" * 998 + b"\r\n")
        self.assertEqual(self.s.send(b".\r\n"), [reply_line(R.queued("fake-1"))])

    def test_data_line_of_999_octets_without_dot_fails(self) -> None:
        """
        RFC 5321 section 4.5.3.1.6: 998 octets plus CRLF.  The slack meant
        for a stuffed dot applies to every line.
        """
        s = logged_in(limits=LimitsConfig(max_line_length=998))
        s.start()
        self.assertEqual(
            s.send(b"z" * 999 + b"\r\n.\r\n"), [reply_line(R.message_line_too_long(998))]
        )

    def test_data_with_argument_gets_501(self) -> None:
        s = logged_in()
        s.send("MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\n")
        self.assertEqual(s.send("DATA x\r\n"), [reply_line(R.SYNTAX_DATA)])
        self.assertEqual(s.send("DATA\r\n"), [reply_line(R.START_MAIL_INPUT)])


class FinalReplyTests(SynchronousTestCase):
    """
    The reply to the final dot is the upstream's verdict on every message.
    """

    def setUp(self) -> None:
        self.s = SMTPDriver(implicit_tls=True)
        self.s.login()

    def test_upstream_failure_reply_is_passed_on(self) -> None:
        self.s.delivery.result = ("451", "4.3.0", "Temporary failure, try again later")
        self.s.send("MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n")
        self.assertEqual(
            self.s.send("x\r\n.\r\n"), ["451 4.3.0 Temporary failure, try again later"]
        )

    def test_upstream_rejection_is_passed_on(self) -> None:
        s = logged_in()
        s.delivery.result = ("550", "5.7.1", "Rejected by policy")
        s.start()
        self.assertEqual(s.send("x\r\n.\r\n"), ["550 5.7.1 Rejected by policy"])

    def test_one_refused_message_refuses_the_transaction(self) -> None:
        """
        When the recipients of a transaction got several messages and one
        of them is refused, the final dot does not get 250 (the shipped
        avatar makes one message per transaction; an avatar may make
        more).
        """
        s = logged_in(delivery=_TwoMessageDelivery())
        s.send(
            "MAIL FROM:<a@example.com>\r\nRCPT TO:<ok@example.com>\r\nRCPT TO:<refused@example.com>\r\nDATA\r\n"
        )
        lines = s.send("x\r\n.\r\n")
        self.assertNotEqual(lines[0][:3], "250")

    def test_message_that_cannot_be_opened_gets_451(self) -> None:
        """
        A message that cannot be opened at DATA gets 451, is logged, and
        the session goes on (the shipped avatar's factory cannot raise).
        """
        s = logged_in(delivery=_RaisingFactoryDelivery())
        s.send("MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\n")
        self.assertEqual(s.send("DATA\r\n"), [reply_line(R.LOCAL_ERROR)])
        self.flushLoggedErrors(RuntimeError)
        self.assertEqual(s.send("NOOP\r\n"), [reply_line(R.OK)])

    def test_client_gone_before_a_250_is_logged(self) -> None:
        """
        When the client left while the upstream took its message, nothing
        is written, and the log says it may send the message again.
        """
        from twisted.logger import capturedLogs

        s = SMTPDriver(implicit_tls=True)
        s.login()
        s.delivery.hold_eom = True
        s.send("MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nDATA\r\nx\r\n.\r\n")
        s.close()
        with capturedLogs() as events:
            s.delivery.release_eom()
        self.assertEqual(s.replies(), [])
        warnings = [e for e in events if "left before the reply" in e.get("log_format", "")]
        self.assertEqual(len(warnings), 1)
        self.assertEqual(s.factory.tracker.pending, 0)
