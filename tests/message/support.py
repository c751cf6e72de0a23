"""
Builders and assertions shared by the tests of L{relayd.message}.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from relayd.config import HeadersConfig
from relayd.message import (
    Envelope,
    OutboundMessage,
    parse_message,
)
from relayd.reply import Refused

FROM = "From: Alice Example <alice@example.com>\n"
ALTERNATIVE = "Content-Type: multipart/alternative; boundary=alt\n"
MIXED = "Content-Type: multipart/mixed; boundary=mix\n"


def message(head: str, body: bytes | str = "Hello\n") -> bytes:
    """
    Build a message with CRLF line ends.

    @param head: Header fields, one per line, LF separated (UTF-8 for
        8-bit fields).
    @param body: The body; LF in a C{str} body becomes CRLF.
    @return: The message bytes.
    """
    data = head.replace("\n", "\r\n").encode("utf-8")
    if isinstance(body, str):
        body = body.replace("\n", "\r\n").encode("utf-8")
    return data + b"\r\n" + body


def parse(
    data: bytes,
    policy: HeadersConfig | None = None,
    rcpt: tuple[str, ...] = ("bob@example.org",),
) -> OutboundMessage:
    """
    Parse with the default policy and a simple envelope.
    """
    envelope = Envelope(mail_from="alice@example.com", rcpt_to=rcpt)
    return parse_message(data, envelope, policy or HeadersConfig())


def multipart(boundary: str, *parts: str) -> str:
    """
    Join body parts with delimiter lines (RFC 2046 section 5.1.1).

    @param parts: Each part: its header fields, a blank line and its body.
    @return: The multipart body, LF line ends.
    """
    chunks = [f"--{boundary}\n{part}\n" for part in parts]
    return "".join(chunks) + f"--{boundary}--\n"


def multipart_bytes(boundary: str, *parts: bytes) -> bytes:
    """
    Like L{multipart}, for parts with 8-bit bytes; CRLF line ends.
    """
    chunks = [b"--%s\n%s\n" % (boundary.encode(), part) for part in parts]
    body = b"".join(chunks) + b"--%s--\n" % (boundary.encode(),)
    return body.replace(b"\n", b"\r\n")


class RejectionAssertions(SynchronousTestCase):
    """
    A helper for asserting rejections.
    """

    def assertRejected(
        self, data: bytes, code: int, status: str, text: str, **kwargs: object
    ) -> Refused:
        error: Refused = self.assertRaises(Refused, parse, data, **kwargs)
        self.assertEqual(
            (error.reply.code, error.reply.status, error.reply.text), (code, status, text)
        )
        return error
