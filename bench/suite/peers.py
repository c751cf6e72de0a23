"""
The peers relayd is compared with: their installation and their start-up.

  - L{Gateway}: C{bench/peers/gateway.py}, the same job written with
    aiosmtpd + aiohttp + stdlib C{email}, run by the Python of
    C{.venv-bench} (L{bench_python} creates it and installs the C{bench}
    extra of C{setup.cfg} into it: relayd's own C{.venv} keeps exactly
    relayd's dependencies).  STARTTLS and implicit TLS, C{AUTH} with the
    benchmark's token, the same certificate and the same upstream sink as
    relayd.
  - L{SmtpSink}: Postfix's C{smtp-sink} (Debian's C{postfix} package,
    installed by L{smtp_sink_path} when missing and run as root), a C
    server that reads and discards: the floor, plaintext and without
    C{AUTH}.

Each peer has what L{suite.load.load_run} measures (C{proc}, C{watcher}:
the CPU time and RSS of its process tree, read from C{/proc}) and an
L{Endpoint} per kind of session.
"""

from __future__ import annotations

import configparser
import hashlib
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from . import BENCH, ROOT
from .harness import Workspace, free_port, wait_port, wait_settled
from .load import Endpoint
from .procstats import Watcher

__all__ = ["BENCH_VENV", "Gateway", "SmtpSink", "bench_python", "smtp_sink_path"]

#: The virtual environment of the peers (and of py-spy).
BENCH_VENV = ROOT / ".venv-bench"
SMTP_SINK = "/usr/sbin/smtp-sink"


def bench_requirements() -> list[str]:
    """
    @return: The C{bench} extra of C{setup.cfg}, one requirement each.
    """
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    text = cfg["options.extras_require"]["bench"]
    return [line.strip() for line in text.splitlines() if line.strip()]


def bench_python() -> Path:
    """
    The Python of C{.venv-bench}, created (with the interpreter running
    this) and given the C{bench} extra if C{aiosmtpd} or C{aiohttp} is
    missing.

    @return: The interpreter's path.
    @raise subprocess.CalledProcessError: The installation failed.
    """
    python = BENCH_VENV / "bin" / "python"
    check = [str(python), "-c", "import aiosmtpd, aiohttp"]
    if python.exists() and subprocess.run(check, capture_output=True).returncode == 0:
        return python
    print(f"installing {' '.join(bench_requirements())} into {BENCH_VENV}", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(BENCH_VENV)], check=True)
    (BENCH_VENV / ".gitignore").write_text("*\n")
    pip = [str(python), "-m", "pip", "install", "-q"]
    subprocess.run([*pip, *bench_requirements()], check=True)
    return python


def smtp_sink_path() -> str | None:
    """
    Postfix's C{smtp-sink}, installed from Debian's C{postfix} package (no
    configuration, no service) when missing and this runs as root with
    C{apt-get}.

    @return: Its path, or C{None} if it is not there and cannot be
        installed here.
    """
    if os.path.exists(SMTP_SINK):
        return SMTP_SINK
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return None
    print("installing Debian's postfix package for smtp-sink", flush=True)
    subprocess.run(
        ["debconf-set-selections"],
        input=b"postfix postfix/main_mailer_type select No configuration\n",
        check=True,
    )
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "install", "-y", "-q", "postfix"], env=env, check=True)
    return SMTP_SINK if os.path.exists(SMTP_SINK) else None


class _Peer:
    """
    A peer's process, its log and its measurement.
    """

    name = ""
    proc: subprocess.Popen[bytes]

    def _start(self, ws: Workspace, command: list[str], ports: list[int]) -> None:
        self.log_path = ws.dir / f"{self.name}.log"
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(command, cwd=ws.dir, stdout=self.log, stderr=subprocess.STDOUT)
        for port in ports:
            wait_port(port, 30, self.proc)
        self.startup_s = round(wait_settled(self.proc.pid, 1), 2)
        self.watcher = Watcher(self.proc.pid)

    def log_problems(self) -> int:
        """
        @return: How many lines of the peer's log report a failure.
        """
        self.log.flush()
        with open(self.log_path, "rb") as f:
            return sum(1 for line in f if b"Traceback" in line or b"WARNING" in line)

    def stop(self) -> None:
        self.watcher.stop()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


class Gateway(_Peer):
    """
    C{bench/peers/gateway.py} on two free ports (STARTTLS, implicit TLS),
    relaying to C{sink_port}.
    """

    name = "gateway"

    def __init__(self, ws: Workspace, sink_port: int) -> None:
        python = bench_python()
        self.starttls_port = free_port()
        self.implicit_port = free_port()
        command = [
            str(python),
            str(BENCH / "peers" / "gateway.py"),
            "--starttls-port",
            str(self.starttls_port),
            "--implicit-port",
            str(self.implicit_port),
            "--cert",
            str(ws.cert),
            "--key",
            str(ws.key),
            "--token-sha256",
            hashlib.sha256(ws.token.encode("utf-8")).hexdigest(),
            "--upstream",
            f"http://127.0.0.1:{sink_port}/send",
        ]
        self._start(ws, command, [self.starttls_port, self.implicit_port])

    def endpoint(self, tls: str) -> Endpoint:
        """
        The listener for C{tls} (C{"starttls"} or C{"implicit"}), with AUTH.
        """
        return Endpoint(self.implicit_port if tls == "implicit" else self.starttls_port, tls)


class SmtpSink(_Peer):
    """
    Postfix's C{smtp-sink} on a free port (as C{nobody} when run as root).
    """

    name = "smtp-sink"

    def __init__(self, ws: Workspace, path: str) -> None:
        self.port = free_port()
        user = ["-u", "nobody"] if os.geteuid() == 0 else []
        command = [path, *user, "-m", "1000", f"127.0.0.1:{self.port}", "4096"]
        self._start(ws, command, [self.port])

    def endpoint(self, tls: str) -> Endpoint:
        """
        The one listener: plaintext, no AUTH, whatever C{tls} says.
        """
        return Endpoint(self.port, "none", auth=False)
