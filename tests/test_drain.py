"""
Stopping delivers every reply: the real daemon gets C{SIGTERM} with twenty
messages in flight over STARTTLS and implicit TLS (one of 5 MB) while a slow
real upstream holds them, and every client still gets its C{250}; an idle
session gets C{421 4.3.2}; the process exits 0.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time
import unittest
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from unittest.mock import Mock

from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactor
from twisted.trial.unittest import SynchronousTestCase

from relayd.service import SessionCloser
from relayd.smtp import DeliveryTracker
from relayd.workers import SupervisorWatch
from tests.test_e2e import SIMPLE, TOKEN, Daemon

MESSAGES = 20
BIG = 5 * 1024 * 1024


class SlowUpstream:
    """
    A real HTTP upstream on 127.0.0.1 that holds every request until
    L{release} (then a little longer, staggered, so the answers arrive over
    about a second), and answers C{200} with an id.
    """

    def __init__(self) -> None:
        self.received = 0
        self.answered = 0
        self.lock = threading.Lock()
        self.gate = threading.Event()
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                json.loads(body)
                with upstream.lock:
                    upstream.received += 1
                    n = upstream.received
                upstream.gate.wait(60)
                time.sleep(0.05 * n)
                data = json.dumps({"id": f"slow-{n}"}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                with upstream.lock:
                    upstream.answered += 1

            def log_message(self, *args: Any) -> None:
                pass

        class Server(ThreadingHTTPServer):
            request_queue_size = 128
            daemon_threads = True

        self.server = Server(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/send"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait_received(self, count: int, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if self.received >= count:
                    return self.received
            time.sleep(0.05)
        return self.received

    def stop(self) -> None:
        self.gate.set()
        self.server.shutdown()
        self.server.server_close()


def send_one(daemon: Daemon, index: int, replies: dict[int, Any]) -> None:
    """
    One client: STARTTLS for even C{index}, implicit TLS for odd; message 0
    is 5 MB.  Records the reply to the end of data, or the exception.
    """
    body = SIMPLE
    if index == 0:
        line = b"x" * 998 + b"\r\n"
        body = SIMPLE + line * (BIG // len(line))
    try:
        client = daemon.starttls() if index % 2 == 0 else daemon.implicit()
        client.timeout = 60
        client.sock.settimeout(60)
        with client:
            client.login("apikey", TOKEN)
            client.mail("a@example.com")
            client.rcpt("b@example.net")
            replies[index] = client.data(body)
    except Exception as e:  # recorded and asserted on
        replies[index] = e


class DrainTests(unittest.TestCase):
    def drain(self, workers: int) -> None:
        upstream = SlowUpstream()
        daemon = Daemon(upstream.url, workers=workers)
        try:
            if workers > 1:
                time.sleep(2)  # let the worker adopt the sockets
            idle = socket.create_connection(("127.0.0.1", daemon.starttls_port), 10)
            idle_file = idle.makefile("rb")
            self.assertTrue(idle_file.readline().startswith(b"220 relay.test "))
            replies: dict[int, Any] = {}
            threads = [
                threading.Thread(target=send_one, args=(daemon, i, replies))
                for i in range(MESSAGES)
            ]
            for t in threads:
                t.start()
            self.assertEqual(upstream.wait_received(MESSAGES, 60), MESSAGES, daemon.logtext())
            daemon.process.send_signal(signal.SIGTERM)
            time.sleep(1)
            upstream.gate.set()
            for t in threads:
                t.join(60)
            rc = daemon.process.wait(60)
            log = daemon.logtext()
            self.assertEqual(
                {i: r for i, r in replies.items() if not (isinstance(r, tuple) and r[0] == 250)},
                {},
                log,
            )
            self.assertEqual(len(replies), MESSAGES)
            self.assertEqual(upstream.answered, MESSAGES)
            self.assertEqual(rc, 0, log)
            if workers == 1:
                # Only the supervisor is sure to hold this session.
                self.assertEqual(
                    idle_file.readline(),
                    b"421 4.3.2 relay.test Service shutting down, closing connection\r\n",
                )
                self.assertEqual(idle_file.read(), b"")
            idle.close()
            self.assertNotIn("Traceback", log)
        finally:
            daemon.stop()
            upstream.stop()

    def test_sigterm_delivers_every_reply_in_flight(self) -> None:
        """
        C{SIGTERM} with twenty messages in flight (one of 5 MB): twenty
        C{250} replies over TLS, twenty upstream requests, exit status 0; the
        idle session gets C{421 4.3.2}.
        """
        self.drain(workers=1)

    def test_sigterm_with_workers_delivers_every_reply_in_flight(self) -> None:
        """
        The same with C{workers = 2}: the supervisor waits for its worker
        to drain.
        """
        self.drain(workers=2)


class IdleOnlyTests(unittest.TestCase):
    def test_idle_sessions_get_421_and_the_daemon_exits_at_once(self) -> None:
        """
        With no message in flight, C{SIGTERM} answers every open session
        C{421 4.3.2} (after STARTTLS too) and exits 0 without waiting.
        """
        daemon = Daemon("http://127.0.0.1:9/send")
        try:
            raw = socket.create_connection(("127.0.0.1", daemon.starttls_port), 10)
            f = raw.makefile("rb")
            self.assertTrue(f.readline().startswith(b"220 relay.test "))
            tls = daemon.starttls()
            tls.ehlo()
            started = time.monotonic()
            daemon.process.send_signal(signal.SIGTERM)
            self.assertEqual(
                f.readline(),
                b"421 4.3.2 relay.test Service shutting down, closing connection\r\n",
            )
            self.assertEqual(f.read(), b"")
            self.assertEqual(
                tls.getreply(),
                (421, b"4.3.2 relay.test Service shutting down, closing connection"),
            )
            # A client closes when the server does; relayd waits for that
            # (or for the stop timeout) to be sure the 421 got through TLS.
            tls.close()
            raw.close()
            self.assertEqual(daemon.process.wait(30), 0, daemon.logtext())
            self.assertLess(time.monotonic() - started, 5)
        finally:
            daemon.stop()


class SupervisorWatchTests(SynchronousTestCase):
    def test_end_of_file_on_the_pipe_stops_the_worker(self) -> None:
        """
        The supervisor's end of the pipe closing (it died) stops the worker
        once, with the reason; nothing before.
        """
        read, write = os.pipe()
        reactor = MemoryReactor()
        stops: list[str] = []
        watch = SupervisorWatch(reactor, read, stops.append)
        watch.startService()
        self.assertIn(watch, reactor.getReaders())
        watch.doRead()
        self.assertEqual(stops, [])
        os.close(write)
        watch.doRead()
        self.assertEqual(stops, ["supervisor gone"])
        self.assertNotIn(watch, reactor.getReaders())
        watch.stopService()
        os.close(read)


class SessionCloserTests(SynchronousTestCase):
    def test_sessions_still_open_after_the_timeout_are_aborted(self) -> None:
        """
        A session whose connection does not close within the timeout is
        aborted, and the stop completes.
        """
        tracker = DeliveryTracker()
        clock = Clock()
        session = Mock()
        tracker.opened(session)
        closer = SessionCloser(tracker, clock, 35)
        closer.startService()
        stopped = closer.stopService()
        session.shut_down.assert_called_once_with()
        clock.advance(34)
        self.assertNoResult(stopped)
        clock.advance(1)
        self.successResultOf(stopped)
        session.transport.abortConnection.assert_called_once_with()

    def test_a_session_closes_after_its_reply(self) -> None:
        """
        A session with a message under way is told to close only once its
        reply is written, and the stop completes when its connection closes.
        """
        tracker = DeliveryTracker()
        clock = Clock()
        session = Mock()
        tracker.opened(session)
        tracker.begin(session)
        closer = SessionCloser(tracker, clock, 35)
        closer.startService()
        stopped = closer.stopService()
        session.shut_down.assert_not_called()
        tracker.end(session)
        session.shut_down.assert_called_once_with(after_reply=True)
        self.assertNoResult(stopped)
        tracker.closed(session)
        self.successResultOf(stopped)
        session.transport.abortConnection.assert_not_called()
