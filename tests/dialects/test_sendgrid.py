"""
Tests for L{relayd.dialects.sendgrid}.
"""

from __future__ import annotations

import json

from twisted.trial.unittest import SynchronousTestCase

from relayd.dialects.sendgrid import SendGridDialect
from relayd.message import Envelope
from relayd.reply import Refused, Reply
from relayd.result import Accepted
from relayd.testing import Answer, sample_message

from .helpers import TOKEN, exchange, result_of

SMTPAPI = json.dumps(
    {
        "category": ["newsletter", "orders"],
        "unique_args": {"user": 7},
        "send_at": 1700000300,
        "asm_group_id": 42,
        "ip_pool": "transactional",
        "filters": {"clicktrack": {"settings": {"enable": 0}}},
    }
)


class RequestTests(SynchronousTestCase):
    def test_request(self) -> None:
        """
        SendGrid gets C{/v3/mail/send} with a Bearer key and the documented
        fields; Bcc recipients only in C{personalizations[].bcc}.
        """
        message = sample_message(track=None, headers=(("X-Campaign", "spring"),))
        request, result = exchange(
            self,
            SendGridDialect(),
            message,
            Answer(202, body=b"", headers={"X-Message-Id": "sg-abc"}),
            url="https://api.sendgrid.com/v3/mail/send",
        )
        self.assertEqual(request.path, "/v3/mail/send")
        self.assertEqual(request.header("authorization"), f"Bearer {TOKEN}")
        self.assertEqual(request.header("content-type"), "application/json")
        body = request.json
        self.assertEqual(
            body["personalizations"],
            [
                {
                    "to": [{"email": "ann@example.net", "name": "Ann"}],
                    "cc": [{"email": "bob@example.org"}],
                    "bcc": [{"email": "hidden@example.org"}],
                }
            ],
        )
        self.assertEqual(body["from"], {"email": "zoe@example.com", "name": "Zoë Sender"})
        self.assertEqual(body["reply_to_list"], [{"email": "help@example.com"}])
        self.assertEqual([c["type"] for c in body["content"]], ["text/plain", "text/html"])
        self.assertEqual(body["categories"], ["orders", "shipping"])
        self.assertEqual(body["custom_args"], {"order": "42", "customer": "ann"})
        self.assertEqual(
            body["headers"],
            {"X-Campaign": "spring", "List-Unsubscribe": "<mailto:unsubscribe@example.com>"},
        )
        self.assertEqual(
            [(a["filename"], a["disposition"]) for a in body["attachments"]],
            [("invoice.pdf", "attachment"), ("logo.png", "inline")],
        )
        self.assertEqual(body["attachments"][1]["content_id"], "logo@example.com")
        self.assertNotIn("tracking_settings", body)
        self.assertEqual(result, Accepted("sg-abc"))

    def test_x_smtpapi_mapped_and_stripped(self) -> None:
        """
        X-SMTPAPI categories, unique_args, send_at, asm_group_id, ip_pool and
        filters become API fields; the header is not sent.
        """
        message = sample_message(track=None, headers=(("X-SMTPAPI", SMTPAPI),))
        body = json.loads(SendGridDialect().body(message))
        self.assertEqual(body["categories"], ["orders", "shipping", "newsletter"])
        self.assertEqual(body["custom_args"]["user"], "7")
        self.assertEqual(body["send_at"], 1700000300)
        self.assertEqual(body["asm"], {"group_id": 42})
        self.assertEqual(body["ip_pool_name"], "transactional")
        self.assertEqual(body["tracking_settings"], {"click_tracking": {"enable": False}})
        self.assertNotIn("X-SMTPAPI", body["headers"])

    def test_bad_x_smtpapi(self) -> None:
        """
        An X-SMTPAPI header that is not a JSON object gets 550 5.6.0.
        """
        message = sample_message(headers=(("X-SMTPAPI", "{nope"),))
        error = self.assertRaises(Refused, SendGridDialect().body, message)
        self.assertEqual(error.reply, Reply(550, "5.6.0", "X-SMTPAPI header is not a JSON object"))

    def test_only_bcc_recipients_refused(self) -> None:
        """
        A message whose recipients are all Bcc cannot go: SendGrid needs a
        To address and a Bcc recipient must not be shown.
        """
        message = sample_message(
            envelope=Envelope("b@example.com", ("hidden@example.org",)),
            to=("a@example.net",),
            cc=(),
        )
        error = self.assertRaises(Refused, SendGridDialect().body, message)
        self.assertEqual(error.reply.code, 550)

    def test_limits(self) -> None:
        """
        More than 1000 recipients is 452 4.5.3; more than 30 MB is 552 5.3.4.
        """
        many = Envelope("b@example.com", tuple(f"r{i}@example.net" for i in range(1001)))
        error = self.assertRaises(Refused, SendGridDialect().body, sample_message(envelope=many))
        self.assertEqual((error.reply.code, error.reply.status), (452, "4.5.3"))
        big = sample_message(raw=b"x" * (30 * 1000 * 1000 + 1))
        error = self.assertRaises(Refused, SendGridDialect().body, big)
        self.assertEqual((error.reply.code, error.reply.status), (552, "5.3.4"))


class AnswerTests(SynchronousTestCase):
    def test_errors(self) -> None:
        """
        SendGrid's documented error answers map to SMTP replies.
        """
        dialect = SendGridDialect()
        errors = {"errors": [{"message": "The from address does not match", "field": "from"}]}
        self.assertEqual(
            result_of(dialect, 400, errors), Reply(550, "5.6.0", "The from address does not match")
        )
        self.assertEqual(result_of(dialect, 401, {"errors": [{"message": "bad key"}]}).code, 554)  # type: ignore[union-attr]
        self.assertEqual(
            result_of(dialect, 403, {}), Reply(554, "5.7.1", "Upstream refused the API token")
        )
        self.assertEqual(result_of(dialect, 413, {}).code, 552)  # type: ignore[union-attr]
        self.assertEqual(result_of(dialect, 429, {}).status, "4.7.1")  # type: ignore[union-attr]
        self.assertEqual(result_of(dialect, 500, {}).status, "4.3.0")  # type: ignore[union-attr]

    def test_id_from_header(self) -> None:
        """
        The id is the X-Message-Id header; without it, the message is still
        accepted.
        """
        self.assertEqual(result_of(SendGridDialect(), 202, x_message_id="abc"), Accepted("abc"))
        self.assertEqual(result_of(SendGridDialect(), 202), Accepted(""))
