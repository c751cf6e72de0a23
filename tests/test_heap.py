"""
Freed C memory given back to the system (L{relayd.heap}): the trimmer's
rule with a fake allocator, glibc's own calls in this process, and the
resident memory of 1,000 idle authenticated TLS sessions on the real
daemon, and what it gives back once they closed, with and without the
trimmer.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import unittest
from pathlib import Path
from typing import Any

from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from relayd.heap import GlibcHeap, HeapTrimmer, glibc_heap
from relayd.tokens import digest
from tests.daemon import RelaydProcess, config
from tests.test_e2e import TOKEN, Upstream, free_port, rss

ROOT = Path(__file__).resolve().parent.parent
KiB = 1024
MiB = 1024 * KiB


class FakeHeap:
    """
    An allocator with C{resident} bytes resident, C{free} of them held
    free, until trimmed.
    """

    def __init__(self, resident: int, free: int) -> None:
        self.resident = resident
        self.free = free
        self.trims = 0

    def resident_bytes(self) -> int:
        return self.resident

    def free_bytes(self) -> int:
        return self.free

    def trim(self) -> None:
        # The chunks stay free in glibc's books; their pages go.
        self.trims += 1
        self.resident -= self.free


class _Pool:
    """
    Runs each call at once, and reports its result or failure as
    L{twisted.python.threadpool.ThreadPool} does.
    """

    def callInThreadWithCallback(self, on_result: Any, f: Any, *args: Any, **kw: Any) -> None:
        try:
            result = f(*args, **kw)
        except BaseException:
            on_result(False, Failure())
        else:
            on_result(True, result)


class ThreadedClock(Clock):
    """
    A L{Clock} whose thread pool runs each call at once.
    """

    def getThreadPool(self) -> _Pool:
        return _Pool()

    def callFromThread(self, f: Any, *args: Any, **kw: Any) -> None:
        f(*args, **kw)


class TrimmerTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = ThreadedClock()
        self.heap = FakeHeap(60 * MiB, 10 * MiB)
        self.trimmer = HeapTrimmer(self.clock, self.heap, 1.0, 4 * MiB)
        self.trimmer.startService()
        self.addCleanup(self.trimmer.stopService)

    def test_trims_when_enough_is_free(self) -> None:
        """
        The first look (at start) finds 10 MiB free: one trim.
        """
        self.assertEqual((self.heap.trims, self.trimmer.trims), (1, 1))
        self.assertEqual(self.heap.resident, 50 * MiB)

    def test_only_after_the_resident_size_grew(self) -> None:
        """
        Free chunks stay free after a trim: the next trim waits until the
        resident size grew by the threshold again (the pages were used
        and freed again).
        """
        self.clock.advance(1.0)
        self.clock.advance(1.0)
        self.assertEqual(self.heap.trims, 1)
        self.heap.resident += 4 * MiB - 1
        self.clock.advance(1.0)
        self.assertEqual(self.heap.trims, 1)
        self.heap.resident += 1
        self.clock.advance(1.0)
        self.assertEqual(self.heap.trims, 2)

    def test_after_more_was_freed(self) -> None:
        """
        Memory freed since the last trim (the free bytes grew by the
        threshold) is given back though the resident size did not grow.
        """
        self.heap.free += 4 * MiB - 1
        self.clock.advance(1.0)
        self.assertEqual(self.heap.trims, 1)
        self.heap.free += 1
        self.clock.advance(1.0)
        self.assertEqual(self.heap.trims, 2)

    def test_nothing_when_little_is_free(self) -> None:
        """
        Growth that is memory in use (little held free) is left alone.
        """
        self.heap.free = 4 * MiB - 1
        self.heap.resident += 100 * MiB
        self.clock.advance(1.0)
        self.assertEqual(self.heap.trims, 1)
        self.heap.free = 4 * MiB
        self.clock.advance(1.0)
        self.assertEqual(self.heap.trims, 2)

    def test_once_per_interval(self) -> None:
        """
        Looks come every C{interval} seconds, not sooner.
        """
        self.heap.resident += 8 * MiB
        self.clock.advance(0.5)
        self.assertEqual(self.heap.trims, 1)
        self.clock.advance(0.5)
        self.assertEqual(self.heap.trims, 2)

    def test_a_failing_look_is_logged_and_the_next_one_runs(self) -> None:
        def broken() -> int:
            raise OSError("no mallinfo2")

        self.heap.resident += 8 * MiB
        self.heap.free_bytes = broken  # type: ignore[method-assign]
        self.clock.advance(1.0)
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)
        self.heap.free_bytes = lambda: 8 * MiB  # type: ignore[method-assign]
        self.clock.advance(1.0)
        self.assertEqual(self.heap.trims, 2)


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * KiB
    return 0


@unittest.skipIf(glibc_heap() is None, "the C library is not glibc 2.33+")
class GlibcTests(unittest.TestCase):
    def test_trim_gives_freed_pages_back(self) -> None:
        """
        Free C buffers scattered between live ones are held by the
        allocator (counted by L{GlibcHeap.free_bytes}) until L{trim}
        gives them back: this process's resident size falls.
        """
        heap = glibc_heap()
        assert isinstance(heap, GlibcHeap)
        buffers = [bytearray(24 * KiB) for _ in range(3000)]
        del buffers[::2], buffers[::2]  # 3 of 4 freed, each between live ones
        before = heap.resident_bytes()
        self.assertEqual(before // MiB, _status("VmRSS") // MiB)
        self.assertGreater(heap.free_bytes(), 40 * MiB)
        heap.trim()
        self.assertLess(heap.resident_bytes(), before - 30 * MiB)
        del buffers

    def test_used_bytes_counts_what_is_handed_out(self) -> None:
        """
        L{GlibcHeap.used_bytes} grows by what is allocated and falls back
        when it is freed.
        """
        heap = glibc_heap()
        assert isinstance(heap, GlibcHeap)
        before = heap.used_bytes()
        buffers = [bytearray(4 * KiB) for _ in range(2000)]
        self.assertGreater(heap.used_bytes() - before, 7 * MiB)
        del buffers
        self.assertLess(heap.used_bytes() - before, 1 * MiB)


@unittest.skipIf(glibc_heap() is None, "the C library is not glibc 2.33+")
class SessionMemoryTests(unittest.TestCase):
    """
    1,000 authenticated TLS sessions opened 50 at a time (the benchmark's
    generator, C{bench/smtpload.py idle}), held, then closed: the daemon's
    resident memory per open session, and what is left 2.5 s after they
    closed, with the trimmer and without.
    """

    COUNT = 1000

    def run_sessions(self, trim: bool) -> tuple[float, float]:
        """
        @return: KiB per open session, and MiB still grown after they closed.
        """
        upstream = Upstream()
        self.addCleanup(upstream.stop)
        daemon = RelaydProcess("relayd-heap-")
        self.addCleanup(daemon.stop)
        daemon.write("tokens.toml", f'[tokens.e2e]\nsha256 = "{digest(TOKEN).hex()}"\n')
        port = free_port()
        daemon.start(
            config(
                f"http://127.0.0.1:{upstream.port}/send",
                [(port, "starttls")],
                5,
                f"heap_trim = {str(trim).lower()}",
                "[limits]\nmax_connections_per_ip = 5000\n",
            ),
            [port],
        )
        assert daemon.process is not None
        pid = daemon.process.pid
        time.sleep(1.5)
        before = rss(pid)
        generator = subprocess.Popen(
            [sys.executable, str(ROOT / "bench" / "smtpload.py"), "idle", "--port", str(port)]
            + ["--token", TOKEN, "--count", str(self.COUNT), "--concurrency", "50"]
            + ["--hold", "60", "--cafile", daemon.cert, "--server-name", "localhost"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert generator.stdin is not None and generator.stdout is not None
        try:
            ready = json.loads(generator.stdout.readline() or "{}")
            self.assertEqual((ready.get("open"), ready.get("failed")), (self.COUNT, 0), ready)
            time.sleep(1.0)
            open_ = rss(pid)
        finally:
            out, err = generator.communicate("close\n", timeout=120)
        self.assertEqual(generator.returncode, 0, err[-2000:])
        time.sleep(2.5)
        return (open_ - before) / KiB / self.COUNT, (rss(pid) - before) / MiB

    def test_memory_given_back_after_sessions_close(self) -> None:
        """
        An idle session costs at most 34 KiB (about 22 of them are
        OpenSSL's own, see docs/performance.md); once the sessions closed,
        the trimmer (the default) gives back most of what they used, and
        without it all of it stays.  Not all: the small objects of a
        session live in Python's own arenas, which C{malloc_trim} cannot
        give back while any object in them is alive.
        """
        per_session, left = self.run_sessions(True)
        _, left_untrimmed = self.run_sessions(False)
        self.assertLessEqual(per_session, 34, f"{per_session:.1f} KiB per session")
        self.assertLess(left, 0.6 * left_untrimmed, f"{left:.1f} vs {left_untrimmed:.1f} MiB")
        self.assertLess(left, 16, f"{left:.1f} MiB left")
