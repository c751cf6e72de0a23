"""
Back-pressure (L{relayd.smtp.flow}): relayd stops handling and then reading
the commands of a client that does not read its replies, so such a client
cannot make the daemon grow; units on a L{StringTransport}, and the real
daemon on real sockets, its memory read from C{/proc}.
"""

from __future__ import annotations

import socket
import ssl
import time
import unittest
from typing import ClassVar

from twisted.internet.interfaces import IPushProducer
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from relayd.smtp.flow import INPUT_LIMIT, OUTPUT, WAITING, ReadGate
from tests.smtp.support import HOST, NOOP_OK, session
from tests.test_e2e import Daemon, rss

HELP = "214 2.0.0 See RFC 5321"
MiB = 1024 * 1024


class ProducerTests(SynchronousTestCase):
    def test_session_registers_as_a_streaming_producer(self) -> None:
        """
        The session registers its L{OutputFlow} with the transport as a
        streaming producer, so the transport says when its buffer is full.
        """
        s = session()
        self.assertIs(s.transport.producer, s.proto.flow)
        self.assertTrue(s.transport.streaming)
        self.assertTrue(verifyObject(IPushProducer, s.proto.flow))

    def test_no_reply_while_the_client_does_not_read(self) -> None:
        """
        While the transport's buffer is full, pipelined commands wait; once
        it drained they are answered, in order.
        """
        s = session()
        s.proto.flow.pauseProducing()
        self.assertEqual(s.send("NOOP\r\nHELP\r\nNOOP\r\n"), [])
        s.proto.flow.resumeProducing()
        lines = s.replies()
        self.assertEqual(lines[0], NOOP_OK)
        self.assertEqual(lines[-1], NOOP_OK)
        self.assertEqual(len(lines), 3)

    def test_reading_stops_once_input_piles_up(self) -> None:
        """
        Past L{INPUT_LIMIT} bytes of waiting input the transport is paused
        (nothing more is read); it reads again once the client read.
        """
        s = session()
        s.proto.flow.pauseProducing()
        count = INPUT_LIMIT // len("NOOP\r\n") + 1
        self.assertEqual(s.send("NOOP\r\n" * count), [])
        self.assertEqual(s.transport.producerState, "paused")
        s.proto.flow.resumeProducing()
        self.assertEqual(s.transport.producerState, "producing")
        self.assertEqual(s.replies(), [NOOP_OK] * count)

    def test_reading_goes_on_below_the_input_limit(self) -> None:
        """
        A full output buffer alone does not stop reading: a TLS transport
        pauses its producer during the handshake, which must still read.
        """
        s = session()
        s.proto.flow.pauseProducing()
        s.send("NOOP\r\n")
        self.assertEqual(s.transport.producerState, "producing")

    def test_idle_timeout_while_not_reading_aborts(self) -> None:
        """
        A client that never reads is timed out and its connection aborted
        (a graceful close would wait for it to read, forever).
        """
        s = session()
        s.proto.flow.pauseProducing()
        s.send("NOOP\r\n" * (INPUT_LIMIT // 6 + 1))
        s.clock.advance(300)
        self.assertEqual(s.replies(), [f"421 4.4.2 {HOST} Timeout exceeded, closing connection"])
        self.assertTrue(s.transport.disconnected)

    def test_stopped_flow_ignores_later_events(self) -> None:
        """
        After C{stopProducing} (the connection is gone) nothing is paused.
        """
        s = session()
        s.proto.flow.stopProducing()
        s.proto.flow.pauseProducing()
        self.assertFalse(s.proto.flow.blocked)
        self.assertEqual(s.send("NOOP\r\n"), [NOOP_OK])


class ReadGateTests(SynchronousTestCase):
    def test_reading_resumes_when_the_last_reason_goes(self) -> None:
        """
        A command waiting and a blocked output both hold input; reading
        resumes only when neither holds.
        """
        transport = StringTransport()
        gate = ReadGate(transport)
        gate.hold(WAITING)
        gate.hold(OUTPUT)
        gate.release(WAITING)
        self.assertEqual(transport.producerState, "paused")
        gate.release(WAITING)
        self.assertEqual(transport.producerState, "paused")
        gate.release(OUTPUT)
        self.assertEqual(transport.producerState, "producing")


def flood(sock: socket.socket, seconds: float) -> int:
    """
    Send pipelined HELP commands on C{sock} for C{seconds}, reading nothing.

    @return: Bytes sent.
    """
    chunk = b"HELP\r\n" * 2000
    sent = 0
    sock.settimeout(0.2)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            sent += sock.send(chunk)
        except (TimeoutError, ssl.SSLWantWriteError, BlockingIOError):
            continue
    return sent


class NonReadingClientTests(unittest.TestCase):
    """
    The real daemon: a client that pipelines HELP without reading makes it
    grow by less than 16 MiB (on main it grew to 1.5 GB in 31 s).
    """

    daemon: ClassVar[Daemon]

    @classmethod
    def setUpClass(cls) -> None:
        cls.daemon = Daemon("http://127.0.0.1:9/send")

    @classmethod
    def tearDownClass(cls) -> None:
        log = cls.daemon.logtext()
        cls.daemon.stop()
        assert "Traceback" not in log, log

    def _check(self, connect: socket.socket) -> None:
        pid = self.daemon.process.pid
        before = rss(pid)
        with connect as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sent = flood(sock, 4.0)
            grown = rss(pid) - before
        self.assertGreater(sent, 1 * MiB)  # the client did send a lot
        self.assertLess(grown, 16 * MiB)
        # The daemon still answers others at once.
        with socket.create_connection(("127.0.0.1", self.daemon.starttls_port), 5) as other:
            f = other.makefile("rb")
            self.assertTrue(f.readline().startswith(b"220 "))
            other.sendall(b"NOOP\r\n")
            self.assertEqual(f.readline(), b"250 2.0.0 Ok\r\n")

    def test_plaintext_client_that_never_reads(self) -> None:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", self.daemon.starttls_port))
        self._check(sock)

    def test_tls_client_that_never_reads(self) -> None:
        context = ssl.create_default_context(cafile=self.daemon.cert)
        context.check_hostname = False
        raw = socket.socket()
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        raw.connect(("127.0.0.1", self.daemon.implicit_port))
        raw.settimeout(10)
        sock = context.wrap_socket(raw)
        self._check(sock)
