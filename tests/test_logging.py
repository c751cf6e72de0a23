"""
Tests of relayd's log output end to end: the real daemon with two worker
processes, run with C{twist --log-format} and C{--log-level}; every process
honours them and names itself in each line.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import unittest
from pathlib import Path

from tests.test_e2e import ROOT, TOKEN, Daemon, Upstream, children, distinct


class LoggingDaemon(Daemon):
    """
    L{Daemon}, restarted with the given C{twist} log options.
    """

    def __init__(self, upstream_url: str, log_args: list[str]) -> None:
        super().__init__(upstream_url, workers=2)
        # Restart the same configuration with the log options under test,
        # once the first daemon's worker has let go of the sockets too.
        workers = children(self.process.pid)
        self.process.terminate()
        self.process.wait(10)
        gone = time.monotonic() + 20
        while any(Path(f"/proc/{pid}").exists() for pid in workers) and time.monotonic() < gone:
            time.sleep(0.1)
        self.log.close()
        self.log = open(self.dir / "relayd.log", "wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "twisted", *log_args, "relayd", "--config"]
            + [str(self.dir / "relayd.toml")],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            cwd=str(self.dir),
            env=dict(os.environ, PYTHONPATH=str(ROOT)),
        )
        deadline = time.monotonic() + 30
        while len(children(self.process.pid)) < 1 and time.monotonic() < deadline:
            time.sleep(0.1)
        # The worker says it listens on its inherited socket (at info:
        # below --log-level=warn, wait a while instead).
        quiet = any(
            arg.startswith("--log-level=") and arg != "--log-level=info" for arg in log_args
        )
        path = self.dir / "relayd.log"
        while time.monotonic() < deadline:
            if quiet:
                time.sleep(3)
                break
            if b"(inherited socket)" in path.read_bytes():
                break
            time.sleep(0.1)

    def send(self, count: int) -> None:
        for _ in range(count):
            with self.implicit() as client:
                client.login("apikey", TOKEN)
                client.sendmail("a@example.com", ["b@example.net"], distinct())

    def finish(self) -> list[str]:
        self.process.terminate()
        self.process.wait(20)
        self.log.flush()
        return (self.dir / "relayd.log").read_text("utf-8").splitlines()


class LogFormatTests(unittest.TestCase):
    def setUp(self) -> None:
        self.upstream = Upstream()
        self.addCleanup(self.upstream.stop)

    def run_daemon(self, *log_args: str, messages: int = 6) -> list[str]:
        daemon = LoggingDaemon(f"http://127.0.0.1:{self.upstream.port}/send", list(log_args))
        try:
            daemon.send(messages)
            return daemon.finish()
        finally:
            daemon.stop()

    def test_json_lines_from_every_process(self) -> None:
        """
        C{--log-format=json}: every line of the supervisor and of the
        worker is one JSON object with the stable fields; each relayed
        message is one transaction event; no line is text.
        """
        lines = self.run_daemon("--log-format=json", messages=6)
        records = [json.loads(line) for line in lines]
        for record in records:
            self.assertLessEqual(
                {"time", "level", "priority", "namespace", "worker", "pid", "message"},
                set(record),
            )
        self.assertEqual({r["worker"] for r in records}, {"main", "0"})
        transactions = [r for r in records if r.get("event") == "transaction"]
        self.assertEqual(len(transactions), 6)
        self.assertEqual({t["reply_code"] for t in transactions}, {250})
        self.assertEqual({t["identity"] for t in transactions}, {"e2e"})
        self.assertEqual({t["tls_version"] for t in transactions}, {"TLSv1.3"})
        self.assertNotIn(TOKEN, "\n".join(lines))
        self.assertEqual([r for r in records if " accepted " in r["message"]], [])

    def test_log_level_warn_applies_to_the_workers(self) -> None:
        """
        C{--log-level=warn}: neither the supervisor nor the worker logs an
        informational line (no transaction event, no "stopping").
        """
        lines = self.run_daemon("--log-format=json", "--log-level=warn", messages=4)
        records = [json.loads(line) for line in lines]
        self.assertEqual([r for r in records if r["priority"] > 4], [])
        self.assertEqual(len(self.upstream.requests), 4)

    def test_debug_level_logs_each_acceptance(self) -> None:
        """
        C{--log-level=debug} in the supervisor and the worker: each accepted
        upstream answer is a debug line (below debug, relayd does not even
        build that event: L{relayd.events.debug_enabled}).
        """
        lines = self.run_daemon("--log-format=json", "--log-level=debug", messages=4)
        records = [json.loads(line) for line in lines]
        accepted = [r for r in records if " accepted " in r["message"]]
        self.assertEqual(len(accepted), 4, [r["message"] for r in records])
        self.assertEqual({r["priority"] for r in accepted}, {7})

    def test_text_names_the_worker(self) -> None:
        """
        Text lines say which process wrote them.
        """
        lines = self.run_daemon("--log-format=text", messages=2)
        self.assertTrue(any("[worker main]" in line for line in lines))
        self.assertTrue(any("[worker 0]" in line for line in lines))
        self.assertFalse(any(line.startswith("{") for line in lines))
