"""
Tests for the top-level C{include} key of L{relayd.config}: a file (a
preset) read first, the including file laid over it.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from relayd.config import ConfigError, load_config

PRESETS = Path(__file__).resolve().parents[1] / "etc" / "presets"


class IncludeTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="relayd-include-"))
        self.addCleanup(__import__("shutil").rmtree, self.dir, True)

    def write(self, name: str, text: str) -> str:
        path = self.dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return str(path)

    def test_preset_with_urls_and_certificates_overridden(self) -> None:
        """
        Tables merge key by key: the preset's other [auth] and [upstream]
        keys, its listeners, headers and replies stay.
        """
        path = self.write(
            "relayd.toml",
            f'include = "{PRESETS / "krafter.toml"}"\n'
            '[tls]\ncertificate = "c.pem"\nkey = "k.pem"\n'
            '[auth]\nurl = "http://127.0.0.1:9/auth"\n'
            '[upstream]\nurl = "http://127.0.0.1:9/send"\n',
        )
        config = load_config(path)
        self.assertEqual(config.auth.url, "http://127.0.0.1:9/auth")
        self.assertEqual((config.auth.backend, config.auth.usernames), ("http", ("apikey",)))
        self.assertEqual(config.upstream.url, "http://127.0.0.1:9/send")
        self.assertEqual(config.upstream.dialect, "native")
        self.assertEqual(config.tls.certificate, str(self.dir / "c.pem"))
        self.assertEqual(
            [(x.endpoint, x.tls) for x in config.listeners], [("tcp:port=465", "implicit")]
        )
        self.assertEqual(config.headers.stream, "X-Krafter-Stream")
        self.assertEqual(config.replies["temporary_failure"], "Temporary failure, try again later")

    def test_listeners_replace_the_included_ones(self) -> None:
        path = self.write(
            "relayd.toml",
            f'include = "{PRESETS / "mailpace.toml"}"\n'
            '[[listeners]]\nendpoint = "tcp:port=2600"\ntls = "implicit"\n',
        )
        config = load_config(path)
        self.assertEqual(
            [(x.endpoint, x.tls) for x in config.listeners], [("tcp:port=2600", "implicit")]
        )

    def test_relative_paths_keep_their_own_folder(self) -> None:
        """
        include is relative to the including file; the included file's
        own relative paths to its folder.
        """
        self.write(
            "base/base.toml",
            '[[listeners]]\nendpoint = "tcp:port=2525"\n'
            '[tls]\ncertificate = "tls/c.pem"\nkey = "tls/k.pem"\n'
            '[auth]\ntokens_file = "tokens.toml"\n',
        )
        path = self.write("relayd.toml", 'include = "base/base.toml"\n[tls]\nkey = "mine.pem"\n')
        config = load_config(path)
        self.assertEqual(config.tls.certificate, str(self.dir / "base" / "tls" / "c.pem"))
        self.assertEqual(config.tls.key, str(self.dir / "mine.pem"))
        self.assertEqual(config.auth.tokens_file, str(self.dir / "base" / "tokens.toml"))

    def test_errors_name_the_file_and_key(self) -> None:
        path = self.write("relayd.toml", 'include = "nope.toml"\n')
        e = self.assertRaises(ConfigError, load_config, path)
        self.assertEqual(str(e), f"{path}: include: {self.dir / 'nope.toml'}: no such file")
        self.write("loop.toml", 'include = "loop.toml"\n')
        e = self.assertRaises(ConfigError, load_config, str(self.dir / "loop.toml"))
        self.assertIn("include: nested more than 4 deep", str(e))
        path = self.write("bad.toml", "include = 3\n")
        e = self.assertRaises(ConfigError, load_config, path)
        self.assertEqual(str(e), f"{path}: include: expected a string")
        self.write("broken.toml", "[[x\n")
        path = self.write("uses-broken.toml", 'include = "broken.toml"\n')
        e = self.assertRaises(ConfigError, load_config, path)
        self.assertIn("broken.toml: not valid TOML", str(e))
        path = self.write(
            "typo.toml", f'include = "{PRESETS / "enkod.toml"}"\n[auth]\nurll = "x"\n'
        )
        e = self.assertRaises(ConfigError, load_config, path)
        self.assertEqual(str(e), f"{path}: auth.urll: unknown setting")
