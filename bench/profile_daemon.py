"""
Run relayd under C{cProfile}, for machines where py-spy is not available.

    python bench/profile_daemon.py OUT.pstats -- relayd --config PATH

Everything after C{--} is the C{twist} command line.  The profile is
written to C{OUT.pstats} when the daemon stops (SIGTERM or SIGINT), and can
be read with C{python bench/hotspots.py OUT.pstats} or C{python -m pstats}.

cProfile is deterministic and slows Python code down (roughly two times
for relayd's call-heavy paths), so the absolute figures of a profiled run
are not the daemon's; use it for where time goes, not how much.
"""

from __future__ import annotations

import cProfile
import sys

__all__ = ["main"]


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] != "--":
        sys.stderr.write(__doc__ or "")
        return 2
    out, twist_args = argv[0], argv[2:]
    from twisted.application.twist import _twist

    profile = cProfile.Profile()
    saved = False

    def save() -> None:
        nonlocal saved
        if not saved:
            profile.disable()
            profile.dump_stats(out)
            saved = True

    # After a SIGTERM, twist kills itself with the same signal once the
    # reactor has stopped (so that the exit status tells); save first.
    exit_with_signal = _twist._exitWithSignal

    def save_then_exit(sig: int) -> None:
        save()
        exit_with_signal(sig)

    _twist._exitWithSignal = save_then_exit  # type: ignore[attr-defined]
    profile.enable()
    try:
        _twist.Twist.main(["twist", *twist_args])
    except SystemExit:
        pass
    finally:
        save()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
