# -*- test-case-name: tests.test_config -*-
"""
The whole configuration file: L{Config}, its cross-table checks, and
L{parse_config} / L{load_config}.

The file is read with the standard library's C{tomllib}.  Every table maps
onto one class of the section modules (L{relayd.config.server},
L{relayd.config.auth}, L{relayd.config.upstream}, L{relayd.config.limits},
L{relayd.config.headers}, L{relayd.config.ops}); every key onto one field.
A key the classes do not know, a value of the wrong type or a missing file
raises L{ConfigError} whose message names the file and the dotted key, for
example::

    etc/relayd.toml: upstream.timeout: expected a number of seconds

Relative paths in the file (certificates, tokens file, outbox) are resolved
against the directory that holds the configuration file.

This module imports no reactor code.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import attrs
from attrs import field, frozen

from relayd.config.auth import AuthConfig, check_auth
from relayd.config.headers import HeadersConfig
from relayd.config.limits import LimitsConfig, check_limits
from relayd.config.ops import AdminConfig, DevUpstreamConfig, IdempotencyConfig, RedisConfig
from relayd.config.reading import ConfigError, build, resolve_paths, with_includes
from relayd.config.server import ListenerConfig, ServerConfig, TLSConfig, check_listeners
from relayd.config.upstream import RouteConfig, UpstreamConfig, check_routes

__all__ = ["Config", "load_config", "parse_config"]


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


def _check(config: Config) -> Config:
    """
    Cross-field checks that types alone cannot express; resolve paths.
    """
    base = Path(config.path).parent if config.path else Path(".")
    config = resolve_paths(config, base)
    if not config.listeners:
        raise ConfigError("listeners: at least one [[listeners]] entry is needed")
    if not config.tls.certificate or not config.tls.key:
        raise ConfigError("tls.certificate: a certificate and key are required")
    check_auth(config.auth)
    if not config.upstream.url.startswith(("http://", "https://")):
        raise ConfigError("upstream.url: expected an http:// or https:// URL")
    # upstream.dialect (built-in or plugin) and [replies] names are checked
    # by relayd.service.make_service (relayd.dialects, relayd.replytexts),
    # which import this package.
    check_limits(config.limits, config.listeners)
    if config.idempotency.window <= config.upstream.timeout:
        raise ConfigError(
            "idempotency.window: expected more seconds than upstream.timeout"
            f" ({config.upstream.timeout:g})"
        )
    if config.idempotency.max_records < 1:
        raise ConfigError("idempotency.max_records: expected at least 1")
    if config.upstream.max_connections < 1:
        raise ConfigError("upstream.max_connections: expected at least 1")
    config = attrs.evolve(config, routes=check_routes(config.routes, base))
    return attrs.evolve(config, listeners=check_listeners(config.server, config.listeners))


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
        table = with_includes(table, path)
        config = build(Config, table, "")
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
