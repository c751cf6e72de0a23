"""
The benchmark's scenarios: each runs a fresh relayd and returns its figures.

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

Each scenario is run several times; its C{"median"} gives the median of
the runs, and C{"runs"} (or C{"series"}) every run.  Each starts a fresh
relayd, so memory figures start from a clean baseline; the sink lives for
the whole invocation (L{Context}).
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import KiB, MiB
from .harness import Daemon, Sink, Workspace, relayd_processes
from .load import LOAD_KEYS, generator_command, load_run, summarize
from .procstats import cpu_delta, process_tree, rss_bytes

__all__ = ["SCENARIOS", "Context", "plan"]


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
    """
    C{small}, C{attach100k}, C{big5m}: a warm-up run, then C{p["runs"]}
    measured load runs of the same messages on one daemon.
    """
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
    """
    C{huge25m}: one huge message per run; the RSS growth over the run and
    the RSS left, after settling, over the baseline before the first run.
    """
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
    # Peak growth in units of the message's size (the worst run).
    summary["rss_growth_ratio"] = round(summary["max_rss_growth_mib"] * MiB / p["size"], 2)
    return {
        "params": {**p, "message_size_actual": runs[0]["message_sizes"]},
        "median": summary,
        "log_problem_lines": problems,
        "runs": runs,
    }


def run_idle(name: str, p: dict[str, Any], ctx: Context) -> dict[str, Any]:
    """
    C{idle10k}: hold C{p["count"]} authenticated TLS sessions open; the RSS
    with them open and after they closed, and the CPU time of setting them
    up.
    """
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
            cpu_open = cpu_delta(cpu_before, daemon.watcher.cpu())[0]
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
    """
    C{scaling}: CPU per message along three axes (text size, attachment
    size, recipients), and its ratio per doubling of each.
    """
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


#: Each scenario's function: C{(name, parameters, context) -> result}.
SCENARIOS: dict[str, Callable[[str, dict[str, Any], Context], dict[str, Any]]] = {
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
        """
        Start a fresh relayd (profiled if asked) and wait until it is idle.
        """
        daemon = Daemon(self.ws, label, self.profile, self.processes)
        self.last_source = daemon.source
        return daemon

    def spy(self, daemon: Daemon, label: str) -> None:
        """
        Start py-spy on C{daemon} for the measured runs, if asked to.
        """
        if self.profile and self.profile["profiler"] == "py-spy":
            daemon.start_spy(self.profile["dir"] / f"{label}.collapsed")

    def progress(self, name: str, i: Any, r: dict[str, Any]) -> None:
        """
        Print the main figures of run (or point) C{i} of scenario C{name}.
        """
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
