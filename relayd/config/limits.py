# -*- test-case-name: tests.test_config -*-
"""
The C{[limits]} table (protocol limits and abuse protections) and its
checks.

This module imports no reactor code.
"""

from __future__ import annotations

import ipaddress
from typing import Any, Literal

import attrs
from attrs import field, frozen

from relayd.config.reading import ConfigError
from relayd.config.server import ListenerConfig

__all__ = ["MiB", "LimitsConfig", "check_limits"]

#: Bytes in a mebibyte.
MiB = 1024 * 1024


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
    # The secret that keys per-credential AUTH failure counters: the same
    # file on every host sharing one Redis (else one key per supervisor).
    auth_hmac_key_file: str = ""
    # redis5: messages per minute at MAIL FROM, 0 = off (relayd.policy.MessageRates)
    messages_per_minute_per_token: _RateOrOff = field(default=0, validator=_check_rate)
    messages_per_minute_per_ip: _RateOrOff = field(default=0, validator=_check_rate)


def check_limits(limits: LimitsConfig, listeners: tuple[ListenerConfig, ...]) -> None:
    """
    Checks of the C{[limits]} table: line lengths, counts, and the guards
    (memory, AUTH exemptions).

    @param limits: The table.
    @param listeners: The C{[[listeners]]} entries, which
        C{auth_exempt_listeners} names.
    @raise ConfigError: (without the file name) naming the key.
    """
    if not 78 <= limits.max_line_length <= 65536:
        raise ConfigError("limits.max_line_length: expected 78 to 65536 octets")
    if not 512 <= limits.max_command_length <= 65536:
        raise ConfigError("limits.max_command_length: expected 512 to 65536 octets")
    for limit in attrs.fields(LimitsConfig):
        if limit.type in (int, "int") and getattr(limits, limit.name) < 1:
            raise ConfigError(f"limits.{limit.name}: expected at least 1")
    for network in limits.auth_exempt_networks:
        try:
            ipaddress.ip_network(network)
        except ValueError:
            raise ConfigError(
                f"limits.auth_exempt_networks: {network!r} is not a network (as 10.0.0.0/8)"
            ) from None
    names = {listener.name or listener.endpoint for listener in listeners}
    for name in limits.auth_exempt_listeners:
        if name not in names:
            raise ConfigError(f"limits.auth_exempt_listeners: no listener is named {name!r}")
