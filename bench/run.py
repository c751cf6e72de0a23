"""
relayd's standard benchmark: one command, every scenario, figures as JSON.

    python bench/run.py [--quick] [--scenario NAME ...] [--out PATH]
                        [--workers N] [--profile DIR [--profiler py-spy|cprofile]]

Everything runs on 127.0.0.1 in a temporary folder: a self-signed
certificate (L{relayd.tls.ensure_self_signed}), a tokens file holding the
SHA-256 digest of a random token, a relayd configuration on free ports, an
upstream sink (nginx from the distribution when installed, else
C{bench/sink.py}), and C{python -m twisted relayd --config ...}: the real
daemon, as C{twist relayd} runs it.  The load comes from C{bench/smtpload.py}
in its own process(es).

relayd runs with C{[server] workers = 0} (one process per CPU core) unless
C{--workers N} says otherwise: the performance targets are for a 2-core
machine that relayd must use fully.  C{--workers 1} measures one process
(the cost per message without any sharing of cores).  Profiling
(C{--profile}) defaults to C{--workers 1}: the profilers follow one process.
Before each scenario, C{run.py} waits until every worker process has
started and gone idle, so start-up is never measured.

For every run of every scenario, C{run.py} measures from outside:

  - relayd's CPU time: the scheduler's run time of every thread
    (C{/proc/<pid>/task/<tid>/schedstat}), summed over relayd's process and
    its descendants (the worker processes), read before and after the run,
    and how it was split between the processes;
  - relayd's resident memory: C{VmRSS} summed over the same process tree,
    sampled every 50 ms by a thread (peak, before, after), and the sum of
    the processes' C{VmHWM} (reset before each run), which cannot miss a
    short spike;
  - the sink's and the generator's CPU time, to show how the two cores
    were shared.

The generator reports messages per second, latency percentiles of the SMTP
transaction (C{MAIL} written to the reply of the final dot read) and every
reply code it got.  Each scenario is run several times; the report gives
the median of the runs, and every run in the JSON file.  A run with any
final reply other than C{250}, or any failed session, is marked C{"clean":
false} and printed in the table: errors are a result.

Scenarios (C{--quick}: fewer runs, fewer messages, fewer sessions):

  - C{small}: 1 KB text messages, 50 sessions at once, 20 per session;
  - C{attach100k}: 100 KB messages with one attachment, 10 sessions;
  - C{big5m}: 5 MiB messages with one attachment, one session, one after
    the other;
  - C{huge25m}: one 25 MiB message per run: relayd's peak RSS growth and
    whether RSS returns to the baseline;
  - C{idle10k}: 10,000 authenticated TLS sessions held open (C{--quick}:
    1,000): relayd's RSS;
  - C{scaling}: CPU per message as the size doubles (1 KiB to 1 MiB text,
    8 KiB to 4 MiB with an attachment) and as the recipients double (1 to
    64);
  - C{concurrency}: 1 KiB messages with 1 to 256 sessions at once, and
    with 1 to 100 messages per session (50 sessions).

Each scenario starts a fresh relayd, so memory figures start from a clean
baseline; the sink lives for the whole invocation.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import math
import os
import platform
import resource
import secrets
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
MiB = 1024 * 1024
KiB = 1024
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")

# The targets of the performance issue (TLS + AUTH + full pipeline, 2 cores).
TARGETS = {
    "small.msgs_per_s": (">=", 1500),
    "small.cpu_ms_per_msg": ("<=", 0.8),
    "attach100k.msgs_per_s": (">=", 300),
    "big5m.cpu_ms_per_msg": ("<=", 60),
    "huge25m.rss_growth_mib": ("<", 100),
    "huge25m.rss_retained_mib": ("<=", 10),
    "idle10k.rss_open_mib": ("<", 1024),
    "scaling.worst_doubling_ratio": ("<=", 2.0),
}


# -- /proc -----------------------------------------------------------------------


def _children() -> dict[int, list[int]]:
    """
    Map each process id to its children's, from C{/proc/*/stat}.
    """
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2 :].split()
        tree.setdefault(int(fields[1]), []).append(int(entry))
    return tree


def process_tree(pid: int) -> list[int]:
    """
    @return: C{pid} and all its descendants that are alive now.
    """
    tree = _children()
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(tree.get(p, []))
    return out


def cpu_seconds(pids: list[int]) -> float:
    """
    CPU time of C{pids}, in seconds: the scheduler's run time of every live
    thread (C{/proc/<pid>/task/<tid>/schedstat}, nanoseconds).  Time of
    threads that have exited is not counted; L{cpu_ticks} does count it.
    """
    total = 0
    for pid in pids:
        try:
            tasks = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tasks:
            try:
                with open(f"/proc/{pid}/task/{tid}/schedstat", "rb") as f:
                    total += int(f.read().split()[0])
            except (OSError, IndexError, ValueError):
                continue
    return total / 1e9


def cpu_by_process(pids: list[int]) -> dict[int, float]:
    """
    L{cpu_seconds} of each of C{pids}.
    """
    return {pid: cpu_seconds([pid]) for pid in pids}


def cpu_ticks(pids: list[int]) -> float:
    """
    User plus system CPU time of C{pids}, in seconds, from
    C{/proc/<pid>/stat} (all threads, exited ones too; the resolution is
    one clock tick, usually 10 ms).
    """
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2 :].split()
        total += int(fields[11]) + int(fields[12])
    return total / CLOCK_TICKS


def rss_bytes(pids: list[int]) -> int:
    """
    Resident set size of C{pids} together, in bytes (C{statm}, cheap to
    read).
    """
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/statm", "rb") as f:
                total += int(f.read().split()[1]) * PAGE
        except (OSError, IndexError):
            continue
    return total


def system_cpu() -> tuple[float, float]:
    """
    The whole machine's busy CPU time and steal time, in seconds, from the
    C{cpu} line of C{/proc/stat} (busy: user, nice, system, irq, softirq).
    """
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq) / CLOCK_TICKS, steal / CLOCK_TICKS


def hwm_bytes(pid: int) -> int | None:
    """
    The kernel's peak RSS of C{pid} (C{VmHWM}), in bytes.
    """
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * KiB
    except OSError:
        pass
    return None


def reset_hwm(pid: int) -> bool:
    """
    Reset C{VmHWM} (writing 5 to C{clear_refs}, Linux 4.0 and later).
    """
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def tree_hwm_bytes(pids: list[int]) -> int | None:
    """
    The sum of the processes' L{hwm_bytes}: each process's own peak.  With
    one process this is its peak; with several it is an upper bound of the
    tree's peak (their peaks need not coincide).
    """
    values = [hwm_bytes(pid) for pid in pids]
    known = [v for v in values if v is not None]
    return sum(known) if known else None


class Watcher:
    """
    Samples a process tree's RSS every C{interval} seconds in a thread and
    keeps the peak since the last L{reset}.
    """

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        self.pid = pid
        self.interval = interval
        self.pids = process_tree(pid)
        self.peak = 0
        self.last = 0
        self.samples = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        refresh = 0
        while not self._stop.is_set():
            refresh += 1
            if refresh % 20 == 0:  # the tree, once a second
                self.pids = process_tree(self.pid)
            value = rss_bytes(self.pids)
            with self._lock:
                self.last = value
                self.peak = max(self.peak, value)
                self.samples += 1
            self._stop.wait(self.interval)

    def reset(self) -> int:
        """
        Start a new peak; @return: the RSS now.
        """
        self.pids = process_tree(self.pid)
        value = rss_bytes(self.pids)
        with self._lock:
            self.peak = value
            self.last = value
        return value

    def cpu(self) -> tuple[float, float]:
        """
        @return: C{(precise, ticks)}: L{cpu_seconds} and L{cpu_ticks} of the
            tree.
        """
        pids = process_tree(self.pid)
        return cpu_seconds(pids), cpu_ticks(pids)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(1)


# -- set-up -------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float, proc: subprocess.Popen[Any] | None = None) -> None:
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


def _raise_nofile() -> None:
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


def machine() -> dict[str, Any]:
    """
    What the figures were measured on.
    """
    model = ""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    meminfo = Path("/proc/meminfo").read_text().split("\n")[0].split()
    versions: dict[str, str] = {}
    for name in ("twisted", "treq", "OpenSSL", "cryptography"):
        try:
            from importlib.metadata import version

            versions[name] = version("pyOpenSSL" if name == "OpenSSL" else name)
        except Exception:
            pass
    try:
        import relayd

        versions["relayd"] = relayd.__version__
    except ImportError:
        pass
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "mem_total_mib": int(meminfo[1]) // 1024,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "openssl": ssl.OPENSSL_VERSION,
        "packages": versions,
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
            user = "user root root;" if os.geteuid() == 0 else ""
            d = ws.dir
            conf.write_text(
                f"""{user}
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
        listen 127.0.0.1:{self.port} default_server;
        location = /send {{
            client_max_body_size 64m;
            client_body_buffer_size 1m;
            default_type application/json;
            return 200 '{{"id":"$request_id"}}';
        }}
    }}
}}
"""
            )
            self.proc = subprocess.Popen(
                [nginx, "-p", str(d), "-c", str(conf), "-g", "daemon off;"],
                stdout=self.log,
                stderr=subprocess.STDOUT,
            )
        else:
            self.description = "bench/sink.py (Python asyncio, one process)"
            self.proc = subprocess.Popen(
                [sys.executable, str(HERE / "sink.py"), "--port", str(self.port)],
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
                str(HERE / "profile_daemon.py"),
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
            preexec_fn=_raise_nofile,
        )
        wait_port(ws.starttls_port, 30, self.proc)
        wait_port(ws.implicit_port, 30, self.proc)
        self.processes = processes
        self.startup_s = round(wait_settled(self.proc.pid, processes), 2)
        self.watcher = Watcher(self.proc.pid)

    def start_spy(self, path: Path) -> None:
        spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
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


# -- running the generator ------------------------------------------------------------


def generator_command(
    ws: Workspace, args: argparse.Namespace, mode: str, **options: Any
) -> list[str]:
    port = ws.implicit_port if args.tls == "implicit" else ws.starttls_port
    command = [
        sys.executable,
        str(HERE / "smtpload.py"),
        mode,
        "--port",
        str(port),
        "--tls",
        args.tls,
        "--cafile",
        str(ws.cert),
        "--token",
        ws.token,
    ]
    for key, value in options.items():
        command += ["--" + key.replace("_", "-"), str(value)]
    return command


def _merge(results: list[dict[str, Any]]) -> dict[str, Any]:
    """
    Merge the results of several generator processes into one.
    """
    if len(results) == 1:
        return results[0]
    merged: dict[str, Any] = {}
    merged["start"] = min(r["start"] for r in results)
    merged["end"] = max(r["end"] for r in results)
    merged["wall_s"] = merged["end"] - merged["start"]
    for key in ("attempted", "ok", "sessions", "sessions_failed", "bytes_sent", "cpu_s"):
        merged[key] = sum(r[key] for r in results)
    for key in ("final_codes", "reply_codes", "errors"):
        total: dict[str, int] = {}
        for r in results:
            for k, v in r[key].items():
                total[k] = total.get(k, 0) + v
        merged[key] = total
    merged["error_samples"] = sum((r["error_samples"] for r in results), [])[:10]
    merged["timed_out"] = any(r["timed_out"] for r in results)
    latencies = sorted(sum((r.get("latencies_ms", []) for r in results), []))
    merged["latencies_ms"] = latencies
    merged["msgs_per_s"] = round(merged["ok"] / merged["wall_s"], 2)
    merged["p50_ms"] = _pct(latencies, 0.5)
    merged["p99_ms"] = _pct(latencies, 0.99)
    merged["message_sizes"] = results[0].get("message_sizes")
    merged["peak_rss_kib"] = max(r["peak_rss_kib"] for r in results)
    return merged


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def load_run(
    ws: Workspace,
    args: argparse.Namespace,
    daemon: Daemon,
    sink: Sink,
    *,
    messages: int,
    concurrency: int,
    per_session: int,
    size: int,
    mix: str,
    rcpts: int = 1,
    procs: int = 1,
    deadline: float = 300,
) -> dict[str, Any]:
    """
    One measured load run.

    @return: The figures of the run.
    """
    procs = max(1, min(procs, concurrency))
    commands = []
    for i in range(procs):
        share = concurrency // procs + (1 if i < concurrency % procs else 0)
        quota = messages // procs + (1 if i < messages % procs else 0)
        commands.append(
            generator_command(
                ws,
                args,
                "load",
                messages=quota,
                concurrency=share,
                per_session=per_session,
                size=size,
                mix=mix,
                rcpts=rcpts,
                deadline=deadline,
                reply_timeout=min(deadline, 120),
            )
        )
    time.sleep(0.2)
    rss_before = daemon.watcher.reset()
    pids = process_tree(daemon.proc.pid)
    for pid in pids:
        reset_hwm(pid)
    split_before = cpu_by_process(pids)
    cpu_before = daemon.watcher.cpu()
    sink_before = sink.cpu()
    harness_before = _rusage_cpu(resource.RUSAGE_SELF), _rusage_cpu(resource.RUSAGE_CHILDREN)
    system_before = system_cpu()
    started = time.monotonic()
    gens = [
        subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for c in commands
    ]
    outputs = []
    for gen in gens:
        try:
            out, err = gen.communicate(timeout=deadline + 60)
        except subprocess.TimeoutExpired:
            gen.kill()
            out, err = gen.communicate()
        if gen.returncode != 0 or not out.strip():
            raise RuntimeError(f"generator failed ({gen.returncode}): {err[-2000:]}")
        outputs.append(json.loads(out.strip().splitlines()[-1]))
    elapsed = time.monotonic() - started
    time.sleep(0.3)  # let relayd finish closing sessions
    cpu, cpu_source, cpu_by_ticks = _cpu_delta(cpu_before, daemon.watcher.cpu())
    pids_after = process_tree(daemon.proc.pid)
    split_after = cpu_by_process(pids_after)
    split = sorted(
        (split_after[pid] - split_before.get(pid, 0.0) for pid in pids_after), reverse=True
    )
    split_total = sum(split)
    sink_cpu = sink.cpu() - sink_before
    system_after = system_cpu()
    # run.py itself (its RSS sampling thread included), and the generators'
    # whole processes, start-up included (they have been waited for, so
    # their time is in RUSAGE_CHILDREN).
    harness_cpu = _rusage_cpu(resource.RUSAGE_SELF) - harness_before[0]
    generators_total_cpu = _rusage_cpu(resource.RUSAGE_CHILDREN) - harness_before[1]
    result = _merge(outputs)
    ok = result["ok"]
    wall = result["wall_s"]
    hwm = tree_hwm_bytes(pids_after)
    # The sampled peak can miss a short spike; VmHWM (reset before the run)
    # cannot (summed over the processes, it is an upper bound).
    peak = max(daemon.watcher.peak, hwm or 0)
    clean = (
        result["final_codes"].get("250", 0) == result["attempted"] == messages
        and result["sessions_failed"] == 0
        and not result["timed_out"]
    )
    # CPU used on the machine by anything but relayd, the generator and the
    # sink (other jobs, the kernel's own threads), and time stolen by the
    # hypervisor: either means relayd did not have its cores to itself.
    busy = system_after[0] - system_before[0]
    other = busy - cpu - max(generators_total_cpu, result["cpu_s"]) - sink_cpu - harness_cpu
    steal = system_after[1] - system_before[1]
    span = elapsed + 0.3
    return {
        "messages": messages,
        "ok": ok,
        "clean": clean,
        "other_cpu_util": round(max(other, 0.0) / span, 3),
        "steal_util": round(steal / span, 3),
        "interference": other / span > 0.15 or steal / span > 0.05,
        "msgs_per_s": result["msgs_per_s"],
        "cpu_ms_per_msg": round(cpu * 1000 / ok, 3) if ok else None,
        "relayd_cpu_s": round(cpu, 4),
        "relayd_cpu_s_ticks": round(cpu_by_ticks, 3),
        "cpu_source": cpu_source,
        "relayd_cpu_util": round(cpu / wall, 3) if wall else None,
        "relayd_processes": len(pids_after),
        # Each process's share of relayd's CPU time, largest first: how
        # evenly the kernel spread the sessions over the workers.
        "relayd_cpu_split": [round(x / split_total, 3) for x in split] if split_total else None,
        "relayd_busiest_share": round(split[0] / split_total, 3) if split_total else None,
        "p50_ms": result["p50_ms"],
        "p99_ms": result["p99_ms"],
        "rss_before_mib": round(rss_before / MiB, 1),
        "peak_rss_mib": round(peak / MiB, 1),
        "peak_rss_sampled_mib": round(daemon.watcher.peak / MiB, 1),
        "peak_rss_hwm_mib": round(hwm / MiB, 1) if hwm else None,
        "rss_after_mib": round(daemon.watcher.last / MiB, 1),
        "generator_cpu_s": result["cpu_s"],
        "generator_cpu_util": round(result["cpu_s"] / elapsed, 3),
        "generator_cpu_total_s": round(generators_total_cpu, 3),
        "harness_cpu_s": round(harness_cpu, 3),
        "sink_cpu_s": round(sink_cpu, 3),
        "wall_s": round(wall, 3),
        "final_codes": result["final_codes"],
        "sessions": result["sessions"],
        "sessions_failed": result["sessions_failed"],
        "errors": result["errors"],
        "error_samples": result["error_samples"],
        "message_sizes": result.get("message_sizes"),
        "timed_out": result["timed_out"],
    }


def _rusage_cpu(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def _cpu_delta(before: tuple[float, float], after: tuple[float, float]) -> tuple[float, str, float]:
    """
    The CPU time between two L{Watcher.cpu} readings: the precise one,
    unless a thread exited meanwhile (then it falls short of the tick
    count, and the tick count is used).

    @return: C{(seconds, "schedstat" or "ticks", seconds by ticks)}.
    """
    precise = after[0] - before[0]
    ticks = after[1] - before[1]
    if precise < ticks - max(0.05, 0.05 * ticks):
        return ticks, "ticks", ticks
    return precise, "schedstat", ticks


def _median(runs: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in runs if r.get(key) is not None]
    return round(statistics.median(values), 3) if values else None


def summarize(runs: list[dict[str, Any]], keys: list[str]) -> dict[str, Any]:
    summary: dict[str, Any] = {k: _median(runs, k) for k in keys}
    summary["runs"] = len(runs)
    summary["runs_with_interference"] = sum(1 for r in runs if r.get("interference"))
    summary["clean"] = all(r.get("clean", True) for r in runs)
    problems: dict[str, int] = {}
    for r in runs:
        for code, n in r.get("final_codes", {}).items():
            if code != "250":
                problems[code] = problems.get(code, 0) + n
        for error, n in r.get("errors", {}).items():
            problems[error] = problems.get(error, 0) + n
    summary["problems"] = problems
    return summary


LOAD_KEYS = [
    "msgs_per_s",
    "cpu_ms_per_msg",
    "p50_ms",
    "p99_ms",
    "peak_rss_mib",
    "relayd_cpu_util",
    "relayd_busiest_share",
    "generator_cpu_util",
    "sink_cpu_s",
    "other_cpu_util",
]


# -- scenarios ------------------------------------------------------------------------


def plan(quick: bool) -> dict[str, dict[str, Any]]:
    """
    The parameters of each scenario.
    """
    runs = 1 if quick else 3
    # --quick still opens several waves of sessions, so that the figures
    # do not hang on how one burst of connections is spread over the
    # worker processes (see docs/performance.md).
    return {
        "small": dict(
            runs=runs,
            messages=3000 if quick else 5000,
            concurrency=50,
            per_session=20,
            size=1024,
            mix="text",
            warmup=200,
        ),
        "attach100k": dict(
            runs=runs,
            messages=600 if quick else 1000,
            concurrency=10,
            per_session=20,
            size=100 * KiB,
            mix="attach",
            warmup=50,
        ),
        "big5m": dict(
            runs=runs,
            messages=4 if quick else 12,
            concurrency=1,
            per_session=12,
            size=5 * MiB,
            mix="attach",
            warmup=1,
        ),
        "huge25m": dict(runs=1 if quick else 3, size=25 * MiB, mix="attach", settle=3.0),
        "idle10k": dict(runs=1 if quick else 2, count=1000 if quick else 10000, parallel=100),
        "scaling": dict(
            runs=1 if quick else 3,
            text_sizes=[KiB << i for i in range(0, 11, 2 if quick else 1)],
            attach_sizes=[8 * KiB << i for i in range(0, 10, 3 if quick else 1)],
            rcpts=[1 << i for i in range(0, 7, 2 if quick else 1)],
            target_s=0.8 if quick else 1.5,
        ),
        "concurrency": dict(
            runs=1 if quick else 3,
            messages=500 if quick else 1500,
            sessions=[1, 8, 64, 256] if quick else [1, 4, 16, 64, 256],
            per_session=[1, 20] if quick else [1, 5, 20, 100],
            per_session_sessions=50,
        ),
    }


def run_load_scenario(name: str, p: dict[str, Any], ctx: Context) -> dict[str, Any]:
    daemon = ctx.daemon(name)
    try:
        load_run(
            ctx.ws,
            ctx.args,
            daemon,
            ctx.sink,
            messages=p["warmup"],
            concurrency=min(p["concurrency"], p["warmup"]),
            per_session=p["per_session"],
            size=p["size"],
            mix=p["mix"],
        )
        ctx.spy(daemon, name)
        runs = []
        for i in range(p["runs"]):
            r = load_run(
                ctx.ws,
                ctx.args,
                daemon,
                ctx.sink,
                messages=p["messages"],
                concurrency=p["concurrency"],
                per_session=p["per_session"],
                size=p["size"],
                mix=p["mix"],
                procs=ctx.args.generator_procs,
            )
            ctx.progress(name, i, r)
            runs.append(r)
        daemon.stop_spy()
        problems = daemon.log_problems()
    finally:
        daemon.stop()
    params = {k: v for k, v in p.items() if k != "runs"}
    params["message_size_actual"] = runs[0]["message_sizes"] if runs else None
    return {
        "params": params,
        "median": summarize(runs, LOAD_KEYS),
        "log_problem_lines": problems,
        "runs": runs,
    }


def warm_up(ctx: Context, daemon: Any, mix: str) -> None:
    """
    Send a few small messages (imports, TLS, pools warm) and let the
    daemon settle for a second before measuring.
    """
    load_run(
        ctx.ws,
        ctx.args,
        daemon,
        ctx.sink,
        messages=20,
        concurrency=2,
        per_session=10,
        size=KiB,
        mix=mix,
    )
    time.sleep(1)


def run_huge(name: str, p: dict[str, Any], ctx: Context) -> dict[str, Any]:
    daemon = ctx.daemon(name)
    runs = []
    try:
        warm_up(ctx, daemon, "attach")
        first_baseline = daemon.watcher.reset()
        for i in range(p["runs"]):
            r = load_run(
                ctx.ws,
                ctx.args,
                daemon,
                ctx.sink,
                messages=1,
                concurrency=1,
                per_session=1,
                size=p["size"],
                mix=p["mix"],
            )
            # Wait for RSS to settle after the transaction.
            settled = []
            for _ in range(int(p["settle"] / 0.5)):
                time.sleep(0.5)
                settled.append(rss_bytes(process_tree(daemon.proc.pid)))
            after = settled[-1]
            r["rss_growth_mib"] = round(r["peak_rss_mib"] - r["rss_before_mib"], 1)
            r["rss_after_settle_mib"] = round(after / MiB, 1)
            r["rss_retained_mib"] = round((after - first_baseline) / MiB, 1)
            ctx.progress(name, i, r)
            runs.append(r)
        problems = daemon.log_problems()
    finally:
        daemon.stop()
    summary = summarize(
        runs,
        [
            "msgs_per_s",
            "cpu_ms_per_msg",
            "p50_ms",
            "rss_before_mib",
            "peak_rss_mib",
            "rss_growth_mib",
            "rss_after_settle_mib",
            "rss_retained_mib",
        ],
    )
    summary["baseline_mib"] = round(first_baseline / MiB, 1)
    summary["max_rss_growth_mib"] = max(r["rss_growth_mib"] for r in runs)
    summary["max_rss_retained_mib"] = max(r["rss_retained_mib"] for r in runs)
    return {
        "params": {**p, "message_size_actual": runs[0]["message_sizes"]},
        "median": summary,
        "log_problem_lines": problems,
        "runs": runs,
    }


def run_idle(name: str, p: dict[str, Any], ctx: Context) -> dict[str, Any]:
    runs = []
    problems = 0
    for i in range(p["runs"]):
        # A fresh daemon per run: freed session memory is not given back
        # to the system, so a second run on the same daemon would measure
        # reuse, not cost.
        daemon = ctx.daemon(name)
        try:
            warm_up(ctx, daemon, "text")
            baseline = daemon.watcher.reset()
            cpu_before = daemon.watcher.cpu()
            command = generator_command(
                ctx.ws,
                ctx.args,
                "idle",
                count=p["count"],
                concurrency=p["parallel"],
                hold=600,
                reply_timeout=120,
                deadline=600,
            )
            gen = subprocess.Popen(
                command,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            assert gen.stdout is not None and gen.stdin is not None
            ready = json.loads(gen.stdout.readline() or "{}")
            cpu_open = _cpu_delta(cpu_before, daemon.watcher.cpu())[0]
            time.sleep(1.0)
            rss_open = rss_bytes(process_tree(daemon.proc.pid))
            peak_open = daemon.watcher.peak
            gen.stdin.write("close\n")
            gen.stdin.flush()
            out, err = gen.communicate(timeout=300)
            lines = out.strip().splitlines()
            if gen.returncode != 0 or not lines:
                raise RuntimeError(f"idle generator failed: {err[-2000:]}")
            final = json.loads(lines[-1])
            time.sleep(2.0)
            rss_after = rss_bytes(process_tree(daemon.proc.pid))
            open_count = ready.get("open", 0)
            r = {
                "sessions_open": open_count,
                "sessions_failed": ready.get("failed"),
                "open_s": ready.get("open_s"),
                "sessions_per_s": round(open_count / ready["open_s"], 1)
                if ready.get("open_s")
                else None,
                "cpu_ms_per_session": round(cpu_open * 1000 / open_count, 3)
                if open_count
                else None,
                "rss_baseline_mib": round(baseline / MiB, 1),
                "rss_open_mib": round(rss_open / MiB, 1),
                "peak_rss_mib": round(peak_open / MiB, 1),
                "kib_per_session": round((rss_open - baseline) / KiB / open_count, 1)
                if open_count
                else None,
                "rss_after_close_mib": round(rss_after / MiB, 1),
                "noop_replies": final.get("noop_replies"),
                "alive_before_close": final.get("alive_before_close"),
                "errors": final.get("errors"),
                "error_samples": final.get("error_samples"),
                "generator_cpu_s": final.get("cpu_s"),
                "generator_peak_rss_mib": round(final.get("peak_rss_kib", 0) / KiB, 1),
                "clean": open_count == p["count"]
                and not final.get("errors")
                and final.get("noop_replies", {}).get("250") == open_count,
            }
            ctx.progress(name, i, r)
            runs.append(r)
            problems += daemon.log_problems()
        finally:
            daemon.stop()
    summary = summarize(
        runs,
        [
            "sessions_open",
            "open_s",
            "sessions_per_s",
            "cpu_ms_per_session",
            "rss_baseline_mib",
            "rss_open_mib",
            "peak_rss_mib",
            "kib_per_session",
            "rss_after_close_mib",
        ],
    )
    return {"params": p, "median": summary, "log_problem_lines": problems, "runs": runs}


def run_scaling(name: str, p: dict[str, Any], ctx: Context) -> dict[str, Any]:
    daemon = ctx.daemon(name)
    series: dict[str, list[dict[str, Any]]] = {"text_size": [], "attach_size": [], "rcpts": []}
    points = (
        [("text_size", "text", s, 1) for s in p["text_sizes"]]
        + [("attach_size", "attach", s, 1) for s in p["attach_sizes"]]
        + [("rcpts", "text", KiB, n) for n in p["rcpts"]]
    )
    try:
        load_run(
            ctx.ws,
            ctx.args,
            daemon,
            ctx.sink,
            messages=100,
            concurrency=10,
            per_session=20,
            size=KiB,
            mix="text",
        )
        ctx.spy(daemon, name)
        rate_guess = 400.0  # messages per second at 1 KiB; refined as we go
        for axis, mix, size, rcpts in points:
            # Roughly p["target_s"] seconds per run: cost grows with size.
            per_second = rate_guess / max(1.0, size / (32 * KiB))
            messages = int(min(2000, max(10, per_second * p["target_s"])))
            concurrency = min(10, messages)
            runs = []
            for _ in range(p["runs"]):
                runs.append(
                    load_run(
                        ctx.ws,
                        ctx.args,
                        daemon,
                        ctx.sink,
                        messages=messages,
                        concurrency=concurrency,
                        per_session=20,
                        size=size,
                        mix=mix,
                        rcpts=rcpts,
                    )
                )
            if axis == "text_size" and size == KiB and runs[0]["msgs_per_s"]:
                rate_guess = runs[0]["msgs_per_s"]
            point = {
                "mix": mix,
                "size": size,
                "rcpts": rcpts,
                "messages": messages,
                **summarize(
                    runs, ["msgs_per_s", "cpu_ms_per_msg", "p50_ms", "p99_ms", "peak_rss_mib"]
                ),
            }
            previous = series[axis][-1] if series[axis] else None
            if previous and previous["cpu_ms_per_msg"] and point["cpu_ms_per_msg"]:
                # Cost ratio per doubling of the size or recipient count (the
                # steps are doublings, except with --quick).
                x0 = previous["rcpts"] if axis == "rcpts" else previous["size"]
                x1 = rcpts if axis == "rcpts" else size
                ratio = point["cpu_ms_per_msg"] / previous["cpu_ms_per_msg"]
                point["ratio_per_doubling"] = round(ratio ** (1 / math.log2(x1 / x0)), 3)
            series[axis].append(point)
            ctx.progress(name, f"{axis}={size if axis != 'rcpts' else rcpts}", point)
        daemon.stop_spy()
        problems = daemon.log_problems()
    finally:
        daemon.stop()
    ratios = [
        pt["ratio_per_doubling"] for s in series.values() for pt in s if "ratio_per_doubling" in pt
    ]
    return {
        "params": p,
        "median": {
            "worst_doubling_ratio": max(ratios) if ratios else None,
            "clean": all(pt["clean"] for s in series.values() for pt in s),
        },
        "series": series,
        "log_problem_lines": problems,
    }


def run_concurrency(name: str, p: dict[str, Any], ctx: Context) -> dict[str, Any]:
    """
    1 KiB text messages: throughput, latency and CPU per message as the
    number of concurrent sessions grows, and as sessions carry more
    messages (1 per session: a TLS handshake and AUTH per message).
    """
    daemon = ctx.daemon(name)
    series: dict[str, list[dict[str, Any]]] = {"sessions": [], "per_session": []}
    points = [("sessions", n, 20) for n in p["sessions"]] + [
        ("per_session", p["per_session_sessions"], m) for m in p["per_session"]
    ]
    try:
        load_run(
            ctx.ws,
            ctx.args,
            daemon,
            ctx.sink,
            messages=100,
            concurrency=10,
            per_session=20,
            size=KiB,
            mix="text",
        )
        for axis, sessions, per_session in points:
            # At least the planned count, and every session at least once.
            messages = max(p["messages"], sessions * per_session)
            runs = [
                load_run(
                    ctx.ws,
                    ctx.args,
                    daemon,
                    ctx.sink,
                    messages=messages,
                    concurrency=sessions,
                    per_session=per_session,
                    size=KiB,
                    mix="text",
                    procs=ctx.args.generator_procs,
                )
                for _ in range(p["runs"])
            ]
            point = {
                "sessions": sessions,
                "per_session": per_session,
                "messages": messages,
                **summarize(runs, LOAD_KEYS),
            }
            series[axis].append(point)
            ctx.progress(name, f"{axis}={sessions if axis == 'sessions' else per_session}", point)
        problems = daemon.log_problems()
    finally:
        daemon.stop()
    return {
        "params": p,
        "median": {"clean": all(pt["clean"] for s in series.values() for pt in s)},
        "series": series,
        "log_problem_lines": problems,
    }


SCENARIOS = {
    "small": run_load_scenario,
    "attach100k": run_load_scenario,
    "big5m": run_load_scenario,
    "huge25m": run_huge,
    "idle10k": run_idle,
    "scaling": run_scaling,
    "concurrency": run_concurrency,
}


class Context:
    """
    What the scenarios share: the workspace, the sink, the options.
    """

    def __init__(self, args: argparse.Namespace, ws: Workspace, sink: Sink) -> None:
        self.args = args
        self.ws = ws
        self.sink = sink
        self.profile = None
        self.last_source: dict[str, Any] = {}
        self.processes = relayd_processes(args.workers)
        if args.profile:
            directory = Path(args.profile).resolve()
            directory.mkdir(parents=True, exist_ok=True)
            self.profile = {"dir": directory, "profiler": args.profiler}

    def daemon(self, label: str) -> Daemon:
        daemon = Daemon(self.ws, label, self.profile, self.processes)
        self.last_source = daemon.source
        return daemon

    def spy(self, daemon: Daemon, label: str) -> None:
        if self.profile and self.profile["profiler"] == "py-spy":
            daemon.start_spy(self.profile["dir"] / f"{label}.collapsed")

    def progress(self, name: str, i: Any, r: dict[str, Any]) -> None:
        shown = {
            k: r.get(k)
            for k in (
                "msgs_per_s",
                "cpu_ms_per_msg",
                "p50_ms",
                "p99_ms",
                "peak_rss_mib",
                "rss_growth_mib",
                "rss_retained_mib",
                "rss_open_mib",
                "kib_per_session",
                "relayd_cpu_util",
                "relayd_cpu_split",
                "generator_cpu_util",
                "other_cpu_util",
                "clean",
            )
            if r.get(k) is not None
        }
        print(f"  {name} [{i}] {json.dumps(shown)}", flush=True)


# -- report -----------------------------------------------------------------------------


def evaluate(scenarios: dict[str, Any]) -> dict[str, Any]:
    """
    Compare the medians with L{TARGETS}.
    """
    verdicts = {}
    for key, (op, limit) in TARGETS.items():
        scenario, figure = key.split(".")
        if scenario not in scenarios:
            continue
        median = scenarios[scenario]["median"]
        value = median.get(figure)
        if scenario == "huge25m" and figure in ("rss_growth_mib", "rss_retained_mib"):
            value = median.get("max_" + figure)
        if value is None:
            met = None
        elif op == ">=":
            met = value >= limit
        elif op == "<=":
            met = value <= limit
        else:
            met = value < limit
        verdicts[key] = {"value": value, "target": f"{op} {limit}", "met": met}
    return verdicts


def print_table(report: dict[str, Any]) -> None:
    scenarios = report["scenarios"]
    print()
    meta = report["meta"]
    print(f"relayd: workers = {meta['relayd_workers']} ({meta['relayd_processes']} processes)")
    print(f"sink: {meta['sink']}")
    print(
        f"{'scenario':<12} {'msg/s':>9} {'cpu ms/msg':>11} {'p50 ms':>9} {'p99 ms':>9} {'peak RSS MiB':>13}  clean  problems"
    )
    for name in ("small", "attach100k", "big5m", "huge25m"):
        if name not in scenarios:
            continue
        m = scenarios[name]["median"]
        print(
            f"{name:<12} {_fmt(m.get('msgs_per_s')):>9} {_fmt(m.get('cpu_ms_per_msg')):>11}"
            f" {_fmt(m.get('p50_ms')):>9} {_fmt(m.get('p99_ms')):>9} {_fmt(m.get('peak_rss_mib')):>13}"
            f"  {'yes' if m['clean'] else 'NO':<5}  {m['problems'] or ''}"
        )
    if "huge25m" in scenarios:
        m = scenarios["huge25m"]["median"]
        print(
            f"huge25m: baseline {m['baseline_mib']} MiB, RSS growth max {m['max_rss_growth_mib']} MiB,"
            f" retained after settling max {m['max_rss_retained_mib']} MiB"
        )
    if "idle10k" in scenarios:
        m = scenarios["idle10k"]["median"]
        print(
            f"idle10k: {_fmt(m['sessions_open'])} sessions open, RSS {m['rss_baseline_mib']} ->"
            f" {m['rss_open_mib']} MiB ({m['kib_per_session']} KiB/session), after close"
            f" {m['rss_after_close_mib']} MiB; {m['cpu_ms_per_session']} ms CPU per session set-up,"
            f" clean {'yes' if m['clean'] else 'NO'} {m['problems'] or ''}"
        )
    if "scaling" in scenarios:
        for axis, points in scenarios["scaling"]["series"].items():
            cells = []
            for pt in points:
                label = pt["rcpts"] if axis == "rcpts" else _size(pt["size"])
                cells.append(f"{label}:{_fmt(pt['cpu_ms_per_msg'])}")
            print(f"scaling {axis} (cpu ms/msg): " + "  ".join(cells))
        print(
            f"scaling worst doubling ratio: {scenarios['scaling']['median']['worst_doubling_ratio']}"
        )
    if "concurrency" in scenarios:
        for axis, points in scenarios["concurrency"]["series"].items():
            print(f"concurrency by {axis} (1 KiB): value  msg/s  cpu ms/msg  p50 ms  p99 ms")
            for pt in points:
                print(
                    f"  {pt[axis]:>5}  {_fmt(pt['msgs_per_s']):>8}  {_fmt(pt['cpu_ms_per_msg']):>6}"
                    f"  {_fmt(pt['p50_ms']):>7}  {_fmt(pt['p99_ms']):>7}  {'' if pt['clean'] else 'NOT CLEAN ' + str(pt['problems'])}"
                )
    print()
    print("targets:")
    for key, v in report["targets"].items():
        mark = {True: "met", False: "NOT MET", None: "n/a"}[v["met"]]
        print(f"  {key:<32} {_fmt(v['value']):>10}  target {v['target']:<10} {mark}")


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.1f}" if value >= 100 else f"{value:.3g}" if value < 1 else f"{value:.2f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def _size(n: int) -> str:
    return f"{n // MiB}M" if n >= MiB else f"{n // KiB}K"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="relayd benchmark: run the standard scenarios")
    p.add_argument(
        "--quick", action="store_true", help="fewer runs, fewer messages (about 1 minute)"
    )
    p.add_argument(
        "--scenario", action="append", choices=sorted(SCENARIOS), help="run only these (repeatable)"
    )
    p.add_argument("--out", default=str(HERE / "results" / "latest.json"), help="JSON report path")
    p.add_argument("--tls", choices=["starttls", "implicit"], default="starttls")
    p.add_argument("--sink", choices=["auto", "nginx", "python"], default="auto")
    p.add_argument("--generator-procs", type=int, default=1, help="load generator processes")
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="relayd's [server] workers: 0 (the default) runs one process per CPU core,"
        " 1 a single process; with --profile the default is 1",
    )
    p.add_argument(
        "--relayd-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra environment for relayd (e.g. MALLOC_ARENA_MAX=2), repeatable",
    )
    p.add_argument("--profile", metavar="DIR", help="profile relayd; write profiles to DIR")
    p.add_argument("--profiler", choices=["py-spy", "cprofile"], default="py-spy")
    p.add_argument("--keep", action="store_true", help="keep the temporary folder (logs)")
    args = p.parse_args(argv)
    if args.workers is None:
        args.workers = 1 if args.profile else 0
    if args.workers < 0:
        p.error("--workers: 0 or more")
    if (
        args.profile
        and args.profiler == "py-spy"
        and not (shutil.which("py-spy") or (Path(sys.executable).parent / "py-spy").exists())
    ):
        p.error("py-spy is not installed (pip install py-spy), use --profiler cprofile")
    _raise_nofile()
    names = args.scenario or list(SCENARIOS)
    scenario_plan = plan(args.quick)
    started = time.monotonic()
    relayd_env = dict(item.split("=", 1) for item in args.relayd_env)
    ws = Workspace(args.keep, args.workers, relayd_env)
    sink = Sink(ws, args.sink)
    print(
        f"workspace {ws.dir}; relayd workers = {args.workers}"
        f" ({relayd_processes(args.workers)} processes); sink: {sink.description};"
        f" check {sink.check}",
        flush=True,
    )
    ctx = Context(args, ws, sink)
    scenarios: dict[str, Any] = {}
    try:
        for name in names:
            print(f"{name} ...", flush=True)
            t0 = time.monotonic()
            scenarios[name] = SCENARIOS[name](name, scenario_plan[name], ctx)
            scenarios[name]["relayd_source"] = ctx.last_source
            scenarios[name]["elapsed_s"] = round(time.monotonic() - t0, 1)
    finally:
        sink.stop()
        ws.close()
    report = {
        "meta": {
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "command": " ".join(
                [Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]
            ),
            "quick": args.quick,
            "tls": args.tls,
            "machine": machine(),
            "sink": sink.description,
            "sink_check": sink.check,
            "generator_procs": args.generator_procs,
            "relayd_workers": args.workers,
            "relayd_processes": relayd_processes(args.workers),
            "relayd_env": relayd_env,
            "relayd_source": source_digest(),
            "profile": args.profile and {"dir": args.profile, "profiler": args.profiler},
            "elapsed_s": round(time.monotonic() - started, 1),
            "note": "relayd CPU is the schedstat run time of its process tree (workers"
            " included); RSS is the tree's VmRSS sampled every 50 ms, or the sum of the"
            " processes' VmHWM if larger; figures are medians of the runs",
        },
        "scenarios": scenarios,
        "targets": evaluate(scenarios),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    # The per-run latency lists are not kept: percentiles are.
    out.write_text(json.dumps(report, indent=1) + "\n")
    print_table(report)
    print(f"\nwrote {out} in {report['meta']['elapsed_s']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
