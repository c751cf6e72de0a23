"""
The benchmark's report: the targets, the table printed and the JSON file.

The JSON report holds C{"meta"} (when, on what machine, which relayd code,
with which options), C{"scenarios"} (each scenario's C{"median"} figures
and every run) and C{"targets"} (each target's median value and whether
it was met).  The per-run latency lists are not kept: percentiles are.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import ssl
import sys
from pathlib import Path
from typing import Any

from . import KiB, MiB
from .harness import Sink, relayd_processes, source_digest

__all__ = ["TARGETS", "compose", "evaluate", "machine", "print_table", "write"]

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
    # The issue that compares relayd with a same-job Python gateway (its CPU
    # ratios are checked by --compare, suite.compare): peak RSS growth at
    # most 1.5 times the message's size, 24 KiB per idle session.
    "huge25m.rss_growth_ratio": ("<=", 1.5),
    "idle10k.kib_per_session": ("<=", 24),
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
    """
    Print the table of the figures, each scenario's summary and the
    targets.
    """
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


def compose(
    args: argparse.Namespace,
    argv: list[str] | None,
    sink: Sink,
    relayd_env: dict[str, str],
    scenarios: dict[str, Any],
    elapsed_s: float,
) -> dict[str, Any]:
    """
    The report of one invocation.

    @param argv: The command's arguments (C{None}: C{sys.argv[1:]}).
    @param elapsed_s: Seconds the whole invocation took.
    """
    return {
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
            "elapsed_s": round(elapsed_s, 1),
            "note": "relayd CPU is the schedstat run time of its process tree (workers"
            " included); RSS is the tree's VmRSS sampled every 50 ms, or the sum of the"
            " processes' VmHWM if larger; figures are medians of the runs",
        },
        "scenarios": scenarios,
        "targets": evaluate(scenarios),
    }


def write(report: dict[str, Any], out: Path) -> None:
    """
    Write C{report} to C{out} as indented JSON, creating its folder.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
