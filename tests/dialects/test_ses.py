"""
Tests for L{relayd.dialects.ses}.
"""

from __future__ import annotations

import datetime
import json
from base64 import b64decode
from unittest import mock

from botocore.auth import SigV4Auth  # type: ignore[import-untyped]
from botocore.awsrequest import AWSRequest  # type: ignore[import-untyped]
from botocore.credentials import Credentials  # type: ignore[import-untyped]
from twisted.trial.unittest import SynchronousTestCase

from relayd.config import HeadersConfig
from relayd.dialects.ses import SESDialect, region_of
from relayd.message import Envelope, OutboundMessage, parse_message
from relayd.reply import Refused, Reply
from relayd.result import Accepted
from relayd.testing import Answer

from .helpers import NOW, exchange, result_of

URL = "https://email.eu-west-1.amazonaws.com/v2/email/outbound-emails"
TOKEN = "AKIDEXAMPLE:wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
RAW = (
    b"From: zoe@example.com\r\n"
    b"To: Ann <ann@example.net>\r\n"
    b"Cc: bob@example.org\r\n"
    b"Bcc: hidden@example.org\r\n"
    b"Subject: Order\r\n"
    b"X-SES-CONFIGURATION-SET: receipts\r\n"
    b"X-SES-MESSAGE-TAGS: campaign=spring, kind=order\r\n"
    b"X-Metadata-Order: 42\r\n"
    b"\r\n"
    b"Hello\r\n"
)
ENVELOPE = Envelope(
    "bounces@example.com", ("ann@example.net", "bob@example.org", "hidden@example.org")
)


def message(raw: bytes = RAW) -> OutboundMessage:
    return parse_message(raw, ENVELOPE, HeadersConfig())


class RequestTests(SynchronousTestCase):
    def test_request(self) -> None:
        """
        SES gets the raw message without Bcc and X-SES-* headers, the
        envelope as Destination, the configuration set and tags, signed.
        """
        request, result = exchange(
            self,
            SESDialect(),
            message(),
            Answer(200, {"MessageId": "0100-abc"}),
            token=TOKEN,
            url=URL,
        )
        self.assertEqual(request.path, "/v2/email/outbound-emails")
        body = request.json
        self.assertEqual(
            body["Destination"],
            {
                "ToAddresses": ["Ann <ann@example.net>"],
                "CcAddresses": ["bob@example.org"],
                "BccAddresses": ["hidden@example.org"],
            },
        )
        self.assertEqual(
            b64decode(body["Content"]["Raw"]["Data"]),
            b"From: zoe@example.com\r\nTo: Ann <ann@example.net>\r\nCc: bob@example.org\r\n"
            b"Subject: Order\r\n\r\nHello\r\n",
        )
        self.assertEqual(body["ConfigurationSetName"], "receipts")
        self.assertEqual(
            body["EmailTags"],
            [
                {"Name": "Order", "Value": "42"},
                {"Name": "campaign", "Value": "spring"},
                {"Name": "kind", "Value": "order"},
            ],
        )
        self.assertEqual(result, Accepted("0100-abc"))

    def test_signature_matches_botocore(self) -> None:
        """
        The Authorization header is the one botocore's own
        C{SigV4Auth.add_auth} computes for the same request and time.
        """
        request, _ = exchange(self, SESDialect(), message(), token=TOKEN, url=URL)
        self.assertEqual(request.header("x-amz-date"), "20231114T221320Z")
        expected = AWSRequest(
            method="POST",
            url=URL,
            data=request.body,
            headers={"Content-Type": "application/json"},
        )
        moment = datetime.datetime.fromtimestamp(NOW, datetime.UTC).replace(tzinfo=None)
        with mock.patch("botocore.auth.get_current_datetime", return_value=moment):
            SigV4Auth(Credentials(*TOKEN.split(":")), "ses", "eu-west-1").add_auth(expected)
        self.assertEqual(request.header("authorization"), expected.headers["Authorization"])
        self.assertIn("/eu-west-1/ses/aws4_request", request.header("authorization"))  # type: ignore[operator]

    def test_bad_token(self) -> None:
        """
        A token that is not ACCESS_KEY_ID:SECRET gets 554 5.7.1.
        """
        error = self.assertRaises(Refused, SESDialect().request, message(), "nocolon", URL, NOW)
        self.assertEqual(error.reply.status, "5.7.1")

    def test_bad_tag(self) -> None:
        """
        A message tag SES would refuse gets 550 5.6.0 before sending.
        """
        raw = RAW.replace(b"kind=order", b"kind=or der!")
        error = self.assertRaises(Refused, SESDialect().body, message(raw))
        self.assertEqual(error.reply.code, 550)

    def test_limits(self) -> None:
        """
        More than 50 recipients gets 452 4.5.3.
        """
        many = Envelope("b@example.com", tuple(f"r{i}@example.net" for i in range(51)))
        error = self.assertRaises(
            Refused, SESDialect().body, parse_message(RAW, many, HeadersConfig())
        )
        self.assertEqual(error.reply.code, 452)

    def test_region(self) -> None:
        """
        The region comes from the endpoint's host name.
        """
        self.assertEqual(region_of(URL), "eu-west-1")
        self.assertEqual(region_of("http://127.0.0.1:9000/v2/email/outbound-emails"), "us-east-1")


class AnswerTests(SynchronousTestCase):
    def test_error_types(self) -> None:
        """
        SES error types map to their own replies.
        """
        dialect = SESDialect()

        def failing(kind: str, status: int = 400, text: str = "nope") -> object:
            return result_of(dialect, status, {"message": text}, x_amzn_errortype=kind)

        self.assertEqual(
            failing("MessageRejected", text="Email address is not verified."),
            Reply(550, "5.6.0", "Email address is not verified."),
        )
        self.assertEqual(failing("TooManyRequestsException", 429).status, "4.7.1")  # type: ignore[attr-defined]
        self.assertEqual(failing("LimitExceededException").status, "4.7.1")  # type: ignore[attr-defined]
        self.assertEqual(failing("SendingPausedException").code, 451)  # type: ignore[attr-defined]
        self.assertEqual(failing("AccountSuspendedException").status, "5.7.1")  # type: ignore[attr-defined]
        self.assertEqual(failing("UnrecognizedClientException:http://x", 403).code, 554)  # type: ignore[attr-defined]
        self.assertEqual(failing("InternalFailure", 500).code, 451)  # type: ignore[attr-defined]
        body = json.dumps({"__type": "MessageRejected", "message": "bad"}).encode()
        self.assertEqual(dialect.answer(400, {}, body), Reply(550, "5.6.0", "bad"))
