"""
Micro-benchmark of the per-message steps of a large message, in process:
the figures of each step behind relayd's CPU per message, for the docs.

    python bench/micro_big.py [--size BYTES ...] [--runs N]

For each size (by default 5 MiB and 100 KB, both the C{attach} kind of
C{bench/smtpload.py}: a short text and HTML part, then one base64
attachment in lines of 76 characters), it prints the best of C{--runs}
runs, in milliseconds, of:

  - C{framing}: the dot-stuffed content fed to a L{Framer} in pieces of
    16 KiB (TLS records) and read by a L{DataReader}, with relayd's default
    line limit (65536) and RFC 5321's (998);
  - C{parse}: L{relayd.message.parse_message}, and of it
    C{clean_base64_length}, the check of the attachment's base64;
  - C{digest}: the C{Message-ID} and the SHA-256 content digest (the
    idempotency key's inputs);
  - C{body}: the native dialect's request body built
    (L{JSONDialect.chunked_body}) and C{write}: its pieces made, as they are
    written to the upstream (the base64 text without line breaks).

Run it from the repository root; C{PYTHONPATH=/other/checkout} measures
another checkout's code (its C{relayd} is imported first).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parent))
sys.path.append(str(Path(__file__).resolve().parent.parent))

from smtpload import build_message, dot_stuff  # noqa: E402

from relayd.config import HeadersConfig  # noqa: E402
from relayd.dialects.native import NativeDialect  # noqa: E402
from relayd.idempotency import content_digest  # noqa: E402
from relayd.message import Envelope, parse_message  # noqa: E402
from relayd.message.decoding import clean_base64_length  # noqa: E402
from relayd.pipeline import message_id  # noqa: E402
from relayd.smtp.framing import DataReader, Framer  # noqa: E402

#: Octets fed to the framer at once: one TLS record.
PIECE = 16 * 1024


def best(runs: int, step: Callable[[], object]) -> float:
    """
    @return: The shortest of C{runs} runs of C{step}, in milliseconds.
    """
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        step()
        times.append(time.perf_counter() - started)
    return min(times) * 1000


def frame(stream: bytes, max_line_length: int) -> bytes | bytearray:
    """
    Read one DATA content the way a session does.

    @return: The content.
    """
    framer = Framer(512, max_line_length, False)
    reader = DataReader(max_line_length, 50 * 1024 * 1024, False)
    for pos in range(0, len(stream), PIECE):
        framer.feed(stream[pos : pos + PIECE])
        framer.read_data(reader)
    return reader.body()


def attachment_body(message: bytes) -> tuple[int, int]:
    """
    @return: Where the base64 body of the message's attachment is: its
        start and end offsets.
    """
    start = message.index(b"Content-Transfer-Encoding: base64\r\n\r\n") + 37
    end = message.index(b"\r\n--", start) + 2
    return start, end


def measure(size: int, runs: int) -> list[tuple[str, float]]:
    """
    @return: The figures of one message size, as C{(step, milliseconds)}.
    """
    message = build_message("attach", size, ["to@bench.example"], seq=1)
    stream = dot_stuff(message)
    assert frame(stream, 65536) == message
    envelope = Envelope("sender@bench.example", ("to@bench.example",))
    headers = HeadersConfig()
    parsed = parse_message(message, envelope, headers)
    dialect = NativeDialect()
    start, end = attachment_body(message)
    body = dialect.chunked_body(parsed)
    return [
        ("framing (limit 65536)", best(runs, lambda: frame(stream, 65536))),
        ("  at limit 998", best(runs, lambda: frame(stream, 998))),
        ("parse", best(runs, lambda: parse_message(message, envelope, headers))),
        ("  clean_base64_length", best(runs, lambda: clean_base64_length(message, start, end))),
        ("digest", best(runs, lambda: (message_id(message), content_digest(message)))),
        ("body", best(runs, lambda: dialect.chunked_body(parsed))),
        ("write", best(runs, lambda: sum(map(len, body.chunks())))),
    ]


def main() -> None:
    """
    Print the figures.
    """
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip())
    p.add_argument("--size", type=int, action="append", help="message size in bytes")
    p.add_argument("--runs", type=int, default=9, help="runs per step; the best counts")
    args = p.parse_args()
    import relayd

    print(f"relayd from {Path(relayd.__file__).parent}; best of {args.runs} runs, ms")
    for size in args.size or [5 * 1024 * 1024, 100 * 1000]:
        figures = measure(size, args.runs)
        print(f"{size} bytes")
        for name, ms in figures:
            print(f"  {name:24s} {ms:8.2f}")
        print(f"  {'total':24s} {sum(ms for name, ms in figures if name[0] != ' '):8.2f}")


if __name__ == "__main__":
    main()
