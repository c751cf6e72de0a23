"""
The processes' lifetime, end to end: workers stop when their supervisor is
killed, so a restart on the same ports works; a port already in use stops
start-up with one line and exit status 1.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import unittest
from pathlib import Path

from tests.test_e2e import ROOT, SIMPLE, TOKEN, Daemon, Upstream, children


def alive(pid: int) -> bool:
    """
    C{pid} runs (a zombie waiting for its parent's C{wait} does not).
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def start_again(daemon: Daemon) -> subprocess.Popen[bytes]:
    """
    Run C{twist relayd} once more on C{daemon}'s configuration and ports;
    return the process once both listeners accept, or once it exited.
    """
    log = open(daemon.dir / "relayd-again.log", "wb")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "twisted",
            "--log-format=text",
            "relayd",
            "--config",
            str(daemon.dir / "relayd.toml"),
        ],
        stdout=log,
        stderr=subprocess.PIPE,
        cwd=str(daemon.dir),
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )
    log.close()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and process.poll() is None:
        try:
            socket.create_connection(("127.0.0.1", daemon.implicit_port), 0.2).close()
            socket.create_connection(("127.0.0.1", daemon.starttls_port), 0.2).close()
            return process
        except OSError:
            time.sleep(0.05)
    return process


class SupervisorDeathTests(unittest.TestCase):
    def test_workers_exit_when_the_supervisor_is_killed(self) -> None:
        """
        C{kill -9} of the supervisor: its worker stops within a few seconds
        (it logs why), and relayd starts again on the same ports and relays
        a message.
        """
        upstream = Upstream()
        daemon = Daemon(f"http://127.0.0.1:{upstream.port}/send", workers=2)
        again = None
        try:
            deadline = time.monotonic() + 20
            while not children(daemon.process.pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            (worker,) = children(daemon.process.pid)
            time.sleep(1)  # let the worker adopt the sockets
            daemon.process.send_signal(signal.SIGKILL)
            daemon.process.wait(10)
            deadline = time.monotonic() + 10
            while alive(worker) and time.monotonic() < deadline:
                time.sleep(0.1)
            self.assertFalse(alive(worker), "the orphaned worker still runs")
            self.assertIn("supervisor gone: stopping", daemon.logtext())

            again = start_again(daemon)
            if again.poll() is not None:
                self.fail(f"relayd did not start again: {again.communicate()[1]!r}")
            with daemon.implicit() as client:
                client.login("apikey", TOKEN)
                self.assertEqual(client.sendmail("a@example.com", ["b@example.net"], SIMPLE), {})
            self.assertEqual(len(upstream.requests), 1)
            self.assertNotIn("Traceback", daemon.logtext())
        finally:
            if again is not None:
                again.terminate()
                again.wait(30)
                if again.stderr:
                    again.stderr.close()
            daemon.stop()
            upstream.stop()


class PortInUseTests(unittest.TestCase):
    def test_port_in_use_is_one_line_and_exit_1(self) -> None:
        """
        A second daemon on the same ports: one line naming the listener,
        its endpoint and the error; exit status 1; no traceback.
        """
        daemon = Daemon("http://127.0.0.1:9/send")
        try:
            second = start_again(daemon)
            _, err = second.communicate(timeout=60)
            stderr = err.decode("utf-8", "replace")
            self.assertEqual(second.returncode, 1, stderr)
            endpoint = f"tcp:port={daemon.starttls_port}:interface=127.0.0.1"
            self.assertEqual(
                stderr.strip().splitlines(),
                [f"relayd: listeners[0] ({endpoint}): cannot listen: Address already in use"],
            )
        finally:
            daemon.stop()
