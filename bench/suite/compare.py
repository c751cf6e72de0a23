"""
C{bench/run.py --compare}: relayd against a same-job Python gateway, and a floor.

Three servers do the same measured runs, interleaved (relayd, gateway,
[smtp-sink], then again, C{reps} times), so that a change in the machine's
load hits all of them alike; each figure is the median of its runs:

  - relayd (L{suite.harness.Daemon}, C{[server] workers} from C{--workers},
    1 by default here);
  - the gateway (L{suite.peers.Gateway}): aiosmtpd + aiohttp + C{email},
    the same TLS, C{AUTH}, MIME-to-C{native} mapping and upstream sink;
  - C{smtp-sink} (L{suite.peers.SmtpSink}), the floor for the cases that
    name it: plaintext, no C{AUTH}, no parsing, no upstream.

Each server's CPU time is read the same way, from C{/proc} of its own
process tree (L{suite.load.load_run}); the generator and the HTTP sink are
separate processes, measured apart and reported as shares.  The targets
are those of the performance issue: relayd's CPU per message at most 1/3
(1 KB) or 1/6 (100 KB, 5 MB) of the gateway's, and at most twice
C{smtp-sink}'s at 5 MB.
"""

from __future__ import annotations

import argparse
import statistics
from typing import Any

from attrs import frozen

from . import KiB, MiB
from .harness import Daemon, Sink, Workspace
from .load import load_run, relayd_endpoint
from .peers import Gateway, SmtpSink, smtp_sink_path

__all__ = ["CASES", "Case", "compare", "print_comparison"]


@frozen
class Case:
    """
    One compared workload.

    @ivar gateway_target: The largest relayd/gateway CPU ratio allowed.
    @ivar floor_target: The largest relayd/smtp-sink CPU ratio allowed;
        C{0}: the floor is measured for information; C{None}: not measured.
    """

    name: str
    what: str
    size: int
    mix: str
    tls: str
    concurrency: int
    per_session: int
    messages: int
    gateway_target: float
    floor_target: float | None = None


CASES = [
    Case("1k", "1 KB text, STARTTLS", KiB, "text", "starttls", 50, 20, 3000, 1 / 3, 0),
    Case("1k-implicit", "1 KB text, implicit TLS", KiB, "text", "implicit", 50, 20, 3000, 1 / 3),
    Case("100k", "100 KB with attachment", 100 * KiB, "attach", "starttls", 10, 20, 400, 1 / 6),
    Case("5m", "5 MB with attachment", 5 * MiB, "attach", "starttls", 1, 4, 8, 1 / 6, 2.0),
]


def _run(ctx: dict[str, Any], server: Any, endpoint: Any, case: Case, messages: int) -> Any:
    return load_run(
        ctx["ws"],
        ctx["args"],
        server,
        ctx["sink"],
        messages=messages,
        concurrency=min(case.concurrency, messages),
        per_session=case.per_session,
        size=case.size,
        mix=case.mix,
        endpoint=endpoint,
    )


def _figures(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """
    Medians of one server's runs of one case: its CPU per message, the
    generator's and the sink's, and how much else ran on the machine.
    """

    def median(values: list[float]) -> float | None:
        return round(statistics.median(values), 3) if values else None

    ok = [r for r in runs if r["ok"]]
    server = [r["relayd_cpu_s"] * 1000 / r["ok"] for r in ok]
    generator = [r["generator_cpu_s"] * 1000 / r["ok"] for r in ok]
    sink = [r["sink_cpu_s"] * 1000 / r["ok"] for r in ok]
    shares = [
        r["generator_cpu_s"] / (r["relayd_cpu_s"] + r["generator_cpu_s"] + r["sink_cpu_s"])
        for r in ok
    ]
    return {
        "cpu_ms_per_msg": median(server),
        "cpu_ms_per_msg_runs": [round(x, 3) for x in server],
        "generator_cpu_ms_per_msg": median(generator),
        "sink_cpu_ms_per_msg": median(sink),
        "generator_share": median(shares),
        "msgs_per_s": median([r["msgs_per_s"] for r in ok]),
        "p50_ms": median([r["p50_ms"] for r in ok if r["p50_ms"] is not None]),
        "other_cpu_util_max": max((r["other_cpu_util"] for r in runs), default=None),
        "runs_with_interference": sum(1 for r in runs if r["interference"]),
        "clean": all(r["clean"] for r in runs),
        "final_codes": [r["final_codes"] for r in runs if not r["clean"]],
        "errors": [r["error_samples"] for r in runs if r["error_samples"]],
    }


def compare(args: argparse.Namespace, ws: Workspace, sink: Sink, processes: int) -> dict[str, Any]:
    """
    Start relayd, the gateway and (if present) C{smtp-sink}; run every case
    C{args.reps} times, interleaved.

    @return: Per case, each server's L{_figures} and the ratios.
    """
    ctx = {"ws": ws, "args": args, "sink": sink}
    scale = 3 if args.quick else 1
    servers: dict[str, Any] = {}
    floor = smtp_sink_path()
    try:
        servers["relayd"] = Daemon(ws, "compare", None, processes)
        servers["gateway"] = Gateway(ws, sink.port)
        if floor:
            servers["smtp-sink"] = SmtpSink(ws, floor)
        results: dict[str, Any] = {}
        for case in CASES:
            names = ["relayd", "gateway"]
            if case.floor_target is not None and "smtp-sink" in servers:
                names.append("smtp-sink")
            endpoints = {
                "relayd": relayd_endpoint(ws, case.tls),
                **{n: servers[n].endpoint(case.tls) for n in names[1:]},
            }
            messages = max(case.messages // scale, case.concurrency, 2)
            for name in names:  # warm-up: imports, TLS, connection pools
                _run(ctx, servers[name], endpoints[name], case, max(messages // 10, 2))
            runs: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
            for rep in range(args.reps):
                for name in names:
                    r = _run(ctx, servers[name], endpoints[name], case, messages)
                    runs[name].append(r)
                    print(
                        f"  {case.name} [{rep}] {name}: {r['cpu_ms_per_msg']} ms/msg,"
                        f" {r['msgs_per_s']} msg/s, other {r['other_cpu_util']},"
                        f" clean {r['clean']}",
                        flush=True,
                    )
            results[case.name] = _verdict(case, {n: _figures(runs[n]) for n in names}, messages)
        results["_log_problem_lines"] = {n: s.log_problems() for n, s in servers.items()}
        results["_floor"] = floor or "smtp-sink not installed: no floor"
        return results
    finally:
        for server in servers.values():
            server.stop()


def _verdict(case: Case, figures: dict[str, Any], messages: int) -> dict[str, Any]:
    relayd = figures["relayd"]["cpu_ms_per_msg"]
    gateway = figures["gateway"]["cpu_ms_per_msg"]
    out: dict[str, Any] = {"what": case.what, "messages_per_run": messages, "servers": figures}
    if relayd and gateway:
        ratio = relayd / gateway
        out["gateway_ratio"] = round(ratio, 3)
        out["gateway_target"] = round(case.gateway_target, 3)
        out["gateway_met"] = ratio <= case.gateway_target
    floor = figures.get("smtp-sink", {}).get("cpu_ms_per_msg")
    if relayd and floor:
        out["floor_ratio"] = round(relayd / floor, 2)
        if case.floor_target:
            out["floor_target"] = case.floor_target
            out["floor_met"] = relayd / floor <= case.floor_target
    return out


def print_comparison(results: dict[str, Any]) -> None:
    """
    One line per case: each server's CPU ms per message, the ratios and
    their targets, the generator's share.
    """
    print()
    print(
        f"{'case':<12} {'relayd':>8} {'gateway':>8} {'ratio':>6} {'target':>7}  met"
        f"  {'smtp-sink':>9} {'ratio':>6} {'target':>6}  met   generator share r/g/s"
    )

    def mark(v: bool | None) -> str:
        return {True: "yes", False: "NO", None: "-"}[v]

    for name, r in results.items():
        if name.startswith("_"):
            continue
        s = r["servers"]
        floor = s.get("smtp-sink", {})
        shares = "/".join(
            f"{s[n]['generator_share']:.2f}" for n in ("relayd", "gateway", "smtp-sink") if n in s
        )
        print(
            f"{name:<12} {s['relayd']['cpu_ms_per_msg']:>8} {s['gateway']['cpu_ms_per_msg']:>8}"
            f" {r.get('gateway_ratio', '-'):>6} {'<= ' + format(r['gateway_target'], '.2f'):>7}"
            f"  {mark(r.get('gateway_met')):<3}  {floor.get('cpu_ms_per_msg', '-'):>9}"
            f" {r.get('floor_ratio', '-'):>6} {('<= ' + str(r['floor_target'])) if 'floor_target' in r else '':>6}"
            f"  {mark(r.get('floor_met')):<3}   {shares}"
        )
        unclean = [n for n in s if not s[n]["clean"]]
        if unclean:
            print(f"  NOT CLEAN: {unclean}: {[s[n]['final_codes'] for n in unclean]}")
    print(
        f"CPU ms per message of each server's process tree; log problems {results['_log_problem_lines']}"
    )
