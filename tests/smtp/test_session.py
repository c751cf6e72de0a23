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
from relayd.smtp.session import CLOSE_GRACE
from relayd.testing import TOKEN, FakeDelivery, SMTPDriver, reply_line
from tests.smtp.support import (
    HOST,
    WireChecks,
    logged_in,
    plain,
    roomy,
)

#: Every reply of the session, and of the delivery path the session passes
#: on, with its line on the wire: a change of text fails here.
WIRE = [
    (R.GREETING, "220 ESMTP relayd ready"),
    (R.TOO_MANY_CONNECTIONS, "421 4.7.0 Too many connections, try again later"),
    (R.IDLE_TIMEOUT, "421 4.4.2 Timeout exceeded, closing connection"),
    (R.SESSION_LIFETIME_EXCEEDED, "421 4.4.2 Session lifetime exceeded, closing connection"),
    (R.TOO_MANY_ERRORS, "421 4.7.0 Too many errors, closing connection"),
    (R.LINE_TOO_LONG_CLOSING, "421 4.7.0 Line too long, closing connection"),
    (R.LOCAL_ERROR_CLOSING, "421 4.3.0 Local error, closing connection"),
    (R.IMPROPER_PIPELINING, "421 4.5.0 Improper pipelining after DATA, closing connection"),
    (R.TOO_MANY_MESSAGES, "421 4.7.0 Too many messages in this session, closing connection"),
    (
        R.TOO_MANY_AUTH_FAILURES,
        "421 4.7.0 Too many failed authentication attempts, closing connection",
    ),
    (R.LINE_TOO_LONG, "500 5.5.2 Line too long"),
    (R.BARE_LF_IN_COMMAND, "500 5.5.2 Bare <LF> received; lines must end with <CR><LF>"),
    (R.NUL_IN_COMMAND, "501 5.5.2 NUL character in command"),
    (R.COMMAND_NOT_UTF8, "500 5.5.2 Command is not valid UTF-8"),
    (R.COMMAND_NOT_RECOGNIZED, "500 5.5.2 Error: command not recognized"),
    (R.COMMAND_NOT_IMPLEMENTED, "502 5.5.1 Error: command not implemented"),
    (R.NO_CHUNKING, "502 5.5.1 Error: command not implemented (no CHUNKING)"),
    (R.LOCAL_ERROR, "451 4.3.0 Local error in processing, try again later"),
    (R.SYNTAX_EHLO, "501 5.5.4 Syntax: EHLO hostname"),
    (R.SYNTAX_HELO, "501 5.5.4 Syntax: HELO hostname"),
    (R.NEED_EHLO, "503 5.5.1 Error: send HELO/EHLO first"),
    (R.SYNTAX_STARTTLS, "501 5.5.4 Syntax: STARTTLS"),
    (R.TLS_ALREADY_ACTIVE, "503 5.5.1 Error: TLS already active"),
    (R.STARTTLS_NOT_AVAILABLE, "503 5.5.1 Error: STARTTLS not available"),
    (R.READY_TO_START_TLS, "220 2.0.0 Ready to start TLS"),
    (R.OK, "250 2.0.0 Ok"),
    (R.CANNOT_VRFY, "252 2.5.0 Cannot VRFY user, but will accept message and attempt delivery"),
    (
        R.HELP,
        "214 2.0.0 See RFC 5321; commands: EHLO HELO STARTTLS AUTH MAIL RCPT DATA RSET NOOP VRFY HELP QUIT",
    ),
    (R.BYE, "221 2.0.0 Bye"),
    (
        R.ENCRYPTION_REQUIRED,
        "538 5.7.11 Encryption required for requested authentication mechanism",
    ),
    (R.ALREADY_AUTHENTICATED, "503 5.5.1 Error: already authenticated"),
    (R.AUTH_DURING_TRANSACTION, "503 5.5.1 Error: AUTH not allowed during a mail transaction"),
    (R.SYNTAX_AUTH, "501 5.5.4 Syntax: AUTH mechanism [initial-response]"),
    (R.UNRECOGNIZED_AUTH_TYPE, "504 5.5.4 Unrecognized authentication type"),
    (R.PLAIN_CHALLENGE, "334 "),
    (R.LOGIN_USERNAME_CHALLENGE, "334 VXNlcm5hbWU6"),
    (R.LOGIN_PASSWORD_CHALLENGE, "334 UGFzc3dvcmQ6"),
    (R.AUTH_ABORTED, "501 5.7.0 Authentication aborted"),
    (R.CANNOT_DECODE_AUTH, "501 5.5.2 Cannot decode AUTH response"),
    (R.MALFORMED_AUTH_PLAIN, "501 5.5.2 Malformed AUTH PLAIN response"),
    (R.AUTH_SUCCESSFUL, "235 2.7.0 Authentication successful"),
    (R.AUTH_INVALID, "535 5.7.8 Authentication credentials invalid"),
    (R.AUTH_REQUIRED, "530 5.7.0 Authentication required"),
    (R.NESTED_MAIL, "503 5.5.1 Error: nested MAIL command"),
    (R.NEED_MAIL, "503 5.5.1 Error: need MAIL command"),
    (R.SYNTAX_MAIL, "501 5.5.4 Syntax: MAIL FROM:<address>"),
    (R.SYNTAX_RCPT, "501 5.5.4 Syntax: RCPT TO:<address>"),
    (R.SYNTAX_PARAMETERS, "501 5.5.4 Syntax error in parameters"),
    (R.BAD_SIZE, "501 5.5.4 Bad SIZE parameter"),
    (R.UNSUPPORTED_BODY, "501 5.5.4 Unsupported BODY parameter"),
    (R.SMTPUTF8_TAKES_NO_VALUE, "501 5.5.4 SMTPUTF8 takes no value"),
    (R.BAD_SENDER_SYNTAX, "501 5.1.7 Bad sender address syntax"),
    (R.BAD_RECIPIENT_SYNTAX, "501 5.1.3 Bad recipient address syntax"),
    (R.NON_ASCII_ADDRESS, "553 5.6.7 Non-ASCII address requires SMTPUTF8"),
    (R.TOO_MANY_RECIPIENTS, "452 4.5.3 Error: too many recipients"),
    (R.SENDER_OK, "250 2.1.0 Ok"),
    (R.RECIPIENT_OK, "250 2.1.5 Ok"),
    (R.SYNTAX_DATA, "501 5.5.4 Syntax: DATA"),
    (R.NO_VALID_RECIPIENTS, "554 5.5.1 Error: no valid recipients"),
    (R.START_MAIL_INPUT, "354 End data with <CR><LF>.<CR><LF>"),
    (R.MESSAGE_TOO_BIG, "552 5.3.4 Message size exceeds fixed maximum message size"),
    (
        R.BARE_NEWLINE_IN_DATA,
        "550 5.6.0 Message contains bare <CR> or <LF>; lines must end with <CR><LF>",
    ),
    (R.unsupported_parameter("RET"), "555 5.5.4 Unsupported parameter RET"),
    (R.message_line_too_long(998), "552 5.3.4 Message line too long (limit 998 octets)"),
    (R.queued("id-1"), "250 2.0.0 Ok: queued as id-1"),
    (R.queued(""), "250 2.0.0 Ok: queued"),
    (R.SENDER_NOT_ALLOWED, "550 5.7.1 Sender not allowed"),
]


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
        # No producer left registered: Twisted's TLS would not close then.
        self.assertIsNone(s.transport.producer)
        self.assertEqual(s.send("NOOP\r\n"), [])

    def test_close_that_does_not_finish_is_cut_after_the_grace(self) -> None:
        """
        After QUIT the connection closes; if the client does not let the
        close finish (it reads nothing, or does not answer the TLS close
        alert), it is aborted L{CLOSE_GRACE} seconds later.
        """
        s = SMTPDriver()
        s.replies()
        self.assertEqual(s.send("QUIT\r\n"), [reply_line(R.BYE)])
        s.clock.advance(CLOSE_GRACE - 1)
        self.assertFalse(s.transport.disconnected)
        s.clock.advance(1)
        self.assertTrue(s.transport.disconnected)

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
        A CR or LF in a reply's text cannot forge a second reply line
        (today's rejection texts are clean; an avatar's may not be).
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


class ReplyWireTests(SynchronousTestCase):
    """
    The named replies of L{relayd.reply} as the session writes them.
    """

    def test_every_named_reply_on_the_wire(self) -> None:
        """
        Each reply is written as its code, enhanced status code (if any)
        and text, then CRLF; L{reply_line} gives the same line.
        """
        s = SMTPDriver()
        s.replies()
        for reply, wire in WIRE:
            s.proto.send(reply)
            self.assertEqual(s.transport.value(), wire.encode("ascii") + b"\r\n", wire)
            self.assertEqual(reply_line(reply), wire)
            s.transport.clear()

    def test_closing_replies_name_the_host(self) -> None:
        """
        A 421 names the server before its text (RFC 5321 section 3.8).
        """
        s = SMTPDriver()
        s.replies()
        s.proto.closing(R.TOO_MANY_ERRORS)
        self.assertEqual(
            s.transport.value(),
            b"421 4.7.0 mx.example.test Too many errors, closing connection\r\n",
        )
        self.assertEqual(s.line(R.TOO_MANY_ERRORS), reply_line(R.TOO_MANY_ERRORS, HOST))
