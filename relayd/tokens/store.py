# -*- test-case-name: tests.tokens.test_store -*-
"""
The tokens file and the in-memory store the SMTP AUTH checker asks:
L{TokenStore}, by SHA-256 digest, with the held upstream credentials its
policies name, reloadable on SIGHUP.

Clients authenticate with an API token as their AUTH password (RFC 4954).
The tokens file never holds a token, only its SHA-256 digest (FIPS 180-4),
with the policy that goes with it (one C{[tokens.NAME]} table per token,
see L{relayd.tokens.policy}).

Tokens are long random strings (256 bits from L{secrets.token_urlsafe}), so
one unsalted SHA-256 is enough to make the file useless for logging in;
a slow password hash would only slow down every AUTH.

The file is read with blocking I/O: at start-up and on reload (SIGHUP),
never while connections are being served.

This module imports no reactor code.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import tomllib
from collections.abc import Iterable, Mapping, Sequence

from relayd.config import ConfigError, read_credential
from relayd.tokens.policy import TokenPolicy, parse_table

__all__ = ["TokenStore", "digest", "parse_tokens", "read_tokens"]


def digest(token: str) -> bytes:
    """
    The SHA-256 digest the tokens file stores for C{token}.

    @param token: An API token.
    @type token: L{str}
    @return: 32 bytes: SHA-256 of the token's UTF-8 encoding.
    @rtype: L{bytes}
    @raise UnicodeEncodeError: When C{token} has lone surrogates.
    """
    return hashlib.sha256(token.encode("utf-8")).digest()


def parse_tokens(text: str, label: str) -> tuple[tuple[bytes, TokenPolicy], ...]:
    """
    Parse a tokens file.

    @param text: The TOML document.
    @param label: The file's path, for messages.
    @return: The digests and policies, in file order.
    @raise ConfigError: C{"<label>: <dotted.key>: <what is wrong>"}.
    """
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{label}: not valid TOML: {e}") from None
    try:
        for key in document:
            if key != "tokens":
                raise ConfigError(f"{key}: unknown setting")
        tokens = document.get("tokens", {})
        if not isinstance(tokens, dict):
            raise ConfigError("tokens: expected a table")
        entries = []
        seen: dict[bytes, str] = {}
        for name, table in tokens.items():
            entry = parse_table(name, table, os.path.dirname(os.path.abspath(label)))
            if entry[0] in seen:
                raise ConfigError(f"tokens.{name}.sha256: same token as tokens.{seen[entry[0]]}")
            seen[entry[0]] = name
            entries.append(entry)
    except ConfigError as e:
        raise ConfigError(f"{label}: {e}") from None
    return tuple(entries)


def read_tokens(path: str) -> str:
    """
    Read a tokens file.

    @raise ConfigError: When it is missing or unreadable.
    """
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot be read: {e}") from None


class TokenStore:
    """
    The tokens the server accepts, by SHA-256 digest.

    @ivar path: The tokens file this store reloads from, or C{None}.
    """

    def __init__(
        self,
        entries: Iterable[tuple[bytes, TokenPolicy]],
        path: str | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        """
        @param entries: Pairs of a token's SHA-256 digest (32 bytes) and its
            policy.
        @param path: The tokens file, for L{reload}, or C{None}.
        @param environ: The environment the policies' upstream credentials
            are read with (L{os.environ} when C{None}); blocking when a
            policy names one.
        @raise ConfigError: When a named upstream credential cannot be read.
        """
        self._environ = os.environ if environ is None else environ
        self._entries = tuple(entries)
        self._credentials = _read_credentials(self._entries, self._environ)
        self.path = path

    @classmethod
    def load(cls, path: str, environ: Mapping[str, str] | None = None) -> TokenStore:
        """
        Read the tokens file at C{path}, and the upstream credentials its
        policies name.  Blocking: call at start-up only.

        @param path: File-system path of the TOML tokens file.
        @type path: L{str}
        @param environ: See L{__init__}.
        @rtype: L{TokenStore}
        @raise ConfigError: When the file is missing, unreadable or invalid,
            or a credential it names cannot be read; the one-line message is
            C{"<path>: tokens.<name>.<key>: ..."} (never the credential).
        """
        entries = parse_tokens(read_tokens(path), path)
        try:
            return cls(entries, path, environ)
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}") from None

    @classmethod
    def from_tokens(cls, tokens: Mapping[str, str]) -> TokenStore:
        """
        Make a store from plaintext tokens, with no restrictions: for tests
        and development.

        @param tokens: Token name to plaintext token.
        @type tokens: L{Mapping} of L{str} to L{str}
        @rtype: L{TokenStore}
        """
        return cls((digest(token), TokenPolicy(name)) for name, token in tokens.items())

    def lookup(self, token: str) -> TokenPolicy | None:
        """
        Find the policy of C{token}.

        The token's digest is compared with every stored digest with
        L{hmac.compare_digest}, without stopping at a match, so the time
        taken says nothing about which digest (or how much of one) matched.

        @param token: The token a client presented.
        @type token: L{str}
        @return: Its policy, or C{None} if the token is unknown.
        @rtype: L{TokenPolicy} or L{None}
        """
        try:
            presented = digest(token)
        except UnicodeEncodeError:
            return None
        found = None
        for stored, policy in self._entries:
            if hmac.compare_digest(stored, presented):
                found = policy
        return found

    def upstream_credential(self, policy: TokenPolicy) -> str | None:
        """
        The credential relayd holds for C{policy}'s token, read when the
        store was loaded (or reloaded): never logged, never in the tokens
        file.

        @param policy: A policy from L{lookup}.
        @return: The credential to send upstream instead of the client's
            token, or C{None} when the policy names none.
        @rtype: L{str} or L{None}
        """
        return self._credentials.get(policy.name)

    def policies(self) -> tuple[TokenPolicy, ...]:
        """
        The policies of every token, in file order (for listings and logs).

        @rtype: L{tuple} of L{TokenPolicy}
        """
        return tuple(policy for _, policy in self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def reload(self) -> None:
        """
        Read the tokens file again (on SIGHUP).  Blocking.

        When the new file is missing or invalid, the store keeps the tokens
        it had and the error is raised for the caller to log.

        @raise ConfigError: When the file cannot be used.
        @raise ValueError: When this store was not loaded from a file.
        """
        if self.path is None:
            raise ValueError("this token store has no file to reload")
        entries = parse_tokens(read_tokens(self.path), self.path)
        try:
            credentials = _read_credentials(entries, self._environ)
        except ConfigError as e:
            raise ConfigError(f"{self.path}: {e}") from None
        self._entries, self._credentials = entries, credentials


def _read_credentials(
    entries: Sequence[tuple[bytes, TokenPolicy]], environ: Mapping[str, str]
) -> dict[str, str]:
    """
    Read the upstream credential of every policy that names one.  Blocking.

    @return: Policy name to credential.
    @raise ConfigError: (without the file name) when one cannot be read.
    """
    return {
        policy.name: read_credential(policy.upstream_credential, environ)
        for _, policy in entries
        if policy.upstream_credential is not None
    }
