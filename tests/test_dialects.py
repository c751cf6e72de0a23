"""
Tests for L{relayd.dialects}: each dialect's request body against the
provider's documented field names, and each dialect's reading of the
provider's documented answers.
"""

from __future__ import annotations

import json
from base64 import b64decode, b64encode
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from relayd.config import ConfigError
from relayd.dialects import DIALECTS, get_dialect
from relayd.dialects.base import (
    Base64,
    clean_id,
    clean_text,
    encode_json,
    failure_for_status,
)
from relayd.dialects.mailpace import MailPaceDialect
from relayd.dialects.native import NativeDialect
from relayd.dialects.postmark import PostmarkDialect
from relayd.dialects.raw import RawDialect
from relayd.interfaces import IDialect
from relayd.message import Attachment, Envelope
from relayd.reply import Refused, Reply
from relayd.result import Accepted
from relayd.testing import sample_message

TEMPORARY = Reply(451, "4.3.0", "Temporary failure, try again later")
RATE = Reply(451, "4.7.1", "Upstream rate limit reached, try again later")
TOO_BIG = Reply(552, "5.3.4", "Message too big")


def body_of(dialect: IDialect, **changes: object) -> dict[str, Any]:
    """
    The JSON document C{dialect} builds for L{sample_message}.
    """
    document: dict[str, Any] = json.loads(dialect.body(sample_message(**changes)))
    return document


def answer(document: object) -> bytes:
    return json.dumps(document).encode("utf-8")


class RegistryTests(SynchronousTestCase):
    """
    L{get_dialect} and L{IDialect}.
    """

    def test_every_dialect_provides_idialect(self) -> None:
        """
        Every named dialect provides L{IDialect} and carries its name.
        """
        for name in DIALECTS:
            dialect = get_dialect(name)
            self.assertTrue(verifyObject(IDialect, dialect))
            self.assertEqual(dialect.name, name)

    def test_classes(self) -> None:
        """
        The names map to their modules' classes.
        """
        self.assertIsInstance(get_dialect("native"), NativeDialect)
        self.assertIsInstance(get_dialect("raw"), RawDialect)
        self.assertIsInstance(get_dialect("mailpace"), MailPaceDialect)
        self.assertIsInstance(get_dialect("postmark"), PostmarkDialect)

    def test_unknown_dialect_is_config_error(self) -> None:
        """
        An unknown name raises L{ConfigError} naming the setting.
        """
        error = self.assertRaises(ConfigError, get_dialect, "no-such-dialect")
        self.assertIn("upstream.dialect", str(error))
        self.assertIn("no-such-dialect", str(error))

    def test_token_headers(self) -> None:
        """
        Each dialect's default token header is the provider's documented one.
        """
        self.assertEqual(
            {n: (get_dialect(n).token_header, get_dialect(n).token_format) for n in DIALECTS},
            {
                "native": ("Authorization", "Bearer {token}"),
                "raw": ("Authorization", "Bearer {token}"),
                "mailpace": ("MailPace-Server-Token", "{token}"),
                "postmark": ("X-Postmark-Server-Token", "{token}"),
                "sendgrid": ("Authorization", "Bearer {token}"),
                "mailgun": ("Authorization", "Basic {token}"),
                "ses": ("Authorization", "{token}"),
                "resend": ("Authorization", "Bearer {token}"),
                "brevo": ("api-key", "{token}"),
                "sparkpost": ("Authorization", "{token}"),
                "mailjet": ("Authorization", "Basic {token}"),
            },
        )


class EncodingTests(SynchronousTestCase):
    """
    JSON encoding shared by the dialects.
    """

    def test_compact_utf8(self) -> None:
        """
        Bodies are compact JSON with non-ASCII text as UTF-8, not escapes.
        """
        data = NativeDialect().body(sample_message())
        self.assertIn("Café".encode(), data)
        self.assertNotIn(b"\\u00e9", data)
        self.assertNotIn(b'": ', data)
        self.assertNotIn(b'", "', data)

    def test_lone_surrogate_falls_back_to_escapes(self) -> None:
        """
        Text that is not valid Unicode still gives valid JSON.
        """
        data = encode_json({"subject": "bad \udce9", "raw": Base64(b"\xff\x00")})
        self.assertEqual(json.loads(data), {"subject": "bad \udce9", "raw": "/wA="})
        data.decode("ascii")

    def test_base64_values_are_spliced(self) -> None:
        """
        L{Base64} values become base64 strings wherever they are.
        """
        document = {
            "a": [Base64(b"one"), {"b": Base64(b"")}, "text"],
            "c": Base64(bytes(range(256))),
        }
        self.assertEqual(
            json.loads(encode_json(document)),
            {
                "a": [b64encode(b"one").decode(), {"b": ""}, "text"],
                "c": b64encode(bytes(range(256))).decode(),
            },
        )

    def test_other_objects_are_refused(self) -> None:
        """
        Anything else that is not JSON is a programming error.
        """
        self.assertRaises(TypeError, encode_json, {"a": object()})

    @given(
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.text() | st.binary().map(Base64),
            lambda children: (
                st.lists(children, max_size=4)
                | st.dictionaries(st.text(max_size=5), children, max_size=4)
            ),
            max_leaves=20,
        )
    )
    def test_encode_json_round_trip(self, document: object) -> None:
        """
        Decoding gives back the document, with base64 strings for L{Base64}.
        """

        def expected(value: object) -> object:
            if isinstance(value, Base64):
                return b64encode(value.data).decode("ascii")
            if isinstance(value, list):
                return [expected(v) for v in value]
            if isinstance(value, dict):
                return {k: expected(v) for k, v in value.items()}
            return value

        self.assertEqual(json.loads(encode_json(document)), expected(document))


class NativeBodyTests(SynchronousTestCase):
    """
    The C{native} request body (docs/upstream-api.md).
    """

    def test_every_field(self) -> None:
        """
        Every field of the message is in the documented key.
        """
        self.assertEqual(
            body_of(NativeDialect()),
            {
                "from": "Zoë Sender <zoe@example.com>",
                "to": ["Ann <ann@example.net>"],
                "cc": ["bob@example.org"],
                "bcc": ["hidden@example.org"],
                "reply_to": ["help@example.com"],
                "subject": "Café order #42",
                "text": "Hello Ann,\nyour order shipped.\n",
                "html": "<p>Hello Ann,</p><p>your order shipped.</p>",
                "attachments": [
                    {
                        "filename": "invoice.pdf",
                        "content_type": "application/pdf",
                        "content": "JVBERi0xLjcgZmFrZQ==",
                        "content_id": None,
                        "inline": False,
                    },
                    {
                        "filename": "logo.png",
                        "content_type": "image/png",
                        "content": "iVBORyBmYWtl",
                        "content_id": "logo@example.com",
                        "inline": True,
                    },
                ],
                "tags": ["orders", "shipping"],
                "headers": [
                    ["In-Reply-To", "<order-42@example.com>"],
                    ["References", "<thread-1@example.com> <order-42@example.com>"],
                    ["X-Campaign", "spring"],
                    ["X-Campaign", "eu"],
                ],
                "stream": "outbound",
                "track": True,
                "list_unsubscribe": "<mailto:unsubscribe@example.com>",
                "metadata": {"order": "42", "customer": "ann"},
                "envelope": {
                    "mail_from": "bounces@example.com",
                    "rcpt_to": ["ann@example.net", "bob@example.org", "hidden@example.org"],
                },
                "raw": None,
            },
        )

    def test_empty_fields_are_present(self) -> None:
        """
        Absent values are empty lists and nulls, never missing keys.
        """
        document = body_of(
            NativeDialect(),
            to=(),
            cc=(),
            bcc=(),
            reply_to=(),
            text=None,
            html=None,
            attachments=(),
            tags=(),
            headers=(),
            stream=None,
            track=None,
            list_unsubscribe=None,
            metadata=(),
        )
        self.assertEqual(document["to"], [])
        self.assertIsNone(document["html"])
        self.assertIsNone(document["track"])
        self.assertEqual(document["metadata"], {})
        self.assertEqual(set(document), set(body_of(NativeDialect())))

    def test_raw_only_adds_raw(self) -> None:
        """
        A signed message keeps its structured fields and adds C{raw}, the
        message as received.
        """
        message = sample_message(raw_only=True)
        document = json.loads(NativeDialect().body(message))
        self.assertEqual(b64decode(document["raw"]), message.raw)
        self.assertEqual(document["subject"], "Café order #42")


class RawBodyTests(SynchronousTestCase):
    """
    The C{raw} request body.
    """

    def test_body(self) -> None:
        """
        The raw message in base64, the envelope, tags and stream.
        """
        message = sample_message()
        document = json.loads(RawDialect().body(message))
        self.assertEqual(
            document,
            {
                "raw": document["raw"],
                "envelope": {
                    "mail_from": "bounces@example.com",
                    "rcpt_to": ["ann@example.net", "bob@example.org", "hidden@example.org"],
                },
                "tags": ["orders", "shipping"],
                "stream": "outbound",
            },
        )
        self.assertEqual(b64decode(document["raw"]), message.raw)

    def test_raw_only_is_relayed(self) -> None:
        """
        The raw dialect carries signed messages unchanged.
        """
        message = sample_message(raw_only=True)
        document = json.loads(RawDialect().body(message))
        self.assertEqual(b64decode(document["raw"]), message.raw)

    def test_null_reverse_path(self) -> None:
        """
        The null reverse-path is C{""}.
        """
        from relayd.message import Envelope

        document = body_of(RawDialect(), envelope=Envelope("", ("a@example.com",)))
        self.assertEqual(document["envelope"], {"mail_from": "", "rcpt_to": ["a@example.com"]})


class MailPaceBodyTests(SynchronousTestCase):
    """
    The C{mailpace} request body, against
    U{https://docs.mailpace.com/reference/send}.
    """

    def test_every_field(self) -> None:
        """
        Fields have MailPace's names; address lists are comma-separated
        strings; inline parts carry C{cid}.
        """
        self.assertEqual(
            body_of(MailPaceDialect()),
            {
                "from": "Zoë Sender <zoe@example.com>",
                "to": "Ann <ann@example.net>",
                "cc": "bob@example.org",
                "bcc": "hidden@example.org",
                "replyto": "help@example.com",
                "subject": "Café order #42",
                "htmlbody": "<p>Hello Ann,</p><p>your order shipped.</p>",
                "textbody": "Hello Ann,\nyour order shipped.\n",
                "inreplyto": "<order-42@example.com>",
                "references": "<thread-1@example.com> <order-42@example.com>",
                "list_unsubscribe": "<mailto:unsubscribe@example.com>",
                "attachments": [
                    {
                        "name": "invoice.pdf",
                        "content": "JVBERi0xLjcgZmFrZQ==",
                        "content_type": "application/pdf",
                    },
                    {
                        "name": "logo.png",
                        "content": "iVBORyBmYWtl",
                        "content_type": "image/png",
                        "cid": "cid:logo@example.com",
                    },
                ],
                "tags": ["orders", "shipping"],
            },
        )

    def test_several_recipients_are_comma_separated(self) -> None:
        """
        C{to}, C{cc} and C{bcc} join addresses with C{", "}.
        """
        document = body_of(
            MailPaceDialect(),
            to=("a@example.com", "B <b@example.com>"),
            envelope=Envelope("s@example.com", ("a@example.com", "b@example.com")),
            cc=(),
            bcc=(),
        )
        self.assertEqual(document["to"], "a@example.com, B <b@example.com>")

    def test_empty_optional_fields_are_left_out(self) -> None:
        """
        Optional fields without a value are not sent; a message without any
        body gets an empty C{textbody} (MailPace requires one body).
        """
        document = body_of(
            MailPaceDialect(),
            cc=(),
            bcc=(),
            reply_to=(),
            text=None,
            html=None,
            attachments=(),
            tags=(),
            headers=(),
            list_unsubscribe=None,
        )
        self.assertEqual(
            document,
            {
                "from": "Zoë Sender <zoe@example.com>",
                "to": "Ann <ann@example.net>",
                "subject": "Café order #42",
                "textbody": "",
            },
        )

    def test_html_only(self) -> None:
        """
        An HTML-only message sends no C{textbody}.
        """
        document = body_of(MailPaceDialect(), text=None)
        self.assertNotIn("textbody", document)
        self.assertIn("htmlbody", document)

    def test_raw_only_rejected(self) -> None:
        """
        A signed or encrypted message cannot go through MailPace, which
        rebuilds the MIME structure: C{554 5.6.0}.
        """
        error = self.assertRaises(Refused, MailPaceDialect().body, sample_message(raw_only=True))
        self.assertEqual((error.reply.code, error.reply.status), (554, "5.6.0"))
        self.assertEqual(
            error.reply.text,
            "Signed or encrypted messages cannot be relayed through the mailpace API",
        )

    def test_no_to_address_uses_the_envelope(self) -> None:
        """
        MailPace requires C{to}: when no To address is an envelope
        recipient, the envelope recipients from Cc become C{to}.
        """
        document = body_of(MailPaceDialect(), to=())
        self.assertEqual(document["to"], "bob@example.org")
        self.assertNotIn("cc", document)

    def test_header_recipients_outside_the_envelope_are_left_out(self) -> None:
        """
        A client that splits a message over several transactions: each
        request names only this transaction's envelope recipients, so the
        API never delivers to the others twice.
        """
        message = sample_message(
            envelope=Envelope("s@example.com", ("ann@example.net",)),
            to=("Ann <ann@example.net>", "Zed <zed@example.net>"),
            cc=("bob@example.org",),
            bcc=(),
        )
        for dialect, fields in (
            (MailPaceDialect(), ("to", "cc", "bcc")),
            (PostmarkDialect(), ("To", "Cc", "Bcc")),
        ):
            document = json.loads(dialect.body(message))
            self.assertEqual(document[fields[0]], "Ann <ann@example.net>")
            self.assertFalse(document.get(fields[1]))
            self.assertFalse(document.get(fields[2]))


class PostmarkBodyTests(SynchronousTestCase):
    """
    The C{postmark} request body, against
    U{https://postmarkapp.com/developer/api/email-api}.
    """

    def test_every_field(self) -> None:
        """
        Fields have Postmark's names; one C{Tag}; List-Unsubscribe becomes a
        header; tracking fields follow C{track}.
        """
        self.assertEqual(
            body_of(PostmarkDialect()),
            {
                "From": "Zoë Sender <zoe@example.com>",
                "To": "Ann <ann@example.net>",
                "Cc": "bob@example.org",
                "Bcc": "hidden@example.org",
                "ReplyTo": "help@example.com",
                "Subject": "Café order #42",
                "HtmlBody": "<p>Hello Ann,</p><p>your order shipped.</p>",
                "TextBody": "Hello Ann,\nyour order shipped.\n",
                "Headers": [
                    {"Name": "In-Reply-To", "Value": "<order-42@example.com>"},
                    {
                        "Name": "References",
                        "Value": "<thread-1@example.com> <order-42@example.com>",
                    },
                    {"Name": "X-Campaign", "Value": "spring"},
                    {"Name": "X-Campaign", "Value": "eu"},
                    {"Name": "List-Unsubscribe", "Value": "<mailto:unsubscribe@example.com>"},
                ],
                "Tag": "orders",
                "Metadata": {"order": "42", "customer": "ann"},
                "MessageStream": "outbound",
                "TrackOpens": True,
                "TrackLinks": "HtmlAndText",
                "Attachments": [
                    {
                        "Name": "invoice.pdf",
                        "Content": "JVBERi0xLjcgZmFrZQ==",
                        "ContentType": "application/pdf",
                    },
                    {
                        "Name": "logo.png",
                        "Content": "iVBORyBmYWtl",
                        "ContentType": "image/png",
                        "ContentID": "cid:logo@example.com",
                    },
                ],
            },
        )

    def test_tracking_off(self) -> None:
        """
        C{track=False} turns both kinds of tracking off explicitly.
        """
        document = body_of(PostmarkDialect(), track=False)
        self.assertIs(document["TrackOpens"], False)
        self.assertEqual(document["TrackLinks"], "None")

    def test_tracking_unset(self) -> None:
        """
        C{track=None} leaves Postmark's server defaults alone.
        """
        document = body_of(PostmarkDialect(), track=None)
        self.assertNotIn("TrackOpens", document)
        self.assertNotIn("TrackLinks", document)

    def test_existing_list_unsubscribe_header_kept_once(self) -> None:
        """
        A List-Unsubscribe header already passed through is not doubled.
        """
        document = body_of(
            PostmarkDialect(), headers=(("List-Unsubscribe", "<https://example.com/u>"),)
        )
        self.assertEqual(
            document["Headers"], [{"Name": "List-Unsubscribe", "Value": "<https://example.com/u>"}]
        )

    def test_minimal(self) -> None:
        """
        Empty optional fields are left out.
        """
        document = body_of(
            PostmarkDialect(),
            cc=(),
            bcc=(),
            reply_to=(),
            html=None,
            attachments=(),
            tags=(),
            headers=(),
            stream=None,
            track=None,
            list_unsubscribe=None,
            metadata=(),
        )
        self.assertEqual(
            document,
            {
                "From": "Zoë Sender <zoe@example.com>",
                "To": "Ann <ann@example.net>",
                "Subject": "Café order #42",
                "TextBody": "Hello Ann,\nyour order shipped.\n",
            },
        )

    def test_attachment_without_content_id(self) -> None:
        """
        An attachment without Content-ID has no C{ContentID}.
        """
        document = body_of(
            PostmarkDialect(), attachments=(Attachment("a.txt", "text/plain", b"hi"),)
        )
        self.assertEqual(
            document["Attachments"],
            [{"Name": "a.txt", "Content": "aGk=", "ContentType": "text/plain"}],
        )

    def test_raw_only_rejected(self) -> None:
        """
        Postmark cannot carry a signed message: C{554 5.6.0}.
        """
        error = self.assertRaises(Refused, PostmarkDialect().body, sample_message(raw_only=True))
        self.assertEqual((error.reply.code, error.reply.status), (554, "5.6.0"))
        self.assertIn("postmark", error.reply.text)


class StatusMappingTests(SynchronousTestCase):
    """
    The status mapping every dialect shares (L{failure_for_status}), read
    through the C{native} dialect.
    """

    def test_table(self) -> None:
        """
        Each HTTP status gives the documented SMTP reply.
        """
        native = NativeDialect()
        cases = {
            400: Reply(550, "5.6.0", "Message rejected by upstream"),
            422: Reply(550, "5.6.0", "Message rejected by upstream"),
            401: Reply(554, "5.7.1", "Upstream refused the API token"),
            403: Reply(554, "5.7.1", "Upstream refused the API token"),
            413: TOO_BIG,
            429: RATE,
            301: TEMPORARY,
            404: TEMPORARY,
            405: TEMPORARY,
            408: TEMPORARY,
            500: TEMPORARY,
            502: TEMPORARY,
            503: TEMPORARY,
            504: TEMPORARY,
        }
        for status, expected in cases.items():
            self.assertEqual(native.result(status, b""), expected, status)
            self.assertEqual(failure_for_status(status), expected, status)

    def test_rejection_carries_upstream_text(self) -> None:
        """
        A 4xx rejection's text is the upstream's error, cleaned.
        """
        native = NativeDialect()
        self.assertEqual(
            native.result(422, answer({"error": "Invalid\r\nsender\tdomain"})),
            Reply(550, "5.6.0", "Invalid sender domain"),
        )
        self.assertEqual(
            native.result(400, answer({"message": "Adresse refusée"})),
            Reply(550, "5.6.0", "Adresse refusee"),
        )
        self.assertEqual(
            native.result(403, answer({"error": "Token revoked"})),
            Reply(554, "5.7.1", "Token revoked"),
        )

    def test_server_error_text_is_not_echoed(self) -> None:
        """
        A 5xx never echoes the upstream's body (it may be an HTML page).
        """
        self.assertEqual(NativeDialect().result(500, b"<html>oops</html>"), TEMPORARY)
        self.assertEqual(NativeDialect().result(503, answer({"error": "down"})), TEMPORARY)

    def test_long_text_is_bounded(self) -> None:
        """
        Upstream text is cut to 200 characters.
        """
        result = NativeDialect().result(422, answer({"error": "x" * 5000}))
        assert isinstance(result, Reply)
        self.assertEqual(result.text, "x" * 200)

    def test_deeply_nested_error_uses_fallback(self) -> None:
        """
        An absurdly nested error value does not break the reading.
        """
        for depth in (100, 900, 5000):
            body = b'{"error":' + b"[" * depth + b'"x"' + b"]" * depth + b"}"
            result = NativeDialect().result(422, body)
            assert isinstance(result, Reply)
            self.assertEqual((result.code, result.status), (550, "5.6.0"))

    def test_unreadable_error_body_uses_fallback(self) -> None:
        """
        A rejection whose body is not JSON uses the fallback text.
        """
        self.assertEqual(
            NativeDialect().result(422, b"\x00\xff not json"),
            Reply(550, "5.6.0", "Message rejected by upstream"),
        )


class NativeAnswerTests(SynchronousTestCase):
    """
    Reading the message id from a C{native} (and C{raw}) 2xx answer.
    """

    def test_id_keys(self) -> None:
        """
        The id is read from C{id}, C{message_id} or C{MessageID}.
        """
        for dialect in (NativeDialect(), RawDialect()):
            for key in ("id", "message_id", "MessageID"):
                self.assertEqual(dialect.result(200, answer({key: "abc-1"})), Accepted("abc-1"))
        self.assertEqual(NativeDialect().result(201, answer({"id": 77})), Accepted("77"))

    def test_id_is_sanitized(self) -> None:
        """
        The id keeps visible ASCII only and at most 100 characters.
        """
        result = NativeDialect().result(200, answer({"id": "a b\r\n250 ok\x00é" + "z" * 200}))
        assert isinstance(result, Accepted)
        self.assertTrue(result.message_id.startswith("ab250ok"))
        self.assertEqual(len(result.message_id), 100)

    def test_2xx_without_id_is_accepted(self) -> None:
        """
        A 2xx means the upstream took the message, id or not.
        """
        native = NativeDialect()
        self.assertEqual(native.result(200, b""), Accepted(""))
        self.assertEqual(native.result(202, b"queued"), Accepted(""))
        self.assertEqual(native.result(200, answer({"id": None})), Accepted(""))
        self.assertEqual(native.result(200, answer(["x"])), Accepted(""))
        self.assertEqual(native.result(204, b""), Accepted(""))


class MailPaceAnswerTests(SynchronousTestCase):
    """
    MailPace's documented answers (U{https://docs.mailpace.com/reference/responses}).
    """

    def test_documented_answers(self) -> None:
        """
        Each documented answer gives the expected result.
        """
        mailpace = MailPaceDialect()
        cases = [
            (200, {"id": 12345, "status": "pending"}, Accepted("12345")),
            (200, {"id": 12345, "status": "queued"}, Accepted("12345")),
            (400, {"error": "Invalid API Token"}, Reply(554, "5.7.1", "Invalid API Token")),
            (
                400,
                {"error": "Email from address not parseable"},
                Reply(550, "5.6.0", "Email from address not parseable"),
            ),
            (400, {"errors": {"to": ["is invalid"]}}, Reply(550, "5.6.0", "to: is invalid")),
            (
                400,
                {"errors": {"to": ["contains a blocked address"], "cc": ["is invalid"]}},
                Reply(550, "5.6.0", "to: contains a blocked address; cc: is invalid"),
            ),
            (
                400,
                {
                    "errors": {
                        "attachments.name": [
                            "Extension file type blocked, see Docs for full list of allowed file types"
                        ]
                    }
                },
                Reply(
                    550,
                    "5.6.0",
                    "attachments.name: Extension file type blocked, see Docs for full list of allowed file types",
                ),
            ),
            (401, {"error": "Missing API Token"}, Reply(554, "5.7.1", "Missing API Token")),
            (
                403,
                {"error": "Domain DKIM DNS not verified, please complete DKIM Verification"},
                Reply(
                    554, "5.7.1", "Domain DKIM DNS not verified, please complete DKIM Verification"
                ),
            ),
            (429, {"error": "Too many requests"}, RATE),
            (500, {"error": "Internal"}, TEMPORARY),
        ]
        for status, document, expected in cases:
            self.assertEqual(mailpace.result(status, answer(document)), expected, document)


class PostmarkAnswerTests(SynchronousTestCase):
    """
    Postmark's documented answers
    (U{https://postmarkapp.com/developer/api/overview}).
    """

    def test_documented_answers(self) -> None:
        """
        Each documented answer gives the expected result.
        """
        postmark = PostmarkDialect()
        ok = {
            "To": "ann@example.net",
            "SubmittedAt": "2026-02-10T12:00:00.000-05:00",
            "MessageID": "b7bc2f4a-e38e-4336-af7d-e6c392c2f817",
            "ErrorCode": 0,
            "Message": "OK",
        }
        cases = [
            (200, ok, Accepted("b7bc2f4a-e38e-4336-af7d-e6c392c2f817")),
            (
                422,
                {"ErrorCode": 300, "Message": "Invalid 'To' address: 'nobody'."},
                Reply(550, "5.6.0", "Invalid 'To' address: 'nobody'."),
            ),
            (
                422,
                {"ErrorCode": 400, "Message": "Sender signature not found"},
                Reply(550, "5.6.0", "Sender signature not found"),
            ),
            (
                401,
                {"ErrorCode": 10, "Message": "Bad or missing API token"},
                Reply(554, "5.7.1", "Bad or missing API token"),
            ),
            (
                422,
                {"ErrorCode": 10, "Message": "Bad or missing API token"},
                Reply(554, "5.7.1", "Bad or missing API token"),
            ),
            (
                422,
                {"ErrorCode": 405, "Message": "Not allowed to send"},
                Reply(451, "4.3.0", "Not allowed to send"),
            ),
            (
                422,
                {
                    "ErrorCode": 406,
                    "Message": "You tried to send to a recipient that has been marked as inactive.",
                },
                Reply(
                    550,
                    "5.1.1",
                    "You tried to send to a recipient that has been marked as inactive.",
                ),
            ),
            (413, {"ErrorCode": 0, "Message": "Payload Too Large"}, TOO_BIG),
            (429, {"ErrorCode": 0, "Message": "Rate limit exceeded"}, RATE),
            (500, {"ErrorCode": 0, "Message": "Internal Server Error"}, TEMPORARY),
            (503, None, TEMPORARY),
        ]
        for status, document, expected in cases:
            self.assertEqual(postmark.result(status, answer(document)), expected, document)

    def test_id_only_from_message_id(self) -> None:
        """
        Postmark's id is C{MessageID}.
        """
        self.assertEqual(PostmarkDialect().result(200, answer({"id": "x"})), Accepted(""))


class CleaningProperties(SynchronousTestCase):
    """
    Properties of the text and id cleaning, and of reading any answer.
    """

    @given(st.text())
    def test_clean_text_is_one_printable_ascii_line(self, text: str) -> None:
        cleaned = clean_text(text)
        self.assertLessEqual(len(cleaned), 200)
        self.assertTrue(all(" " <= c <= "~" for c in cleaned))
        self.assertEqual(cleaned, cleaned.strip())

    @given(st.one_of(st.text(), st.integers(), st.none(), st.booleans()))
    def test_clean_id_is_visible_ascii(self, value: object) -> None:
        cleaned = clean_id(value)
        self.assertLessEqual(len(cleaned), 100)
        self.assertTrue(all("!" <= c <= "~" for c in cleaned))

    @given(st.integers(min_value=100, max_value=599), st.binary(max_size=300))
    def test_result_never_raises(self, status: int, body: bytes) -> None:
        for name in DIALECTS:
            result = get_dialect(name).result(status, body)
            if 200 <= status < 300:
                self.assertIsInstance(result, Accepted)
            else:
                assert isinstance(result, Reply)
                self.assertIn(result.code, (451, 550, 552, 554))
                self.assertEqual(str(result.code)[0], result.status[0])

    @given(
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.text(),
            lambda children: (
                st.lists(children, max_size=4)
                | st.dictionaries(
                    st.sampled_from(["error", "errors", "Message", "message", "ErrorCode", "id"]),
                    children,
                    max_size=4,
                )
            ),
            max_leaves=12,
        ),
        st.sampled_from([200, 400, 401, 413, 422, 429, 500]),
    )
    def test_any_json_answer_is_read(self, document: object, status: int) -> None:
        for name in DIALECTS:
            result = get_dialect(name).result(status, answer(document))
            self.assertIsInstance(result, (Accepted, Reply))
