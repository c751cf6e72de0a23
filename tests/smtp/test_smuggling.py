"""
SMTP smuggling and DATA framing against a hostile client: only
<CR><LF>.<CR><LF> ends DATA, however the bytes are cut into packets; dot
stuffing (RFC 5321 section 4.5.2); over-long message lines; and the
split-invariance properties of the whole session.

Everything runs on a fake transport with time from a L{Clock}.
"""

from __future__ import annotations

import itertools
from typing import Any

from hypothesis import assume, example, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from relayd import reply as R
from relayd.config import LimitsConfig
from relayd.testing import TOKEN, SMTPDriver, reply_line
from tests.smtp.support import (
    DANGEROUS,
    QUEUED,
    SMUGGLE,
    WireChecks,
    crlf_only,
    data_parts,
    inbuf,
    logged_in,
    plain,
    roomy,
)

# Almost-end-of-data sequences (SMTP smuggling, 2023): none of them may end
# DATA; only <CR><LF>.<CR><LF> does.
SMUGGLING_SEPARATORS = [
    b"\n.\n",
    b"\n.\r\n",
    b"\r\n.\n",
    b"\r.\r",
    b"\n.\r",
    b"\r.\n",
    b"\r.\r\n",
    b"\r\n.\r",
    b"\r\n.\r\r\n",
    b"\n\r.\r\n",
    b"\r\n\0.\r\n",
    b"\r\n.\0\r\n",
    b"\r\0\n.\r\n",
    b"\r\n.\r\0\n",
    b"\0\n.\r\n",
    b"\r\n .\r\n",
    b"\r\n..\r\n",
    b"\n..\n",
    b"\r\n.\x0b\r\n",
]


class SmugglingTests(SynchronousTestCase, WireChecks):
    """
    Only <CR><LF>.<CR><LF> ends DATA, however the bytes are cut into
    packets.
    """

    def one(
        self, s: SMTPDriver, stream: bytes, cuts: list[int] | None = None, bytewise: bool = False
    ) -> tuple[list[str], list[Any]]:
        before = len(s.delivery.sent)
        s.start()
        if bytewise:
            lines = s.bytewise(stream)
        else:
            lines = s.feed(stream, cuts or [])
        return lines, s.delivery.sent[before:]

    def check_variant(self, sep: bytes, three_way: bool) -> None:
        stream = b"x" + sep + SMUGGLE + b".\r\n"
        s = logged_in(limits=roomy())
        lines, sent = self.one(s, stream)
        self.assertEqual(len(lines), 1, (sep, lines))
        self.assertRegex(lines[0], QUEUED)
        self.assertEqual(len(sent), 1, sep)
        reference = sent[0].data
        self.assertEqual(sent[0].mail_from, "a@example.com")
        self.assertEqual(sent[0].rcpt_to, ["b@example.com"])
        self.assertIn(b"MAIL FROM:<evil@example.com>", reference)
        self.assertTrue(crlf_only(reference), (sep, reference))
        splits: list[list[int]] = [[i] for i in range(1, len(stream))]
        if three_way:
            splits += [list(p) for p in itertools.combinations(range(1, len(stream)), 2)]
        else:
            window = range(1, len(sep) + 4)
            splits += [list(p) for p in itertools.combinations(window, 2)]
        for cuts in splits:
            lines, sent = self.one(s, stream, cuts)
            self.assertEqual(len(lines), 1, (sep, cuts, lines))
            self.assertRegex(lines[0], QUEUED)
            self.assertEqual([m.data for m in sent], [reference], (sep, cuts))
        lines, sent = self.one(s, stream, bytewise=True)
        self.assertEqual(len(lines), 1, (sep, lines))
        self.assertEqual([m.data for m in sent], [reference], sep)
        self.assertEqual(s.send("NOOP\r\n"), [reply_line(R.OK)])
        self.check_wire(s)

    def test_every_variant_at_every_two_way_split(self) -> None:
        for sep in SMUGGLING_SEPARATORS:
            self.check_variant(sep, three_way=False)

    def test_main_variants_at_every_three_way_split(self) -> None:
        for sep in (b"\n.\n", b"\n.\r\n", b"\r\n.\n", b"\r.\r", b"\r\n.\r\r\n", b"\r\n\0.\r\n"):
            self.check_variant(sep, three_way=True)

    def test_variants_in_reject_mode_are_refused_never_split(self) -> None:
        """
        With C{bare_newline = "reject"} a message holding a bare CR or LF
        fails with C{550 5.6.0}; the hidden commands are never run.
        """
        s = logged_in(limits=roomy(bare_newline="reject"))
        for sep in SMUGGLING_SEPARATORS:
            stream = b"x" + sep + SMUGGLE + b".\r\n"
            bare = not crlf_only(sep)
            for cuts in [[], *[[i] for i in range(1, len(stream))]]:
                before = len(s.delivery.sent)
                s.start()
                lines = s.feed(stream, cuts)
                if bare:
                    self.assertEqual(lines, [reply_line(R.BARE_NEWLINE_IN_DATA)], (sep, cuts))
                    self.assertEqual(len(s.delivery.sent), before)
                else:
                    self.assertEqual(len(lines), 1, (sep, cuts, lines))
                    self.assertRegex(lines[0], QUEUED)
                    self.assertEqual(len(s.delivery.sent), before + 1)
        self.check_wire(s)

    def test_smuggled_transaction_in_first_line(self) -> None:
        """
        The data may start with a variant too (no preceding line).
        """
        s = logged_in(limits=roomy())
        for lead in (b".\n", b".\r", b".\0\r\n", b"\n.\r\n"):
            s.start()
            lines = s.send(lead + SMUGGLE + b".\r\n")
            self.assertEqual(len(lines), 1, (lead, lines))
            self.assertRegex(lines[0], QUEUED)
        self.assertEqual(len(s.delivery.sent), 4)

    def test_final_dot_only_at_line_start(self) -> None:
        s = logged_in()
        s.start()
        self.assertEqual(s.send(b"a.\r\n.\r\n"), [reply_line(R.queued("fake-1"))])
        self.assertEqual(s.delivery.sent[0].data, b"a.\r\n")

    def test_empty_message(self) -> None:
        s = logged_in()
        s.start()
        self.assertEqual(s.send(b".\r\n"), [reply_line(R.queued("fake-1"))])
        self.assertEqual(s.delivery.sent[0].data, b"")

    def test_bare_line_ends_normalized_to_crlf(self) -> None:
        s = logged_in(limits=roomy())
        body = b"A: 1\nB: 2\r\rC\n\n\rbody\r\r\n\n\rend\r\n"
        for cuts in [[], *[[i] for i in range(1, len(body) + 3)]]:
            s.start()
            lines = s.feed(body + b".\r\n", cuts)
            self.assertEqual(len(lines), 1, cuts)
            data = s.delivery.sent[-1].data
            self.assertTrue(crlf_only(data), (cuts, data))
            self.assertEqual(data, b"A: 1\r\nB: 2\r\n\r\nC\r\n\r\n\r\nbody\r\n\r\n\r\n\r\nend\r\n")

    def test_pipelined_next_transaction_after_the_real_dot(self) -> None:
        """
        What follows <CR><LF>.<CR><LF> in the same packet is read as
        commands (that is PIPELINING, not smuggling).
        """
        s = logged_in()
        s.start()
        lines = s.send(b"one\r\n.\r\n" + SMUGGLE + b".\r\nQUIT\r\n")
        self.assertEqual(
            lines,
            [
                reply_line(R.queued("fake-1")),
                reply_line(R.SENDER_OK),
                reply_line(R.RECIPIENT_OK),
                reply_line(R.START_MAIL_INPUT),
                reply_line(R.queued("fake-2")),
                reply_line(R.BYE),
            ],
        )
        self.assertEqual([m.data for m in s.delivery.sent], [b"one\r\n", b"evil\r\n"])


class DotVariantTests(SynchronousTestCase):
    """
    Each almost-end-of-data sequence stays inside the message.
    """

    def setUp(self) -> None:
        self.s = SMTPDriver(implicit_tls=True)
        self.s.login()

    def test_smuggling_variants_stay_inside_the_message(self) -> None:
        """
        Only <CR><LF>.<CR><LF> ends DATA: every other dot variant stays in
        the message and never starts a second transaction.
        """
        for sep in (b"\n.\n", b"\n.\r\n", b"\r\n.\n", b"\r.\r", b"\n.\r", b"\r.\r\n", b"\r\n.\r"):
            s = SMTPDriver(implicit_tls=True)
            s.login()
            s.start()
            smuggled = (
                b"x"
                + sep
                + b"MAIL FROM:<evil@example.com>\r\nRCPT TO:<v@example.com>\r\nDATA\r\nevil\r\n"
            )
            lines = s.send(smuggled + b"\r\n.\r\n")
            self.assertEqual(lines, [reply_line(R.queued("fake-1"))], sep)
            self.assertEqual(len(s.delivery.sent), 1)
            self.assertIn(b"MAIL FROM:<evil@example.com>", s.delivery.sent[0].data)


class DotStuffingTests(SynchronousTestCase):
    """
    RFC 5321 section 4.5.2: the first dot of a line that starts with one
    is removed, wherever the packets are cut.
    """

    STREAM = b"..first\r\na\r\n..x\r\n...\r\n..\r\n\r\n..\r\n.y\r\nz..\r\n.\r\n"

    EXPECTED = b".first\r\na\r\n.x\r\n..\r\n.\r\n\r\n.\r\ny\r\nz..\r\n"

    def test_dots_unstuffed_at_every_split(self) -> None:
        s = logged_in(limits=roomy())
        n = len(self.STREAM)
        splits: list[list[int]] = (
            [[]]
            + [[i] for i in range(1, n)]
            + [list(p) for p in itertools.combinations(range(1, n), 2)]
        )
        for cuts in splits:
            s.start()
            lines = s.feed(self.STREAM, cuts)
            self.assertEqual(len(lines), 1, (cuts, lines))
            self.assertEqual(s.delivery.sent[-1].data, self.EXPECTED, cuts)

    def test_dots_unstuffed_octet_by_octet(self) -> None:
        s = logged_in()
        s.start()
        self.assertEqual(len(s.bytewise(self.STREAM)), 1)
        self.assertEqual(s.delivery.sent[-1].data, self.EXPECTED)

    def test_crlf_then_dots_in_next_packet(self) -> None:
        s = logged_in()
        s.start()
        self.assertEqual(s.send(b"a\r\n"), [])
        self.assertEqual(s.send(b"..x\r\n"), [])
        self.assertEqual(s.send(b"\r\n"), [])
        self.assertEqual(s.send(b"."), [])
        self.assertEqual(s.send(b".\r\n.\r\n"), [reply_line(R.queued("fake-1"))])
        self.assertEqual(s.delivery.sent[0].data, b"a\r\n.x\r\n\r\n.\r\n")

    @settings(max_examples=200, deadline=None)
    @given(
        st.lists(
            st.binary(max_size=30).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"")),
            max_size=12,
        ),
        st.lists(st.sampled_from([b"", b".", b"..", b".x"]), min_size=12, max_size=12),
        st.lists(st.integers(min_value=1, max_value=400), max_size=12),
    )
    def test_stuffed_lines_arrive_as_they_were(
        self, lines: list[bytes], prefixes: list[bytes], cuts: list[int]
    ) -> None:
        """
        Dot-stuff arbitrary lines as a client must, send them cut
        anywhere: the message that arrives is the lines as they were.
        """
        lines = [p + line for p, line in zip(prefixes, lines, strict=False)]
        original = b"".join(line + b"\r\n" for line in lines)
        stuffed = b"".join(
            (b"." + line if line.startswith(b".") else line) + b"\r\n" for line in lines
        )
        s = logged_in()
        s.start()
        replies = s.feed(stuffed + b".\r\n", cuts)
        self.assertEqual(len(replies), 1, replies)
        self.assertRegex(replies[0], QUEUED)
        self.assertEqual(s.delivery.sent[0].data, original)


class LongDataLineTests(SynchronousTestCase, WireChecks):
    """
    A DATA line over 998 octets fails the message at the final dot, and
    nothing of the rest of the body is read as commands.  The limit is
    pinned at RFC 5322's 998 octets (the default is roomier).
    """

    LONG = b"a" * 2000

    def check(self, stream: bytes, cuts: list[int], s: SMTPDriver) -> None:
        before = len(s.delivery.sent)
        s.start()
        lines = s.feed(stream, cuts)
        self.assertEqual(lines, [reply_line(R.message_line_too_long(998))], cuts)
        self.assertEqual(len(s.delivery.sent), before)
        self.assertEqual(s.send("NOOP\r\n"), [reply_line(R.OK)])

    def test_final_dot_right_after_long_line_every_split_but_cr_lf(self) -> None:
        """
        C{<long line><CR><LF>.<CR><LF>}, cut once anywhere (the cut
        between that CR and LF: L{test_cr_lf_split_right_after_long_line}).
        """
        s = logged_in(limits=roomy(max_line_length=998))
        stream = self.LONG + b"\r\n.\r\n"
        for i in range(0, len(stream)):
            if i == len(self.LONG) + 1:
                continue  # test_cr_lf_split_right_after_long_line
            self.check(stream, [i], s)

    def test_hidden_commands_after_long_line_every_split_but_cr_lf(self) -> None:
        s = logged_in(limits=roomy(max_line_length=998))
        stream = self.LONG + b"\r\n" + SMUGGLE + b".\r\n"
        for i in range(0, len(stream)):
            if i == len(self.LONG) + 1:
                continue
            self.check(stream, [i], s)

    def test_long_line_in_many_packet_sizes(self) -> None:
        s = logged_in(limits=roomy(max_line_length=998))
        stream = b"head\r\n" + b"b" * 5000 + b"\r\n" + SMUGGLE + b"tail\r\n.\r\n"
        for size in (1, 2, 3, 7, 64, 500, 997, 998, 999, 1000, 1001, 1002, 1003, 4096):
            self.check(stream, list(range(size, len(stream), size)), s)

    def test_long_line_with_bare_lf_then_dot_stays_inside(self) -> None:
        """
        After a dropped long line, C{<LF>.<CR><LF>} is not the end.
        """
        s = logged_in(limits=roomy(max_line_length=998))
        stream = self.LONG + b"\n.\r\n" + SMUGGLE + b".\r\n"
        for i in range(0, len(stream)):
            self.check(stream, [i], s)

    def test_998_octets_and_stuffed_999_pass(self) -> None:
        s = logged_in(limits=roomy(max_line_length=998))
        for line, stored in ((b"c" * 998, b"c" * 998), (b"." + b"d" * 998, b"d" * 998)):
            s.start()
            self.assertEqual(len(s.send(line + b"\r\n.\r\n")), 1)
            self.assertEqual(s.delivery.sent[-1].data, stored + b"\r\n")

    def test_1000_octets_fail(self) -> None:
        s = logged_in(limits=LimitsConfig(max_line_length=998))
        s.start()
        self.assertEqual(
            s.send(b"e" * 1000 + b"\r\n.\r\n"), [reply_line(R.message_line_too_long(998))]
        )

    def test_endless_line_in_data_keeps_memory_bounded(self) -> None:
        """
        64 MiB without a line break inside DATA: the buffer stays small,
        nothing is answered, and the final dot still ends the message.
        """
        s = logged_in(limits=LimitsConfig(max_line_length=998))
        s.start()
        chunk = b"f" * 65536
        for _ in range(1024):
            self.assertEqual(s.send(chunk), [])
            self.assertLess(len(inbuf(s.proto)), 2048)
            self.assertLess(sum(map(len, data_parts(s.proto))), 2048)
        self.assertEqual(s.send(b"\r\n.\r\n"), [reply_line(R.message_line_too_long(998))])
        self.assertEqual(s.send("NOOP\r\n"), [reply_line(R.OK)])

    def test_lf_dot_crlf_after_two_long_lines_does_not_end_data(self) -> None:
        """
        An over-long line whose dropped tail ends in CR at a packet end,
        then a second over-long line followed by a bare C{<LF>.<CR><LF>}
        at the start of a packet: DATA does not end there, and the hidden
        commands never run as a second transaction.
        """
        s = logged_in(limits=LimitsConfig(max_line_length=998))
        s.start()
        lines = s.send(b"a" * 1100)
        lines += s.send(b"a" * 10 + b"\r")
        lines += s.send(b"\n" + b"b" * 1100)
        lines += s.send(b"\n.\r\n" + SMUGGLE)
        self.assertEqual(lines, [])
        self.assertEqual(s.send(b".\r\n"), [reply_line(R.message_line_too_long(998))])
        self.assertEqual(s.delivery.sent, [])

    def test_cr_lf_split_right_after_long_line(self) -> None:
        """
        C{<2000 octets><CR>} | C{<LF>.<CR><LF>}: the CR at the end of the
        packet that began dropping the long line still counts, so the real
        final dot ends DATA (with 552) and later input is read as
        commands.
        """
        s = logged_in(limits=LimitsConfig(max_line_length=998))
        s.start()
        self.assertEqual(s.send(b"a" * 2000 + b"\r"), [])
        self.assertEqual(s.send(b"\n.\r\n"), [reply_line(R.message_line_too_long(998))])
        self.assertEqual(s.send(b"NOOP\r\n"), [reply_line(R.OK)])

    def test_cr_lf_split_after_long_partial_line(self) -> None:
        """
        The same, with complete lines before the long one in the same
        packet.
        """
        s = logged_in(limits=LimitsConfig(max_line_length=998))
        s.start()
        self.assertEqual(s.send(b"ok\r\n" + b"a" * 2000 + b"\r"), [])
        self.assertEqual(s.send(b"\n.\r\n"), [reply_line(R.message_line_too_long(998))])

    def test_bare_cr_line_length_does_not_depend_on_packets(self) -> None:
        """
        C{600 x a, <CR>, 600 x b, <CR><LF>} gets the same verdict sent
        whole and cut anywhere: the line-length verdict does not depend on
        packet boundaries.
        """
        stream = b"a" * 600 + b"\r" + b"b" * 600 + b"\r\n.\r\n"
        s = logged_in(limits=roomy(max_line_length=998))
        outcomes = set()
        for cuts in [[], *[[i] for i in range(1, len(stream))]]:
            s.start()
            lines = s.feed(stream, cuts)
            self.assertEqual(len(lines), 1, cuts)
            outcomes.add(lines[0][:3])
        self.assertEqual(len(outcomes), 1, outcomes)


class PropertyTests(SynchronousTestCase, WireChecks):
    """
    Properties of whole sessions over random streams and packet cuts.
    """

    @settings(max_examples=150, deadline=None)
    @given(
        st.lists(
            st.sampled_from(
                [
                    b"\r\n",
                    b"\n",
                    b"\r",
                    b".",
                    b"\r\n.\r\n",
                    b"MAIL FROM:<e@x.com>\r\n",
                    b"RCPT TO:<v@x.com>\r\n",
                    b"DATA\r\n",
                    b"QUIT\r\n",
                    b"RSET\r\n",
                    b"x" * 300,
                    b"\0",
                    b"..",
                    b"STARTTLS\r\n",
                    b"\xff",
                ]
            ),
            max_size=40,
        ),
        st.lists(st.integers(min_value=1, max_value=64), max_size=20),
    )
    @example(
        pieces=[
            b"\r\n.\r\n",
            b"MAIL FROM:<e@x.com>\r\n",
            b"RCPT TO:<v@x.com>\r\n",
            b"DATA\r\n",
            b"\r\n.\r\n",
        ],
        cuts=[],
    )
    def test_random_streams_start_no_transaction_of_their_own(
        self, pieces: list[bytes], cuts: list[int]
    ) -> None:
        """
        Whatever follows DATA, split at random points: the first message is
        the one DATA started; any later one is a transaction the stream
        itself opened with its own MAIL, RCPT and DATA commands after an
        end of data (a client may pipeline a new transaction after the
        final dot, RFC 2920), never more of them than it sent DATA
        commands; nothing raises, and nothing is written after the
        connection closed.
        """
        s = SMTPDriver(implicit_tls=True, limits=LimitsConfig(max_errors=1000))
        s.login()
        s.send("MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n")
        stream = b"".join(pieces)
        pos = 0
        for cut in cuts + [len(stream)]:
            s.proto.dataReceived(stream[pos : pos + cut])
            pos += cut
        s.replies()
        sent = [(m.mail_from, m.rcpt_to) for m in s.delivery.sent]
        if sent:
            self.assertEqual(sent[0], ("a@example.com", ["b@example.com"]))
        self.assertLessEqual(len(sent) - 1, stream.count(b"DATA\r\n"))
        for envelope in sent[1:]:
            self.assertEqual(envelope, ("e@x.com", ["v@x.com"]))
        if s.transport.disconnecting:
            s.proto.dataReceived(b"NOOP\r\n")
            self.assertEqual(s.replies(), [])

    @settings(max_examples=300, deadline=None)
    @given(
        st.lists(st.sampled_from(DANGEROUS), max_size=40),
        st.lists(st.integers(min_value=0, max_value=2000), max_size=25),
    )
    def test_data_never_ends_early_and_never_splits(
        self, pieces: list[bytes], cuts: list[int]
    ) -> None:
        """
        A body without <CR><LF>.<CR><LF> (and not starting with .<CR><LF>)
        never ends DATA, however cut; adding the terminator gives exactly
        one reply and at most one message, identical to the one-packet
        result, with CRLF line ends.
        """
        body = b"".join(pieces)
        stream = body + b"\r\n.\r\n"
        assume(stream.find(b"\r\n.\r\n") == len(body) and not stream.startswith(b".\r\n"))
        results = []
        for how in ("whole", "cut"):
            s = logged_in(limits=roomy())
            s.start()
            if how == "whole":
                lines = s.send(body)
            else:
                lines = s.feed(body, cuts)
            self.assertEqual(lines, [], how)
            self.assertEqual(s.delivery.sent, [])
            lines = s.send(b"\r\n.\r\n")
            self.assertEqual(len(lines), 1, lines)
            self.assertRegex(lines[0], r"^(250 2\.0\.0 Ok: queued as fake-1|552 5\.3\.4 .*)$")
            self.assertLessEqual(len(s.delivery.sent), 1)
            for m in s.delivery.sent:
                self.assertTrue(crlf_only(m.data))
            self.check_wire(s)
            results.append((lines, [m.data for m in s.delivery.sent]))
        self.assertEqual(results[0], results[1])

    @settings(max_examples=200, deadline=None)
    @given(
        # No DATA command: whether input pipelined after a refused DATA is
        # discarded depends on packet boundaries (DATA is a synchronisation
        # point: see tests.smtp.test_pipelining).
        st.lists(st.sampled_from([p for p in DANGEROUS if p != b"DATA\r\n"]), max_size=30),
        st.lists(st.integers(min_value=0, max_value=2000), max_size=25),
        st.sampled_from(["normalize", "reject"]),
    )
    def test_any_stream_after_data_is_split_invariant(
        self, pieces: list[bytes], cuts: list[int], mode: str
    ) -> None:
        """
        Whatever follows DATA (terminators included), cutting it into
        packets changes nothing: same replies, same messages.
        """
        stream = b"".join(pieces)
        results = []
        for how in ("whole", "cut", "bytes"):
            s = logged_in(limits=roomy(bare_newline=mode))
            s.start()
            if how == "whole":
                lines = s.send(stream)
            elif how == "cut":
                lines = s.feed(stream, cuts)
            else:
                lines = s.bytewise(stream)
            self.check_wire(s)
            for m in s.delivery.sent:
                self.assertTrue(crlf_only(m.data))
            results.append((lines, [(m.mail_from, m.rcpt_to, m.data) for m in s.delivery.sent]))
        self.assertEqual(results[0], results[1])
        self.assertEqual(results[0], results[2])

    @settings(max_examples=300, deadline=None)
    @example(pieces=[b"y" * 600, b"\r", b"y" * 600, b"\r\n", b".\r\n"], cuts=[1201])
    @example(pieces=[b"y" * 1100, b"\r", b"\n", b".\r\n"], cuts=[1101])
    @example(
        pieces=[b"y" * 1100, b"\r", b"\n", b"y" * 1100, b"\n", b".\r\n"] + [SMUGGLE],
        cuts=[1100, 1101, 2202],
    )
    @example(
        pieces=[b"\r\n.\r\n", b"AUTH PLAIN\r\n", b"yyyy", SMUGGLE],
        cuts=[len(b"\r\n.\r\nAUTH PLAIN\r\nyyyy") + SMUGGLE.index(b"DATA\r\n") + 6],
    )
    @given(
        st.lists(
            st.sampled_from(
                [p for p in DANGEROUS if p != b"DATA\r\n"] + [b"y" * 1100, b"y" * 600, SMUGGLE]
            ),
            max_size=30,
        ),
        st.lists(st.integers(min_value=0, max_value=5000), max_size=25),
    )
    def test_long_lines_are_split_invariant(self, pieces: list[bytes], cuts: list[int]) -> None:
        """
        The split-invariance property with over-long lines in the mix.
        The examples are the cases of
        L{LongDataLineTests.test_bare_cr_line_length_does_not_depend_on_packets},
        L{LongDataLineTests.test_cr_lf_split_right_after_long_line} and
        L{LongDataLineTests.test_lf_dot_crlf_after_two_long_lines_does_not_end_data}.
        """
        stream = b"".join(pieces)
        # A packet that ends right after a DATA line is the one split that
        # may change a reply: content pipelined behind a refused DATA in
        # the same packet closes the session (421 4.5.0), content in a
        # later packet is read as commands (500). DATA is a
        # synchronisation point (RFC 2920 section 3.1; tests.smtp.
        # test_pipelining); either way no content becomes a message.
        cuts = [c for c in cuts if not stream[:c].endswith(b"DATA\r\n")]
        results = []
        for how in ("whole", "cut"):
            s = logged_in(limits=roomy())
            s.start()
            lines = s.send(stream) if how == "whole" else s.feed(stream, cuts)
            results.append((lines, [(m.mail_from, m.rcpt_to, m.data) for m in s.delivery.sent]))
        self.assertEqual(results[0], results[1])

    @settings(max_examples=200, deadline=None)
    @given(
        st.binary(max_size=3000),
        st.lists(st.integers(min_value=0, max_value=3000), max_size=30),
        st.sampled_from(["greeting", "plain-ehlo", "secure", "auth"]),
    )
    def test_random_bytes_in_any_state_get_only_replies(
        self, stream: bytes, cuts: list[int], state: str
    ) -> None:
        s = SMTPDriver(implicit_tls=state != "plain-ehlo")
        if state in ("plain-ehlo", "secure"):
            s.ehlo()
        elif state == "auth":
            s.login()
        s.feed(stream, cuts)
        self.check_wire(s)
        self.assertEqual(s.delivery.sent, [])
        if s.transport.disconnecting:
            self.assertEqual(s.send(b"NOOP\r\nQUIT\r\n"), [])
        s.close()
        self.assertEqual(s.clock.getDelayedCalls(), [])

    @settings(max_examples=150, deadline=None)
    @given(st.lists(st.integers(min_value=0, max_value=600), max_size=40))
    def test_full_session_is_split_invariant(self, cuts: list[int]) -> None:
        script = (
            f"EHLO c\r\nAUTH PLAIN {plain('apikey', TOKEN)}\r\n"
            "MAIL FROM:<a@example.com> SIZE=100\r\nRCPT TO:<b@example.com>\r\nRCPT TO:<c@example.com>\r\nDATA\r\n"
            "Subject: x\r\n\r\n..one\r\n\n.\n\r.\r\r\n.\r\r\nend\r\n.\r\n"
            "MAIL FROM:<a@example.com>\r\nRCPT TO:<d@example.com>\r\nDATA\r\ntwo\r\n.\r\nQUIT\r\n"
        ).encode()
        results = []
        for split in ([], cuts):
            s = SMTPDriver(implicit_tls=True)
            s.replies()
            lines = s.feed(script, split)
            results.append((lines, [(m.mail_from, m.rcpt_to, m.data) for m in s.delivery.sent]))
            self.check_wire(s)
        self.assertEqual(results[0], results[1])
        self.assertEqual(len(results[0][1]), 2)
