"""
Tests for AUTH (RFC 4954) in L{relayd.smtp.session}: PLAIN (RFC 4616) and
LOGIN, only under TLS, malformed exchanges, failed-AUTH throttling and the
cred portal behind it.
"""

from __future__ import annotations

import base64
from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from relayd import reply as R
from relayd.auth import make_portal
from relayd.config import LimitsConfig
from relayd.testing import TOKEN, SMTPDriver, reply_line
from tests.smtp.support import (
    HOST,
    WireChecks,
    b64,
    logged_in,
    plain,
    roomy,
)
from tests.test_auth import TOKEN as AUTH_TOKEN
from tests.test_auth import RecordingAvatar, token_store


class AuthTests(SynchronousTestCase):
    """
    AUTH PLAIN and LOGIN under TLS; 538 before it.
    """

    def _secure(self) -> SMTPDriver:
        s = SMTPDriver(implicit_tls=True)
        s.send("EHLO c\r\n")
        return s

    def test_auth_before_starttls_gets_538(self) -> None:
        s = SMTPDriver()
        s.send("EHLO c\r\n")
        self.assertEqual(
            s.send(f"AUTH PLAIN {plain('apikey', TOKEN)}\r\n"),
            [reply_line(R.ENCRYPTION_REQUIRED)],
        )

    def test_mail_without_auth_gets_530(self) -> None:
        s = SMTPDriver(implicit_tls=True)
        s.send("EHLO c\r\n")
        self.assertEqual(s.send("MAIL FROM:<a@example.com>\r\n"), [reply_line(R.AUTH_REQUIRED)])

    def test_plain_with_initial_response_logs_in(self) -> None:
        for user in ("apikey", TOKEN, ""):
            s = self._secure()
            self.assertEqual(
                s.send(f"AUTH PLAIN {plain(user, TOKEN)}\r\n"),
                [reply_line(R.AUTH_SUCCESSFUL)],
            )

    def test_plain_without_initial_response_gets_334(self) -> None:
        """
        C{AUTH PLAIN} alone gets C{334 } with an empty challenge.
        """
        s = self._secure()
        self.assertEqual(s.send("AUTH PLAIN\r\n"), [reply_line(R.PLAIN_CHALLENGE)])
        self.assertEqual(s.send(plain("apikey", TOKEN) + "\r\n"), [reply_line(R.AUTH_SUCCESSFUL)])

    def test_plain_with_authzid_equal_to_user_logs_in(self) -> None:
        s = self._secure()
        self.assertEqual(
            s.send(f"AUTH PLAIN {plain('apikey', TOKEN, authzid='apikey')}\r\n"),
            [reply_line(R.AUTH_SUCCESSFUL)],
        )

    def test_login_with_and_without_initial_username_logs_in(self) -> None:
        s = self._secure()
        self.assertEqual(s.send("AUTH LOGIN\r\n"), [reply_line(R.LOGIN_USERNAME_CHALLENGE)])
        self.assertEqual(s.send(b64("apikey") + "\r\n"), [reply_line(R.LOGIN_PASSWORD_CHALLENGE)])
        self.assertEqual(s.send(b64(TOKEN) + "\r\n"), [reply_line(R.AUTH_SUCCESSFUL)])
        s = self._secure()
        self.assertEqual(
            s.send(f"AUTH LOGIN {b64(TOKEN)}\r\n"), [reply_line(R.LOGIN_PASSWORD_CHALLENGE)]
        )
        self.assertEqual(s.send(b64(TOKEN) + "\r\n"), [reply_line(R.AUTH_SUCCESSFUL)])

    def test_wrong_token_gets_535(self) -> None:
        s = self._secure()
        self.assertEqual(
            s.send(f"AUTH PLAIN {plain('apikey', 'wrong')}\r\n"),
            [reply_line(R.AUTH_INVALID)],
        )

    def test_malformed_auth_gets_501_and_session_goes_on(self) -> None:
        s = self._secure()
        self.assertEqual(s.send("AUTH PLAIN !!notbase64\r\n"), [reply_line(R.CANNOT_DECODE_AUTH)])
        bad = base64.b64encode(b"only-one-field").decode()
        self.assertEqual(s.send(f"AUTH PLAIN {bad}\r\n"), [reply_line(R.MALFORMED_AUTH_PLAIN)])
        self.assertEqual(s.send("AUTH\r\n"), [reply_line(R.SYNTAX_AUTH)])
        self.assertEqual(s.send("AUTH CRAM-MD5\r\n"), [reply_line(R.UNRECOGNIZED_AUTH_TYPE)])
        self.assertEqual(s.send("AUTH PLAIN\r\n"), [reply_line(R.PLAIN_CHALLENGE)])
        self.assertEqual(s.send("*\r\n"), [reply_line(R.AUTH_ABORTED)])
        self.assertEqual(s.send("NOOP\r\n"), [reply_line(R.OK)])
        self.assertEqual(
            s.send(f"AUTH PLAIN {plain('apikey', TOKEN)}\r\n"),
            [reply_line(R.AUTH_SUCCESSFUL)],
        )
        self.assertEqual(
            s.send(f"AUTH PLAIN {plain('apikey', TOKEN)}\r\n"),
            [reply_line(R.ALREADY_AUTHENTICATED)],
        )

    def test_three_failures_close_the_session(self) -> None:
        s = self._secure()
        s.send(f"AUTH PLAIN {plain('apikey', 'x')}\r\n")
        s.clock.advance(10)
        s.send(f"AUTH PLAIN {plain('apikey', 'x')}\r\n")
        s.clock.advance(10)
        s.replies()
        lines = s.send(f"AUTH PLAIN {plain('apikey', 'x')}\r\n")
        s.clock.advance(10)
        lines += s.replies()
        self.assertEqual(
            lines,
            [
                reply_line(R.AUTH_INVALID),
                reply_line(R.TOO_MANY_AUTH_FAILURES, HOST),
            ],
        )
        self.assertTrue(s.transport.disconnecting)

    def test_old_style_auth_line_is_advertised(self) -> None:
        s = SMTPDriver(implicit_tls=True)
        s.replies()
        names = [line[4:] for line in s.send("EHLO c\r\n")[1:]]
        self.assertIn("AUTH=PLAIN LOGIN", names)


class AuthEdgeTests(SynchronousTestCase, WireChecks):
    """
    AUTH exchanges a hostile or odd client may send.
    """

    def secure(self, **kwargs: Any) -> SMTPDriver:
        s = SMTPDriver(implicit_tls=True, **kwargs)
        s.replies()
        s.ehlo()
        return s

    def test_plain_equals_is_an_empty_response(self) -> None:
        s = self.secure()
        self.assertEqual(s.send("AUTH PLAIN =\r\n"), [reply_line(R.MALFORMED_AUTH_PLAIN)])
        self.assertEqual(s.send("NOOP\r\n"), [reply_line(R.OK)])
        self.assertEqual(
            s.send(f"AUTH PLAIN {plain('apikey', TOKEN)}\r\n"), [reply_line(R.AUTH_SUCCESSFUL)]
        )

    def test_trailing_and_doubled_spaces_and_lower_case_log_in(self) -> None:
        for line in (
            f"AUTH PLAIN {plain('apikey', TOKEN)}   \r\n",
            f"AUTH  PLAIN  {plain('apikey', TOKEN)}\r\n",
            f"auth plain {plain('apikey', TOKEN)}\r\n",
            f"Auth Plain {plain('APIKEY', TOKEN)}\r\n",
        ):
            s = self.secure()
            self.assertEqual(s.send(line), [reply_line(R.AUTH_SUCCESSFUL)], line)

    def test_response_line_with_trailing_spaces_logs_in(self) -> None:
        s = self.secure()
        s.send("AUTH PLAIN\r\n")
        self.assertEqual(s.send(plain("apikey", TOKEN) + "  \r\n"), [reply_line(R.AUTH_SUCCESSFUL)])

    def test_login_with_equals_as_initial_username(self) -> None:
        s = self.secure()
        self.assertEqual(s.send("AUTH LOGIN =\r\n"), [reply_line(R.LOGIN_PASSWORD_CHALLENGE)])
        self.assertEqual(s.send(b64(TOKEN) + "\r\n"), [reply_line(R.AUTH_SUCCESSFUL)])

    def test_star_cancels_at_each_step_and_is_no_failure(self) -> None:
        s = self.secure(limits=roomy())
        self.assertEqual(s.send("AUTH LOGIN\r\n"), [reply_line(R.LOGIN_USERNAME_CHALLENGE)])
        self.assertEqual(s.send("*\r\n"), [reply_line(R.AUTH_ABORTED)])
        self.assertEqual(s.send("AUTH LOGIN\r\n"), [reply_line(R.LOGIN_USERNAME_CHALLENGE)])
        self.assertEqual(s.send(b64("apikey") + "\r\n"), [reply_line(R.LOGIN_PASSWORD_CHALLENGE)])
        self.assertEqual(s.send(" * \r\n"), [reply_line(R.AUTH_ABORTED)])
        self.assertEqual(s.send("NOOP\r\n"), [reply_line(R.OK)])
        self.assertFalse(s.proto.authenticated)
        self.assertEqual(s.proto._auth_failures, 0)

    def test_auth_before_ehlo_gets_503(self) -> None:
        s = SMTPDriver(implicit_tls=True)
        s.replies()
        self.assertEqual(
            s.send(f"AUTH PLAIN {plain('apikey', TOKEN)}\r\n"),
            [reply_line(R.NEED_EHLO)],
        )

    def test_auth_during_a_transaction_gets_503(self) -> None:
        s = logged_in()
        s.send("MAIL FROM:<a@example.com>\r\n")
        self.assertEqual(s.send(f"AUTH PLAIN {plain('apikey', TOKEN)}\r\n")[0][:9], "503 5.5.1")
        s.proto.authenticated = False  # reach the transaction check itself
        self.assertEqual(
            s.send(f"AUTH PLAIN {plain('apikey', TOKEN)}\r\n"),
            [reply_line(R.AUTH_DURING_TRANSACTION)],
        )

    def test_unknown_mechanism_gets_504_and_bad_syntax_501(self) -> None:
        s = self.secure(limits=roomy())
        self.assertEqual(s.send("AUTH XOAUTH2 abc\r\n"), [reply_line(R.UNRECOGNIZED_AUTH_TYPE)])
        self.assertEqual(s.send("AUTH CRAM-MD5\r\n"), [reply_line(R.UNRECOGNIZED_AUTH_TYPE)])
        self.assertEqual(s.send("AUTH PLAIN a b\r\n"), [reply_line(R.SYNTAX_AUTH)])
        self.assertEqual(s.send("AUTH PLAIN \xe9\r\n"), [reply_line(R.CANNOT_DECODE_AUTH)])
        self.check_wire(s)

    def test_response_over_12288_octets_gets_500(self) -> None:
        """
        An AUTH response line may be 12288 octets (RFC 4954); longer ones
        get 500 and end the exchange.
        """
        s = self.secure(limits=roomy())
        s.send("AUTH PLAIN\r\n")
        self.assertEqual(s.send("A" * 12000 + "\r\n"), [reply_line(R.MALFORMED_AUTH_PLAIN)])
        s.send("AUTH PLAIN\r\n")
        self.assertEqual(s.send("A" * 13000 + "\r\n"), [reply_line(R.LINE_TOO_LONG)])
        self.assertEqual(s.send("NOOP\r\n"), [reply_line(R.OK)])
        s.send("AUTH PLAIN\r\n")
        self.assertEqual(s.send("A" * 13000), [reply_line(R.LINE_TOO_LONG)])
        self.assertEqual(s.send("A" * 100 + "\r\nNOOP\r\n"), [reply_line(R.OK)])
        self.assertEqual(
            s.send(f"AUTH PLAIN {plain('apikey', TOKEN)}\r\n"), [reply_line(R.AUTH_SUCCESSFUL)]
        )

    def test_long_initial_response_fits_the_auth_limit(self) -> None:
        """
        RFC 4954 section 4: an AUTH line, initial response included, may
        be 12,288 octets (clients such as Go's net/smtp always send one);
        longer is too long.
        """
        s = self.secure()
        token = "t" * 600
        self.assertEqual(
            s.send(f"AUTH PLAIN {plain('apikey', token)}\r\n"),
            [reply_line(R.AUTH_INVALID)],
        )
        self.assertEqual(
            s.send("AUTH PLAIN " + "A" * 13000 + "\r\n"), [reply_line(R.LINE_TOO_LONG)]
        )
        self.assertEqual(s.send("NOOP\r\n"), [reply_line(R.OK)])

    def test_base64_with_whitespace_or_bad_padding_gets_501(self) -> None:
        """
        Strict base64 (RFC 4954 section 4): inner whitespace or missing
        padding gets 501 5.5.2, like Postfix's "Cannot decode response";
        the exchange ends and the session goes on.
        """
        good = plain("apikey", TOKEN)
        self.assertTrue(good.endswith("="))
        s = self.secure(limits=roomy())
        for bad in (
            good[:8] + " " + good[8:],
            good[:8] + "\t" + good[8:],
            good.rstrip("="),
            good + "=",
            "====",
            "!!!!",
        ):
            s.send("AUTH PLAIN\r\n")
            self.assertEqual(s.send(bad + "\r\n"), [reply_line(R.CANNOT_DECODE_AUTH)], bad)
            self.assertEqual(s.send("NOOP\r\n"), [reply_line(R.OK)])
        self.assertEqual(s.proto._auth_failures, 0)

    def test_nul_in_a_response_gets_501(self) -> None:
        s = self.secure()
        s.send("AUTH LOGIN\r\n")
        self.assertEqual(s.send(b"YWJj\0\r\n"), [reply_line(R.NUL_IN_COMMAND)])
        self.assertEqual(s.send("NOOP\r\n"), [reply_line(R.OK)])

    def test_invalid_utf8_credentials_get_535(self) -> None:
        import base64

        s = self.secure()
        resp = base64.b64encode(b"\0\xff\xfe\0" + TOKEN.encode()).decode()
        self.assertEqual(s.send(f"AUTH PLAIN {resp}\r\n"), [reply_line(R.AUTH_INVALID)])
        resp = base64.b64encode(b"\0apikey\0\xff").decode()
        s.send(f"AUTH PLAIN {resp}\r\n")
        s.clock.advance(1)
        self.assertEqual(s.replies(), [reply_line(R.AUTH_INVALID)])
        self.check_wire(s)

    def test_authzid_other_than_user_gets_535(self) -> None:
        s = self.secure()
        self.assertEqual(
            s.send(f"AUTH PLAIN {plain('apikey', TOKEN, authzid='root')}\r\n"),
            [reply_line(R.AUTH_INVALID)],
        )

    def test_pipelined_login_exchange_is_answered_in_order(self) -> None:
        s = self.secure()
        self.assertEqual(
            s.send(f"AUTH LOGIN\r\n{b64('apikey')}\r\n{b64(TOKEN)}\r\nNOOP\r\n"),
            [
                reply_line(R.LOGIN_USERNAME_CHALLENGE),
                reply_line(R.LOGIN_PASSWORD_CHALLENGE),
                reply_line(R.AUTH_SUCCESSFUL),
                reply_line(R.OK),
            ],
        )

    def test_bare_lf_in_auth_response_in_reject_mode_ends_exchange(self) -> None:
        """
        In reject mode a bare-LF AUTH response gets 550 and ends the AUTH
        exchange: the next line is a command again, not base64.
        """
        s = SMTPDriver(implicit_tls=True, limits=LimitsConfig(bare_newline="reject"))
        s.ehlo()
        s.send("AUTH PLAIN\r\n")
        self.assertEqual(s.send(b"AAAA\n"), [reply_line(R.BARE_LF_IN_COMMAND)])
        self.assertEqual(s.send("NOOP\r\n"), [reply_line(R.OK)])


class ThrottleTests(SynchronousTestCase):
    """
    Failed AUTH is answered later each time, then the IP is locked out.
    """

    def test_failures_across_connections_slow_down_then_lock_out(self) -> None:
        """
        Failed AUTH from one IP, each with another wrong credential, is
        answered later each time, then AUTH alone is refused with a
        C{454 4.7.0} that says when to retry (the session stays open);
        another IP is not affected, and the lockout expires.
        """
        clock = Clock()
        first = SMTPDriver(
            implicit_tls=True, clock=clock, limits=LimitsConfig(auth_failures_per_ip=3)
        )
        factory = first.factory
        first.send("EHLO c\r\n")
        self.assertEqual(
            first.send(f"AUTH PLAIN {plain('', 'x0')}\r\n"),
            [reply_line(R.AUTH_INVALID)],
        )
        second = SMTPDriver(implicit_tls=True, clock=clock, factory=factory)
        second.send("EHLO c\r\n")
        self.assertEqual(second.send(f"AUTH PLAIN {plain('', 'x1')}\r\n"), [])
        clock.advance(1)
        self.assertEqual(second.replies(), [reply_line(R.AUTH_INVALID)])
        second.send(f"AUTH PLAIN {plain('', 'x2')}\r\n")
        clock.advance(5)
        second.replies()
        third = SMTPDriver(implicit_tls=True, clock=clock, factory=factory)
        third.send("EHLO c\r\n")
        refused = third.send(f"AUTH PLAIN {plain('', TOKEN)}\r\n")
        self.assertEqual(len(refused), 1)
        self.assertRegex(
            refused[0],
            r"^454 4\.7\.0 Too many failed authentication attempts, try again in \d+ seconds$",
        )
        self.assertFalse(third.transport.disconnecting)
        self.assertEqual(third.send("NOOP\r\n"), [reply_line(R.OK)])
        other = SMTPDriver(implicit_tls=True, clock=clock, factory=factory, ip="198.51.100.7")
        other.send("EHLO c\r\n")
        self.assertEqual(
            other.send(f"AUTH PLAIN {plain('', TOKEN)}\r\n"),
            [reply_line(R.AUTH_SUCCESSFUL)],
        )
        clock.advance(901)
        fourth = SMTPDriver(implicit_tls=True, clock=clock, factory=factory)
        fourth.send("EHLO c\r\n")
        self.assertEqual(
            fourth.send(f"AUTH PLAIN {plain('', TOKEN)}\r\n"),
            [reply_line(R.AUTH_SUCCESSFUL)],
        )

    def test_three_failed_logins_close_the_session(self) -> None:
        s = SMTPDriver(implicit_tls=True)
        s.ehlo()
        out: list[str] = []
        for _ in range(3):
            out += s.send("AUTH LOGIN\r\n")
            out += s.send(b64("apikey") + "\r\n")
            out += s.send(b64("wrong") + "\r\n")
            s.clock.advance(10)
            out += s.replies()
        self.assertEqual(
            out[-2:], [reply_line(R.AUTH_INVALID), reply_line(R.TOO_MANY_AUTH_FAILURES, HOST)]
        )
        self.assertEqual(out.count(reply_line(R.AUTH_INVALID)), 3)
        self.assertTrue(s.transport.disconnecting)

    def test_failures_across_connections_lock_the_ip_out(self) -> None:
        """
        Distinct wrong credentials from one IP over several connections
        lock that IP out of AUTH: even the right token then gets the
        C{454 4.7.0}, and the session stays open for other commands.
        """
        clock = Clock()
        first = SMTPDriver(
            implicit_tls=True,
            clock=clock,
            limits=LimitsConfig(auth_failures_per_ip=4, max_auth_failures=3),
        )
        factory = first.factory
        for n in range(4):
            s = first if n == 0 else SMTPDriver(clock=clock, factory=factory)
            s.ehlo()
            out = s.send(f"AUTH PLAIN {plain('apikey', f'bad{n}')}\r\n")
            clock.advance(10)
            self.assertIn(reply_line(R.AUTH_INVALID), out + s.replies())
        late = SMTPDriver(clock=clock, factory=factory)
        late.ehlo()
        refused = late.send(f"AUTH PLAIN {plain('apikey', TOKEN)}\r\n")
        self.assertEqual(len(refused), 1)
        self.assertTrue(refused[0].startswith("454 4.7.0 Too many failed authentication attempts"))
        self.assertFalse(late.transport.disconnecting)

    def test_delayed_535_keeps_later_commands_in_order(self) -> None:
        clock = Clock()
        first = SMTPDriver(implicit_tls=True, clock=clock)
        first.ehlo()
        first.send(f"AUTH PLAIN {plain('apikey', 'bad')}\r\n")
        s = SMTPDriver(clock=clock, factory=first.factory)
        s.ehlo()
        self.assertEqual(s.send(f"AUTH PLAIN {plain('apikey', 'bad')}\r\nNOOP\r\n"), [])
        self.assertEqual(s.transport.producerState, "paused")
        clock.advance(1)
        self.assertEqual(s.replies(), [reply_line(R.AUTH_INVALID), reply_line(R.OK)])

    def test_auth_delay_timer_cancelled_on_connection_lost(self) -> None:
        """
        A connection lost while its 535 is delayed leaves no timer behind.
        """
        clock = Clock()
        first = SMTPDriver(implicit_tls=True, clock=clock)
        first.ehlo()
        first.send(f"AUTH PLAIN {plain('apikey', 'bad')}\r\n")
        first.close()
        s = SMTPDriver(clock=clock, factory=first.factory)
        s.ehlo()
        s.send(f"AUTH PLAIN {plain('apikey', 'bad')}\r\n")
        s.close()
        self.assertEqual(clock.getDelayedCalls(), [])


class PortalSessionTests(SynchronousTestCase):
    """
    The portal of L{relayd.auth} behind relayd's SMTP session, with AUTH
    PLAIN and AUTH LOGIN (RFC 4954, RFC 4616 and draft-murchison-sasl-login).
    """

    def setUp(self) -> None:
        self.driver = SMTPDriver(
            portal=make_portal(token_store(), RecordingAvatar),
            hostname="relay.test",
            implicit_tls=True,
        )
        self.addCleanup(self.driver.close)
        self.driver.send(b"EHLO client.test\r\n")

    def test_auth_plain_logs_in_as_the_token(self) -> None:
        """
        AUTH PLAIN with the token logs in; the avatar becomes the delivery.
        """
        response = base64.b64encode(b"\0apikey\0" + AUTH_TOKEN.encode()).decode()
        self.assertEqual(
            self.driver.send(f"AUTH PLAIN {response}\r\n"), [reply_line(R.AUTH_SUCCESSFUL)]
        )
        delivery = self.driver.proto.avatar
        assert isinstance(delivery, RecordingAvatar)
        self.assertEqual(delivery.token, AUTH_TOKEN)

    def test_auth_login_with_the_token_as_user_and_password(self) -> None:
        """
        AUTH LOGIN with the token as user name and password logs in.
        """
        self.driver.send(b"AUTH LOGIN\r\n")
        self.driver.send(base64.b64encode(AUTH_TOKEN.encode()) + b"\r\n")
        self.assertEqual(
            self.driver.send(base64.b64encode(AUTH_TOKEN.encode()) + b"\r\n"),
            [reply_line(R.AUTH_SUCCESSFUL)],
        )

    def test_auth_plain_with_an_unknown_token_gets_535(self) -> None:
        """
        AUTH PLAIN with an unknown token is refused with 535.
        """
        response = base64.b64encode(b"\0apikey\0rly_wrong").decode()
        self.assertEqual(
            self.driver.send(f"AUTH PLAIN {response}\r\n"), [reply_line(R.AUTH_INVALID)]
        )
        self.assertIsNone(self.driver.proto.avatar)
