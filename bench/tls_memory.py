"""
What one idle TLS server connection costs in C memory, apart from relayd:
OpenSSL's own state, as pyOpenSSL (the OpenSSL that C{cryptography}
bundles, which Twisted uses) and as the standard library's C{ssl} (the
system's OpenSSL) build it, with relayd's certificate and TLS policy.

    python bench/tls_memory.py [--count 1000]

Each connection does a whole TLS 1.3 handshake (and TLS 1.2, for pyOpenSSL)
with a client in memory (memory BIOs, no sockets), then one record each
way, as an idle SMTP session after C{AUTH}.  Memory is counted by glibc
(C{mallinfo2}: bytes in use, not resident pages, so that freed memory and
fragmentation do not blur it); the client side is freed before counting.
Prints one line per case, in KiB per connection.  Needs glibc 2.33+.
"""

from __future__ import annotations

import argparse
import ctypes
import functools
import gc
import ssl
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from OpenSSL import SSL

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from relayd.config import TLSConfig  # noqa: E402
from relayd.tls import ServerTLS, ensure_self_signed  # noqa: E402
from relayd.tlsbuffers import release_buffers  # noqa: E402


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()
    ]


_libc = ctypes.CDLL("libc.so.6")
_libc.mallinfo2.restype = _MallInfo2


def in_use() -> int:
    """
    @return: Bytes glibc's malloc has handed out and not had back.
    """
    gc.collect()
    info = _libc.mallinfo2()
    return int(info.uordblks + info.hblkhd)


def _pump(a: SSL.Connection, b: SSL.Connection) -> None:
    moved = True
    while moved:
        moved = False
        for x, y in ((a, b), (b, a)):
            try:
                data = x.bio_read(65536)
            except SSL.WantReadError:
                continue
            if data:
                y.bio_write(data)
                moved = True


def _step(f: Callable[[], Any], want: type[BaseException]) -> None:
    try:
        f()
    except want:
        pass


def pyopenssl_pair(server: SSL.Context, client: SSL.Context) -> tuple[Any, Any]:
    s = SSL.Connection(server, None)
    s.set_accept_state()
    c = SSL.Connection(client, None)
    c.set_connect_state()
    for _ in range(6):
        for x in (c, s):
            _step(x.do_handshake, SSL.WantReadError)
        _pump(c, s)
    c.send(b"NOOP\r\n")
    _pump(c, s)
    _step(lambda: s.recv(65536), SSL.WantReadError)
    s.send(b"250 2.0.0 Ok\r\n")
    _pump(c, s)
    _step(lambda: c.recv(65536), SSL.WantReadError)
    return s, c


def stdlib_pair(server: ssl.SSLContext, client: ssl.SSLContext) -> tuple[Any, Any]:
    si, so, ci, co = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    s = server.wrap_bio(si, so, server_side=True)
    c = client.wrap_bio(ci, co)

    def pump() -> None:
        for src, dst in ((co, si), (so, ci)):
            data = src.read()
            if data:
                dst.write(data)

    for _ in range(6):
        for x in (c, s):
            _step(x.do_handshake, ssl.SSLWantReadError)
        pump()
    c.write(b"NOOP\r\n")
    pump()
    s.read(65536)
    s.write(b"250 2.0.0 Ok\r\n")
    pump()
    c.read(65536)
    return (s, si, so), (c, ci, co)


class _Handle:
    def __init__(self, connection: SSL.Connection) -> None:
        self.connection = connection

    def getHandle(self) -> SSL.Connection:
        return self.connection


def per_connection(make: Callable[[], tuple[Any, Any]], count: int, release: bool = False) -> float:
    """
    @param make: Makes one connected pair: (server side, client side).
    @param count: How many pairs to hold at once.
    @param release: Give back each server side's BIO buffers first, as
        relayd does after the handshake (L{relayd.tlsbuffers.release_buffers}).
    @return: KiB per server side, the client sides freed.
    """
    for _ in range(20):
        make()
    base = in_use()
    pairs = [make() for _ in range(count)]
    servers = [s for s, _ in pairs]
    del pairs
    if release:
        for server in servers:
            assert release_buffers(_Handle(server))
    handshaken = (in_use() - base) / count / 1024
    del servers
    return handshaken


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--count", type=int, default=1000)
    args = p.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="relayd-tls-memory-"))
    cert, key = str(folder / "cert.pem"), str(folder / "key.pem")
    ensure_self_signed(cert, key, "localhost")
    server = ServerTLS(TLSConfig(certificate=cert, key=key)).options.getContext()
    name = SSL.OpenSSL_version(SSL.OPENSSL_VERSION).decode()
    for version, label in ((None, "TLS 1.3"), (SSL.TLS1_2_VERSION, "TLS 1.2")):
        client = SSL.Context(SSL.TLS_CLIENT_METHOD)
        if version is not None:
            client.set_max_proto_version(version)
        make = functools.partial(pyopenssl_pair, server, client)
        kib = per_connection(make, args.count)
        print(f"pyOpenSSL ({name}), {label}: {kib:.1f} KiB per connection")
        kib = per_connection(make, args.count, release=True)
        print(f"pyOpenSSL ({name}), {label}, BIO buffers released: {kib:.1f} KiB per connection")
    base = in_use()
    bare = [SSL.Connection(server, None) for _ in range(args.count)]
    print(f"pyOpenSSL ({name}), SSL_new alone: {(in_use() - base) / args.count / 1024:.1f} KiB")
    del bare
    std_server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    std_server.load_cert_chain(cert, key)
    std_client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    std_client.check_hostname = False
    std_client.verify_mode = ssl.CERT_NONE
    kib = per_connection(lambda: stdlib_pair(std_server, std_client), args.count)
    print(f"stdlib ssl ({ssl.OPENSSL_VERSION}), TLS 1.3: {kib:.1f} KiB per connection")


if __name__ == "__main__":
    main()
