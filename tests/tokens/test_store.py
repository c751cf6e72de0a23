"""
Tests for L{relayd.tokens.store}: the token store, its lookups, and the
tokens file it loads and reloads.
"""

from __future__ import annotations

import hmac
import os

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from relayd.config import ConfigError
from relayd.tokens import (
    TokenPolicy,
    TokenStore,
    digest,
)
from tests.tokens.helpers import DEV_TOKENS, FULL, folder, hex_digest, write_tokens


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


class TokenStoreLoadTests(SynchronousTestCase):
    """
    Tests for L{TokenStore.load} and L{TokenStore.reload}.
    """

    def assertLoadError(self, text: str, message: str) -> None:
        """
        Loading C{text} raises L{ConfigError} with C{"<path>: <message>"}.
        """
        path = write_tokens(self, text)
        error = self.assertRaises(ConfigError, TokenStore.load, path)
        self.assertEqual(str(error), f"{path}: {message}")

    def test_load(self) -> None:
        """
        Every table becomes a policy; upper-case hex digests are accepted.
        """
        store = TokenStore.load(write_tokens(self, FULL))
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
        store = TokenStore.load(write_tokens(self, "# nothing yet\n"))
        self.assertEqual(len(store), 0)
        self.assertIsNone(store.lookup("anything"))

    def test_missing_file(self) -> None:
        """
        A missing file is a L{ConfigError} naming it.
        """
        path = os.path.join(folder(self), "none.toml")
        error = self.assertRaises(ConfigError, TokenStore.load, path)
        self.assertEqual(str(error), f"{path}: no such file")

    def test_not_toml(self) -> None:
        """
        Text that is not TOML is a L{ConfigError}.
        """
        path = write_tokens(self, "[tokens.x\n")
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
            f'[tokens.web]\nsha256 = "{hex_digest("x")}"\nsender = ["a.example"]\n',
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
                f'[tokens.web]\nsha256 = "{hex_digest("x")}"\nsenders = {value}\n',
                f"tokens.web.senders: {message}",
            )

    def test_bad_streams(self) -> None:
        """
        C{streams} must be a list of non-empty strings.
        """
        self.assertLoadError(
            f'[tokens.web]\nsha256 = "{hex_digest("x")}"\nstreams = "outbound"\n',
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
                    f'[tokens.web]\nsha256 = "{hex_digest("x")}"\n{key} = {value}\n',
                    f"tokens.web.{key}: expected a whole number of at least 1",
                )

    def test_same_digest_twice(self) -> None:
        """
        Two entries for the same token are refused: the token's policy
        would be ambiguous.
        """
        self.assertLoadError(
            f'[tokens.a]\nsha256 = "{hex_digest("x")}"\n[tokens.b]\nsha256 = "{hex_digest("x").upper()}"\n',
            "tokens.b.sha256: same token as tokens.a",
        )

    def test_reload(self) -> None:
        """
        L{TokenStore.reload} reads the file again.
        """
        path = write_tokens(self, f'[tokens.a]\nsha256 = "{hex_digest("old")}"\n')
        store = TokenStore.load(path)
        with open(path, "w") as f:
            f.write(f'[tokens.b]\nsha256 = "{hex_digest("new")}"\n')
        store.reload()
        self.assertIsNone(store.lookup("old"))
        self.assertEqual(store.lookup("new"), TokenPolicy("b"))

    def test_reload_keeps_old_tokens_on_error(self) -> None:
        """
        When the new file is invalid, L{TokenStore.reload} raises
        L{ConfigError} and the store keeps its tokens.
        """
        path = write_tokens(self, f'[tokens.a]\nsha256 = "{hex_digest("old")}"\n')
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
        path = write_tokens(self, f'[tokens.a]\nsha256 = "{hex_digest("old")}"\n')
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
