"""
Tests for third-party dialect plugins (the C{relayd.dialects} entry point
group) with the worked example C{examples/relayd-dialect-acme}, which the
Makefile installs into the test environment.
"""

from __future__ import annotations

from treq.testing import StubTreq
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from relayd.config import ConfigError, HeadersConfig, UpstreamConfig, parse_config
from relayd.delivery import Pipeline, RelayDelivery
from relayd.dialects import ENTRY_POINT_GROUP, get_dialect, plugin_dialects
from relayd.interfaces import IDialect
from relayd.reply import Reply
from relayd.testing import FakeUpstream
from relayd.tokens import TokenPolicy
from relayd.upstream import UpstreamClient

MESSAGE = (
    b"From: Ann <ann@example.com>\r\nTo: bob@example.net\r\n"
    b"Subject: hello\r\nX-Tags: welcome\r\n\r\nbody\r\n"
)


class AcmePluginTests(SynchronousTestCase):
    def test_registered_in_the_entry_point_group(self) -> None:
        self.assertEqual(ENTRY_POINT_GROUP, "relayd.dialects")
        self.assertIn("acme", plugin_dialects())
        verifyObject(IDialect, get_dialect("acme"))

    def test_configuration_accepts_plugin_name(self) -> None:
        config = parse_config(
            '[[listeners]]\nendpoint = "tcp:0"\n[tls]\ncertificate = "c"\nkey = "k"\n'
            '[auth]\ntokens_file = "t"\n[upstream]\ndialect = "acme"\n'
        )
        self.assertEqual(config.upstream.dialect, "acme")

    def test_unknown_dialect_lists_plugins(self) -> None:
        e = self.assertRaises(ConfigError, get_dialect, "nosuch")
        self.assertIn("'acme'", str(e))

    def test_message_relayed_through_the_plugin(self) -> None:
        """
        One SMTP transaction becomes one Acme request: its path, key header
        and body, and the 250 carries Acme's id.
        """
        clock = Clock()
        upstream = FakeUpstream()
        upstream.enqueue(201, {"message_id": "acme-42"})
        client = UpstreamClient(
            clock,
            UpstreamConfig(url="http://acme.test/v1/messages", dialect="acme"),
            get_dialect("acme"),
            http=StubTreq(upstream),
        )
        avatar = RelayDelivery(
            "acme-key", TokenPolicy("acme"), Pipeline(client, HeadersConfig(), clock)
        )
        avatar.validateFrom(None, "ann@example.com")
        message = avatar.validateTo("bob@example.net")()
        message.bodyReceived(MESSAGE)
        reply = self.successResultOf(message.eomReceived())
        self.assertEqual(reply, Reply(250, "2.0.0", "Ok: queued as acme-42"))
        (request,) = upstream.requests
        self.assertEqual((request.path, request.header("x-acme-key")), ("/v1/messages", "acme-key"))
        self.assertEqual(
            request.json,
            {
                "sender": "Ann <ann@example.com>",
                "recipients": ["bob@example.net"],
                "subject": "hello",
                "body_text": "body\n",
                "body_html": None,
                "labels": ["welcome"],
            },
        )
