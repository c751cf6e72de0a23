"""
Tests for L{relayd.smtp.session}: the greeting, the simple verbs, what is
not a command, the shape of every reply, TCP_NODELAY and draining on stop.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.trial.unittest import SynchronousTestCase

from relayd import reply as R
from relayd.config import LimitsConfig
from relayd.reply import Refused, Reply
from relayd.testing import TOKEN, FakeDelivery, SMTPDriver, reply_line
from tests.smtp.support import (
    WireChecks,
    logged_in,
    plain,
    roomy,
)


class GreetingTests(SynchronousTestCase):
    """
    The 220 greeting, EHLO and HELO.
    """

    def test_greeting_names_the_host(self) -> None:
        """
        The 220 greeting gives the configured hostname and no joke text.
        """
        s = SMTPDriver()
        self.assertEqual(s.replies(), ["220 mx.example.test ESMTP relayd ready"])

    def test_ehlo_without_argument_gets_501(self) -> None:
        s = SMTPDriver()
        s.replies()
        self.assertEqual(s.send("EHLO\r\n"), [reply_line(R.SYNTAX_EHLO)])

    def test_helo_gets_the_hostname(self) -> None:
        s = SMTPDriver()
        s.replies()
        self.assertEqual(s.send("HELO client\r\n"), ["250 mx.example.test"])


class CommandTests(SynchronousTestCase, WireChecks):
    """
    The simple verbs, and lines that are not commands.
    """

    def test_simple_verbs_and_quit(self) -> None:
        """
        NOOP, RSET, HELP, VRFY, EXPN, BDAT, unknown and QUIT replies.
        """
        s = SMTPDriver()
        s.replies()
        self.assertEqual(s.send("NOOP\r\n"), [reply_line(R.OK)])
        self.assertEqual(s.send("RSET\r\n"), [reply_line(R.OK)])
        self.assertTrue(s.send("HELP\r\n")[0].startswith("214 2.0.0 "))
        self.assertTrue(s.send("VRFY bob\r\n")[0].startswith("252 2.5.0 "))
        self.assertTrue(s.send("EXPN list\r\n")[0].startswith("502 5.5.1 "))
        self.assertTrue(s.send("BDAT 10 LAST\r\n")[0].startswith("502 5.5.1 "))
        self.assertEqual(s.send("FOO\r\n"), [reply_line(R.COMMAND_NOT_RECOGNIZED)])
        self.assertEqual(s.send("QUIT\r\n"), [reply_line(R.BYE)])
        self.assertTrue(s.transport.disconnecting)
        self.assertEqual(s.send("NOOP\r\n"), [])

    def test_vrfy_expn_bdat_and_old_verbs_are_refused(self) -> None:
        s = logged_in()
        self.assertEqual(s.send("VRFY postmaster\r\n")[0][:9], "252 2.5.0")
        self.assertEqual(s.send("vrfy\r\n")[0][:9], "252 2.5.0")
        self.assertEqual(s.send("EXPN list\r\n")[0][:9], "502 5.5.1")
        self.assertEqual(s.send("BDAT 0 LAST\r\n")[0][:9], "502 5.5.1")
        self.assertEqual(s.send("bdat 5\r\n")[0][:9], "502 5.5.1")
        for verb in (
            "ETRN x",
            "TURN",
            "SEND FROM:<a@b.c>",
            "SOML FROM:<a@b.c>",
            "SAML FROM:<a@b.c>",
        ):
            self.assertEqual(s.send(verb + "\r\n")[0][:9], "502 5.5.1", verb)
        self.check_wire(s)

    def test_verbs_in_lower_case_are_commands(self) -> None:
        s = logged_in()
        self.assertEqual(s.send("noop\r\n"), [reply_line(R.OK)])
        self.assertEqual(
            s.send("mail from:<a@example.com>\r\nrcpt to:<b@example.com>\r\ndata\r\n"),
            [reply_line(R.SENDER_OK), reply_line(R.RECIPIENT_OK), reply_line(R.START_MAIL_INPUT)],
        )

    def test_invalid_utf8_and_control_bytes_get_500(self) -> None:
        s = SMTPDriver(implicit_tls=True, limits=roomy())
        s.replies()
        self.assertEqual(s.send(b"NOOP\xff\r\n"), [reply_line(R.COMMAND_NOT_UTF8)])
        self.assertEqual(s.send(b"\x1b[2J\r\n"), [reply_line(R.COMMAND_NOT_RECOGNIZED)])
        self.assertEqual(s.send(b"\r\n"), [reply_line(R.COMMAND_NOT_RECOGNIZED)])
        self.assertEqual(
            s.send(b"MAIL\tFROM:<a@example.com>\r\n"), [reply_line(R.COMMAND_NOT_RECOGNIZED)]
        )
        self.check_wire(s)

    def test_bare_lf_ends_a_command_in_normalize_mode(self) -> None:
        s = SMTPDriver(implicit_tls=True)
        s.replies()
        self.assertEqual(s.send(b"NOOP\nNOOP\r\n"), [reply_line(R.OK), reply_line(R.OK)])

    def test_bare_lf_command_gets_550_in_reject_mode(self) -> None:
        s = SMTPDriver(implicit_tls=True, limits=LimitsConfig(bare_newline="reject"))
        s.replies()
        self.assertEqual(
            s.send(b"NOOP\nNOOP\r\n"), [reply_line(R.BARE_LF_IN_COMMAND), reply_line(R.OK)]
        )

    def test_nul_anywhere_in_a_command_gets_501(self) -> None:
        s = logged_in()
        for line in (
            b"\0NOOP\r\n",
            b"NOOP\0\r\n",
            b"NO\0OP\r\n",
            b"MAIL FROM:<a\0@example.com>\r\n",
            b"\0\r\n",
        ):
            self.assertEqual(s.send(line), [reply_line(R.NUL_IN_COMMAND)], line)
        self.assertEqual(s.send(b"NOOP\r\n"), [reply_line(R.OK)])

    def test_non_ascii_verb_is_not_a_command(self) -> None:
        """
        C{str.isalpha}/C{str.upper} are Unicode: U+0131 upper-cases to
        C{I}, U+017F to C{S}, U+FB06 to C{ST}.
        """
        s = SMTPDriver()
        s.replies()
        s.ehlo()
        self.assertEqual(s.send("\ufb06ARTTL\u017f\r\n"), [reply_line(R.COMMAND_NOT_RECOGNIZED)])
        self.assertFalse(s.transport.tls_started)
        self.assertEqual(s.send("QU\u0131T\r\n"), [reply_line(R.COMMAND_NOT_RECOGNIZED)])

    @settings(max_examples=100, deadline=None)
    @given(st.binary(max_size=2000), st.lists(st.integers(min_value=1, max_value=200), max_size=30))
    def test_random_bytes_in_command_mode_get_only_replies(
        self, stream: bytes, cuts: list[int]
    ) -> None:
        s = SMTPDriver()
        pos = 0
        for cut in cuts + [len(stream)]:
            s.proto.dataReceived(stream[pos : pos + cut])
            pos += cut
        for line in s.replies():
            self.assertRegex(line, r"^\d{3}[ -]")
        self.assertEqual(s.delivery.sent, [])


class NulCommandTests(SynchronousTestCase):
    """
    A NUL in a command line after AUTH.
    """

    def setUp(self) -> None:
        self.s = SMTPDriver(implicit_tls=True)
        self.s.login()

    def test_nul_in_command_gets_501(self) -> None:
        self.assertEqual(self.s.send(b"NO\0OP\r\n"), [reply_line(R.NUL_IN_COMMAND)])


class _ExplodingDelivery(FakeDelivery):
    def validateFrom(self, helo: Any, origin: str, smtputf8: bool = False) -> Any:
        if origin == "boom@example.com":
            raise RuntimeError("Traceback: secret internals")
        return super().validateFrom(helo, origin, smtputf8)


class _MultiLineRejectDelivery(FakeDelivery):
    def validateFrom(self, helo: Any, origin: str, smtputf8: bool = False) -> Any:
        raise Refused(Reply(550, "5.7.1", "Sender not allowed\r\n250 2.1.0 Ok"))


class ReplyShapeTests(SynchronousTestCase, WireChecks):
    """
    Every reply is one well-formed line, with no internals.
    """

    def test_every_reply_of_a_whole_conversation_is_well_formed(self) -> None:
        s = SMTPDriver(limits=roomy())
        s.send("HELO c\r\nEHLO c\r\nHELP\r\nVRFY x\r\nEXPN y\r\nFOO\r\nSTARTTLS\r\n")
        s.send("EHLO c\r\nAUTH LOGIN\r\n*\r\nAUTH PLAIN\r\n=\r\n")
        s.send(f"AUTH PLAIN {plain('apikey', 'bad')}\r\n")
        s.clock.advance(5)
        s.send(f"AUTH PLAIN {plain('apikey', TOKEN)}\r\n")
        s.send(
            "MAIL FROM:<a@example.com> SIZE=1 BODY=8BITMIME\r\nRCPT TO:<b@example.com>\r\nRCPT TO:<>\r\nDATA\r\nx\r\n.\r\n"
        )
        s.send(
            "MAIL FROM:<a@example.com> RET=HDRS\r\nRCPT TO:<b@example.com>\r\nRSET\r\nNOOP\r\nBDAT 1\r\nQUIT\r\nNOOP\r\n"
        )
        self.check_wire(s)
        self.assertTrue(s.transport.disconnecting)

    def test_handler_failure_gets_451_without_details(self) -> None:
        s = logged_in(delivery=_ExplodingDelivery())
        self.assertEqual(
            s.send("MAIL FROM:<boom@example.com>\r\n"),
            [reply_line(R.LOCAL_ERROR)],
        )
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual(s.send("MAIL FROM:<a@example.com>\r\n"), [reply_line(R.SENDER_OK)])
        self.check_wire(s)

    def test_reply_text_cannot_inject_lines(self) -> None:
        """
        LATENT (today's rejection texts are clean): L{RelaySMTP.reply}
        writes the text as given, so a CR/LF in it forges a reply.
        """
        s = logged_in(delivery=_MultiLineRejectDelivery())
        s.send("MAIL FROM:<a@example.com>\r\n")
        lines = bytes(s.transport.wire).split(b"\r\n")
        self.assertNotIn(b"250 2.1.0 Ok", lines)


class NoDelayTests(SynchronousTestCase):
    """
    Replies are not held back by Nagle's algorithm.
    """

    def test_nagle_is_turned_off(self) -> None:
        """
        Replies are small writes: TCP_NODELAY is set on the connection, also
        when it sits under a TLS wrapper.
        """
        from twisted.internet.testing import StringTransport

        class TCP(StringTransport):
            nodelay = False

            def setTcpNoDelay(self, enabled: bool) -> None:
                self.nodelay = enabled

        class Wrapper(StringTransport):
            def __init__(self, below: TCP) -> None:
                super().__init__(peerAddress=IPv4Address("TCP", "192.0.2.9", 1))
                self.transport = below

        for make in (lambda tcp: tcp, Wrapper):
            tcp = TCP(peerAddress=IPv4Address("TCP", "192.0.2.9", 1))
            factory = SMTPDriver().factory
            factory.buildProtocol(None).makeConnection(make(tcp))
            self.assertTrue(tcp.nodelay)


class DrainTests(SynchronousTestCase):
    """
    Stopping the service waits for the replies owed to clients.
    """

    def test_stop_waits_for_messages_in_flight(self) -> None:
        """
        Stopping waits until the upstream's verdict has been sent to the
        client (or the timeout passes).
        """
        from relayd.service import DrainService

        s = SMTPDriver(implicit_tls=True)
        s.login()
        s.delivery.hold_eom = True
        s.send("MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nDATA\r\nx\r\n.\r\n")
        tracker = s.factory.tracker
        self.assertEqual(tracker.pending, 1)
        drain = DrainService(tracker, s.clock, 35)
        drain.startService()
        stopped = drain.stopService()
        self.assertNoResult(stopped)
        s.delivery.release_eom()
        self.assertEqual(s.replies(), [reply_line(R.queued("fake-1"))])
        self.successResultOf(stopped)
        self.assertEqual(tracker.pending, 0)

    def test_stop_gives_up_after_the_timeout(self) -> None:
        from relayd.service import DrainService

        s = SMTPDriver(implicit_tls=True)
        s.login()
        s.delivery.hold_eom = True
        s.send("MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nDATA\r\nx\r\n.\r\n")
        drain = DrainService(s.factory.tracker, s.clock, 35)
        drain.startService()
        stopped = drain.stopService()
        s.clock.advance(34)
        self.assertNoResult(stopped)
        s.clock.advance(1)
        self.successResultOf(stopped)
        s.delivery.release_eom()
        self.assertEqual(s.factory.tracker.pending, 0)
