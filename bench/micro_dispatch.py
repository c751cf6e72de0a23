"""
What the epoll reactor's dispatch costs per socket event, Twisted's
(through C{twisted.python.log.callWithLogger}) and relayd's direct one
(L{relayd.dispatch.direct_dispatch}).

    python bench/micro_dispatch.py [--round-trips 20000] [--runs 5]

One new epoll reactor per run, two TCP connections on 127.0.0.1 playing
ping-pong with 64-byte messages: each round trip is two reads and two
writes.  Prints the CPU time per round trip (median of the runs) for
each dispatch, and the difference per socket event.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

from twisted.internet.epollreactor import EPollReactor
from twisted.internet.protocol import ClientFactory, Factory, Protocol

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from relayd.dispatch import direct_dispatch  # noqa: E402

MESSAGE = b"x" * 64


class _Pong(Protocol):
    def dataReceived(self, data: bytes) -> None:
        self.transport.write(data)  # type: ignore[union-attr]


class _Ping(Protocol):
    def __init__(self, reactor: EPollReactor, count: int) -> None:
        self.reactor = reactor
        self.left = count

    def connectionMade(self) -> None:
        self.transport.write(MESSAGE)  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        self.left -= 1
        if self.left:
            self.transport.write(MESSAGE)  # type: ignore[union-attr]
        else:
            self.reactor.stop()


def run(direct: bool, count: int) -> float:
    """
    @return: CPU seconds per round trip.
    """
    reactor = EPollReactor()
    if direct:
        assert direct_dispatch(reactor)
    port = reactor.listenTCP(0, Factory.forProtocol(_Pong), interface="127.0.0.1")
    factory = ClientFactory()
    factory.buildProtocol = lambda addr: _Ping(reactor, count)  # type: ignore[method-assign]
    reactor.connectTCP("127.0.0.1", port.getHost().port, factory)
    start = time.process_time()
    reactor.run(installSignalHandlers=False)
    return (time.process_time() - start) / count


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--round-trips", type=int, default=20000)
    p.add_argument("--runs", type=int, default=5)
    args = p.parse_args()
    figures: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(args.runs):
        for direct in (False, True):  # interleaved
            figures[direct].append(run(direct, args.round_trips))
    twisted_us = statistics.median(figures[False]) * 1e6
    direct_us = statistics.median(figures[True]) * 1e6
    print(f"Twisted's dispatch: {twisted_us:.2f} us CPU per round trip")
    print(f"direct dispatch:    {direct_us:.2f} us CPU per round trip")
    print(f"saved: {(twisted_us - direct_us) / 4:.2f} us per socket event (2 reads, 2 writes)")


if __name__ == "__main__":
    main()
