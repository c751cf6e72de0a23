"""
Tests for L{relayd.dialects.sparkpost}.
"""

from __future__ import annotations

import json

from twisted.trial.unittest import SynchronousTestCase

from relayd.dialects.sparkpost import SparkPostDialect
from relayd.reply import Reply
from relayd.result import Accepted
from relayd.testing import Answer, sample_message

from .helpers import TOKEN, exchange, result_of

MSYS = json.dumps(
    {
        "campaign_id": "spring",
        "metadata": {"batch": "7"},
        "tags": ["promo"],
        "options": {"transactional": True, "bogus": 1},
    }
)


class RequestTests(SynchronousTestCase):
    def test_request(self) -> None:
        """
        SparkPost gets C{/api/v1/transmissions} with the bare key; each
        envelope recipient is a recipient with the To header as
        C{header_to}; Cc goes in C{content.headers.CC}.
        """
        message = sample_message(headers=(("X-MSYS-API", MSYS), ("X-Campaign", "spring")))
        request, result = exchange(
            self,
            SparkPostDialect(),
            message,
            Answer(
                200,
                {
                    "results": {
                        "total_rejected_recipients": 0,
                        "total_accepted_recipients": 3,
                        "id": "11668787484950529",
                    }
                },
            ),
            url="https://api.sparkpost.com/api/v1/transmissions",
        )
        self.assertEqual(request.path, "/api/v1/transmissions")
        self.assertEqual(request.header("authorization"), TOKEN)
        body = request.json
        self.assertEqual(
            [r["address"] for r in body["recipients"]],
            [
                {"email": email, "header_to": "Ann <ann@example.net>"}
                for email in ("ann@example.net", "bob@example.org", "hidden@example.org")
            ],
        )
        self.assertEqual(body["recipients"][0]["tags"], ["orders", "shipping", "promo"])
        content = body["content"]
        self.assertEqual(content["from"], {"email": "zoe@example.com", "name": "Zoë Sender"})
        self.assertEqual(
            content["headers"],
            {
                "X-Campaign": "spring",
                "List-Unsubscribe": "<mailto:unsubscribe@example.com>",
                "CC": "bob@example.org",
            },
        )
        self.assertEqual([a["name"] for a in content["attachments"]], ["invoice.pdf"])
        self.assertEqual([a["name"] for a in content["inline_images"]], ["logo@example.com"])
        self.assertEqual(body["campaign_id"], "spring")
        self.assertEqual(body["metadata"], {"order": "42", "customer": "ann", "batch": "7"})
        self.assertEqual(
            body["options"], {"open_tracking": True, "click_tracking": True, "transactional": True}
        )
        self.assertEqual(result, Accepted("11668787484950529"))

    def test_raw_only_as_rfc822(self) -> None:
        """
        A signed message goes unchanged as C{content.email_rfc822}, without
        its Bcc field.
        """
        raw = b"From: zoe@example.com\r\nBcc: hidden@example.org\r\nTo: ann@example.net\r\n\r\nsigned\r\n"
        body = json.loads(SparkPostDialect().body(sample_message(raw=raw, raw_only=True)))
        self.assertEqual(
            body["content"],
            {"email_rfc822": "From: zoe@example.com\r\nTo: ann@example.net\r\n\r\nsigned\r\n"},
        )
        self.assertNotIn("header_to", body["recipients"][0]["address"])


class AnswerTests(SynchronousTestCase):
    def test_errors(self) -> None:
        """
        SparkPost's documented error answers map to SMTP replies.
        """
        dialect = SparkPostDialect()
        self.assertEqual(
            result_of(
                dialect,
                422,
                {"errors": [{"message": "Invalid domain", "description": "x", "code": "1902"}]},
            ),
            Reply(550, "5.6.0", "Invalid domain"),
        )
        self.assertEqual(
            result_of(dialect, 401, {"errors": [{"message": "Unauthorized."}]}),
            Reply(554, "5.7.1", "Unauthorized."),
        )
        self.assertEqual(
            result_of(dialect, 420, {"errors": [{"message": "Exceed Sending Limit"}]}).status,
            "4.7.1",
        )  # type: ignore[union-attr]
        self.assertEqual(result_of(dialect, 503, {}).status, "4.3.0")  # type: ignore[union-attr]
