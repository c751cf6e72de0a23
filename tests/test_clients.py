"""
The client settings of C{docs/clients.md}, tested with the real clients
that install here: swaks and msmtp (Debian), Python's smtplib, Django's
SMTP backend (PyPI, in the C{dev} extra), nodemailer (npm, installed into a
temporary folder by the test), PHPMailer (Debian C{php-cli} and
C{libphp-phpmailer}), Symfony Mailer, which Laravel sends with (Debian
C{php-symfony-mailer}), and Ruby's C{mail} gem, which Action Mailer sends
with (Debian C{ruby-mail}), each over STARTTLS (port 587 style) and
implicit TLS (port 465 style), and a private Postfix instance as a
smarthost client (Debian C{postfix}, over STARTTLS), against the real
daemon and a recording upstream.  A client that is not installed is
skipped, never faked.
"""

from __future__ import annotations

import json
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
from typing import Any, ClassVar

from relayd.tokens import digest
from tests.test_e2e import Upstream, free_port
from tests.test_held_credential import start_daemon, stop_daemon

TOKEN = "rly_clients-test-token-not-a-secret"


def message(subject: str) -> bytes:
    return (
        f"From: app@example.com\r\nTo: user@example.net\r\nSubject: {subject}\r\n\r\nHi\r\n"
    ).encode()


_node_modules: list[str | None] = []


def node_path() -> str | None:
    """
    Where C{nodemailer} is: a global install, else one the first call
    installs with C{npm install nodemailer} into a temporary folder (kept
    for the rest of the run); C{None} without node and npm, or when npm
    cannot install it.
    """
    if _node_modules:
        return _node_modules[0]
    found = None
    if shutil.which("node") is not None and shutil.which("npm") is not None:
        root = subprocess.run(["npm", "root", "-g"], capture_output=True, text=True).stdout.strip()
        if root and os.path.isdir(os.path.join(root, "nodemailer")):
            found = root
        else:
            prefix = tempfile.mkdtemp(prefix="relayd-nodemailer-")
            done = subprocess.run(
                ["npm", "install", "--silent", "--no-audit", "--no-fund", "--prefix", prefix]
                + ["nodemailer"],
                capture_output=True,
                timeout=300,
            )
            modules = os.path.join(prefix, "node_modules")
            if done.returncode == 0 and os.path.isdir(os.path.join(modules, "nodemailer")):
                found = modules
    _node_modules.append(found)
    return found


PHPMAILER = "/usr/share/php/libphp-phpmailer/autoload.php"
SYMFONY_MAILER = "/usr/share/php/Symfony/Component/Mailer/autoload.php"


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

    def relayed_fields(self, subject: str) -> None:
        """
        The one upstream request with C{subject} carried the token, the
        From, the To and the text the client sent.
        """
        document = self.relayed(subject)["json"]
        self.assertIn("app@example.com", document["from"])
        self.assertEqual([a for a in document["to"] if "user@example.net" in a], document["to"])
        self.assertEqual(len(document["to"]), 1)
        self.assertEqual(document["text"].strip(), "Hi")

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
        self.relayed_fields(subject)

    def test_django_starttls(self) -> None:
        self.django(False, self.starttls, "django 587")

    def test_django_implicit_tls(self) -> None:
        self.django(True, self.implicit, "django 465")

    def nodemailer(self, secure: bool, port: int, subject: str) -> None:
        root = node_path()
        if root is None:
            self.skipTest("node/npm are not installed, or npm could not install nodemailer")
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
}}).then(
  (info) => {{ console.log(info.response); process.exit(0); }},
  (e) => {{ console.error(e); process.exit(1); }},
);
"""
        done = self.run_client(["node", "-e", script], env=dict(os.environ, NODE_PATH=root))
        self.assertIn("250", done.stdout)
        self.relayed_fields(subject)

    def test_nodemailer_starttls(self) -> None:
        self.nodemailer(False, self.starttls, "nodemailer 587")

    def test_nodemailer_implicit_tls(self) -> None:
        self.nodemailer(True, self.implicit, "nodemailer 465")

    def phpmailer(self, smtps: bool, port: int, subject: str) -> None:
        if shutil.which("php") is None or not os.path.exists(PHPMAILER):
            self.skipTest("PHPMailer is not installed (apt-get install php-cli libphp-phpmailer)")
        encryption = "ENCRYPTION_SMTPS" if smtps else "ENCRYPTION_STARTTLS"
        script = f"""<?php
require {json.dumps(PHPMAILER)};
use PHPMailer\\PHPMailer\\PHPMailer;
$mail = new PHPMailer(true);
$mail->isSMTP();
$mail->Host = 'localhost';
$mail->Port = {port};
$mail->SMTPAuth = true;
$mail->AuthType = 'PLAIN';
$mail->Username = 'apikey';
$mail->Password = getenv('RELAYD_TOKEN');
$mail->SMTPSecure = PHPMailer::{encryption};
$mail->Timeout = 10;
// The test's self-signed CA (production: a public certificate, no change).
$mail->SMTPOptions = ['ssl' => ['cafile' => {json.dumps(self.cert)}, 'verify_peer' => true]];
$mail->setFrom('app@example.com');
$mail->addAddress('user@example.net');
$mail->Subject = {json.dumps(subject)};
$mail->Body = 'Hi';
$mail->send();
echo "sent\n";
"""
        path = self.folder / f"phpmailer-{port}.php"
        path.write_text(script)
        done = self.run_client(["php", str(path)], env=dict(os.environ, RELAYD_TOKEN=TOKEN))
        self.assertEqual(done.stdout, "sent\n")
        self.relayed_fields(subject)

    def test_phpmailer_starttls(self) -> None:
        self.phpmailer(False, self.starttls, "phpmailer 587")

    def test_phpmailer_implicit_tls(self) -> None:
        self.phpmailer(True, self.implicit, "phpmailer 465")

    def laravel(self, scheme: str, port: int, subject: str) -> None:
        """
        Symfony Mailer as Laravel's C{smtp} mailer drives it: Laravel turns
        C{MAIL_SCHEME}, C{MAIL_HOST}, C{MAIL_PORT}, C{MAIL_USERNAME} and
        C{MAIL_PASSWORD} into a C{Dsn} for C{EsmtpTransportFactory}
        (C{Illuminate\\Mail\\MailManager::createSmtpTransport}); scheme
        C{smtp} upgrades with STARTTLS when offered, C{smtps} is implicit TLS.
        """
        if shutil.which("php") is None or not os.path.exists(SYMFONY_MAILER):
            self.skipTest("Symfony Mailer is not installed (apt-get install php-symfony-mailer)")
        script = f"""<?php
require {json.dumps(SYMFONY_MAILER)};
use Symfony\\Component\\Mailer\\Mailer;
use Symfony\\Component\\Mailer\\Transport\\Dsn;
use Symfony\\Component\\Mailer\\Transport\\Smtp\\EsmtpTransportFactory;
use Symfony\\Component\\Mime\\Email;
// MAIL_SCHEME, MAIL_HOST, MAIL_USERNAME, MAIL_PASSWORD, MAIL_PORT.
$dsn = new Dsn({json.dumps(scheme)}, 'localhost', 'apikey', getenv('RELAYD_TOKEN'), {port});
$transport = (new EsmtpTransportFactory())->create($dsn);
// The test's self-signed CA (production: a public certificate, no change).
$transport->getStream()->setStreamOptions(
    ['ssl' => ['cafile' => {json.dumps(self.cert)}, 'verify_peer' => true]]);
$email = (new Email())->from('app@example.com')->to('user@example.net')
    ->subject({json.dumps(subject)})->text('Hi');
$sent = $transport->send($email);
echo "sent\\n";
"""
        path = self.folder / f"laravel-{port}.php"
        path.write_text(script)
        done = self.run_client(["php", str(path)], env=dict(os.environ, RELAYD_TOKEN=TOKEN))
        self.assertEqual(done.stdout, "sent\n")
        self.relayed_fields(subject)

    def test_laravel_starttls(self) -> None:
        self.laravel("smtp", self.starttls, "laravel 587")

    def test_laravel_implicit_tls(self) -> None:
        self.laravel("smtps", self.implicit, "laravel 465")

    def ruby_mail(self, tls: bool, port: int, subject: str) -> None:
        """
        Ruby's C{mail} gem with Action Mailer's C{smtp_settings} keys
        (Action Mailer hands them to this gem unchanged).
        """
        if shutil.which("ruby") is None:
            self.skipTest("Ruby is not installed (apt-get install ruby-mail)")
        check = subprocess.run(["ruby", "-e", 'require "mail"'], capture_output=True)
        if check.returncode:
            self.skipTest("the Ruby mail gem is not installed (apt-get install ruby-mail)")
        mode = "tls: true" if tls else "enable_starttls: true"
        script = f"""
require "mail"
Mail.defaults do
  delivery_method :smtp, address: "localhost", port: {port},
    user_name: "apikey", password: ENV.fetch("RELAYD_TOKEN"), authentication: :plain,
    {mode}, open_timeout: 10, read_timeout: 60,
    # The test's self-signed CA (production: a public certificate, no change).
    openssl_verify_mode: "peer", ca_file: {json.dumps(self.cert)},
    return_response: true
end
mail = Mail.new do
  from "app@example.com"
  to "user@example.net"
  subject {json.dumps(subject)}
  body "Hi"
end
response = mail.deliver!
puts response.status
"""
        done = self.run_client(["ruby", "-e", script], env=dict(os.environ, RELAYD_TOKEN=TOKEN))
        self.assertEqual(done.stdout.strip(), "250")
        self.relayed_fields(subject)

    def test_ruby_mail_starttls(self) -> None:
        self.ruby_mail(False, self.starttls, "ruby mail 587")

    def test_ruby_mail_implicit_tls(self) -> None:
        self.ruby_mail(True, self.implicit, "ruby mail 465")

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


POSTFIX_MASTER = "/etc/postfix/master.cf"


class PostfixTests(unittest.TestCase):
    """
    Postfix as a smarthost client (docs/clients.md): a private Postfix
    instance, with its own configuration and queue directories in a
    temporary folder, relays a message it takes over SMTP to relayd with
    C{relayhost}, SASL (C{apikey} and the token) and TLS
    (C{smtp_tls_security_level = encrypt}).
    """

    folder: ClassVar[Path]
    upstream: ClassVar[Upstream]
    process: ClassVar[subprocess.Popen[bytes]]
    starttls: ClassVar[int]
    config: ClassVar[Path]
    smtpd: ClassVar[int]

    @classmethod
    def setUpClass(cls) -> None:
        if shutil.which("postfix") is None or shutil.which("postconf") is None:
            raise unittest.SkipTest("Postfix is not installed (apt-get install postfix)")
        if not os.path.exists(POSTFIX_MASTER):
            raise unittest.SkipTest(f"Postfix's {POSTFIX_MASTER} is missing")
        if os.geteuid() != 0:
            raise unittest.SkipTest(
                "a private Postfix instance needs root (its master runs as root)"
            )
        cls.folder = Path(tempfile.mkdtemp(prefix="relayd-postfix-"))
        # The Postfix daemons run as the postfix user and must reach their queue.
        cls.folder.chmod(0o755)
        cls.upstream = Upstream()
        tokens = f'[tokens.app]\nsha256 = "{digest(TOKEN).hex()}"\n'
        try:
            cls.process, cls.starttls, _ = start_daemon(
                cls.folder, f"http://127.0.0.1:{cls.upstream.port}/send", tokens, {}
            )
        except BaseException:
            cls.upstream.stop()
            shutil.rmtree(cls.folder, ignore_errors=True)
            raise
        cls.config = cls.folder / "postfix"
        cls.smtpd = free_port()
        try:
            cls.start_postfix()
        except BaseException:
            cls.tearDownClass()
            raise

    @classmethod
    def postconf(cls, *argv: str) -> None:
        subprocess.run(
            ["postconf", "-c", str(cls.config), *argv], check=True, capture_output=True, timeout=30
        )

    @classmethod
    def start_postfix(cls) -> None:
        """
        Write the instance's main.cf (the settings of docs/clients.md) and
        master.cf (Debian's, without chroot, its smtpd on a free port and
        the postlog service for C{maillog_file}), then start it.
        """
        cls.config.mkdir()
        (cls.folder / "queue").mkdir(mode=0o755)
        (cls.config / "main.cf").write_text("")
        shutil.copy(POSTFIX_MASTER, cls.config / "master.cf")
        cls.postconf(
            "-e",
            "compatibility_level = 3.6",
            f"queue_directory = {cls.folder / 'queue'}",
            f"data_directory = {cls.folder / 'data'}",
            "mail_owner = postfix",
            "setgid_group = postdrop",
            "myhostname = postfix.test",
            "mydestination =",
            "alias_maps =",
            "alias_database =",
            "local_recipient_maps =",
            "inet_interfaces = 127.0.0.1",
            "inet_protocols = ipv4",
            "mynetworks = 127.0.0.0/8",
            "smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination",
            f"relayhost = [127.0.0.1]:{cls.starttls}",
            "smtp_sasl_auth_enable = yes",
            f"smtp_sasl_password_maps = static:apikey:{TOKEN}",
            "smtp_sasl_security_options = noanonymous",
            "smtp_sasl_tls_security_options = noanonymous",
            "smtp_sasl_mechanism_filter = plain, login",
            "smtp_tls_security_level = encrypt",
            "smtp_tls_loglevel = 1",
            f"smtp_tls_CAfile = {cls.folder / 'cert.pem'}",
            f"maillog_file = {cls.folder / 'maillog'}",
            f"maillog_file_prefixes = {cls.folder}",
        )
        cls.postconf("-F", "*/*/chroot = n")
        cls.postconf("-MX", "smtp/inet")
        cls.postconf("-M", f"{cls.smtpd}/inet = {cls.smtpd} inet n - n - - smtpd")
        for command in ("check", "start"):
            done = subprocess.run(
                ["postfix", "-c", str(cls.config), command],
                capture_output=True,
                text=True,
                timeout=60,
            )
            if done.returncode != 0:
                raise RuntimeError(f"postfix {command} failed: {done.stderr}{cls.maillog()}")
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", cls.smtpd), 0.2).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("Postfix's smtpd did not start: " + cls.maillog()) from None
                time.sleep(0.1)

    @classmethod
    def maillog(cls) -> str:
        path = cls.folder / "maillog"
        return path.read_text("utf-8", "replace") if path.exists() else ""

    @classmethod
    def tearDownClass(cls) -> None:
        if (cls.config / "main.cf").exists():
            pidfile = cls.folder / "queue" / "pid" / "master.pid"
            master = int(pidfile.read_text().strip() or 0) if pidfile.exists() else 0
            subprocess.run(
                ["postfix", "-c", str(cls.config), "stop"], capture_output=True, timeout=60
            )
            # The master process stops its children before it exits.
            deadline = time.monotonic() + 20
            while master and time.monotonic() < deadline:
                try:
                    os.kill(master, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.1)
        stop_daemon(cls.process)
        cls.upstream.stop()
        shutil.rmtree(cls.folder, ignore_errors=True)

    def test_relayhost_sasl_tls(self) -> None:
        """
        A message Postfix takes is relayed through relayd to the upstream,
        with the token, From, To and Subject, and Postfix logs
        C{status=sent} with relayd's 250 reply, after a TLS handshake.
        """
        subject = "postfix relayhost 587"
        with smtplib.SMTP("127.0.0.1", self.smtpd, timeout=30) as client:
            client.sendmail("app@example.com", ["user@example.net"], message(subject))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if "status=sent" in self.maillog() and any(
                r["json"]["subject"] == subject for r in self.upstream.requests
            ):
                break
            time.sleep(0.2)
        log = self.maillog()
        sent = [line for line in log.splitlines() if "status=sent" in line]
        self.assertEqual(len(sent), 1, log)
        self.assertIn("to=<user@example.net>", sent[0])
        self.assertIn(f"relay=127.0.0.1[127.0.0.1]:{self.starttls}", sent[0])
        self.assertIn("(250 ", sent[0])
        self.assertIn(f"TLS connection established to 127.0.0.1[127.0.0.1]:{self.starttls}", log)
        self.assertNotIn(TOKEN, log)
        document = self.relayed_document(subject)
        self.assertIn("app@example.com", document["from"])
        self.assertEqual([a for a in document["to"] if "user@example.net" in a], document["to"])
        self.assertEqual(len(document["to"]), 1)
        self.assertEqual(document["text"].strip(), "Hi")

    def relayed_document(self, subject: str) -> dict[str, Any]:
        found = [r for r in self.upstream.requests if r["json"]["subject"] == subject]
        self.assertEqual(len(found), 1, [r["json"]["subject"] for r in self.upstream.requests])
        self.assertEqual(found[0]["headers"]["Authorization"], f"Bearer {TOKEN}")
        document: dict[str, Any] = found[0]["json"]
        return document
