"""
Tests for upstream credentials held by relayd: a tokens-file entry names
the credential relayd sends upstream instead of the client's token (a
file, an environment variable or a systemd credential), read at start-up
and reload, never logged, never in the tokens file in clear.
"""

from __future__ import annotations

import os
import shutil
import smtplib
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import unittest
from pathlib import Path

from twisted.cred.credentials import UsernamePassword
from twisted.trial.unittest import SynchronousTestCase

from relayd.auth import make_portal
from relayd.config import ConfigError, CredentialSource, read_credential
from relayd.interfaces import ISubmission
from relayd.tls import ensure_self_signed
from relayd.tokens import TokenPolicy, TokenStore, digest, main
from tests.test_e2e import ROOT, SIMPLE, Upstream, free_port

CLIENT_TOKEN = "client-password-not-a-secret"
HELD_KEY = "SG.relayd-held-key-not-a-secret"


def tokens_text(credential_line: str) -> str:
    """
    A tokens file with one token, C{web}, whose entry has C{credential_line}.
    """
    return f'[tokens.web]\nsha256 = "{digest(CLIENT_TOKEN).hex()}"\n{credential_line}\n'


class FolderMixin:
    def folder(self) -> Path:
        path = Path(tempfile.mkdtemp(prefix="relayd-held-"))
        self.addCleanup(shutil.rmtree, path, True)  # type: ignore[attr-defined]
        return path


class TokensFileTests(FolderMixin, SynchronousTestCase):
    """
    The C{upstream_credential_*} keys of a tokens-file entry.
    """

    def load(self, line: str, environ: dict[str, str] | None = None) -> TokenStore:
        path = self.folder() / "tokens.toml"
        path.write_text(tokens_text(line))
        return TokenStore.load(str(path), environ={} if environ is None else environ)

    def test_file_relative_to_the_tokens_file(self) -> None:
        """
        A relative C{upstream_credential_file} is read next to the tokens
        file; its trailing line end is dropped.
        """
        folder = self.folder()
        (folder / "sg.key").write_text(HELD_KEY + "\n")
        (folder / "tokens.toml").write_text(tokens_text('upstream_credential_file = "sg.key"'))
        store = TokenStore.load(str(folder / "tokens.toml"), environ={})
        policy = store.lookup(CLIENT_TOKEN)
        assert policy is not None
        self.assertEqual(store.upstream_credential(policy), HELD_KEY)
        self.assertEqual(
            policy.upstream_credential,
            CredentialSource("file", str(folder / "sg.key"), "tokens.web.upstream_credential_file"),
        )

    def test_environment_variable(self) -> None:
        store = self.load('upstream_credential_env = "SG_KEY"', {"SG_KEY": HELD_KEY})
        policy = store.lookup(CLIENT_TOKEN)
        assert policy is not None
        self.assertEqual(store.upstream_credential(policy), HELD_KEY)

    def test_systemd_credential(self) -> None:
        """
        C{upstream_credential = "systemd:NAME"} reads
        C{$CREDENTIALS_DIRECTORY/NAME} (systemd's C{LoadCredential=}).
        """
        credentials = self.folder()
        (credentials / "sendgrid").write_text(HELD_KEY)
        store = self.load(
            'upstream_credential = "systemd:sendgrid"',
            {"CREDENTIALS_DIRECTORY": str(credentials)},
        )
        policy = store.lookup(CLIENT_TOKEN)
        assert policy is not None
        self.assertEqual(store.upstream_credential(policy), HELD_KEY)

    def test_no_credential_means_none(self) -> None:
        store = self.load("")
        policy = store.lookup(CLIENT_TOKEN)
        assert policy is not None
        self.assertIsNone(store.upstream_credential(policy))

    def test_credential_in_clear_is_refused(self) -> None:
        """
        A credential pasted into the tokens file is refused, and the error
        does not repeat it.
        """
        with self.assertRaises(ConfigError) as caught:
            self.load(f'upstream_credential = "{HELD_KEY}"')
        text = str(caught.exception)
        self.assertIn('tokens.web.upstream_credential: expected "systemd:NAME"', text)
        self.assertNotIn(HELD_KEY, text)

    def test_two_sources_are_refused(self) -> None:
        with self.assertRaises(ConfigError) as caught:
            self.load('upstream_credential_env = "A"\nupstream_credential_file = "/x"')
        self.assertIn(
            "tokens.web: give only one of upstream_credential_file", str(caught.exception)
        )

    def test_unreadable_sources_name_the_key(self) -> None:
        """
        A missing variable, file or C{$CREDENTIALS_DIRECTORY} stops the
        load with the tokens file, the dotted key and the source.
        """
        cases = [
            ('upstream_credential_env = "MISSING"', {}, "environment variable MISSING: not set"),
            ('upstream_credential_file = "/nonexistent/k"', {}, "/nonexistent/k: no such file"),
            (
                'upstream_credential = "systemd:sg"',
                {},
                "systemd credential sg: $CREDENTIALS_DIRECTORY is not set",
            ),
            ('upstream_credential_env = "EMPTY"', {"EMPTY": " \n"}, "is empty"),
            ('upstream_credential_env = "CRLF"', {"CRLF": "a\r\nb"}, "control character"),
        ]
        for line, environ, expected in cases:
            with self.assertRaises(ConfigError) as caught:
                self.load(line, environ)
            self.assertIn("tokens.web.upstream_credential", str(caught.exception))
            self.assertIn(expected, str(caught.exception))

    def test_reload_reads_the_credential_again(self) -> None:
        """
        On reload the credential is read again; a reload whose credential
        cannot be read keeps the old tokens and credential.
        """
        folder = self.folder()
        (folder / "sg.key").write_text("first-key")
        path = folder / "tokens.toml"
        path.write_text(tokens_text('upstream_credential_file = "sg.key"'))
        store = TokenStore.load(str(path), environ={})
        (folder / "sg.key").write_text("second-key")
        store.reload()
        policy = store.lookup(CLIENT_TOKEN)
        assert policy is not None
        self.assertEqual(store.upstream_credential(policy), "second-key")
        (folder / "sg.key").unlink()
        self.assertRaises(ConfigError, store.reload)
        self.assertEqual(store.upstream_credential(policy), "second-key")

    def test_list_names_the_source_never_the_credential(self) -> None:
        """
        C{relayd.tokens list} shows where the credential comes from and
        does not need it readable.
        """
        folder = self.folder()
        path = folder / "tokens.toml"
        path.write_text(tokens_text('upstream_credential_env = "SG_KEY"'))
        import io

        out, err = io.StringIO(), io.StringIO()
        self.assertEqual(main(["list", "--file", str(path)], stdout=out, stderr=err), 0)
        self.assertIn("upstream_credential=env:SG_KEY", out.getvalue())

    def test_read_credential_never_echoes_the_value(self) -> None:
        source = CredentialSource("env", "K", "routes[0].upstreams[0].credential_env")
        with self.assertRaises(ConfigError) as caught:
            read_credential(source, {"K": "secret\x00value"})
        self.assertNotIn("secret", str(caught.exception))


class RealmTests(SynchronousTestCase):
    """
    The realm gives the avatar the credential to send upstream.
    """

    def avatar_credential(self, store: TokenStore) -> str:
        made: list[tuple[str, TokenPolicy]] = []

        def factory(credential: str, policy: TokenPolicy) -> object:
            made.append((credential, policy))
            return object()

        portal = make_portal(store, factory)
        d = portal.login(UsernamePassword(b"apikey", CLIENT_TOKEN.encode()), None, ISubmission)
        self.successResultOf(d)
        ((credential, policy),) = made
        self.assertEqual(policy.name, "web")
        return credential

    def test_held_credential_replaces_the_client_token(self) -> None:
        store = TokenStore(
            [
                (
                    digest(CLIENT_TOKEN),
                    TokenPolicy("web", upstream_credential=CredentialSource("env", "K", "k")),
                )
            ],
            environ={"K": HELD_KEY},
        )
        self.assertEqual(self.avatar_credential(store), HELD_KEY)

    def test_without_one_the_client_token_is_sent(self) -> None:
        store = TokenStore.from_tokens({"web": CLIENT_TOKEN})
        self.assertEqual(self.avatar_credential(store), CLIENT_TOKEN)


def start_daemon(
    folder: Path, upstream_url: str, tokens: str, environ: dict[str, str], extra: str = ""
) -> tuple[subprocess.Popen[bytes], int, Path]:
    """
    Run the real daemon (C{twist relayd}) with a STARTTLS listener on a free
    port, the given tokens file and extra configuration.

    @return: The process, the port and the log file.
    """
    ensure_self_signed(str(folder / "cert.pem"), str(folder / "key.pem"), "localhost")
    (folder / "tokens.toml").write_text(tokens)
    port = free_port()
    (folder / "relayd.toml").write_text(
        f"""
[server]
hostname = "relay.test"

[[listeners]]
endpoint = "tcp:port={port}:interface=127.0.0.1"

[tls]
certificate = "cert.pem"
key = "key.pem"

[auth]
tokens_file = "tokens.toml"

[upstream]
url = "{upstream_url}"
timeout = 5
{extra}
"""
    )
    log = folder / "relayd.log"
    env = dict(os.environ, PYTHONPATH=str(ROOT), **environ)
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "twisted", "--log-format=text", "relayd", "--config"]
            + [str(folder / "relayd.toml")],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=str(folder),
            env=env,
        )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return process, port, log
        except OSError:
            if process.poll() is not None:
                break
            time.sleep(0.05)
    process.kill()
    process.wait()
    raise RuntimeError("relayd did not start: " + log.read_text("utf-8", "replace"))


def stop_daemon(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def send(port: int, folder: Path, token: str, message: bytes = SIMPLE) -> None:
    """
    Send one message over STARTTLS, authenticated with C{token}.
    """
    context = ssl.create_default_context(cafile=str(folder / "cert.pem"))
    with smtplib.SMTP("127.0.0.1", port, local_hostname="client.test", timeout=10) as client:
        client.starttls(context=context)
        client.login("apikey", token)
        client.sendmail("a@example.com", ["b@example.net"], message)


class HeldCredentialEndToEndTests(FolderMixin, unittest.TestCase):
    """
    The real daemon and a recording upstream: the upstream sees relayd's
    key, never the client's password.
    """

    def test_upstream_sees_the_held_key_not_the_client_password(self) -> None:
        folder = self.folder()
        credentials = self.folder()
        (credentials / "sendgrid").write_text(HELD_KEY + "\n")
        upstream = Upstream()
        self.addCleanup(upstream.stop)
        process, port, log = start_daemon(
            folder,
            f"http://127.0.0.1:{upstream.port}/send",
            tokens_text('upstream_credential = "systemd:sendgrid"'),
            {"CREDENTIALS_DIRECTORY": str(credentials)},
        )
        self.addCleanup(stop_daemon, process)
        send(port, folder, CLIENT_TOKEN)
        (request,) = upstream.requests
        self.assertEqual(request["headers"]["Authorization"], f"Bearer {HELD_KEY}")
        everything = repr(request)
        self.assertNotIn(CLIENT_TOKEN, everything)
        stop_daemon(process)
        logged = log.read_text("utf-8", "replace")
        # The transaction event (relayd.events): the identity's name, the
        # reply and the upstream's id; never a credential.
        self.assertRegex(
            logged, r"transaction \S+ from \S+ on .* as web: 250 2\.0\.0 .*upstream 200 up-1"
        )
        self.assertNotIn(HELD_KEY, logged)
        self.assertNotIn(CLIENT_TOKEN, logged)

    def test_unreadable_credential_stops_the_daemon_with_the_key(self) -> None:
        """
        A credential that cannot be read at start-up stops the daemon with
        one line naming the tokens-file key.
        """
        folder = self.folder()
        with self.assertRaises(RuntimeError) as caught:
            start_daemon(
                folder,
                "http://127.0.0.1:9/send",
                tokens_text('upstream_credential_env = "RELAYD_TEST_UNSET_KEY"'),
                {},
            )
        self.assertIn(
            "tokens.web.upstream_credential_env: environment variable RELAYD_TEST_UNSET_KEY:"
            " not set",
            str(caught.exception),
        )
