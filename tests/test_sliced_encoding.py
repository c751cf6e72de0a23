# -*- test-case-name: tests.test_sliced_encoding -*-
"""
The sliced encoders give the same text and bytes as the whole ones: a
large body decoded and given LF line ends slice by slice
(L{relayd.message.decoding.body_text}) and a long JSON string value
escaped piece by piece (L{relayd.dialects.body.encode_body}), with CR, LF,
non-ASCII characters, multi-octet sequences and lone surrogates cut at the
slice edges.  The slices are made a few octets long here so every edge is
hit.
"""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from relayd.dialects import body as jsonbody
from relayd.message import decoding
from relayd.message.decoding import body_text, decode_text

#: Characters that matter at a slice edge: line ends, JSON escapes,
#: multi-octet UTF-8, a character outside the BMP, lone surrogates.
EDGY = st.sampled_from(
    ["\r", "\n", "\r\n", '"', "\\", "\x00", "\x1f", "é", "€", "😀", "\u2028", "\ud800", "\udfff"]
)
TEXT = st.lists(st.one_of(EDGY, st.text(max_size=5)), max_size=40).map("".join)
CHARSETS = st.sampled_from(
    [None, "utf-8", "us-ascii", "iso-8859-1", "shift_jis", "gb2312", "utf-16", "koi8-r"]
)


def whole_body_text(content: bytes, charset: str | None) -> str:
    """
    The text of a 7bit/8bit body as the whole decoders make it.
    """
    return decode_text(content, charset).replace("\r\n", "\n").replace("\r", "\n")


def whole_json(document: object) -> bytes:
    """
    C{document} as C{json.dumps} writes it, compact: UTF-8, or ASCII with
    escapes for text that cannot be UTF-8.
    """
    try:
        return json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(document, separators=(",", ":")).encode("ascii")


class SlicedBodyTextTests(SynchronousTestCase):
    """
    L{body_text} over a body longer than L{decoding.TEXT_SLICE}.
    """

    def setUp(self) -> None:
        self.patch(decoding, "TEXT_SLICE", 3)

    @settings(max_examples=300, deadline=None)
    @given(TEXT, CHARSETS, st.sampled_from(["utf-8", "cp1252", "shift_jis", "utf-16-le"]))
    def test_text_in_any_charset(self, text: str, charset: str | None, writer: str) -> None:
        """
        Text written in one charset, declared as another (or not at all),
        decodes slice by slice to what the whole decoder makes of it.
        """
        content = text.encode(writer, "surrogatepass" if writer.startswith("utf") else "replace")
        self.assertEqual(body_text(content, "8bit", charset), whole_body_text(content, charset))

    @settings(max_examples=300, deadline=None)
    @given(st.binary(max_size=60), CHARSETS)
    def test_any_octets(self, content: bytes, charset: str | None) -> None:
        """
        Octets that are no valid text in any charset (the replacing steps)
        give the same text too.
        """
        self.assertEqual(body_text(content, "8bit", charset), whole_body_text(content, charset))

    def test_view(self) -> None:
        """
        A view of the message is decoded without a copy, to the same text.
        """
        content = b"a\r\nb\rc\r" * 5
        self.assertEqual(body_text(memoryview(content), "7bit", None), "a\nb\nc\n" * 5)

    def test_cr_lf_cut_in_two(self) -> None:
        """
        A CR LF whose CR ends one slice and whose LF starts the next is one
        line end; a CR ending the body is a line end.
        """
        self.assertEqual(body_text(b"ab\r\ncd\r", "8bit", None), "ab\ncd\n")
        self.assertEqual(body_text(b"ab\r\r\nc", "8bit", None), "ab\n\nc")


class SlicedJSONTests(SynchronousTestCase):
    """
    L{jsonbody.encode_body} with long text values set apart.
    """

    def setUp(self) -> None:
        self.patch(jsonbody, "LONG_TEXT", 3)

    @settings(max_examples=300, deadline=None)
    @given(TEXT, TEXT)
    def test_same_bytes(self, text: str, html: str) -> None:
        """
        The pieces join into the bytes C{json.dumps} writes for the whole
        document, in UTF-8 or (lone surrogates) ASCII with escapes.
        """
        document = {"Subject": "s", "TextBody": text, "Parts": [html, {"x": text}]}
        self.assertEqual(
            bytes(jsonbody.encode_body(document, long_text=True)), whole_json(document)
        )
        self.assertEqual(jsonbody.encode_json(document), whole_json(document))
