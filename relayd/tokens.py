# -*- test-case-name: tests.test_tokens -*-
"""
API tokens: the tokens file, the in-memory store the SMTP AUTH checker asks,
and the C{python -m relayd.tokens} command that manages the file.

Clients authenticate with an API token as their AUTH password (RFC 4954).
The tokens file never holds a token, only its SHA-256 digest (FIPS 180-4),
with the policy that goes with it::

    # relayd tokens file: SHA-256 digests of API tokens, never the tokens.
    [tokens.website]
    sha256 = "<64 hex digits>"
    senders = ["example.com", "alerts@example.org"]  # optional, empty = any
    streams = ["outbound", "broadcast"]              # optional, empty = any
    max_recipients = 50                              # optional
    max_message_size = 10485760                      # optional, bytes
    attachments = false                              # optional, default true
    messages_per_minute = 120                        # optional
    # optional, at most one: the credential relayd sends upstream instead
    # of the client's token (read at start-up and reload, never stored here)
    upstream_credential_file = "/etc/relayd/sendgrid.key"
    upstream_credential_env = "SENDGRID_API_KEY"
    upstream_credential = "systemd:sendgrid"          # $CREDENTIALS_DIRECTORY/sendgrid

Tokens are long random strings (256 bits from L{secrets.token_urlsafe}), so
one unsalted SHA-256 is enough to make the file useless for logging in;
a slow password hash would only slow down every AUTH.

The file is read with blocking I/O: at start-up and on reload (SIGHUP),
never while connections are being served.

The command::

    python -m relayd.tokens add NAME [--file PATH] [--sender S ...]
        [--stream S ...] [--max-recipients N] [--max-message-size BYTES]
    python -m relayd.tokens list [--file PATH]
    python -m relayd.tokens remove NAME [--file PATH]

C{--file} defaults to C{$RELAYD_TOKENS_FILE}, else
C{/etc/relayd/tokens.toml}.  The daemon reads changes on reload
(C{systemctl reload relayd}, or SIGHUP).

This module imports no reactor code.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import hmac
import json
import os
import re
import secrets
import sys
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, TextIO

from attrs import field, frozen

from relayd.config import ConfigError, CredentialSource, credential_source, read_credential

__all__ = [
    "DEFAULT_TOKENS_FILE",
    "TOKEN_PREFIX",
    "TokenPolicy",
    "TokenStore",
    "digest",
    "main",
]

#: Where the command looks for the tokens file without C{--file} or
#: C{$RELAYD_TOKENS_FILE}.
DEFAULT_TOKENS_FILE = "/etc/relayd/tokens.toml"

#: What every generated token starts with, so that a leaked one is easy to
#: recognise (by people and by secret scanners).
TOKEN_PREFIX = "rly_"

#: The first lines of a tokens file created by the command.
_HEADER = (
    "# relayd tokens file: SHA-256 digests of API tokens, never the tokens.\n"
    "# Manage it with: python -m relayd.tokens add|list|remove\n"
    "# The daemon reads it on start-up and on reload (SIGHUP).\n"
)

#: Token names the command accepts: TOML bare keys (TOML 1.0, "Keys").
_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")

_HEX_DIGEST = re.compile(r"[0-9a-fA-F]{64}")

_KEYS = frozenset(
    {
        "sha256",
        "senders",
        "streams",
        "max_recipients",
        "max_message_size",
        "attachments",
        "messages_per_minute",
    }
)

# The held upstream credential (team2): where relayd reads the credential it
# sends upstream for this token.
_CREDENTIAL_KEYS = ("upstream_credential_file", "upstream_credential_env", "upstream_credential")
_KEYS |= frozenset(_CREDENTIAL_KEYS)


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


def _normalize_domain(domain: str) -> str:
    """
    Put a domain name in the form used for comparisons: lower case, no
    trailing dot, internationalized labels as A-labels (RFC 5890), so that
    C{bücher.example} and C{xn--bcher-kva.example} compare equal.

    @param domain: A domain name in U-label or A-label form.
    @type domain: L{str}
    @return: The comparable form; the lowered input when it is not a valid
        IDN.
    @rtype: L{str}
    """
    domain = domain.rstrip(".").lower()
    if domain.isascii():
        return domain
    try:
        return domain.encode("idna").decode("ascii")
    except UnicodeError:
        return domain


def _normalize_sender(entry: str) -> str:
    """
    Put one C{senders} entry (a domain, or an address) in comparable form.

    @param entry: C{"example.com"} or C{"alerts@example.org"}.
    @type entry: L{str}
    @rtype: L{str}
    """
    local, at, domain = entry.rpartition("@")
    if not at:
        return _normalize_domain(entry)
    return f"{local.lower()}@{_normalize_domain(domain)}"


def _strings(values: Iterable[str]) -> tuple[str, ...]:
    """
    Convert C{senders} and C{streams} to tuples, so policies stay hashable.
    """
    return tuple(values)


@frozen
class TokenPolicy:
    """
    What one token may do.

    @ivar name: The token's name in the tokens file (for logs; never the
        token).
    @ivar senders: Allowed sender domains (C{"example.com"}) and addresses
        (C{"alerts@example.org"}); empty means any.  Matched case-insensitively,
        domains exactly (a subdomain is a different domain).
    @ivar streams: Allowed message streams; empty means any.  Matched
        exactly.
    @ivar max_recipients: At most this many recipients per message, or
        C{None} for the server's limit.
    @ivar max_message_size: At most this many bytes per message, or C{None}
        for the server's limit.
    @ivar attachments: May messages carry attachments?  C{False} refuses
        a message with one at the end of DATA.
    @ivar messages_per_minute: At most this many transactions a minute for
        this credential (counted at MAIL FROM), or C{None} for no limit.
    @ivar upstream_credential: Where the credential relayd sends upstream
        for this token is read from (L{TokenStore.upstream_credential}
        holds the credential), or C{None} to send the client's token.
    """

    name: str
    senders: tuple[str, ...] = field(default=(), converter=_strings)
    streams: tuple[str, ...] = field(default=(), converter=_strings)
    max_recipients: int | None = None
    max_message_size: int | None = None
    attachments: bool = True
    messages_per_minute: int | None = None
    # The held upstream credential (team2).
    upstream_credential: CredentialSource | None = None

    def allows_sender(self, address: str) -> bool:
        """
        May this token send mail from C{address}?

        An entry with an C{@} matches the whole address; any other entry
        matches the address's domain.  Both ignore case (in the local part
        too: RFC 5321 section 2.4 lets the receiving host decide, and every
        provider API treats it so); internationalized domains match in
        either U-label or A-label form.

        @param address: A mailbox, C{local@domain}, without angle brackets.
        @type address: L{str}
        @return: C{True} if C{senders} is empty or an entry matches;
            C{False} otherwise, including for an address without C{@} (such
            as the null reverse-path C{""}) when C{senders} is not empty.
        @rtype: L{bool}
        """
        if not self.senders:
            return True
        local, at, domain = address.rpartition("@")
        if not at or not local or not domain:
            return False
        domain = _normalize_domain(domain)
        whole = f"{local.lower()}@{domain}"
        for entry in self.senders:
            normalized = _normalize_sender(entry)
            if normalized == (whole if "@" in entry else domain):
                return True
        return False

    def allows_stream(self, stream: str | None) -> bool:
        """
        May this token send to message stream C{stream}?

        @param stream: The stream the message asks for (after the server's
            default is applied), or C{None} for none.
        @type stream: L{str} or L{None}
        @return: C{True} if C{streams} is empty or holds C{stream};
            C{False} otherwise, including for C{None} when C{streams} is not
            empty.
        @rtype: L{bool}
        """
        if not self.streams:
            return True
        return stream is not None and stream in self.streams


def _string_list(value: Any, key: str) -> tuple[str, ...]:
    """
    Check a list of non-empty strings.

    @raise ConfigError: (without the file name) when it is not one.
    """
    if not isinstance(value, list) or not all(
        isinstance(v, str) and v and v.strip() == v for v in value
    ):
        raise ConfigError(f"{key}: expected a list of non-empty strings")
    return tuple(value)


def _positive(value: Any, key: str) -> int:
    """
    Check a whole number of at least 1.

    @raise ConfigError: (without the file name) when it is not one.
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{key}: expected a whole number of at least 1")
    return value


def _boolean(value: Any, key: str) -> bool:
    """
    Check a boolean.

    @raise ConfigError: (without the file name) when it is not one.
    """
    if not isinstance(value, bool):
        raise ConfigError(f"{key}: expected true or false")
    return value


def _credential(table: dict[str, Any], prefix: str, base: str) -> CredentialSource | None:
    """
    Check the held upstream credential keys of one C{[tokens.NAME]} table.

    @param base: The tokens file's folder: relative paths are resolved
        against it.
    @return: Where the credential is read from, or C{None}.
    @raise ConfigError: (without the file name) when they are wrong.
    """
    values = []
    for key in _CREDENTIAL_KEYS:
        value = table.get(key, "")
        if not isinstance(value, str) or (key in table and not value):
            raise ConfigError(f"{prefix}.{key}: expected a non-empty string")
        values.append(value)
    file, env, systemd = values
    if file and not os.path.isabs(file):
        file = os.path.join(base, file)
    return credential_source(file, env, systemd, prefix, _CREDENTIAL_KEYS)


def _entry(name: str, table: Any, base: str = "") -> tuple[bytes, TokenPolicy]:
    """
    Check one C{[tokens.NAME]} table.

    @return: The digest and the policy.
    @raise ConfigError: (without the file name) when the table is wrong.
    """
    prefix = f"tokens.{name}"
    if not isinstance(table, dict):
        raise ConfigError(f"{prefix}: expected a table")
    for key in table:
        if key not in _KEYS:
            raise ConfigError(f"{prefix}.{key}: unknown setting")
    if "sha256" not in table:
        raise ConfigError(f"{prefix}.sha256: required setting is missing")
    hex_digest = table["sha256"]
    if not isinstance(hex_digest, str) or not _HEX_DIGEST.fullmatch(hex_digest):
        raise ConfigError(f"{prefix}.sha256: expected 64 hexadecimal digits")
    senders = _string_list(table.get("senders", []), f"{prefix}.senders")
    for sender in senders:
        local, at, domain = sender.rpartition("@")
        if at and (not local or not domain or "@" in local):
            raise ConfigError(f"{prefix}.senders: expected domains or local@domain addresses")
    policy = TokenPolicy(
        name=name,
        senders=senders,
        streams=_string_list(table.get("streams", []), f"{prefix}.streams"),
        max_recipients=(
            _positive(table["max_recipients"], f"{prefix}.max_recipients")
            if "max_recipients" in table
            else None
        ),
        max_message_size=(
            _positive(table["max_message_size"], f"{prefix}.max_message_size")
            if "max_message_size" in table
            else None
        ),
        attachments=_boolean(table.get("attachments", True), f"{prefix}.attachments"),
        messages_per_minute=(
            _positive(table["messages_per_minute"], f"{prefix}.messages_per_minute")
            if "messages_per_minute" in table
            else None
        ),
        upstream_credential=_credential(table, prefix, base),
    )
    return bytes.fromhex(hex_digest), policy


def _parse(text: str, label: str) -> tuple[tuple[bytes, TokenPolicy], ...]:
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
            entry = _entry(name, table, os.path.dirname(os.path.abspath(label)))
            if entry[0] in seen:
                raise ConfigError(f"tokens.{name}.sha256: same token as tokens.{seen[entry[0]]}")
            seen[entry[0]] = name
            entries.append(entry)
    except ConfigError as e:
        raise ConfigError(f"{label}: {e}") from None
    return tuple(entries)


def _read_text(path: str) -> str:
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
        entries = _parse(_read_text(path), path)
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
        entries = _parse(_read_text(self.path), self.path)
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


# The command.


class _Refused(Exception):
    """
    The command cannot do what was asked: print the message, exit 2.
    """


def _describe(policy: TokenPolicy) -> str:
    """
    One line about a token's policy, for C{list}: never the digest.
    """

    def join(values: tuple[str, ...]) -> str:
        return ",".join(values) if values else "any"

    parts = [
        f"senders={join(policy.senders)}",
        f"streams={join(policy.streams)}",
    ]
    if policy.max_recipients is not None:
        parts.append(f"max_recipients={policy.max_recipients}")
    if policy.max_message_size is not None:
        parts.append(f"max_message_size={policy.max_message_size}")
    if not policy.attachments:
        parts.append("attachments=false")
    if policy.messages_per_minute is not None:
        parts.append(f"messages_per_minute={policy.messages_per_minute}")
    if policy.upstream_credential is not None:
        source = policy.upstream_credential
        parts.append(f"upstream_credential={source.kind}:{source.name}")
    return f"{policy.name}  " + " ".join(parts)


def _toml_strings(values: Sequence[str]) -> str:
    """
    A TOML array of basic strings.  JSON's escapes (C{\\"}, C{\\\\},
    C{\\n}, C{\\uXXXX}, ...) are all valid TOML escapes; non-ASCII text
    is kept as it is (TOML is UTF-8).  The one character JSON leaves alone
    that TOML forbids, U+007F, makes the caller's check refuse the entry.
    """
    return "[" + ", ".join(json.dumps(v, ensure_ascii=False) for v in values) + "]"


def _entry_text(
    name: str,
    hex_digest: str,
    senders: Sequence[str],
    streams: Sequence[str],
    max_recipients: int | None,
    max_message_size: int | None,
) -> str:
    """
    The TOML text of one C{[tokens.NAME]} table.
    """
    lines = [f"[tokens.{name}]", f'sha256 = "{hex_digest}"']
    if senders:
        lines.append(f"senders = {_toml_strings(senders)}")
    if streams:
        lines.append(f"streams = {_toml_strings(streams)}")
    if max_recipients is not None:
        lines.append(f"max_recipients = {max_recipients}")
    if max_message_size is not None:
        lines.append(f"max_message_size = {max_message_size}")
    return "\n".join(lines) + "\n"


def _read_if_exists(path: str) -> str | None:
    """
    The text of the tokens file, or C{None} if there is none yet.

    @raise ConfigError: When it exists but cannot be read.
    """
    try:
        return _read_text(path)
    except ConfigError:
        if not os.path.lexists(path):
            return None
        raise


def _add(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """
    C{add NAME}: make a token, append its digest, print it once.
    """
    name: str = args.name
    if not _NAME.fullmatch(name):
        raise _Refused(f"{name!r}: a token name is 1 to 64 letters, digits, '-' or '_'")
    path: str = args.file
    existing = _read_if_exists(path)
    if existing is not None:
        document = _parse(existing, path)
        if any(policy.name == name for _, policy in document):
            raise _Refused(f"{path}: a token named {name!r} already exists")
    if args.token_stdin:
        # An existing token (for example the provider's server token, which
        # relayd forwards upstream): read it, store only its digest.
        token = sys.stdin.readline().strip()
        if not token:
            raise _Refused("--token-stdin: no token on standard input")
    else:
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    entry = _entry_text(
        name,
        digest(token).hex(),
        args.sender,
        args.stream,
        args.max_recipients,
        args.max_message_size,
    )
    if existing is None:
        new = _HEADER + "\n" + entry
    else:
        separator = "" if not existing or existing.endswith("\n") else "\n"
        new = existing + separator + "\n" + entry
    # Check the result with the daemon's own parser before writing, so the
    # command never leaves a file the daemon would refuse.
    try:
        _parse(new, path)
    except ConfigError as e:
        raise _Refused(str(e)) from None

    if existing is None:
        folder = os.path.dirname(path)
        if folder:
            os.makedirs(folder, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(new)
    else:
        # Append in place: the file keeps its owner, group and mode (the
        # daemon's user must still be able to read it).
        with open(path, "a", encoding="utf-8") as f:
            f.write(new[len(existing) :])

    if args.token_stdin:
        err.write(f"Added the given token as {name!r} to {path}.\n")
        err.write(
            "The running daemon picks it up on reload (systemctl reload relayd, or SIGHUP).\n"
        )
        return 0
    out.write(token + "\n")
    err.write(
        f"Added token {name!r} to {path}.\n"
        "This is the only time the token is shown: relayd stores only its "
        "SHA-256 digest.\n"
        "The running daemon picks it up on reload "
        "(systemctl reload relayd, or SIGHUP).\n"
    )
    return 0


def _list(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """
    C{list}: names and policies, one per line.
    """
    # Parse only: listing does not need the upstream credentials readable.
    policies = [policy for _, policy in _parse(_read_text(args.file), args.file)]
    out.writelines(_describe(policy) + "\n" for policy in policies)
    if not policies:
        err.write(f"{args.file}: no tokens\n")
    return 0


_HEADER_LINE = re.compile(r"\s*\[[^\[].*")


def _table_path(line: str) -> tuple[str, ...] | None:
    """
    The dotted key of a TOML table header line, or C{None} if the line is
    not one.
    """
    if not _HEADER_LINE.fullmatch(line.rstrip("\n")):
        return None
    try:
        document: Any = tomllib.loads(line)
    except tomllib.TOMLDecodeError:
        return None
    path: list[str] = []
    while isinstance(document, dict) and len(document) == 1:
        (key, document) = next(iter(document.items()))
        path.append(key)
    return tuple(path)


def _remove(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """
    C{remove NAME}: delete the C{[tokens.NAME]} table.
    """
    name: str = args.name
    path: str = args.file
    text = _read_text(path)
    before = _parse(text, path)
    if not any(policy.name == name for _, policy in before):
        raise _Refused(f"{path}: no token named {name!r}")

    lines = text.splitlines(keepends=True)
    kept: list[str] = []
    removing = False
    for line in lines:
        table = _table_path(line)
        if table is not None:
            removing = table == ("tokens", name)
        if not removing:
            kept.append(line)
    while len(kept) > 1 and not kept[-1].strip() and not kept[-2].strip():
        kept.pop()
    new = "".join(kept)

    # The edit is textual; check that exactly that token went away.
    after = _parse(new, path)
    if after != tuple(e for e in before if e[1].name != name):
        raise _Refused(
            f"{path}: tokens.{name} is not written as a plain [tokens.{name}] "
            "table; remove it by hand"
        )
    # Rewrite in place: the file keeps its owner, group and mode.
    with open(path, "r+", encoding="utf-8") as f:
        f.write(new)
        f.truncate()
    err.write(
        f"Removed token {name!r} from {path}.\n"
        "The running daemon drops it on reload "
        "(systemctl reload relayd, or SIGHUP).\n"
    )
    return 0


def _parser(default_file: str) -> argparse.ArgumentParser:
    """
    The command's argument parser.
    """
    parser = argparse.ArgumentParser(
        prog="python -m relayd.tokens",
        description="Manage relayd's API tokens file.",
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--file",
        default=default_file,
        help="the tokens file (default: $RELAYD_TOKENS_FILE or "
        f"{DEFAULT_TOKENS_FILE}; now {default_file})",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    add = commands.add_parser(
        "add",
        parents=[common],
        help="create a token, print it once, store its digest",
    )
    add.add_argument("name", help="a label for the token (letters, digits, - and _)")
    add.add_argument(
        "--sender",
        action="append",
        default=[],
        metavar="DOMAIN_OR_ADDRESS",
        help="allowed sender domain or address (repeat; default: any)",
    )
    add.add_argument(
        "--stream",
        action="append",
        default=[],
        help="allowed message stream (repeat; default: any)",
    )
    add.add_argument(
        "--max-recipients",
        type=int,
        metavar="N",
        help="at most N recipients per message",
    )
    add.add_argument(
        "--max-message-size",
        type=int,
        metavar="BYTES",
        help="at most BYTES per message",
    )
    add.add_argument(
        "--token-stdin",
        action="store_true",
        help="store the digest of a token read from standard input (for example"
        " the email provider's API token, which relayd passes upstream) instead"
        " of generating one",
    )
    add.set_defaults(run=_add)

    listing = commands.add_parser("list", parents=[common], help="show token names and policies")
    listing.set_defaults(run=_list)

    remove = commands.add_parser("remove", parents=[common], help="delete a token")
    remove.add_argument("name")
    remove.set_defaults(run=_remove)
    return parser


def main(
    argv: Sequence[str] | None = None,
    *,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
    environ: Mapping[str, str] | None = None,
) -> int:
    """
    Run the C{python -m relayd.tokens} command.

    @param argv: The arguments after the program name; C{sys.argv[1:]} when
        C{None}.
    @param stdout: Where the new token goes (and C{list}'s output);
        L{sys.stdout} when C{None}.
    @param stderr: Where notes and errors go; L{sys.stderr} when C{None}.
    @param environ: The environment, for C{RELAYD_TOKENS_FILE};
        L{os.environ} when C{None}.
    @return: The exit status: C{0} done, C{1} the file cannot be read,
        written or parsed, C{2} bad arguments or refused (a duplicate name,
        an unknown name).
    @rtype: L{int}
    """
    out = sys.stdout if stdout is None else stdout
    err = sys.stderr if stderr is None else stderr
    env = os.environ if environ is None else environ
    parser = _parser(env.get("RELAYD_TOKENS_FILE") or DEFAULT_TOKENS_FILE)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            args = parser.parse_args(argv)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 2
    try:
        status: int = args.run(args, out, err)
    except _Refused as e:
        err.write(f"relayd.tokens: {e}\n")
        return 2
    except ConfigError as e:
        err.write(f"relayd.tokens: {e}\n")
        return 1
    except OSError as e:
        err.write(f"relayd.tokens: {args.file}: {e.strerror or e}\n")
        return 1
    return status


if __name__ == "__main__":
    sys.exit(main())
