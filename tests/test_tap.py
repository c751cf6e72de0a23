"""
Tests for L{relayd.tap}: the command line of C{twist relayd}, the one-line
error an operator gets for an unusable configuration, and the service tree
that C{makeService} returns.
"""

from __future__ import annotations

import io
import sys
import tempfile
from pathlib import Path

from twisted.application.service import IService, IServiceCollection, IServiceMaker
from twisted.plugin import getPlugins
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from relayd import dispatch, tap
from relayd.tap import Options, makeService
from relayd.tokens import digest


def write_config(folder: Path, extra: str = "") -> str:
    """
    Write a usable configuration (two listeners, a generated self-signed
    certificate, a tokens file) into C{folder}.

    @return: The configuration file's path.
    """
    (folder / "tokens.toml").write_text(f'[tokens.t]\nsha256 = "{digest("tok").hex()}"\n')
    path = folder / "relayd.toml"
    path.write_text(
        f"""
[server]
hostname = "mx.test"
[[listeners]]
name = "submission"
endpoint = "tcp:port=0:interface=127.0.0.1"
[[listeners]]
name = "submissions"
endpoint = "tcp:port=0:interface=127.0.0.1"
tls = "implicit"
[tls]
certificate = "cert.pem"
key = "key.pem"
generate_self_signed = true
[auth]
tokens_file = "tokens.toml"
{extra}
"""
    )
    return str(path)


class OptionsTests(SynchronousTestCase):
    def test_defaults(self) -> None:
        """
        Without options relayd reads C{/etc/relayd/relayd.toml} and runs as
        the supervisor (no inherited sockets).
        """
        options = Options()
        options.parseOptions([])
        self.assertEqual(options["config"], "/etc/relayd/relayd.toml")
        self.assertEqual(options["inherit-fds"], ())

    def test_config_long_and_short(self) -> None:
        for argv in (["--config", "r.toml"], ["-c", "r.toml"], ["--config=r.toml"]):
            options = Options()
            options.parseOptions(argv)
            self.assertEqual(options["config"], "r.toml", argv)

    def test_inherit_fds(self) -> None:
        options = Options()
        options.parseOptions(["--config", "x.toml", "--inherit-fds", "3,4"])
        self.assertEqual(options["inherit-fds"], (3, 4))

    def test_bad_inherit_fds_is_a_usage_error(self) -> None:
        options = Options()
        e = self.assertRaises(usage.UsageError, options.parseOptions, ["--inherit-fds", "3,x"])
        self.assertEqual(str(e), "--inherit-fds: expected numbers separated by commas")

    def test_unknown_option_is_a_usage_error(self) -> None:
        self.assertRaises(usage.UsageError, Options().parseOptions, ["--port", "25"])

    def test_help_names_the_config_option(self) -> None:
        text = str(Options())
        self.assertIn("--config=", text)
        self.assertIn("Path of the TOML configuration file.", text)


class ConfigErrorTests(SynchronousTestCase):
    """
    An unusable configuration stops start-up with one line on standard
    error, naming the file and the key, and exit status 78 (C{EX_CONFIG}).
    """

    def setUp(self) -> None:
        self.folder = Path(tempfile.mkdtemp())
        self.stderr = io.StringIO()
        self.patch(sys, "stderr", self.stderr)

    def fail_to_start(self, path: str) -> str:
        """
        @return: What C{makeService} wrote to standard error before exiting
            with status 78.
        """
        options = Options()
        options.parseOptions(["--config", path])
        e = self.assertRaises(SystemExit, makeService, options)
        self.assertEqual(e.code, 78)
        return self.stderr.getvalue()

    def test_missing_config(self) -> None:
        path = str(self.folder / "nowhere.toml")
        self.assertEqual(self.fail_to_start(path), f"relayd: {path}: no such file\n")

    def test_bad_value(self) -> None:
        path = self.folder / "bad.toml"
        path.write_text('[upstream]\ntimeout = "soon"\n')
        self.assertEqual(
            self.fail_to_start(str(path)),
            f"relayd: {path}: upstream.timeout: expected a number of seconds\n",
        )

    def test_not_toml(self) -> None:
        path = self.folder / "bad.toml"
        path.write_text("[server\n")
        out = self.fail_to_start(str(path))
        self.assertTrue(out.startswith(f"relayd: {path}: not valid TOML: "), out)
        self.assertEqual(out.count("\n"), 1)

    def test_error_found_while_building_names_the_config(self) -> None:
        """
        A problem found while building the service (here: the tokens file
        is missing) is also one line, prefixed with the configuration file.
        """
        path = write_config(self.folder)
        (self.folder / "tokens.toml").unlink()
        out = self.fail_to_start(path)
        self.assertTrue(out.startswith(f"relayd: {path}: "), out)
        self.assertIn("tokens.toml", out)
        self.assertEqual(out.count("\n"), 1)
        self.assertNotIn("Traceback", out)


class MakeServiceTests(SynchronousTestCase):
    def setUp(self) -> None:
        # Not this test run's reactor: record what would be changed.
        self.dispatched: list[object] = []
        self.patch(dispatch, "direct_dispatch", self.dispatched.append)

    def test_returns_the_service_tree(self) -> None:
        """
        C{makeService} returns a service collection, not started, holding
        one service per listener under its configured name, and makes the
        reactor dispatch directly (L{relayd.dispatch}).
        """
        from twisted.internet import reactor

        folder = Path(tempfile.mkdtemp())
        options = Options()
        options.parseOptions(["--config", write_config(folder)])
        service = makeService(options)
        self.assertEqual(self.dispatched, [reactor])
        self.assertTrue(verifyObject(IService, service))
        self.assertTrue(verifyObject(IServiceCollection, service))
        self.assertFalse(service.running)
        for name in ("submission", "submissions"):
            self.assertFalse(service.getServiceNamed(name).running)
        self.assertRaises(KeyError, service.getServiceNamed, "dev_upstream")
        self.assertTrue((folder / "cert.pem").exists())

    def test_plugin(self) -> None:
        """
        C{twist relayd} finds the plugin, whose options and service maker
        are this module's.
        """
        (maker,) = [p for p in getPlugins(IServiceMaker) if p.tapname == "relayd"]
        self.assertIs(maker.options, tap.Options)
        self.assertIs(maker.makeService, tap.makeService)
