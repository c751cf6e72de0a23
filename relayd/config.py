# -*- test-case-name: tests.test_config -*-
"""
relayd's configuration: frozen attrs classes loaded from a TOML file.

The file is read with the standard library's C{tomllib}.  Every table maps
onto one class below; every key onto one field.  A key the classes do not
know, a value of the wrong type or a missing file raises L{ConfigError}
whose message names the file and the dotted key, for example::

    etc/relayd.toml: upstream.timeout: expected a number of seconds

Relative paths in the file (certificates, tokens file, outbox) are resolved
against the directory that holds the configuration file.

This module imports no reactor code.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import attrs
from attrs import field, frozen

__all__ = [
    "AdminConfig",
    "AuthConfig",
    "Config",
    "ConfigError",
    "CredentialSource",
    "DevUpstreamConfig",
    "HeadersConfig",
    "IdempotencyConfig",
    "LimitsConfig",
    "ListenerConfig",
    "PolicyConfig",
    "StreamDefaultsConfig",
    "RouteConfig",
    "RouteUpstreamConfig",
    "RedisConfig",
    "ServerConfig",
    "TLSConfig",
    "UpstreamConfig",
    "credential_source",
    "load_config",
    "parse_config",
    "read_credential",
]

MiB = 1024 * 1024


class ConfigError(Exception):
    """
    The configuration cannot be used.

    C{str(error)} is one line meant for the operator:
    C{"<file>: <dotted.key>: <what is wrong>"}.
    """


@frozen
class ServerConfig:
    """
    The C{[server]} table.

    @ivar hostname: The name relayd gives in its 220 greeting and EHLO reply
        (RFC 5321 section 4.1.1.1 and 4.2).
    @ivar workers: How many processes accept connections; C{0} means one
        per CPU core.  The listening sockets are shared between them.
    @ivar proxy_networks: The networks (C{"10.0.0.0/8"}, C{"::1/128"}) the
        PROXY protocol headers of C{haproxy:} listeners are accepted from,
        unless the listener names its own.  A connection from elsewhere is
        refused (L{relayd.proxy}).
    @ivar proxy_timeout: Seconds a proxied connection has to send its
        PROXY header before it is closed.
    """

    hostname: str = "localhost"
    workers: int = 1
    proxy_networks: tuple[str, ...] = ()
    proxy_timeout: float = 5.0


@frozen
class ListenerConfig:
    """
    One C{[[listeners]]} entry.

    @ivar endpoint: A Twisted server endpoint description, for example
        C{"tcp:port=587:interface=0.0.0.0"} or C{"systemd:domain=INET:index=0"}.
    @ivar tls: C{"starttls"}: plain connection, STARTTLS offered (RFC 3207);
        C{"implicit"}: TLS from the first byte (RFC 8314 section 3).
    @ivar name: A label for logs (defaults to the endpoint).
    @ivar proxy_networks: For a C{haproxy:} endpoint: the networks PROXY
        headers are accepted from; empty: C{server.proxy_networks}.
    """

    endpoint: str
    tls: Literal["starttls", "implicit"] = "starttls"
    name: str = ""
    proxy_networks: tuple[str, ...] = ()


@frozen
class TLSConfig:
    """
    The C{[tls]} table: PEM files for the server certificate and the TLS
    policy of both STARTTLS and implicit TLS listeners.

    The policy defaults to Mozilla's "intermediate" server-side TLS profile
    (version 5.7, U{https://wiki.mozilla.org/Security/Server_Side_TLS}):
    TLS 1.2 and 1.3, forward secrecy and AEAD cipher suites only, key
    exchange groups X25519, P-256 and P-384.  Names are checked against
    OpenSSL when the daemon starts (L{relayd.tls}).

    @ivar certificate: Path of the PEM certificate chain (leaf first).
    @ivar key: Path of the PEM private key.
    @ivar generate_self_signed: Create a self-signed certificate and key at
        those paths on start-up when they do not exist (development only).
    @ivar minimum_version: Lowest TLS version offered: C{"1.2"} or C{"1.3"}.
    @ivar ciphers: The cipher suites offered, in OpenSSL's names: TLS 1.3
        suites (C{TLS_AES_128_GCM_SHA256}, the names that start with
        C{TLS_}) and TLS 1.2 suites (C{ECDHE-ECDSA-AES128-GCM-SHA256}).
    @ivar groups: The key exchange groups (elliptic curves) offered, in
        OpenSSL's names (C{X25519}, C{prime256v1}, C{secp384r1}).
    """

    certificate: str = ""
    key: str = ""
    generate_self_signed: bool = False
    minimum_version: Literal["1.2", "1.3"] = "1.2"
    ciphers: tuple[str, ...] = (
        "TLS_AES_128_GCM_SHA256",
        "TLS_AES_256_GCM_SHA384",
        "TLS_CHACHA20_POLY1305_SHA256",
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-CHACHA20-POLY1305",
    )
    groups: tuple[str, ...] = ("X25519", "prime256v1", "secp384r1")


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


@frozen
class UpstreamConfig:
    """
    The C{[upstream]} table: where and how accepted messages are sent.

    @ivar url: The HTTP(S) URL the dialect's request is sent to.
    @ivar dialect: The upstream API's request format: one of
        L{relayd.dialects.DIALECTS}.
    @ivar timeout: Seconds to wait for the upstream's whole answer.
    @ivar token_header: The request header that carries the client's token.
        The empty string means the dialect's own default.
    @ivar token_format: How the header value is built from the token;
        C{{token}} is replaced.  The empty string means the dialect's default.
    @ivar max_connections: Persistent connections kept per upstream host.
    @ivar idle_timeout: Seconds an idle persistent connection is kept
        before relayd closes it.  The default, 4, is below the shortest
        keep-alive timeout of common upstream servers (Node.js and Apache
        httpd: 5 s; nginx 75 s; AWS load balancers 60 s): relayd then closes
        an idle connection before the server does, so a request rarely
        meets a connection the server is closing at that very moment.
        Reconnecting after 4 s idle costs one TLS handshake.
    """

    url: str = "http://127.0.0.1:8025/send"
    dialect: str = "native"
    timeout: float = 30.0
    token_header: str = ""
    token_format: str = ""
    max_connections: int = 64
    idle_timeout: float = field(default=4.0)

    @idle_timeout.validator
    def _check_idle_timeout(self, attribute: Any, value: float) -> None:
        if not value > 0:
            raise ConfigError("upstream.idle_timeout: expected more than 0 seconds")


#: An int where 0 means off (not held to the "at least 1" of other limits).
_RateOrOff = int


def _check_rate(instance: Any, attribute: Any, value: int) -> None:
    """
    C{limits.messages_per_minute_per_*}: 0 (off) or more messages.
    """
    if value < 0:
        raise ConfigError(f"limits.{attribute.name}: expected 0 (off) or more messages")


@frozen
class LimitsConfig:
    """
    The C{[limits]} table: protocol limits and abuse protections.  Sizes are
    in bytes, durations in seconds.  See C{docs/security.md}.

    @ivar max_line_length: The longest line of message content, in octets
        without CRLF.  RFC 5322 section 2.1.1 says 998, but minified HTML
        from web applications has lines of several thousand octets, and
        relayd re-encodes every body for the upstream API anyway (the
        upstream builds the MIME message it sends), so the default is
        65536: a bound on memory, not the RFC's line length.  The framing
        stays strict whatever this says: only CRLF.CRLF ends DATA.
    """

    max_message_size: int = 25 * MiB
    max_recipients: int = 100
    max_line_length: int = 65536
    max_command_length: int = 512
    idle_timeout: float = 300.0
    data_timeout: float = 600.0
    session_timeout: float = 3600.0
    max_connections: int = 10000
    max_connections_per_ip: int = 50
    max_errors: int = 10
    max_auth_failures: int = 3
    auth_failures_per_ip: int = 10
    auth_failure_window: float = 600.0
    auth_lockout: float = 900.0
    max_messages_per_connection: int = 1000
    bare_newline: Literal["normalize", "reject"] = "normalize"
    # guards2: memory bound, slow clients, AUTH throttling (docs/security.md)
    # memory2: 128 MiB, so that ten 24 MB messages at once stay under 300 MiB
    # of peak growth (five admitted; a text body is held about three times
    # while it is parsed and encoded, an attachment about once).
    max_memory_bytes: int = 128 * MiB
    data_min_rate: int = 1024
    data_grace: float = 30.0
    auth_failures_per_credential: int = 5
    auth_exempt_networks: tuple[str, ...] = ()
    auth_exempt_listeners: tuple[str, ...] = ()
    # redis5: messages per minute at MAIL FROM, 0 = off (relayd.policy.MessageRates)
    messages_per_minute_per_token: _RateOrOff = field(default=0, validator=_check_rate)
    messages_per_minute_per_ip: _RateOrOff = field(default=0, validator=_check_rate)


@frozen
class StreamDefaultsConfig:
    """
    One C{[[headers.stream_defaults]]} entry: what a stream implies when the
    message does not say (Krafter: tracking off on C{transactional}, on
    and a List-Unsubscribe on C{broadcast}).

    @ivar stream: The stream these defaults are for.
    @ivar tracking: C{"on"} or C{"off"}: the tracking value when the
        tracking header is absent (or not C{true}/C{false}); C{"default"}:
        leave it to the upstream.
    @ivar list_unsubscribe: The list-unsubscribe value when the message has
        none (RFC 2369 syntax, C{<https://...>, <mailto:...>}); empty: none.
    """

    stream: str
    tracking: Literal["default", "on", "off"] = "default"
    list_unsubscribe: str = ""


@frozen
class HeadersConfig:
    """
    The C{[headers]} table: the header policy of this deployment.

    Header names are matched case-insensitively.  Patterns may end in C{*}
    to match a prefix (C{"X-*"}).

    @ivar tags: Headers tags are read from (comma separated values).
    @ivar max_tags: At most this many tags are sent; more are dropped.
    @ivar max_tag_length: Longer tags are cut to this many characters.
    @ivar stream: Header naming the message stream / type (empty: none).
    @ivar streams: Allowed stream values (empty: any value).
    @ivar default_stream: Stream used when the header is absent.
    @ivar tracking: Header with C{true}/C{false} tracking override.
    @ivar list_unsubscribe: Header mapped to the upstream's list-unsubscribe
        field.
    @ivar metadata_prefix: Headers C{<prefix><key>: value} become metadata.
    @ivar required: Header name to required value; a message without it
        gets C{550 5.7.1}.
    @ivar keep: Header patterns passed through to the upstream.
    @ivar strip: Header patterns never passed through (wins over C{keep}).
    @ivar keep_message_id: Pass C{Message-ID} through.
    @ivar required_forward: Required headers that are also passed through
        to the upstream (others are consumed).  A required value of C{"*"}
        asks for presence only (any non-empty value).
    @ivar stream_defaults: Per-stream defaults (L{StreamDefaultsConfig}).
    @ivar invalid_from: C{"refuse"}: a From without a valid address gets
        C{550 5.6.0}; C{"placeholder"}: the message goes with
        C{from_placeholder} as its From (enKod's C{EMPTY-FROM}).
    @ivar from_placeholder: The From given to the upstream for an invalid
        From with C{invalid_from = "placeholder"}.
    @ivar missing_from: A message without a From header field:
        C{"reject"} refuses it (C{550 5.6.0}, RFC 5322 section 3.6.2);
        C{"envelope"} adds C{From:} with the authenticated reverse-path, as
        a submission server may (RFC 6409 section 8.1); a message with the
        null reverse-path is refused either way.
    """

    tags: tuple[str, ...] = ("X-Tags",)
    max_tags: int = 10
    max_tag_length: int = 100
    stream: str = "X-Stream"
    streams: tuple[str, ...] = ()
    default_stream: str = ""
    tracking: str = "X-Track"
    list_unsubscribe: str = "X-List-Unsubscribe"
    metadata_prefix: str = "X-Metadata-"
    required: dict[str, str] = field(factory=dict)
    keep: tuple[str, ...] = (
        "In-Reply-To",
        "References",
        "List-*",
        "X-*",
        # RFC 3834 section 5: marks automatic mail, so that responders do
        # not answer it (and loop).
        "Auto-Submitted",
        # RFC 2076 section 3.9, RFC 3834 section 3.1.8: bulk/list mail.
        "Precedence",
        # Gmail's feedback loop identifier, set by the sender.
        "Feedback-ID",
    )
    strip: tuple[str, ...] = (
        "Received",
        "Return-Path",
        "DKIM-Signature",
        "ARC-*",
        "Authentication-Results",
        "Bcc",
        "Message-ID",
        "X-Original-To",
        "Delivered-To",
    )
    keep_message_id: bool = False
    required_forward: tuple[str, ...] = ()
    stream_defaults: tuple[StreamDefaultsConfig, ...] = ()
    invalid_from: Literal["refuse", "placeholder"] = "refuse"
    from_placeholder: str = "EMPTY-FROM"
    missing_from: Literal["reject", "envelope"] = "reject"


@frozen
class IdempotencyConfig:
    """
    The C{[idempotency]} table: how long relayd remembers what became of
    each transaction's upstream request (L{relayd.idempotency}).

    @ivar window: Seconds relayd keeps waiting for the upstream's answer
        after the client was told C{451} at C{upstream.timeout}, and keeps
        a retry of that message from being sent meanwhile; more than
        C{upstream.timeout}.
    @ivar max_records: Most idempotency records kept in memory; the
        oldest written is dropped first.
    """

    window: float = 600.0
    max_records: int = 100_000


@frozen
class DevUpstreamConfig:
    """
    The C{[dev_upstream]} table: the bundled development API
    (L{relayd.devupstream}) run inside the daemon.

    @ivar enabled: Run it.
    @ivar endpoint: Where it listens (bind it to 127.0.0.1 only).
    @ivar outbox: Folder where each received message is stored as JSON.
    """

    enabled: bool = False
    endpoint: str = "tcp:port=8025:interface=127.0.0.1"
    outbox: str = "var/outbox"


# -- upstream credentials and routes (team2) --------------------------------
#
# A credential is never written in a configuration or tokens file: the file
# names where relayd reads it at start-up and on reload (a file, an
# environment variable, or a systemd credential, systemd.exec(5),
# "Credentials").

#: What C{credential = "systemd:NAME"} starts with.
SYSTEMD_CREDENTIAL_PREFIX = "systemd:"

# systemd credential names: a file name in $CREDENTIALS_DIRECTORY.
_CREDENTIAL_NAME = re.compile(r"[A-Za-z0-9_.@:-]{1,255}")

# What an environment variable's name may be (POSIX.1-2017, 8.1).
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,254}")


@frozen
class CredentialSource:
    """
    Where one upstream credential is read from: never the credential.

    @ivar kind: C{"file"} (a path), C{"env"} (an environment variable) or
        C{"systemd"} (a name in C{$CREDENTIALS_DIRECTORY}).
    @ivar name: The path, the variable's name or the credential's name.
    @ivar key: The dotted key it was configured at, for messages.
    """

    kind: Literal["file", "env", "systemd"]
    name: str
    key: str

    def describe(self) -> str:
        """
        @return: For example C{"environment variable SENDGRID_KEY"}: safe
            to log (it names the source, not the credential).
        """
        what = {"file": "file", "env": "environment variable", "systemd": "systemd credential"}
        return f"{what[self.kind]} {self.name}"


def credential_source(
    file: str, env: str, systemd: str, key: str, names: tuple[str, str, str]
) -> CredentialSource | None:
    """
    Check the three ways of naming a credential; at most one may be given.

    @param file: The configured path, or C{""}.
    @param env: The configured environment variable's name, or C{""}.
    @param systemd: The configured C{"systemd:NAME"}, or C{""}.
    @param key: The dotted key of the table, for messages.
    @param names: The three keys' names, in the order of the arguments.
    @return: The source, or C{None} when none is given.
    @raise ConfigError: (without the file name) for several sources, an
        empty name, or a C{systemd} value that is not C{"systemd:NAME"}
        (which is also what a credential pasted in clear gets).
    """
    given = [n for n, v in zip(names, (file, env, systemd), strict=True) if v]
    if len(given) > 1:
        raise ConfigError(f"{key}: give only one of {', '.join(names)}")
    if file:
        return CredentialSource("file", file, f"{key}.{names[0]}")
    if env:
        if not _ENV_NAME.fullmatch(env):
            raise ConfigError(f"{key}.{names[1]}: expected an environment variable name")
        return CredentialSource("env", env, f"{key}.{names[1]}")
    if systemd:
        name = systemd.removeprefix(SYSTEMD_CREDENTIAL_PREFIX)
        if not systemd.startswith(SYSTEMD_CREDENTIAL_PREFIX) or not _CREDENTIAL_NAME.fullmatch(
            name
        ):
            raise ConfigError(
                f'{key}.{names[2]}: expected "systemd:NAME"; the credential itself never'
                f" goes in this file (use {names[0]} or {names[1]})"
            )
        return CredentialSource("systemd", name, f"{key}.{names[2]}")
    return None


def read_credential(source: CredentialSource, environ: Mapping[str, str]) -> str:
    """
    Read one credential.  Blocking: call at start-up or on reload only,
    never on the reactor thread while it serves.

    A file's (or systemd credential's) trailing line end and surrounding
    blanks are dropped, so C{echo KEY > file} works.

    @param source: Where to read it.
    @param environ: The process environment (for C{env}, and
        C{CREDENTIALS_DIRECTORY} for C{systemd}, set by systemd's
        C{LoadCredential=}).
    @return: The credential: non-empty, no control characters (it goes
        into an HTTP header field, RFC 9110 section 5.5).
    @raise ConfigError: C{"<key>: <source>: <what is wrong>"}; the message
        never holds the credential.
    """
    where = f"{source.key}: {source.describe()}"
    if source.kind == "env":
        if source.name not in environ:
            raise ConfigError(f"{where}: not set")
        value = environ[source.name]
    else:
        if source.kind == "systemd":
            folder = environ.get("CREDENTIALS_DIRECTORY", "")
            if not folder:
                raise ConfigError(
                    f"{where}: $CREDENTIALS_DIRECTORY is not set"
                    " (LoadCredential= in the systemd unit)"
                )
            path = os.path.join(folder, source.name)
        else:
            path = source.name
        try:
            with open(path, encoding="utf-8") as f:
                value = f.read()
        except FileNotFoundError:
            raise ConfigError(f"{where}: no such file") from None
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"{where}: cannot be read: {type(e).__name__}") from None
    value = value.strip()
    if not value:
        raise ConfigError(f"{where}: is empty")
    if any(c < " " or c == "\x7f" for c in value):
        raise ConfigError(f"{where}: holds a line break or control character")
    return value


@frozen
class RouteUpstreamConfig:
    """
    One upstream of a route (C{[[routes.upstreams]]}): the keys of
    C{[upstream]}, and the credential relayd sends instead of the client's
    token.

    @ivar credential_file: Path of a file holding the credential.
    @ivar credential_env: Name of an environment variable holding it.
    @ivar credential: C{"systemd:NAME"}: C{$CREDENTIALS_DIRECTORY/NAME}.
    """

    url: str
    dialect: str = "native"
    timeout: float = 30.0
    token_header: str = ""
    token_format: str = ""
    max_connections: int = 64
    credential_file: str = ""
    credential_env: str = ""
    credential: str = ""

    def upstream_config(self) -> UpstreamConfig:
        """
        @return: The C{[upstream]}-shaped table the upstream client takes.
        """
        return UpstreamConfig(
            url=self.url,
            dialect=self.dialect,
            timeout=self.timeout,
            token_header=self.token_header,
            token_format=self.token_format,
            max_connections=self.max_connections,
        )

    def credential_source(self, key: str) -> CredentialSource | None:
        """
        @param key: This table's dotted key (C{"routes[0].upstreams[1]"}).
        @return: Where its credential is read from, or C{None} to send the
            client's (or its token's held) credential.
        @raise ConfigError: See L{credential_source}.
        """
        return credential_source(
            self.credential_file,
            self.credential_env,
            self.credential,
            key,
            ("credential_file", "credential_env", "credential"),
        )


@frozen
class RouteConfig:
    """
    One C{[[routes]]} entry: which messages go to which upstreams, tried
    in order (the next only when the one before certainly did not take the
    message).

    A route matches when every criterion it gives matches (a list matches
    when any of its entries does); routes are tried in file order, the
    first match wins, and a message no route matches takes the default
    route: the one with C{default = true}, else C{[upstream]}.

    @ivar name: A label for logs.
    @ivar tokens: Token names (from the tokens file) this route is for.
    @ivar sender_domains: Domains of the reverse-path or of the From
        address (either matches), compared without case.
    @ivar streams: Message streams (the C{[headers] stream} header).
    @ivar default: This route replaces C{[upstream]} as the default; it
        then gives no criteria.
    @ivar upstreams: The upstreams, in failover order; at least one.
    """

    name: str
    tokens: tuple[str, ...] = ()
    sender_domains: tuple[str, ...] = ()
    streams: tuple[str, ...] = ()
    default: bool = False
    upstreams: tuple[RouteUpstreamConfig, ...] = ()


def _check_routes(config: Config, base: Path) -> Config:
    """
    The checks of C{[[routes]]}: names, criteria, one default, URLs and
    credential sources; relative C{credential_file} paths are resolved
    against C{base}.  Dialect names and the credentials themselves are
    checked when the router is built (L{relayd.routing.make_router}).
    """
    names: set[str] = set()
    defaults = []
    routes = []
    for i, route in enumerate(config.routes):
        key = f"routes[{i}]"
        if not route.name:
            raise ConfigError(f"{key}.name: expected a non-empty name")
        if route.name in names:
            raise ConfigError(f"{key}.name: {route.name!r} is used twice")
        names.add(route.name)
        criteria = route.tokens or route.sender_domains or route.streams
        if route.default:
            defaults.append(i)
            if criteria:
                raise ConfigError(
                    f"{key}.default: the default route takes no tokens, sender_domains or streams"
                )
        elif not criteria:
            raise ConfigError(f"{key}: give tokens, sender_domains or streams (or default = true)")
        if not route.upstreams:
            raise ConfigError(f"{key}.upstreams: at least one [[routes.upstreams]] is needed")
        upstreams = []
        for j, upstream in enumerate(route.upstreams):
            ukey = f"{key}.upstreams[{j}]"
            if not upstream.url.startswith(("http://", "https://")):
                raise ConfigError(f"{ukey}.url: expected an http:// or https:// URL")
            if upstream.max_connections < 1:
                raise ConfigError(f"{ukey}.max_connections: expected at least 1")
            source = upstream.credential_source(ukey)
            first = route.upstreams[0]
            if j and source is None and upstream.dialect != first.dialect:
                raise ConfigError(
                    f"{ukey}: a failover upstream of another dialect needs its own credential"
                    " (credential_file, credential_env or credential)"
                )
            if upstream.credential_file and not os.path.isabs(upstream.credential_file):
                upstream = attrs.evolve(
                    upstream, credential_file=str(base / upstream.credential_file)
                )
            upstreams.append(upstream)
        routes.append(
            attrs.evolve(
                route,
                sender_domains=tuple(d.rstrip(".").lower() for d in route.sender_domains),
                upstreams=tuple(upstreams),
            )
        )
    if len(defaults) > 1:
        raise ConfigError(
            f"routes[{defaults[1]}].default: only one route can be the default"
            f" (routes[{defaults[0]}] is)"
        )
    return attrs.evolve(config, routes=tuple(routes))


# -- obs2: [redis] and [admin] ------------------------------------------------


def _check_redis_url(instance: Any, attribute: Any, value: str) -> None:
    """
    C{redis.url}: empty (no Redis), or C{redis://[user:password@]host[:port][/db]}.
    """
    if not value:
        return
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(value)
        port = parts.port
        db = parts.path.strip("/")
    except ValueError:
        raise ConfigError("redis.url: expected redis://host:port/db") from None
    if parts.scheme != "redis" or not parts.hostname or (db and not db.isdigit()):
        raise ConfigError("redis.url: expected redis://host:port/db") from None
    del port


@frozen
class RedisConfig:
    """
    The C{[redis]} table: the shared state of a fleet of relayd processes
    (AUTH throttling and rate counters, idempotency outcomes, the auth
    cache), see L{relayd.redisstore} and C{docs/scaling.md}.

    @ivar url: C{redis://[user:password@]host[:port][/db]} (port 6379 and
        database 0 by default); empty: no Redis, every process keeps its
        own state.
    @ivar key_prefix: Put before every key relayd writes, so that several
        deployments can share one Redis.
    @ivar connect_timeout: Seconds to wait for a TCP connection to Redis.
    @ivar timeout: Seconds to wait for one command's answer before the
        in-process fallback answers instead.
    @ivar retry_interval: Seconds between attempts to use Redis again while
        it is unreachable (meanwhile the in-process state answers at once).
    """

    url: str = field(default="", validator=_check_redis_url)
    key_prefix: str = "relayd:"
    connect_timeout: float = 1.0
    timeout: float = 0.5
    retry_interval: float = 5.0


@frozen
class AdminConfig:
    """
    The C{[admin]} table: the HTTP listener with C{/metrics} (Prometheus),
    C{/healthz} and C{/readyz} (L{relayd.admin}).

    @ivar listen: A Twisted server endpoint description, for example
        C{"tcp:9025:interface=127.0.0.1"}; empty (the default): no admin
        listener.  It has no authentication: bind it to a loopback or
        management address only.
    @ivar upstream_fresh: C{/readyz} fails when the upstream has not
        answered (any HTTP status) for this many seconds while it was
        asked; an idle daemon stays ready.
    """

    listen: str = ""
    upstream_fresh: float = 60.0


@frozen
class Config:
    """
    The whole configuration file.

    @ivar path: The file it was loaded from (for messages), or C{""}.
    """

    server: ServerConfig = field(factory=ServerConfig)
    listeners: tuple[ListenerConfig, ...] = ()
    tls: TLSConfig = field(factory=TLSConfig)
    auth: AuthConfig = field(factory=AuthConfig)
    upstream: UpstreamConfig = field(factory=UpstreamConfig)
    limits: LimitsConfig = field(factory=LimitsConfig)
    headers: HeadersConfig = field(factory=HeadersConfig)
    dev_upstream: DevUpstreamConfig = field(factory=DevUpstreamConfig)
    replies: dict[str, str] = field(factory=dict)
    idempotency: IdempotencyConfig = field(factory=IdempotencyConfig)
    routes: tuple[RouteConfig, ...] = ()
    redis: RedisConfig = field(factory=RedisConfig)
    admin: AdminConfig = field(factory=AdminConfig)
    path: str = ""


# Fields that hold file-system paths, resolved against the config's folder.
_PATH_FIELDS = {
    ("tls", "certificate"),
    ("tls", "key"),
    ("auth", "tokens_file"),
    ("dev_upstream", "outbox"),
}

_HOSTNAME = re.compile(
    r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
)


def _describe(tp: Any) -> str:
    """
    Say in words what a value of type C{tp} looks like.
    """
    if tp is float:
        return "a number of seconds"
    if tp is int:
        return "a whole number"
    if tp is bool:
        return "true or false"
    if tp is str:
        return "a string"
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin is tuple:
        return "a list of strings"
    if origin is dict:
        return "a table of strings"
    return "a table"


def _convert(tp: Any, value: Any, key: str) -> Any:
    """
    Check C{value} against the annotated type C{tp} and convert it.

    @raise ConfigError: (without the file name) when it does not fit.
    """
    expected = _describe(tp)
    if attrs.has(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected {expected}")
        return _build(tp, value, key)
    origin = typing.get_origin(tp)
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"{key}: expected {expected}")
        return value
    if origin is tuple:
        (item,) = typing.get_args(tp)[:1]
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected {expected}")
        if attrs.has(item):
            return tuple(_convert(item, v, f"{key}[{i}]") for i, v in enumerate(value))
        if not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{key}: expected {expected}")
        return tuple(value)
    if origin is dict:
        if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
            raise ConfigError(f"{key}: expected {expected}")
        return dict(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected {expected}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ConfigError(f"{key}: expected {expected}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise ConfigError(f"{key}: expected {expected}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected {expected}")
        return value
    raise ConfigError(f"{key}: unsupported setting")  # pragma: no cover


def _build(cls: Any, table: dict[str, Any], prefix: str) -> Any:
    """
    Build the attrs class C{cls} from the TOML table C{table}.
    """
    hints = typing.get_type_hints(cls)
    known = {a.name: a for a in attrs.fields(cls) if a.name != "path"}
    kwargs = {}
    for name, value in table.items():
        key = f"{prefix}.{name}" if prefix else name
        if name not in known:
            raise ConfigError(f"{key}: unknown setting")
        tp = hints[name]
        if isinstance(tp, types.UnionType):  # pragma: no cover
            tp = typing.get_args(tp)[0]
        kwargs[name] = _convert(tp, value, key)
    try:
        return cls(**kwargs)
    except TypeError as e:
        missing = [n for n, a in known.items() if a.default is attrs.NOTHING and n not in kwargs]
        raise ConfigError(
            f"{prefix}.{missing[0] if missing else '?'}: required setting is missing"
        ) from e


def _check_auth(auth: AuthConfig) -> None:
    """
    Cross-field checks of the C{[auth]} table.

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


def _check(config: Config) -> Config:
    """
    Cross-field checks that types alone cannot express; resolve paths.
    """
    base = Path(config.path).parent if config.path else Path(".")
    changes: dict[str, Any] = {}
    for table, name in _PATH_FIELDS:
        section = getattr(config, table)
        value = getattr(section, name)
        if value and not os.path.isabs(value):
            section = changes.get(table, section)
            changes[table] = attrs.evolve(section, **{name: str(base / value)})
    config = attrs.evolve(config, **changes)
    if not config.listeners:
        raise ConfigError("listeners: at least one [[listeners]] entry is needed")
    if not config.tls.certificate or not config.tls.key:
        raise ConfigError("tls.certificate: a certificate and key are required")
    _check_auth(config.auth)
    if not config.upstream.url.startswith(("http://", "https://")):
        raise ConfigError("upstream.url: expected an http:// or https:// URL")
    # upstream.dialect (built-in or plugin) and [replies] names are checked
    # by relayd.service.make_service (relayd.dialects, relayd.replytexts),
    # which import this module.
    if not 78 <= config.limits.max_line_length <= 65536:
        raise ConfigError("limits.max_line_length: expected 78 to 65536 octets")
    if not 512 <= config.limits.max_command_length <= 65536:
        raise ConfigError("limits.max_command_length: expected 512 to 65536 octets")
    for limit in attrs.fields(LimitsConfig):
        if limit.type in (int, "int") and getattr(config.limits, limit.name) < 1:
            raise ConfigError(f"limits.{limit.name}: expected at least 1")
    _check_limits(config)
    if config.idempotency.window <= config.upstream.timeout:
        raise ConfigError(
            "idempotency.window: expected more seconds than upstream.timeout"
            f" ({config.upstream.timeout:g})"
        )
    if config.idempotency.max_records < 1:
        raise ConfigError("idempotency.max_records: expected at least 1")
    if config.upstream.max_connections < 1:
        raise ConfigError("upstream.max_connections: expected at least 1")
    config = _check_routes(config, base)
    if not _HOSTNAME.fullmatch(config.server.hostname):
        raise ConfigError(
            "server.hostname: expected a domain name in ASCII (use the xn-- form of an IDN)"
        )
    names: set[str] = set()
    listeners = []
    for i, listener in enumerate(config.listeners):
        name = listener.name or listener.endpoint
        if name in names:
            raise ConfigError(
                f"listeners[{i}].name: {name!r} is used twice; give each listener a name"
            )
        names.add(name)
        listeners.append(attrs.evolve(listener, name=name))
    for i, network in enumerate(config.server.proxy_networks):
        _network(network, f"server.proxy_networks[{i}]")
    return attrs.evolve(config, listeners=tuple(_proxied(config, listeners)))


def _network(text: str, key: str) -> None:
    """
    @raise ConfigError: C{text} is not an IP network (C{"10.0.0.0/8"}) or
        address.
    """
    try:
        ipaddress.ip_network(text)
    except ValueError as e:
        raise ConfigError(f"{key}: expected an IP network such as 10.0.0.0/8: {e}") from None


def _proxied(config: Config, listeners: list[ListenerConfig]) -> list[ListenerConfig]:
    """
    Give each C{haproxy:} listener its effective C{proxy_networks} (its own,
    else C{server.proxy_networks}); refuse one with none, or networks on a
    listener that reads no PROXY header.
    """
    effective = []
    for i, listener in enumerate(listeners):
        key = f"listeners[{i}].proxy_networks"
        for j, network in enumerate(listener.proxy_networks):
            _network(network, f"{key}[{j}]")
        if not listener.endpoint.startswith("haproxy:"):
            if listener.proxy_networks:
                raise ConfigError(f"{key}: only for haproxy: endpoints")
            effective.append(listener)
            continue
        networks = listener.proxy_networks or config.server.proxy_networks
        if not networks:
            raise ConfigError(
                f"{key}: a haproxy: listener needs the proxies' networks"
                " (here or in server.proxy_networks)"
            )
        effective.append(attrs.evolve(listener, proxy_networks=networks))
    return effective


def _check_limits(config: Config) -> None:
    """
    Cross-field checks of the C{[limits]} guards (memory, AUTH exemptions).
    """
    limits = config.limits
    for network in limits.auth_exempt_networks:
        try:
            ipaddress.ip_network(network)
        except ValueError:
            raise ConfigError(
                f"limits.auth_exempt_networks: {network!r} is not a network (as 10.0.0.0/8)"
            ) from None
    names = {listener.name or listener.endpoint for listener in config.listeners}
    for name in limits.auth_exempt_listeners:
        if name not in names:
            raise ConfigError(f"limits.auth_exempt_listeners: no listener is named {name!r}")


#: How deep C{include} may nest (a preset that includes another).
MAX_INCLUDE_DEPTH = 4


def _merge(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    """
    Lay the TOML table C{overlay} over C{base}: tables merge key by key,
    any other value (a string, a number, an array, an array of tables such
    as C{[[listeners]]}) replaces the base's whole.

    @return: A new table; the arguments are not changed.
    """
    merged = dict(base)
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _absolute_paths(table: dict[str, Any], folder: Path) -> dict[str, Any]:
    """
    Resolve the relative paths of an included file against its own folder
    (L{_PATH_FIELDS}), so that they mean the same as when it is loaded
    alone.
    """
    table = dict(table)
    for section, name in _PATH_FIELDS:
        sub = table.get(section)
        if isinstance(sub, dict) and isinstance(sub.get(name), str) and sub[name]:
            if not os.path.isabs(sub[name]):
                table[section] = dict(sub, **{name: str(folder / sub[name])})
    return table


def _with_includes(table: dict[str, Any], path: str, depth: int = 0) -> dict[str, Any]:
    """
    Resolve the top-level C{include} key: the named TOML file (a path
    relative to the including file's folder) is read first and this
    table laid over it (L{_merge}).

    @raise ConfigError: (without the file name) for an unreadable or
        invalid included file, or includes nested too deep.
    """
    if "include" not in table:
        return table
    table = dict(table)
    target = table.pop("include")
    if not isinstance(target, str) or not target:
        raise ConfigError("include: expected a string")
    if depth >= MAX_INCLUDE_DEPTH:
        raise ConfigError(f"include: nested more than {MAX_INCLUDE_DEPTH} deep")
    folder = Path(path).parent if path else Path(".")
    included = Path(target) if os.path.isabs(target) else folder / target
    try:
        base = tomllib.loads(included.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"include: {included}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"include: {included}: cannot be read: {e}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"include: {included}: not valid TOML: {e}") from None
    base = _with_includes(base, str(included), depth + 1)
    return _merge(_absolute_paths(base, included.parent), table)


def parse_config(text: str, path: str = "") -> Config:
    """
    Parse configuration from TOML text.

    @param text: The TOML document.
    A top-level C{include = "file.toml"} names a file (relative to this
    one's folder) read first, this text laid over it: tables merge key by
    key, other values (arrays of tables such as C{[[listeners]]}
    included) replace the included file's (L{_merge}).  That is how a
    preset (C{etc/presets/}) is used with one's own URLs and certificates.

    @param path: The file it came from: used in messages and to resolve
        relative paths.
    @return: The configuration.
    @raise ConfigError: When the text is not TOML or does not fit the
        schema; the message starts with C{path}.
    """
    label = path or "<config>"
    try:
        table = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{label}: not valid TOML: {e}") from None
    try:
        table = _with_includes(table, path)
        config = _build(Config, table, "")
        config = attrs.evolve(config, path=path)
        return _check(config)
    except ConfigError as e:
        raise ConfigError(f"{label}: {e}") from None


def load_config(path: str) -> Config:
    """
    Load the configuration file at C{path}.

    Called once at start-up, before the reactor runs (blocking I/O is fine
    there).

    @param path: File-system path of the TOML file.
    @return: The configuration.
    @raise ConfigError: When the file is missing, unreadable or invalid.
    """
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot be read: {e}") from None
    return parse_config(text, path)
