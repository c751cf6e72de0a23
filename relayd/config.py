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

import os
import re
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, Literal

import attrs
from attrs import field, frozen

__all__ = [
    "AdminConfig",
    "AuthConfig",
    "Config",
    "ConfigError",
    "DevUpstreamConfig",
    "HeadersConfig",
    "LimitsConfig",
    "ListenerConfig",
    "RedisConfig",
    "ServerConfig",
    "TLSConfig",
    "UpstreamConfig",
    "load_config",
    "parse_config",
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
    """

    hostname: str = "localhost"
    workers: int = 1


@frozen
class ListenerConfig:
    """
    One C{[[listeners]]} entry.

    @ivar endpoint: A Twisted server endpoint description, for example
        C{"tcp:port=587:interface=0.0.0.0"} or C{"systemd:domain=INET:index=0"}.
    @ivar tls: C{"starttls"}: plain connection, STARTTLS offered (RFC 3207);
        C{"implicit"}: TLS from the first byte (RFC 8314 section 3).
    @ivar name: A label for logs (defaults to the endpoint).
    """

    endpoint: str
    tls: Literal["starttls", "implicit"] = "starttls"
    name: str = ""


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
class AuthConfig:
    """
    The C{[auth]} table.

    @ivar tokens_file: Path of the TOML tokens file (SHA-256 digests of API
        tokens, see L{relayd.tokens}).
    """

    tokens_file: str = ""


@frozen
class UpstreamConfig:
    """
    The C{[upstream]} table: where and how accepted messages are sent.

    @ivar url: The HTTP(S) URL the dialect's request is sent to.
    @ivar dialect: The upstream API's request format: C{"native"},
        C{"raw"}, C{"mailpace"} or C{"postmark"}.
    @ivar timeout: Seconds to wait for the upstream's whole answer.
    @ivar token_header: The request header that carries the client's token.
        The empty string means the dialect's own default.
    @ivar token_format: How the header value is built from the token;
        C{{token}} is replaced.  The empty string means the dialect's default.
    @ivar max_connections: Persistent connections kept per upstream host.
    """

    url: str = "http://127.0.0.1:8025/send"
    dialect: str = "native"
    timeout: float = 30.0
    token_header: str = ""
    token_format: str = ""
    max_connections: int = 64


@frozen
class LimitsConfig:
    """
    The C{[limits]} table: protocol limits and abuse protections.  Sizes are
    in bytes, durations in seconds.  See C{docs/security.md}.
    """

    max_message_size: int = 25 * MiB
    max_recipients: int = 100
    max_line_length: int = 998
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
    if not config.auth.tokens_file:
        raise ConfigError("auth.tokens_file: required setting is missing")
    if not config.upstream.url.startswith(("http://", "https://")):
        raise ConfigError("upstream.url: expected an http:// or https:// URL")
    if config.upstream.dialect not in ("native", "raw", "mailpace", "postmark"):
        raise ConfigError(
            "upstream.dialect: expected one of 'native', 'raw', 'mailpace', 'postmark'"
        )
    if not 78 <= config.limits.max_line_length <= 65536:
        raise ConfigError("limits.max_line_length: expected 78 to 65536 octets")
    if not 512 <= config.limits.max_command_length <= 65536:
        raise ConfigError("limits.max_command_length: expected 512 to 65536 octets")
    for limit in attrs.fields(LimitsConfig):
        if limit.type in (int, "int") and getattr(config.limits, limit.name) < 1:
            raise ConfigError(f"limits.{limit.name}: expected at least 1")
    if config.upstream.max_connections < 1:
        raise ConfigError("upstream.max_connections: expected at least 1")
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
        if listener.endpoint.startswith("haproxy:") and config.server.workers != 1:
            raise ConfigError(
                f"listeners[{i}].endpoint: haproxy: listeners need server.workers = 1"
            )
        listeners.append(attrs.evolve(listener, name=name))
    return attrs.evolve(config, listeners=tuple(listeners))


def parse_config(text: str, path: str = "") -> Config:
    """
    Parse configuration from TOML text.

    @param text: The TOML document.
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
