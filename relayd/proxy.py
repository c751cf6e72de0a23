# -*- test-case-name: tests.test_proxy -*-
"""
The PROXY protocol (v1 and v2) in front of a listener: the real client
address, taken from the header a load balancer sends before the client's
first byte.

Specification: HAProxy's "The PROXY protocol, Versions 1 & 2"
(U{https://www.haproxy.org/download/2.6/doc/proxy-protocol.txt}).
The header itself is parsed by Twisted's parsers
(C{twisted.protocols.haproxy}); this module adds what relayd needs around
them and Twisted's own wrapper lacks:

  - the wrapped protocol is connected only after the header, so
    C{transport.getPeer()} in its C{connectionMade} (logs, per-IP connection
    caps, failed-AUTH throttling) is already the client's address; Twisted's
    C{HAProxyProtocolWrapper} connects it first, with the proxy's address;
  - headers are accepted only from the configured proxy networks: a
    connection from any other address is closed without a byte written;
  - the header is bounded in time (C{server.proxy_timeout} seconds) and size
    (L{MAX_HEADER} bytes), and may arrive in several segments;
  - a v2 header's TLVs (AWS NLB sends C{PP2_TYPE_AWS}, 0xEA) are skipped;
  - a C{LOCAL} (v2) or C{UNKNOWN} (v1) header, as health checks send,
    leaves the proxy's own address;
  - IPv6 addresses are written the usual short way (C{::1}), as for direct
    connections.

Connections over a Unix socket (from a proxy on the same host) are accepted
whatever the networks: the socket's file permissions decide who may connect.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from typing import Any, cast

from twisted.internet import address
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.protocols.haproxy._exceptions import InvalidProxyHeader
from twisted.protocols.haproxy._v1parser import V1Parser
from twisted.protocols.haproxy._v2parser import V2Parser
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.python.failure import Failure
from zope.interface import directlyProvides, providedBy

__all__ = ["MAX_HEADER", "ProxyHeaderFactory", "ProxyHeaderProtocol", "strip_prefix"]

log = Logger()

# The longest header accepted, in bytes.  A v1 header is at most 107 bytes;
# a v2 header is 16 bytes, the addresses (at most 216) and TLVs.  What
# HAProxy and cloud load balancers send (AWS NLB's VPC endpoint id, SSL and
# unique-id TLVs) is a few hundred bytes at most.
MAX_HEADER = 4096
_V1_MAX = 107
_V2_FIXED = 16

PREFIX = "haproxy:"


def strip_prefix(description: str) -> tuple[bool, str]:
    """
    @param description: A listener's endpoint description.
    @return: Whether it reads the PROXY protocol (C{haproxy:...}), and the
        endpoint description underneath (C{tcp:...}, C{systemd:...}).
    """
    if description.startswith(PREFIX):
        return True, description[len(PREFIX) :]
    return False, description


def _usual(peer: Any) -> Any:
    """
    The same address with its host in the usual text form
    (C{ipaddress}'s: C{::1}, not C{0:0:0:0:0:0:0:1}).
    """
    if isinstance(peer, (address.IPv4Address, address.IPv6Address)):
        host = str(ipaddress.ip_address(peer.host))
        return type(peer)(peer.type, host, peer.port)
    return peer


class ProxyHeaderProtocol(ProtocolWrapper):
    """
    Reads the PROXY header of one connection, then hands the connection to
    the wrapped protocol with the client's address as C{getPeer()}.

    @ivar peer: The client's address from the header, or C{None} before it.
    """

    factory: ProxyHeaderFactory
    transport: Any
    wrappedProtocol: Any

    def __init__(self, factory: ProxyHeaderFactory, wrappedProtocol: Any) -> None:
        super().__init__(cast(Any, factory), wrappedProtocol)
        self.peer: Any = None
        self.host: Any = None
        self._buffer = b""
        self._timer: IDelayedCall | None = None
        self._connected = False

    def makeConnection(self, transport: Any) -> None:
        # Not ProtocolWrapper.makeConnection: that connects the wrapped
        # protocol now, before the header gives the client's address.
        directlyProvides(self, providedBy(transport))
        Protocol.makeConnection(self, transport)

    def connectionMade(self) -> None:
        self.factory.registerProtocol(self)
        proxy = self.transport.getPeer()
        if not self.factory.trusts(proxy):
            log.warn(
                "refused connection from {peer}: not from a proxy network",
                peer=getattr(proxy, "host", proxy),
            )
            self.transport.loseConnection()
            return
        self._timer = self.factory.clock.callLater(self.factory.timeout, self._timed_out)

    def _timed_out(self) -> None:
        self._timer = None
        self._refuse(f"no PROXY header within {self.factory.timeout:g} seconds")

    def _refuse(self, why: str) -> None:
        proxy = self.transport.getPeer()
        log.warn(
            "closing connection from {peer}: {why}", peer=getattr(proxy, "host", proxy), why=why
        )
        self._buffer = b""
        self.transport.loseConnection()

    def dataReceived(self, data: bytes) -> None:
        if self._connected:
            self.wrappedProtocol.dataReceived(data)
            return
        if self.transport.disconnecting:
            return
        self._buffer += data
        try:
            parsed = self._parse()
        except (InvalidProxyHeader, KeyError, ValueError):
            self._refuse("invalid PROXY header")
            return
        if parsed is None:
            return
        info, rest = parsed
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self._buffer = b""
        self.peer = _usual(info.source) if info.source else self.transport.getPeer()
        self.host = _usual(info.destination) if info.destination else self.transport.getHost()
        self._connected = True
        self.wrappedProtocol.makeConnection(self)
        if rest and not self.disconnecting:
            self.wrappedProtocol.dataReceived(rest)

    def _parse(self) -> tuple[Any, bytes] | None:
        """
        @return: The parsed header and the bytes after it, or C{None} until
            the whole header has arrived.
        @raise InvalidProxyHeader: Not a PROXY header, or longer than
            allowed.
        """
        buffer = self._buffer
        v2 = V2Parser.PREFIX
        if buffer[: len(v2)] == v2[: len(buffer)]:
            if len(buffer) < _V2_FIXED:
                return None
            if buffer[12] & 0xF0 != 0x20:
                raise InvalidProxyHeader()
            size = _V2_FIXED + int.from_bytes(buffer[14:16], "big")
            if size > MAX_HEADER:
                raise InvalidProxyHeader()
            if len(buffer) < size:
                return None
            info = V2Parser.parse(buffer[:size])
            return info, buffer[size:]
        v1 = V1Parser.PROXYSTR + b" "
        if buffer[: len(v1)] == v1[: len(buffer)]:
            end = buffer.find(b"\r\n")
            if end < 0:
                if len(buffer) >= _V1_MAX:
                    raise InvalidProxyHeader()
                return None
            if end + 2 > _V1_MAX:
                raise InvalidProxyHeader()
            info = V1Parser.parse(buffer[:end])
            return info, buffer[end + 2 :]
        raise InvalidProxyHeader()

    def getPeer(self) -> Any:
        """
        @return: The client's address from the header (the proxy's until it
            has arrived, and for a C{LOCAL} header).
        """
        return self.peer if self.peer is not None else self.transport.getPeer()

    def getHost(self) -> Any:
        """
        @return: The address the client connected to, from the header.
        """
        return self.host if self.host is not None else self.transport.getHost()

    def connectionLost(self, reason: Failure = Failure(Exception("lost"))) -> None:  # noqa: B008
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self.factory.unregisterProtocol(self)
        if self._connected:
            self.wrappedProtocol.connectionLost(reason)
        self.wrappedProtocol = None


class ProxyHeaderFactory(WrappingFactory):
    """
    Wraps a listener's factory so that each connection starts with a PROXY
    header from a trusted proxy (see the module docstring).

    @ivar networks: The proxy networks headers are accepted from.
    @ivar clock: Time source of the header timeout.
    @ivar timeout: Seconds to wait for the header.
    """

    protocol = ProxyHeaderProtocol  # type: ignore[assignment]
    noisy = False

    def __init__(
        self,
        wrappedFactory: Any,
        networks: Sequence[str],
        clock: IReactorTime,
        timeout: float = 5.0,
    ) -> None:
        """
        @param wrappedFactory: The listener's factory (SMTP, or implicit TLS
            around SMTP).
        @param networks: IP networks such as C{"10.0.0.0/8"} (checked by
            L{relayd.config}).
        @param clock: Time source for the header timeout.
        @param timeout: Seconds a connection has to send its header.
        """
        super().__init__(wrappedFactory)
        self.networks = tuple(ipaddress.ip_network(n) for n in networks)
        self.clock = clock
        self.timeout = timeout

    def trusts(self, peer: Any) -> bool:
        """
        @param peer: The address of the connecting peer (the proxy).
        @return: Whether PROXY headers are accepted from it.
        """
        if isinstance(peer, address.UNIXAddress):
            return True
        host = getattr(peer, "host", None)
        if host is None:
            return False
        try:
            ip = ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip in network for network in self.networks)

    def logPrefix(self) -> str:
        return "PROXY"
