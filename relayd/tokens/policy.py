# -*- test-case-name: tests.tokens.test_policy -*-
"""
What one API token may do: L{TokenPolicy}, and the parsing of one
C{[tokens.NAME]} table of the tokens file into a digest and a policy
(L{parse_table}).

The table's keys (all but C{sha256} optional)::

    [tokens.website]
    sha256 = "<64 hex digits>"
    senders = ["example.com", "alerts@example.org"]  # empty = any
    streams = ["outbound", "broadcast"]              # empty = any
    max_recipients = 50
    max_message_size = 10485760                      # bytes
    attachments = false                              # default true
    messages_per_minute = 120
    # at most one: the credential relayd sends upstream instead of the
    # client's token (read by the store, never kept in the file)
    upstream_credential_file = "/etc/relayd/sendgrid.key"
    upstream_credential_env = "SENDGRID_API_KEY"
    upstream_credential = "systemd:sendgrid"          # $CREDENTIALS_DIRECTORY/sendgrid

This module imports no reactor code.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from typing import Any

from attrs import field, frozen

from relayd.config import ConfigError, CredentialSource, credential_source

__all__ = ["TokenPolicy", "parse_table"]

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


def parse_table(name: str, table: Any, base: str = "") -> tuple[bytes, TokenPolicy]:
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
