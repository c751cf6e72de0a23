# -*- test-case-name: tests.tokens.test_command -*-
"""
The C{relayd tokens} (C{python -m relayd.tokens}) command, which manages
the tokens file::

    python -m relayd.tokens add NAME [--file PATH] [--sender S ...]
        [--stream S ...] [--max-recipients N] [--max-message-size BYTES]
        [--token-stdin]
    python -m relayd.tokens list [--file PATH]
    python -m relayd.tokens remove NAME [--file PATH]

C{--file} defaults to C{$RELAYD_TOKENS_FILE}, else
C{/etc/relayd/tokens.toml}.  The daemon reads changes on reload
(C{systemctl reload relayd}, or SIGHUP).  Every edit is checked with the
daemon's own parser (L{relayd.tokens.store.parse_tokens}) before it is
written.

This module imports no reactor code.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import secrets
import sys
import tomllib
from collections.abc import Mapping, Sequence
from typing import Any, TextIO

from relayd.config import ConfigError
from relayd.tokens.policy import TokenPolicy
from relayd.tokens.store import digest, parse_tokens, read_tokens

__all__ = ["DEFAULT_TOKENS_FILE", "TOKEN_PREFIX", "main"]

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
        return read_tokens(path)
    except ConfigError:
        if not os.path.lexists(path):
            return None
        raise


def _token(args: argparse.Namespace) -> str:
    """
    The token C{add} stores: read from standard input (C{--token-stdin}),
    else a new one.

    @raise _Refused: When standard input has no token.
    """
    if args.token_stdin:
        # An existing token (for example the provider's server token, which
        # relayd forwards upstream): read it, store only its digest.
        token = sys.stdin.readline().strip()
        if not token:
            raise _Refused("--token-stdin: no token on standard input")
        return token
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def _with_entry(existing: str | None, entry: str) -> str:
    """
    The tokens file's new text: C{entry} appended to C{existing}, or a new
    file (L{_HEADER}, then C{entry}) when there is none.
    """
    if existing is None:
        return _HEADER + "\n" + entry
    separator = "" if not existing or existing.endswith("\n") else "\n"
    return existing + separator + "\n" + entry


def _write_added(path: str, existing: str | None, new: str) -> None:
    """
    Write the tokens file's new text C{new}: a new file of mode C{0600}
    (its folder created), or the added part appended to C{existing} in
    place, so the file keeps its owner, group and mode (the daemon's user
    must still be able to read it).

    @raise OSError: When it cannot be written.
    """
    if existing is None:
        folder = os.path.dirname(path)
        if folder:
            os.makedirs(folder, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(new)
    else:
        with open(path, "a", encoding="utf-8") as f:
            f.write(new[len(existing) :])


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
        document = parse_tokens(existing, path)
        if any(policy.name == name for _, policy in document):
            raise _Refused(f"{path}: a token named {name!r} already exists")
    token = _token(args)
    entry = _entry_text(
        name,
        digest(token).hex(),
        args.sender,
        args.stream,
        args.max_recipients,
        args.max_message_size,
    )
    new = _with_entry(existing, entry)
    # Check the result with the daemon's own parser before writing, so the
    # command never leaves a file the daemon would refuse.
    try:
        parse_tokens(new, path)
    except ConfigError as e:
        raise _Refused(str(e)) from None
    _write_added(path, existing, new)

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
    policies = [policy for _, policy in parse_tokens(read_tokens(args.file), args.file)]
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
    text = read_tokens(path)
    before = parse_tokens(text, path)
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
    after = parse_tokens(new, path)
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
