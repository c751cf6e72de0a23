"""
The memory bound end to end: the real daemon with a fast upstream, ten
clients sending a 24 MB message each at once, with the default C{[limits]
max_memory_bytes}.  Its peak resident memory (C{VmHWM} in C{/proc}) must
grow by less than 300 MiB, every client gets 250 or C{452 4.3.1}, and
another session's NOOP is answered in under 50 ms meanwhile.  And the
memory of one message: a 25 MiB message with a 24 MB attachment grows the
peak by at most 1.5 times its size, and the resident memory goes back to
where it was.
"""

from __future__ import annotations

import base64
import json
import os
import smtplib
import subprocess
import sys
import threading
import time
import unittest
from pathlib import Path
from typing import Any

from tests.test_e2e import TOKEN, Daemon, Upstream

MiB = 1024 * 1024
SIZE = 24 * 1000 * 1000


def status(pid: int, field: str) -> int:
    """
    @return: The C{field} (C{VmRSS}, C{VmHWM}) of process C{pid}, in bytes.
    """
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


#: A NOOP prober in its own process (this one is busy sending): NOOP every
#: 20 ms until its stdin closes, then print the delays (seconds) as JSON.
PROBE = """
import json, socket, sys, threading, time
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), 10)
f = s.makefile("rb")
f.readline()
done = threading.Event()
threading.Thread(target=lambda: (sys.stdin.read(), done.set()), daemon=True).start()
print("ready", flush=True)
delays = []
while not done.is_set():
    t = time.monotonic()
    s.sendall(b"NOOP\\r\\n")
    assert f.readline() == b"250 2.0.0 Ok\\r\\n"
    delays.append(time.monotonic() - t)
    time.sleep(0.02)
print(json.dumps(delays))
"""


def big_message(size: int, n: int) -> bytes:
    """
    @return: An RFC 5322 message of about C{size} bytes (a text body).
    """
    head = f"From: a@example.com\r\nTo: b@example.net\r\nSubject: big {n}\r\n\r\n".encode()
    line = b"x" * 76 + b"\r\n"
    return head + line * (size // len(line))


class OnceOnDaemon(unittest.TestCase):
    """
    A real daemon and upstream for the whole class: C{_run} drives them
    once in the class set-up; then each test checks one promise.

    @ivar received: The requests the upstream got (L{Upstream.requests}).
    @ivar log: The daemon's log.
    """

    received: list[dict[str, Any]]
    log: str
    #: More configuration for the daemon (TOML tables).
    extra = ""

    @classmethod
    def setUpClass(cls) -> None:
        upstream = Upstream()
        daemon = Daemon(f"http://127.0.0.1:{upstream.port}/v1/send", cls.extra)
        try:
            cls._run(daemon)
        finally:
            cls.received = list(upstream.requests)
            cls.log = daemon.logtext()
            daemon.stop()
            upstream.stop()

    @classmethod
    def _run(cls, daemon: Daemon) -> None:
        """
        Drive C{daemon}; keep what the tests check on the class.
        """
        raise NotImplementedError


class MemoryBoundTests(OnceOnDaemon):
    """
    The ten clients run once (class set-up); each test checks one promise.
    """

    codes: list[int]
    growth: int
    delays: list[float]

    @classmethod
    def _run(cls, daemon: Daemon) -> None:
        pid = daemon.process.pid
        with daemon.starttls() as warm:  # TLS and the portal loaded once
            warm.login("apikey", TOKEN)
        before = max(status(pid, "VmRSS"), status(pid, "VmHWM"))
        codes: list[int] = []
        lock = threading.Lock()
        go = threading.Barrier(11)

        def client(n: int) -> None:
            data = big_message(SIZE, n)
            with daemon.starttls() as c:
                c.login("apikey", TOKEN)
                go.wait()
                try:
                    c.sendmail("a@example.com", ["b@example.net"], data)
                    code = 250
                except smtplib.SMTPDataError as e:
                    code = e.smtp_code if e.smtp_error[:5] == b"4.3.1" else -e.smtp_code
            with lock:
                codes.append(code)

        threads = [threading.Thread(target=client, args=(n,)) for n in range(10)]
        for t in threads:
            t.start()
        probe = subprocess.Popen(
            [sys.executable, "-c", PROBE, str(daemon.starttls_port)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert probe.stdin is not None and probe.stdout is not None
        assert probe.stdout.readline() == "ready\n"
        go.wait()
        for t in threads:
            t.join()
        out, _ = probe.communicate("", timeout=30)
        cls.delays = sorted(json.loads(out))
        cls.growth = status(pid, "VmHWM") - before
        cls.codes = sorted(codes)

    def test_no_traceback(self) -> None:
        self.assertNotIn("Traceback", self.log)

    def test_every_client_gets_250_or_452(self) -> None:
        """
        Each client gets 250 (relayed: one upstream request each) or
        C{452 4.3.1} (the memory bound); at least one is relayed.
        """
        self.assertEqual(len(self.codes), 10)
        self.assertTrue(set(self.codes) <= {250, 452}, self.codes)
        self.assertIn(250, self.codes)
        self.assertEqual(len(self.received), self.codes.count(250))

    def test_peak_memory_growth_under_300_mib(self) -> None:
        """
        The peak resident memory grows by less than 300 MiB (on main: 728
        MB for the same load with a 50 MB budget).
        """
        self.assertLess(self.growth, 300 * MiB, f"{self.growth / MiB:.0f} MiB")

    def test_other_session_noop_under_50_ms(self) -> None:
        """
        Another session's NOOPs (about 100, one every 20 ms while the ten
        messages are received, built and sent) are answered in under 50 ms,
        all but the slowest 5% (measured on a quiet 2-core machine: every
        one, the slowest 37 to 46 ms); none waits 100 ms.  Large messages
        are built one at a time in the thread pool
        (L{relayd.pipeline.Pipeline}) and the GIL changes hands every
        0.1 ms while a build runs (L{relayd.tap.GIL_SWITCH_INTERVAL}); the
        slowest 5% are left to the test machine's scheduler, whose two
        cores this test shares with its own ten TLS clients, upstream and
        prober.  Before: the slowest waited 620 ms, then 130 to 310 ms.
        """
        p95 = self.delays[int(len(self.delays) * 0.95)]
        slowest = [round(d * 1000) for d in self.delays[-5:]]
        self.assertGreater(len(self.delays), 20)
        self.assertLess(p95, 0.05, f"NOOP 95th percentile {p95 * 1000:.0f} ms; slowest {slowest}")
        self.assertLess(self.delays[-1], 0.1, f"NOOP slowest {slowest} ms")


def attachment_message(size: int) -> bytes:
    """
    @return: An RFC 5322 message of about C{size} bytes: a short text body
        and one base64 attachment of random bytes.
    """
    head = (
        b"From: a@example.com\r\nTo: b@example.net\r\nSubject: one big attachment\r\n"
        b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n'
        b"--b\r\nContent-Type: text/plain\r\n\r\nSee the attachment.\r\n"
        b"--b\r\nContent-Type: application/pdf\r\n"
        b'Content-Disposition: attachment; filename="big.pdf"\r\n'
        b"Content-Transfer-Encoding: base64\r\n\r\n"
    )
    content = os.urandom((size - len(head) - 10) * 57 // 78)
    return head + base64.encodebytes(content).replace(b"\n", b"\r\n") + b"--b--\r\n"


class OneMessageMemoryTests(OnceOnDaemon):
    """
    One 25 MiB message with a 24 MB attachment (class set-up); each test
    checks one promise.
    """

    size: int
    growth: int
    left: int

    @classmethod
    def _run(cls, daemon: Daemon) -> None:
        pid = daemon.process.pid
        data = attachment_message(25 * MiB - 4096)
        cls.size = len(data)
        with daemon.starttls() as c:
            c.login("apikey", TOKEN)
            c.sendmail("a@example.com", ["b@example.net"], attachment_message(64 * 1024))
            time.sleep(0.5)
            before = status(pid, "VmRSS")
            # The peak from here on: the high-water mark is reset.
            Path(f"/proc/{pid}/clear_refs").write_text("5")
            c.sendmail("a@example.com", ["b@example.net"], data)
        cls.growth = status(pid, "VmHWM") - before
        time.sleep(1.0)
        cls.left = status(pid, "VmRSS") - before

    def test_relayed(self) -> None:
        self.assertEqual(len(self.received), 2)

    def test_peak_growth_at_most_one_and_a_half_times_the_message(self) -> None:
        """
        The peak resident memory grows by at most 1.5 times the message
        (on main: about 3 times).
        """
        self.assertLessEqual(
            self.growth, 1.5 * self.size, f"{self.growth / MiB:.1f} MiB for {self.size / MiB} MiB"
        )

    def test_memory_back_to_baseline(self) -> None:
        """
        Afterwards the resident memory is back within 5 MiB of where it was.
        """
        self.assertLess(self.left, 5 * MiB, f"{self.left / MiB:.1f} MiB left")
