"""
L{relayd.tlsbuffers.release_buffers}: on pyOpenSSL connections in memory,
bytes waiting either way survive it and the largest buffers are given
back.  And idle TLS sessions after a large message, end to end: the real daemon
over real 127.0.0.1 sockets, 100 clients (half STARTTLS, half implicit
TLS) that each send a 200 KB message and then stay connected.  The TLS
buffers that message grew are given back (L{relayd.tlsbuffers.release_buffers}),
so the daemon's resident memory grows by far less per idle session than
the about 85 KiB one socket read of DATA leaves in OpenSSL's receiving
buffer; and each session goes on: a second message, then QUIT, and the
upstream got all 200 messages whole.
"""

from __future__ import annotations

import smtplib
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from unittest import skipIf

from OpenSSL import SSL
from twisted.trial.unittest import SynchronousTestCase

from relayd.heap import glibc_heap
from relayd.tls import ServerTLS
from relayd.tlsbuffers import release_buffers
from tests.test_e2e import TOKEN, Daemon, rss
from tests.test_memory import OnceOnDaemon, big_message
from tests.test_tls import _self_signed

KiB = 1024
CLIENTS = 100
SIZE = 200 * 1000


class IdleAfterLargeMessageTests(OnceOnDaemon):
    """
    The clients run once (class set-up); each test checks one promise.
    """

    extra = f"[limits]\nmax_connections_per_ip = {CLIENTS + 50}\n"

    first: list[tuple[int, bytes]]
    second: list[tuple[int, bytes]]
    quit: list[int]
    growth: int
    pipelined: list[bytes]

    @classmethod
    def _run(cls, daemon: Daemon) -> None:
        pid = daemon.process.pid

        def warm_up(n: int) -> None:
            # TLS, the portal, the parser loaded; the heap grown by eight
            # messages at once, as below.
            with daemon.starttls() as warm:
                warm.login("apikey", TOKEN)
                warm.sendmail("a@example.com", ["b@example.net"], big_message(SIZE, 1000 + n))

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(warm_up, range(8)))
        time.sleep(2.5)  # the heap trimmer's second
        before = rss(pid)

        def open_and_send(n: int) -> tuple[smtplib.SMTP, tuple[int, bytes]]:
            client = daemon.starttls() if n % 2 else daemon.implicit()
            client.login("apikey", TOKEN)
            client.mail("a@example.com")
            client.rcpt("b@example.net")
            return client, client.data(big_message(SIZE, n))

        with ThreadPoolExecutor(8) as pool:
            opened = list(pool.map(open_and_send, range(CLIENTS)))
        clients = [c for c, _ in opened]
        cls.first = [reply for _, reply in opened]
        time.sleep(2.5)  # the heap trimmer gives freed pages back
        cls.growth = rss(pid) - before
        cls.second = []
        cls.quit = []
        for n, client in enumerate(clients):
            client.mail("a@example.com")
            client.rcpt("b@example.net")
            cls.second.append(client.data(big_message(SIZE, CLIENTS + n)))
            cls.quit.append(client.quit()[0])
        cls.pipelined = cls._pipelined(daemon)

    @classmethod
    def _pipelined(cls, daemon: Daemon) -> list[bytes]:
        """
        Over implicit TLS: after the greeting, EHLO and 40 NOOPs, each its
        own TLS record, written before any reply is read, then QUIT.  The
        first release comes at the EHLO reply, while the NOOPs' records
        still wait in OpenSSL's receiving buffer.

        @return: Every reply line after the greeting.
        """
        context = daemon.tls_context()
        context.check_hostname = False
        raw = socket.create_connection(("127.0.0.1", daemon.implicit_port), 10)
        with context.wrap_socket(raw) as tls:
            reader = tls.makefile("rb")
            reader.readline()
            for command in [b"EHLO pipelined.test\r\n"] + [b"NOOP\r\n"] * 40:
                tls.sendall(command)
            tls.sendall(b"QUIT\r\n")
            return [line for line in iter(reader.readline, b"")]

    def test_every_message_relayed_whole(self) -> None:
        """
        Both messages of every session got C{250} with the upstream's id,
        and the upstream got them all whole (the warm-up's 8 too).
        """
        for code, text in self.first + self.second:
            self.assertEqual(code, 250, text)
            self.assertRegex(text.decode(), r"^2\.0\.0 Ok: queued as up-\d+$")
        self.assertEqual(len(self.received), 2 * CLIENTS + 8)
        expected = big_message(SIZE, 0).split(b"\r\n\r\n", 1)[1].replace(b"\r\n", b"\n")
        for request in self.received:
            self.assertEqual(request["json"]["text"].encode(), expected)

    def test_records_waiting_at_a_release_are_read_in_order(self) -> None:
        """
        The records still waiting at the first release are all read, in
        order: the EHLO reply, 40 NOOP replies and the 221.
        """
        replies = [line.decode() for line in self.pipelined]
        ehlo = [line for line in replies if line.startswith("250-")]
        self.assertTrue(ehlo, replies)
        rest = replies[len(ehlo) :]
        self.assertTrue(rest[0].startswith("250 "), rest[0])
        self.assertEqual(rest[1:41], ["250 2.0.0 Ok\r\n"] * 40)
        self.assertTrue(rest[41].startswith("221 "), rest[41:])
        self.assertEqual(len(rest), 42)

    def test_sessions_end_with_221(self) -> None:
        self.assertEqual(self.quit, [221] * CLIENTS)

    def test_idle_session_after_a_large_message_is_small(self) -> None:
        """
        Each idle session costs under 64 KiB of resident memory (about
        30 KiB: OpenSSL's state, Twisted's and relayd's objects), not the
        85 KiB more its last socket read of DATA would keep.
        """
        self.assertLess(self.growth / CLIENTS, 64 * KiB, f"{self.growth / CLIENTS / KiB:.1f} KiB")

    def test_no_traceback(self) -> None:
        self.assertNotIn("Traceback", self.log)


class _Handle:
    """
    A transport whose C{getHandle()} is C{handle}, as Twisted's TLS
    transports' is their pyOpenSSL connection.
    """

    def __init__(self, handle: object) -> None:
        self.handle = handle

    def getHandle(self) -> object:
        return self.handle


def _move(source: SSL.Connection, destination: SSL.Connection) -> bool:
    """
    Move every byte C{source} has to send into C{destination}.

    @return: Whether anything moved.
    """
    moved = False
    while True:
        try:
            data = source.bio_read(65536)
        except SSL.WantReadError:
            return moved
        destination.bio_write(data)
        moved = True


def _receive(connection: SSL.Connection) -> bytes:
    """
    @return: All the application data C{connection} can decrypt now.
    """
    got = b""
    while True:
        try:
            got += connection.recv(65536)
        except SSL.WantReadError:
            return got


class ReleaseBuffersTests(SynchronousTestCase):
    """
    L{release_buffers}: a TLS connection's memory BIOs give back the
    largest buffer they held, and the TLS stream goes on unchanged.
    """

    def setUp(self) -> None:
        self.server_context = ServerTLS(_self_signed(self)).options.getContext()

    def _pair(self) -> tuple[SSL.Connection, SSL.Connection]:
        """
        @return: A server and a client connection on memory BIOs, the TLS
            1.3 handshake done, as Twisted's TLS protocol makes them.
        """
        server = SSL.Connection(self.server_context, None)
        server.set_accept_state()
        client = SSL.Connection(SSL.Context(SSL.TLS_CLIENT_METHOD), None)
        client.set_connect_state()
        for _ in range(6):
            for side in (client, server):
                try:
                    side.do_handshake()
                except SSL.WantReadError:
                    pass
            _move(client, server)
            _move(server, client)
        self.assertEqual(server.get_protocol_version_name(), "TLSv1.3")
        return server, client

    def test_bytes_waiting_in_both_directions_survive(self) -> None:
        """
        Records received but not yet decrypted, and records made but not
        yet sent, are all still there after the release, in order; the
        session then goes on both ways.
        """
        server, client = self._pair()
        client.send(b"MAIL FROM:<a@example.com>\r\n")
        client.send(b"RCPT TO:<b@example.net>\r\n")
        _move(client, server)  # in the server's receiving BIO, undecrypted
        server.send(b"250 2.0.0 Ok\r\n")  # in the server's sending BIO
        self.assertTrue(release_buffers(_Handle(server)))
        self.assertEqual(
            _receive(server), b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.net>\r\n"
        )
        _move(server, client)
        self.assertEqual(_receive(client), b"250 2.0.0 Ok\r\n")
        client.send(b"DATA\r\n")
        _move(client, server)
        self.assertEqual(_receive(server), b"DATA\r\n")
        server.send(b"354 Go ahead\r\n")
        _move(server, client)
        self.assertEqual(_receive(client), b"354 Go ahead\r\n")

    def test_end_of_stream_kept(self) -> None:
        """
        Once the receiving side was told the connection ended
        (C{bio_shutdown}, as Twisted does when the TCP connection is
        lost), it still reads as ended after a release, not as "wait for
        more".
        """
        server, _ = self._pair()
        server.bio_shutdown()
        self.assertTrue(release_buffers(_Handle(server)))
        self.assertRaises(SSL.SysCallError, server.recv, 1024)
        server, _ = self._pair()
        self.assertTrue(release_buffers(_Handle(server)))
        self.assertRaises(SSL.WantReadError, server.recv, 1024)

    @skipIf(glibc_heap() is None, "the C library is not glibc 2.33+")
    def test_largest_buffers_given_back(self) -> None:
        """
        After 64 KiB each way, a connection's BIOs hold over 100 KiB; the
        release gives it back (glibc's count of bytes in use falls by
        that much per connection).
        """
        heap = glibc_heap()
        assert heap is not None
        pairs = [self._pair() for _ in range(40)]
        block = b"x" * 65536
        for server, client in pairs:
            client.sendall(block)
            _move(client, server)
            self.assertEqual(len(_receive(server)), len(block))
            server.sendall(block)
            _move(server, client)
            self.assertEqual(len(_receive(client)), len(block))
        before = heap.used_bytes()
        for server, _ in pairs:
            self.assertTrue(release_buffers(_Handle(server)))
        freed = (before - heap.used_bytes()) / len(pairs)
        self.assertGreater(freed, 100 * 1024)

    def test_not_a_tls_connection(self) -> None:
        """
        Without a pyOpenSSL connection behind the transport, nothing is
        done: C{False}.
        """
        self.assertFalse(release_buffers(object()))
        self.assertFalse(release_buffers(_Handle(object())))

        class Broken:
            def getHandle(self) -> object:
                raise RuntimeError("no handle")

        self.assertFalse(release_buffers(Broken()))
