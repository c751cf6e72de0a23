"""
systemd integration: the units pass C{systemd-analyze verify}; sd_notify
(L{relayd.sdnotify}) on a socket the test binds; and the real daemon, run
with a fake C{NOTIFY_SOCKET}, says C{READY=1} only once its listeners (and
its workers') accept connections, then C{STOPPING=1} on C{SIGTERM}.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import unittest
from pathlib import Path
from typing import Any

from twisted.internet import defer
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from relayd.sdnotify import SystemdReadiness, notify, watchdog_interval
from relayd.tls import ensure_self_signed
from relayd.tokens import digest
from tests.test_e2e import ROOT, free_port


class Notifications:
    """
    A Unix datagram socket standing in for systemd's C{$NOTIFY_SOCKET}.
    """

    def __init__(self, folder: Path) -> None:
        self.path = str(folder / "notify")
        self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.socket.bind(self.path)
        self.socket.settimeout(0.1)

    def receive(self) -> list[bytes]:
        """
        @return: The datagrams that arrived so far.
        """
        got = []
        while True:
            try:
                got.append(self.socket.recv(4096))
            except TimeoutError:
                return got

    def close(self) -> None:
        self.socket.close()


class NotifyTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.folder = Path(tempfile.mkdtemp())
        self.addCleanup(shutil.rmtree, self.folder, True)
        self.notifications = Notifications(self.folder)
        self.addCleanup(self.notifications.close)

    def test_notify_sends_one_datagram(self) -> None:
        self.assertTrue(notify("READY=1\nSTATUS=x", {"NOTIFY_SOCKET": self.notifications.path}))
        self.assertEqual(self.notifications.receive(), [b"READY=1\nSTATUS=x"])

    def test_abstract_socket(self) -> None:
        name = f"relayd-test-{os.getpid()}"
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.bind("\0" + name)
            self.assertTrue(notify("WATCHDOG=1", {"NOTIFY_SOCKET": "@" + name}))
            self.assertEqual(s.recv(100), b"WATCHDOG=1")

    def test_without_systemd_nothing_is_sent(self) -> None:
        self.assertFalse(notify("READY=1", {}))
        self.assertFalse(notify("READY=1", {"NOTIFY_SOCKET": "vsock:2:1"}))

    def test_unreachable_socket_is_not_an_error(self) -> None:
        self.assertFalse(notify("READY=1", {"NOTIFY_SOCKET": str(self.folder / "gone")}))

    def test_watchdog_interval_is_half_the_timeout(self) -> None:
        self.assertEqual(watchdog_interval({"WATCHDOG_USEC": "30000000"}, 7), 15.0)
        self.assertEqual(
            watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "7"}, 7), 15.0
        )
        self.assertEqual(
            watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "8"}, 7), 0
        )
        self.assertEqual(watchdog_interval({}, 7), 0)

    def test_ready_only_once_every_listener_listens(self) -> None:
        """
        L{SystemdReadiness} waits for each listener's C{when_listening()}, then
        sends C{READY=1}; it sends C{STOPPING=1} when stopped; pings the
        watchdog at half its timeout.
        """
        waiting: list[defer.Deferred[None]] = []

        class Listener:
            def when_listening(self) -> defer.Deferred[None]:
                d: defer.Deferred[None] = defer.Deferred()
                waiting.append(d)
                return d

        reactor = MemoryReactorClock()
        env = {"NOTIFY_SOCKET": self.notifications.path, "WATCHDOG_USEC": "2000000"}
        readiness = SystemdReadiness(reactor, [Listener(), Listener()], environ=env)
        readiness.startService()
        self.assertEqual(self.notifications.receive(), [b"WATCHDOG=1"])
        waiting[0].callback(None)
        self.assertEqual(self.notifications.receive(), [])
        waiting[1].callback(None)
        self.assertEqual(self.notifications.receive(), [b"READY=1\nSTATUS=accepting connections"])
        reactor.advance(1.0)
        self.assertEqual(self.notifications.receive(), [b"WATCHDOG=1"])
        readiness.stopService()
        self.assertEqual(self.notifications.receive(), [b"STOPPING=1\nSTATUS=draining"])
        reactor.advance(5.0)
        self.assertEqual(self.notifications.receive(), [])


@unittest.skipIf(shutil.which("systemd-analyze") is None, "systemd-analyze is not installed")
class UnitFileTests(unittest.TestCase):
    def test_units_verify(self) -> None:
        """
        C{systemd-analyze verify} accepts etc/relayd.service and
        etc/relayd.socket without a warning (the paths under /opt/relayd
        pointed at this Python's folder, which exists).
        """
        folder = Path(tempfile.mkdtemp())
        self.addCleanup(shutil.rmtree, folder, True)
        bin_dir = os.path.dirname(sys.executable) + "/"
        for name in ("relayd.service", "relayd.socket"):
            text = (ROOT / "etc" / name).read_text().replace("/opt/relayd/bin/", bin_dir)
            (folder / name).write_text(text)
        if not os.path.exists(bin_dir + "relayd"):
            os.symlink(sys.executable, folder / "relayd")
            text = (folder / "relayd.service").read_text().replace(bin_dir, f"{folder}/")
            (folder / "relayd.service").write_text(text)
        done = subprocess.run(
            ["systemd-analyze", "verify", "relayd.service", "relayd.socket"],
            cwd=folder,
            capture_output=True,
            text=True,
            timeout=60,
        )
        self.assertEqual((done.returncode, done.stdout + done.stderr), (0, ""))

    def test_service_is_type_notify(self) -> None:
        text = (ROOT / "etc" / "relayd.service").read_text()
        self.assertIn("\nType=notify\n", text)
        self.assertIn("\nExecStart=/opt/relayd/bin/relayd run --config", text)


TOKEN = "systemd-e2e-token-not-a-secret"


def start(folder: Path, notifications: Notifications, workers: int, **env: str) -> Any:
    """
    Start the real daemon (C{python -m relayd run}) with two STARTTLS
    listeners on free ports and C{NOTIFY_SOCKET} set.

    @return: The process and the ports.
    """
    ensure_self_signed(str(folder / "cert.pem"), str(folder / "key.pem"), "localhost")
    (folder / "tokens.toml").write_text(f'[tokens.e2e]\nsha256 = "{digest(TOKEN).hex()}"\n')
    ports = [free_port(), free_port()]
    (folder / "relayd.toml").write_text(
        f"""
[server]
hostname = "relay.test"
workers = {workers}
[[listeners]]
endpoint = "tcp:port={ports[0]}:interface=127.0.0.1"
[[listeners]]
endpoint = "tcp:port={ports[1]}:interface=127.0.0.1"
[tls]
certificate = "cert.pem"
key = "key.pem"
[auth]
tokens_file = "tokens.toml"
"""
    )
    log = open(folder / "relayd.log", "wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "relayd", "run", "--config", str(folder / "relayd.toml")],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=str(folder),
        env=dict(os.environ, PYTHONPATH=str(ROOT), NOTIFY_SOCKET=notifications.path, **env),
    )
    return process, ports, log


def greeting(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), 5) as s:
        return s.recv(100)


class SystemdReadinessEndToEndTests(unittest.TestCase):
    def run_daemon(self, workers: int, **env: str) -> tuple[Any, list[int], Notifications]:
        folder = Path(tempfile.mkdtemp(prefix="relayd-notify-"))
        self.addCleanup(shutil.rmtree, folder, True)
        notifications = Notifications(folder)
        self.addCleanup(notifications.close)
        process, ports, log = start(folder, notifications, workers, **env)
        self.addCleanup(log.close)

        def stop() -> None:
            if process.poll() is None:
                process.kill()
                process.wait()

        self.addCleanup(stop)
        self.log = folder / "relayd.log"
        return process, ports, notifications

    def wait_ready(self, process: Any, notifications: Notifications) -> list[bytes]:
        seen: list[bytes] = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            seen += notifications.receive()
            if any(b"READY=1" in d.split(b"\n") for d in seen):
                return seen
            self.assertIsNone(process.poll(), self.log.read_text())
        self.fail("no READY=1: " + self.log.read_text())

    def test_ready_after_every_worker_listens_then_stopping(self) -> None:
        """
        With two worker processes besides the supervisor, one C{READY=1}
        arrives (the workers' own go to the supervisor); at that moment
        both listeners greet; C{SIGTERM} brings C{STOPPING=1}.
        """
        process, ports, notifications = self.run_daemon(workers=3)
        seen = self.wait_ready(process, notifications)
        for port in ports:
            self.assertTrue(greeting(port).startswith(b"220 relay.test"))
        text = self.log.read_text()
        self.assertEqual(text.count("started worker"), 2, text)
        self.assertEqual(sum(b"READY=1" in d.split(b"\n") for d in seen), 1)
        process.send_signal(signal.SIGTERM)
        self.assertEqual(process.wait(30), 0)
        later = notifications.receive()
        self.assertIn(b"STOPPING=1\nSTATUS=draining", later)
        self.assertFalse(any(b"READY=1" in d for d in later))

    def test_watchdog_pings(self) -> None:
        process, _, notifications = self.run_daemon(workers=1, WATCHDOG_USEC="400000")
        self.wait_ready(process, notifications)
        time.sleep(0.7)
        self.assertGreaterEqual(notifications.receive().count(b"WATCHDOG=1"), 2)
