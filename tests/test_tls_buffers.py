"""
Idle TLS sessions after a large message, end to end: the real daemon
over real 127.0.0.1 sockets, 40 clients (half STARTTLS, half implicit
TLS) that each send a 400 KB message and then stay connected.  The TLS
buffers that message grew are given back (L{relayd.tls.release_buffers}),
so the daemon's resident memory grows by far less per idle session than
the about 85 KiB one socket read of DATA leaves in OpenSSL's receiving
buffer; and each session goes on: a second message, then QUIT, and the
upstream got all 80 messages whole.
"""

from __future__ import annotations

import smtplib
import time
from concurrent.futures import ThreadPoolExecutor

from tests.test_e2e import TOKEN, Daemon, rss
from tests.test_memory import OnceOnDaemon, big_message

KiB = 1024
CLIENTS = 40
SIZE = 400 * 1000


class IdleAfterLargeMessageTests(OnceOnDaemon):
    """
    The clients run once (class set-up); each test checks one promise.
    """

    first: list[tuple[int, bytes]]
    second: list[tuple[int, bytes]]
    quit: list[int]
    growth: int

    @classmethod
    def _run(cls, daemon: Daemon) -> None:
        pid = daemon.process.pid
        with daemon.starttls() as warm:  # TLS, the portal, the parser loaded once
            warm.login("apikey", TOKEN)
            warm.sendmail("a@example.com", ["b@example.net"], big_message(SIZE, 999))
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

    def test_every_message_relayed_whole(self) -> None:
        """
        Both messages of every session got C{250} with the upstream's id,
        and the upstream got 81 whole messages (the warm-up's too).
        """
        for code, text in self.first + self.second:
            self.assertEqual(code, 250, text)
            self.assertRegex(text.decode(), r"^2\.0\.0 Ok: queued as up-\d+$")
        self.assertEqual(len(self.received), 2 * CLIENTS + 1)
        expected = big_message(SIZE, 0).split(b"\r\n\r\n", 1)[1].replace(b"\r\n", b"\n")
        for request in self.received:
            self.assertEqual(request["json"]["text"].encode(), expected)

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
