"""
Tests for L{relayd.message.model.Base64Text}: the base64 text of a part
read in place, its line breaks taken out piece by piece.
"""

from __future__ import annotations

import base64

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from relayd.message import model
from relayd.message.model import Base64Text


def lines(text: bytes, width: int, eol: bytes = b"\r\n") -> bytes:
    """
    @return: C{text} in lines of C{width} characters ending with C{eol}.
    """
    return b"".join(text[i : i + width] + eol for i in range(0, len(text), width))


def source(body: bytes) -> Base64Text:
    """
    @return: C{body} as the body of a part in a message.
    """
    framed = b"Content-Transfer-Encoding: base64\r\n\r\n" + body + b"--b--\r\n"
    start = framed.index(b"\r\n\r\n") + 4
    return Base64Text(framed, start, start + len(body), len(body.translate(None, b"\r\n")))


class ChunksTests(SynchronousTestCase):
    def check(self, body: bytes, size: int) -> list[bytes]:
        pieces = list(source(body).chunks(size))
        self.assertEqual(b"".join(pieces), body.translate(None, b"\r\n"))
        self.assertTrue(all(0 < len(p) <= size for p in pieces), [len(p) for p in pieces])
        return pieces

    def test_even_lines_are_cut_at_line_starts(self) -> None:
        text = base64.b64encode(bytes(range(256)) * 300)
        body = lines(text, 76)
        pieces = self.check(body, 78 * 10 + 5)
        # Ten whole lines per piece, the last one shorter.
        self.assertEqual({len(p) for p in pieces[:-1]}, {760})
        self.assertEqual(len(pieces[-1]), len(text) % 760 or 760)

    def test_padding_and_short_last_line(self) -> None:
        for data in (b"x" * 5700, b"x" * 5701, b"x" * 5702):
            text = base64.b64encode(data)
            for size in (78, 156, 1000, 1 << 20):
                self.check(lines(text, 76), size)

    def test_other_line_ends(self) -> None:
        text = base64.b64encode(b"y" * 3000)
        for eol in (b"\n", b"\r", b"\r\n\r\n", b""):
            self.check(lines(text, 76, eol), 780)
        self.check(lines(text, 64) + b"\r\n", 780)

    def test_stray_line_break_inside_an_even_piece(self) -> None:
        body = bytearray(lines(base64.b64encode(b"z" * 5700), 76))
        for at in (0, 40, 77 + 3, len(body) - 5):
            for stray in (b"\r", b"\n"):
                broken = bytes(body[:at] + stray + body[at + 1 :])
                self.check(broken, 780)

    @given(
        st.lists(st.sampled_from([b"QUJD", b"QQ==", b"\r\n", b"\r", b"\n", b"A"]), max_size=80),
        st.integers(min_value=1, max_value=100),
    )
    def test_chunks_are_the_text_without_line_breaks(self, parts: list[bytes], size: int) -> None:
        self.check(b"".join(parts), size)

    @given(st.binary(max_size=400), st.integers(min_value=3, max_value=80))
    def test_cut_is_translate_or_nothing(self, data: bytes, width: int) -> None:
        body = lines(base64.b64encode(data), width - 2)
        for piece in (body, body.replace(b"A", b"\r", 1), body.replace(b"B", b"\n", 1)):
            cut = model._cut_line_breaks(piece, width)
            if cut is not None:
                self.assertEqual(cut, piece.translate(None, b"\r\n"))
        if len(body) >= width:
            # Even lines, then maybe a shorter one: cut by position.
            self.assertEqual(model._cut_line_breaks(body, width), body.translate(None, b"\r\n"))

    def test_short_last_line(self) -> None:
        body = lines(base64.b64encode(b"w" * 1000), 76)
        self.assertEqual(len(body) % 78, 46)
        self.assertEqual(model._cut_line_breaks(body, 78), body.translate(None, b"\r\n"))
        for tail in (b"QQ\r=\n=", b"\r\n", b"QUJD\n", b"Q\rQ", b"=\r\n\r\n"):
            piece = body[: 78 * 3] + tail
            self.assertEqual(model._cut_line_breaks(piece, 78), piece.translate(None, b"\r\n"))
        self.assertIsNone(model._cut_line_breaks(body[:77], 78))
