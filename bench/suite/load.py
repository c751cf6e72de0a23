"""
One measured run of the load generator, and the medians of several runs.

A run (L{load_run}) starts C{bench/smtpload.py} in one or more processes
against a running L{Daemon} and measures, from outside, relayd's CPU time
and resident memory (L{suite.procstats}), the sink's, the generator's and
this process's CPU time, and the rest of the machine's (other jobs, steal):
how the cores were shared.  The generator reports messages per second,
latency percentiles of the SMTP transaction (C{MAIL} written to the reply
of the final dot read) and every reply code it got.  A run with any final
reply other than C{250}, or any failed session, is marked C{"clean":
false}: errors are a result.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from typing import Any

from attrs import frozen

from . import BENCH, MiB
from .harness import Daemon, Sink, Workspace
from .procstats import (
    cpu_by_process,
    cpu_delta,
    process_tree,
    reset_hwm,
    rusage_cpu,
    system_cpu,
    tree_hwm_bytes,
)

__all__ = ["LOAD_KEYS", "Endpoint", "generator_command", "load_run", "relayd_endpoint", "summarize"]


@frozen
class Endpoint:
    """
    Where and how the generator connects: a listener of relayd or of a
    peer (L{suite.peers}).

    @ivar port: The TCP port on 127.0.0.1.
    @ivar tls: C{"starttls"}, C{"implicit"} or C{"none"} (plaintext).
    @ivar auth: Whether the session authenticates (C{AUTH PLAIN}).
    """

    port: int
    tls: str
    auth: bool = True


def relayd_endpoint(ws: Workspace, tls: str) -> Endpoint:
    """
    relayd's listener for C{tls} (C{"starttls"} or C{"implicit"}).
    """
    return Endpoint(ws.implicit_port if tls == "implicit" else ws.starttls_port, tls)


def generator_command(
    ws: Workspace,
    args: argparse.Namespace,
    mode: str,
    endpoint: Endpoint | None = None,
    **options: Any,
) -> list[str]:
    """
    The command line of one generator process in C{mode} (C{"load"} or
    C{"idle"}), on C{endpoint} (default: relayd's listener that C{--tls}
    names); each of C{options} becomes C{--name value} (underscores as
    dashes).
    """
    endpoint = endpoint or relayd_endpoint(ws, args.tls)
    command = [
        sys.executable,
        str(BENCH / "smtpload.py"),
        mode,
        "--port",
        str(endpoint.port),
        "--tls",
        endpoint.tls,
        "--cafile",
        str(ws.cert),
    ]
    command += ["--token", ws.token] if endpoint.auth else ["--no-auth"]
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
    endpoint: Endpoint | None = None,
) -> dict[str, Any]:
    """
    One measured load run against C{daemon}: relayd's L{Daemon}, or a peer
    of L{suite.peers} (anything with C{proc} and C{watcher}), whose
    process tree is measured.

    @param endpoint: Where the generator connects (default: relayd's
        listener that C{--tls} names).
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
                endpoint,
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
    harness_before = rusage_cpu(resource.RUSAGE_SELF), rusage_cpu(resource.RUSAGE_CHILDREN)
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
    cpu, cpu_source, cpu_by_ticks = cpu_delta(cpu_before, daemon.watcher.cpu())
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
    harness_cpu = rusage_cpu(resource.RUSAGE_SELF) - harness_before[0]
    generators_total_cpu = rusage_cpu(resource.RUSAGE_CHILDREN) - harness_before[1]
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


def _median(runs: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in runs if r.get(key) is not None]
    return round(statistics.median(values), 3) if values else None


def summarize(runs: list[dict[str, Any]], keys: list[str]) -> dict[str, Any]:
    """
    The median of each of C{keys} over C{runs}, how many runs there were
    (and how many saw interference), whether all were clean, and every
    final reply code other than C{250} and every error, counted.
    """
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


#: The figures of a load run that a summary gives the median of.
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
