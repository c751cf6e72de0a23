"""
The benchmark's fixtures: the temporary folder, the upstream sink and relayd.

Everything runs on 127.0.0.1 in a temporary folder (L{Workspace}): a
self-signed certificate (L{relayd.tls.ensure_self_signed}), a tokens file
holding the SHA-256 digest of a random token, a relayd configuration on
free ports; an upstream sink (L{Sink}: nginx from the distribution when
installed, else C{bench/sink.py}); and relayd itself (L{Daemon}: C{python
-m twisted relayd --config ...}, the real daemon as C{twist relayd} runs it,
or under a profiler).  A daemon is ready once every worker process has
started and gone idle (L{wait_settled}), so start-up is never measured.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import resource
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from . import BENCH, ROOT, MiB
from .procstats import Watcher, cpu_ticks, process_tree

__all__ = [
    "Daemon",
    "Sink",
    "Workspace",
    "free_port",
    "py_spy_path",
    "raise_nofile",
    "relayd_processes",
    "source_digest",
    "wait_port",
    "wait_settled",
]


def free_port() -> int:
    """
    @return: A TCP port free on 127.0.0.1 now (the kernel's choice).
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float, proc: subprocess.Popen[Any] | None = None) -> None:
    """
    Wait until something accepts connections on 127.0.0.1:C{port}.

    @param timeout: Most seconds to wait.
    @param proc: The process expected to listen; its exit ends the wait.
    @raise RuntimeError: C{proc} exited, or nothing listens after C{timeout}.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with status {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


def raise_nofile() -> None:
    """
    Raise this process's open-file limit to its hard limit (thousands of
    sessions; relayd inherits it).
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def relayd_processes(workers: int) -> int:
    """
    How many processes relayd runs with C{[server] workers = workers}: the
    same rule as L{relayd.workers.worker_count} (C{0}: one per CPU core this
    process, and so relayd, may run on).
    """
    if workers > 0:
        return workers
    return max(1, len(os.sched_getaffinity(0)))


def wait_settled(pid: int, processes: int, timeout: float = 60) -> float:
    """
    Wait until relayd's process tree holds C{processes} processes and has
    gone idle (under 20 ms of CPU in 0.5 s): the workers have imported
    everything and adopted the listening sockets.

    @return: Seconds waited.
    """
    started = time.monotonic()
    deadline = started + timeout
    while time.monotonic() < deadline:
        pids = process_tree(pid)
        if len(pids) >= processes:
            before = cpu_ticks(pids)
            time.sleep(0.5)
            if cpu_ticks(process_tree(pid)) - before < 0.02:
                return time.monotonic() - started
        else:
            time.sleep(0.1)
    raise RuntimeError(
        f"relayd: {len(process_tree(pid))} of {processes} processes, not idle after {timeout}s"
    )


def py_spy_path() -> str | None:
    """
    py-spy: on C{PATH}, beside this Python, or in C{.venv-bench} (the
    C{bench} extra of C{setup.cfg}).
    """
    for candidate in (
        shutil.which("py-spy"),
        Path(sys.executable).parent / "py-spy",
        ROOT / ".venv-bench" / "bin" / "py-spy",
    ):
        if candidate and os.path.exists(candidate):
            return str(candidate)
    return None


def source_digest() -> dict[str, Any]:
    """
    Identify the relayd code measured: a SHA-256 over C{relayd/**/*.py}
    (path and content) and the newest modification time among them.
    """
    h = hashlib.sha256()
    newest = 0.0
    for path in sorted((ROOT / "relayd").rglob("*.py")):
        data = path.read_bytes()
        h.update(str(path.relative_to(ROOT)).encode() + b"\0" + data + b"\0")
        newest = max(newest, path.stat().st_mtime)
    return {
        "sha256": h.hexdigest()[:16],
        "newest_mtime": datetime.datetime.fromtimestamp(newest, datetime.UTC).isoformat(
            timespec="seconds"
        ),
    }


class Workspace:
    """
    The temporary folder: certificate, tokens, configuration, logs.
    """

    def __init__(self, keep: bool, workers: int = 1, env: dict[str, str] | None = None) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="relayd-bench-"))
        self.env = env or {}
        os.chmod(self.dir, 0o755)
        self.keep = keep
        self.token = "bench_" + secrets.token_urlsafe(32)
        self.cert = self.dir / "cert.pem"
        self.key = self.dir / "key.pem"
        self.tokens = self.dir / "tokens.toml"
        self.config = self.dir / "relayd.toml"
        self.starttls_port = free_port()
        self.implicit_port = free_port()
        self.sink_port = free_port()
        from relayd.tls import ensure_self_signed

        ensure_self_signed(str(self.cert), str(self.key), "localhost")
        digest = hashlib.sha256(self.token.encode("utf-8")).hexdigest()
        self.tokens.write_text(f'[tokens.bench]\nsha256 = "{digest}"\n')
        self.config.write_text(
            f"""# relayd benchmark configuration (generated by bench/run.py)
[server]
hostname = "localhost"
workers = {workers}

[[listeners]]
name = "bench-starttls"
endpoint = "tcp:port={self.starttls_port}:interface=127.0.0.1:backlog=4096"
tls = "starttls"

[[listeners]]
name = "bench-implicit-tls"
endpoint = "tcp:port={self.implicit_port}:interface=127.0.0.1:backlog=4096"
tls = "implicit"

[tls]
certificate = "cert.pem"
key = "key.pem"

[auth]
tokens_file = "tokens.toml"

[upstream]
url = "http://127.0.0.1:{self.sink_port}/send"
dialect = "native"
timeout = 60

[limits]
# Defaults, except the connection caps: every session of the benchmark
# comes from 127.0.0.1.
max_connections = 20000
max_connections_per_ip = 20000
"""
        )

    def close(self) -> None:
        if not self.keep:
            shutil.rmtree(self.dir, ignore_errors=True)


def nginx_config(d: Path, port: int) -> str:
    """
    The benchmark sink's nginx configuration: one worker, kept-alive
    connections, C{POST /send} answered C{200 {"id": "<request id>"}}.

    @param d: The folder for its pid file, logs and temporary files.
    @param port: The port it listens on, on 127.0.0.1.
    @return: The text of C{nginx.conf}.
    """
    user = "user root root;" if os.geteuid() == 0 else ""
    return f"""{user}
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {d}/nginx-body;
    proxy_temp_path {d}/nginx-proxy;
    fastcgi_temp_path {d}/nginx-fastcgi;
    uwsgi_temp_path {d}/nginx-uwsgi;
    scgi_temp_path {d}/nginx-scgi;
    keepalive_timeout 300s;
    keepalive_requests 1000000;
    server {{
        listen 127.0.0.1:{port} default_server;
        location = /send {{
            client_max_body_size 64m;
            client_body_buffer_size 1m;
            default_type application/json;
            return 200 '{{"id":"$request_id"}}';
        }}
    }}
}}
"""


class Sink:
    """
    The upstream HTTP sink: nginx (one worker) when installed, else
    C{bench/sink.py}.
    """

    def __init__(self, ws: Workspace, kind: str) -> None:
        self.ws = ws
        self.port = ws.sink_port
        nginx = shutil.which("nginx") or (
            "/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None
        )
        if kind == "nginx" and nginx is None:
            raise SystemExit("--sink nginx: nginx is not installed")
        self.kind = "nginx" if (kind in ("auto", "nginx") and nginx) else "python"
        self.log = open(ws.dir / "sink.log", "wb")
        if self.kind == "nginx":
            assert nginx is not None
            version = subprocess.run([nginx, "-v"], capture_output=True, text=True).stderr.strip()
            self.description = (
                f"{version} (Debian package), worker_processes 1, return 200 with $request_id"
            )
            conf = ws.dir / "nginx.conf"
            d = ws.dir
            conf.write_text(nginx_config(d, self.port))
            self.proc = subprocess.Popen(
                [nginx, "-p", str(d), "-c", str(conf), "-g", "daemon off;"],
                stdout=self.log,
                stderr=subprocess.STDOUT,
            )
        else:
            self.description = "bench/sink.py (Python asyncio, one process)"
            self.proc = subprocess.Popen(
                [sys.executable, str(BENCH / "sink.py"), "--port", str(self.port)],
                stdout=self.log,
                stderr=subprocess.STDOUT,
            )
        wait_port(self.port, 10, self.proc)
        self.check = self._check()

    def _check(self) -> dict[str, Any]:
        """
        Two POSTs of 3 MiB on one connection: both answered with an id, and
        the connection kept alive (so the body was read and discarded).
        """
        import http.client

        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        body = os.urandom(3 * MiB)
        answers = []
        sockets = set()
        for _ in range(2):
            conn.request("POST", "/send", body=body, headers={"Content-Type": "application/json"})
            response = conn.getresponse()
            answers.append((response.status, json.loads(response.read())))
            sockets.add(id(conn.sock))
            keep = response.getheader("Connection", "keep-alive").lower() != "close"
        conn.close()
        ok = all(s == 200 and a.get("id") for s, a in answers) and len(sockets) == 1 and keep
        if not ok:
            raise RuntimeError(f"sink check failed: {answers}")
        return {"ok": ok, "answers": [a for _, a in answers], "same_connection": len(sockets) == 1}

    def cpu(self) -> float:
        return cpu_ticks(process_tree(self.proc.pid))

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM if self.kind == "python" else signal.SIGQUIT)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


class Daemon:
    """
    relayd, as C{twist relayd --config PATH} runs it (or under a profiler).
    """

    def __init__(
        self,
        ws: Workspace,
        label: str,
        profile: dict[str, Any] | None = None,
        processes: int = 1,
    ) -> None:
        self.ws = ws
        self.log_path = ws.dir / f"relayd-{label}.log"
        self.log = open(self.log_path, "wb")
        self.source = source_digest()
        command = [sys.executable, "-m", "twisted", "relayd", "--config", str(ws.config)]
        self.profile = profile
        self.spy: subprocess.Popen[bytes] | None = None
        if profile and profile["profiler"] == "cprofile":
            command = [
                sys.executable,
                str(BENCH / "profile_daemon.py"),
                str(profile["dir"] / f"{label}.pstats"),
                "--",
                "relayd",
                "--config",
                str(ws.config),
            ]
        env = dict(os.environ)
        env.update(ws.env)
        self.proc = subprocess.Popen(
            command,
            cwd=ws.dir,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            preexec_fn=raise_nofile,
        )
        wait_port(ws.starttls_port, 30, self.proc)
        wait_port(ws.implicit_port, 30, self.proc)
        self.processes = processes
        self.startup_s = round(wait_settled(self.proc.pid, processes), 2)
        self.watcher = Watcher(self.proc.pid)

    def start_spy(self, path: Path) -> None:
        spy = py_spy_path() or "py-spy"
        self.spy = subprocess.Popen(
            [
                spy,
                "record",
                "--pid",
                str(self.proc.pid),
                "--rate",
                "200",
                "--function",
                "--nonblocking",
                "--format",
                "raw",
                "--output",
                str(path),
            ],
            stdout=subprocess.DEVNULL,
            stderr=open(str(path) + ".log", "wb"),
        )
        time.sleep(0.5)

    def stop_spy(self) -> None:
        if self.spy is not None:
            self.spy.send_signal(signal.SIGINT)
            try:
                self.spy.wait(30)
            except subprocess.TimeoutExpired:
                self.spy.kill()
            self.spy = None

    def log_problems(self) -> int:
        """
        @return: How many lines of relayd's log report a failure.
        """
        self.log.flush()
        count = 0
        with open(self.log_path, "rb") as f:
            for line in f:
                if b"Traceback" in line or b"Unhandled" in line or b"failed" in line.lower():
                    count += 1
        return count

    def stop(self) -> None:
        self.stop_spy()
        self.watcher.stop()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()
