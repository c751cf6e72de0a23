"""
A minimal HTTP/1.1 upstream sink for relayd's benchmarks: the fallback when
nginx is not installed.

It answers every request with C{200} and C{{"id": "<n>"}} (the C{native}
dialect's answer, C{docs/upstream-api.md}), after reading and discarding
the whole request body (C{Content-Length} only; relayd never sends chunked
bodies).  Connections are kept alive.  It uses only the standard library:
one asyncio process, no parsing beyond the request head.

    python bench/sink.py --port 8025
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import sys

__all__ = ["SinkProtocol", "main"]

_ids = itertools.count(1)


class SinkProtocol(asyncio.Protocol):
    """
    One HTTP/1.1 connection: read heads, skip bodies, answer.
    """

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.skip = 0
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.skip:
            if len(data) <= self.skip:
                self.skip -= len(data)
                if self.skip == 0:
                    self._answer()
                return
            data = data[self.skip :]
            self.skip = 0
            self._answer()
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buffer) > 65536:
                    assert self.transport is not None
                    self.transport.close()
                return
            head = bytes(self.buffer[:end]).lower()
            del self.buffer[: end + 4]
            length = 0
            at = head.find(b"\ncontent-length:")
            if at >= 0:
                line_end = head.find(b"\r\n", at + 1)
                length = int(head[at + 16 : line_end if line_end >= 0 else None])
            if len(self.buffer) >= length:
                del self.buffer[:length]
                self._answer()
                continue
            self.skip = length - len(self.buffer)
            self.buffer.clear()
            return

    def _answer(self) -> None:
        body = b'{"id":"sink-%d"}' % next(_ids)
        assert self.transport is not None
        self.transport.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
        )


async def serve(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(SinkProtocol, host, port, backlog=1024)
    print(f"sink listening on {host}:{port}", flush=True)
    async with server:
        await server.serve_forever()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="relayd benchmark upstream sink")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    args = p.parse_args(argv)
    try:
        asyncio.run(serve(args.host, args.port))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
