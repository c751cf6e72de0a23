"""
Tests for PIPELINING (RFC 2920) in L{relayd.smtp.session}: replies in
command order while a validation or the upstream is pending, input held
meanwhile, and DATA as a synchronisation point.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from relayd import reply as R
from relayd.testing import SMTPDriver, reply_line
from tests.smtp.support import (
    HOST,
    SMUGGLE,
    WireChecks,
    logged_in,
)


class PipeliningTests(SynchronousTestCase, WireChecks):
    """
    Replies come in command order.
    """

    def test_replies_in_order_while_validation_is_pending(self) -> None:
        """
        RFC 2920: with validations that answer later, a pipelined group
        still gets its replies in command order, and DATA's 354 only after
        the RCPT replies.
        """
        s = SMTPDriver(implicit_tls=True)
        s.login()
        s.delivery.hold = True
        lines = s.send(
            "MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\n"
            "RCPT TO:<c@example.com>\r\nDATA\r\n"
        )
        self.assertEqual(lines, [])
        self.assertTrue(s.transport.producerState == "paused")
        s.delivery.release()
        self.assertEqual(s.replies(), [reply_line(R.SENDER_OK)])
        s.delivery.release()
        self.assertEqual(s.replies(), [reply_line(R.RECIPIENT_OK)])
        s.delivery.release()
        self.assertEqual(s.replies(), [reply_line(R.RECIPIENT_OK), reply_line(R.START_MAIL_INPUT)])
        self.assertEqual(s.transport.producerState, "producing")

    def test_commands_after_data_wait_for_the_upstream(self) -> None:
        s = SMTPDriver(implicit_tls=True)
        s.login()
        s.delivery.hold_eom = True
        s.send("MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n")
        self.assertEqual(s.send("x\r\n.\r\nNOOP\r\nQUIT\r\n"), [])
        s.delivery.release_eom()
        self.assertEqual(
            s.replies(), [reply_line(R.queued("fake-1")), reply_line(R.OK), reply_line(R.BYE)]
        )

    def test_replies_in_order_with_rset_and_noop_between(self) -> None:
        s = logged_in()
        s.delivery.hold = True
        lines = s.send(
            "MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nRSET\r\nNOOP\r\n"
            "MAIL FROM:<c@example.com>\r\nRCPT TO:<d@example.com>\r\nNOOP\r\nRCPT TO:<e@example.com>\r\nDATA\r\n"
        )
        self.assertEqual(lines, [])
        self.assertEqual(s.transport.producerState, "paused")
        expected = [
            [reply_line(R.SENDER_OK)],
            [reply_line(R.RECIPIENT_OK), reply_line(R.OK), reply_line(R.OK)],
            [reply_line(R.SENDER_OK)],
            [reply_line(R.RECIPIENT_OK), reply_line(R.OK)],
            [reply_line(R.RECIPIENT_OK), reply_line(R.START_MAIL_INPUT)],
        ]
        for want in expected:
            s.delivery.release()
            self.assertEqual(s.replies(), want)
        self.assertEqual(s.transport.producerState, "producing")
        self.assertEqual(s.send("body\r\n.\r\n"), [reply_line(R.queued("fake-1"))])
        (sent,) = s.delivery.sent
        self.assertEqual(
            (sent.mail_from, sent.rcpt_to, sent.data),
            ("c@example.com", ["d@example.com", "e@example.com"], b"body\r\n"),
        )
        self.check_wire(s)

    def test_body_in_same_packet_as_data_with_async_validation(self) -> None:
        """
        A client that does not wait for 354 (against RFC 2920): when DATA
        is accepted, the body that came with it is the message, whole.
        """
        s = logged_in()
        s.delivery.hold = True
        stream = (
            b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nDATA\r\nSubject: x\r\n\r\n..dot\r\n"
            + SMUGGLE
            + b".\r\nNOOP\r\n"
        )
        self.assertEqual(s.send(stream), [])
        s.delivery.release()
        s.delivery.release()
        self.assertEqual(
            s.replies(),
            [
                reply_line(R.SENDER_OK),
                reply_line(R.RECIPIENT_OK),
                reply_line(R.START_MAIL_INPUT),
                reply_line(R.queued("fake-1")),
                reply_line(R.OK),
            ],
        )
        self.assertEqual(s.delivery.sent[0].data, b"Subject: x\r\n\r\n.dot\r\n" + SMUGGLE)
        self.assertEqual(len(s.delivery.sent), 1)

    def test_body_in_same_packet_split_anywhere(self) -> None:
        stream = b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nDATA\r\nhello\r\n.\r\nNOOP\r\n"
        for cut in range(1, len(stream)):
            s = logged_in()
            s.delivery.hold = True
            lines = s.feed(stream, [cut])
            while s.delivery._held:
                s.delivery.release()
            lines += s.replies()
            self.assertEqual(
                lines,
                [
                    reply_line(R.SENDER_OK),
                    reply_line(R.RECIPIENT_OK),
                    reply_line(R.START_MAIL_INPUT),
                    reply_line(R.queued("fake-1")),
                    reply_line(R.OK),
                ],
                cut,
            )
            self.assertEqual(s.delivery.sent[0].data, b"hello\r\n")

    def test_next_transaction_waits_for_the_upstream(self) -> None:
        s = logged_in()
        s.delivery.hold_eom = True
        s.start()
        lines = s.send(
            b"one\r\n.\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<c@example.com>\r\nDATA\r\ntwo\r\n.\r\nQUIT\r\n"
        )
        self.assertEqual(lines, [])
        self.assertEqual(s.transport.producerState, "paused")
        s.delivery.release_eom()
        self.assertEqual(
            s.replies(),
            [
                reply_line(R.queued("fake-1")),
                reply_line(R.SENDER_OK),
                reply_line(R.RECIPIENT_OK),
                reply_line(R.START_MAIL_INPUT),
            ],
        )
        s.delivery.release_eom()
        self.assertEqual(s.replies(), [reply_line(R.queued("fake-2")), reply_line(R.BYE)])
        self.assertEqual([m.data for m in s.delivery.sent], [b"one\r\n", b"two\r\n"])

    def test_bytes_arriving_while_paused_are_kept_in_order(self) -> None:
        s = logged_in()
        s.delivery.hold = True
        self.assertEqual(s.send("MAIL FROM:<a@example.com>\r\n"), [])
        for b in b"NOOP\r\nRSET\r\nNOOP\r\n":
            s.send(bytes([b]))
        s.delivery.release()
        self.assertEqual(
            s.replies(),
            [reply_line(R.SENDER_OK), reply_line(R.OK), reply_line(R.OK), reply_line(R.OK)],
        )
        self.assertIsNone(s.proto.transaction)

    def test_connection_lost_while_pending_writes_nothing(self) -> None:
        s = logged_in()
        s.delivery.hold = True
        s.send("MAIL FROM:<a@example.com>\r\nNOOP\r\n")
        s.close()
        s.delivery.release()
        self.assertEqual(s.replies(), [])
        self.assertEqual(s.clock.getDelayedCalls(), [])

    def test_no_idle_timeout_while_relayd_waits(self) -> None:
        """
        While relayd waits for the upstream, the client's idle timer does
        not run; it starts again with the reply.
        """
        s = logged_in()
        s.delivery.hold_eom = True
        s.start()
        s.send("x\r\n.\r\nNOOP\r\n")
        s.clock.advance(600)
        self.assertEqual(s.replies(), [])
        s.delivery.release_eom()
        self.assertEqual(s.replies()[1:], [reply_line(R.OK)])
        s.clock.advance(300)
        self.assertEqual(s.replies(), [reply_line(R.IDLE_TIMEOUT, HOST)])

    def test_refused_data_then_pipelined_body_is_not_run_as_commands(self) -> None:
        """
        A client that does not wait for 354 (RFC 2920 violation) and whose
        DATA is refused: its body is executed as commands; a RCPT hidden
        in the body joins the transaction and a hidden DATA sends the
        attacker's text.  Exim treats DATA as a synchronisation point.
        """
        s = logged_in()
        lines = s.send(
            b"MAIL FROM:<a@example.com>\r\nRCPT TO:<>\r\nDATA\r\n"
            b"Subject: hi\r\n\r\n" + SMUGGLE + b".\r\n"
        )
        self.assertNotIn(reply_line(R.START_MAIL_INPUT), lines)
        self.assertEqual(s.delivery.sent, [])
