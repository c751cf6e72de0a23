"""
Tests for L{relayd.dialects.brevo}.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from relayd.dialects.brevo import BrevoDialect
from relayd.message import Envelope
from relayd.reply import Refused, Reply
from relayd.result import Accepted
from relayd.testing import Answer, sample_message

from .helpers import KEY, TOKEN, exchange, result_of


class RequestTests(SynchronousTestCase):
    def test_request(self) -> None:
        """
        Brevo gets C{/v3/smtp/email} with C{api-key}, the documented fields
        and C{headers.idempotencyKey}; X-Mailin-Tag becomes tags.
        """
        message = sample_message(
            headers=(("X-Mailin-Tag", "receipts, eu"), ("X-Mailin-custom", "a:1"))
        )
        request, result = exchange(
            self,
            BrevoDialect(),
            message,
            Answer(201, {"messageId": "<201798300811.5787683@smtp-relay.mailin.fr>"}),
            url="https://api.brevo.com/v3/smtp/email",
        )
        self.assertEqual(request.path, "/v3/smtp/email")
        self.assertEqual(request.header("api-key"), TOKEN)
        body = request.json
        self.assertEqual(body["sender"], {"email": "zoe@example.com", "name": "Zoë Sender"})
        self.assertEqual(body["to"], [{"email": "ann@example.net", "name": "Ann"}])
        self.assertEqual(body["cc"], [{"email": "bob@example.org"}])
        self.assertEqual(body["bcc"], [{"email": "hidden@example.org"}])
        self.assertEqual(body["replyTo"], {"email": "help@example.com"})
        self.assertEqual(body["tags"], ["orders", "shipping", "receipts", "eu"])
        self.assertEqual(body["headers"]["X-Mailin-custom"], "a:1")
        self.assertNotIn("X-Mailin-Tag", body["headers"])
        self.assertEqual(body["headers"]["idempotencyKey"], KEY)
        self.assertIsNone(request.header("idempotency-key"))
        self.assertEqual([a["name"] for a in body["attachment"]], ["invoice.pdf", "logo.png"])
        self.assertIn("htmlContent", body)
        self.assertEqual(result, Accepted("<201798300811.5787683@smtp-relay.mailin.fr>"))

    def test_recipient_limit(self) -> None:
        """
        More than 99 recipients gets 452 4.5.3.
        """
        many = Envelope("b@example.com", tuple(f"r{i}@example.net" for i in range(100)))
        error = self.assertRaises(Refused, BrevoDialect().body, sample_message(envelope=many))
        self.assertEqual(error.reply.code, 452)


class AnswerTests(SynchronousTestCase):
    def test_errors(self) -> None:
        """
        Brevo's documented error answers map to SMTP replies.
        """
        dialect = BrevoDialect()
        self.assertEqual(
            result_of(
                dialect, 400, {"code": "invalid_parameter", "message": "email is not valid in to"}
            ),
            Reply(550, "5.6.0", "email is not valid in to"),
        )
        self.assertEqual(
            result_of(dialect, 401, {"code": "unauthorized", "message": "Key not found"}).code, 554
        )  # type: ignore[union-attr]
        self.assertEqual(result_of(dialect, 402, {"code": "not_enough_credits"}).code, 451)  # type: ignore[union-attr]
        self.assertEqual(result_of(dialect, 429, {}).status, "4.7.1")  # type: ignore[union-attr]
