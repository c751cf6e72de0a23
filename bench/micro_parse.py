"""
The MIME parse step alone, in process: microseconds per
L{relayd.policy.parse_with_policy} call for two small messages.

    python bench/micro_parse.py [--runs 7] [--number 2000] [--profile]

The messages are the ones the standard benchmark sends
(C{bench/smtpload.py}, L{build_message}): a 1 KB C{text/plain} message
(From, To, Subject, Date, Message-ID, tags and metadata headers, a few lines
of text) and a 1 KB C{multipart/alternative} of a text and an HTML
rendering.  They are parsed with the default C{[headers]} table, as the
benchmark's configuration has it.  Each figure is the minimum over C{--runs}
runs of C{--number} parses each (the least disturbed run on a shared
machine), in microseconds per message.  C{--profile} prints the cProfile
of the text message instead.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import timeit
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from smtpload import build_message  # noqa: E402

from relayd.config import HeadersConfig  # noqa: E402
from relayd.message import Envelope  # noqa: E402
from relayd.policy import parse_with_policy  # noqa: E402

__all__ = ["main", "messages"]


def messages() -> dict[str, bytes]:
    """
    @return: The benchmark's messages, by name: C{text} and C{html}, 1 KB each.
    """
    rcpts = ["rcpt@bench.example"]
    return {kind: build_message(kind, 1024, rcpts, seq=7) for kind in ("text", "html")}


def main(argv: list[str] | None = None) -> int:
    """
    Print microseconds per parse of each message.

    @param argv: The command-line arguments.
    @return: The exit status.
    """
    p = argparse.ArgumentParser(description="µs per parse of a 1 KB message")
    p.add_argument("--runs", type=int, default=7)
    p.add_argument("--number", type=int, default=2000)
    p.add_argument("--profile", action="store_true")
    args = p.parse_args(argv)
    policy = HeadersConfig()
    envelope = Envelope(mail_from="sender@bench.example", rcpt_to=("rcpt@bench.example",))
    for name, data in messages().items():
        parse_with_policy(data, envelope, policy)
        if args.profile:
            profiler = cProfile.Profile()
            profiler.enable()
            for _ in range(args.number):
                parse_with_policy(data, envelope, policy)
            profiler.disable()
            print(f"--- {name}")
            pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
            continue
        timer = timeit.Timer(lambda d=data: parse_with_policy(d, envelope, policy))
        best = min(timer.repeat(args.runs, args.number)) / args.number
        print(f"{name:5} {len(data):5d} bytes  {best * 1e6:7.1f} µs per parse")
    return 0


if __name__ == "__main__":
    sys.exit(main())
