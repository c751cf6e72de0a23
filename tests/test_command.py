"""
The C{relayd} command (L{relayd.__main__}): C{--version}, C{check},
C{tokens}, C{run}; start-up problems as one line, never a traceback; an
IPv6 literal in C{upstream.url} used end to end; C{twist relayd} found
from the project folder (what an editable install puts on C{sys.path}).
"""

from __future__ import annotations

import io
import os
import shutil
import smtplib
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

from relayd import __version__
from relayd.__main__ import check, main
from relayd.config import load_config, parse_config
from relayd.tls import ensure_self_signed
from relayd.tokens import digest
from tests.test_e2e import ROOT, Upstream, free_port

TOKEN = "command-token-not-a-secret"


def relayd(
    *args: str, cwd: str | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """
    Run C{python -m relayd ARGS}.
    """
    return subprocess.run(
        [sys.executable, "-m", "relayd", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=timeout,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )


class Folder:
    """
    A configuration folder: certificate, key, tokens file, relayd.toml.
    """

    def __init__(self, listeners: str = "", extra: str = "", url: str = "") -> None:
        self.path = Path(tempfile.mkdtemp(prefix="relayd-command-"))
        ensure_self_signed(str(self.path / "cert.pem"), str(self.path / "key.pem"), "localhost")
        (self.path / "tokens.toml").write_text(f'[tokens.t]\nsha256 = "{digest(TOKEN).hex()}"\n')
        self.port = free_port()
        listeners = (
            listeners or f'[[listeners]]\nendpoint = "tcp:port={self.port}:interface=127.0.0.1"\n'
        )
        url = url or "http://127.0.0.1:8025/send"
        self.write(
            f'[server]\nhostname = "relay.test"\n{listeners}'
            '[tls]\ncertificate = "cert.pem"\nkey = "key.pem"\n'
            f'[auth]\ntokens_file = "tokens.toml"\n[upstream]\nurl = "{url}"\ntimeout = 5\n{extra}'
        )

    def write(self, text: str) -> None:
        (self.path / "relayd.toml").write_text(text)

    @property
    def config(self) -> str:
        return str(self.path / "relayd.toml")

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


class CommandTests(unittest.TestCase):
    def folder(self, **kwargs: Any) -> Folder:
        folder = Folder(**kwargs)
        self.addCleanup(folder.remove)
        return folder

    def check(self, folder: Folder) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        status = check(folder.config, out, err)
        return status, out.getvalue(), err.getvalue()

    def test_version_is_relayds(self) -> None:
        done = relayd("--version")
        self.assertEqual((done.returncode, done.stdout), (0, f"relayd {__version__}\n"))

    def test_no_command_prints_usage(self) -> None:
        done = relayd()
        self.assertEqual(done.returncode, 64)
        self.assertIn("relayd COMMAND", done.stderr)
        self.assertEqual(relayd("frobnicate").returncode, 64)

    def test_check_prints_the_effective_configuration(self) -> None:
        """
        A valid file: exit 0, and the printed configuration (defaults and
        resolved paths included) reads back to the same configuration.
        """
        folder = self.folder()
        status, out, err = self.check(folder)
        self.assertEqual((status, err), (0, ""))
        self.assertIn("max_connections_per_ip = 50", out)
        self.assertIn(f'tokens_file = "{folder.path}/tokens.toml"', out)
        loaded = load_config(folder.config)
        self.assertEqual(parse_config(out, loaded.path), loaded)

    def test_check_as_a_command(self) -> None:
        folder = self.folder()
        done = relayd("check", "--config", folder.config)
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertTrue(done.stdout.startswith(f"# {folder.config}: valid"))

    def assertRefused(self, folder: Folder, message: str) -> None:
        status, out, err = self.check(folder)
        self.assertEqual(status, 78)
        self.assertEqual(err, f"relayd: {folder.config}: {message}\n")
        self.assertEqual(out, "")

    def test_check_key_not_matching_the_certificate(self) -> None:
        folder = self.folder()
        other = folder.path / "other"
        ensure_self_signed(str(other) + "-cert.pem", str(other) + "-key.pem", "localhost")
        os.replace(str(other) + "-key.pem", folder.path / "key.pem")
        self.assertRefused(
            folder,
            f"tls.key: {folder.path}/key.pem: does not match the certificate in"
            f" {folder.path}/cert.pem",
        )

    def test_check_tokens_file_missing(self) -> None:
        folder = self.folder()
        (folder.path / "tokens.toml").unlink()
        status, _, err = self.check(folder)
        self.assertEqual(status, 78)
        self.assertIn("tokens.toml", err)
        self.assertEqual(err.count("\n"), 1)

    def test_check_unknown_dialect(self) -> None:
        folder = self.folder(extra='dialect = "carrier-pigeon"\n')
        status, _, err = self.check(folder)
        self.assertEqual(status, 78)
        self.assertIn("upstream.dialect", err)
        self.assertEqual(err.count("\n"), 1)

    def test_check_bad_endpoint(self) -> None:
        folder = self.folder(listeners='[[listeners]]\nendpoint = "tcp:port=notaport"\n')
        status, _, err = self.check(folder)
        self.assertEqual(status, 78)
        self.assertTrue(
            err.startswith(f"relayd: {folder.config}: listeners[0].endpoint: 'tcp:port=notaport'")
        )
        self.assertEqual(err.count("\n"), 1)
        folder = self.folder(listeners='[[listeners]]\nendpoint = "carrier:587"\n')
        self.assertEqual(self.check(folder)[0], 78)

    def test_check_bad_proxy_network(self) -> None:
        folder = self.folder(
            listeners='[[listeners]]\nendpoint = "haproxy:tcp:2525"\nproxy_networks = ["10.0.0.300/8"]\n'
        )
        status, _, err = self.check(folder)
        self.assertEqual(status, 78)
        self.assertIn("listeners[0].proxy_networks[0]: expected an IP network", err)

    def test_check_systemd_endpoints_by_syntax(self) -> None:
        """
        C{systemd:} sockets exist only under systemd: C{check} accepts a
        well-formed description, refuses a malformed one.
        """
        good = self.folder(listeners='[[listeners]]\nendpoint = "systemd:domain=INET6:index=0"\n')
        self.assertEqual(self.check(good)[0], 0)
        bad = self.folder(listeners='[[listeners]]\nendpoint = "systemd:domain=INET6"\n')
        self.assertRefused(
            bad,
            "listeners[0].endpoint: 'systemd:domain=INET6': give exactly one of index= or name=",
        )

    def test_check_ipv6_literal_upstream(self) -> None:
        self.assertEqual(self.check(self.folder(url="http://[::1]:8025/"))[0], 0)

    def test_tokens_subcommand(self) -> None:
        folder = self.folder()
        done = relayd("tokens", "list", "--file", str(folder.path / "tokens.toml"))
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertIn("t", done.stdout)

    def test_main_version_in_process(self) -> None:
        stdout = sys.stdout
        sys.stdout = io.StringIO()
        try:
            self.assertEqual(main(["--version"]), 0)
            self.assertEqual(sys.stdout.getvalue(), f"relayd {__version__}\n")
        finally:
            sys.stdout = stdout


class StartUpProblemTests(unittest.TestCase):
    """
    C{relayd run}: what stops start-up is one line naming the cause.
    """

    def test_port_in_use(self) -> None:
        folder = Folder()
        self.addCleanup(folder.remove)
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", folder.port))
            taken.listen()
            done = relayd("run", "--config", folder.config, cwd=str(folder.path))
        self.assertEqual(done.returncode, 1)
        self.assertNotIn("Traceback", done.stdout + done.stderr)
        self.assertIn(
            f"relayd: listeners[0] (tcp:port={folder.port}:interface=127.0.0.1):"
            " cannot listen: Address already in use\n",
            done.stderr,
        )

    def test_bad_endpoint(self) -> None:
        folder = Folder(listeners='[[listeners]]\nendpoint = "tcp:port=notaport"\n')
        self.addCleanup(folder.remove)
        done = relayd("run", "--config", folder.config, cwd=str(folder.path))
        self.assertEqual(done.returncode, 78)
        self.assertNotIn("Traceback", done.stdout + done.stderr)
        self.assertTrue(
            done.stderr.startswith(f"relayd: {folder.config}: listeners[0].endpoint:"), done.stderr
        )

    def test_twist_finds_the_plugin_from_the_project_folder(self) -> None:
        """
        With the project folder on C{sys.path} (as the static C{.pth} of
        C{pip install -e .} puts it, see setup.cfg), C{twist relayd} is a
        known command.
        """
        done = subprocess.run(
            [sys.executable, "-m", "twisted", "relayd", "--help"],
            capture_output=True,
            text=True,
            cwd=tempfile.gettempdir(),
            env=dict(os.environ, PYTHONPATH=str(ROOT)),
            timeout=60,
        )
        self.assertEqual(done.returncode, 0, done.stdout + done.stderr)
        self.assertIn("--config", done.stdout)


class _IPv6Server(ThreadingHTTPServer):
    address_family = socket.AF_INET6


def ipv6_upstream() -> Upstream:
    """
    The recording upstream of the end-to-end tests, moved to C{[::1]}.

    @raise OSError: IPv6 loopback is not available.
    """
    upstream = Upstream()
    handler = upstream.server.RequestHandlerClass
    upstream.stop()
    upstream.server = _IPv6Server(("::1", 0), handler)
    upstream.port = upstream.server.server_address[1]
    upstream.thread = threading.Thread(target=upstream.server.serve_forever, daemon=True)
    upstream.thread.start()
    return upstream


@unittest.skipUnless(socket.has_ipv6, "no IPv6")
class IPv6UpstreamTests(unittest.TestCase):
    def test_message_reaches_an_ipv6_literal_upstream(self) -> None:
        """
        C{upstream.url = "http://[::1]:PORT/v1/send"}: relayd starts and the
        message reaches the upstream listening on ::1.
        """
        upstream = self.ipv6_upstream()
        folder = Folder(url=f"http://[::1]:{upstream.port}/v1/send")
        self.addCleanup(folder.remove)
        log = open(folder.path / "relayd.log", "wb")
        self.addCleanup(log.close)
        process = subprocess.Popen(
            [sys.executable, "-m", "relayd", "run", "--config", folder.config],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=str(folder.path),
            env=dict(os.environ, PYTHONPATH=str(ROOT)),
        )
        self.addCleanup(process.wait)
        self.addCleanup(process.terminate)
        client = self.connect(folder.port, process)
        with client:
            client.starttls()
            client.login("apikey", TOKEN)
            refused = client.sendmail(
                "a@example.com",
                ["b@example.net"],
                b"From: a@example.com\r\nTo: b@example.net\r\nSubject: v6\r\n\r\nbody\r\n",
            )
        self.assertEqual(refused, {})
        self.assertEqual(len(upstream.requests), 1)
        self.assertEqual(upstream.requests[0]["path"], "/v1/send")
        self.assertEqual(upstream.requests[0]["headers"]["Host"], f"[::1]:{upstream.port}")

    def ipv6_upstream(self) -> Upstream:
        try:
            upstream = ipv6_upstream()
        except OSError as e:
            self.skipTest(f"cannot listen on ::1: {e}")
        self.addCleanup(upstream.stop)
        return upstream

    def connect(self, port: int, process: Any) -> smtplib.SMTP:
        deadline = time.monotonic() + 20
        while True:
            try:
                return smtplib.SMTP("127.0.0.1", port, local_hostname="c.test", timeout=10)
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
