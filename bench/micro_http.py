"""
The upstream HTTP path alone, in one process: relayd's L{UpstreamClient}
(C{prepare} then C{post_prepared}, as the delivery path calls them) POSTing
1 KB messages to a local nginx sink over persistent connections, and the
CPU time this process spent per message.

    python bench/micro_http.py [--messages 4000] [--concurrency 50]
                               [--runs 5] [--size 1024] [--profile PATH]

nginx (from the distribution) answers C{200 {"id":"$request_id"}} as in
C{bench/suite/harness.py}; without nginx, C{bench/sink.py} is used.  Each
run sends C{--messages} messages with C{--concurrency} in flight; the
figure is the process's CPU time (C{time.process_time}: user + system, the
sink excluded) divided by the messages.  The best (lowest) run is the
figure to compare: the machine is shared and noise only adds time.
C{--profile PATH} writes a cProfile of one more run to C{PATH} (read it
with C{bench/hotspots.py PATH}).
"""

from __future__ import annotations

import argparse
import cProfile
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))
sys.path.insert(0, str(BENCH))

from suite.harness import nginx_config  # noqa: E402
from twisted.internet import defer  # noqa: E402

from relayd.config import HeadersConfig, UpstreamConfig  # noqa: E402
from relayd.message import Envelope, parse_message  # noqa: E402
from relayd.upstream import make_client  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_port(port: int, seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"the sink did not listen on {port}")


def start_sink(d: Path, port: int) -> subprocess.Popen[bytes]:
    """
    Start nginx (else C{bench/sink.py}) on C{port}, answering C{/send}.
    """
    nginx = shutil.which("nginx") or (
        "/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None
    )
    if nginx is None:
        return subprocess.Popen([sys.executable, str(BENCH / "sink.py"), "--port", str(port)])
    conf = d / "nginx.conf"
    conf.write_text(nginx_config(d, port))
    return subprocess.Popen([nginx, "-p", str(d), "-c", str(conf), "-g", "daemon off;"])


def message(size: int) -> Any:
    """
    A plain-text message of about C{size} bytes, parsed as relayd does.
    """
    head = (
        "From: Bench <bench@example.com>\r\nTo: rcpt@example.net\r\n"
        "Subject: micro benchmark\r\nMessage-ID: <1@example.com>\r\n\r\n"
    )
    body = ("x" * 75 + "\r\n") * max(1, (size - len(head)) // 77)
    envelope = Envelope("bench@example.com", ("rcpt@example.net",))
    return parse_message((head + body).encode(), envelope, HeadersConfig())


async def one_run(client: Any, msg: Any, messages: int, concurrency: int) -> list[Any]:
    """
    Send C{messages} messages, C{concurrency} at a time.

    @return: What L{UpstreamClient.post_prepared} returned for each.
    """
    results: list[Any] = []
    todo = iter(range(messages))

    async def worker() -> None:
        for i in todo:  # the one iterator shared by every worker
            prepared = client.prepare(msg, "bench-token", f"key-{i}")
            result = await client.post_prepared(prepared, 30.0)
            results.append(result)

    await defer.gatherResults([defer.Deferred.fromCoroutine(worker()) for _ in range(concurrency)])
    return results


async def bench(reactor: Any, options: argparse.Namespace) -> None:
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="micro-http-") as tmp:
        sink = start_sink(Path(tmp), port)
        try:
            wait_port(port, 10)
            config = UpstreamConfig(url=f"http://127.0.0.1:{port}/send")
            client = make_client(reactor, config)
            msg = message(options.size)
            await one_run(client, msg, 500, options.concurrency)  # warm pool and caches
            figures = []
            for _ in range(options.runs):
                cpu, wall = time.process_time(), time.perf_counter()
                results = await one_run(client, msg, options.messages, options.concurrency)
                cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
                bad = [r for r in results if not getattr(r, "message_id", "")]
                if bad:
                    raise SystemExit(f"{len(bad)} messages without an id: {bad[:3]}")
                us = cpu / options.messages * 1e6
                figures.append(us)
                print(f"  {us:7.1f} us CPU/msg  {options.messages / wall:7.0f} msg/s", flush=True)
            print(f"min {min(figures):.1f} us CPU/msg over {options.runs} runs")
            if options.profile:
                profiler = cProfile.Profile()
                profiler.enable()
                await one_run(client, msg, options.messages, options.concurrency)
                profiler.disable()
                profiler.dump_stats(options.profile)
                print(f"profile: {options.profile}")
            await client.close()
        finally:
            sink.terminate()
            sink.wait()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[1] if __doc__ else None)
    p.add_argument("--messages", type=int, default=4000)
    p.add_argument("--concurrency", type=int, default=50)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--size", type=int, default=1024)
    p.add_argument("--profile", default="")
    options = p.parse_args(argv)
    from twisted.internet import task
    from twisted.logger import (
        FilteringLogObserver,
        LogLevel,
        LogLevelFilterPredicate,
        globalLogBeginner,
        textFileLogObserver,
    )

    # As twist does, a level filter (warn here: no start-up chatter).
    globalLogBeginner.beginLoggingTo(
        [
            FilteringLogObserver(
                textFileLogObserver(sys.stderr),
                [LogLevelFilterPredicate(defaultLogLevel=LogLevel.warn)],
            )
        ],
        redirectStandardIO=False,
    )
    task.react(lambda r: defer.Deferred.fromCoroutine(bench(r, options)))


if __name__ == "__main__":
    main()
