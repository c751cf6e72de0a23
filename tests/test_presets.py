"""
Tests for the provider presets (C{etc/presets/*.toml}): each loads, and
its listeners, credentials, header rules and reply texts are what the
provider documents (C{/work/shared/providers/}).
"""

from __future__ import annotations

from pathlib import Path

from twisted.cred.credentials import UsernamePassword
from twisted.trial.unittest import SynchronousTestCase

from relayd import reply as R
from relayd.auth import AuthRefused, CredentialRules
from relayd.config import Config, load_config
from relayd.message import Envelope
from relayd.policy import parse_with_policy
from relayd.reply import Refused, Reply
from relayd.replytexts import ReplyTexts

PRESETS = Path(__file__).parent.parent / "etc" / "presets"
ENVELOPE = Envelope("ann@example.com", ("bob@example.net",))


def preset(name: str) -> Config:
    return load_config(str(PRESETS / f"{name}.toml"))


def message(*headers: str, body: str = "hi") -> bytes:
    lines = ["From: Ann <ann@example.com>", "To: bob@example.net", "Subject: s", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n" + body + "\r\n").encode()


def listeners(config: Config) -> list[tuple[str, str]]:
    return [(lst.endpoint, lst.tls) for lst in config.listeners]


def credential(config: Config, username: str, password: str) -> str:
    rules = CredentialRules.from_config(config.auth)
    return rules.credential(UsernamePassword(username.encode(), password.encode()))[2]


class PresetTests(SynchronousTestCase):
    def test_mailpace(self) -> None:
        config = preset("mailpace")
        self.assertEqual(
            listeners(config),
            [
                ("tcp:port=25", "starttls"),
                ("tcp:port=587", "starttls"),
                ("tcp:port=2525", "starttls"),
                ("tcp:port=465", "implicit"),
            ],
        )
        self.assertEqual(credential(config, "tok_1", "tok_1"), "tok_1")
        self.assertRaises(AuthRefused, credential, config, "apikey", "tok_1")
        m = parse_with_policy(
            message(
                "X-MailPace-Tags: tag one, tag two",
                "X-List-Unsubscribe: <mailto:u@x>",
                "X-Other: dropped",
                "Message-ID: <1@x>",
            ),
            ENVELOPE,
            config.headers,
        )
        self.assertEqual(
            (m.tags, m.list_unsubscribe, m.headers), (("tag one", "tag two"), "<mailto:u@x>", ())
        )

    def test_krafter(self) -> None:
        config = preset("krafter")
        self.assertEqual(listeners(config), [("tcp:port=465", "implicit")])
        self.assertEqual(config.limits.max_message_size, 26214400)
        self.assertEqual(credential(config, "apikey", "kr_live_abc123"), "kr_live_abc123")
        self.assertRaises(AuthRefused, credential, config, "me@x", "kr_live_abc123")
        texts = ReplyTexts.from_config(config.replies)
        with self.assertRaises(Refused) as e:
            parse_with_policy(message("X-Krafter-Stream: promo"), ENVELOPE, config.headers)
        self.assertEqual(
            texts.apply(e.exception.reply), Reply(550, "5.7.1", "unknown stream: promo")
        )
        self.assertEqual(
            texts.apply(R.stream_not_allowed("broadcast")).text,
            "API key is not allowed to send on stream 'broadcast'",
        )
        plain = parse_with_policy(message(), ENVELOPE, config.headers)
        self.assertEqual(
            (plain.stream, plain.track, plain.list_unsubscribe), ("transactional", False, None)
        )
        broadcast = parse_with_policy(
            message("X-Krafter-Stream: broadcast"), ENVELOPE, config.headers
        )
        self.assertEqual((broadcast.track, bool(broadcast.list_unsubscribe)), (True, True))
        opted_out = parse_with_policy(
            message("X-Krafter-Stream: broadcast", "X-Krafter-Tracking-Enabled: FALSE"),
            ENVELOPE,
            config.headers,
        )
        self.assertIs(opted_out.track, False)
        self.assertEqual(
            texts.apply(R.TEMPORARY_FAILURE).text, "Temporary failure, try again later"
        )

    def test_cakemail(self) -> None:
        config = preset("cakemail")
        self.assertEqual(listeners(config), [("tcp:port=465", "implicit")])
        self.assertEqual(config.limits.max_recipients, 1)
        self.assertFalse(config.auth.defaults.attachments)
        self.assertEqual(credential(config, "jane", "pw"), "amFuZTpwdw==")
        with self.assertRaises(Refused) as e:
            parse_with_policy(message("x-list-id: 9234980"), ENVELOPE, config.headers)
        self.assertEqual(e.exception.reply, R.missing_required_header("x-email-api-enabled"))
        with self.assertRaises(Refused) as e:
            parse_with_policy(message("x-email-api-enabled: true"), ENVELOPE, config.headers)
        self.assertEqual(e.exception.reply, R.missing_required_header("x-list-id"))
        m = parse_with_policy(
            message("x-email-api-enabled: true", "x-list-id: 9234980", "x-tags: a,b"),
            ENVELOPE,
            config.headers,
        )
        self.assertEqual(
            (m.stream, m.tags, m.headers), ("marketing", ("a", "b"), (("x-list-id", "9234980"),))
        )

    def test_enkod(self) -> None:
        config = preset("enkod")
        self.assertEqual(listeners(config), [("tcp:port=587", "starttls")])
        self.assertEqual(credential(config, "", "key-1"), "key-1")
        self.assertRaises(AuthRefused, credential, config, "apikey", "key-1")
        texts = ReplyTexts.from_config(config.replies)
        self.assertEqual(
            texts.apply(R.AUTH_REQUIRED), Reply(530, "5.7.0", "no username or password")
        )
        self.assertEqual(texts.apply(R.AUTH_INVALID).text, "wrong api key")
        self.assertEqual(texts.apply(R.TEMPORARY_FAILURE).text, "internal service error")
        self.assertEqual(texts.apply(R.BAD_SENDER_SYNTAX).text, "invalid from email")
        data = message().replace(b"From: Ann <ann@example.com>", b"From: not an address")
        m = parse_with_policy(data, ENVELOPE, config.headers)
        self.assertEqual((m.from_, m.author_address), ("EMPTY-FROM", ""))

    def test_cloudmailin(self) -> None:
        config = preset("cloudmailin")
        self.assertEqual(
            listeners(config),
            [
                ("tcp:port=587", "starttls"),
                ("tcp:port=2525", "starttls"),
                ("tcp:port=25", "starttls"),
            ],
        )
        self.assertEqual(credential(config, "acct", "pw"), "YWNjdDpwdw==")
        texts = ReplyTexts.from_config(config.replies)
        self.assertEqual(
            texts.apply(R.queued("f78b876d")), Reply(250, "2.0.0", "Thanks! Queued as: f78b876d")
        )


class ReplyTextsConfigTests(SynchronousTestCase):
    def test_unknown_name_and_placeholder_are_refused(self) -> None:
        from relayd.config import ConfigError

        e = self.assertRaises(ConfigError, ReplyTexts.from_config, {"nosuch": "x"})
        self.assertEqual(str(e), "replies.nosuch: unknown reply name")
        e = self.assertRaises(ConfigError, ReplyTexts.from_config, {"queued": "{nope}"})
        self.assertEqual(str(e), "replies.queued: placeholders must be among {id}")

    def test_upstream_text_passes_unchanged(self) -> None:
        texts = ReplyTexts.from_config({"temporary_failure": "later"})
        self.assertEqual(texts.apply(Reply(550, "5.6.0", "bad domain")).text, "bad domain")
        self.assertEqual(texts.apply(R.TEMPORARY_FAILURE), Reply(451, "4.3.0", "later"))
