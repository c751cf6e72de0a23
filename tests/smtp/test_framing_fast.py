"""
Tests for the fast paths of L{relayd.smtp.framing.DataReader.take}: the
dot test, the line-length stride search and the check of even CRLF lines
(base64 bodies), each against the plain rules they stand for.
"""

from __future__ import annotations

from hypothesis import example, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from relayd.smtp import framing
from relayd.smtp.framing import DataError, DataReader, Framer


def plain_take(block: bytes, max_line_length: int, reject: bool) -> bytes | DataError:
    """
    The rules of C{DataReader.take} for one block, written plainly (as
    before the fast paths): dot-unstuffing, a split on LF for the line
    length, three counts for the line ends.

    @return: The content the block adds, or why the message fails.
    """
    if block.startswith(b"."):
        block = block[1:]
    block = block.replace(b"\n.", b"\n")
    if max(map(len, block.split(b"\n"))) > max_line_length + 1:
        return DataError.LINE_TOO_LONG
    lf = block.count(b"\n")
    if block.count(b"\r") != lf or block.count(b"\r\n") != lf:
        if reject:
            return DataError.BARE_NEWLINE
        block = block.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")
    return block


def take(block: bytes, max_line_length: int = 998, reject: bool = False) -> bytes | DataError:
    """
    @return: What L{DataReader.take} makes of C{block}: the content, or
        why the message failed.
    """
    reader = DataReader(max_line_length, 10**9, reject)
    reader.take(block)
    return reader.error if reader.error is not None else bytes(reader.body())


def even(line: bytes, count: int) -> bytes:
    """
    @return: C{count} copies of C{line} with CRLF: a block of even lines.
    """
    return (line + b"\r\n") * count


#: Lines near a limit of 6 octets, from octets that matter to the rules.
LINE = st.binary(max_size=9).map(lambda b: bytes(b"A.\r\n"[c % 4] for c in b))


class LongLineTests(SynchronousTestCase):
    def test_line_at_the_limit_passes_and_one_over_fails(self) -> None:
        for width in (1, 997, 998):
            block = b"a\r\n" * 500 + b"x" * width + b"\r\n" + b"b\r\n" * 500
            self.assertEqual(take(block), block)
        block = b"a\r\n" * 500 + b"x" * 999 + b"\r\n" + b"b\r\n" * 500
        self.assertIs(take(block), DataError.LINE_TOO_LONG)

    def test_long_line_found_wherever_it_is(self) -> None:
        lines = [b"q" * n for n in (998, 0, 3, 998, 997, 500, 498)] * 3
        block = b"".join(line + b"\r\n" for line in lines)
        self.assertEqual(take(block), block)
        for i in range(len(lines)):
            longer = lines[:i] + [lines[i] + b"q" * (999 - len(lines[i]))] + lines[i + 1 :]
            block = b"".join(line + b"\r\n" for line in longer)
            self.assertIs(take(block), DataError.LINE_TOO_LONG, i)

    def test_bare_cr_counts_in_the_line(self) -> None:
        # 998 octets, a bare CR, CRLF: 999 octets and its CR.
        block = b"a\r\n" + b"x" * 998 + b"\r\r\n" + b"a\r\n"
        self.assertIs(take(block), DataError.LINE_TOO_LONG)
        block = b"a\r\n" + b"x" * 997 + b"\r\r\n" + b"a\r\n"
        self.assertEqual(take(block), b"a\r\n" + b"x" * 997 + b"\r\n\r\na\r\n")

    def test_last_line_without_lf(self) -> None:
        self.assertTrue(framing._has_long_line(b"a\n" + b"x" * 7, 6))
        self.assertFalse(framing._has_long_line(b"a\n" + b"x" * 6, 6))
        self.assertFalse(framing._has_long_line(b"x" * 6, 6))

    @given(st.lists(st.integers(min_value=0, max_value=20), max_size=60), st.integers(1, 12))
    @example([6, 6, 6, 7], 6)
    @example([7, 6], 6)
    @example([0] * 10 + [7], 6)
    def test_stride_search_is_the_split(self, lengths: list[int], limit: int) -> None:
        block = b"".join(b"x" * n + b"\n" for n in lengths)
        expected = max(map(len, block.split(b"\n"))) > limit
        self.assertEqual(framing._has_long_line(block, limit), expected)


class EvenLinesTests(SynchronousTestCase):
    def test_base64_lines_pass(self) -> None:
        block = even(b"QUJD" * 19, 1000)
        self.assertTrue(framing._even_crlf_lines(block, 999))
        self.assertEqual(take(block), block)

    def test_even_lines_at_the_limit_pass_and_one_over_fail(self) -> None:
        block = even(b"x" * 998, 200)
        self.assertTrue(framing._even_crlf_lines(block, 999))
        self.assertEqual(take(block), block)
        block = even(b"x" * 999, 200)
        self.assertFalse(framing._even_crlf_lines(block, 999))
        self.assertIs(take(block), DataError.LINE_TOO_LONG)

    def test_stray_line_end_inside_a_line(self) -> None:
        for stray in (b"\r", b"\n"):
            for at in (0, 5, 9):
                line = bytearray(b"ABCDEFGHIJ")
                line[at : at + 1] = stray
                block = even(b"ABCDEFGHIJ", 3000) + bytes(line) + b"\r\n" + even(b"ABCDEFGHIJ", 10)
                self.assertFalse(framing._even_crlf_lines(block, 999), (stray, at))
                self.assertEqual(take(block), plain_take(block, 998, False))
                self.assertIs(take(block, reject=True), DataError.BARE_NEWLINE)

    def test_stray_line_end_in_the_last_piece_copied(self) -> None:
        block = even(b"ABCDEFGHIJ", 20000)
        self.assertTrue(framing._even_crlf_lines(block, 999))
        for at in (0, framing._EVEN_PIECE + 3, len(block) - 3):
            broken = block[:at] + b"\r" + block[at + 1 :]
            self.assertFalse(framing._even_crlf_lines(broken, 999), at)

    def test_lf_without_cr_at_a_line_end(self) -> None:
        block = even(b"ABCD", 1000)
        broken = block[:-2] + b"\n"
        self.assertFalse(framing._even_crlf_lines(broken, 999))
        self.assertIs(take(broken, reject=True), DataError.BARE_NEWLINE)
        self.assertEqual(take(broken), block)

    def test_uneven_or_unfinished_blocks_are_not_even(self) -> None:
        for block in (b"", b"\n", b"\r\n", b"AB\r\nC\r\n", b"AB\r\nCD", b"AB\r\nCD\r", b"\nAB\n"):
            self.assertEqual(framing._even_crlf_lines(block, 999), block == b"\r\n", block)

    def test_dot_stuffed_line_at_the_block_start(self) -> None:
        # Every line stuffed: the unstuffed block is even.
        block = b"." + b"\r\n.".join([b".QUJD"] * 500) + b"\r\n"
        self.assertEqual(take(block), even(b".QUJD", 500))
        block = b"." + even(b"QUJD", 500)
        self.assertEqual(take(block), even(b"QUJD", 500))
        # A stuffed line of 999 octets is one of 998 (RFC 5321 4.5.2).
        block = b"." + even(b"x" * 998, 4)
        self.assertEqual(take(block), even(b"x" * 998, 4))
        block = b".." + even(b"x" * 998, 4)
        self.assertIs(take(block), DataError.LINE_TOO_LONG)

    def test_dots_inside_lines_stay(self) -> None:
        block = even(b"a.b.c.", 500)
        self.assertEqual(take(block), block)

    def test_default_limit(self) -> None:
        # relayd's default max_line_length is 65536: every block of a
        # base64 body is shorter than one line may be.
        block = even(b"QUJD" * 19, 300)
        self.assertTrue(framing._even_crlf_lines(block, 65537))
        self.assertEqual(take(block, 65536), block)
        broken = block[:100] + b"\r" + block[101:]
        self.assertEqual(take(broken, 65536), plain_take(broken, 65536, False))
        self.assertIs(take(broken, 65536, reject=True), DataError.BARE_NEWLINE)

    @settings(max_examples=300, deadline=None)
    @given(
        LINE,
        st.integers(1, 40),
        st.lists(LINE, max_size=4),
        st.booleans(),
        st.booleans(),
        st.sampled_from([6, 65536]),
    )
    def test_take_is_the_plain_rules(
        self, line: bytes, count: int, extra: list[bytes], reject: bool, dot: bool, limit: int
    ) -> None:
        # Mostly even blocks (what the fast path takes), with now and then
        # a line of another length, a stray CR or LF, or dots; short blocks
        # are tried as even lines too.
        self.patch(framing, "_EVEN_MIN", 0)
        block = (b"." if dot else b"") + even(line, count) + b"".join(x + b"\n" for x in extra)
        self.assertEqual(take(block, limit, reject), plain_take(block, limit, reject))


class FramerCopyTests(SynchronousTestCase):
    def test_bare_cr_at_a_block_end(self) -> None:
        f, r = Framer(512, 998, False), DataReader(998, 10**6, False)
        f.feed(even(b"QUJD", 100) + b"AB\r")
        self.assertFalse(f.read_data(r))
        self.assertEqual(f.buffer, bytearray(b"AB\r"))
        f.feed(b"C\r\n.\r\nNOOP\r\n")
        self.assertTrue(f.read_data(r))
        self.assertEqual(r.body(), even(b"QUJD", 100) + b"AB\r\nC\r\n")
        self.assertEqual(f.read_line(), b"NOOP")

    def test_rest_of_the_buffer_is_kept_in_place(self) -> None:
        f, r = Framer(512, 998, False), DataReader(998, 10**6, False)
        buffer = f.buffer
        f.feed(even(b"QUJD", 100) + b"QU")
        self.assertFalse(f.read_data(r))
        f.feed(b"JD\r\n.\r\nQUIT\r\n")
        self.assertTrue(f.read_data(r))
        self.assertIs(f.buffer, buffer)
        self.assertEqual(f.buffer, bytearray(b"QUIT\r\n"))
        self.assertEqual(r.body(), even(b"QUJD", 101))

    def test_end_of_data_after_the_first_dot(self) -> None:
        for head in (b"", b"a.b\r\n", b"..\r\n.x\r\n", b"x\r\n.", b"\r\n"):
            stream = head + b"QUJD\r\n" * 50 + b".\r\nNOOP\r\n"
            f, r = Framer(512, 998, False), DataReader(998, 10**6, False)
            f.feed(stream)
            self.assertTrue(f.read_data(r), head)
            expected = head.replace(b"\r\n.", b"\r\n") + b"QUJD\r\n" * 50
            if expected.startswith(b"."):
                expected = expected[1:]
            self.assertEqual(r.body(), expected, head)
            self.assertEqual(f.read_line(), b"NOOP")

    def test_no_end_of_data_without_a_dot_line(self) -> None:
        f, r = Framer(512, 998, False), DataReader(998, 10**6, False)
        f.feed(b"a.b\r\n" + b"QUJD\r\n" * 50 + b".x\r\ny.\r\n\r\n.\r")
        self.assertFalse(f.read_data(r))
        f.feed(b"\r\n")
        self.assertFalse(f.read_data(r))

    def test_end_of_data_at_the_buffer_start(self) -> None:
        f, r = Framer(512, 998, False), DataReader(998, 10**6, False)
        f.feed(b"abc\n")
        self.assertFalse(f.read_data(r))
        f.feed(b"\r\n.\r\n")
        self.assertTrue(f.read_data(r))
        self.assertEqual(r.body(), b"abc\r\n\r\n")
