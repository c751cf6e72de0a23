"""
Tests for L{relayd.testing}: the fakes relayd ships and its SMTP test
driver behave as their docstrings say, so tests built on them test relayd
and not the fakes.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from treq.testing import StubTreq
from twisted.cred.credentials import UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet import defer
from twisted.internet.interfaces import ITLSTransport
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from relayd import reply as R
from relayd.config import LimitsConfig
from relayd.interfaces import ISubmission
from relayd.message import OutboundMessage
from relayd.reply import Refused, Reply
from relayd.smtp.guards import DeliveryTracker
from relayd.testing import (
    TOKEN,
    FakeDelivery,
    FakeUpstream,
    RecordingTransport,
    SMTPDriver,
    TLSStringTransport,
    async_test,
    auth_plain,
    make_fake_portal,
    reply_line,
    sample_message,
    split_at,
)


class ReplyLineTests(SynchronousTestCase):
    """
    L{reply_line} gives a reply's line on the wire.
    """

    def test_code_status_text(self) -> None:
        """
        Code, enhanced status code and text, separated by spaces.
        """
        self.assertEqual(reply_line(Reply(250, "2.1.0", "Ok")), "250 2.1.0 Ok")

    def test_no_status(self) -> None:
        """
        Without an enhanced status code, code and text only.
        """
        self.assertEqual(reply_line(Reply(354, "", "Go on")), "354 Go on")
        self.assertEqual(reply_line(Reply(334, "", "")), "334 ")

    def test_hostname_before_the_text(self) -> None:
        """
        With a hostname, it comes before the text (RFC 5321 section 3.8).
        """
        self.assertEqual(
            reply_line(Reply(421, "4.4.2", "Bye now"), "mx.test"), "421 4.4.2 mx.test Bye now"
        )


class HelperTests(SynchronousTestCase):
    """
    L{auth_plain} and L{split_at}.
    """

    def test_auth_plain(self) -> None:
        """
        The AUTH PLAIN response is base64 of authzid, NUL, user, NUL,
        password (RFC 4616 section 2).
        """
        self.assertEqual(base64.b64decode(auth_plain("u", "p")), b"\0u\0p")
        self.assertEqual(base64.b64decode(auth_plain("u", "p", "z")), b"z\0u\0p")

    def test_split_at(self) -> None:
        """
        Cuts in any order, repeated or out of range, give the non-empty
        pieces in order; they join to the input.
        """
        self.assertEqual(split_at(b"abcdef", [4, 2, 2, 0, -1, 6, 99]), [b"ab", b"cd", b"ef"])
        self.assertEqual(split_at(b"abc", []), [b"abc"])
        self.assertEqual(split_at(b"", [1]), [])


class TransportTests(SynchronousTestCase):
    """
    L{TLSStringTransport} and L{RecordingTransport}.
    """

    def test_starttls_is_recorded(self) -> None:
        """
        L{TLSStringTransport} declares L{ITLSTransport} (it has its
        C{startTLS}, not the TCP options); C{startTLS} only records that it
        was called.
        """
        transport = TLSStringTransport()
        self.assertTrue(ITLSTransport.providedBy(transport))
        self.assertFalse(transport.tls_started)
        transport.startTLS(object())
        self.assertTrue(transport.tls_started)

    def test_recording_keeps_every_write(self) -> None:
        """
        L{RecordingTransport} keeps every write across C{clear}, and what
        was written after C{loseConnection} apart.
        """
        transport = RecordingTransport()
        transport.write(b"one\r\n")
        transport.clear()
        transport.write(b"two\r\n")
        self.assertEqual(transport.value(), b"two\r\n")
        self.assertEqual(bytes(transport.wire), b"one\r\ntwo\r\n")
        self.assertEqual(transport.chunks, [b"one\r\n", b"two\r\n"])
        self.assertEqual(bytes(transport.after_close), b"")
        transport.loseConnection()
        transport.write(b"late\r\n")
        self.assertEqual(bytes(transport.after_close), b"late\r\n")


class FakeDeliveryTests(SynchronousTestCase):
    """
    L{FakeDelivery}, the recording L{ISubmission} avatar.
    """

    def transact(self, delivery: FakeDelivery, body: bytes) -> Reply:
        delivery.validateFrom(("client", "192.0.2.1"), "a@example.com")
        factory = delivery.validateTo("b@example.com")
        message = factory()
        message.bodyReceived(body)
        result: Reply = self.successResultOf(message.eomReceived())
        return result

    def test_interface(self) -> None:
        """
        It provides L{ISubmission}.
        """
        self.assertTrue(verifyObject(ISubmission, FakeDelivery()))

    def test_records_and_queues(self) -> None:
        """
        A transaction is recorded and answered with C{250 ... queued as
        fake-<n>}, n counting from 1.
        """
        delivery = FakeDelivery()
        self.assertEqual(self.transact(delivery, b"x\r\n"), R.queued("fake-1"))
        self.assertEqual(self.transact(delivery, b"y\r\n"), R.queued("fake-2"))
        self.assertEqual(
            [(m.mail_from, m.rcpt_to, m.data) for m in delivery.sent],
            [
                ("a@example.com", ["b@example.com"], b"x\r\n"),
                ("a@example.com", ["b@example.com"], b"y\r\n"),
            ],
        )

    def test_result(self) -> None:
        """
        With C{result}, the final dot gets that reply instead.
        """
        delivery = FakeDelivery()
        delivery.result = ("451", "4.3.0", "Try later")
        self.assertEqual(self.transact(delivery, b"x\r\n"), Reply(451, "4.3.0", "Try later"))

    def test_allowed_senders(self) -> None:
        """
        With C{allowed_senders}, another sender is refused with
        L{R.SENDER_NOT_ALLOWED}.
        """
        delivery = FakeDelivery()
        delivery.allowed_senders = ("ok@example.com",)
        refused = self.assertRaises(
            Refused, delivery.validateFrom, ("c", "192.0.2.1"), "a@example.com"
        )
        self.assertEqual(refused.reply, R.SENDER_NOT_ALLOWED)
        self.assertEqual(
            delivery.validateFrom(("c", "192.0.2.1"), "ok@example.com"), "ok@example.com"
        )

    def test_hold_and_release(self) -> None:
        """
        With C{hold}, validations answer with a Deferred that L{release}
        fires, in order; with C{hold_eom}, the final dot waits for
        L{release_eom}.
        """
        delivery = FakeDelivery()
        delivery.hold = True
        d = delivery.validateFrom(("c", "192.0.2.1"), "a@example.com")
        assert isinstance(d, defer.Deferred)
        self.assertNoResult(d)
        delivery.release()
        self.assertEqual(self.successResultOf(d), "a@example.com")
        delivery.hold = False
        delivery.hold_eom = True
        message = delivery.validateTo("b@example.com")()
        done = message.eomReceived()
        self.assertNoResult(done)
        delivery.release_eom()
        self.assertEqual(self.successResultOf(done), R.queued("fake-1"))


class FakePortalTests(SynchronousTestCase):
    """
    L{make_fake_portal}: relayd's checker for one token, the given avatar.
    """

    def test_token_logs_in_as_the_avatar(self) -> None:
        avatar = FakeDelivery()
        portal = make_fake_portal(avatar)
        _, got, _ = self.successResultOf(
            portal.login(UsernamePassword(b"apikey", TOKEN.encode()), None, ISubmission)
        )
        self.assertIs(got, avatar)

    def test_other_token_is_refused(self) -> None:
        portal = make_fake_portal(FakeDelivery(), token="another")
        self.failureResultOf(
            portal.login(UsernamePassword(b"apikey", TOKEN.encode()), None, ISubmission),
            UnauthorizedLogin,
        )


class SMTPDriverTests(SynchronousTestCase):
    """
    L{SMTPDriver}: one session, bytes in, reply lines out.
    """

    def test_greeting_and_replies(self) -> None:
        """
        The greeting is waiting; L{SMTPDriver.replies} returns lines once.
        """
        s = SMTPDriver()
        self.assertEqual(s.replies(), [s.line(R.GREETING)])
        self.assertEqual(s.replies(), [])
        self.assertEqual(s.send("NOOP\r\nNOOP\r\n"), [reply_line(R.OK)] * 2)

    def test_feed_and_bytewise_are_the_same_input(self) -> None:
        """
        Input cut into packets, or sent octet by octet, is the same input.
        """
        whole, cut, octets = SMTPDriver(), SMTPDriver(), SMTPDriver()
        for s in (whole, cut, octets):
            s.replies()
        stream = b"NOOP\r\nRSET\r\nQUIT\r\n"
        expected = whole.send(stream)
        self.assertEqual(cut.feed(stream, [3, 9]), expected)
        self.assertEqual(octets.bytewise(stream), expected)

    def test_login_over_starttls_and_implicit_tls(self) -> None:
        """
        L{SMTPDriver.login} uses STARTTLS on a plain listener; on both the
        session ends up authenticated with the fake delivery.
        """
        for implicit in (False, True):
            s = SMTPDriver(implicit_tls=implicit)
            s.login()
            self.assertTrue(s.proto.authenticated)
            self.assertIs(s.proto.avatar, s.delivery)
            self.assertEqual(s.transport.tls_started, not implicit)

    def test_login_with_a_wrong_token_raises(self) -> None:
        """
        A login that does not get 235 raises L{AssertionError}.
        """
        s = SMTPDriver(implicit_tls=True)
        self.assertRaises(AssertionError, s.login, "wrong")

    def test_start_and_deliver(self) -> None:
        """
        L{SMTPDriver.start} leaves the session in DATA; the message goes
        to the fake delivery.
        """
        s = SMTPDriver(implicit_tls=True)
        s.login()
        s.start("c@example.com")
        self.assertEqual(s.send("hi\r\n.\r\n"), [reply_line(R.queued("fake-1"))])
        self.assertEqual(s.delivery.sent[0].rcpt_to, ["c@example.com"])

    def test_shared_factory_and_close(self) -> None:
        """
        Drivers built on one factory share its connection caps; closing a
        driver frees its connection.
        """
        first = SMTPDriver(limits=LimitsConfig(max_connections_per_ip=1))
        second = SMTPDriver(factory=first.factory)
        self.assertEqual(second.replies(), [second.line(R.TOO_MANY_CONNECTIONS)])
        first.close()
        self.assertEqual(first.factory.limiter.total, 0)
        other = SMTPDriver(factory=first.factory, ip="198.51.100.1")
        self.assertEqual(other.replies(), [other.line(R.GREETING)])

    def test_ipv6_client_and_factory_arguments(self) -> None:
        """
        An IPv6 C{ip} is the session's peer; other keyword arguments go to
        the factory (here C{tracker}).
        """
        tracker = DeliveryTracker()
        s = SMTPDriver(ip="2001:db8::1", tracker=tracker)
        self.assertEqual(s.transport.getPeer().host, "2001:db8::1")
        self.assertIs(s.factory.tracker, tracker)
        self.assertEqual(s.replies(), [s.line(R.GREETING)])

    def test_without_tls_context(self) -> None:
        """
        With no TLS context, STARTTLS is not offered.
        """
        s = SMTPDriver(context_factory=None)
        s.replies()
        self.assertNotIn("250-STARTTLS", s.ehlo())


class FakeUpstreamTests(SynchronousTestCase):
    """
    L{FakeUpstream}, in memory behind L{StubTreq}.
    """

    def setUp(self) -> None:
        self.upstream = FakeUpstream()
        self.http: Any = StubTreq(self.upstream)  # its methods are made at run time

    def post(self, body: bytes, **kwargs: object) -> tuple[int, bytes]:
        response = self.successResultOf(
            self.http.post("https://api.test/send?x=1", data=body, **kwargs)
        )
        content: bytes = self.successResultOf(response.content())
        return response.code, content

    def test_records_and_answers_by_default(self) -> None:
        """
        Each request is recorded (method, path, headers, body, JSON) and
        answered C{200 {"id": "fake-<n>"}}.
        """
        code, content = self.post(b'{"a": 1}', headers={"X-Key": "k"})
        self.assertEqual((code, json.loads(content)), (200, {"id": "fake-1"}))
        request = self.upstream.last
        self.assertEqual((request.method, request.path), ("POST", "/send"))
        self.assertEqual(request.header("x-key"), "k")
        self.assertEqual((request.body, request.json), (b'{"a": 1}', {"a": 1}))
        self.assertEqual(json.loads(self.post(b"not json")[1]), {"id": "fake-2"})
        self.assertIsNone(self.upstream.last.json)

    def test_queued_answers_in_order(self) -> None:
        """
        Queued answers come first, in order: JSON, raw bodies, headers.
        """
        self.upstream.enqueue(422, {"error": "bad"})
        self.upstream.enqueue(502, body=b"<html>", headers={"Retry-After": "5"})
        self.assertEqual(self.post(b"")[0], 422)
        response = self.successResultOf(self.http.post("https://api.test/", data=b""))
        self.assertEqual(response.code, 502)
        self.assertEqual(response.headers.getRawHeaders("retry-after"), ["5"])
        self.assertEqual(self.successResultOf(response.content()), b"<html>")
        self.assertEqual(self.post(b"")[0], 200)

    def test_hang(self) -> None:
        """
        A C{hang} answer holds the request open in L{FakeUpstream.pending}.
        """
        self.upstream.enqueue(hang=True)
        d = self.http.post("https://api.test/", data=b"")
        self.assertNoResult(d)
        self.assertEqual(len(self.upstream.pending), 1)


class OtherHelperTests(SynchronousTestCase):
    """
    L{sample_message} and L{async_test}.
    """

    def test_sample_message(self) -> None:
        """
        A complete message; fields can be replaced.
        """
        message = sample_message(subject="Other")
        self.assertIsInstance(message, OutboundMessage)
        self.assertEqual(message.subject, "Other")
        self.assertEqual(len(message.attachments), 2)

    def test_async_test(self) -> None:
        """
        An C{async def} test method becomes one that returns a Deferred.
        """

        class Case:
            @async_test
            async def run(self) -> int:
                return 7

        self.assertEqual(self.successResultOf(Case().run()), 7)
