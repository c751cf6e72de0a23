"""
The parts of relayd's benchmark (C{bench/run.py} is the command).

  - L{suite.procstats}: CPU time and resident memory of a process tree,
    read from C{/proc};
  - L{suite.harness}: the temporary folder, the upstream sink and the
    daemon, on free 127.0.0.1 ports;
  - L{suite.load}: one measured run of the load generator
    (C{bench/smtpload.py}) and the medians of several;
  - L{suite.scenarios}: the scenarios, each a function of its parameters;
  - L{suite.report}: the targets, the table printed and the JSON report.

The package is imported by C{bench/run.py} run as a script (C{bench/} is
then first on C{sys.path}); it needs relayd installed only for the
self-signed certificate and the version of the code measured.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["BENCH", "KiB", "MiB", "ROOT"]

#: The C{bench/} folder: the generator, the sink and the profiler wrapper.
BENCH = Path(__file__).resolve().parent.parent
#: The checkout: C{relayd/} is measured from here.
ROOT = BENCH.parent
MiB = 1024 * 1024
KiB = 1024
