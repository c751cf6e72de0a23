"""
Helpers of the SMTP session tests: credentials, replies, limits for long
sessions, byte-stream predicates, and L{WireChecks}, the shape of
everything the session writes.  The session itself is driven with
L{relayd.testing.SMTPDriver} (L{session} for an implicit-TLS one whose
greeting is read, as the guard tests want).
"""

from __future__ import annotations

import base64
import re
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from relayd.config import LimitsConfig
from relayd.smtp.session import RelaySMTP
from relayd.testing import TOKEN, SMTPDriver, auth_plain

#: The server's name in the driver's greeting and 421 replies.
HOST = "mx.example.test"

#: The replies to AUTH with a good and a bad credential, and to NOOP.
AUTH_OK = "235 2.7.0 Authentication successful"
AUTH_BAD = "535 5.7.8 Authentication credentials invalid"
NOOP_OK = "250 2.0.0 Ok"

__all__ = [
    "AUTH_BAD",
    "AUTH_OK",
    "DANGEROUS",
    "HOST",
    "NOOP_OK",
    "QUEUED",
    "SMUGGLE",
    "TOKEN",
    "WireChecks",
    "b64",
    "crlf_only",
    "data_parts",
    "inbuf",
    "logged_in",
    "plain",
    "roomy",
    "session",
]

#: The reply of L{relayd.testing.FakeDelivery} to the final dot.
QUEUED = re.compile(r"^250 2\.0\.0 Ok: queued as fake-\d+$")

#: A second transaction hidden in a message body.
SMUGGLE = b"MAIL FROM:<evil@example.com>\r\nRCPT TO:<victim@example.com>\r\nDATA\r\nevil\r\n"

#: Pieces of hostile streams for the property tests: line ends, dots,
#: almost-end-of-data sequences, commands.  (At most 40 pieces of at most
#: 20 octets make no line over 998 octets.)
DANGEROUS = [
    b"\r\n",
    b"\n",
    b"\r",
    b".",
    b"..",
    b"\0",
    b" ",
    b"x",
    b"\xff",
    b"\r\n.\r",
    b"\n.\n",
    b"\r.\r",
    b".\r\n",
    b"\n.\r\n",
    b"\r\n.\n",
    b"MAIL FROM:<e@example.com>\r\n",
    b"RCPT TO:<v@example.com>\r\n",
    b"DATA\r\n",
    b"QUIT\r\n",
    b"RSET\r\n",
    b"STARTTLS\r\n",
    b"AUTH PLAIN\r\n",
    b"y" * 20,
]

_BAD_LINE_END = re.compile(rb"\r(?!\n)|(?<!\r)\n")
_REPLY_LINE = re.compile(rb"^[2-5]\d\d[ -][^\r\n]*$")
_ENHANCED = re.compile(r"^([2-5])\d\d[ -]([245])\.\d{1,3}\.\d{1,3} ")
_EHLO_WORDS = {
    HOST,
    "PIPELINING",
    "STARTTLS",
    "AUTH PLAIN LOGIN",
    "AUTH=PLAIN LOGIN",
    "ENHANCEDSTATUSCODES",
    "8BITMIME",
    "SMTPUTF8",
    "HELP",
}


def plain(user: str, password: str, authzid: str = "") -> str:
    """
    The AUTH PLAIN response for these credentials (RFC 4616 section 2).
    """
    return auth_plain(user, password, authzid)


def b64(text: str) -> str:
    """
    C{text} as UTF-8 in base64, as AUTH LOGIN sends each field.
    """
    return base64.b64encode(text.encode()).decode()


def data_parts(proto: RelaySMTP) -> list[bytes]:
    """
    The message content the session holds (none outside DATA).
    """
    transaction = proto.transaction
    if transaction is None or transaction.data is None:
        return []
    return [bytes(part) for part in transaction.data.parts]


def inbuf(proto: RelaySMTP) -> bytearray:
    """
    The session's unprocessed input (the buffer of its framing).
    """
    return proto.framing.buffer


def roomy(**changes: Any) -> LimitsConfig:
    """
    Limits under which one session can run thousands of transactions.
    """
    values: dict[str, Any] = dict(max_errors=10**6, max_messages_per_connection=10**9)
    values.update(changes)
    return LimitsConfig(**values)


def crlf_only(data: bytes) -> bool:
    """
    Every CR is followed by LF and every LF preceded by CR.
    """
    return _BAD_LINE_END.search(data) is None


def session(**kwargs: Any) -> SMTPDriver:
    """
    One implicit-TLS session (AUTH allowed at once), its greeting read.

    @param kwargs: More arguments of L{SMTPDriver} (C{ip}, C{factory},
        C{limits}, the factory's C{counters} ...).
    """
    s = SMTPDriver(implicit_tls=True, **kwargs)
    s.replies()
    return s


def logged_in(implicit_tls: bool = True, **kwargs: Any) -> SMTPDriver:
    """
    A session that has passed AUTH (on an implicit-TLS listener unless
    told otherwise).

    @param kwargs: More arguments of L{SMTPDriver}.
    """
    s = SMTPDriver(implicit_tls=implicit_tls, **kwargs)
    s.login()
    return s


class WireChecks:
    """
    Mixin: the shape of everything relayd ever writes.
    """

    def check_wire(self, s: SMTPDriver) -> None:
        """
        Every write ends in CRLF; every line is one reply line whose
        enhanced status code (RFC 2034, RFC 3463) agrees with its reply
        code; nothing looks like a traceback; nothing is written after the
        connection closed.
        """
        tc: SynchronousTestCase = self  # type: ignore[assignment]
        for chunk in s.transport.chunks:
            tc.assertTrue(chunk.endswith(b"\r\n"), chunk)
        raw = bytes(s.transport.wire)
        if not raw:
            return
        tc.assertNotIn(b"Traceback", raw)
        tc.assertNotIn(b'File "', raw)
        tc.assertEqual(bytes(s.transport.after_close), b"")
        for line in raw[:-2].split(b"\r\n"):
            tc.assertRegex(line, _REPLY_LINE)
            text = line.decode("utf-8")
            code, rest = text[:3], text[4:]
            if code in ("220", "334", "354"):
                continue
            if code == "250" and (rest in _EHLO_WORDS or re.fullmatch(r"SIZE \d+", rest)):
                continue  # EHLO and HELO replies carry no status (RFC 2034)
            m = _ENHANCED.match(text)
            tc.assertIsNotNone(m, text)
            assert m is not None
            tc.assertEqual(m.group(1), m.group(2), text)
