"""
A small SMTP session driver for the guard tests (back-pressure, slow
clients, AUTH throttling): a L{RelaySMTP} on a L{StringTransport} with a
L{Clock}, and the real daemon helpers for the end-to-end ones.
"""

from __future__ import annotations

import base64
from typing import Any

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.task import Clock

from relayd.config import LimitsConfig
from relayd.smtp.session import RelaySMTPFactory
from relayd.testing import TOKEN, FakeDelivery, TLSStringTransport, make_fake_portal

HOST = "mx.example.test"
AUTH_OK = "235 2.7.0 Authentication successful"
AUTH_BAD = "535 5.7.8 Authentication credentials invalid"
NOOP_OK = "250 2.0.0 Ok"

__all__ = ["AUTH_BAD", "AUTH_OK", "HOST", "NOOP_OK", "TOKEN", "Session", "plain"]


def plain(user: str, password: str) -> str:
    """
    @return: The AUTH PLAIN initial response for C{user} and C{password}.
    """
    return base64.b64encode(f"\0{user}\0{password}".encode()).decode()


class Session:
    """
    One implicit-TLS session (AUTH allowed at once) from C{ip}.
    """

    def __init__(
        self,
        limits: LimitsConfig | None = None,
        clock: Clock | None = None,
        factory: RelaySMTPFactory | None = None,
        ip: str = "192.0.2.1",
        delivery: FakeDelivery | None = None,
        **factory_args: Any,
    ) -> None:
        self.clock = clock or Clock()
        self.delivery = delivery or FakeDelivery()
        self.factory = factory or RelaySMTPFactory(
            make_fake_portal(self.delivery),
            HOST,
            limits or LimitsConfig(),
            self.clock,
            context_factory=object(),
            implicit_tls=True,
            **factory_args,
        )
        peer: Any = IPv6Address("TCP", ip, 40000) if ":" in ip else IPv4Address("TCP", ip, 40000)
        self.transport = TLSStringTransport(peerAddress=peer)
        self.proto = self.factory.buildProtocol(None)
        self.proto.makeConnection(self.transport)
        self.greeting = self.replies()

    def send(self, data: bytes | str) -> list[str]:
        """
        Send bytes; return the reply lines written since the last call.
        """
        if isinstance(data, str):
            data = data.encode("utf-8")
        self.proto.dataReceived(data)
        return self.replies()

    def replies(self) -> list[str]:
        out = self.transport.value().decode("utf-8", "replace")
        self.transport.clear()
        return [line for line in out.split("\r\n") if line]

    def login(self, token: str = TOKEN) -> list[str]:
        self.send("EHLO client.example\r\n")
        return self.send(f"AUTH PLAIN {plain('apikey', token)}\r\n")

    def close(self) -> None:
        self.proto.connectionLost(None)
