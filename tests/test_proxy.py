"""
The PROXY protocol in front of relayd (L{relayd.proxy}): units on a string
transport, and end to end with a real HAProxy (C{send-proxy-v2} and
C{send-proxy}) in front of two relayd instances, one of them with worker
processes, clients connecting from several 127.0.0.x source addresses.
"""

from __future__ import annotations

import base64
import os
import shutil
import smtplib
import socket
import struct
import subprocess
import sys
import tempfile
import time
import unittest
from pathlib import Path
from typing import Any, ClassVar

from twisted.internet import address
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from relayd.proxy import MAX_HEADER, ProxyHeaderFactory, strip_prefix
from relayd.tls import ensure_self_signed
from relayd.tokens import digest
from tests.test_e2e import ROOT, Upstream, free_port

V2_PREFIX = b"\r\n\r\n\x00\r\nQUIT\n"
# What an AWS Network Load Balancer adds: PP2_TYPE_AWS (0xEA), subtype
# PP2_SUBTYPE_AWS_VPCE_ID (0x01) and the VPC endpoint id.
AWS_TLV = b"\xea" + struct.pack("!H", 23) + b"\x01vpce-08d2bf15fac5001c9"


def v2_header(
    source: str = "203.0.113.7", port: int = 51000, tlvs: bytes = b"", command: int = 0x21
) -> bytes:
    """
    A PROXY v2 header for a TCP over IPv4 or IPv6 connection from C{source}
    (proxy-protocol.txt section 2.2).
    """
    if ":" in source:
        family, addresses = 0x21, socket.inet_pton(socket.AF_INET6, source) * 2
    else:
        family, addresses = 0x11, socket.inet_aton(source) + socket.inet_aton("192.0.2.1")
    body = addresses + struct.pack("!HH", port, 587) + tlvs
    return V2_PREFIX + bytes([command, family]) + struct.pack("!H", len(body)) + body


class Recorder(Protocol):
    """
    Records the peer it sees when connected, and the bytes it receives.
    """

    def __init__(self) -> None:
        self.peer: Any = None
        self.received = b""
        self.lost = False

    def connectionMade(self) -> None:
        self.peer = self.transport.getPeer()  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Any = None) -> None:
        self.lost = True


class ProxyHeaderUnitTests(SynchronousTestCase):
    def connect(
        self, proxy: str = "10.0.0.5", networks: tuple[str, ...] = ("10.0.0.0/8",)
    ) -> tuple[Any, Recorder, StringTransport, Clock]:
        recorder = Recorder()
        clock = Clock()
        factory = ProxyHeaderFactory(Factory.forProtocol(lambda: recorder), networks, clock, 5.0)
        transport = StringTransport(peerAddress=address.IPv4Address("TCP", proxy, 40000))
        protocol = factory.buildProtocol(transport.getPeer())
        protocol.makeConnection(transport)
        return protocol, recorder, transport, clock

    def test_v2_client_address_is_the_peer_when_the_session_starts(self) -> None:
        """
        The wrapped protocol is connected only once the header has arrived
        (here in three segments, with AWS NLB's TLV), and sees the client's
        address, not the proxy's; the bytes after the header reach it.
        """
        protocol, recorder, transport, _ = self.connect()
        data = v2_header("203.0.113.7", tlvs=AWS_TLV) + b"EHLO x\r\n"
        protocol.dataReceived(data[:5])
        protocol.dataReceived(data[5:20])
        self.assertIsNone(recorder.peer)
        protocol.dataReceived(data[20:])
        self.assertEqual(recorder.peer, address.IPv4Address("TCP", "203.0.113.7", 51000))
        self.assertEqual(recorder.received, b"EHLO x\r\n")
        self.assertFalse(transport.disconnecting)

    def test_v2_ipv6_in_its_usual_form(self) -> None:
        protocol, recorder, _, _ = self.connect()
        protocol.dataReceived(v2_header("2001:db8::1"))
        self.assertEqual(recorder.peer, address.IPv6Address("TCP", "2001:db8::1", 51000))

    def test_v1_client_address(self) -> None:
        protocol, recorder, _, _ = self.connect()
        protocol.dataReceived(b"PROXY TCP4 198.51.100.9 192.0.2.1 40001 587\r\nQUIT\r\n")
        self.assertEqual(recorder.peer, address.IPv4Address("TCP", "198.51.100.9", 40001))
        self.assertEqual(recorder.received, b"QUIT\r\n")

    def test_local_header_keeps_the_proxy_address(self) -> None:
        """
        A v2 C{LOCAL} header (a health check) carries no client: the peer
        is the proxy itself.
        """
        protocol, recorder, _, _ = self.connect()
        protocol.dataReceived(v2_header(command=0x20))
        self.assertEqual(recorder.peer.host, "10.0.0.5")

    def test_not_from_a_proxy_network_is_refused(self) -> None:
        """
        A connection from outside the proxy networks is closed at once,
        without a byte written, and logged with its address.
        """
        with capturedLogs() as events:
            protocol, recorder, transport, _ = self.connect(proxy="192.0.2.50")
        self.assertTrue(transport.disconnecting)
        self.assertEqual(transport.value(), b"")
        self.assertIsNone(recorder.peer)
        self.assertIn(
            "refused connection from 192.0.2.50: not from a proxy network",
            [e["log_format"].format(**e) for e in events],
        )
        protocol.connectionLost(None)
        self.assertFalse(recorder.lost)

    def test_ipv4_mapped_proxy_address_is_trusted(self) -> None:
        _, _, transport, _ = self.connect(proxy="::ffff:10.1.2.3")
        self.assertFalse(transport.disconnecting)

    def test_no_header_in_time_closes(self) -> None:
        protocol, recorder, transport, clock = self.connect()
        protocol.dataReceived(b"PROXY TCP4 ")
        clock.advance(4.9)
        self.assertFalse(transport.disconnecting)
        clock.advance(0.1)
        self.assertTrue(transport.disconnecting)
        self.assertIsNone(recorder.peer)

    def test_header_in_time_cancels_the_timer(self) -> None:
        protocol, recorder, transport, clock = self.connect()
        protocol.dataReceived(v2_header())
        self.assertEqual(clock.getDelayedCalls(), [])
        self.assertIsNotNone(recorder.peer)

    def test_not_a_proxy_header_closes(self) -> None:
        """
        A client that speaks SMTP straight away (no header) is closed.
        """
        for data in (b"EHLO client.example\r\n", b"PROXY TCP9 x\r\n"):
            protocol, recorder, transport, _ = self.connect()
            protocol.dataReceived(data)
            self.assertTrue(transport.disconnecting, data)
            self.assertIsNone(recorder.peer)

    def test_v1_without_end_of_line_closes(self) -> None:
        protocol, recorder, transport, _ = self.connect()
        protocol.dataReceived(b"PROXY TCP4 " + b"1" * 100)
        self.assertTrue(transport.disconnecting)

    def test_oversized_v2_header_closes(self) -> None:
        """
        A v2 header announcing more than L{MAX_HEADER} bytes is refused as
        soon as its length is read.
        """
        protocol, recorder, transport, _ = self.connect()
        protocol.dataReceived(V2_PREFIX + b"\x21\x11" + struct.pack("!H", MAX_HEADER) + b"x" * 12)
        self.assertTrue(transport.disconnecting)
        self.assertIsNone(recorder.peer)

    def test_unix_socket_peer_is_trusted(self) -> None:
        factory = ProxyHeaderFactory(Factory(), ("10.0.0.0/8",), Clock())
        self.assertTrue(factory.trusts(address.UNIXAddress(b"/run/relayd.sock")))
        self.assertFalse(factory.trusts(address.IPv4Address("TCP", "11.0.0.1", 1)))

    def test_strip_prefix(self) -> None:
        self.assertEqual(strip_prefix("haproxy:tcp:587"), (True, "tcp:587"))
        self.assertEqual(strip_prefix("tcp:587"), (False, "tcp:587"))


TOKEN = "proxy-e2e-token-not-a-secret"


class Relayd:
    """
    One real relayd (C{python -m relayd run}) with a C{haproxy:} STARTTLS
    listener on a free 127.0.0.1 port, trusting PROXY headers from
    127.0.0.1 only.
    """

    def __init__(self, upstream: Upstream, workers: int) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="relayd-proxy-"))
        self.cert = str(self.dir / "cert.pem")
        ensure_self_signed(self.cert, str(self.dir / "key.pem"), "localhost")
        (self.dir / "tokens.toml").write_text(f'[tokens.e2e]\nsha256 = "{digest(TOKEN).hex()}"\n')
        self.port = free_port()
        (self.dir / "relayd.toml").write_text(
            f"""
[server]
hostname = "relay.test"
workers = {workers}
proxy_networks = ["127.0.0.1/32"]
proxy_timeout = 1

[[listeners]]
endpoint = "haproxy:tcp:port={self.port}:interface=127.0.0.1"

[tls]
certificate = "cert.pem"
key = "key.pem"

[auth]
tokens_file = "tokens.toml"

[upstream]
url = "http://127.0.0.1:{upstream.port}/v1/send"
timeout = 5

[limits]
max_connections_per_ip = 2
auth_failures_per_ip = 2
"""
        )
        self.log = open(self.dir / "relayd.log", "wb")
        self.notifications = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notifications.bind(str(self.dir / "notify"))
        self.process = subprocess.Popen(
            [sys.executable, "-m", "relayd", "run", "--config", str(self.dir / "relayd.toml")],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            cwd=str(self.dir),
            env=dict(os.environ, PYTHONPATH=str(ROOT), NOTIFY_SOCKET=str(self.dir / "notify")),
        )

    def wait(self) -> None:
        """
        Wait for relayd's C{READY=1} (sd_notify): every listener of every
        process accepts connections.
        """
        self.notifications.settimeout(0.2)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if b"READY=1" in self.notifications.recv(4096).split(b"\n"):
                    return
            except TimeoutError:
                pass
            if self.process.poll() is not None:
                raise RuntimeError("relayd exited: " + self.logtext())
        raise RuntimeError("relayd did not start: " + self.logtext())

    def logtext(self) -> str:
        self.log.flush()
        return (self.dir / "relayd.log").read_text("utf-8", "replace")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()
        self.notifications.close()
        shutil.rmtree(self.dir, ignore_errors=True)


HAPROXY_CONFIG = """\
# Written by tests/test_proxy.py; docs/scaling.md shows the same setup.
global
    maxconn 1000

defaults
    mode tcp
    timeout connect 5s
    timeout client 60s
    timeout server 60s

# relayd A (one process), PROXY protocol v2.
frontend a
    bind 127.0.0.1:{front_a}
    default_backend a
backend a
    server a 127.0.0.1:{port_a} send-proxy-v2

# relayd B (worker processes), PROXY protocol v2.
frontend b
    bind 127.0.0.1:{front_b}
    default_backend b
backend b
    server b 127.0.0.1:{port_b} send-proxy-v2

# relayd A again, PROXY protocol v1 (text).
frontend v1
    bind 127.0.0.1:{front_v1}
    default_backend v1
backend v1
    server a 127.0.0.1:{port_a} send-proxy

# Both, as a deployment runs them.
frontend both
    bind 127.0.0.1:{front_both}
    default_backend both
backend both
    balance roundrobin
    server a 127.0.0.1:{port_a} send-proxy-v2
    server b 127.0.0.1:{port_b} send-proxy-v2
"""


@unittest.skipIf(
    shutil.which("haproxy") is None,
    "haproxy is not installed (apt-get install haproxy; .ci/run installs it)",
)
class HAProxyEndToEndTests(unittest.TestCase):
    """
    HAProxy 2.x in front of two relayd instances; clients bind 127.0.0.2,
    127.0.0.3, ... so each has its own source address.
    """

    upstream: ClassVar[Upstream]
    a: ClassVar[Relayd]
    b: ClassVar[Relayd]
    haproxy: ClassVar[subprocess.Popen[bytes]]
    fronts: ClassVar[dict[str, int]]
    folder: ClassVar[Path]

    @classmethod
    def setUpClass(cls) -> None:
        cls.upstream = Upstream()
        cls.a = Relayd(cls.upstream, workers=1)
        cls.b = Relayd(cls.upstream, workers=2)
        cls.a.wait()
        cls.b.wait()
        cls.fronts = {name: free_port() for name in ("a", "b", "v1", "both")}
        cls.folder = Path(tempfile.mkdtemp(prefix="haproxy-"))
        config = cls.folder / "haproxy.cfg"
        config.write_text(
            HAPROXY_CONFIG.format(
                port_a=cls.a.port,
                port_b=cls.b.port,
                **{f"front_{k}": v for k, v in cls.fronts.items()},
            )
        )
        cls.haproxy = subprocess.Popen(
            ["haproxy", "-db", "-f", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        for port in cls.fronts.values():
            while True:
                try:
                    with socket.socket() as s:
                        s.bind(("127.0.0.1", port))
                except OSError:
                    break  # HAProxy has bound it
                if cls.haproxy.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("haproxy did not start")
                time.sleep(0.05)

    @classmethod
    def tearDownClass(cls) -> None:
        cls.haproxy.terminate()
        cls.haproxy.wait(10)
        logs = cls.a.logtext() + cls.b.logtext()
        cls.a.stop()
        cls.b.stop()
        cls.upstream.stop()
        shutil.rmtree(cls.folder, ignore_errors=True)
        assert "Traceback" not in logs, logs
        assert TOKEN not in logs, "token in the log"

    def smtp(self, front: str, source: str) -> smtplib.SMTP:
        client = smtplib.SMTP(
            "127.0.0.1",
            self.fronts[front],
            local_hostname="client.test",
            timeout=15,
            source_address=(source, 0),
        )
        return client

    def login(self, front: str, source: str, token: str = TOKEN) -> tuple[int, bytes]:
        with self.smtp(front, source) as client:
            client.starttls()
            client.ehlo()
            # One AUTH command (smtplib's login() tries every mechanism).
            plain = base64.b64encode(b"\0apikey\0" + token.encode()).decode()
            return client.docmd("AUTH", "PLAIN " + plain)

    def test_logged_address_is_the_clients(self) -> None:
        """
        Through PROXY v2, each relayd (B with worker processes) logs the
        client's own source address, not HAProxy's 127.0.0.1.
        """
        self.assertEqual(self.login("a", "127.0.0.2")[0], 235)
        self.assertEqual(self.login("b", "127.0.0.3")[0], 235)
        self.assertEqual(self.login("b", "127.0.0.13")[0], 235)
        self.assertIn("authenticated 127.0.0.2 as token e2e", self.a.logtext())
        self.assertIn("authenticated 127.0.0.3 as token e2e", self.b.logtext())
        self.assertIn("authenticated 127.0.0.13 as token e2e", self.b.logtext())
        self.assertNotIn("authenticated 127.0.0.1 ", self.a.logtext() + self.b.logtext())

    def test_message_relayed_through_both_instances(self) -> None:
        """
        Round-robin over both instances: every message gets its 250 from
        the upstream.
        """
        for i in range(4):
            with self.smtp("both", f"127.0.0.{30 + i}") as client:
                client.starttls()
                client.ehlo()
                client.login("apikey", TOKEN)
                refused = client.sendmail(
                    "a@example.com",
                    ["b@example.net"],
                    b"From: a@example.com\r\nTo: b@example.net\r\nSubject: x\r\n\r\nbody\r\n",
                )
                self.assertEqual(refused, {})
        logs = self.a.logtext() + self.b.logtext()
        for i in range(4):
            self.assertIn(f"authenticated 127.0.0.{30 + i} as token e2e", logs)

    def test_per_ip_cap_counts_each_client(self) -> None:
        """
        With max_connections_per_ip = 2, a third connection from 127.0.0.4
        gets 421, while 127.0.0.5 behind the same proxy is still greeted.
        """
        first = self.smtp("a", "127.0.0.4")
        second = self.smtp("a", "127.0.0.4")
        try:
            with self.assertRaises(smtplib.SMTPConnectError) as refused:
                self.smtp("a", "127.0.0.4")
            self.assertEqual(refused.exception.smtp_code, 421)
            self.assertIn(b"Too many connections", refused.exception.smtp_error)
            with self.smtp("a", "127.0.0.5") as other:
                self.assertEqual(other.noop()[0], 250)
        finally:
            first.close()
            second.close()
        self.assertIn("refused connection from 127.0.0.4: too many", self.a.logtext())

    def test_auth_lockout_of_one_client_spares_another(self) -> None:
        """
        Two failed AUTH from 127.0.0.6 (two different wrong tokens) lock it
        out of AUTH (454 4.7.0); 127.0.0.7 behind the same proxy still
        authenticates.
        """
        for n in range(2):
            self.assertEqual(self.login("a", "127.0.0.6", f"wrong-token-{n}")[0], 535)
        code, text = self.login("a", "127.0.0.6")
        self.assertEqual(code, 454)
        self.assertIn(b"Too many failed authentication attempts", text)
        self.assertEqual(self.login("a", "127.0.0.7")[0], 235)

    def test_proxy_protocol_v1(self) -> None:
        """
        HAProxy's C{send-proxy} (the text header) works the same.
        """
        self.assertEqual(self.login("v1", "127.0.0.8")[0], 235)
        self.assertIn("authenticated 127.0.0.8 as token e2e", self.a.logtext())

    def test_direct_connection_not_from_a_proxy_network_is_refused(self) -> None:
        """
        A client connecting to relayd itself from 127.0.0.9 (not a proxy
        network) is closed without a byte; one from the proxy's own address
        that sends no header is closed after C{proxy_timeout}.
        """
        with socket.socket() as s:
            s.settimeout(10)
            s.bind(("127.0.0.9", 0))
            s.connect(("127.0.0.1", self.a.port))
            self.assertEqual(s.recv(100), b"")
        with socket.socket() as s:
            s.settimeout(10)
            s.connect(("127.0.0.1", self.a.port))
            started = time.monotonic()
            self.assertEqual(s.recv(100), b"")
            self.assertGreater(time.monotonic() - started, 0.5)
        log = self.a.logtext()
        self.assertIn("refused connection from 127.0.0.9: not from a proxy network", log)
        self.assertIn("no PROXY header within 1 seconds", log)
