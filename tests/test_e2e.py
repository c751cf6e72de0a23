"""
End-to-end tests: the real daemon (C{twist relayd --config}) on free
127.0.0.1 ports, real SMTP clients (smtplib, swaks, curl) over STARTTLS and
implicit TLS, and a real HTTP upstream that records what it receives.
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
import threading
import time
import unittest
import uuid
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar, cast

from relayd.tokens import digest
from tests.daemon import ROOT as ROOT  # re-exported: other e2e tests import it from here
from tests.daemon import RelaydProcess, config
from tests.daemon import free_port as free_port
from tests.message.test_corpus import CORPUS_TABLE, ENMIME, Rejected

TOKEN = "e2e-token-not-a-secret"
OTHER_TOKEN = "e2e-second-token-not-a-secret"
SIMPLE = b"From: a@example.com\r\nTo: b@example.net\r\nSubject: x\r\n\r\nbody\r\n"


def distinct() -> bytes:
    """
    L{SIMPLE} with a C{Message-ID} of its own: the same bytes in the same
    envelope are one message to relayd (its idempotency key: a retry), so
    a test that means several messages sends distinct ones.
    """
    mid = f"Message-ID: <{uuid.uuid4().hex}@e2e.test>\r\n".encode()
    return SIMPLE.replace(b"\r\n\r\n", b"\r\n" + mid + b"\r\n", 1)


class Upstream:
    """
    A real HTTP upstream on 127.0.0.1 (stdlib, in a thread): records each
    request and answers from a queue (default: 200 with an id).
    """

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.answers: list[tuple[int, dict[str, Any]]] = []
        self.lock = threading.Lock()
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                with upstream.lock:
                    upstream.requests.append(
                        {
                            "path": self.path,
                            "headers": dict(self.headers.items()),
                            "json": json.loads(body),
                        }
                    )
                    n = len(upstream.requests)
                    status, answer = (
                        upstream.answers.pop(0) if upstream.answers else (200, {"id": f"up-{n}"})
                    )
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Daemon(RelaydProcess):
    """
    The real relayd, run with C{twist} on a temporary configuration.
    """

    def __init__(self, upstream_url: str, extra: str = "", workers: int = 1) -> None:
        super().__init__("relayd-e2e-")
        self.write(
            "tokens.toml",
            f'[tokens.e2e]\nsha256 = "{digest(TOKEN).hex()}"\n'
            f'[tokens.limited]\nsha256 = "{digest(OTHER_TOKEN).hex()}"\n'
            'senders = ["allowed.example"]\n',
        )
        self.starttls_port = free_port()
        self.implicit_port = free_port()
        listeners = [(self.starttls_port, "starttls"), (self.implicit_port, "implicit")]
        self.start(
            config(upstream_url, listeners, 5, f"workers = {workers}", extra),
            [self.implicit_port, self.starttls_port],
            wait=20,
        )

    def tls_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=self.cert)

    def starttls(self) -> smtplib.SMTP:
        client = smtplib.SMTP(
            "127.0.0.1", self.starttls_port, local_hostname="client.test", timeout=10
        )
        client.starttls(context=self.tls_context())
        return client

    def implicit(self) -> smtplib.SMTP_SSL:
        context = self.tls_context()
        context.check_hostname = False  # connecting by IP; the CA pins it
        return smtplib.SMTP_SSL(
            "127.0.0.1",
            self.implicit_port,
            local_hostname="client.test",
            context=context,
            timeout=10,
        )


def rss(pid: int) -> int:
    """
    The resident set size of process C{pid}, in bytes.
    """
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def three_recipient_message() -> EmailMessage:
    m = EmailMessage()
    m["From"] = "Alice Sender <alice@example.com>"
    m["To"] = "Bob <bob@example.net>"
    m["Cc"] = "carol@example.org"
    m["Subject"] = "Quarterly report"
    m["X-Tags"] = "reports, q3"
    m.set_content("Hello Bob,\nsee attached.\n")
    m.add_alternative("<p>Hello Bob,</p>", subtype="html")
    m.add_attachment(b"%PDF-1.4 fake", maintype="application", subtype="pdf", filename="report.pdf")
    return m


class EndToEndTests(unittest.TestCase):
    upstream: ClassVar[Upstream]
    daemon: ClassVar[Daemon]

    @classmethod
    def setUpClass(cls) -> None:
        cls.upstream = Upstream()
        cls.daemon = Daemon(f"http://127.0.0.1:{cls.upstream.port}/v1/send")

    @classmethod
    def tearDownClass(cls) -> None:
        log = cls.daemon.logtext()
        cls.daemon.stop()
        cls.upstream.stop()
        assert "Traceback" not in log, log
        assert TOKEN not in log and OTHER_TOKEN not in log, "token in the log"

    def setUp(self) -> None:
        with self.upstream.lock:
            self.upstream.requests.clear()
            self.upstream.answers.clear()

    def test_starttls_three_recipients_make_one_upstream_request(self) -> None:
        """
        A message to one To, one Cc and one Bcc recipient over STARTTLS
        becomes exactly one upstream request carrying all three; the reply
        carries the upstream's id.
        """
        with self.daemon.starttls() as client:
            client.login("apikey", TOKEN)
            client.ehlo()
            code, reply = client.mail("alice@example.com")
            self.assertEqual((code, reply), (250, b"2.1.0 Ok"))
            for rcpt in ("bob@example.net", "carol@example.org", "dave@example.com"):
                self.assertEqual(client.rcpt(rcpt)[0], 250)
            code, reply = client.data(three_recipient_message().as_bytes())
        self.assertEqual((code, reply), (250, b"2.0.0 Ok: queued as up-1"))
        (request,) = self.upstream.requests
        self.assertEqual(request["path"], "/v1/send")
        self.assertEqual(request["headers"]["Authorization"], f"Bearer {TOKEN}")
        body = request["json"]
        self.assertEqual(body["from"], "Alice Sender <alice@example.com>")
        self.assertEqual(body["to"], ["Bob <bob@example.net>"])
        self.assertEqual(body["cc"], ["carol@example.org"])
        self.assertEqual(body["bcc"], ["dave@example.com"])
        self.assertEqual(body["subject"], "Quarterly report")
        self.assertEqual(body["text"], "Hello Bob,\nsee attached.\n")
        self.assertEqual(body["html"], "<p>Hello Bob,</p>\n")
        self.assertEqual(body["tags"], ["reports", "q3"])
        self.assertEqual(
            body["envelope"],
            {
                "mail_from": "alice@example.com",
                "rcpt_to": ["bob@example.net", "carol@example.org", "dave@example.com"],
            },
        )
        (attachment,) = body["attachments"]
        self.assertEqual(attachment["filename"], "report.pdf")
        self.assertEqual(attachment["content_type"], "application/pdf")
        header_names = [name.lower() for name, _ in body["headers"]]
        for stripped in ("bcc", "x-tags", "message-id", "received"):
            self.assertNotIn(stripped, header_names)

    def test_implicit_tls_with_each_username_form(self) -> None:
        """
        On the implicit-TLS listener the token works as password with the
        username C{apikey}, the token itself, or a blank username.
        """
        for user in ("apikey", TOKEN, ""):
            with self.daemon.implicit() as client:
                client.ehlo()
                if user:
                    client.login(user, TOKEN)
                else:
                    code, _ = client.docmd(
                        "AUTH",
                        "PLAIN " + __import__("base64").b64encode(f"\0\0{TOKEN}".encode()).decode(),
                    )
                    self.assertEqual(code, 235)
                refused = client.sendmail("a@example.com", ["b@example.net"], distinct())
                self.assertEqual(refused, {})
        self.assertEqual(len(self.upstream.requests), 3)

    def test_wrong_token_and_no_auth(self) -> None:
        with self.daemon.implicit() as client:
            client.ehlo()
            with self.assertRaises(smtplib.SMTPAuthenticationError) as e:
                client.login("apikey", "wrong-token")
            self.assertEqual(e.exception.smtp_code, 535)
            self.assertEqual(e.exception.smtp_error, b"5.7.8 Authentication credentials invalid")
            code, reply = client.mail("a@example.com")
            self.assertEqual((code, reply), (530, b"5.7.0 Authentication required"))

    def test_auth_before_starttls_is_refused(self) -> None:
        with smtplib.SMTP("127.0.0.1", self.daemon.starttls_port, timeout=10) as client:
            client.ehlo()
            self.assertFalse(client.has_extn("auth"))
            self.assertTrue(client.has_extn("starttls"))
            code, reply = client.docmd("AUTH", "PLAIN AGFwaWtleQB4")
            self.assertEqual(code, 538)
            self.assertEqual(
                reply, b"5.7.11 Encryption required for requested authentication mechanism"
            )

    def test_upstream_answers_become_smtp_replies(self) -> None:
        """
        Each upstream status gives the documented SMTP reply; never 250 for
        a message the upstream did not take.
        """
        cases = [
            (422, {"error": "Invalid recipient: nobody"}, 550, b"5.6.0 Invalid recipient: nobody"),
            (400, {"error": "Bad request"}, 550, b"5.6.0 Bad request"),
            (401, {"error": "bad token"}, 554, None),
            (413, {}, 552, b"5.3.4 Message too big"),
            (429, {}, 451, None),
            (500, {}, 451, b"4.3.0 Temporary failure, try again later"),
            (503, {}, 451, b"4.3.0 Temporary failure, try again later"),
        ]
        for status, answer, code, text in cases:
            self.upstream.answers.append((status, answer))
            with self.daemon.implicit() as client:
                client.login("apikey", TOKEN)
                with self.assertRaises(smtplib.SMTPDataError) as e:
                    client.sendmail("a@example.com", ["b@example.net"], distinct())
                self.assertEqual(e.exception.smtp_code, code, status)
                if text is not None:
                    self.assertEqual(e.exception.smtp_error, text)
                else:
                    self.assertRegex(
                        cast(bytes, e.exception.smtp_error).decode(), r"^[45]\.\d\.\d "
                    )
        self.assertEqual(len(self.upstream.requests), len(cases))

    def test_sender_policy_of_the_token(self) -> None:
        with self.daemon.implicit() as client:
            client.login("apikey", OTHER_TOKEN)
            self.assertEqual(client.mail("a@example.com"), (550, b"5.7.1 Sender not allowed"))
            self.assertEqual(client.mail("a@allowed.example")[0], 250)
            client.rcpt("b@example.net")
            code, reply = client.data(b"From: other@example.com\r\nSubject: x\r\n\r\nbody\r\n")
            self.assertEqual((code, reply), (550, b"5.7.1 Sender not allowed"))
        self.assertEqual(self.upstream.requests, [])

    def test_eight_bit_body_without_body_parameter(self) -> None:
        """
        An 8-bit UTF-8 body sent without BODY=8BITMIME reaches the upstream
        intact.
        """
        data = "From: a@example.com\r\nSubject: Grüße\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nGrüße aus Köln\r\n"
        with self.daemon.implicit() as client:
            client.login("apikey", TOKEN)
            client.sendmail("a@example.com", ["b@example.net"], data.encode("utf-8"))
        body = self.upstream.requests[0]["json"]
        self.assertEqual(body["text"], "Grüße aus Köln\n")
        self.assertEqual(body["subject"], "Grüße")

    def test_smtputf8_addresses(self) -> None:
        data = "From: Jörg <jörg@bücher.example>\r\nTo: 用户@例子.广告\r\nSubject: ok\r\n\r\nhi\r\n"
        with self.daemon.implicit() as client:
            client.login("apikey", TOKEN)
            client.sendmail(
                "jörg@bücher.example",
                ["用户@例子.广告"],
                data.encode("utf-8"),
                mail_options=["SMTPUTF8"],
            )
        body = self.upstream.requests[0]["json"]
        self.assertEqual(body["envelope"]["rcpt_to"], ["用户@例子.广告"])
        self.assertEqual(body["from"], "Jörg <jörg@bücher.example>")

    def test_message_over_size_and_101_recipients(self) -> None:
        with self.daemon.implicit() as client:
            client.login("apikey", TOKEN)
            self.assertEqual(
                client.mail("a@example.com", ["SIZE=999999999"]),
                (552, b"5.3.4 Message size exceeds fixed maximum message size"),
            )
            client.mail("a@example.com")
            codes = [client.rcpt(f"r{i}@example.net")[0] for i in range(101)]
            self.assertEqual(codes, [250] * 100 + [452])
            self.assertEqual(client.data(SIMPLE)[0], 250)
        self.assertEqual(len(self.upstream.requests[0]["json"]["envelope"]["rcpt_to"]), 100)

    def test_starttls_with_pipelined_trailing_commands(self) -> None:
        """
        Commands a client sends in the clear after STARTTLS, in the same
        packet, are discarded: after the handshake the server has not
        answered them (CVE-2011-0411).
        """
        raw = socket.create_connection(("127.0.0.1", self.daemon.starttls_port), 10)
        f = raw.makefile("rb")
        self.assertTrue(f.readline().startswith(b"220 "))
        raw.sendall(b"EHLO c\r\n")
        while not f.readline().startswith(b"250 "):
            pass
        raw.sendall(b"STARTTLS\r\nNOOP\r\nNOOP\r\n")
        self.assertEqual(f.readline(), b"220 2.0.0 Ready to start TLS\r\n")
        tls = self.daemon.tls_context().wrap_socket(raw, server_hostname="localhost")
        tf = tls.makefile("rb")
        tls.sendall(b"NOOP\r\n")
        self.assertEqual(tf.readline(), b"250 2.0.0 Ok\r\n")
        tls.sendall(b"MAIL FROM:<a@example.com>\r\n")
        self.assertEqual(tf.readline(), b"503 5.5.1 Error: send HELO/EHLO first\r\n")
        tls.close()

    def test_endless_line_is_cut_off(self) -> None:
        """
        A client sending megabytes without a line break gets one 500 and is
        disconnected, without the daemon buffering it.
        """
        rss_before = rss(self.daemon.process.pid)
        raw = socket.create_connection(("127.0.0.1", self.daemon.starttls_port), 10)
        f = raw.makefile("rb")
        f.readline()
        chunk = b"x" * 65536
        try:
            for _ in range(1024):  # up to 64 MiB
                raw.sendall(chunk)
        except OSError:
            pass
        lines = f.read().split(b"\r\n")
        self.assertEqual(lines[0], b"500 5.5.2 Line too long")
        self.assertIn(b"421 4.7.0 relay.test Line too long, closing connection", lines)
        raw.close()
        self.assertLess(rss(self.daemon.process.pid) - rss_before, 8 * 1024 * 1024)

    def test_corpus_messages_are_relayed(self) -> None:
        """
        Every corpus message, relayed over SMTP, reaches the upstream as the
        per-file table of L{tests.message.test_corpus} says (subject, author, text
        and HTML bodies, attachments), or gets that table's specific 550;
        never a 451 or a dropped connection.
        """
        if not ENMIME.is_dir():
            self.skipTest(f"no corpus at {ENMIME}")
        for name, expected in sorted(CORPUS_TABLE.items()):
            data = (ENMIME / name).read_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
            before = len(self.upstream.requests)
            with self.daemon.implicit() as client:
                client.login("apikey", TOKEN)
                client.mail("sender@example.com")
                client.rcpt("rcpt@example.net")
                code, reply = client.data(data)
            if isinstance(expected, Rejected):
                self.assertEqual(
                    (code, reply.decode()), (550, f"{expected.status} {expected.text}"), name
                )
                self.assertEqual(len(self.upstream.requests), before, name)
                continue
            self.assertEqual(code, 250, (name, reply))
            self.assertEqual(len(self.upstream.requests), before + 1, name)
            body = self.upstream.requests[-1]["json"]
            self.assertEqual(body["subject"], expected.subject, name)
            self.assertTrue(
                body["from"].endswith(expected.author) or expected.author in body["from"], name
            )
            for kind in ("text", "html"):
                want = getattr(expected, kind)
                if want is None:
                    self.assertIsNone(body[kind], (name, kind))
                else:
                    self.assertTrue(body[kind].startswith(want), (name, kind))
            self.assertEqual(
                [(a["filename"], a["content_type"], a["inline"]) for a in body["attachments"]],
                [(f, t, i) for f, t, _, i in expected.attachments],
                name,
            )

    def test_swaks(self) -> None:
        if shutil.which("swaks") is None:
            self.skipTest("swaks not installed")
        for args in (
            ["--server", f"127.0.0.1:{self.daemon.starttls_port}", "--tls"],
            ["--server", f"127.0.0.1:{self.daemon.implicit_port}", "--tlsc"],
        ):
            for mech in ("PLAIN", "LOGIN"):
                out = subprocess.run(
                    [
                        "swaks",
                        *args,
                        "--auth",
                        mech,
                        "--auth-user",
                        "apikey",
                        "--auth-password",
                        TOKEN,
                        "--from",
                        "a@example.com",
                        "--to",
                        "b@example.net",
                        "--header",
                        "Subject: via swaks",
                        "--body",
                        "hello from swaks",
                    ],
                    capture_output=True,
                    text=True,
                    timeout=30,
                )
                self.assertEqual(out.returncode, 0, out.stdout + out.stderr)
                self.assertRegex(out.stdout, r"<~  250 2\.0\.0 Ok: queued as up-\d+")
        self.assertEqual([r["json"]["subject"] for r in self.upstream.requests], ["via swaks"] * 4)

    def test_curl(self) -> None:
        if shutil.which("curl") is None:
            self.skipTest("curl not installed")
        message = b"From: a@example.com\r\nTo: b@example.net\r\nSubject: via curl\r\n\r\nhello from curl\r\n"
        out = subprocess.run(
            [
                "curl",
                "-sS",
                "--ssl-reqd",
                "--cacert",
                self.daemon.cert,
                "--url",
                f"smtp://localhost:{self.daemon.starttls_port}",
                "--user",
                f"apikey:{TOKEN}",
                "--mail-from",
                "a@example.com",
                "--mail-rcpt",
                "b@example.net",
                "--upload-file",
                "-",
            ],
            input=message,
            capture_output=True,
            timeout=30,
        )
        self.assertEqual(out.returncode, 0, out.stderr)
        (request,) = self.upstream.requests
        self.assertEqual(request["json"]["subject"], "via curl")
        self.assertEqual(request["json"]["text"], "hello from curl\n")


def _established(server_port: int, client_port: int) -> bool:
    """
    @return: Whether the server's end (on 127.0.0.1 C{server_port}) of the
        connection from C{client_port} is still established (C{/proc/net/tcp}).
    """
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote, state = fields[1], fields[2], fields[3]
        if (
            int(local.split(":")[1], 16) == server_port
            and int(remote.split(":")[1], 16) == client_port
            and state == "01"
        ):
            return True
    return False


class CloseAfterReplyTests(unittest.TestCase):
    """
    After C{221} to QUIT, and after a closing C{421}, the daemon closes the
    connection itself (RFC 5321 section 4.1.1.10, 3.8), over TLS too: the
    client reads the end of the stream (TLS close alert, then the TCP
    close) at once, without closing first.
    """

    upstream: ClassVar[Upstream]
    daemon: ClassVar[Daemon]

    @classmethod
    def setUpClass(cls) -> None:
        cls.upstream = Upstream()
        cls.daemon = Daemon(
            f"http://127.0.0.1:{cls.upstream.port}/v1/send",
            "[limits]\nmax_errors = 2\nidle_timeout = 2\n",
        )

    @classmethod
    def tearDownClass(cls) -> None:
        cls.daemon.stop()
        cls.upstream.stop()

    def _implicit(self) -> ssl.SSLSocket:
        context = self.daemon.tls_context()
        context.check_hostname = False
        raw = socket.create_connection(("127.0.0.1", self.daemon.implicit_port), 5)
        tls = context.wrap_socket(raw)
        self.addCleanup(tls.close)
        return tls

    def _starttls(self) -> ssl.SSLSocket:
        raw = socket.create_connection(("127.0.0.1", self.daemon.starttls_port), 5)
        reader = raw.makefile("rb")
        reader.readline()
        raw.sendall(b"EHLO client.test\r\nSTARTTLS\r\n")
        while not reader.readline().startswith(b"220 "):
            pass
        context = self.daemon.tls_context()
        context.check_hostname = False
        tls = context.wrap_socket(raw)
        self.addCleanup(tls.close)
        tls.sendall(b"EHLO client.test\r\n")
        return tls

    def _replies_then_end(self, tls: ssl.SSLSocket, commands: bytes) -> list[bytes]:
        """
        Send C{commands}, then read until the daemon ends the stream.

        @return: The reply lines read.
        @raise TimeoutError: When the daemon does not end it within 5 s.
        """
        tls.sendall(commands)
        reader = tls.makefile("rb")
        return [line for line in iter(reader.readline, b"")]

    def test_quit_over_implicit_tls(self) -> None:
        lines = self._replies_then_end(self._implicit(), b"QUIT\r\n")
        self.assertEqual(lines[-1], b"221 2.0.0 Bye\r\n")

    def test_quit_after_starttls(self) -> None:
        lines = self._replies_then_end(self._starttls(), b"NOOP\r\nQUIT\r\n")
        self.assertEqual(lines[-2:], [b"250 2.0.0 Ok\r\n", b"221 2.0.0 Bye\r\n"])

    def test_client_that_never_answers_the_close_is_cut_off(self) -> None:
        """
        A client that sends QUIT over TLS and then neither reads nor
        closes: the daemon's end of the connection is gone once the idle
        timeout (here 2 s; at most 30 s) has passed, not kept for ever
        waiting for the client's close alert.
        """
        tls = self._implicit()
        tls.sendall(b"QUIT\r\n")
        local = tls.getsockname()[1]
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and _established(self.daemon.implicit_port, local):
            time.sleep(0.2)
        self.assertFalse(_established(self.daemon.implicit_port, local))

    def test_closing_421_over_tls(self) -> None:
        """
        Too many errors: the C{421} is the last line, then the end.
        """
        lines = self._replies_then_end(self._implicit(), b"FOO\r\nBAR\r\n")
        self.assertTrue(lines[-1].startswith(b"421 4.7.0 "), lines)


class UpstreamDownTests(unittest.TestCase):
    def test_refused_connection_gives_451(self) -> None:
        daemon = Daemon(f"http://127.0.0.1:{free_port()}/send")
        try:
            with daemon.implicit() as client:
                client.login("apikey", TOKEN)
                with self.assertRaises(smtplib.SMTPDataError) as e:
                    client.sendmail("a@example.com", ["b@example.net"], SIMPLE)
            self.assertEqual(e.exception.smtp_code, 451)
            self.assertEqual(e.exception.smtp_error, b"4.3.0 Temporary failure, try again later")
        finally:
            daemon.stop()


def children(pid: int) -> list[int]:
    """
    The process ids whose parent is C{pid} (from /proc).
    """
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


class WorkerTests(unittest.TestCase):
    def test_workers_share_the_listeners(self) -> None:
        """
        With C{workers = 2} a second process accepts on the same sockets;
        every message is relayed, and stopping the daemon stops both.
        """
        upstream = Upstream()
        daemon = Daemon(f"http://127.0.0.1:{upstream.port}/send", workers=2)
        try:
            deadline = time.monotonic() + 20
            while not children(daemon.process.pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            (worker,) = children(daemon.process.pid)
            time.sleep(1)  # let the worker adopt the sockets
            for _ in range(6):
                with daemon.implicit() as client:
                    client.login("apikey", TOKEN)
                    self.assertEqual(
                        client.sendmail("a@example.com", ["b@example.net"], distinct()), {}
                    )
            self.assertEqual(len(upstream.requests), 6)
        finally:
            daemon.stop()
            upstream.stop()
        self.assertFalse(
            Path(f"/proc/{worker}").exists()
            and "Z" not in Path(f"/proc/{worker}/stat").read_text().split()[2]
        )


class IdleTests(unittest.TestCase):
    def test_idle_client_is_closed(self) -> None:
        daemon = Daemon("http://127.0.0.1:9/send", extra="[limits]\nidle_timeout = 1")
        try:
            raw = socket.create_connection(("127.0.0.1", daemon.starttls_port), 10)
            f = raw.makefile("rb")
            self.assertTrue(f.readline().startswith(b"220 relay.test "))
            self.assertEqual(
                f.readline(), b"421 4.4.2 relay.test Timeout exceeded, closing connection\r\n"
            )
            self.assertEqual(f.read(), b"")
            raw.close()
        finally:
            daemon.stop()


class ConfigErrorTests(unittest.TestCase):
    def test_bad_config_is_one_line_and_exit_78(self) -> None:
        with tempfile.TemporaryDirectory() as d:
            path = Path(d) / "bad.toml"
            path.write_text('[upstream]\ntimeout = "soon"\n')
            out = subprocess.run(
                [sys.executable, "-m", "twisted", "relayd", "--config", str(path)],
                capture_output=True,
                text=True,
                timeout=60,
                env=dict(os.environ, PYTHONPATH=str(ROOT)),
            )
        self.assertEqual(out.returncode, 78, out.stderr)
        self.assertEqual(
            out.stderr.strip().splitlines()[-1],
            f"relayd: {path}: upstream.timeout: expected a number of seconds",
        )
        self.assertNotIn("Traceback", out.stderr)


class TwistdTests(unittest.TestCase):
    def test_twistd_runs_the_plugin(self) -> None:
        """
        C{twistd -n relayd --config PATH} starts the same daemon as
        C{twist}: the listener greets with the configured hostname.
        """
        daemon = Daemon("http://127.0.0.1:9/send")
        daemon.process.terminate()
        daemon.process.wait(10)
        log = open(daemon.dir / "twistd.log", "wb")
        process = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "from twisted.scripts.twistd import run; run()",
                "-n",
                "--pidfile=",
                "--logfile=-",
                "relayd",
                "--config",
                str(daemon.dir / "relayd.toml"),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=str(daemon.dir),
            env=dict(os.environ, PYTHONPATH=str(ROOT)),
        )
        try:
            deadline = time.monotonic() + 20
            while True:
                try:
                    raw = socket.create_connection(("127.0.0.1", daemon.starttls_port), 0.5)
                    break
                except OSError:
                    if time.monotonic() > deadline or process.poll() is not None:
                        raise
                    time.sleep(0.05)
            self.assertTrue(raw.makefile("rb").readline().startswith(b"220 relay.test ESMTP"))
            raw.close()
        finally:
            process.terminate()
            process.wait(10)
            log.close()
            daemon.stop()
