"""
Tests for L{relayd.dialects.mailgun}.
"""

from __future__ import annotations

from base64 import b64decode
from email.parser import BytesParser

from twisted.trial.unittest import SynchronousTestCase

from relayd.config import HeadersConfig
from relayd.dialects.mailgun import MailgunDialect
from relayd.message import Envelope, OutboundMessage, parse_message
from relayd.reply import Refused, Reply
from relayd.result import Accepted
from relayd.testing import Answer, RecordedRequest

from .helpers import TOKEN, exchange, result_of

RAW = (
    b"From: Zoe <zoe@example.com>\r\n"
    b"To: Ann <ann@example.net>\r\n"
    b"Bcc: hidden@example.org\r\n"
    b"Subject: Order\r\n"
    b"X-Mailgun-Tag: receipts\r\n"
    b'X-Mailgun-Variables: {"order": 42,\r\n "user": "ann"}\r\n'
    b"X-Mailgun-Track-Clicks: no\r\n"
    b"X-Mailgun-Deliver-By: Fri, 14 Oct 2033 23:10:10 -0000\r\n"
    b"X-Tags: orders\r\n"
    b"X-Custom: kept\r\n"
    b"\r\n"
    b"Bcc: this line is body text\r\n"
)
ENVELOPE = Envelope("bounces@example.com", ("ann@example.net", "hidden@example.org"))


def message(raw: bytes = RAW, envelope: Envelope = ENVELOPE) -> OutboundMessage:
    return parse_message(raw, envelope, HeadersConfig())


def form(request: RecordedRequest) -> list[tuple[str, bytes]]:
    """
    The multipart/form-data fields of C{request}, in order.
    """
    boundary = request.header("content-type").partition("boundary=")[2].encode()  # type: ignore[union-attr]
    chunks = request.body.split(b"--" + boundary)
    assert chunks[0] == b"" and chunks[-1] == b"--\r\n", chunks
    fields = []
    for chunk in chunks[1:-1]:
        head, _, value = chunk[2:-2].partition(b"\r\n\r\n")
        headers = BytesParser().parsebytes(head + b"\r\n\r\n")
        fields.append((str(headers.get_param("name", header="content-disposition")), value))
    return fields


class RequestTests(SynchronousTestCase):
    def test_request(self) -> None:
        """
        Mailgun gets multipart/form-data with Basic api:key, one C{to} per
        envelope recipient, the options as C{o:}/C{v:} fields and the MIME
        as written, minus Bcc and the consumed control fields.
        """
        request, result = exchange(
            self,
            MailgunDialect(),
            message(),
            Answer(200, {"id": "<20240101.1@mg.example.com>", "message": "Queued. Thank you."}),
            url="https://api.mailgun.net/v3/mg.example.com/messages.mime",
        )
        self.assertEqual(request.path, "/v3/mg.example.com/messages.mime")
        self.assertEqual(b64decode(request.header("authorization")[6:]), f"api:{TOKEN}".encode())  # type: ignore[index]
        self.assertTrue(request.header("content-type").startswith("multipart/form-data; boundary="))  # type: ignore[union-attr]
        fields = form(request)
        self.assertEqual(
            fields[:-1],
            [
                ("to", b"ann@example.net"),
                ("to", b"hidden@example.org"),
                ("o:tag", b"orders"),
                ("o:tag", b"receipts"),
                ("o:deliverytime", b"Fri, 14 Oct 2033 23:10:10 -0000"),
                ("o:tracking-clicks", b"no"),
                ("v:order", b"42"),
                ("v:user", b"ann"),
            ],
        )
        name, mime = fields[-1]
        self.assertEqual(name, "message")
        self.assertEqual(
            mime,
            b"From: Zoe <zoe@example.com>\r\nTo: Ann <ann@example.net>\r\nSubject: Order\r\n"
            b"X-Custom: kept\r\n\r\nBcc: this line is body text\r\n",
        )
        self.assertEqual(result, Accepted("20240101.1@mg.example.com"))

    def test_bad_variables(self) -> None:
        """
        X-Mailgun-Variables that is not a JSON object gets 550 5.6.0.
        """
        raw = RAW.replace(b'{"order": 42,\r\n "user": "ann"}', b"[1]")
        error = self.assertRaises(Refused, MailgunDialect().body, message(raw))
        self.assertEqual(error.reply.code, 550)

    def test_options_limit(self) -> None:
        """
        Send options over 16 KB get 550 5.6.0.
        """
        raw = RAW.replace(b"X-Mailgun-Tag: receipts", b"X-Mailgun-Tag: " + b"t" * 17000)
        error = self.assertRaises(Refused, MailgunDialect().body, message(raw))
        self.assertEqual(error.reply, Reply(550, "5.6.0", "Mailgun send options exceed 16 KB"))

    def test_size_limit(self) -> None:
        """
        A message over 25 MB gets 552 5.3.4 without a request.
        """
        error = self.assertRaises(
            Refused, MailgunDialect().body, message(RAW + b"x" * (25 * 1024 * 1024))
        )
        self.assertEqual(error.reply.code, 552)


class AnswerTests(SynchronousTestCase):
    def test_errors(self) -> None:
        """
        Mailgun's error answers map to SMTP replies.
        """
        dialect = MailgunDialect()
        self.assertEqual(
            result_of(dialect, 400, {"message": "to parameter is not a valid address"}),
            Reply(550, "5.6.0", "to parameter is not a valid address"),
        )
        self.assertEqual(
            result_of(dialect, 401, b"Forbidden"),
            Reply(554, "5.7.1", "Upstream refused the API token"),
        )
        self.assertEqual(result_of(dialect, 429, {}).status, "4.7.1")  # type: ignore[union-attr]
        self.assertEqual(result_of(dialect, 404, {"message": "Domain not found"}).code, 451)  # type: ignore[union-attr]
        self.assertEqual(result_of(dialect, 503, b"").code, 451)  # type: ignore[union-attr]
