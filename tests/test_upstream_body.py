"""
Chunked request bodies: a JSON body made of pieces (L{Body}), its base64
values encoded only as they are written, written by L{BytesProducer} one
piece at a time as the transport takes them, with its length known before.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.task import deferLater
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.iweb import IBodyProducer
from twisted.web.server import Site
from zope.interface.verify import verifyObject

from relayd.config import HeadersConfig, UpstreamConfig
from relayd.dialects import get_dialect
from relayd.dialects.base import LONG_TEXT, Base64, Body, encode_body, encode_json
from relayd.dialects.native import NativeDialect
from relayd.message import Envelope, parse_message
from relayd.message.decoding import canonical_base64, clean_base64_length
from relayd.result import Accepted
from relayd.testing import FakeUpstream, async_test, sample_message
from relayd.upstream import BytesProducer, make_client

TOKEN = "tok-body"


def with_attachment(encoded: bytes) -> bytes:
    """
    @return: A message with a text body and one base64 attachment.
    """
    return (
        b"From: a@example.com\r\nTo: b@example.net\r\nSubject: s\r\n"
        b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n'
        b"--b\r\nContent-Type: text/plain\r\n\r\nhello\r\n"
        b'--b\r\nContent-Type: application/pdf\r\nContent-Disposition: attachment; filename="a.pdf"'
        b"\r\nContent-Transfer-Encoding: base64\r\n\r\n" + encoded + b"--b--\r\n"
    )


def big_attachment(size: int = 300 * 1024) -> tuple[bytes, bytes]:
    """
    @return: C{(content, its base64 with CRLF line breaks)}.
    """
    content = os.urandom(size)
    return content, base64.encodebytes(content).replace(b"\n", b"\r\n")


class PausingConsumer:
    """
    A consumer that pauses its producer after every write, as a transport
    whose buffer is full does.
    """

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.producer: Any = None

    def write(self, data: bytes) -> None:
        self.writes.append(data)
        self.producer.pauseProducing()


class BodyTests(SynchronousTestCase):
    """
    L{encode_body} and L{Base64}: the same bytes as L{encode_json}, in
    pieces.
    """

    def test_same_bytes_as_encode_json(self) -> None:
        """
        Joined, the pieces are the document L{encode_json} gives; the length
        is known before any piece is made.
        """
        big = os.urandom(1024 * 1024 + 7)
        document = {"a": [Base64(b"one"), {"b": Base64(b"")}, "caf\u00e9"], "c": Base64(big)}
        body = encode_body(document)
        self.assertEqual(len(body), len(encode_json(document)))
        self.assertEqual(bytes(body), encode_json(document))
        parsed = json.loads(bytes(body))
        self.assertEqual(base64.b64decode(parsed["c"]), big)
        self.assertTrue(all(body.chunks()))

    @given(st.text(min_size=1, max_size=20), st.booleans())
    def test_long_text_in_pieces_same_bytes(self, text: str, surrogate: bool) -> None:
        """
        Long text values encoded apart, in pieces, give the same bytes as
        one JSON document: escapes, UTF-8, and the ASCII fallback for text
        that cannot be UTF-8.
        """
        long = (text + ("\udce9" if surrogate else '\u00e9\n"\\')) * (
            2 * LONG_TEXT // (len(text) + 4) + 1
        )
        document = {"text": long, "list": [long[:10], (long, 1)], "n": None}
        body = encode_body(document, long_text=True)
        self.assertEqual(bytes(body), encode_json(document))
        self.assertEqual(len(body), len(encode_json(document)))

    def test_binary_base64_is_encoded_in_pieces(self) -> None:
        """
        A large binary value is encoded a piece at a time, never whole.
        """
        data = os.urandom(1024 * 1024)
        pieces = list(Base64(data).chunks())
        self.assertGreater(len(pieces), 1)
        self.assertLess(max(map(len, pieces)), len(data))
        self.assertEqual(b"".join(pieces), base64.b64encode(data))
        self.assertEqual(Base64(data).length, len(base64.b64encode(data)))

    def test_clean_base64_attachment_is_not_copied(self) -> None:
        """
        A large attachment that arrived as clean base64 stays where it is in
        the received message; its line breaks are taken out as the body is
        written, and the upstream gets the same base64 as before.
        """
        content, encoded = big_attachment()
        raw = with_attachment(encoded)
        message = parse_message(raw, Envelope("a@example.com", ("b@example.net",)), HeadersConfig())
        (attachment,) = message.attachments
        self.assertIsNotNone(attachment.source)
        assert attachment.source is not None
        self.assertIs(attachment.source.buf, raw)
        self.assertEqual(attachment.content, b"")
        self.assertEqual(attachment.encoded, encoded.replace(b"\r\n", b""))
        self.assertEqual(attachment.payload(), content)
        body = NativeDialect().chunked_body(message)
        self.assertEqual(bytes(body), NativeDialect().body(message))
        document = json.loads(bytes(body))
        self.assertEqual(base64.b64decode(document["attachments"][0]["content"]), content)

    @given(
        st.binary(max_size=300),
        st.integers(min_value=1, max_value=80),
        st.sampled_from([b"\r\n", b"\n", b"\r"]),
        st.binary(max_size=3),
        st.integers(min_value=0, max_value=400),
    )
    def test_clean_check_agrees_with_canonical_base64(
        self, data: bytes, width: int, eol: bytes, noise: bytes, at: int
    ) -> None:
        """
        The check made in place says clean exactly when
        L{canonical_base64} does, with the same length.
        """
        text = base64.b64encode(data)
        text = text[:at] + noise + text[at:]
        body = eol.join(text[i : i + width] for i in range(0, len(text), width)) + eol
        framed = b"head" + body + b"tail"
        canonical = canonical_base64(body)
        found = clean_base64_length(framed, 4, 4 + len(body))
        self.assertEqual(found, None if canonical is None else len(canonical))


class BytesProducerTests(SynchronousTestCase):
    """
    L{BytesProducer} writes a L{Body} a piece at a time.
    """

    def test_provides_ibodyproducer(self) -> None:
        producer = BytesProducer(encode_body({"a": Base64(b"x" * 10)}))
        self.assertTrue(verifyObject(IBodyProducer, producer))

    def test_writes_pieces_while_not_paused(self) -> None:
        """
        One piece per resume when the consumer pauses after each write; the
        Deferred fires after the last piece; the length was known before.
        """
        body = encode_body({"content": Base64(os.urandom(1024 * 1024)), "x": 1})
        producer = BytesProducer(body, replayable=True)
        self.assertEqual(producer.length, len(bytes(body)))
        consumer = PausingConsumer()
        consumer.producer = producer
        d: Deferred[None] = producer.startProducing(consumer)  # type: ignore[arg-type]
        self.assertEqual(len(consumer.writes), 1)
        self.assertNoResult(d)
        while not d.called:
            before = len(consumer.writes)
            producer.resumeProducing()
            self.assertLessEqual(len(consumer.writes), before + 1)
        self.successResultOf(d)
        self.assertGreater(len(consumer.writes), 3)
        self.assertEqual(b"".join(consumer.writes), bytes(body))

    def test_produced_again(self) -> None:
        """
        A body can be produced again (a retry on a fresh connection): the
        same bytes.
        """
        body = encode_body({"content": Base64(os.urandom(500_000))})
        producer = BytesProducer(BytesProducer(body, replayable=True))
        self.assertTrue(producer.replayable)
        sent = []
        for _ in range(2):
            consumer = PausingConsumer()
            consumer.producer = producer
            d = producer.startProducing(consumer)  # type: ignore[arg-type]
            while not d.called:
                producer.resumeProducing()
            sent.append(b"".join(consumer.writes))
        self.assertEqual(sent, [bytes(body), bytes(body)])

    def test_stop_writes_nothing_more(self) -> None:
        """
        After C{stopProducing}, nothing more is written and the Deferred
        never fires.
        """
        producer = BytesProducer(encode_body({"content": Base64(os.urandom(1024 * 1024))}))
        consumer = PausingConsumer()
        consumer.producer = producer
        d = producer.startProducing(consumer)  # type: ignore[arg-type]
        producer.stopProducing()
        producer.resumeProducing()
        self.assertEqual(len(consumer.writes), 1)
        self.assertNoResult(d)

    def test_bytes_in_one_write(self) -> None:
        """
        A C{bytes} body is still written at once.
        """
        consumer = PausingConsumer()
        consumer.producer = BytesProducer(b"{}")
        self.successResultOf(consumer.producer.startProducing(consumer))
        self.assertEqual(consumer.writes, [b"{}"])

    def test_prepared_request(self) -> None:
        """
        The prepared request holds the L{Body}; its C{body} is the same
        bytes, its size the body's length.
        """
        client = make_client(reactor, UpstreamConfig(url="http://127.0.0.1:1/send"))
        message = sample_message()
        request = client.prepare(message, TOKEN, "k-1")
        self.assertIsInstance(request.content, Body)
        self.assertEqual(request.body, get_dialect("native").body(message))
        self.assertEqual(request.size, len(request.body))


class RealSocketTests(TestCase):
    """
    A large message over a real loopback socket: the upstream gets the
    whole body, with the right C{Content-Length}.
    """

    timeout = 30

    @async_test
    async def test_large_attachment_arrives_whole(self) -> None:
        upstream = FakeUpstream()
        port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(Site(upstream))
        self.addCleanup(port.stopListening)
        address = port.getHost()
        assert isinstance(address, IPv4Address)
        client = make_client(
            reactor, UpstreamConfig(url=f"http://127.0.0.1:{address.port}/send", timeout=20)
        )
        self.addCleanup(lambda: deferLater(reactor, 0.05, lambda: None))
        self.addCleanup(client.close)
        content, encoded = big_attachment(3 * 1024 * 1024)
        message = parse_message(
            with_attachment(encoded),
            Envelope("a@example.com", ("b@example.net",)),
            HeadersConfig(),
        )
        request = client.prepare(message, TOKEN, "k-1")
        result = await client.post_prepared(request)
        self.assertEqual(result, Accepted("fake-1"))
        (sent,) = upstream.requests
        self.assertEqual(sent.body, get_dialect("native").body(message))
        self.assertEqual(sent.header("Content-Length"), str(len(sent.body)))
        attachment = sent.json["attachments"][0]["content"]
        self.assertEqual(binascii.a2b_base64(attachment), content)
