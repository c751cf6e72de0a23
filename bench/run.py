"""
relayd's standard benchmark: one command, every scenario, figures as JSON.

    python bench/run.py [--quick] [--scenario NAME ...] [--out PATH]
                        [--workers N] [--profile DIR [--profiler py-spy|cprofile]]
    python bench/run.py --compare [--reps N] [--quick] [--workers N]

Everything runs on 127.0.0.1 in a temporary folder: a self-signed
certificate, a tokens file, a relayd configuration on free ports, an
upstream sink (nginx from the distribution when installed, else
C{bench/sink.py}), and C{python -m twisted relayd --config ...}: the real
daemon, as C{twist relayd} runs it (L{suite.harness}).  The load comes from
C{bench/smtpload.py} in its own process(es) (L{suite.load}).

relayd runs with C{[server] workers = 0} (one process per CPU core) unless
C{--workers N} says otherwise: the performance targets are for a 2-core
machine that relayd must use fully.  C{--workers 1} measures one process
(the cost per message without any sharing of cores).  Profiling
(C{--profile}) defaults to C{--workers 1}: the profilers follow one process.
Before each scenario, C{run.py} waits until every worker process has
started and gone idle, so start-up is never measured.

For every run of every scenario, C{run.py} measures from outside
(L{suite.procstats}): relayd's CPU time (the scheduler's run time of every
thread of its process tree, workers included) and how it was split between
the processes; relayd's resident memory (sampled every 50 ms, and the
kernel's peak); the sink's and the generator's CPU time, to show how the
two cores were shared.  The generator reports messages per second, latency
percentiles and every reply code it got.  Each scenario is run several
times; the report gives the median of the runs, and every run in the JSON
file (L{suite.report}).  A run with any final reply other than C{250}, or
any failed session, is marked C{"clean": false} and printed in the table:
errors are a result.

The scenarios (C{small}, C{attach100k}, C{big5m}, C{huge25m}, C{idle10k},
C{scaling}, C{concurrency}; C{--quick}: fewer runs, fewer messages, fewer
sessions) are described in L{suite.scenarios}.

C{--compare} runs relayd, a same-job aiosmtpd + aiohttp gateway and
Postfix's C{smtp-sink} interleaved on four cases and prints their CPU per
message and the ratios against the targets (L{suite.compare}).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from suite import BENCH, report
from suite.compare import compare, print_comparison
from suite.harness import Sink, Workspace, py_spy_path, raise_nofile, relayd_processes
from suite.scenarios import SCENARIOS, Context, plan

DEFAULT_OUT = BENCH / "results" / "latest.json"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """
    The options of C{run.py}; C{--workers} defaults to 0, or 1 with
    C{--profile}.

    @param argv: The arguments (C{None}: C{sys.argv[1:]}).
    """
    p = argparse.ArgumentParser(description="relayd benchmark: run the standard scenarios")
    p.add_argument(
        "--quick", action="store_true", help="fewer runs, fewer messages (about 1 minute)"
    )
    p.add_argument(
        "--scenario", action="append", choices=sorted(SCENARIOS), help="run only these (repeatable)"
    )
    p.add_argument("--out", default=str(DEFAULT_OUT), help="JSON report path")
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
    p.add_argument(
        "--compare",
        action="store_true",
        help="compare relayd with the aiosmtpd + aiohttp gateway and smtp-sink"
        " (bench/peers/); --workers defaults to 1",
    )
    p.add_argument("--reps", type=int, default=3, help="--compare: interleaved runs per server")
    args = p.parse_args(argv)
    if args.workers is None:
        args.workers = 1 if (args.profile or args.compare) else 0
    if args.workers < 0:
        p.error("--workers: 0 or more")
    if args.profile and args.profiler == "py-spy" and not py_spy_path():
        p.error("py-spy is not installed (pip install py-spy), use --profiler cprofile")
    return args


def main(argv: list[str] | None = None) -> int:
    """
    Run the scenarios asked for, print the table, write the JSON report.

    @return: The exit status, 0.
    """
    args = parse_args(argv)
    raise_nofile()
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
    if args.compare:
        return run_compare(args, argv, ws, sink, started)
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
    figures = report.compose(args, argv, sink, relayd_env, scenarios, time.monotonic() - started)
    out = Path(args.out)
    report.write(figures, out)
    report.print_table(figures)
    print(f"\nwrote {out} in {figures['meta']['elapsed_s']} s")
    return 0


def run_compare(
    args: argparse.Namespace, argv: list[str] | None, ws: Workspace, sink: Sink, started: float
) -> int:
    """
    C{--compare} (L{suite.compare}): print the comparison, write it as JSON
    (C{bench/results/compare.json} unless C{--out} says otherwise).

    @return: The exit status, 0.
    """
    try:
        results = compare(args, ws, sink, relayd_processes(args.workers))
    finally:
        sink.stop()
        ws.close()
    figures = report.compose(args, argv, sink, {}, {}, time.monotonic() - started)
    del figures["scenarios"], figures["targets"]
    figures["compare"] = results
    out = Path(args.out)
    if out == DEFAULT_OUT:
        out = out.with_name("compare.json")
    report.write(figures, out)
    print_comparison(results)
    print(f"\nwrote {out} in {figures['meta']['elapsed_s']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
