"""
Tests for L{relayd.explain}: C{relayd explain} prints the request a
message would produce, what became of each header and why, and the reply;
a refused message prints its reply; the credential never appears; nothing
is sent.
"""

from __future__ import annotations

import io
import tempfile
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from relayd.explain import MASK, PLACEHOLDER, main
from relayd.tokens import digest
from tests.message.test_corpus import CORPUS_TABLE, ENMIME, Rejected
from tests.test_command import relayd

PRESETS = Path(__file__).resolve().parents[1] / "etc" / "presets"
TOKEN = "explain-token-not-a-secret"

MESSAGE = (
    b"From: Ann <ann@example.com>\n"
    b"To: bob@example.net\n"
    b"Subject: Your order\n"
    b"Message-ID: <42@example.com>\n"
    b"Date: Mon, 1 Jan 2024 00:00:00 +0000\n"
    b"X-Tags: orders, eu\n"
    b"X-Metadata-Order: 42\n"
    b"Auto-Submitted: auto-generated\n"
    b"Received: from somewhere\n"
    b"MIME-Version: 1.0\n"
    b'Content-Type: multipart/mixed; boundary="b"\n'
    b"\n"
    b"--b\nContent-Type: text/plain\n\nThanks!\n"
    b"--b\nContent-Type: application/pdf\nContent-Disposition: attachment; filename=invoice.pdf\n"
    b"Content-Transfer-Encoding: base64\n\n" + b"JVBERi0xLjQK" * 40 + b"\n--b--\n"
)


class ExplainTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="relayd-explain-"))
        self.addCleanup(__import__("shutil").rmtree, self.dir, True)
        (self.dir / "tokens.toml").write_text(
            f'[tokens.website]\nsha256 = "{digest(TOKEN).hex()}"\n'
            'senders = ["example.com"]\n'
            f'[tokens.shop]\nsha256 = "{digest("other-" + TOKEN).hex()}"\n'
            'senders = ["shop.example"]\n'
        )
        (self.dir / "message.eml").write_bytes(MESSAGE)

    def config(self, extra: str = "", include: str = "") -> str:
        path = self.dir / "relayd.toml"
        head = f"include = {include!r}\n" if include else ""
        path.write_text(
            head + '[[listeners]]\nendpoint = "tcp:port=2525"\n'
            '[tls]\ncertificate = "c.pem"\nkey = "k.pem"\n'
            '[auth]\ntokens_file = "tokens.toml"\n'
            '[upstream]\nurl = "https://api.example.com/v1/send"\n' + extra
        )
        return str(path)

    def run_main(self, *argv: str) -> tuple[int, str]:
        out = io.StringIO()
        code = main(list(argv), out=out)
        return code, out.getvalue()

    def sections(self, output: str) -> dict[str, list[str]]:
        found: dict[str, list[str]] = {}
        current: list[str] = []
        for line in output.splitlines():
            if line.startswith("== "):
                current = found.setdefault(line[3:], [])
            elif line:
                current.append(line)
        return found

    def test_native_request_headers_and_reply(self) -> None:
        """
        The request (method, URL, headers with the credential masked), the
        body as JSON, each header's fate and the 250 template.
        """
        code, output = self.run_main(
            "--config", self.config(), str(self.dir / "message.eml"), "--to", "bob@example.net"
        )
        self.assertEqual(code, 0, output)
        s = self.sections(output)
        self.assertEqual(list(s), ["request", "body", "headers", "reply"])
        self.assertEqual(s["request"][0], "POST https://api.example.com/v1/send")
        self.assertIn(f"Authorization: {MASK}", s["request"])
        self.assertIn("Content-Type: application/json", s["request"])
        body = "\n".join(s["body"])
        self.assertIn('"subject": "Your order"', body)
        self.assertIn('"filename": "invoice.pdf"', body)
        self.assertIn("characters)", body)  # the base64 content is shortened
        self.assertIn('"mail_from": "ann@example.com"', body)
        headers = s["headers"]
        self.assertIn("mapped      X-Tags: tags (headers.tags)", headers)
        self.assertIn("mapped      X-Metadata-Order: metadata (headers.metadata_prefix)", headers)
        self.assertIn("stripped    Message-ID: headers.keep_message_id = false", headers)
        self.assertIn("stripped    Date: never passed on (Bcc, Date)", headers)
        self.assertIn("stripped    Received: in headers.strip", headers)
        self.assertIn("kept        Auto-Submitted: in headers.keep", headers)
        self.assertIn("represented Subject: a field of the request of its own", headers)
        self.assertEqual(s["reply"][0], "250 2.0.0 Ok: queued as {id}")
        self.assertNotIn(PLACEHOLDER, output)

    def test_refused_message_prints_its_reply(self) -> None:
        (self.dir / "no-from.eml").write_bytes(b"To: bob@example.net\nSubject: x\n\nhi\n")
        code, output = self.run_main(
            "--config", self.config(), str(self.dir / "no-from.eml"), "--to", "bob@example.net"
        )
        self.assertEqual(code, 1)
        s = self.sections(output)
        self.assertNotIn("request", s)
        self.assertEqual(s["reply"], ["550 5.6.0 Message has no From header"])

    def test_token_policy_applies(self) -> None:
        """
        --token-name checks with that tokens file entry: a sender outside
        its senders is refused as relayd would at MAIL FROM.
        """
        argv = ["--config", self.config(), str(self.dir / "message.eml"), "--to", "b@example.net"]
        self.assertEqual(self.run_main(*argv, "--token-name", "website")[0], 0)
        code, output = self.run_main(*argv, "--token-name", "shop")
        self.assertEqual(
            (code, self.sections(output)["reply"]), (1, ["550 5.7.1 Sender not allowed"])
        )
        self.assertNotIn(TOKEN, output)
        self.assertNotIn(digest(TOKEN).hex(), output)

    def test_unknown_token_name_is_a_usage_error(self) -> None:
        code, output = self.run_main(
            "--config",
            self.config(),
            str(self.dir / "message.eml"),
            "--to",
            "b@example.net",
            "--token-name",
            "nobody",
        )
        self.assertEqual((code, output), (2, ""))

    def test_preset_reply_texts_and_dialect_without_custom_headers(self) -> None:
        """
        With the MailPace preset a kept header the dialect cannot carry is
        said not to be sent, and the token header is masked; with the
        CloudMailin preset the 250 template is its own.
        """
        config = self.config(include=str(PRESETS / "mailpace.toml"))
        (self.dir / "m.eml").write_bytes(
            b"From: a@example.com\nTo: b@example.net\nSubject: s\nIn-Reply-To: <1@x>\n"
            b"X-MailPace-Tags: a, b\n\nhi\n"
        )
        code, output = self.run_main(
            "--config", config, str(self.dir / "m.eml"), "--to", "b@example.net"
        )
        self.assertEqual(code, 0, output)
        s = self.sections(output)
        self.assertEqual(s["request"][0], "POST https://api.example.com/v1/send")
        self.assertIn(f"MailPace-Server-Token: {MASK}", s["request"])
        self.assertIn("mapped      X-MailPace-Tags: tags (headers.tags)", s["headers"])
        self.assertIn("stripped    In-Reply-To: not in headers.keep", s["headers"])
        (self.dir / "k.eml").write_bytes(
            b"From: a@example.com\nTo: b@example.net\nSubject: s\nX-Other: 1\n\nhi\n"
        )
        config = self.config(
            include=str(PRESETS / "mailpace.toml"), extra='[headers]\nkeep = ["X-Other"]\n'
        )
        output = self.run_main(
            "--config", config, str(self.dir / "k.eml"), "--to", "b@example.net"
        )[1]
        self.assertIn(
            "kept        X-Other: in headers.keep; the mailpace dialect has no field for it:"
            " not sent",
            output,
        )
        config = self.config(include=str(PRESETS / "cloudmailin.toml"))
        output = self.run_main("--config", config, str(self.dir / "m.eml"), "--to", "b@x.net")[1]
        self.assertEqual(self.sections(output)["reply"][0], "250 2.0.0 Thanks! Queued as: {id}")
        self.assertIn(f"Authorization: {MASK}", output)

    def test_multipart_body_is_outlined(self) -> None:
        config = self.config(extra='dialect = "mailgun"\n')
        code, output = self.run_main(
            "--config", config, str(self.dir / "message.eml"), "--to", "bob@example.net"
        )
        self.assertEqual(code, 0, output)
        body = self.sections(output)["body"]
        self.assertTrue(body[0].startswith("multipart body, "), body)
        self.assertTrue(any("type=message/rfc822" in line or "filename=" in line for line in body))
        self.assertIn(f"Authorization: {MASK}", output)

    def test_corpus_messages(self) -> None:
        """
        Every message of the corpus table: a 250 for the ones relayd takes,
        the table's 550 for the ones it refuses.
        """
        if not ENMIME.is_dir():
            self.skipTest(f"no corpus at {ENMIME}")
        config = self.config()
        for name, expected in CORPUS_TABLE.items():
            code, output = self.run_main("--config", config, str(ENMIME / name), "--to", "b@x.net")
            reply = self.sections(output)["reply"][0]
            if isinstance(expected, Rejected):
                self.assertEqual((code, reply), (1, f"550 {expected.status} {expected.text}"), name)
            else:
                self.assertEqual((code, reply), (0, "250 2.0.0 Ok: queued as {id}"), name)

    def test_bad_config_or_file(self) -> None:
        out = io.StringIO()
        self.assertEqual(
            main(["--config", str(self.dir / "none.toml"), "x", "--to", "a@b"], out), 2
        )
        self.assertEqual(main(["--config", self.config(), "/nonexistent", "--to", "a@b"], out), 2)
        self.assertEqual(main(["--config", self.config()], out), 2)

    def test_explain_as_a_command(self) -> None:
        """
        C{relayd explain --config PATH message.eml --to ADDR}: exit 0, the
        request and the reply on standard output, the credential masked;
        a refused message exits 1 with its reply; a missing C{--to} is a
        usage error (2).
        """
        config, eml = self.config(), str(self.dir / "message.eml")
        done = relayd("explain", "--config", config, eml, "--to", "bob@example.net")
        self.assertEqual(done.returncode, 0, done.stderr)
        s = self.sections(done.stdout)
        self.assertEqual(s["request"][0], "POST https://api.example.com/v1/send")
        self.assertIn(f"Authorization: {MASK}", s["request"])
        self.assertEqual(s["reply"][0], "250 2.0.0 Ok: queued as {id}")
        refused = relayd(
            "explain", "--config", config, eml, "--to", "bob@example.net", "--token-name", "shop"
        )
        self.assertEqual(refused.returncode, 1, refused.stderr)
        self.assertTrue(self.sections(refused.stdout)["reply"][0].startswith("550 5.7.1"))
        usage = relayd("explain", "--config", config, eml)
        self.assertEqual(usage.returncode, 2)
        self.assertIn("relayd explain", usage.stderr)
