"""
The SMTP session and delivery path alone, in process: microseconds per
1 KB transaction from the command bytes to the reply to the final dot.

    python bench/micro_session.py [--runs 7] [--number 2000] [--profile]

One authenticated L{relayd.smtp.session.RelaySMTP} session on a recording
transport (L{relayd.testing.SMTPDriver}), with relayd's own avatar
(L{relayd.delivery.RelayDelivery}) and L{relayd.pipeline.Pipeline}: the
header policy, the idempotency key, the in-memory outcome store, the
routing, the transaction event (formatted as a JSON line and thrown away)
and the metrics.  Only the upstream is fake: its C{prepare} and
C{post_prepared} return at once, so the figure leaves out the HTTP client.
Each transaction is sent as the standard benchmark sends it
(C{bench/smtpload.py}): C{MAIL FROM}, C{RCPT TO} and C{DATA} in one packet
(PIPELINING, RFC 2920), then the message and its final dot in another.
Each figure is the minimum over C{--runs} runs of C{--number} transactions
(the least disturbed run on a shared machine), in microseconds of CPU time
(C{time.process_time}: a shared machine takes wall time away) per
transaction.  C{--profile} prints the cProfile of one run instead.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from smtpload import build_message  # noqa: E402
from twisted.internet import task  # noqa: E402
from twisted.logger import globalLogBeginner  # noqa: E402

from relayd.config import HeadersConfig, LimitsConfig  # noqa: E402
from relayd.delivery import Pipeline, RelayDelivery  # noqa: E402
from relayd.events import format_json  # noqa: E402
from relayd.result import Accepted  # noqa: E402
from relayd.testing import TOKEN, SMTPDriver, make_fake_portal  # noqa: E402

__all__ = ["main"]


class _Prepared:
    carries_key = True
    credential = None


class _FakeClient:
    """
    An upstream client that takes every message at once.
    """

    def __init__(self) -> None:
        self.count = 0

    def prepare(self, message: Any, token: str, key: str | None, now: float = 0.0) -> Any:
        return _Prepared()

    async def post_prepared(self, request: Any, deadline: float | None = None) -> Any:
        self.count += 1
        return Accepted(f"id-{self.count}")


def _driver() -> SMTPDriver:
    clock = task.Clock()
    pipeline = Pipeline(_FakeClient(), HeadersConfig(), clock)  # type: ignore[arg-type]
    avatar = RelayDelivery(TOKEN, _policy(), pipeline)
    limits = LimitsConfig(max_messages_per_connection=10**9)
    driver = SMTPDriver(clock=clock, portal=make_fake_portal(avatar), limits=limits)
    driver.login()
    return driver


def _policy() -> Any:
    from relayd.tokens import TokenPolicy

    return TokenPolicy("bench")


def _message(seq: int) -> bytes:
    """
    The benchmark's 1 KB text message number C{seq}, dot-stuffed, with its
    final dot (RFC 5321 section 4.5.2).
    """
    data = build_message("text", 1024, ["rcpt@bench.example"], seq=seq)
    return data.replace(b"\r\n.", b"\r\n..") + b".\r\n"


def run(driver: SMTPDriver, number: int, seq: list[int]) -> float:
    """
    @return: Microseconds per transaction over C{number} transactions.
    """
    command = (
        b"MAIL FROM:<sender@bench.example> SIZE=1024\r\nRCPT TO:<rcpt@bench.example>\r\nDATA\r\n"
    )
    bodies = []
    for _ in range(number):
        seq[0] += 1
        bodies.append(_message(seq[0]))
    proto = driver.proto
    transport = driver.transport
    client = driver.proto.avatar.pipeline.upstream  # type: ignore[union-attr]
    before = client.count
    start = time.process_time()
    for body in bodies:
        proto.dataReceived(command)
        proto.dataReceived(body)
        transport.clear()
    took = time.process_time() - start
    if client.count != before + number:
        raise AssertionError(f"{client.count - before} of {number} messages relayed")
    return took / number * 1e6


def main(argv: list[str] | None = None) -> int:
    """
    Print microseconds per transaction.

    @param argv: The command-line arguments.
    @return: The exit status.
    """
    p = argparse.ArgumentParser(description="µs per 1 KB SMTP transaction, in process")
    p.add_argument("--runs", type=int, default=7)
    p.add_argument("--number", type=int, default=2000)
    p.add_argument("--profile", action="store_true")
    p.add_argument("--sort", default="tottime", help="the profile's order (pstats)")
    p.add_argument("--lines", type=int, default=40, help="rows of the profile")
    args = p.parse_args(argv)
    lines: list[int] = [0]

    def observer(event: dict[str, Any]) -> None:
        if event.get("log_event") == "transaction":
            lines[0] += 1
        format_json(event, "main")

    globalLogBeginner.beginLoggingTo([observer], discardBuffer=True, redirectStandardIO=False)
    driver = _driver()
    seq = [0]
    # Check: every transaction gets its 250 and its one event.
    proto, transport = driver.proto, driver.transport
    proto.dataReceived(
        b"MAIL FROM:<sender@bench.example>\r\nRCPT TO:<rcpt@bench.example>\r\nDATA\r\n"
    )
    proto.dataReceived(_message(0))
    replies = transport.value().decode().split("\r\n")
    transport.clear()
    if not replies[3].startswith("250 2.0.0 Ok: queued as id-") or lines[0] != 1:
        print("unexpected replies", replies, lines, file=sys.stderr)
        return 1
    run(driver, 200, seq)
    if args.profile:
        prof = cProfile.Profile()
        prof.enable()
        run(driver, args.number, seq)
        prof.disable()
        pstats.Stats(prof).sort_stats(args.sort).print_stats(args.lines)
        return 0
    figures = [run(driver, args.number, seq) for _ in range(args.runs)]
    print(f"session+delivery 1 KB: {min(figures):.1f} us per transaction (min of {args.runs})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
