"""
Summarise a relayd profile as two tables: the functions that take the most
time themselves (self) and with their callees (cumulative).

    python bench/hotspots.py PROFILE [--top 25]

C{PROFILE} is either a py-spy collapsed-stack file (C{py-spy record
--format raw --function}, as C{bench/run.py --profile DIR} writes
C{DIR/<scenario>.collapsed}) or a C{pstats} file (C{bench/run.py --profile
DIR --profiler cprofile} writes C{DIR/<scenario>.pstats}).

py-spy samples only Python frames: time spent in C (OpenSSL, zlib, the
JSON encoder) is counted against the Python function that called it.  A
frame appears once per sample in the cumulative table however often it
recurs on the stack.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter
from pathlib import Path

__all__ = ["collapsed", "main"]

_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def _short(frame: str) -> str:
    """
    C{"dataReceived (twisted/protocols/tls.py:123)"}, with the path cut to
    the package.
    """
    m = _FRAME.match(frame)
    if m is None:
        return frame
    path = m.group("file")
    for marker in ("site-packages/", "lib/python3.11/", "/work/main/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    line = f":{m.group('line')}" if m.group("line") else ""
    return f"{m.group('func')} ({path}{line})"


def _module(frame: str) -> str:
    m = _FRAME.match(frame)
    if m is None:
        return frame
    return _short(frame).rsplit("(", 1)[1].split(":")[0].rstrip(")")


def collapsed(path: Path) -> tuple[int, Counter[str], Counter[str], Counter[str]]:
    """
    Read a collapsed-stack file.

    @return: C{(samples, self, cumulative, self per module)}.
    """
    own: Counter[str] = Counter()
    cumulative: Counter[str] = Counter()
    modules: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [_short(f) for f in stack.split(";") if f]
        if not frames:
            continue
        own[frames[-1]] += n
        modules[_module(stack.split(";")[-1])] += n
        for frame in set(frames):
            cumulative[frame] += n
    return total, own, cumulative, modules


def _print(title: str, counter: Counter[str], total: int, top: int) -> None:
    print(f"\n{title}")
    print(f"{'%':>6}  {'samples':>8}  function")
    for name, n in counter.most_common(top):
        print(f"{100 * n / total:6.1f}  {n:8d}  {name}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="summarise a relayd profile")
    p.add_argument("profile", type=Path)
    p.add_argument("--top", type=int, default=25)
    args = p.parse_args(argv)
    if args.profile.suffix == ".pstats":
        import pstats

        stats = pstats.Stats(str(args.profile))
        stats.sort_stats("tottime").print_stats(args.top)
        stats.sort_stats("cumulative").print_stats(args.top)
        return 0
    total, own, cumulative, modules = collapsed(args.profile)
    if not total:
        print("no samples")
        return 1
    print(f"{args.profile}: {total} samples")
    _print("self time by file", modules, total, args.top)
    _print("self time by function", own, total, args.top)
    _print("cumulative time by function", cumulative, total, args.top)
    return 0


if __name__ == "__main__":
    sys.exit(main())
