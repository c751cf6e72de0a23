"""
Tests for L{relayd.dialects.resend}.
"""

from __future__ import annotations

import json

from twisted.trial.unittest import SynchronousTestCase

from relayd.dialects.resend import ResendDialect
from relayd.reply import Reply
from relayd.result import Accepted
from relayd.testing import Answer, sample_message

from .helpers import KEY, TOKEN, exchange, result_of


class RequestTests(SynchronousTestCase):
    def test_request(self) -> None:
        """
        Resend gets C{/emails} with a Bearer key, the documented fields and
        an Idempotency-Key.
        """
        request, result = exchange(
            self,
            ResendDialect(),
            sample_message(),
            Answer(200, {"id": "49a3999c-0ce1-4ea6-ab68-afcd6dc2e794"}),
            url="https://api.resend.com/emails",
        )
        self.assertEqual(request.path, "/emails")
        self.assertEqual(request.header("authorization"), f"Bearer {TOKEN}")
        body = request.json
        self.assertEqual(body["to"], ["Ann <ann@example.net>"])
        self.assertEqual(body["cc"], ["bob@example.org"])
        self.assertEqual(body["bcc"], ["hidden@example.org"])
        self.assertEqual(body["reply_to"], ["help@example.com"])
        self.assertEqual(
            body["tags"], [{"name": "order", "value": "42"}, {"name": "customer", "value": "ann"}]
        )
        self.assertEqual(body["attachments"][1]["content_id"], "logo@example.com")
        self.assertEqual(body["headers"]["X-Campaign"], "spring")
        self.assertEqual(request.header("idempotency-key"), KEY)
        self.assertEqual(result, Accepted("49a3999c-0ce1-4ea6-ab68-afcd6dc2e794"))

    def test_no_key_no_header(self) -> None:
        """
        Without a transaction key (and no Resend-Idempotency-Key header),
        no Idempotency-Key is sent.
        """
        request, _ = exchange(self, ResendDialect(), sample_message(), key=None)
        self.assertIsNone(request.header("idempotency-key"))

    def test_smtp_idempotency_header(self) -> None:
        """
        Resend-Idempotency-Key, as Resend's SMTP service reads it, becomes the
        Idempotency-Key and is not sent as a header.
        """
        message = sample_message(headers=(("Resend-Idempotency-Key", "welcome-user/123"),))
        request = ResendDialect().request(message, TOKEN, "", 0, "relayd-key")
        self.assertEqual(request.headers, {"Idempotency-Key": "welcome-user/123"})
        self.assertEqual(
            json.loads(request.body)["headers"],
            {"List-Unsubscribe": "<mailto:unsubscribe@example.com>"},
        )


class AnswerTests(SynchronousTestCase):
    def test_errors(self) -> None:
        """
        Resend's documented error answers map to SMTP replies.
        """
        dialect = ResendDialect()
        self.assertEqual(
            result_of(
                dialect,
                422,
                {"statusCode": 422, "name": "validation_error", "message": "Invalid `to` field."},
            ),
            Reply(550, "5.6.0", "Invalid `to` field."),
        )
        self.assertEqual(
            result_of(dialect, 403, {"name": "invalid_api_key", "message": "API key is invalid"}),
            Reply(554, "5.7.1", "API key is invalid"),
        )
        self.assertEqual(
            result_of(dialect, 409, {"name": "concurrent_idempotent_requests"}).code, 451
        )  # type: ignore[union-attr]
        self.assertEqual(result_of(dialect, 429, {"name": "daily_quota_exceeded"}).status, "4.7.1")  # type: ignore[union-attr]
        self.assertEqual(result_of(dialect, 500, {"name": "application_error"}).status, "4.3.0")  # type: ignore[union-attr]
