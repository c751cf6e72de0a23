"""
The client settings of C{docs/clients.md}, tested with the real clients
that install here: swaks and msmtp (Debian), Python's smtplib, Django's
SMTP backend (when Django is installed) and nodemailer (when
C{npm install -g nodemailer} was run), each over STARTTLS (port 587
style) and implicit TLS (port 465 style), against the real daemon and a
recording upstream.  A client that is not installed is skipped, never
faked.
"""

from __future__ import annotations

import json
import os
import shutil
import smtplib
import ssl
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path
from typing import Any, ClassVar

from relayd.tokens import digest
from tests.test_e2e import Upstream, free_port
from tests.test_held_credential import start_daemon, stop_daemon

TOKEN = "rly_clients-test-token-not-a-secret"


def message(subject: str) -> bytes:
    return (
        f"From: app@example.com\r\nTo: user@example.net\r\nSubject: {subject}\r\n\r\nHi\r\n"
    ).encode()


def node_path() -> str | None:
    """
    Where a global C{nodemailer} is, or C{None}.
    """
    if shutil.which("node") is None or shutil.which("npm") is None:
        return None
    root = subprocess.run(["npm", "root", "-g"], capture_output=True, text=True).stdout.strip()
    return root if root and os.path.isdir(os.path.join(root, "nodemailer")) else None


class ClientTests(unittest.TestCase):
    """
    Each documented client setting relays one message.
    """

    folder: ClassVar[Path]
    upstream: ClassVar[Upstream]
    process: ClassVar[subprocess.Popen[bytes]]
    starttls: ClassVar[int]
    implicit: ClassVar[int]

    @classmethod
    def setUpClass(cls) -> None:
        cls.folder = Path(tempfile.mkdtemp(prefix="relayd-clients-"))
        cls.upstream = Upstream()
        cls.implicit = free_port()
        tokens = f'[tokens.app]\nsha256 = "{digest(TOKEN).hex()}"\n'
        extra = (
            f'[[listeners]]\nendpoint = "tcp:port={cls.implicit}:interface=127.0.0.1"\n'
            'tls = "implicit"\n'
        )
        cls.process, cls.starttls, _ = start_daemon(
            cls.folder, f"http://127.0.0.1:{cls.upstream.port}/send", tokens, {}, extra
        )

    @classmethod
    def tearDownClass(cls) -> None:
        stop_daemon(cls.process)
        cls.upstream.stop()
        shutil.rmtree(cls.folder, ignore_errors=True)

    @property
    def cert(self) -> str:
        return str(self.folder / "cert.pem")

    def relayed(self, subject: str) -> dict[str, Any]:
        """
        The one upstream request with C{subject}: it carried the token.
        """
        found = [r for r in self.upstream.requests if r["json"]["subject"] == subject]
        self.assertEqual(len(found), 1, [r["json"]["subject"] for r in self.upstream.requests])
        self.assertEqual(found[0]["headers"]["Authorization"], f"Bearer {TOKEN}")
        return found[0]

    def run_client(self, argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60, **kwargs)
        self.assertEqual(done.returncode, 0, done.stdout + done.stderr)
        return done

    def test_smtplib_starttls_and_implicit(self) -> None:
        context = ssl.create_default_context(cafile=self.cert)
        with smtplib.SMTP("localhost", self.starttls, timeout=10) as client:
            client.starttls(context=context)
            client.login("apikey", TOKEN)
            client.sendmail("app@example.com", ["user@example.net"], message("smtplib 587"))
        with smtplib.SMTP_SSL("localhost", self.implicit, context=context, timeout=10) as client:
            client.login("apikey", TOKEN)
            client.sendmail("app@example.com", ["user@example.net"], message("smtplib 465"))
        self.relayed("smtplib 587")
        self.relayed("smtplib 465")

    def swaks(self, tls: str, port: int, subject: str) -> None:
        if shutil.which("swaks") is None:
            self.skipTest("swaks is not installed (apt-get install swaks)")
        self.run_client(
            ["swaks", "--server", "127.0.0.1", "--port", str(port), tls]
            + ["--auth", "PLAIN", "--auth-user", "apikey", "--auth-password", TOKEN]
            + ["--from", "app@example.com", "--to", "user@example.net"]
            + ["--header", f"Subject: {subject}", "--body", "Hi"]
        )
        self.relayed(subject)

    def test_swaks_starttls(self) -> None:
        self.swaks("--tls", self.starttls, "swaks 587")

    def test_swaks_implicit_tls(self) -> None:
        self.swaks("--tls-on-connect", self.implicit, "swaks 465")

    def msmtp(self, starttls: bool, port: int, subject: str) -> None:
        if shutil.which("msmtp") is None:
            self.skipTest("msmtp is not installed (apt-get install msmtp)")
        config = self.folder / f"msmtprc-{port}"
        config.write_text(
            "defaults\n"
            "auth plain\n"
            "tls on\n"
            f"tls_starttls {'on' if starttls else 'off'}\n"
            f"tls_trust_file {self.cert}\n"
            "account relayd\n"
            "host localhost\n"
            f"port {port}\n"
            "from app@example.com\n"
            "user apikey\n"
            f"password {TOKEN}\n"
            "account default : relayd\n"
        )
        config.chmod(0o600)
        self.run_client(
            ["msmtp", "-C", str(config), "user@example.net"], input=message(subject).decode()
        )
        self.relayed(subject)

    def test_msmtp_starttls(self) -> None:
        self.msmtp(True, self.starttls, "msmtp 587")

    def test_msmtp_implicit_tls(self) -> None:
        self.msmtp(False, self.implicit, "msmtp 465")

    def django(self, use_ssl: bool, port: int, subject: str) -> None:
        script = f"""
import ssl, django
from django.conf import settings
settings.configure(
    EMAIL_BACKEND="django.core.mail.backends.smtp.EmailBackend",
    EMAIL_HOST="localhost", EMAIL_PORT={port},
    EMAIL_USE_TLS={not use_ssl}, EMAIL_USE_SSL={use_ssl},
    EMAIL_HOST_USER="apikey", EMAIL_HOST_PASSWORD={TOKEN!r}, EMAIL_TIMEOUT=10,
)
django.setup()
from django.core.mail import send_mail
from django.core.mail.backends.smtp import EmailBackend
# The test's self-signed CA (production: a public certificate, no change).
EmailBackend.ssl_context = ssl.create_default_context(cafile={self.cert!r})
send_mail({subject!r}, "Hi", "app@example.com", ["user@example.net"])
"""
        check = subprocess.run([sys.executable, "-c", "import django"], capture_output=True)
        if check.returncode:
            self.skipTest("Django is not installed (pip install django)")
        self.run_client([sys.executable, "-c", script])
        self.relayed(subject)

    def test_django_starttls(self) -> None:
        self.django(False, self.starttls, "django 587")

    def test_django_implicit_tls(self) -> None:
        self.django(True, self.implicit, "django 465")

    def nodemailer(self, secure: bool, port: int, subject: str) -> None:
        root = node_path()
        if root is None:
            self.skipTest("nodemailer is not installed (npm install -g nodemailer)")
        script = f"""
const fs = require("fs");
const nodemailer = require("nodemailer");
const transport = nodemailer.createTransport({{
  host: "localhost", port: {port}, secure: {json.dumps(secure)}, requireTLS: true,
  auth: {{ user: "apikey", pass: {json.dumps(TOKEN)} }},
  tls: {{ ca: fs.readFileSync({json.dumps(self.cert)}) }},
}});
transport.sendMail({{
  from: "app@example.com", to: "user@example.net", subject: {json.dumps(subject)}, text: "Hi",
}}).then(() => process.exit(0), (e) => {{ console.error(e); process.exit(1); }});
"""
        self.run_client(["node", "-e", script], env=dict(os.environ, NODE_PATH=root))
        self.relayed(subject)

    def test_nodemailer_starttls(self) -> None:
        self.nodemailer(False, self.starttls, "nodemailer 587")

    def test_nodemailer_implicit_tls(self) -> None:
        self.nodemailer(True, self.implicit, "nodemailer 465")

    def test_wrong_token_is_535(self) -> None:
        """
        What a client with a wrong password shows (docs/troubleshooting.md).
        """
        context = ssl.create_default_context(cafile=self.cert)
        with smtplib.SMTP("localhost", self.starttls, timeout=10) as client:
            client.starttls(context=context)
            with self.assertRaises(smtplib.SMTPAuthenticationError) as caught:
                client.login("apikey", "wrong")
        self.assertEqual(caught.exception.smtp_code, 535)
        self.assertEqual(caught.exception.smtp_error, b"5.7.8 Authentication credentials invalid")


class TroubleshootingTests(unittest.TestCase):
    """
    C{docs/troubleshooting.md} covers every reply named in L{relayd.reply}.
    """

    def test_every_named_reply_is_documented(self) -> None:
        import inspect

        from relayd import reply

        doc = (Path(__file__).resolve().parents[1] / "docs" / "troubleshooting.md").read_text()
        missing = []
        for name, value in vars(reply).items():
            if isinstance(value, reply.Reply):
                if f"[{name}]" not in doc or f"{value.code}" not in doc:
                    missing.append(name)
            elif name.startswith("FALLBACK_") and f"[{name}]" not in doc:
                missing.append(name)
            elif inspect.isfunction(value) and value.__module__ == reply.__name__:
                if f"({name})" not in doc:
                    missing.append(name)
        self.assertEqual(missing, [])
