"""
Tests for L{relayd.dialects.mailjet}.
"""

from __future__ import annotations

from base64 import b64decode

from twisted.trial.unittest import SynchronousTestCase

from relayd.dialects.mailjet import MailjetDialect
from relayd.reply import Refused, Reply
from relayd.result import Accepted
from relayd.testing import Answer, sample_message

from .helpers import exchange, result_of

TOKEN = "apikey:secretkey"
SENT = {
    "Messages": [
        {
            "Status": "success",
            "To": [
                {
                    "Email": "ann@example.net",
                    "MessageUUID": "123",
                    "MessageID": 456,
                    "MessageHref": "https://api.mailjet.com/v3/message/456",
                }
            ],
        }
    ]
}


class RequestTests(SynchronousTestCase):
    def test_request(self) -> None:
        """
        Mailjet gets C{/v3.1/send} with Basic key:secret and the
        documented fields; SMTP relay headers become fields.
        """
        message = sample_message(
            headers=(
                ("X-MJ-CustomID", "order-42"),
                ("X-Mailjet-TrackClick", "1"),
                ("X-Mailjet-Prio", "0"),
                ("X-Campaign", "spring"),
            )
        )
        request, result = exchange(
            self,
            MailjetDialect(),
            message,
            Answer(200, SENT),
            token=TOKEN,
            url="https://api.mailjet.com/v3.1/send",
        )
        self.assertEqual(request.path, "/v3.1/send")
        self.assertEqual(b64decode(request.header("authorization")[6:]), b"apikey:secretkey")  # type: ignore[index]
        [sent] = request.json["Messages"]
        self.assertEqual(sent["From"], {"Email": "zoe@example.com", "Name": "Zoë Sender"})
        self.assertEqual(sent["To"], [{"Email": "ann@example.net", "Name": "Ann"}])
        self.assertEqual(sent["Cc"], [{"Email": "bob@example.org"}])
        self.assertEqual(sent["Bcc"], [{"Email": "hidden@example.org"}])
        self.assertEqual(sent["CustomID"], "order-42")
        self.assertEqual(sent["TrackClicks"], "disabled")
        self.assertEqual(sent["TrackOpens"], "enabled")
        self.assertEqual(sent["Priority"], 0)
        self.assertEqual(sent["CustomCampaign"], "orders")
        self.assertEqual(
            sent["Headers"],
            {"X-Campaign": "spring", "List-Unsubscribe": "<mailto:unsubscribe@example.com>"},
        )
        self.assertEqual([a["Filename"] for a in sent["Attachments"]], ["invoice.pdf"])
        self.assertEqual([a["ContentID"] for a in sent["InlinedAttachments"]], ["logo@example.com"])
        self.assertEqual(result, Accepted("456"))

    def test_bad_token(self) -> None:
        """
        A token without the secret half gets 554 5.7.1.
        """
        error = self.assertRaises(
            Refused, MailjetDialect().request, sample_message(), "apikey", "", 0
        )
        self.assertEqual(error.reply.status, "5.7.1")


class AnswerTests(SynchronousTestCase):
    def test_errors(self) -> None:
        """
        Mailjet's documented error answers map to SMTP replies.
        """
        dialect = MailjetDialect()
        invalid = {
            "Messages": [
                {
                    "Status": "error",
                    "Errors": [
                        {
                            "ErrorIdentifier": "x",
                            "ErrorCode": "mj-0013",
                            "StatusCode": 400,
                            "ErrorMessage": '"bad" is an invalid email address.',
                            "ErrorRelatedTo": ["To[0].Email"],
                        }
                    ],
                }
            ]
        }
        self.assertEqual(
            result_of(dialect, 400, invalid),
            Reply(550, "5.6.0", '"bad" is an invalid email address.'),
        )
        self.assertEqual(
            result_of(
                dialect,
                401,
                {
                    "ErrorIdentifier": "y",
                    "StatusCode": 401,
                    "ErrorMessage": "API key authentication/authorization failure.",
                },
            ),
            Reply(554, "5.7.1", "API key authentication/authorization failure."),
        )
        self.assertEqual(result_of(dialect, 429, {}).status, "4.7.1")  # type: ignore[union-attr]

    def test_id_falls_back_to_uuid(self) -> None:
        """
        Without a MessageID, the MessageUUID is the id.
        """
        self.assertEqual(
            result_of(MailjetDialect(), 200, {"Messages": [{"To": [{"MessageUUID": "u-1"}]}]}),
            Accepted("u-1"),
        )
        self.assertEqual(result_of(MailjetDialect(), 200, {"Messages": []}), Accepted(""))
