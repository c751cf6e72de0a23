# -*- test-case-name: tests.test_tls_buffers -*-
"""
Giving back the memory a TLS connection's buffers hold.

Twisted runs TLS over pyOpenSSL's C{Connection(context, None)}: the bytes
read from the socket are written into one OpenSSL memory BIO and the
bytes to send are read out of another.  A memory BIO's buffer grows to the
most it ever held and never shrinks (OpenSSL's C{BIO_s_mem},
C{BUF_MEM_grow_clean}).  L{release_buffers} swaps both for empty ones; the
SMTP session (L{relayd.smtp.session.RelaySMTP.write}) calls it after the
handshake and every L{RELEASE_AFTER} bytes of input.  Measured in
C{bench/tls_memory.py} and docs/performance.md.
"""

from __future__ import annotations

from OpenSSL import SSL
from OpenSSL._util import ffi as _ffi
from OpenSSL._util import lib as _openssl

__all__ = ["RELEASE_AFTER", "release_buffers"]

#: Bytes of decrypted input a TLS session takes in before its next reply
#: gives back its memory BIOs' buffers (L{release_buffers}): a 1 KB
#: message stream releases them every dozen messages or so, a large
#: message once, at its final reply.
RELEASE_AFTER = 16 * 1024

#: Where L{release_buffers} moves a BIO's bytes through (the reactor
#: thread is the only caller).
_SCRATCH_SIZE = 16 * 1024
_scratch = _ffi.new("char[]", _SCRATCH_SIZE)


def _drain(bio: object) -> bytes:
    """
    @return: Every byte in memory BIO C{bio}, which is left empty.
    """
    chunks = []
    # An empty memory BIO answers -1 (retry) or 0 (its end, once set),
    # with nothing queued in OpenSSL's error stack.
    while (n := _openssl.BIO_read(bio, _scratch, _SCRATCH_SIZE)) > 0:
        chunks.append(bytes(_ffi.buffer(_scratch, n)))
    return b"".join(chunks)


def _fill(bio: object, data: bytes) -> bool:
    """
    Write C{data} into memory BIO C{bio}.

    @return: Whether all of it went in (only running out of memory stops
        a memory BIO).
    """
    return not data or _openssl.BIO_write(bio, data, len(data)) == len(data)


def release_buffers(transport: object) -> bool:
    """
    Give back the memory that a TLS connection's two memory BIOs hold.

    Twisted runs TLS over pyOpenSSL's C{Connection(context, None)}: the
    bytes read from the socket are written into one OpenSSL memory BIO and
    the bytes to send are read out of another.  A memory BIO's buffer
    grows to the most it ever held and never shrinks (OpenSSL's
    C{BIO_s_mem}, C{BUF_MEM_grow_clean}): the handshake leaves about
    3 KiB in them, and one 64 KiB socket read of a DATA block about
    85 KiB, kept for as long as the session lasts.  This puts two new,
    empty memory BIOs in their place (C{SSL_set_bio} frees the old ones),
    after moving the bytes the old ones still hold into them, in order:
    the TLS stream is unchanged.  Cheap (about 2 microseconds); call it
    from the reactor thread only.

    @param transport: A session's transport once TLS has started (its
        C{getHandle()} is the pyOpenSSL connection), or anything else.
    @return: C{True} if the buffers were replaced; C{False}, with nothing
        changed, when the transport's handle is not a pyOpenSSL connection
        on memory BIOs (no TLS, or a pyOpenSSL whose private C{_ssl},
        C{_into_ssl} and C{_from_ssl} attributes are not what this
        expects).
    """
    try:
        connection = transport.getHandle()  # type: ignore[attr-defined]
    except Exception:
        return False
    if not isinstance(connection, SSL.Connection):
        return False
    ssl = getattr(connection, "_ssl", None)
    into = getattr(connection, "_into_ssl", None)
    out = getattr(connection, "_from_ssl", None)
    if ssl is None or into is None or out is None:
        return False
    fresh_into = _openssl.BIO_new(_openssl.BIO_s_mem())
    fresh_out = _openssl.BIO_new(_openssl.BIO_s_mem())
    moved = fresh_into != _ffi.NULL and fresh_out != _ffi.NULL
    if moved:
        held = [_drain(into), _drain(out)]
        moved = _fill(fresh_into, held[0]) and _fill(fresh_out, held[1])
        if not moved:  # pragma: no cover - out of memory: put the bytes back
            _fill(into, held[0])
            _fill(out, held[1])
    if not moved:  # pragma: no cover - out of memory
        for bio in (fresh_into, fresh_out):
            if bio != _ffi.NULL:
                _openssl.BIO_free(bio)
        return False
    if _openssl.BIO_read(into, _scratch, 1) == 0:
        # The receiving side was told the stream ended (bio_shutdown): an
        # empty BIO then reads as the end, not as "retry".
        _openssl.BIO_set_mem_eof_return(fresh_into, 0)
    _openssl.SSL_set_bio(ssl, fresh_into, fresh_out)
    connection._into_ssl = fresh_into
    connection._from_ssl = fresh_out
    return True
