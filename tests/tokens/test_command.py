"""
Tests for L{relayd.tokens.command}: the C{python -m relayd.tokens}
command.
"""

from __future__ import annotations

import io
import os
import stat
import subprocess
import sys

from twisted.trial.unittest import SynchronousTestCase

import relayd.tokens.command
from relayd.tokens import (
    DEFAULT_TOKENS_FILE,
    TOKEN_PREFIX,
    TokenPolicy,
    TokenStore,
    main,
)
from tests.tokens.helpers import FULL, folder, hex_digest


class CommandTests(SynchronousTestCase):
    """
    Tests for L{main}, the C{python -m relayd.tokens} command.
    """

    def setUp(self) -> None:
        self.folder = folder(self)
        self.path = os.path.join(self.folder, "tokens.toml")

    def run_command(
        self, *argv: str, environ: dict[str, str] | None = None
    ) -> tuple[int, str, str]:
        """
        Run the command; return its exit status, stdout and stderr.
        """
        out, err = io.StringIO(), io.StringIO()
        if environ is None:
            environ = {"RELAYD_TOKENS_FILE": self.path}
        status = main(list(argv), stdout=out, stderr=err, environ=environ)
        return status, out.getvalue(), err.getvalue()

    def read(self) -> str:
        with open(self.path, encoding="utf-8") as f:
            return f.read()

    def test_add_creates_file(self) -> None:
        """
        C{add} creates the file with mode 0600, prints the new token alone on
        stdout, and the file then accepts that token.
        """
        status, out, err = self.run_command("add", "website")
        self.assertEqual(status, 0)
        token = out.strip()
        self.assertEqual(out, token + "\n")
        self.assertTrue(token.startswith(TOKEN_PREFIX))
        self.assertGreaterEqual(len(token), len(TOKEN_PREFIX) + 43)
        self.assertEqual(stat.S_IMODE(os.stat(self.path).st_mode), 0o600)
        self.assertEqual(TokenStore.load(self.path).lookup(token), TokenPolicy("website"))

    def test_add_existing_token_from_stdin(self) -> None:
        """
        C{add --token-stdin} stores the digest of a given token (the
        provider's, which relayd passes upstream) and prints nothing on
        stdout.
        """
        self.patch(sys, "stdin", io.StringIO("provider-server-token\n"))
        status, out, err = self.run_command("add", "website", "--token-stdin")
        self.assertEqual((status, out), (0, ""))
        self.assertEqual(
            TokenStore.load(self.path).lookup("provider-server-token"), TokenPolicy("website")
        )
        self.assertNotIn("provider-server-token", self.read())

    def test_add_never_stores_the_token(self) -> None:
        """
        The file holds the token's digest, not the token; stderr says the
        token is shown once and that a reload picks it up.
        """
        _, out, err = self.run_command("add", "website")
        token = out.strip()
        text = self.read()
        self.assertNotIn(token, text)
        self.assertNotIn(token[len(TOKEN_PREFIX) :], text)
        self.assertIn(hex_digest(token), text)
        self.assertNotIn(hex_digest(token), out + err)
        self.assertIn("only time", err)
        self.assertIn("reload", err)
        self.assertIn("SIGHUP", err)

    def test_add_tokens_differ(self) -> None:
        """
        Each token is new randomness.
        """
        _, first, _ = self.run_command("add", "a")
        _, second, _ = self.run_command("add", "b")
        self.assertNotEqual(first, second)

    def test_add_with_policy(self) -> None:
        """
        C{--sender}, C{--stream}, C{--max-recipients} and
        C{--max-message-size} are stored as the token's policy.
        """
        status, out, _ = self.run_command(
            "add",
            "website",
            "--sender",
            "example.com",
            "--sender",
            "alerts@bücher.example",
            "--stream",
            "outbound",
            "--max-recipients",
            "5",
            "--max-message-size",
            "1000",
        )
        self.assertEqual(status, 0)
        self.assertEqual(
            TokenStore.load(self.path).lookup(out.strip()),
            TokenPolicy(
                "website",
                senders=("example.com", "alerts@bücher.example"),
                streams=("outbound",),
                max_recipients=5,
                max_message_size=1000,
            ),
        )

    def test_add_appends(self) -> None:
        """
        C{add} appends to an existing file and keeps what was there, its
        comments and its permissions.
        """
        with open(self.path, "w") as f:
            f.write(FULL.rstrip("\n"))
        os.chmod(self.path, 0o640)
        status, out, _ = self.run_command("add", "third")
        self.assertEqual(status, 0)
        text = self.read()
        self.assertTrue(text.startswith(FULL))
        self.assertEqual(stat.S_IMODE(os.stat(self.path).st_mode), 0o640)
        store = TokenStore.load(self.path)
        self.assertEqual([p.name for p in store.policies()], ["website", "backups", "third"])
        self.assertEqual(store.lookup(out.strip()), TokenPolicy("third"))

    def test_add_duplicate_name(self) -> None:
        """
        C{add} refuses a name that is already in the file: exit status 2, a
        message, no token printed, the file unchanged.
        """
        self.run_command("add", "website")
        before = self.read()
        status, out, err = self.run_command("add", "website")
        self.assertEqual((status, out), (2, ""))
        self.assertIn("'website' already exists", err)
        self.assertEqual(self.read(), before)

    def test_add_bad_name(self) -> None:
        """
        Token names are letters, digits, C{-} and C{_}.
        """
        for name in ("web site", "a.b", "x]", "", "a" * 65):
            status, out, err = self.run_command("add", name)
            self.assertEqual((status, out), (2, ""), name)
            self.assertIn("token name", err)
        self.assertFalse(os.path.exists(self.path))

    def test_add_bad_policy(self) -> None:
        """
        A policy the daemon would refuse is not written.
        """
        for option, value in (
            ("--max-recipients", "0"),
            ("--sender", "@example.com"),
            ("--stream", ""),
        ):
            status, out, err = self.run_command("add", "web", option, value)
            self.assertEqual((status, out), (2, ""))
            self.assertIn("tokens.web.", err)
        self.assertFalse(os.path.exists(self.path))

    def test_add_to_invalid_file(self) -> None:
        """
        C{add} does not append to a file the daemon cannot read: exit 1.
        """
        with open(self.path, "w") as f:
            f.write("[tokens.a]\nsha256 = 1\n")
        status, out, err = self.run_command("add", "b")
        self.assertEqual((status, out), (1, ""))
        self.assertIn("tokens.a.sha256", err)

    def test_add_creates_folder(self) -> None:
        """
        C{add} creates the file's folder.
        """
        path = os.path.join(self.folder, "etc", "relayd", "tokens.toml")
        status, out, _ = self.run_command("add", "a", "--file", path)
        self.assertEqual(status, 0)
        self.assertEqual(TokenStore.load(path).lookup(out.strip()), TokenPolicy("a"))

    def test_list(self) -> None:
        """
        C{list} prints each name and policy, never a digest.
        """
        with open(self.path, "w") as f:
            f.write(FULL)
        status, out, _ = self.run_command("list")
        self.assertEqual(status, 0)
        self.assertEqual(
            out,
            "website  senders=example.com,alerts@example.org "
            "streams=outbound,broadcast max_recipients=50 "
            "max_message_size=10485760\n"
            "backups  senders=any streams=any\n",
        )
        self.assertNotIn(hex_digest("website-token"), out)

    def test_list_missing_file(self) -> None:
        """
        C{list} of a missing file says so, exit status 1.
        """
        status, _, err = self.run_command("list")
        self.assertEqual(status, 1)
        self.assertIn(f"{self.path}: no such file", err)

    def test_remove(self) -> None:
        """
        C{remove} deletes one table and keeps the rest of the file.
        """
        with open(self.path, "w") as f:
            f.write(FULL)
        os.chmod(self.path, 0o640)
        status, _, err = self.run_command("remove", "website")
        self.assertEqual(status, 0)
        self.assertIn("reload", err)
        store = TokenStore.load(self.path)
        self.assertIsNone(store.lookup("website-token"))
        self.assertEqual(store.policies(), (TokenPolicy("backups"),))
        text = self.read()
        self.assertTrue(text.startswith("# relayd tokens file"))
        self.assertEqual(stat.S_IMODE(os.stat(self.path).st_mode), 0o640)

    def test_remove_last(self) -> None:
        """
        Removing the last table leaves the entries before it intact.
        """
        with open(self.path, "w") as f:
            f.write(FULL)
        self.assertEqual(self.run_command("remove", "backups")[0], 0)
        self.assertEqual([p.name for p in TokenStore.load(self.path).policies()], ["website"])

    def test_remove_then_add(self) -> None:
        """
        A removed name can be added again, with a new token.
        """
        _, first, _ = self.run_command("add", "a")
        self.run_command("add", "b")
        self.assertEqual(self.run_command("remove", "a")[0], 0)
        status, second, _ = self.run_command("add", "a")
        self.assertEqual(status, 0)
        store = TokenStore.load(self.path)
        self.assertIsNone(store.lookup(first.strip()))
        self.assertEqual(store.lookup(second.strip()), TokenPolicy("a"))

    def test_remove_unknown(self) -> None:
        """
        C{remove} of a name not in the file: exit status 2.
        """
        with open(self.path, "w") as f:
            f.write(FULL)
        status, _, err = self.run_command("remove", "nobody")
        self.assertEqual(status, 2)
        self.assertIn("no token named 'nobody'", err)
        self.assertEqual(self.read(), FULL)

    def test_remove_unusual_layout(self) -> None:
        """
        An entry not written as its own table (here an inline table) is not
        edited: exit status 2, the file unchanged.
        """
        text = f'tokens = {{ a = {{ sha256 = "{hex_digest("a")}" }} }}\n'
        with open(self.path, "w") as f:
            f.write(text)
        status, _, err = self.run_command("remove", "a")
        self.assertEqual(status, 2)
        self.assertIn("remove it by hand", err)
        self.assertEqual(self.read(), text)

    def test_default_file(self) -> None:
        """
        Without C{--file} or C{$RELAYD_TOKENS_FILE} the file is
        L{DEFAULT_TOKENS_FILE}; C{$RELAYD_TOKENS_FILE} overrides it.
        """
        self.assertEqual(DEFAULT_TOKENS_FILE, "/etc/relayd/tokens.toml")
        parser = relayd.tokens.command._parser(DEFAULT_TOKENS_FILE)
        self.assertEqual(parser.parse_args(["list"]).file, DEFAULT_TOKENS_FILE)
        other = os.path.join(self.folder, "other.toml")
        status, _, _ = self.run_command("add", "a", environ={"RELAYD_TOKENS_FILE": other})
        self.assertEqual(status, 0)
        self.assertTrue(os.path.exists(other))
        self.assertFalse(os.path.exists(self.path))

    def test_usage_errors(self) -> None:
        """
        Missing or unknown arguments exit with status 2 and a usage message;
        C{--help} exits 0.
        """
        for argv in ([], ["frobnicate"], ["add"], ["add", "a", "--max-recipients", "x"]):
            status, _, err = self.run_command(*argv)
            self.assertEqual(status, 2, argv)
            self.assertIn("usage:", err)
        status, out, _ = self.run_command("--help")
        self.assertEqual(status, 0)
        self.assertIn("add", out)

    def test_python_dash_m(self) -> None:
        """
        C{python -m relayd.tokens} runs the command.
        """
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        environ = dict(os.environ, RELAYD_TOKENS_FILE=self.path, PYTHONPATH=root)
        result = subprocess.run(
            [sys.executable, "-m", "relayd.tokens", "add", "cli"],
            capture_output=True,
            text=True,
            env=environ,
            check=False,
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(
            TokenStore.load(self.path).lookup(result.stdout.strip()),
            TokenPolicy("cli"),
        )
