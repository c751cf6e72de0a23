"""
Tests for Postmark's SMTP control header fields in L{relayd.dialects.postmark}
(C{X-PM-Tag}, C{X-PM-Message-Stream}, C{X-PM-Metadata-<name>},
C{X-PM-TrackOpens}): an application written for Postmark's SMTP service
gets the same API fields through relayd, and no C{X-PM-*} field reaches
C{Headers}.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from relayd.config import HeadersConfig
from relayd.dialects import get_dialect
from relayd.dialects.postmark import PostmarkDialect, smtp_controls
from relayd.message import Envelope, parse_message
from relayd.testing import sample_message

PM_HEADERS = (
    ("X-PM-Message-Stream", "broadcast"),
    ("X-PM-Tag", "welcome"),
    ("X-PM-Metadata-color", "blue"),
    ("X-PM-Metadata-client-id", "12345"),
    ("X-PM-TrackOpens", "true"),
    ("X-PM-TrackLinks", "HtmlAndText"),
    ("X-Campaign", "spring"),
)


def postmark_body(**changes: Any) -> dict[str, Any]:
    """
    The JSON document the postmark dialect builds for L{sample_message}.
    """
    document: dict[str, Any] = json.loads(PostmarkDialect().body(sample_message(**changes)))
    return document


def bare(**changes: Any) -> dict[str, Any]:
    """
    L{postmark_body} of a message whose header policy filled no control
    field, with C{headers}.
    """
    defaults: dict[str, Any] = dict(
        tags=(), metadata=(), stream=None, track=None, list_unsubscribe=None, headers=PM_HEADERS
    )
    defaults.update(changes)
    return postmark_body(**defaults)


class SMTPHeaderTests(SynchronousTestCase):
    """
    The X-PM-* fields become Postmark's API fields.
    """

    def test_fields(self) -> None:
        """
        Each documented X-PM-* field fills its API field; none is left in
        C{Headers}; other headers pass.
        """
        document = bare()
        self.assertEqual(document["MessageStream"], "broadcast")
        self.assertEqual(document["Tag"], "welcome")
        self.assertEqual(document["Metadata"], {"color": "blue", "client-id": "12345"})
        self.assertIs(document["TrackOpens"], True)
        self.assertNotIn("TrackLinks", document)
        self.assertEqual(document["Headers"], [{"Name": "X-Campaign", "Value": "spring"}])

    def test_track_opens_false(self) -> None:
        """
        C{X-PM-TrackOpens: false} (any case) turns opens off; another value
        leaves Postmark's server default alone.
        """
        document = bare(headers=(("x-pm-trackopens", "FALSE"),))
        self.assertIs(document["TrackOpens"], False)
        self.assertNotIn("TrackOpens", bare(headers=(("X-PM-TrackOpens", "maybe"),)))

    def test_any_case_first_wins(self) -> None:
        """
        Names match in any case; the first non-empty tag and stream win; of
        metadata names equal but for case, the first.
        """
        document = bare(
            headers=(
                ("x-pm-tag", ""),
                ("x-pm-tag", "first"),
                ("X-PM-TAG", "second"),
                ("x-pm-message-stream", "outbound"),
                ("X-PM-Message-Stream", "broadcast"),
                ("X-PM-Metadata-Key", "1"),
                ("x-pm-metadata-key", "2"),
                ("X-PM-Metadata-", "no name"),
            )
        )
        self.assertEqual(document["Tag"], "first")
        self.assertEqual(document["MessageStream"], "outbound")
        self.assertEqual(document["Metadata"], {"Key": "1"})
        self.assertNotIn("Headers", document)

    def test_encoded_words_decoded(self) -> None:
        """
        Values are RFC 2047 decoded, as the header policy's control values
        are.
        """
        document = bare(headers=(("X-PM-Metadata-city", "=?utf-8?q?Z=C3=BCrich?="),))
        self.assertEqual(document["Metadata"], {"city": "Zürich"})

    def test_policy_wins(self) -> None:
        """
        Control fields the header policy filled (C{[headers]}) win over the
        X-PM-* fields; metadata of other names is merged.
        """
        document = postmark_body(headers=PM_HEADERS + (("X-PM-Metadata-ORDER", "7"),))
        self.assertEqual(document["Tag"], "orders")
        self.assertEqual(document["MessageStream"], "outbound")
        self.assertEqual(
            document["Metadata"],
            {"order": "42", "customer": "ann", "color": "blue", "client-id": "12345"},
        )
        self.assertIs(document["TrackOpens"], True)
        self.assertEqual(document["TrackLinks"], "HtmlAndText")
        document = postmark_body(track=False, headers=(("X-PM-TrackOpens", "true"),))
        self.assertIs(document["TrackOpens"], False)
        self.assertEqual(document["TrackLinks"], "None")

    def test_from_a_parsed_message(self) -> None:
        """
        With the default header policy (which keeps C{X-*}), a message as a
        client writes it for Postmark's SMTP service gives the API fields.
        """
        data = (
            b"From: app@example.com\r\nTo: user@example.net\r\nSubject: Hi\r\n"
            b"X-PM-Message-Stream: broadcast\r\nX-PM-Tag: welcome\r\n"
            b"X-PM-Metadata-color: blue\r\nX-PM-TrackOpens: true\r\n\r\nHello\r\n"
        )
        envelope = Envelope(mail_from="app@example.com", rcpt_to=("user@example.net",))
        message = parse_message(data, envelope, HeadersConfig())
        document = json.loads(PostmarkDialect().body(message))
        self.assertEqual(document["MessageStream"], "broadcast")
        self.assertEqual(document["Tag"], "welcome")
        self.assertEqual(document["Metadata"], {"color": "blue"})
        self.assertIs(document["TrackOpens"], True)
        names = [h["Name"].lower() for h in document.get("Headers", [])]
        self.assertEqual([n for n in names if n.startswith("x-pm-")], [])

    def test_smtp_controls_keeps_order(self) -> None:
        """
        L{smtp_controls} leaves the other fields in message order.
        """
        controls = smtp_controls((("A", "1"), ("X-PM-Tag", "t"), ("B", "2")))
        self.assertEqual(controls.headers, (("A", "1"), ("B", "2")))
        self.assertEqual(controls.tag, "t")


class OtherDialectTests(SynchronousTestCase):
    """
    Other providers do not know X-PM-* fields: relayd passes them through
    as ordinary kept headers (a deployment that wants them gone adds
    C{"X-PM-*"} to C{headers.strip}).
    """

    def test_sendgrid_passes_them_through(self) -> None:
        document = json.loads(
            get_dialect("sendgrid").body(sample_message(headers=(("X-PM-Tag", "welcome"),)))
        )
        self.assertEqual(document["headers"]["X-PM-Tag"], "welcome")
        self.assertNotIn("welcome", document.get("categories", []))
