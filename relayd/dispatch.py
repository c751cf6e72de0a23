# -*- test-case-name: tests.test_dispatch -*-
"""
How the epoll reactor hands a ready socket to its transport: directly,
without the legacy logging context that Twisted puts round each call.

Twisted's C{EPollReactor.doPoll} calls each ready descriptor's handler
through C{twisted.python.log.callWithLogger}, which asks the transport
for its C{logPrefix()}, copies the legacy log context into a new
dictionary and pushes it for the call: 3 to 4 microseconds of CPU for
each read and each write (C{bench/micro_dispatch.py}), about 6% of
relayd's CPU for a 1 KB message (docs/performance.md).  That context only names
the C{system} of legacy C{twisted.python.log} lines written during the
call; relayd's log lines (L{relayd.events}, C{twisted.logger}) do not
use it.  L{direct_dispatch} makes one reactor call the handler itself:
the same C{_doReadOrWrite}, which already catches, logs and closes on
any error of the transport or its protocol; what escapes it (a
C{connectionLost} that raised) is logged and the other ready sockets are
handled, as before.

The module touches no global reactor; L{relayd.tap} applies it to the
one C{twist} installs.
"""

from __future__ import annotations

import types
from typing import Any

from twisted.logger import Logger

__all__ = ["direct_dispatch"]

log = Logger()

#: What L{_poll} uses of an C{EPollReactor}: if a Twisted release renames
#: any of them, L{direct_dispatch} leaves the reactor as it is.
_NEEDS = ("_poller", "_selectables", "_doReadOrWrite")


def _poll(reactor: Any, timeout: float | None) -> None:
    """
    One reactor iteration's I/O: wait up to C{timeout} seconds (forever
    for C{None}) for ready descriptors, and call each one's handler.

    @param reactor: The C{EPollReactor}.
    @param timeout: Seconds, or C{None}.
    """
    selectables = reactor._selectables
    try:
        ready = reactor._poller.poll(-1 if timeout is None else timeout, len(selectables))
    except InterruptedError:  # pragma: no cover - Python retries EINTR (PEP 475)
        return
    handle = reactor._doReadOrWrite
    for fd, event in ready:
        selectable = selectables.get(fd)
        # Gone when an earlier handler of this batch closed it.
        if selectable is not None:
            try:
                handle(selectable, fd, event)
            except Exception:
                # What escapes it (a connectionLost that raised) is logged
                # and the batch goes on, as under callWithLogger.
                log.failure("Unhandled error handling {fd}", fd=fd)


def direct_dispatch(reactor: object) -> bool:
    """
    Make C{reactor} call each ready socket's handler directly (see the
    module docstring).

    @param reactor: A reactor.
    @return: C{True} if it is changed; C{False}, unchanged, when it is not
        Twisted's C{EPollReactor} itself (another reactor, a subclass, a
        test's fake) or lacks what the direct call uses.
    """
    try:
        from twisted.internet.epollreactor import EPollReactor
    except ImportError:  # pragma: no cover - no epoll on this system
        return False
    if type(reactor) is not EPollReactor or not all(hasattr(reactor, n) for n in _NEEDS):
        return False
    reactor.doIteration = types.MethodType(_poll, reactor)  # type: ignore[method-assign]
    return True
