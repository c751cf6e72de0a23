# -*- test-case-name: tests.test_heap -*-
"""
Give the memory that C's allocator holds free back to the system
(glibc's C{malloc_trim}), so that an idle daemon's resident memory is what
its sessions use, not what a burst of them once used.

Each TLS handshake, message and upstream request allocates buffers in C
(OpenSSL, the parsers) and frees them again; glibc keeps the freed pages
for reuse, scattered between live ones, so the resident size after a burst
of 1,000 TLS handshakes stays about twice what the sessions left open
hold.  Once a second (C{[server] heap_trim_interval}) L{HeapTrimmer}
looks at the resident size (C{/proc/self/statm}) and at what the
allocator holds free (C{mallinfo2}); when that is C{[server]
heap_trim_threshold} bytes or more, and the resident size or the free
bytes grew by as much since the last trim, it has
the allocator return its free pages (C{malloc_trim(0)}, which since glibc
2.8 also releases free pages in the middle of the heap; the chunks stay
free in the allocator's books, their pages are no longer resident).  This
runs in the reactor's thread pool: C{ctypes} lets go of the GIL for the
call, and the reactor thread never waits on it.

Without glibc (musl, macOS) there is nothing to call and no trimmer runs.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from typing import Any

from twisted.application.internet import TimerService
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger

__all__ = ["GlibcHeap", "HeapTrimmer", "fix_mmap_threshold", "glibc_heap"]

log = Logger()


def fix_mmap_threshold() -> None:
    """
    Make glibc's malloc give large freed blocks back to the system.

    glibc raises its mmap threshold after a large block is freed, so after
    one 25 MiB message later large allocations come from the heap and the
    process keeps that memory.  A fixed threshold (128 KiB, glibc's initial
    one) keeps large message buffers in their own mappings, returned when
    freed (mallopt(3), C{M_MMAP_THRESHOLD}).  Nothing happens on other C
    libraries.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 128 * 1024)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass


class _MallInfo2(ctypes.Structure):
    """
    C{struct mallinfo2} (glibc 2.33+, C{malloc.h}): sizes in bytes.
    """

    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


class GlibcHeap:
    """
    glibc's allocator, through C{ctypes}.
    """

    def __init__(self, libc: Any) -> None:
        """
        @param libc: The loaded C library (a C{ctypes.CDLL}) with
            C{mallinfo2} and C{malloc_trim}.
        """
        self._mallinfo2 = libc.mallinfo2
        self._mallinfo2.restype = _MallInfo2
        self._mallinfo2.argtypes = []
        self._trim = libc.malloc_trim
        self._trim.restype = ctypes.c_int
        self._trim.argtypes = [ctypes.c_size_t]

    def free_bytes(self) -> int:
        """
        @return: Bytes the allocator holds free in its arenas (free chunks
            and fast bins), in every thread's arena.
        """
        info = self._mallinfo2()
        return int(info.fordblks + info.fsmblks)

    def used_bytes(self) -> int:
        """
        @return: Bytes handed out by the allocator and not freed yet
            (C{mallinfo2}: in use in the arenas, and in chunks mapped on
            their own).
        """
        info = self._mallinfo2()
        return int(info.uordblks + info.hblkhd)

    def trim(self) -> None:
        """
        Give every free page of every arena back to the system
        (C{malloc_trim(0)}).
        """
        self._trim(0)

    def resident_bytes(self) -> int:
        """
        @return: This process's resident size (C{/proc/self/statm}), in
            bytes; 0 where there is no C{/proc}.
        """
        try:
            with open("/proc/self/statm", "rb") as f:
                return int(f.read().split()[1]) * _PAGE
        except (OSError, ValueError, IndexError):
            return 0


_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def glibc_heap() -> GlibcHeap | None:
    """
    @return: This process's glibc allocator, or C{None} when the C library
        is not glibc 2.33 or later (no C{mallinfo2} or C{malloc_trim}).
    """
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
    except OSError:
        return None
    if not hasattr(libc, "mallinfo2") or not hasattr(libc, "malloc_trim"):
        return None
    return GlibcHeap(libc)


class HeapTrimmer(TimerService):
    """
    Every C{interval} seconds, in the reactor's thread pool: when the
    allocator holds at least C{threshold} bytes free and, since the last
    trim, the resident size grew or the free bytes grew by at least
    C{threshold}, give the free pages back.

    @ivar heap: The allocator (L{GlibcHeap}, or a fake with
        C{resident_bytes}, C{free_bytes} and C{trim}).
    @ivar threshold: Bytes below which nothing is done: a trim costs page
        faults when the memory is used again.
    @ivar trims: How many trims were made (for tests and debugging).
    """

    def __init__(self, reactor: Any, heap: Any, interval: float, threshold: int) -> None:
        """
        @param reactor: Provides C{IReactorTime} and C{IReactorThreads}.
        @param heap: See L{heap}.
        @param interval: Seconds between two looks at the allocator.
        @param threshold: See L{threshold}, in bytes.
        """
        super().__init__(interval, self._tick)  # type: ignore[no-untyped-call]
        self.clock = reactor
        self.reactor = reactor
        self.heap = heap
        self.threshold = threshold
        self.trims = 0
        self._busy = False
        # The resident size after the last trim, and the bytes then free
        # (no trim yet: 0).
        self._floor = 0
        self._free = 0

    def _tick(self) -> None:
        if self._busy:
            return
        self._busy = True
        d = deferToThreadPool(self.reactor, self.reactor.getThreadPool(), self._look)
        d.addCallback(self._looked)
        d.addErrback(lambda f: log.failure("heap trim failed", f))
        d.addBoth(self._done)

    def _look(self) -> tuple[int, int, int] | None:
        """
        In a pool thread: trim when enough is free and, since the last
        trim, the resident size grew or more was freed by the threshold.

        @return: The resident bytes before and after the trim and the free
            bytes, or C{None} when there was no trim.
        """
        before = self.heap.resident_bytes()
        free = self.heap.free_bytes()
        grew = before - self._floor >= self.threshold
        freed = free - self._free >= self.threshold
        if free < self.threshold or not (grew or freed):
            return None
        self.heap.trim()
        return before, self.heap.resident_bytes(), free

    def _looked(self, trimmed: tuple[int, int, int] | None) -> None:
        if trimmed is None:
            return
        before, after, self._free = trimmed
        self._floor = after
        self.trims += 1
        log.debug(
            "heap trimmed: resident {before:.1f} -> {after:.1f} MiB",
            before=before / 2**20,
            after=after / 2**20,
        )

    def _done(self, _: Any) -> None:
        self._busy = False
