# -*- test-case-name: tests.test_config -*-
"""
relayd's configuration: frozen attrs classes loaded from a TOML file.

One module a group of tables: L{relayd.config.server} (C{[server]},
C{[[listeners]]}, C{[tls]}), L{relayd.config.auth} (C{[auth]} and its
policy), L{relayd.config.upstream} (C{[upstream]}, C{[[routes]]},
credential sources), L{relayd.config.limits}, L{relayd.config.headers},
L{relayd.config.ops} (C{[idempotency]}, C{[dev_upstream]}, C{[redis]},
C{[admin]}); L{relayd.config.reading} turns TOML into them and
L{relayd.config.schema} holds the whole file's L{Config}.  Import every
name from here.

This package imports no reactor code.
"""

from relayd.config.auth import USERNAME_RULES, AuthConfig, PolicyConfig
from relayd.config.headers import HeadersConfig, StreamDefaultsConfig
from relayd.config.limits import LimitsConfig, MiB
from relayd.config.ops import AdminConfig, DevUpstreamConfig, IdempotencyConfig, RedisConfig
from relayd.config.reading import MAX_INCLUDE_DEPTH, ConfigError
from relayd.config.schema import Config, load_config, parse_config
from relayd.config.server import ListenerConfig, ServerConfig, TLSConfig
from relayd.config.upstream import (
    SYSTEMD_CREDENTIAL_PREFIX,
    CredentialSource,
    RouteConfig,
    RouteUpstreamConfig,
    UpstreamConfig,
    credential_source,
    read_credential,
)

__all__ = [
    "MAX_INCLUDE_DEPTH",
    "SYSTEMD_CREDENTIAL_PREFIX",
    "USERNAME_RULES",
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
    "MiB",
    "PolicyConfig",
    "RedisConfig",
    "RouteConfig",
    "RouteUpstreamConfig",
    "ServerConfig",
    "StreamDefaultsConfig",
    "TLSConfig",
    "UpstreamConfig",
    "credential_source",
    "load_config",
    "parse_config",
    "read_credential",
]
