"""
Tests for C{[headers] missing_from}: a message without a From header field
is refused (C{"reject"}, the default: C{550 5.6.0 Message has no From
header}) or gets C{From:} from the authenticated reverse-path
(C{"envelope"}, RFC 6409 section 8.1), through the whole delivery path to
the request the upstream gets.
"""

from __future__ import annotations

import base64

from treq.testing import StubTreq
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from relayd import reply as R
from relayd.config import ConfigError, HeadersConfig, UpstreamConfig, parse_config
from relayd.delivery import Pipeline, RelayDelivery
from relayd.dialects import get_dialect
from relayd.message import Envelope, parse_message
from relayd.reply import Refused, Reply
from relayd.testing import FakeUpstream
from relayd.tokens import TokenPolicy
from relayd.upstream import UpstreamClient

NO_FROM = b"To: bob@example.net\r\nSubject: hi\r\n\r\nbody\r\n"


class MissingFromTests(SynchronousTestCase):
    def relay(
        self, missing_from: str, mail_from: str = "ann@example.com", dialect: str = "native"
    ) -> tuple[Reply, FakeUpstream]:
        clock = Clock()
        upstream = FakeUpstream()
        client = UpstreamClient(
            clock, UpstreamConfig(), get_dialect(dialect), http=StubTreq(upstream)
        )
        headers = HeadersConfig(missing_from=missing_from)  # type: ignore[arg-type]
        avatar = RelayDelivery("t", TokenPolicy("web"), Pipeline(client, headers, clock))
        avatar.validateFrom(None, mail_from)
        message = avatar.validateTo("bob@example.net")()
        message.bodyReceived(NO_FROM)
        return self.successResultOf(message.eomReceived()), upstream

    def test_reject_keeps_the_specific_550(self) -> None:
        """
        By default a message without From gets C{550 5.6.0 Message has no
        From header}, and nothing is sent.
        """
        reply, upstream = self.relay("reject")
        self.assertEqual(reply, Reply(550, "5.6.0", "Message has no From header"))
        self.assertEqual(upstream.requests, [])

    def test_envelope_adds_from_the_reverse_path(self) -> None:
        """
        With C{"envelope"}, the upstream gets the reverse-path as From.
        """
        reply, upstream = self.relay("envelope")
        self.assertEqual(reply.code, 250)
        (request,) = upstream.requests
        self.assertEqual(request.json["from"], "ann@example.com")

    def test_envelope_prepends_from_to_the_raw_message(self) -> None:
        """
        The C{raw} dialect sends the message with the added C{From:} line
        first.
        """
        reply, upstream = self.relay("envelope", dialect="raw")
        self.assertEqual(reply.code, 250)
        (request,) = upstream.requests
        self.assertEqual(
            base64.b64decode(request.json["raw"]), b"From: ann@example.com\r\n" + NO_FROM
        )

    def test_envelope_with_null_reverse_path_is_refused(self) -> None:
        """
        C{MAIL FROM:<>} gives no author: still C{550 5.6.0}.
        """
        reply, upstream = self.relay("envelope", mail_from="")
        self.assertEqual(reply, R.NO_FROM_HEADER)
        self.assertEqual(upstream.requests, [])

    def test_existing_from_is_kept(self) -> None:
        message = parse_message(
            b"From: Cy <cy@example.org>\r\n" + NO_FROM,
            Envelope("ann@example.com", ("bob@example.net",)),
            HeadersConfig(missing_from="envelope"),
        )
        self.assertEqual(message.author_address, "cy@example.org")
        self.assertTrue(message.raw.startswith(b"From: Cy"))

    def test_parse_message_reject(self) -> None:
        e = self.assertRaises(
            Refused,
            parse_message,
            NO_FROM,
            Envelope("ann@example.com", ("bob@example.net",)),
            HeadersConfig(),
        )
        self.assertEqual(e.reply, R.NO_FROM_HEADER)


BASE = """
[[listeners]]
endpoint = "tcp:port=2525"
[tls]
certificate = "c.pem"
key = "k.pem"
[auth]
tokens_file = "t.toml"
"""


class ConfigTests(SynchronousTestCase):
    def test_defaults(self) -> None:
        config = parse_config(BASE)
        self.assertEqual(config.headers.missing_from, "reject")
        self.assertEqual(config.idempotency.window, 600.0)
        self.assertEqual(config.idempotency.max_records, 100_000)

    def test_values(self) -> None:
        config = parse_config(
            BASE
            + '[headers]\nmissing_from = "envelope"\n'
            + "[idempotency]\nwindow = 120\nmax_records = 10\n"
        )
        self.assertEqual(config.headers.missing_from, "envelope")
        self.assertEqual((config.idempotency.window, config.idempotency.max_records), (120.0, 10))

    def test_bad_values_name_the_key(self) -> None:
        for extra, text in [
            ('[headers]\nmissing_from = "add"\n', "headers.missing_from: expected one of"),
            ("[idempotency]\nwindow = 30\n", "idempotency.window: expected more seconds"),
            (
                "[upstream]\ntimeout = 700\n",
                "idempotency.window: expected more seconds than upstream.timeout (700)",
            ),
            ("[idempotency]\nmax_records = 0\n", "idempotency.max_records: expected at least 1"),
            ("[idempotency]\nspan = 1\n", "idempotency.span: unknown setting"),
        ]:
            e = self.assertRaises(ConfigError, parse_config, BASE + extra)
            self.assertIn(text, str(e))
