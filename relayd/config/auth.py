# -*- test-case-name: tests.test_config -*-
"""
The C{[auth]} table (who may submit, what is forwarded upstream) with its
C{[auth.defaults]} policy, and their checks.

This module imports no reactor code.
"""

from __future__ import annotations

import re
from typing import Literal

from attrs import field, frozen

from relayd.config.reading import ConfigError

__all__ = ["USERNAME_RULES", "AuthConfig", "PolicyConfig", "check_auth"]


@frozen
class PolicyConfig:
    """
    The C{[auth.defaults]} table: the per-customer policy applied when the
    auth backend (or the tokens file) says nothing about a key.  Same keys
    as a tokens file entry and the http backend's JSON answer
    (C{docs/upstream-api.md}, "Auth contract").

    @ivar senders: Allowed sender addresses and domains; empty means any.
    @ivar streams: Allowed streams; empty means any.
    @ivar max_recipients: Recipients per transaction (0: the server's limit).
    @ivar max_message_size: Bytes per message (0: the server's limit).
    @ivar attachments: Messages may carry attachments.
    @ivar messages_per_minute: Transactions a minute per credential (0: no
        limit).
    """

    senders: tuple[str, ...] = ()
    streams: tuple[str, ...] = ()
    max_recipients: int = 0
    max_message_size: int = 0
    attachments: bool = True
    messages_per_minute: int = 0


#: The C{[auth] usernames} words: which SMTP user names go with a token.
USERNAME_RULES = ("token", "apikey", "blank", "any")


@frozen
class AuthConfig:
    """
    The C{[auth]} table: who may submit, and what relayd forwards upstream.

    @ivar backend: C{"tokens_file"}: the local tokens file;
        C{"http"}: ask the provider's auth endpoint (C{url}) and cache its
        answer; C{"passthrough"}: accept any credential matching
        C{pattern} and let the upstream decide at the end of DATA.
    @ivar tokens_file: Path of the TOML tokens file (SHA-256 digests of API
        tokens, see L{relayd.tokens}); C{tokens_file} backend only.
    @ivar credentials: C{"token"}: the password is an API token and the
        user name is checked against C{usernames}; C{"account"}: user name
        and password together are the credential (C{http} and
        C{passthrough} only).
    @ivar usernames: With C{credentials = "token"}: the user names
        accepted, any of C{"token"} (the token again), C{"apikey"} (that
        word, any case), C{"blank"} (empty) and C{"any"}.
    @ivar forward: How the credential reaches the upstream and the auth
        endpoint, as C{{token}} in C{upstream.token_format}: C{"password"}
        (the password as is) or C{"basic"} (C{base64(user:password)}, for
        C{Authorization: Basic}, RFC 7617).
    @ivar url: The auth endpoint (C{http} backend).
    @ivar timeout: Seconds to wait for the auth endpoint; then C{454}.
    @ivar cache_ttl: Seconds an accepted credential is remembered.
    @ivar negative_cache_ttl: Seconds a refused credential is remembered.
    @ivar cache_size: At most this many credentials remembered (each cache).
    @ivar pattern: Regular expression a credential must match in full
        (C{passthrough}; optional for the others: a credential that does
        not match is refused without asking).
    @ivar defaults: The policy where the backend gives none.
    """

    backend: Literal["tokens_file", "http", "passthrough"] = "tokens_file"
    tokens_file: str = ""
    credentials: Literal["token", "account"] = "token"
    usernames: tuple[str, ...] = ("blank", "apikey", "token")
    forward: Literal["password", "basic"] = "password"
    url: str = ""
    timeout: float = 5.0
    cache_ttl: float = 60.0
    negative_cache_ttl: float = 10.0
    cache_size: int = 10000
    pattern: str = ""
    defaults: PolicyConfig = field(factory=PolicyConfig)


def check_auth(auth: AuthConfig) -> None:
    """
    Cross-field checks of the C{[auth]} table.

    @param auth: The table.

    @raise ConfigError: (without the file name) naming the key.
    """
    if auth.backend == "tokens_file":
        if not auth.tokens_file:
            raise ConfigError("auth.tokens_file: required setting is missing")
        if auth.credentials == "account":
            raise ConfigError("auth.credentials: 'account' needs the http or passthrough backend")
    if auth.backend == "http" and not auth.url.startswith(("http://", "https://")):
        raise ConfigError("auth.url: expected an http:// or https:// URL")
    if auth.backend == "passthrough" and not auth.pattern:
        raise ConfigError("auth.pattern: required setting is missing")
    if auth.pattern:
        try:
            re.compile(auth.pattern)
        except re.error as e:
            raise ConfigError(f"auth.pattern: not a regular expression: {e}") from None
    for word in auth.usernames:
        if word not in USERNAME_RULES:
            raise ConfigError(
                "auth.usernames: expected any of " + ", ".join(repr(w) for w in USERNAME_RULES)
            )
    if not auth.usernames:
        raise ConfigError("auth.usernames: expected at least one")
