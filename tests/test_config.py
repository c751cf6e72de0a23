"""
Tests for L{relayd.config}: the defaults of every key, the checks on each
value, and the one-line L{ConfigError} an operator sees for a bad file.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import attrs
from twisted.trial.unittest import SynchronousTestCase

from relayd.config import (
    AuthConfig,
    Config,
    ConfigError,
    DevUpstreamConfig,
    HeadersConfig,
    LimitsConfig,
    ListenerConfig,
    ServerConfig,
    TLSConfig,
    UpstreamConfig,
    load_config,
    parse_config,
)

ROOT = Path(__file__).resolve().parents[1]
MiB = 1024 * 1024

#: The tables a usable file must have, and one listener.
REQUIRED = (
    '[tls]\ncertificate = "c.pem"\nkey = "k.pem"\n'
    '[auth]\ntokens_file = "t.toml"\n'
    '[[listeners]]\nendpoint = "tcp:2525"\n'
)


def refusal(text: str, path: str = "r.toml") -> str:
    """
    @return: The message of the L{ConfigError} that C{text} raises.
    @raise AssertionError: C{text} is accepted.
    """
    try:
        parse_config(text, path)
    except ConfigError as e:
        return str(e)
    raise AssertionError(f"accepted: {text!r}")


class DefaultTests(SynchronousTestCase):
    """
    A file with only the required settings gets the documented defaults.
    """

    def setUp(self) -> None:
        self.config = parse_config(REQUIRED, "/etc/relayd/relayd.toml")

    def test_server_defaults(self) -> None:
        self.assertEqual(
            attrs.asdict(self.config.server),
            {
                "hostname": "localhost",
                "workers": 1,
                "proxy_networks": (),
                "proxy_timeout": 5.0,
                "heap_trim": True,
                "heap_trim_interval": 1.0,
                "heap_trim_threshold": 1024 * 1024,
            },
        )

    def test_listener_defaults(self) -> None:
        """
        A listener speaks STARTTLS unless told otherwise, and is named after
        its endpoint.
        """
        self.assertEqual(
            self.config.listeners,
            (ListenerConfig(endpoint="tcp:2525", tls="starttls", name="tcp:2525"),),
        )

    def test_tls_defaults(self) -> None:
        self.assertEqual(
            attrs.asdict(TLSConfig()),
            {
                "certificate": "",
                "key": "",
                "generate_self_signed": False,
                "minimum_version": "1.2",
                # Mozilla's intermediate profile: AEAD suites with forward
                # secrecy only (see tests/test_tls_policy.py).
                "ciphers": (
                    "TLS_AES_128_GCM_SHA256",
                    "TLS_AES_256_GCM_SHA384",
                    "TLS_CHACHA20_POLY1305_SHA256",
                    "ECDHE-ECDSA-AES128-GCM-SHA256",
                    "ECDHE-RSA-AES128-GCM-SHA256",
                    "ECDHE-ECDSA-AES256-GCM-SHA384",
                    "ECDHE-RSA-AES256-GCM-SHA384",
                    "ECDHE-ECDSA-CHACHA20-POLY1305",
                    "ECDHE-RSA-CHACHA20-POLY1305",
                ),
                "groups": ("X25519", "prime256v1", "secp384r1"),
            },
        )
        self.assertFalse(self.config.tls.generate_self_signed)
        self.assertEqual(self.config.tls.minimum_version, "1.2")

    def test_auth_defaults(self) -> None:
        auth = AuthConfig()
        self.assertEqual((auth.backend, auth.tokens_file), ("tokens_file", ""))
        self.assertEqual(auth.usernames, ("blank", "apikey", "token"))

    def test_upstream_defaults(self) -> None:
        self.assertEqual(
            attrs.asdict(self.config.upstream),
            {
                "url": "http://127.0.0.1:8025/send",
                "dialect": "native",
                "timeout": 30.0,
                "token_header": "",
                "token_format": "",
                "max_connections": 64,
                "idle_timeout": 4.0,
            },
        )

    def test_limits_defaults(self) -> None:
        self.assertEqual(
            attrs.asdict(self.config.limits),
            {
                "max_message_size": 25 * MiB,
                "max_recipients": 100,
                "max_line_length": 65536,
                "max_command_length": 512,
                "idle_timeout": 300.0,
                "data_timeout": 600.0,
                "session_timeout": 3600.0,
                "max_connections": 10000,
                "max_connections_per_ip": 50,
                "max_errors": 10,
                "max_auth_failures": 3,
                "auth_failures_per_ip": 10,
                "auth_failure_window": 600.0,
                "auth_lockout": 900.0,
                "max_messages_per_connection": 1000,
                "bare_newline": "normalize",
                "max_memory_bytes": 128 * MiB,
                "data_min_rate": 1024,
                "data_grace": 30.0,
                "auth_failures_per_credential": 5,
                "auth_exempt_networks": (),
                "auth_exempt_listeners": (),
                "auth_hmac_key_file": "",
                "messages_per_minute_per_token": 0,
                "messages_per_minute_per_ip": 0,
            },
        )

    def test_headers_defaults(self) -> None:
        headers = attrs.asdict(self.config.headers)
        self.assertEqual(
            [headers.pop(k) for k in ("required_forward", "stream_defaults", "invalid_from")],
            [(), (), "refuse"],
        )
        self.assertEqual(headers.pop("from_placeholder"), "EMPTY-FROM")
        self.assertEqual(
            headers,
            {
                "tags": ("X-Tags",),
                "max_tags": 10,
                "max_tag_length": 100,
                "stream": "X-Stream",
                "streams": (),
                "default_stream": "",
                "tracking": "X-Track",
                "list_unsubscribe": "X-List-Unsubscribe",
                "metadata_prefix": "X-Metadata-",
                "required": {},
                "keep": (
                    "In-Reply-To",
                    "References",
                    "List-*",
                    "X-*",
                    "Auto-Submitted",
                    "Precedence",
                    "Feedback-ID",
                ),
                "strip": (
                    "Received",
                    "Return-Path",
                    "DKIM-Signature",
                    "ARC-*",
                    "Authentication-Results",
                    "Bcc",
                    "Message-ID",
                    "X-Original-To",
                    "Delivered-To",
                ),
                "keep_message_id": False,
                "missing_from": "reject",
            },
        )

    def test_dev_upstream_defaults(self) -> None:
        """
        The development API is off, and would listen on 127.0.0.1 only; its
        outbox is relative to the configuration's folder.
        """
        self.assertEqual(
            self.config.dev_upstream,
            DevUpstreamConfig(
                enabled=False,
                endpoint="tcp:port=8025:interface=127.0.0.1",
                outbox="/etc/relayd/var/outbox",
            ),
        )

    def test_every_table_has_its_class(self) -> None:
        self.assertEqual(
            [type(getattr(self.config, f.name)) for f in attrs.fields(Config)][:8],
            [
                ServerConfig,
                tuple,
                TLSConfig,
                AuthConfig,
                UpstreamConfig,
                LimitsConfig,
                HeadersConfig,
                DevUpstreamConfig,
            ],
        )
        self.assertEqual(self.config.path, "/etc/relayd/relayd.toml")

    def test_frozen(self) -> None:
        """
        The configuration cannot be changed once loaded.
        """
        self.assertRaises(
            attrs.exceptions.FrozenInstanceError, setattr, self.config.limits, "max_errors", 1
        )

    def test_shipped_examples_load(self) -> None:
        """
        The example configurations in C{etc/} are valid.
        """
        for name in ("relayd.toml", "relayd.dev.toml"):
            config = load_config(str(ROOT / "etc" / name))
            self.assertTrue(config.listeners, name)


class PathTests(SynchronousTestCase):
    def test_relative_paths_are_resolved_against_the_file(self) -> None:
        config = parse_config(
            REQUIRED + '[dev_upstream]\noutbox = "out"\n', "/srv/relay/relayd.toml"
        )
        self.assertEqual(
            (config.tls.certificate, config.tls.key, config.auth.tokens_file),
            ("/srv/relay/c.pem", "/srv/relay/k.pem", "/srv/relay/t.toml"),
        )
        self.assertEqual(config.dev_upstream.outbox, "/srv/relay/out")

    def test_absolute_paths_are_kept(self) -> None:
        config = parse_config(REQUIRED.replace('"c.pem"', '"/pki/c.pem"'), "/srv/relay/relayd.toml")
        self.assertEqual(config.tls.certificate, "/pki/c.pem")


class ValueTests(SynchronousTestCase):
    """
    A value of the wrong kind is refused with the dotted key and what was
    expected.
    """

    def test_whole_numbers(self) -> None:
        for value in ('"2"', "true", "-1", "1.5"):
            self.assertEqual(
                refusal(f"[server]\nworkers = {value}\n" + REQUIRED),
                "r.toml: server.workers: expected a whole number",
                value,
            )

    def test_seconds(self) -> None:
        for value in ('"soon"', "0", "-3", "false"):
            self.assertEqual(
                refusal(f"[upstream]\ntimeout = {value}\n" + REQUIRED),
                "r.toml: upstream.timeout: expected a number of seconds",
                value,
            )
        config = parse_config("[limits]\nidle_timeout = 2\n" + REQUIRED)
        self.assertEqual(config.limits.idle_timeout, 2.0)
        self.assertIsInstance(config.limits.idle_timeout, float)

    def test_booleans(self) -> None:
        self.assertEqual(
            refusal("[headers]\nkeep_message_id = 1\n" + REQUIRED),
            "r.toml: headers.keep_message_id: expected true or false",
        )

    def test_strings(self) -> None:
        self.assertEqual(
            refusal("[upstream]\ntoken_header = 3\n" + REQUIRED),
            "r.toml: upstream.token_header: expected a string",
        )

    def test_choices(self) -> None:
        self.assertEqual(
            refusal(REQUIRED + 'tls = "ssl"\n'),
            "r.toml: listeners[0].tls: expected one of 'starttls', 'implicit'",
        )
        self.assertEqual(
            refusal('[limits]\nbare_newline = "drop"\n' + REQUIRED),
            "r.toml: limits.bare_newline: expected one of 'normalize', 'reject'",
        )
        self.assertEqual(
            refusal(REQUIRED.replace('key = "k.pem"', 'key = "k.pem"\nminimum_version = 1.3')),
            "r.toml: tls.minimum_version: expected one of '1.2', '1.3'",
        )

    def test_lists_of_strings(self) -> None:
        for value in ('"X-Tags"', "[1]"):
            self.assertEqual(
                refusal(f"[headers]\ntags = {value}\n" + REQUIRED),
                "r.toml: headers.tags: expected a list of strings",
            )
        config = parse_config('[headers]\nstreams = ["outbound", "broadcast"]\n' + REQUIRED)
        self.assertEqual(config.headers.streams, ("outbound", "broadcast"))

    def test_tables_of_strings(self) -> None:
        for value in ('"x"', "{ X-Team = 1 }"):
            self.assertEqual(
                refusal(f"[headers]\nrequired = {value}\n" + REQUIRED),
                "r.toml: headers.required: expected a table of strings",
            )

    def test_a_table_where_one_is_expected(self) -> None:
        self.assertEqual(refusal("server = 3\n" + REQUIRED), "r.toml: server: expected a table")
        self.assertEqual(
            refusal("listeners = [3]\n" + REQUIRED.split("[[listeners]]")[0]),
            "r.toml: listeners[0]: expected a table",
        )

    def test_listeners_not_a_list(self) -> None:
        """
        The message names the key (its wording, "a list of strings", is
        not right for a list of tables).
        """
        message = refusal("listeners = 3\n" + REQUIRED.split("[[listeners]]")[0])
        self.assertTrue(message.startswith("r.toml: listeners: expected "), message)

    def test_not_toml(self) -> None:
        message = refusal("hostname = \n")
        self.assertTrue(message.startswith("r.toml: not valid TOML: "), message)
        self.assertNotIn("\n", message)

    def test_without_a_path_the_label_is_config(self) -> None:
        self.assertEqual(refusal("foo = 1\n" + REQUIRED, ""), "<config>: foo: unknown setting")


class UnknownKeyTests(SynchronousTestCase):
    """
    A key the schema does not know is refused, naming its dotted path: a
    typo is never ignored.
    """

    def test_top_level(self) -> None:
        self.assertEqual(refusal("foo = 1\n" + REQUIRED), "r.toml: foo: unknown setting")

    def test_path_is_not_a_setting(self) -> None:
        self.assertEqual(refusal('path = "x"\n' + REQUIRED), "r.toml: path: unknown setting")

    def test_in_a_table(self) -> None:
        self.assertEqual(
            refusal("[limits]\nmax_recipient = 5\n" + REQUIRED),
            "r.toml: limits.max_recipient: unknown setting",
        )

    def test_unknown_table(self) -> None:
        self.assertEqual(refusal("[smtp]\nport = 25\n" + REQUIRED), "r.toml: smtp: unknown setting")

    def test_in_a_listener(self) -> None:
        self.assertEqual(
            refusal(REQUIRED + '[[listeners]]\nendpoint = "tcp:465"\nport = 465\n'),
            "r.toml: listeners[1].port: unknown setting",
        )


class RequiredTests(SynchronousTestCase):
    def test_no_listener(self) -> None:
        self.assertEqual(
            refusal(REQUIRED.split("[[listeners]]")[0]),
            "r.toml: listeners: at least one [[listeners]] entry is needed",
        )

    def test_listener_without_endpoint(self) -> None:
        self.assertEqual(
            refusal(REQUIRED + '[[listeners]]\ntls = "implicit"\n'),
            "r.toml: listeners[1].endpoint: required setting is missing",
        )

    def test_no_certificate_or_no_key(self) -> None:
        for text in (
            REQUIRED.replace('certificate = "c.pem"\n', ""),
            REQUIRED.replace('key = "k.pem"\n', ""),
        ):
            self.assertEqual(
                refusal(text), "r.toml: tls.certificate: a certificate and key are required"
            )

    def test_no_tokens_file(self) -> None:
        self.assertEqual(
            refusal(REQUIRED.replace('tokens_file = "t.toml"\n', "")),
            "r.toml: auth.tokens_file: required setting is missing",
        )

    def test_upstream_url_is_http(self) -> None:
        self.assertEqual(
            refusal('[upstream]\nurl = "ftp://mail.example/send"\n' + REQUIRED),
            "r.toml: upstream.url: expected an http:// or https:// URL",
        )
        config = parse_config('[upstream]\nurl = "https://api.example/v1/send"\n' + REQUIRED)
        self.assertEqual(config.upstream.url, "https://api.example/v1/send")

    def test_upstream_dialect_is_known(self) -> None:
        from relayd.dialects import get_dialect

        e = self.assertRaises(ConfigError, get_dialect, "nosuch")
        self.assertTrue(str(e).startswith("upstream.dialect: unknown dialect 'nosuch'"))
        for dialect in ("native", "raw", "mailpace", "postmark", "sendgrid", "mailjet"):
            config = parse_config(f'[upstream]\ndialect = "{dialect}"\n' + REQUIRED)
            self.assertEqual(config.upstream.dialect, dialect)


class LimitTests(SynchronousTestCase):
    def test_zero_limit_is_refused(self) -> None:
        self.assertEqual(
            refusal("[limits]\nmax_errors = 0\n" + REQUIRED),
            "r.toml: limits.max_errors: expected at least 1",
        )

    def test_every_count_is_at_least_one(self) -> None:
        """
        No whole-number limit may be 0 (a 0 would refuse everything, or be
        read as "no limit" by someone).
        """
        counts = [
            f.name
            for f in attrs.fields(LimitsConfig)
            if f.type in (int, "int") and f.name not in ("max_line_length", "max_command_length")
        ]
        self.assertIn("max_message_size", counts)
        self.assertIn("max_messages_per_connection", counts)
        for name in counts:
            self.assertEqual(
                refusal(f"[limits]\n{name} = 0\n" + REQUIRED),
                f"r.toml: limits.{name}: expected at least 1",
            )
            config = parse_config(f"[limits]\n{name} = 1\n" + REQUIRED)
            self.assertEqual(getattr(config.limits, name), 1)

    def test_line_length_range(self) -> None:
        """
        RFC 5322 section 2.1.1: a line of 78 characters must be accepted.
        """
        for value in (0, 77, 65537):
            self.assertEqual(
                refusal(f"[limits]\nmax_line_length = {value}\n" + REQUIRED),
                "r.toml: limits.max_line_length: expected 78 to 65536 octets",
            )
        for value in (78, 65536):
            config = parse_config(f"[limits]\nmax_line_length = {value}\n" + REQUIRED)
            self.assertEqual(config.limits.max_line_length, value)

    def test_command_length_range(self) -> None:
        """
        RFC 5321 section 4.5.3.1.4: a command line of 512 octets must be
        accepted.
        """
        for value in (0, 511, 65537):
            self.assertEqual(
                refusal(f"[limits]\nmax_command_length = {value}\n" + REQUIRED),
                "r.toml: limits.max_command_length: expected 512 to 65536 octets",
            )

    def test_upstream_connections_at_least_one(self) -> None:
        self.assertEqual(
            refusal("[upstream]\nmax_connections = 0\n" + REQUIRED),
            "r.toml: upstream.max_connections: expected at least 1",
        )

    def test_heap_trim_threshold_not_negative(self) -> None:
        self.assertEqual(
            refusal("[server]\nheap_trim_threshold = -1\n" + REQUIRED),
            "r.toml: server.heap_trim_threshold: expected a whole number",
        )


class HostnameTests(SynchronousTestCase):
    """
    C{server.hostname} goes into the greeting and the EHLO reply (RFC 5321
    section 4.1.1.1): a domain name in ASCII.
    """

    MESSAGE = (
        "r.toml: server.hostname: expected a domain name in ASCII (use the xn-- form of an IDN)"
    )

    def test_domain_names_are_accepted(self) -> None:
        for name in ("localhost", "mx.example.com", "xn--mil-moa.example", "a" * 63 + ".example"):
            config = parse_config(f'[server]\nhostname = "{name}"\n' + REQUIRED)
            self.assertEqual(config.server.hostname, name)

    def test_non_ascii_hostname_is_refused(self) -> None:
        self.assertEqual(refusal('[server]\nhostname = "mäil.example"\n' + REQUIRED), self.MESSAGE)

    def test_malformed_names_are_refused(self) -> None:
        for name in (
            "",
            "-mx.example",
            "mx-.example",
            "a..b",
            "mail_server.example",
            "mx.example.",
            "a" * 64 + ".example",
            "mx example",
        ):
            self.assertEqual(
                refusal(f'[server]\nhostname = "{name}"\n' + REQUIRED), self.MESSAGE, name
            )


class ListenerTests(SynchronousTestCase):
    def test_names_default_to_the_endpoint(self) -> None:
        config = parse_config(
            REQUIRED
            + '[[listeners]]\nname = "submissions"\nendpoint = "tcp:465"\ntls = "implicit"\n'
        )
        self.assertEqual(
            [(listener.name, listener.tls) for listener in config.listeners],
            [("tcp:2525", "starttls"), ("submissions", "implicit")],
        )

    def test_duplicate_listener_names(self) -> None:
        self.assertEqual(
            refusal(REQUIRED + '[[listeners]]\nendpoint = "tcp:2525"\n'),
            "r.toml: listeners[1].name: 'tcp:2525' is used twice; give each listener a name",
        )
        self.assertEqual(
            refusal(
                REQUIRED.replace('endpoint = "tcp:2525"', 'name = "a"\nendpoint = "tcp:25"')
                + '[[listeners]]\nname = "a"\nendpoint = "tcp:587"\n'
            ),
            "r.toml: listeners[1].name: 'a' is used twice; give each listener a name",
        )

    def test_haproxy_needs_proxy_networks(self) -> None:
        """
        A PROXY protocol endpoint needs the networks its headers are
        accepted from (its own or the server's); it works with workers.
        """
        text = REQUIRED.replace('"tcp:2525"', '"haproxy:tcp:25"')
        self.assertEqual(
            refusal("[server]\nworkers = 2\n" + text),
            "r.toml: listeners[0].proxy_networks: a haproxy: listener needs the proxies'"
            " networks (here or in server.proxy_networks)",
        )
        config = parse_config('[server]\nworkers = 2\nproxy_networks = ["10.0.0.0/8"]\n' + text)
        self.assertEqual(config.listeners[0].endpoint, "haproxy:tcp:25")
        self.assertEqual(config.listeners[0].proxy_networks, ("10.0.0.0/8",))


class LoadTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.folder = Path(tempfile.mkdtemp())

    def test_missing_file(self) -> None:
        path = str(self.folder / "nowhere.toml")
        e = self.assertRaises(ConfigError, load_config, path)
        self.assertEqual(str(e), f"{path}: no such file")

    def test_unreadable_file(self) -> None:
        e = self.assertRaises(ConfigError, load_config, str(self.folder))
        self.assertTrue(str(e).startswith(f"{self.folder}: cannot be read: "), str(e))

    def test_not_utf8(self) -> None:
        path = self.folder / "latin1.toml"
        path.write_bytes('[server]\nhostname = "mäil"\n'.encode("latin-1"))
        e = self.assertRaises(ConfigError, load_config, str(path))
        self.assertTrue(str(e).startswith(f"{path}: cannot be read: "), str(e))

    def test_errors_name_the_file(self) -> None:
        path = self.folder / "relayd.toml"
        path.write_text("[upstream]\ntimeout = 'soon'\n" + REQUIRED)
        e = self.assertRaises(ConfigError, load_config, str(path))
        self.assertEqual(str(e), f"{path}: upstream.timeout: expected a number of seconds")

    def test_loaded_file_resolves_against_its_folder(self) -> None:
        path = self.folder / "relayd.toml"
        path.write_text(REQUIRED)
        config = load_config(str(path))
        self.assertEqual(config.path, str(path))
        self.assertEqual(config.auth.tokens_file, os.path.join(self.folder, "t.toml"))
