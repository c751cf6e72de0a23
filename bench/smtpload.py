"""
An SMTP submission load generator for relayd's benchmarks.

It speaks real SMTP over real TLS to the daemon: the greeting, C{EHLO},
C{STARTTLS} (RFC 3207) or implicit TLS from the first byte (RFC 8314
section 3), C{EHLO} again, C{AUTH PLAIN} with an initial response
(RFC 4954, RFC 4616), then N transactions per session, then C{QUIT}.
C{--tls none --no-auth} speaks plaintext without C{AUTH}: the mode for a
floor that has neither (Postfix's C{smtp-sink}).  Each
transaction sends C{MAIL}, every C{RCPT} and C{DATA} in one write
(PIPELINING, RFC 2920 section 3.1: C{DATA} ends the group), waits for their
replies, then sends the dot-stuffed content and the final dot in one write
and waits for the reply to the final dot.

A transaction's latency runs from writing C{MAIL} to reading the reply to
the final dot.  Every reply code is counted; a final reply other than
C{250} is a result and is reported, never retried or hidden.

Two modes:

  - C{load}: C{--concurrency} sessions at a time until C{--messages}
    transactions were made, C{--per-session} of them per session.
  - C{idle}: open C{--count} authenticated TLS sessions, print one JSON
    line C{{"event": "ready", ...}}, hold them until a line arrives on
    standard input (or C{--hold} seconds pass), then C{QUIT} them all.

The result is one JSON document on standard output (the last line).  The
generator reports its own CPU time, so that its share of the machine can be
told apart from relayd's.

The module uses only the standard library, so it can run under any Python
3.11, and it imports nothing from relayd.
"""

from __future__ import annotations

import argparse
import asyncio
import asyncio.sslproto
import base64
import json
import os
import random
import resource
import ssl
import sys
import time
from collections import Counter
from typing import Any

__all__ = ["build_message", "main", "parse_mix"]

# -- messages -----------------------------------------------------------------

_WORDS = (
    "lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor"
    " incididunt ut labore et dolore magna aliqua enim ad minim veniam quis nostrud"
    " exercitation ullamco laboris nisi aliquip ex ea commodo consequat order invoice"
    " shipping account password reset welcome newsletter receipt payment"
).split()


def _text(size: int, seed: int, html: bool = False) -> bytes:
    """
    About C{size} bytes of text in lines of at most 76 octets, CRLF line
    ends, no line starting with a dot.

    @param size: Wanted length in bytes.
    @param seed: Seed of the word choice (the content is reproducible).
    @param html: Wrap paragraphs in C{<p>} tags.
    @return: The text, ending with CRLF.
    """
    rnd = random.Random(seed)
    lines: list[bytes] = []
    total = 0
    open_tag, close_tag = (b"<p>", b"</p>") if html else (b"", b"")
    while total < size:
        words: list[str] = []
        length = len(open_tag) + len(close_tag)
        while length < 66:
            word = rnd.choice(_WORDS)
            words.append(word)
            length += len(word) + 1
        line = open_tag + " ".join(words).encode("ascii") + close_tag + b"\r\n"
        lines.append(line)
        total += len(line)
    data = b"".join(lines)
    return data[: max(size, 2) - 2].rstrip(b"\r") + b"\r\n" if size < total else data


def _base64_lines(data: bytes) -> bytes:
    """
    Base64 (RFC 2045 section 6.8) in lines of 76 characters, CRLF ends.
    """
    encoded = base64.b64encode(data)
    return b"".join(encoded[i : i + 76] + b"\r\n" for i in range(0, len(encoded), 76))


#: This run's share of the Message-IDs: several load generators may run at
#: once, and a later run must not repeat an earlier one's messages.
_RUN = random.SystemRandom().randrange(10**7)

#: Stands in the C{Message-ID} of a prepared message; every transaction
#: writes a number of the same width in its place, so that each message is
#: a new one to relayd's idempotency records (RFC 5322 section 3.6.4: one
#: Message-ID per message), as a real application's are.
UNIQUE = "U" * 16


def _headers(sender: str, rcpts: list[str], subject: str, seq: int) -> bytes:
    fields = [
        f"From: Bench Sender <{sender}>",
        f"To: {', '.join(rcpts[:1])}",
        f"Subject: {subject} #{seq}",
        "Date: Thu, 20 Nov 2025 12:00:00 +0000",
        f"Message-ID: <bench-{seq}-{UNIQUE}@bench.example>",
        "MIME-Version: 1.0",
        "X-Tags: bench, load",
        f"X-Metadata-seq: {seq}",
    ]
    return ("\r\n".join(fields) + "\r\n").encode("ascii")


def build_message(
    kind: str,
    size: int,
    rcpts: list[str],
    sender: str = "sender@bench.example",
    seq: int = 0,
    attachments: int = 1,
) -> bytes:
    """
    Build one RFC 5322 message of about C{size} bytes.

    Kinds:
      - C{text}: a C{text/plain} body, 7bit.
      - C{html}: C{multipart/alternative} of a text and an HTML rendering,
        half of the size each.
      - C{attach}: C{multipart/mixed}: a small C{multipart/alternative}
        (text and HTML, about 1 KB) then C{attachments} base64 attachments
        of random (incompressible) bytes that fill the rest of the size.

    @param kind: C{"text"}, C{"html"} or C{"attach"}.
    @param size: Wanted size of the whole message in bytes (headers
        included); small sizes are rounded up to what the headers need.
    @param rcpts: The envelope recipients (the first is the C{To}).
    @param sender: The C{From} address.
    @param seq: A number put in the subject and C{Message-ID}.
    @param attachments: How many attachments the C{attach} kind has.
    @return: The message with CRLF line ends, not dot-stuffed.
    """
    head = _headers(sender, rcpts, kind, seq)
    if kind == "text":
        head += (
            b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 7bit\r\n\r\n"
        )
        return head + _text(size - len(head), seq)
    boundary = f"=_bench_{seq}_alt".encode("ascii")
    if kind == "html":
        head += b'Content-Type: multipart/alternative; boundary="' + boundary + b'"\r\n\r\n'
        overhead = len(_alternative(boundary, b"", b""))
        half = max((size - len(head) - overhead) // 2, 10)
        return head + _alternative(boundary, _text(half, seq), _text(half, seq + 1, html=True))
    if kind != "attach":
        raise ValueError(f"unknown message kind {kind!r}")
    mixed = f"=_bench_{seq}_mixed".encode("ascii")
    head += b'Content-Type: multipart/mixed; boundary="' + mixed + b'"\r\n\r\n'
    alternative = _alternative(boundary, _text(300, seq), _text(500, seq + 1, html=True))
    parts = [
        b"--" + mixed + b"\r\n",
        b'Content-Type: multipart/alternative; boundary="' + boundary + b'"\r\n\r\n',
        alternative,
    ]
    used = len(head) + sum(map(len, parts)) + len(mixed) + 8
    each = max((size - used) // max(attachments, 1) - 200, 3)
    rnd = random.Random(seq)
    for i in range(attachments):
        content = rnd.randbytes(each * 57 // 78)  # base64 with line ends: 78/57
        parts += [
            b"--" + mixed + b"\r\n",
            b'Content-Type: application/pdf; name="document-%d.pdf"\r\n' % i,
            b'Content-Disposition: attachment; filename="document-%d.pdf"\r\n' % i,
            b"Content-Transfer-Encoding: base64\r\n\r\n",
            _base64_lines(content),
        ]
    parts.append(b"--" + mixed + b"--\r\n")
    return head + b"".join(parts)


def _alternative(boundary: bytes, text: bytes, html: bytes) -> bytes:
    return b"".join(
        [
            b"--" + boundary + b"\r\n",
            b"Content-Type: text/plain; charset=utf-8\r\n\r\n",
            text,
            b"--" + boundary + b"\r\n",
            b"Content-Type: text/html; charset=utf-8\r\n\r\n",
            html,
            b"--" + boundary + b"--\r\n",
        ]
    )


def dot_stuff(message: bytes) -> bytes:
    """
    Dot-stuff a message for DATA (RFC 5321 section 4.5.2) and add the
    final dot.

    @param message: The message, CRLF line ends.
    @return: What goes on the wire after the C{354} reply.
    """
    data = message.replace(b"\r\n.", b"\r\n..")
    if data.startswith(b"."):
        data = b"." + data
    if not data.endswith(b"\r\n"):
        data += b"\r\n"
    return data + b".\r\n"


def parse_mix(text: str) -> list[tuple[str, int]]:
    """
    Parse a message mix: C{"text"} or C{"text=70,html=20,attach=10"}.

    @return: C{(kind, weight)} pairs.
    """
    mix = []
    for item in text.split(","):
        kind, _, weight = item.partition("=")
        mix.append((kind.strip(), int(weight) if weight else 1))
    return mix


class Payloads:
    """
    The messages one run sends: one prepared (dot-stuffed) payload per kind,
    chosen per transaction in a fixed weighted rotation.
    """

    def __init__(
        self, mix: list[tuple[str, int]], size: int, rcpts: list[str], attachments: int
    ) -> None:
        self.sizes: dict[str, int] = {}
        self._data: dict[str, tuple[bytes, bytes]] = {}
        for kind, _ in mix:
            message = build_message(kind, size, rcpts, seq=len(self._data), attachments=attachments)
            self.sizes[kind] = len(message)
            head, _, tail = dot_stuff(message).partition(UNIQUE.encode("ascii"))
            self._data[kind] = (head, tail)
        self._rotation = [kind for kind, weight in mix for _ in range(weight)]
        self._next = 0

    def take(self) -> tuple[str, tuple[bytes, bytes, bytes], int]:
        """
        @return: C{(kind, wire bytes in three pieces, message size)} of the
            next message, with a C{Message-ID} of its own.
        """
        kind = self._rotation[self._next % len(self._rotation)]
        self._next += 1
        head, tail = self._data[kind]
        unique = b"%016d" % (self._next + _RUN * 10**8)
        return kind, (head, unique, tail), self.sizes[kind]


# -- the SMTP client ------------------------------------------------------------


class SMTPFailure(Exception):
    """
    The session cannot go on: an unexpected reply during set-up.
    """


# What ends a session in the load generator (counted, never raised).
SESSION_ERRORS = (
    TimeoutError,
    OSError,
    asyncio.IncompleteReadError,
    SMTPFailure,
    ValueError,
    ssl.SSLError,
)


class Stats:
    """
    What one generator process saw.
    """

    def __init__(self) -> None:
        self.replies: Counter[str] = Counter()
        self.final: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.samples: list[str] = []
        self.latencies: list[float] = []
        self.sessions = 0
        self.sessions_failed = 0
        self.attempted = 0
        self.bytes_sent = 0

    def sample(self, what: str) -> None:
        """
        Keep the first few unexpected replies or errors, as text.
        """
        if len(self.samples) < 10 and what not in self.samples:
            self.samples.append(what)


class Session:
    """
    One SMTP session over asyncio streams.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, stats: Stats):
        self.reader = reader
        self.writer = writer
        self.stats = stats

    async def reply(self) -> tuple[int, bytes]:
        """
        Read one (possibly multi-line) reply.

        @return: C{(code, last line)}.
        """
        readuntil = self.reader.readuntil
        while True:
            line = await readuntil(b"\r\n")
            if line[3:4] != b"-":
                code = int(line[:3])
                self.stats.replies[line[:3].decode("ascii")] += 1
                return code, line

    async def expect(self, code: int, what: str) -> None:
        got, line = await self.reply()
        if got != code:
            text = line.decode("utf-8", "replace").strip()
            self.stats.sample(f"{what}: {text}")
            raise SMTPFailure(f"{what}: {got}")


async def open_session(args: argparse.Namespace, context: ssl.SSLContext, stats: Stats) -> Session:
    """
    Connect, secure, greet and authenticate.

    @return: A session ready for C{MAIL}.
    @raise SMTPFailure: A set-up reply was not the expected one.
    """
    if args.tls == "implicit":
        reader, writer = await asyncio.open_connection(
            args.host, args.port, ssl=context, server_hostname=args.server_name
        )
    else:
        reader, writer = await asyncio.open_connection(args.host, args.port)
    session = Session(reader, writer, stats)
    try:
        await session.expect(220, "greeting")
        writer.write(b"EHLO bench.example\r\n")
        await session.expect(250, "EHLO")
        if args.tls == "starttls":
            writer.write(b"STARTTLS\r\n")
            await session.expect(220, "STARTTLS")
            await writer.start_tls(context, server_hostname=args.server_name)
            writer.write(b"EHLO bench.example\r\n")
            await session.expect(250, "EHLO after STARTTLS")
        if not args.no_auth:
            writer.write(b"AUTH PLAIN " + args.auth + b"\r\n")
            await session.expect(235, "AUTH")
    except BaseException:
        writer.transport.abort()
        raise
    return session


async def transaction(session: Session, args: argparse.Namespace, payloads: Payloads) -> None:
    """
    One mail transaction; records its latency and its final reply.
    """
    stats = session.stats
    kind, data, size = payloads.take()
    command = (
        b"MAIL FROM:<sender@bench.example> SIZE=%d\r\n" % size + args.rcpt_commands + b"DATA\r\n"
    )
    stats.attempted += 1
    start = time.perf_counter()
    session.writer.write(command)
    data_code = 0
    for _ in range(args.rcpts + 1):
        code, line = await session.reply()
        if code >= 300:
            stats.sample(line.decode("utf-8", "replace").strip())
    data_code, line = await session.reply()
    if data_code != 354:
        stats.final[f"DATA {data_code}"] += 1
        stats.sample(line.decode("utf-8", "replace").strip())
        session.writer.write(b"RSET\r\n")
        await session.reply()
        return
    session.writer.writelines(data)
    length = sum(map(len, data))
    stats.bytes_sent += length
    if length > 65536:
        await session.writer.drain()
    code, line = await session.reply()
    stats.latencies.append(time.perf_counter() - start)
    stats.final[str(code)] += 1
    if code != 250:
        stats.sample(line.decode("utf-8", "replace").strip())


async def close_session(session: Session) -> None:
    """
    C{QUIT}, read the reply, close.
    """
    try:
        session.writer.write(b"QUIT\r\n")
        await session.reply()
    except (OSError, asyncio.IncompleteReadError, ValueError):
        pass
    session.writer.transport.abort()


def _error_name(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"[:200]


async def load_worker(
    args: argparse.Namespace,
    context: ssl.SSLContext,
    stats: Stats,
    payloads: Payloads,
    quota: list[int],
) -> None:
    """
    Run sessions one after the other until the shared C{quota} of
    transactions is used up.
    """
    loop = asyncio.get_running_loop()
    while quota[0] > 0:
        count = min(args.per_session, quota[0])
        quota[0] -= count
        session = None
        watchdog = None
        try:
            session = await asyncio.wait_for(open_session(args, context, stats), args.reply_timeout)
            stats.sessions += 1
            for _ in range(count):
                watchdog = loop.call_later(args.reply_timeout, session.writer.transport.abort)
                await transaction(session, args, payloads)
                watchdog.cancel()
            await close_session(session)
        except SESSION_ERRORS as e:
            if watchdog is not None:
                watchdog.cancel()
            stats.sessions_failed += 1
            stats.errors[_error_name(e)] += 1
            if session is not None:
                session.writer.transport.abort()
            await asyncio.sleep(0.05)


async def run_load(
    args: argparse.Namespace, context: ssl.SSLContext, stats: Stats
) -> dict[str, Any]:
    payloads = Payloads(parse_mix(args.mix), args.size, args.rcpt_list, args.attachments)
    quota = [args.messages]
    start = time.monotonic()
    workers = [
        asyncio.ensure_future(load_worker(args, context, stats, payloads, quota))
        for _ in range(args.concurrency)
    ]
    done, pending = await asyncio.wait(workers, timeout=args.deadline)
    timed_out = bool(pending)
    for task in pending:
        task.cancel()
    for task in done:
        if task.exception() is not None:
            stats.errors[_error_name(task.exception())] += 1  # type: ignore[arg-type]
    end = time.monotonic()
    return {
        "mode": "load",
        "start": start,
        "end": end,
        "timed_out": timed_out,
        "message_sizes": payloads.sizes,
    }


async def run_idle(
    args: argparse.Namespace, context: ssl.SSLContext, stats: Stats
) -> dict[str, Any]:
    # asyncio gives every TLS connection a 256 KiB read buffer
    # (asyncio.sslproto.SSLProtocol.max_size): 2.5 GiB for 10,000 idle
    # sessions.  Idle sessions read a few hundred bytes; 16 KiB (one TLS
    # record) is plenty.
    asyncio.sslproto.SSLProtocol.max_size = 16 * 1024  # type: ignore[attr-defined]
    sessions: list[Session] = []
    semaphore = asyncio.Semaphore(args.concurrency)

    async def one() -> None:
        async with semaphore:
            try:
                session = await asyncio.wait_for(
                    open_session(args, context, stats), args.reply_timeout
                )
            except SESSION_ERRORS as e:
                stats.sessions_failed += 1
                stats.errors[_error_name(e)] += 1
                return
            stats.sessions += 1
            sessions.append(session)

    start = time.monotonic()
    await asyncio.wait(
        [asyncio.ensure_future(one()) for _ in range(args.count)], timeout=args.deadline
    )
    opened = time.monotonic()
    cpu_open = _cpu()
    print(
        json.dumps(
            {
                "event": "ready",
                "open": len(sessions),
                "failed": stats.sessions_failed,
                "open_s": round(opened - start, 3),
                "cpu_s": round(cpu_open, 3),
            }
        ),
        flush=True,
    )
    loop = asyncio.get_running_loop()
    line = loop.run_in_executor(None, sys.stdin.readline)
    await asyncio.wait([line], timeout=args.hold)
    closing = time.monotonic()
    alive = sum(1 for s in sessions if not s.writer.transport.is_closing())
    # Everything still open answers NOOP: the sessions really were alive.
    noop_ok = Counter()

    async def finish(session: Session) -> None:
        try:
            session.writer.write(b"NOOP\r\n")
            code, _ = await session.reply()
            noop_ok[str(code)] += 1
        except (OSError, asyncio.IncompleteReadError, ValueError) as e:
            stats.errors[_error_name(e)] += 1
        await close_session(session)

    for i in range(0, len(sessions), 500):
        await asyncio.wait_for(
            asyncio.gather(*(finish(s) for s in sessions[i : i + 500])), args.reply_timeout
        )
    return {
        "mode": "idle",
        "start": start,
        "end": time.monotonic(),
        "open_s": round(opened - start, 3),
        "close_s": round(time.monotonic() - closing, 3),
        "alive_before_close": alive,
        "noop_replies": dict(noop_ok),
        "timed_out": False,
    }


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def _options(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("mode", choices=["load", "idle"])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument(
        "--tls",
        choices=["starttls", "implicit", "none"],
        default="starttls",
        help="none: plaintext (for a floor such as Postfix's smtp-sink)",
    )
    p.add_argument("--no-auth", action="store_true", help="skip AUTH (with --tls none)")
    p.add_argument("--cafile", help="PEM certificate(s) to verify the server with")
    p.add_argument("--server-name", default="localhost", help="TLS server name (SNI, checked)")
    p.add_argument("--user", default="apikey")
    p.add_argument("--token", default=os.environ.get("RELAYD_BENCH_TOKEN", ""))
    p.add_argument("--concurrency", type=int, default=10, help="sessions at once")
    p.add_argument("--messages", type=int, default=100, help="transactions in all (load)")
    p.add_argument("--per-session", type=int, default=20, help="transactions per session (load)")
    p.add_argument("--size", type=int, default=1024, help="message size in bytes")
    p.add_argument(
        "--mix", default="text", help='kinds: "text", "html", "attach", or "text=7,attach=3"'
    )
    p.add_argument("--attachments", type=int, default=1, help="attachments of the attach kind")
    p.add_argument("--rcpts", type=int, default=1, help="recipients per transaction")
    p.add_argument("--count", type=int, default=1000, help="sessions to hold (idle)")
    p.add_argument("--hold", type=float, default=60.0, help="most seconds to hold (idle)")
    p.add_argument("--reply-timeout", type=float, default=60.0, help="seconds per reply / set-up")
    p.add_argument("--deadline", type=float, default=300.0, help="seconds for the whole run")
    p.add_argument("--no-latencies", action="store_true", help="leave the latency list out")
    args = p.parse_args(argv)
    if not args.token and not args.no_auth:
        p.error("--token (or RELAYD_BENCH_TOKEN) is required, unless --no-auth")
    args.auth = base64.b64encode(f"\0{args.user}\0{args.token}".encode())
    args.rcpt_list = [f"rcpt{i}@bench.example" for i in range(args.rcpts)]
    args.rcpt_commands = b"".join(b"RCPT TO:<%s>\r\n" % r.encode("ascii") for r in args.rcpt_list)
    return args


def main(argv: list[str] | None = None) -> int:
    """
    Run the generator; print the result as one JSON line.
    """
    args = _options(argv)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    context = ssl.create_default_context(cafile=args.cafile)
    if not args.cafile:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    stats = Stats()
    cpu_start = _cpu()
    runner = run_load if args.mode == "load" else run_idle
    result = asyncio.run(runner(args, context, stats))
    cpu = _cpu() - cpu_start
    wall = result["end"] - result["start"]
    ok = stats.final.get("250", 0)
    latencies_ms = [round(x * 1000, 3) for x in stats.latencies]
    result.update(
        {
            "wall_s": round(wall, 4),
            "attempted": stats.attempted,
            "ok": ok,
            "msgs_per_s": round(ok / wall, 2) if wall > 0 else None,
            "final_codes": dict(stats.final),
            "reply_codes": dict(stats.replies),
            "sessions": stats.sessions,
            "sessions_failed": stats.sessions_failed,
            "errors": dict(stats.errors),
            "error_samples": stats.samples,
            "bytes_sent": stats.bytes_sent,
            "p50_ms": _percentile(latencies_ms, 0.50),
            "p99_ms": _percentile(latencies_ms, 0.99),
            "cpu_s": round(cpu, 3),
            "peak_rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        }
    )
    if not args.no_latencies:
        result["latencies_ms"] = latencies_ms
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
