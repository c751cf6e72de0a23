# -*- test-case-name: tests.test_config -*-
"""
The C{[server]}, C{[[listeners]]} and C{[tls]} tables, and their checks
(host name, listener names, PROXY protocol networks).

This module imports no reactor code.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Literal

import attrs
from attrs import frozen

from relayd.config.reading import ConfigError

__all__ = ["ListenerConfig", "ServerConfig", "TLSConfig", "check_listeners"]


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
    @ivar heap_trim: Give the memory the C allocator holds free back to the
        system (L{relayd.heap}).
    @ivar heap_trim_interval: Seconds between two looks at it.
    @ivar heap_trim_threshold: Bytes held free from which they are given
        back to the system.
    """

    hostname: str = "localhost"
    workers: int = 1
    proxy_networks: tuple[str, ...] = ()
    proxy_timeout: float = 5.0
    heap_trim: bool = True
    heap_trim_interval: float = 1.0
    heap_trim_threshold: int = 1024 * 1024


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


_HOSTNAME = re.compile(
    r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
)


def check_listeners(
    server: ServerConfig, listeners: tuple[ListenerConfig, ...]
) -> tuple[ListenerConfig, ...]:
    """
    Cross-field checks of C{[server]} and C{[[listeners]]}.

    @param server: The C{[server]} table.
    @param listeners: The C{[[listeners]]} entries.
    @return: The listeners, each with its name (its endpoint when it gives
        none) and its effective C{proxy_networks}.
    @raise ConfigError: (without the file name) naming the key.
    """
    if not _HOSTNAME.fullmatch(server.hostname):
        raise ConfigError(
            "server.hostname: expected a domain name in ASCII (use the xn-- form of an IDN)"
        )
    names: set[str] = set()
    named = []
    for i, listener in enumerate(listeners):
        name = listener.name or listener.endpoint
        if name in names:
            raise ConfigError(
                f"listeners[{i}].name: {name!r} is used twice; give each listener a name"
            )
        names.add(name)
        named.append(attrs.evolve(listener, name=name))
    for i, network in enumerate(server.proxy_networks):
        _network(network, f"server.proxy_networks[{i}]")
    return tuple(_proxied(server, named))


def _network(text: str, key: str) -> None:
    """
    @raise ConfigError: C{text} is not an IP network (C{"10.0.0.0/8"}) or
        address.
    """
    try:
        ipaddress.ip_network(text)
    except ValueError as e:
        raise ConfigError(f"{key}: expected an IP network such as 10.0.0.0/8: {e}") from None


def _proxied(server: ServerConfig, listeners: list[ListenerConfig]) -> list[ListenerConfig]:
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
        networks = listener.proxy_networks or server.proxy_networks
        if not networks:
            raise ConfigError(
                f"{key}: a haproxy: listener needs the proxies' networks"
                " (here or in server.proxy_networks)"
            )
        effective.append(attrs.evolve(listener, proxy_networks=networks))
    return effective
