"""
Tests for L{relayd.smtp}: the SMTP dialogue driven through a
L{StringTransport}, with time from a L{Clock}.
"""

from __future__ import annotations

import base64
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from relayd.config import LimitsConfig
from relayd.smtp.guards import AuthThrottle, ConnectionLimiter
from relayd.smtp.session import RelaySMTPFactory
from relayd.smtp.syntax import PathError, parse_path
from relayd.testing import (
    TOKEN,
    FakeDelivery,
    TLSStringTransport,
    make_fake_portal,
)


def plain(user: str, password: str, authzid: str = "") -> str:
    return base64.b64encode(f"{authzid}\0{user}\0{password}".encode()).decode()


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def data_parts(proto: Any) -> list[bytes]:
    """
    The message content the protocol holds (none outside DATA).
    """
    transaction = proto.transaction
    if transaction is None or transaction.data is None:
        return []
    return list(transaction.data.parts)


class Session:
    """
    One protocol instance on a fake transport, with helpers to talk to it.
    """

    def __init__(
        self,
        implicit: bool = False,
        limits: LimitsConfig | None = None,
        clock: Clock | None = None,
        delivery: FakeDelivery | None = None,
        factory: RelaySMTPFactory | None = None,
        ip: str = "192.0.2.1",
    ) -> None:
        self.clock = clock or Clock()
        self.delivery = delivery or FakeDelivery()
        self.factory = factory or RelaySMTPFactory(
            make_fake_portal(self.delivery),
            "mx.example.test",
            limits or LimitsConfig(),
            self.clock,
            context_factory=object(),
            implicit_tls=implicit,
        )
        self.transport = TLSStringTransport(peerAddress=IPv4Address("TCP", ip, 40000))
        self.proto = self.factory.buildProtocol(None)
        self.proto.makeConnection(self.transport)

    def send(self, data: bytes | str) -> list[str]:
        """
        Send bytes; return the reply lines written since the last call.
        """
        if isinstance(data, str):
            data = data.encode("utf-8")
        self.proto.dataReceived(data)
        return self.replies()

    def replies(self) -> list[str]:
        out = self.transport.value().decode("utf-8", "replace")
        self.transport.clear()
        return [line for line in out.split("\r\n") if line]

    def login(self, ehlo: bool = True) -> None:
        if not self.proto.secure:
            self.send("EHLO client.example\r\nSTARTTLS\r\n")
        self.replies()
        assert self.send("EHLO client.example\r\n")[-1].startswith("250 ")
        lines = self.send(f"AUTH PLAIN {plain('apikey', TOKEN)}\r\n")
        assert lines == ["235 2.7.0 Authentication successful"], lines

    def close(self) -> None:
        self.proto.connectionLost(None)


class GreetingTests(SynchronousTestCase):
    def test_greeting_names_the_host(self) -> None:
        """
        The 220 greeting gives the configured hostname and no joke text.
        """
        s = Session()
        self.assertEqual(s.replies(), ["220 mx.example.test ESMTP relayd ready"])

    def test_ehlo_before_tls_offers_starttls_not_auth(self) -> None:
        """
        On a plain connection EHLO lists STARTTLS and not AUTH (RFC 4954
        section 4: no plaintext mechanisms without TLS).
        """
        s = Session()
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
        s = Session()
        s.send("EHLO c\r\n")
        self.assertEqual(s.send("STARTTLS\r\n"), ["220 2.0.0 Ready to start TLS"])
        self.assertTrue(s.transport.tls_started)
        names = [line[4:] for line in s.send("EHLO c\r\n")[1:]]
        self.assertIn("AUTH PLAIN LOGIN", names)
        self.assertNotIn("STARTTLS", names)

    def test_implicit_tls_offers_auth_and_no_starttls(self) -> None:
        s = Session(implicit=True)
        s.replies()
        names = [line[4:] for line in s.send("EHLO c\r\n")[1:]]
        self.assertIn("AUTH PLAIN LOGIN", names)
        self.assertNotIn("STARTTLS", names)
        self.assertEqual(s.send("STARTTLS\r\n"), ["503 5.5.1 Error: TLS already active"])

    def test_ehlo_without_argument(self) -> None:
        s = Session()
        s.replies()
        self.assertEqual(s.send("EHLO\r\n"), ["501 5.5.4 Syntax: EHLO hostname"])

    def test_helo(self) -> None:
        s = Session()
        s.replies()
        self.assertEqual(s.send("HELO client\r\n"), ["250 mx.example.test"])

    def test_simple_commands(self) -> None:
        """
        NOOP, RSET, HELP, VRFY, EXPN, BDAT, unknown and QUIT replies.
        """
        s = Session()
        s.replies()
        self.assertEqual(s.send("NOOP\r\n"), ["250 2.0.0 Ok"])
        self.assertEqual(s.send("RSET\r\n"), ["250 2.0.0 Ok"])
        self.assertTrue(s.send("HELP\r\n")[0].startswith("214 2.0.0 "))
        self.assertTrue(s.send("VRFY bob\r\n")[0].startswith("252 2.5.0 "))
        self.assertTrue(s.send("EXPN list\r\n")[0].startswith("502 5.5.1 "))
        self.assertTrue(s.send("BDAT 10 LAST\r\n")[0].startswith("502 5.5.1 "))
        self.assertEqual(s.send("FOO\r\n"), ["500 5.5.2 Error: command not recognized"])
        self.assertEqual(s.send("QUIT\r\n"), ["221 2.0.0 Bye"])
        self.assertTrue(s.transport.disconnecting)
        self.assertEqual(s.send("NOOP\r\n"), [])


class AuthTests(SynchronousTestCase):
    def test_auth_before_starttls_gets_538(self) -> None:
        s = Session()
        s.send("EHLO c\r\n")
        self.assertEqual(
            s.send(f"AUTH PLAIN {plain('apikey', TOKEN)}\r\n"),
            ["538 5.7.11 Encryption required for requested authentication mechanism"],
        )

    def test_mail_without_auth_gets_530(self) -> None:
        s = Session(implicit=True)
        s.send("EHLO c\r\n")
        self.assertEqual(
            s.send("MAIL FROM:<a@example.com>\r\n"), ["530 5.7.0 Authentication required"]
        )

    def _secure(self) -> Session:
        s = Session(implicit=True)
        s.send("EHLO c\r\n")
        return s

    def test_plain_initial_response(self) -> None:
        for user in ("apikey", TOKEN, ""):
            s = self._secure()
            self.assertEqual(
                s.send(f"AUTH PLAIN {plain(user, TOKEN)}\r\n"),
                ["235 2.7.0 Authentication successful"],
            )

    def test_plain_without_initial_response(self) -> None:
        """
        C{AUTH PLAIN} alone gets C{334 } with an empty challenge.
        """
        s = self._secure()
        self.assertEqual(s.send("AUTH PLAIN\r\n"), ["334 "])
        self.assertEqual(
            s.send(plain("apikey", TOKEN) + "\r\n"), ["235 2.7.0 Authentication successful"]
        )

    def test_plain_with_authzid_equal_to_user(self) -> None:
        s = self._secure()
        self.assertEqual(
            s.send(f"AUTH PLAIN {plain('apikey', TOKEN, authzid='apikey')}\r\n"),
            ["235 2.7.0 Authentication successful"],
        )

    def test_login_without_and_with_username(self) -> None:
        s = self._secure()
        self.assertEqual(s.send("AUTH LOGIN\r\n"), ["334 VXNlcm5hbWU6"])
        self.assertEqual(s.send(b64("apikey") + "\r\n"), ["334 UGFzc3dvcmQ6"])
        self.assertEqual(s.send(b64(TOKEN) + "\r\n"), ["235 2.7.0 Authentication successful"])
        s = self._secure()
        self.assertEqual(s.send(f"AUTH LOGIN {b64(TOKEN)}\r\n"), ["334 UGFzc3dvcmQ6"])
        self.assertEqual(s.send(b64(TOKEN) + "\r\n"), ["235 2.7.0 Authentication successful"])

    def test_wrong_token_gets_535(self) -> None:
        s = self._secure()
        self.assertEqual(
            s.send(f"AUTH PLAIN {plain('apikey', 'wrong')}\r\n"),
            ["535 5.7.8 Authentication credentials invalid"],
        )

    def test_malformed_auth_gets_501_and_session_goes_on(self) -> None:
        s = self._secure()
        self.assertEqual(
            s.send("AUTH PLAIN !!notbase64\r\n"), ["501 5.5.2 Cannot decode AUTH response"]
        )
        bad = base64.b64encode(b"only-one-field").decode()
        self.assertEqual(
            s.send(f"AUTH PLAIN {bad}\r\n"), ["501 5.5.2 Malformed AUTH PLAIN response"]
        )
        self.assertEqual(
            s.send("AUTH\r\n"), ["501 5.5.4 Syntax: AUTH mechanism [initial-response]"]
        )
        self.assertEqual(
            s.send("AUTH CRAM-MD5\r\n"), ["504 5.5.4 Unrecognized authentication type"]
        )
        self.assertEqual(s.send("AUTH PLAIN\r\n"), ["334 "])
        self.assertEqual(s.send("*\r\n"), ["501 5.7.0 Authentication aborted"])
        self.assertEqual(s.send("NOOP\r\n"), ["250 2.0.0 Ok"])
        self.assertEqual(
            s.send(f"AUTH PLAIN {plain('apikey', TOKEN)}\r\n"),
            ["235 2.7.0 Authentication successful"],
        )
        self.assertEqual(
            s.send(f"AUTH PLAIN {plain('apikey', TOKEN)}\r\n"),
            ["503 5.5.1 Error: already authenticated"],
        )

    def test_three_failures_close_the_session(self) -> None:
        s = self._secure()
        s.send(f"AUTH PLAIN {plain('apikey', 'x')}\r\n")
        s.clock.advance(10)
        s.send(f"AUTH PLAIN {plain('apikey', 'x')}\r\n")
        s.clock.advance(10)
        s.replies()
        lines = s.send(f"AUTH PLAIN {plain('apikey', 'x')}\r\n") + (
            s.clock.advance(10) or s.replies()
        )
        self.assertEqual(
            lines,
            [
                "535 5.7.8 Authentication credentials invalid",
                "421 4.7.0 mx.example.test Too many failed authentication attempts, closing connection",
            ],
        )
        self.assertTrue(s.transport.disconnecting)

    def test_failures_across_connections_slow_down_then_lock_out(self) -> None:
        """
        Failed AUTH from one IP is answered later each time, then refused;
        another IP is not affected.
        """
        clock = Clock()
        first = Session(implicit=True, clock=clock, limits=LimitsConfig(auth_failures_per_ip=3))
        factory = first.factory
        first.send("EHLO c\r\n")
        self.assertEqual(
            first.send(f"AUTH PLAIN {plain('', 'x')}\r\n"),
            ["535 5.7.8 Authentication credentials invalid"],
        )
        second = Session(implicit=True, clock=clock, factory=factory)
        second.send("EHLO c\r\n")
        self.assertEqual(second.send(f"AUTH PLAIN {plain('', 'x')}\r\n"), [])
        clock.advance(1)
        self.assertEqual(second.replies(), ["535 5.7.8 Authentication credentials invalid"])
        second.send(f"AUTH PLAIN {plain('', 'x')}\r\n")
        clock.advance(5)
        second.replies()
        third = Session(implicit=True, clock=clock, factory=factory)
        third.send("EHLO c\r\n")
        self.assertEqual(
            third.send(f"AUTH PLAIN {plain('', TOKEN)}\r\n"),
            ["421 4.7.0 mx.example.test Too many failed authentication attempts, try again later"],
        )
        other = Session(implicit=True, clock=clock, factory=factory, ip="198.51.100.7")
        other.send("EHLO c\r\n")
        self.assertEqual(
            other.send(f"AUTH PLAIN {plain('', TOKEN)}\r\n"),
            ["235 2.7.0 Authentication successful"],
        )
        clock.advance(901)
        fourth = Session(implicit=True, clock=clock, factory=factory)
        fourth.send("EHLO c\r\n")
        self.assertEqual(
            fourth.send(f"AUTH PLAIN {plain('', TOKEN)}\r\n"),
            ["235 2.7.0 Authentication successful"],
        )


class StartTLSTests(SynchronousTestCase):
    def test_pipelined_commands_after_starttls_are_discarded(self) -> None:
        """
        RFC 3207 section 4.2 / CVE-2011-0411: commands sent in the clear
        after STARTTLS in the same packet are never answered.
        """
        s = Session()
        s.send("EHLO c\r\n")
        lines = s.send(
            f"STARTTLS\r\nAUTH PLAIN {plain('apikey', TOKEN)}\r\nMAIL FROM:<a@example.com>\r\n"
        )
        self.assertEqual(lines, ["220 2.0.0 Ready to start TLS"])
        self.assertEqual(
            s.send("MAIL FROM:<a@example.com>\r\n"), ["503 5.5.1 Error: send HELO/EHLO first"]
        )

    def test_session_restarts_after_starttls(self) -> None:
        s = Session()
        s.send("EHLO c\r\n")
        s.send("STARTTLS\r\n")
        self.assertIsNone(s.proto.ehlo)
        self.assertEqual(s.send("STARTTLS\r\n"), ["503 5.5.1 Error: TLS already active"])


class MailTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.s = Session(implicit=True)
        self.s.login()

    def test_whole_transaction(self) -> None:
        s = self.s
        self.assertEqual(s.send("MAIL FROM:<a@example.com>\r\n"), ["250 2.1.0 Ok"])
        self.assertEqual(s.send("RCPT TO:<b@example.net>\r\n"), ["250 2.1.5 Ok"])
        self.assertEqual(s.send("RCPT TO:<c@example.net>\r\n"), ["250 2.1.5 Ok"])
        self.assertEqual(s.send("DATA\r\n"), ["354 End data with <CR><LF>.<CR><LF>"])
        self.assertEqual(
            s.send("Subject: hi\r\n\r\nbody\r\n..dot\r\n.\r\n"), ["250 2.0.0 Ok: queued as fake-1"]
        )
        (sent,) = s.delivery.sent
        self.assertEqual(sent.mail_from, "a@example.com")
        self.assertEqual(sent.rcpt_to, ["b@example.net", "c@example.net"])
        self.assertEqual(sent.data, b"Subject: hi\r\n\r\nbody\r\n.dot\r\n")

    def test_size_parameter(self) -> None:
        s = self.s
        self.assertEqual(
            s.send("MAIL FROM:<a@example.com> SIZE=999999999\r\n"),
            ["552 5.3.4 Message size exceeds fixed maximum message size"],
        )
        self.assertEqual(
            s.send("MAIL FROM:<a@example.com> SIZE=big\r\n"), ["501 5.5.4 Bad SIZE parameter"]
        )
        self.assertEqual(
            s.send("MAIL FROM:<a@example.com> SIZE=1000 BODY=8BITMIME\r\n"), ["250 2.1.0 Ok"]
        )

    def test_unknown_parameters_get_555(self) -> None:
        s = self.s
        self.assertEqual(
            s.send("MAIL FROM:<a@example.com> RET=FULL\r\n"),
            ["555 5.5.4 Unsupported parameter RET"],
        )
        s.send("MAIL FROM:<a@example.com>\r\n")
        self.assertEqual(
            s.send("RCPT TO:<b@example.com> NOTIFY=NEVER\r\n"),
            ["555 5.5.4 Unsupported parameter NOTIFY"],
        )

    def test_body_parameter(self) -> None:
        self.assertEqual(self.s.send("MAIL FROM:<a@example.com> BODY=7BIT\r\n"), ["250 2.1.0 Ok"])
        self.s.send("RSET\r\n")
        self.assertEqual(
            self.s.send("MAIL FROM:<a@example.com> BODY=BINARYMIME\r\n"),
            ["501 5.5.4 Unsupported BODY parameter"],
        )

    def test_smtputf8(self) -> None:
        s = self.s
        self.assertEqual(
            s.send("MAIL FROM:<jörg@example.com>\r\n"),
            ["553 5.6.7 Non-ASCII address requires SMTPUTF8"],
        )
        self.assertEqual(s.send("MAIL FROM:<jörg@example.com> SMTPUTF8\r\n"), ["250 2.1.0 Ok"])
        self.assertEqual(s.send("RCPT TO:<用户@例子.广告>\r\n"), ["250 2.1.5 Ok"])
        s.send("DATA\r\n")
        s.send("Subject: =?utf-8?q?x?=\r\n\r\nhé\r\n.\r\n")
        self.assertEqual(s.delivery.sent[0].rcpt_to, ["用户@例子.广告"])

    def test_sequence_errors(self) -> None:
        s = self.s
        self.assertEqual(
            s.send("RCPT TO:<b@example.com>\r\n"), ["503 5.5.1 Error: need MAIL command"]
        )
        self.assertEqual(s.send("DATA\r\n"), ["503 5.5.1 Error: need MAIL command"])
        s.send("MAIL FROM:<a@example.com>\r\n")
        self.assertEqual(
            s.send("MAIL FROM:<a@example.com>\r\n"), ["503 5.5.1 Error: nested MAIL command"]
        )
        self.assertEqual(s.send("DATA\r\n"), ["554 5.5.1 Error: no valid recipients"])

    def test_bad_addresses(self) -> None:
        s = self.s
        self.assertEqual(
            s.send("MAIL FROM a@example.com\r\n"), ["501 5.5.4 Syntax: MAIL FROM:<address>"]
        )
        self.assertEqual(
            s.send("MAIL FROM:<not an address>\r\n"), ["501 5.1.7 Bad sender address syntax"]
        )
        self.assertEqual(s.send("MAIL FROM:<a@@b>\r\n"), ["501 5.1.7 Bad sender address syntax"])
        self.assertEqual(s.send("MAIL FROM:<>\r\n"), ["250 2.1.0 Ok"])
        self.assertEqual(s.send("RCPT TO:<>\r\n"), ["501 5.1.3 Bad recipient address syntax"])
        self.assertEqual(s.send("RCPT TO:<@relay.example:b@example.com>\r\n"), ["250 2.1.5 Ok"])

    def test_too_many_recipients_gets_452(self) -> None:
        s = self.s
        s.send("MAIL FROM:<a@example.com>\r\n")
        lines = s.send("".join(f"RCPT TO:<r{i}@example.com>\r\n" for i in range(101)))
        self.assertEqual(lines[:100], ["250 2.1.5 Ok"] * 100)
        self.assertEqual(lines[100:], ["452 4.5.3 Error: too many recipients"])

    def test_rejected_sender(self) -> None:
        self.s.delivery.allowed_senders = ("ok@example.com",)
        self.assertEqual(
            self.s.send("MAIL FROM:<a@example.com>\r\n"), ["550 5.7.1 Sender not allowed"]
        )
        self.assertEqual(self.s.send("MAIL FROM:<ok@example.com>\r\n"), ["250 2.1.0 Ok"])

    def test_upstream_failure_reply_is_passed_on(self) -> None:
        self.s.delivery.result = ("451", "4.3.0", "Temporary failure, try again later")
        self.s.send("MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n")
        self.assertEqual(
            self.s.send("x\r\n.\r\n"), ["451 4.3.0 Temporary failure, try again later"]
        )

    def test_messages_per_connection_cap(self) -> None:
        s = Session(implicit=True, limits=LimitsConfig(max_messages_per_connection=1))
        s.login()
        s.send("MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nDATA\r\nx\r\n.\r\n")
        self.assertEqual(
            s.send("MAIL FROM:<a@example.com>\r\n"),
            ["421 4.7.0 mx.example.test Too many messages in this session, closing connection"],
        )


class PipeliningTests(SynchronousTestCase):
    def test_replies_in_order_while_validation_is_pending(self) -> None:
        """
        RFC 2920: with validations that answer later, a pipelined group
        still gets its replies in command order, and DATA's 354 only after
        the RCPT replies.
        """
        s = Session(implicit=True)
        s.login()
        s.delivery.hold = True
        lines = s.send(
            "MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\n"
            "RCPT TO:<c@example.com>\r\nDATA\r\n"
        )
        self.assertEqual(lines, [])
        self.assertTrue(s.transport.producerState == "paused")
        s.delivery.release()
        self.assertEqual(s.replies(), ["250 2.1.0 Ok"])
        s.delivery.release()
        self.assertEqual(s.replies(), ["250 2.1.5 Ok"])
        s.delivery.release()
        self.assertEqual(s.replies(), ["250 2.1.5 Ok", "354 End data with <CR><LF>.<CR><LF>"])
        self.assertEqual(s.transport.producerState, "producing")

    def test_commands_after_data_wait_for_the_upstream(self) -> None:
        s = Session(implicit=True)
        s.login()
        s.delivery.hold_eom = True
        s.send("MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n")
        self.assertEqual(s.send("x\r\n.\r\nNOOP\r\nQUIT\r\n"), [])
        s.delivery.release_eom()
        self.assertEqual(
            s.replies(), ["250 2.0.0 Ok: queued as fake-1", "250 2.0.0 Ok", "221 2.0.0 Bye"]
        )


class FramingTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.s = Session(implicit=True)
        self.s.login()

    def start(self, s: Session | None = None) -> Session:
        s = s or self.s
        s.send("MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n")
        return s

    def test_smuggling_variants_stay_inside_the_message(self) -> None:
        """
        Only <CR><LF>.<CR><LF> ends DATA: every other dot variant stays in
        the message and never starts a second transaction.
        """
        for sep in (b"\n.\n", b"\n.\r\n", b"\r\n.\n", b"\r.\r", b"\n.\r", b"\r.\r\n", b"\r\n.\r"):
            s = Session(implicit=True)
            s.login()
            self.start(s)
            smuggled = (
                b"x"
                + sep
                + b"MAIL FROM:<evil@example.com>\r\nRCPT TO:<v@example.com>\r\nDATA\r\nevil\r\n"
            )
            lines = s.send(smuggled + b"\r\n.\r\n")
            self.assertEqual(lines, ["250 2.0.0 Ok: queued as fake-1"], sep)
            self.assertEqual(len(s.delivery.sent), 1)
            self.assertIn(b"MAIL FROM:<evil@example.com>", s.delivery.sent[0].data)

    def test_bare_lf_is_normalized(self) -> None:
        self.start()
        self.s.send(b"Subject: a\nX: b\r\n\nline\rmore\r\n.\r\n")
        self.assertEqual(
            self.s.delivery.sent[0].data, b"Subject: a\r\nX: b\r\n\r\nline\r\nmore\r\n"
        )

    def test_bare_lf_rejected_when_configured(self) -> None:
        s = Session(implicit=True, limits=LimitsConfig(bare_newline="reject"))
        s.login()
        self.start(s)
        self.assertEqual(
            s.send(b"Subject: a\n\nbody\r\n.\r\n"),
            ["550 5.6.0 Message contains bare <CR> or <LF>; lines must end with <CR><LF>"],
        )
        self.assertEqual(s.delivery.sent, [])

    def test_message_over_size_fails_at_the_dot_and_session_goes_on(self) -> None:
        s = Session(implicit=True, limits=LimitsConfig(max_message_size=1000))
        s.login()
        self.start(s)
        for _ in range(100):
            s.send(b"y" * 70 + b"\r\n")
        self.assertEqual(
            s.send(b".\r\n"), ["552 5.3.4 Message size exceeds fixed maximum message size"]
        )
        self.assertEqual(s.delivery.sent, [])
        self.assertLess(sum(map(len, data_parts(s.proto))), 2000)
        self.assertEqual(s.send("NOOP\r\n"), ["250 2.0.0 Ok"])

    def test_long_data_line_fails_and_rest_is_not_read_as_commands(self) -> None:
        """
        A 16 KiB line in DATA makes the message fail at the final dot; the
        commands inside the body are never executed.
        """
        self.start()
        lines = self.s.send(
            b"a" * 16384
            + b"\r\nMAIL FROM:<evil@example.com>\r\nRCPT TO:<v@example.com>\r\nDATA\r\nevil\r\n"
        )
        self.assertEqual(lines, [])
        self.assertEqual(
            self.s.send(b"\r\n.\r\n"), ["552 5.3.4 Message line too long (limit 998 octets)"]
        )
        self.assertEqual(self.s.delivery.sent, [])

    def test_long_line_split_over_packets(self) -> None:
        self.start()
        for _ in range(20):
            self.s.send(b"b" * 1000)
        self.assertEqual(
            self.s.send(b"\r\n.\r\n"), ["552 5.3.4 Message line too long (limit 998 octets)"]
        )

    def test_998_octet_lines_pass(self) -> None:
        self.start()
        self.s.send(b"." + b"c" * 997 + b"\r\n" + b"d" * 998 + b"\r\n")
        self.assertEqual(self.s.send(b".\r\n"), ["250 2.0.0 Ok: queued as fake-1"])

    def test_long_command_line_gets_500(self) -> None:
        self.assertEqual(self.s.send(b"NOOP " + b"x" * 600 + b"\r\n"), ["500 5.5.2 Line too long"])
        self.assertEqual(self.s.send(b"NOOP\r\n"), ["250 2.0.0 Ok"])

    def test_endless_command_line_closes_the_connection(self) -> None:
        lines = []
        for _ in range(1024):
            lines += self.s.send(b"z" * 65536)
            if self.s.transport.disconnecting:
                break
        self.assertEqual(
            lines,
            [
                "500 5.5.2 Line too long",
                "421 4.7.0 mx.example.test Line too long, closing connection",
            ],
        )
        self.assertLess(len(self.s.proto.framing.buffer), 1024)

    def test_nul_in_command_gets_501(self) -> None:
        self.assertEqual(self.s.send(b"NO\0OP\r\n"), ["501 5.5.2 NUL character in command"])

    def test_too_many_errors_close(self) -> None:
        s = Session()
        s.replies()
        lines = s.send(b"BAD\r\n" * 12)
        self.assertEqual(lines[-1], "421 4.7.0 mx.example.test Too many errors, closing connection")
        self.assertEqual(len(lines), 11)
        self.assertTrue(s.transport.disconnecting)


class LimitTests(SynchronousTestCase):
    def test_idle_timeout(self) -> None:
        s = Session()
        s.replies()
        s.clock.advance(299)
        self.assertEqual(s.send("NOOP\r\n"), ["250 2.0.0 Ok"])
        s.clock.advance(299)
        self.assertEqual(s.replies(), [])
        s.clock.advance(2)
        self.assertEqual(
            s.replies(), ["421 4.4.2 mx.example.test Timeout exceeded, closing connection"]
        )
        self.assertTrue(s.transport.disconnecting)

    def test_session_lifetime(self) -> None:
        s = Session(limits=LimitsConfig(session_timeout=100))
        s.replies()
        for _ in range(11):
            s.clock.advance(10)
            s.send("NOOP\r\n")
        self.assertTrue(s.transport.disconnecting)

    def test_connection_caps(self) -> None:
        clock = Clock()
        first = Session(clock=clock, limits=LimitsConfig(max_connections_per_ip=2))
        Session(clock=clock, factory=first.factory)
        third = Session(clock=clock, factory=first.factory)
        self.assertEqual(
            third.replies(), ["421 4.7.0 mx.example.test Too many connections, try again later"]
        )
        other = Session(clock=clock, factory=first.factory, ip="198.51.100.1")
        self.assertTrue(other.replies()[0].startswith("220 "))
        first.close()
        again = Session(clock=clock, factory=first.factory)
        self.assertTrue(again.replies()[0].startswith("220 "))

    def test_limiter_global_cap(self) -> None:
        limiter = ConnectionLimiter(1, 5)
        self.assertTrue(limiter.acquire("a"))
        self.assertFalse(limiter.acquire("b"))
        limiter.release("a")
        self.assertTrue(limiter.acquire("b"))

    def test_throttle_expires(self) -> None:
        clock = Clock()
        t = AuthThrottle(clock, limit=3, window=60)
        self.assertEqual(t.failed("a"), 0)
        self.assertEqual(t.failed("a"), 1)
        clock.advance(61)
        self.assertEqual(t.failed("a"), 0)


class PathTests(SynchronousTestCase):
    def test_valid(self) -> None:
        self.assertEqual(parse_path("<a@example.com>"), "a@example.com")
        self.assertEqual(parse_path("a@example.com"), "a@example.com")
        self.assertEqual(parse_path('<"a b"@example.com>'), '"a b"@example.com')
        self.assertEqual(parse_path("<a@[192.0.2.1]>"), "a@[192.0.2.1]")
        self.assertEqual(parse_path("<>", allow_empty=True), "")

    def test_invalid(self) -> None:
        for bad in ("<>", "<a>", "<a@>", "<@b>", "<a@b", "a b@c", "<a@-b.com>", "<a..b@c>"):
            self.assertRaises(PathError, parse_path, bad)


class PropertyTests(SynchronousTestCase):
    @settings(max_examples=150, deadline=None)
    @given(
        st.lists(
            st.sampled_from(
                [
                    b"\r\n",
                    b"\n",
                    b"\r",
                    b".",
                    b"\r\n.\r\n",
                    b"MAIL FROM:<e@x.com>\r\n",
                    b"RCPT TO:<v@x.com>\r\n",
                    b"DATA\r\n",
                    b"QUIT\r\n",
                    b"RSET\r\n",
                    b"x" * 300,
                    b"\0",
                    b"..",
                    b"STARTTLS\r\n",
                    b"\xff",
                ]
            ),
            max_size=40,
        ),
        st.lists(st.integers(min_value=1, max_value=64), max_size=20),
    )
    def test_random_streams_never_start_a_second_transaction(
        self, pieces: list[bytes], cuts: list[int]
    ) -> None:
        """
        Whatever follows DATA, split at random points, at most one message
        is delivered (the one DATA started), nothing raises, and nothing is
        written after the connection closed.
        """
        s = Session(implicit=True, limits=LimitsConfig(max_errors=1000))
        s.login()
        s.send("MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n")
        stream = b"".join(pieces)
        pos = 0
        for cut in cuts + [len(stream)]:
            s.proto.dataReceived(stream[pos : pos + cut])
            pos += cut
        s.replies()
        self.assertLessEqual(len(s.delivery.sent), 1)
        if s.transport.disconnecting:
            s.proto.dataReceived(b"NOOP\r\n")
            self.assertEqual(s.replies(), [])

    @settings(max_examples=100, deadline=None)
    @given(st.binary(max_size=2000), st.lists(st.integers(min_value=1, max_value=200), max_size=30))
    def test_random_bytes_in_command_mode(self, stream: bytes, cuts: list[int]) -> None:
        s = Session()
        pos = 0
        for cut in cuts + [len(stream)]:
            s.proto.dataReceived(stream[pos : pos + cut])
            pos += cut
        for line in s.replies():
            self.assertRegex(line, r"^\d{3}[ -]")
        self.assertEqual(s.delivery.sent, [])


_ = defer


class TokenLimitTests(SynchronousTestCase):
    def test_token_size_limit_is_advertised_and_enforced(self) -> None:
        """
        A token's own message size limit is advertised in SIZE after AUTH
        and enforced at MAIL FROM SIZE=.
        """
        s = Session(implicit=True)
        s.delivery.max_message_size = 1000  # type: ignore[assignment]
        s.login()
        names = [line[4:] for line in s.send("EHLO c\r\n")[1:]]
        self.assertIn("SIZE 1000", names)
        self.assertEqual(
            s.send("MAIL FROM:<a@example.com> SIZE=2000\r\n"),
            ["552 5.3.4 Message size exceeds fixed maximum message size"],
        )

    def test_token_recipient_limit(self) -> None:
        s = Session(implicit=True)
        s.delivery.max_recipients = 2  # type: ignore[assignment]
        s.login()
        s.send("MAIL FROM:<a@example.com>\r\n")
        lines = s.send(
            "RCPT TO:<a@b.example>\r\nRCPT TO:<c@b.example>\r\nRCPT TO:<d@b.example>\r\n"
        )
        self.assertEqual(
            lines, ["250 2.1.5 Ok", "250 2.1.5 Ok", "452 4.5.3 Error: too many recipients"]
        )


class AuthParameterTests(SynchronousTestCase):
    def test_mail_line_may_be_500_octets_longer_for_auth(self) -> None:
        """
        RFC 4954 section 5: a MAIL FROM with AUTH= may exceed 512 octets by
        500; other commands may not.
        """
        s = Session(implicit=True)
        s.login()
        auth = "<" + "a" * 600 + "@example.com>"
        self.assertEqual(s.send(f"MAIL FROM:<a@example.com> AUTH={auth}\r\n"), ["250 2.1.0 Ok"])
        self.assertEqual(s.send("NOOP " + "x" * 600 + "\r\n"), ["500 5.5.2 Line too long"])


class NoDelayTests(SynchronousTestCase):
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
            factory = Session().factory
            factory.buildProtocol(None).makeConnection(make(tcp))
            self.assertTrue(tcp.nodelay)


class ReviewFixTests(SynchronousTestCase):
    def test_session_lifetime_waits_for_the_upstream_reply(self) -> None:
        """
        The session lifetime ends while relayd waits for the upstream: the
        client still gets the upstream's verdict, then 421, so it never
        retries a message the upstream took.
        """
        s = Session(implicit=True, limits=LimitsConfig(session_timeout=100))
        s.login()
        s.delivery.hold_eom = True
        s.send("MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n")
        s.send("x\r\n.\r\n")
        s.clock.advance(150)
        self.assertEqual(s.replies(), [])
        s.delivery.release_eom()
        self.assertEqual(
            s.replies(),
            [
                "250 2.0.0 Ok: queued as fake-1",
                "421 4.4.2 mx.example.test Session lifetime exceeded, closing connection",
            ],
        )
        self.assertTrue(s.transport.disconnecting)

    def test_postmaster_without_domain(self) -> None:
        """
        RFC 5321 section 4.1.1.3: RCPT TO:<Postmaster> is accepted.
        """
        s = Session(implicit=True)
        s.login()
        s.send("MAIL FROM:<a@example.com>\r\n")
        self.assertEqual(s.send("RCPT TO:<Postmaster>\r\n"), ["250 2.1.5 Ok"])
        self.assertEqual(s.send("RCPT TO:<nobody>\r\n"), ["501 5.1.3 Bad recipient address syntax"])

    def test_old_style_auth_line_is_advertised(self) -> None:
        s = Session(implicit=True)
        s.replies()
        names = [line[4:] for line in s.send("EHLO c\r\n")[1:]]
        self.assertIn("AUTH=PLAIN LOGIN", names)


class DrainTests(SynchronousTestCase):
    def test_stop_waits_for_messages_in_flight(self) -> None:
        """
        Stopping waits until the upstream's verdict has been sent to the
        client (or the timeout passes).
        """
        from relayd.service import DrainService

        s = Session(implicit=True)
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
        self.assertEqual(s.replies(), ["250 2.0.0 Ok: queued as fake-1"])
        self.successResultOf(stopped)
        self.assertEqual(tracker.pending, 0)

    def test_stop_gives_up_after_the_timeout(self) -> None:
        from relayd.service import DrainService

        s = Session(implicit=True)
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


class LateReplyTests(SynchronousTestCase):
    def test_client_gone_before_a_250_is_logged(self) -> None:
        """
        When the client left while the upstream took its message, nothing
        is written, and the log says it may send the message again.
        """
        from twisted.logger import capturedLogs

        s = Session(implicit=True)
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
