"""
Tests for L{relayd.tokens}: token policies, the token store and its file,
and the C{python -m relayd.tokens} command.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import os
import shutil
import stat
import subprocess
import sys
import tempfile

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

import relayd.tokens
from relayd.config import ConfigError
from relayd.tokens import (
    DEFAULT_TOKENS_FILE,
    TOKEN_PREFIX,
    TokenPolicy,
    TokenStore,
    digest,
    main,
)

DEV_TOKENS = os.path.join(
    os.path.dirname(os.path.abspath(__file__)), os.pardir, "etc", "dev-tokens.toml"
)


def _hex(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def _folder(case: SynchronousTestCase) -> str:
    """
    A temporary folder removed when C{case} ends.
    """
    path = tempfile.mkdtemp(prefix="relayd-test-tokens-")
    case.addCleanup(shutil.rmtree, path, True)
    return path


def _write(case: SynchronousTestCase, text: str) -> str:
    """
    Write C{text} to a new tokens file; return its path.
    """
    path = os.path.join(_folder(case), "tokens.toml")
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    return path


class TokenPolicySenderTests(SynchronousTestCase):
    """
    Tests for L{TokenPolicy.allows_sender}.
    """

    def test_no_senders_allows_any(self) -> None:
        """
        Without C{senders}, any reverse-path is allowed, the null one too.
        """
        policy = TokenPolicy("t")
        self.assertTrue(policy.allows_sender("a@example.com"))
        self.assertTrue(policy.allows_sender(""))

    def test_domain_matches_any_local_part(self) -> None:
        """
        A domain entry allows every address at that domain, ignoring case.
        """
        policy = TokenPolicy("t", senders=("Example.COM",))
        self.assertTrue(policy.allows_sender("news@example.com"))
        self.assertTrue(policy.allows_sender("Alice@EXAMPLE.com"))

    def test_domain_is_exact(self) -> None:
        """
        A domain entry does not allow its subdomains or other domains that
        end with the same text.
        """
        policy = TokenPolicy("t", senders=("example.com",))
        self.assertFalse(policy.allows_sender("a@mail.example.com"))
        self.assertFalse(policy.allows_sender("a@badexample.com"))
        self.assertFalse(policy.allows_sender("a@example.org"))

    def test_domain_in_local_part_does_not_match(self) -> None:
        """
        Only the part after the last C{@} is the domain.
        """
        policy = TokenPolicy("t", senders=("example.com",))
        self.assertFalse(policy.allows_sender('"x@example.com"@evil.test'))
        self.assertFalse(policy.allows_sender("example.com@evil.test"))

    def test_address_matches_whole_address(self) -> None:
        """
        An address entry allows that address only, ignoring case.
        """
        policy = TokenPolicy("t", senders=("alerts@example.org",))
        self.assertTrue(policy.allows_sender("alerts@example.org"))
        self.assertTrue(policy.allows_sender("ALERTS@Example.Org"))
        self.assertFalse(policy.allows_sender("other@example.org"))
        self.assertFalse(policy.allows_sender("alerts@example.com"))

    def test_domains_and_addresses_together(self) -> None:
        """
        Any matching entry allows the sender.
        """
        policy = TokenPolicy("t", senders=("example.com", "alerts@example.org"))
        self.assertTrue(policy.allows_sender("x@example.com"))
        self.assertTrue(policy.allows_sender("alerts@example.org"))
        self.assertFalse(policy.allows_sender("x@example.org"))

    def test_internationalized_domain(self) -> None:
        """
        A domain matches in U-label and A-label form (RFC 5890).
        """
        unicode = TokenPolicy("t", senders=("bücher.example",))
        self.assertTrue(unicode.allows_sender("a@xn--bcher-kva.example"))
        self.assertTrue(unicode.allows_sender("a@BÜCHER.example"))
        ascii_ = TokenPolicy("t", senders=("xn--bcher-kva.example",))
        self.assertTrue(ascii_.allows_sender("a@bücher.example"))
        address = TokenPolicy("t", senders=("info@bücher.example",))
        self.assertTrue(address.allows_sender("INFO@xn--bcher-kva.example"))

    def test_trailing_dot(self) -> None:
        """
        A fully qualified domain with its trailing dot is the same domain.
        """
        policy = TokenPolicy("t", senders=("example.com.",))
        self.assertTrue(policy.allows_sender("a@example.com"))
        self.assertTrue(TokenPolicy("t", ("example.com",)).allows_sender("a@example.com."))

    def test_not_an_address(self) -> None:
        """
        With C{senders}, the null reverse-path and strings without a local
        part or domain are refused.
        """
        policy = TokenPolicy("t", senders=("example.com",))
        for address in ("", "example.com", "@example.com", "a@"):
            self.assertFalse(policy.allows_sender(address), address)

    @given(
        local=st.from_regex(r"[A-Za-z0-9._+-]{1,20}", fullmatch=True),
        domain=st.from_regex(r"[A-Za-z0-9-]{1,20}\.[A-Za-z]{2,6}", fullmatch=True),
    )
    def test_case_never_matters(self, local: str, domain: str) -> None:
        """
        Changing the case of the address or the entry never changes the
        answer.
        """
        address = f"{local}@{domain}"
        for entry in (domain, address):
            for policy in (
                TokenPolicy("t", senders=(entry,)),
                TokenPolicy("t", senders=(entry.upper(),)),
            ):
                self.assertTrue(policy.allows_sender(address))
                self.assertTrue(policy.allows_sender(address.swapcase()))
                self.assertTrue(policy.allows_sender(address.upper()))


class TokenPolicyStreamTests(SynchronousTestCase):
    """
    Tests for L{TokenPolicy.allows_stream}.
    """

    def test_no_streams_allows_any(self) -> None:
        """
        Without C{streams}, any stream is allowed, and no stream.
        """
        policy = TokenPolicy("t")
        self.assertTrue(policy.allows_stream("broadcast"))
        self.assertTrue(policy.allows_stream(None))

    def test_listed_streams_only(self) -> None:
        """
        With C{streams}, only the listed streams are allowed, exactly.
        """
        policy = TokenPolicy("t", streams=("outbound", "broadcast"))
        self.assertTrue(policy.allows_stream("outbound"))
        self.assertTrue(policy.allows_stream("broadcast"))
        self.assertFalse(policy.allows_stream("other"))
        self.assertFalse(policy.allows_stream("Outbound"))
        self.assertFalse(policy.allows_stream(""))

    def test_no_stream_refused_when_restricted(self) -> None:
        """
        With C{streams}, a message that names no stream is refused.
        """
        self.assertFalse(TokenPolicy("t", streams=("outbound",)).allows_stream(None))

    def test_lists_become_tuples(self) -> None:
        """
        Lists given for C{senders} and C{streams} are stored as tuples, so a
        policy stays immutable and hashable.
        """
        policy = TokenPolicy("t", senders=["a.example"], streams=["s"])  # type: ignore[arg-type]
        self.assertEqual(policy.senders, ("a.example",))
        self.assertEqual(policy.streams, ("s",))
        hash(policy)


class TokenStoreTests(SynchronousTestCase):
    """
    Tests for L{TokenStore}.
    """

    def test_lookup(self) -> None:
        """
        A known token gives its policy; an unknown one gives C{None}.
        """
        store = TokenStore.from_tokens({"one": "token-1", "two": "token-2"})
        self.assertEqual(store.lookup("token-1"), TokenPolicy("one"))
        self.assertEqual(store.lookup("token-2"), TokenPolicy("two"))
        self.assertIsNone(store.lookup("token-3"))
        self.assertIsNone(store.lookup(""))
        self.assertIsNone(store.lookup("TOKEN-1"))

    def test_lookup_unencodable(self) -> None:
        """
        A string that is not valid Unicode text (a lone surrogate) is an
        unknown token, not an exception.
        """
        store = TokenStore.from_tokens({"one": "token-1"})
        self.assertIsNone(store.lookup("\udcff"))

    def test_lookup_compares_every_digest(self) -> None:
        """
        L{TokenStore.lookup} compares with every stored digest, in constant
        time each, even after a match.
        """
        calls: list[tuple[bytes, bytes]] = []
        real = hmac.compare_digest

        def compare(a: bytes, b: bytes) -> bool:
            calls.append((a, b))
            return real(a, b)

        self.patch(hmac, "compare_digest", compare)
        store = TokenStore.from_tokens({"a": "t-a", "b": "t-b", "c": "t-c"})
        self.assertEqual(store.lookup("t-a"), TokenPolicy("a"))
        self.assertEqual(len(calls), 3)
        self.assertEqual({b for _, b in calls}, {digest("t-a")})
        self.assertEqual([a for a, _ in calls], [digest(t) for t in ("t-a", "t-b", "t-c")])

    def test_policies_and_length(self) -> None:
        """
        L{TokenStore.policies} lists every policy in order; C{len} counts
        them.
        """
        store = TokenStore.from_tokens({"a": "t-a", "b": "t-b"})
        self.assertEqual(store.policies(), (TokenPolicy("a"), TokenPolicy("b")))
        self.assertEqual(len(store), 2)

    @given(st.dictionaries(st.text(min_size=1), st.text(min_size=1), max_size=5), st.text())
    def test_lookup_finds_exactly_the_stored_tokens(
        self, tokens: dict[str, str], other: str
    ) -> None:
        """
        Every stored token is found with its own name; any other string is
        not found.
        """
        tokens = {
            name: token
            for name, token in tokens.items()
            if not any(0xD800 <= ord(c) <= 0xDFFF for c in token)
        }
        # Tokens are unique in a real file; keep the first name of each.
        unique: dict[str, str] = {}
        for name, token in tokens.items():
            unique.setdefault(token, name)
        store = TokenStore.from_tokens({n: t for t, n in unique.items()})
        for token, name in unique.items():
            policy = store.lookup(token)
            assert policy is not None
            self.assertEqual(policy.name, name)
        if other not in unique:
            self.assertIsNone(store.lookup(other))

    def test_dev_tokens_file(self) -> None:
        """
        C{etc/dev-tokens.toml} holds one token, C{dev}, whose public
        plaintext is C{dev-token-not-a-secret}.
        """
        store = TokenStore.load(DEV_TOKENS)
        self.assertEqual(store.policies(), (TokenPolicy("dev"),))
        self.assertEqual(store.lookup("dev-token-not-a-secret"), TokenPolicy("dev"))


FULL = f"""\
# relayd tokens file: SHA-256 digests of API tokens, never the tokens.
[tokens.website]
sha256 = "{_hex("website-token")}"
senders = ["example.com", "alerts@example.org"]
streams = ["outbound", "broadcast"]
max_recipients = 50
max_message_size = 10485760

[tokens.backups]
sha256 = "{_hex("backups-token").upper()}"
"""


class TokenStoreLoadTests(SynchronousTestCase):
    """
    Tests for L{TokenStore.load} and L{TokenStore.reload}.
    """

    def assertLoadError(self, text: str, message: str) -> None:
        """
        Loading C{text} raises L{ConfigError} with C{"<path>: <message>"}.
        """
        path = _write(self, text)
        error = self.assertRaises(ConfigError, TokenStore.load, path)
        self.assertEqual(str(error), f"{path}: {message}")

    def test_load(self) -> None:
        """
        Every table becomes a policy; upper-case hex digests are accepted.
        """
        store = TokenStore.load(_write(self, FULL))
        self.assertEqual(
            store.lookup("website-token"),
            TokenPolicy(
                "website",
                senders=("example.com", "alerts@example.org"),
                streams=("outbound", "broadcast"),
                max_recipients=50,
                max_message_size=10485760,
            ),
        )
        self.assertEqual(store.lookup("backups-token"), TokenPolicy("backups"))

    def test_empty_file(self) -> None:
        """
        A file without tokens gives an empty store: every AUTH fails.
        """
        store = TokenStore.load(_write(self, "# nothing yet\n"))
        self.assertEqual(len(store), 0)
        self.assertIsNone(store.lookup("anything"))

    def test_missing_file(self) -> None:
        """
        A missing file is a L{ConfigError} naming it.
        """
        path = os.path.join(_folder(self), "none.toml")
        error = self.assertRaises(ConfigError, TokenStore.load, path)
        self.assertEqual(str(error), f"{path}: no such file")

    def test_not_toml(self) -> None:
        """
        Text that is not TOML is a L{ConfigError}.
        """
        path = _write(self, "[tokens.x\n")
        error = self.assertRaises(ConfigError, TokenStore.load, path)
        self.assertTrue(str(error).startswith(f"{path}: not valid TOML: "))

    def test_unknown_top_level(self) -> None:
        """
        A top-level key other than C{tokens} is refused.
        """
        self.assertLoadError("[token.x]\n", "token: unknown setting")

    def test_tokens_not_a_table(self) -> None:
        """
        C{tokens} must be a table.
        """
        self.assertLoadError('tokens = "x"\n', "tokens: expected a table")

    def test_entry_not_a_table(self) -> None:
        """
        Each C{tokens.NAME} must be a table.
        """
        self.assertLoadError("[tokens]\nweb = 1\n", "tokens.web: expected a table")

    def test_unknown_key(self) -> None:
        """
        An unknown key in an entry is named with its dotted path.
        """
        self.assertLoadError(
            f'[tokens.web]\nsha256 = "{_hex("x")}"\nsender = ["a.example"]\n',
            "tokens.web.sender: unknown setting",
        )

    def test_missing_digest(self) -> None:
        """
        Every entry needs C{sha256}.
        """
        self.assertLoadError(
            '[tokens.web]\nsenders = ["a.example"]\n',
            "tokens.web.sha256: required setting is missing",
        )

    def test_bad_digest(self) -> None:
        """
        C{sha256} must be 64 hexadecimal digits (a plaintext token is not
        accepted there).
        """
        for value in ('"rly_plaintext"', '"' + "0" * 63 + '"', '"' + "g" * 64 + '"', "1"):
            self.assertLoadError(
                f"[tokens.web]\nsha256 = {value}\n",
                "tokens.web.sha256: expected 64 hexadecimal digits",
            )

    def test_bad_senders(self) -> None:
        """
        C{senders} must be a list of non-empty strings that are domains or
        addresses.
        """
        for value, message in (
            ('"example.com"', "expected a list of non-empty strings"),
            ('[""]', "expected a list of non-empty strings"),
            ("[1]", "expected a list of non-empty strings"),
            ('[" example.com"]', "expected a list of non-empty strings"),
            ('["@example.com"]', "expected domains or local@domain addresses"),
            ('["a@"]', "expected domains or local@domain addresses"),
            ('["a@b@example.com"]', "expected domains or local@domain addresses"),
        ):
            self.assertLoadError(
                f'[tokens.web]\nsha256 = "{_hex("x")}"\nsenders = {value}\n',
                f"tokens.web.senders: {message}",
            )

    def test_bad_streams(self) -> None:
        """
        C{streams} must be a list of non-empty strings.
        """
        self.assertLoadError(
            f'[tokens.web]\nsha256 = "{_hex("x")}"\nstreams = "outbound"\n',
            "tokens.web.streams: expected a list of non-empty strings",
        )

    def test_bad_limits(self) -> None:
        """
        C{max_recipients} and C{max_message_size} are whole numbers of at
        least 1.
        """
        for key in ("max_recipients", "max_message_size"):
            for value in ("0", "-1", "true", '"10"', "1.5"):
                self.assertLoadError(
                    f'[tokens.web]\nsha256 = "{_hex("x")}"\n{key} = {value}\n',
                    f"tokens.web.{key}: expected a whole number of at least 1",
                )

    def test_same_digest_twice(self) -> None:
        """
        Two entries for the same token are refused: the token's policy
        would be ambiguous.
        """
        self.assertLoadError(
            f'[tokens.a]\nsha256 = "{_hex("x")}"\n[tokens.b]\nsha256 = "{_hex("x").upper()}"\n',
            "tokens.b.sha256: same token as tokens.a",
        )

    def test_reload(self) -> None:
        """
        L{TokenStore.reload} reads the file again.
        """
        path = _write(self, f'[tokens.a]\nsha256 = "{_hex("old")}"\n')
        store = TokenStore.load(path)
        with open(path, "w") as f:
            f.write(f'[tokens.b]\nsha256 = "{_hex("new")}"\n')
        store.reload()
        self.assertIsNone(store.lookup("old"))
        self.assertEqual(store.lookup("new"), TokenPolicy("b"))

    def test_reload_keeps_old_tokens_on_error(self) -> None:
        """
        When the new file is invalid, L{TokenStore.reload} raises
        L{ConfigError} and the store keeps its tokens.
        """
        path = _write(self, f'[tokens.a]\nsha256 = "{_hex("old")}"\n')
        store = TokenStore.load(path)
        with open(path, "w") as f:
            f.write("[tokens.a]\nsha256 = 1\n")
        error = self.assertRaises(ConfigError, store.reload)
        self.assertEqual(str(error), f"{path}: tokens.a.sha256: expected 64 hexadecimal digits")
        self.assertEqual(store.lookup("old"), TokenPolicy("a"))

    def test_reload_keeps_old_tokens_when_missing(self) -> None:
        """
        When the file has gone, L{TokenStore.reload} raises L{ConfigError}
        and the store keeps its tokens.
        """
        path = _write(self, f'[tokens.a]\nsha256 = "{_hex("old")}"\n')
        store = TokenStore.load(path)
        os.unlink(path)
        self.assertRaises(ConfigError, store.reload)
        self.assertEqual(store.lookup("old"), TokenPolicy("a"))

    def test_reload_without_file(self) -> None:
        """
        A store made from plaintext tokens has no file to reload.
        """
        store = TokenStore.from_tokens({"a": "x"})
        self.assertRaises(ValueError, store.reload)


class CommandTests(SynchronousTestCase):
    """
    Tests for L{main}, the C{python -m relayd.tokens} command.
    """

    def setUp(self) -> None:
        self.folder = _folder(self)
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
        self.assertIn(_hex(token), text)
        self.assertNotIn(_hex(token), out + err)
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
        self.assertNotIn(_hex("website-token"), out)

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
        text = f'tokens = {{ a = {{ sha256 = "{_hex("a")}" }} }}\n'
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
        parser = relayd.tokens._parser(DEFAULT_TOKENS_FILE)
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
