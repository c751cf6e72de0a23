"""
Tests for the fast paths of L{relayd.message}: each gives what the standard
library gives for the inputs it takes, and defers to it for the rest.

  - L{relayd.message.addresses.plain_addresses} against
    C{email.utils.getaddresses};
  - L{relayd.message.mime.parse_header_section} against
    C{email.parser.BytesParser(policy=compat32)} with C{headersonly=True};
  - L{relayd.message.mime.content_params} against C{Message.get_boundary}
    and C{get_content_charset};
  - whole messages read with the fast paths against the same messages read
    with every fast path turned off.
"""

from __future__ import annotations

import time
from email.message import Message
from email.parser import BytesParser
from email.policy import compat32
from email.utils import getaddresses
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from relayd.config import HeadersConfig
from relayd.message import Envelope, addresses, mime, parse_message
from relayd.message.addresses import mailboxes, plain_addresses
from relayd.message.mime import content_params, parse_header_section
from relayd.reply import Refused

_ATEXT = "abcXYZ019!#$%&'*+-/=?^_`{|}~"
_atom = st.text(_ATEXT, min_size=1, max_size=6)
_dot_atom = st.lists(_atom, min_size=1, max_size=3).map(".".join)
_addr_spec = st.builds(lambda local, domain: f"{local}@{domain}", _dot_atom, _dot_atom)
_space = st.sampled_from(["", " ", "  ", "\t", " \t "])
_phrase = st.lists(_atom, min_size=1, max_size=3).flatmap(
    lambda atoms: st.lists(
        st.sampled_from([" ", "\t", "  "]), min_size=len(atoms) - 1, max_size=len(atoms) - 1
    ).map(lambda gaps: "".join(a + g for a, g in zip(atoms, gaps + [""], strict=True)))
)

#: Mailboxes the fast path takes: a bare addr-spec, C{<addr-spec>}, or
#: C{Name <addr-spec>}, with any spaces around.
plain_mailbox = st.one_of(
    st.builds(lambda a, b, c: a + b + c, _space, _addr_spec, _space),
    st.builds(
        lambda a, n, b, addr, c: f"{a}{n}{b}<{addr}>{c}",
        _space,
        _phrase,
        _space,
        _addr_spec,
        _space,
    ),
    st.builds(lambda a, addr, c: f"{a}<{addr}>{c}", _space, _addr_spec, _space),
)

#: Pieces of address lists the fast path must not misread: specials,
#: quotes, comments, groups, domain literals, routes, encoded words,
#: non-ASCII, CR/LF/NUL, and well-formed mailboxes of every kind.
_fragments = st.sampled_from(
    [
        "a",
        "Bob",
        "b.c",
        "x@y.z",
        "Ann Lee <ann@example.com>",
        " ",
        "\t",
        ".",
        "..",
        "@",
        "<",
        ">",
        ",",
        ":",
        ";",
        '"',
        "\\",
        "(",
        ")",
        "[",
        "]",
        "[1.2.3.4]",
        "\r",
        "\n",
        "\0",
        '"Lee, Ann" <ann@example.com>',
        '"ann lee"@example.com',
        "ann@example.com (Ann)",
        "(comment) ann@example.com",
        "friends: a@b.c, d@e.f;",
        "undisclosed-recipients:;",
        "<@route.example:ann@example.com>",
        "=?utf-8?q?J=C3=B6rg?= <j@example.com>",
        "=?utf-8?b?w7Y=?=",
        "J\u00f6rg <j@example.com>",
        "j\u00f6rg@example.com",
        "ann@\u00e9xample.com",
        "\u65e5\u672c <a@b>",
        "a@b@c",
        "a.@b",
        ".a@b",
        "a@b.",
        "a@@b",
        "<a@b",
        "a@b>",
        "Name <a@b> trailing",
        "<<a@b>>",
        "x\u2028y",
        "\x85",
    ]
)
#: Characters one of which, put anywhere in a plain mailbox, may change
#: how it reads: specials, quoting, whitespace, controls, non-ASCII.
_odd_char = st.one_of(
    st.sampled_from(list('()<>[]:;@\\,."') + [" ", "\t", "\r", "\n", "\0", "\x7f", "\x85"]),
    st.characters(min_codepoint=0, max_codepoint=0x2FF),
)


@st.composite
def _near_plain(draw: st.DrawFn) -> str:
    """
    A plain mailbox with a few odd characters put in or swapped in.
    """
    text = draw(plain_mailbox)
    for _ in range(draw(st.integers(1, 2))):
        at = draw(st.integers(0, len(text)))
        odd = draw(_odd_char)
        text = text[:at] + odd + text[at + draw(st.integers(0, 1)) :]
    return text


hostile_list = st.one_of(
    _near_plain(),
    st.lists(st.one_of(_near_plain(), plain_mailbox), min_size=1, max_size=3).map(",".join),
    st.lists(st.one_of(_fragments, plain_mailbox, _atom), max_size=8).map("".join),
    st.lists(plain_mailbox, min_size=1, max_size=4).map(",".join),
    st.text(max_size=30),
)


class PlainAddressesTests(SynchronousTestCase):
    """
    L{plain_addresses} agrees with C{getaddresses} or defers to it.
    """

    @settings(max_examples=400, deadline=None)
    @given(st.lists(plain_mailbox, min_size=1, max_size=4), st.sampled_from([",", ", ", " , "]))
    def test_plain_lists_taken(self, entries: list[str], comma: str) -> None:
        """
        A list of the plainest mailboxes is read by the fast path, with the
        result C{getaddresses} gives.
        """
        text = comma.join(entries)
        fast = plain_addresses([text])
        self.assertIsNotNone(fast)
        self.assertEqual(fast, getaddresses([text]))

    @settings(max_examples=1500, deadline=None)
    @given(st.lists(hostile_list, min_size=1, max_size=3))
    def test_agrees_or_defers(self, texts: list[str]) -> None:
        """
        For any address-list values, the fast path gives what
        C{getaddresses} gives, or nothing (deferring to it).
        """
        fast = plain_addresses(texts)
        if fast is not None:
            self.assertEqual(fast, getaddresses(texts))

    def test_defers(self) -> None:
        """
        Quoted strings, comments, groups, encoded words that are not atoms,
        non-ASCII, empty entries and domain literals are left to
        C{getaddresses}.
        """
        for text in [
            '"Lee, Ann" <ann@example.com>",',
            "ann@example.com (Ann)",
            "friends: a@b.c;",
            "J\u00f6rg <j@example.com>",
            "a@b,,c@d",
            "a@b,",
            "a@[1.2.3.4]",
            "J. Lee <j@example.com>",
            "a..b@c",
            "",
        ]:
            self.assertIsNone(plain_addresses([text]), text)

    def test_encoded_word_display_name(self) -> None:
        """
        An encoded word that is one atom is taken, and decoded afterwards as
        the standard path decodes it.
        """
        values = ["=?utf-8?q?J=C3=B6rg_Lee?= <j@example.com>"]
        self.assertEqual(mailboxes(values), [("J\u00f6rg Lee", "j@example.com")])
        self.patch(addresses, "plain_addresses", lambda texts: None)
        self.assertEqual(mailboxes(values), [("J\u00f6rg Lee", "j@example.com")])


def _stdlib_section(section: bytes) -> Message:
    return BytesParser(policy=compat32).parsebytes(section, headersonly=True)


def _model(message: Message) -> dict[str, object]:
    """
    What a parsed header section holds, comparably.
    """
    state = dict(vars(message))
    state.pop("policy")
    state["defects"] = [type(d) for d in message.defects]
    return state


_header_lines = st.lists(
    st.one_of(
        st.sampled_from(
            [
                "From: Ann <ann@example.com>",
                "To: b@example.org",
                "Subject: Hi there",
                "X-Tags: a, b",
                " continued",
                "\tcontinued",
                "From ann@example.com Mon",
                ":no name",
                "Name:",
                "Name: ",
                "Name:\t value",
                "Bad Name: x",
                "N:a:b",
                "Subject: caf\u00e9",
                "Subject: \xff\xfe",
                "Subject: a\x0bb",
                "Subject: a\x0cb",
                "Subject: a\x1cb",
                "Subject: a\x85b",
                "X: a\u2028b",
                "X: \0",
                "",
                " ",
            ]
        ),
        st.text(st.characters(min_codepoint=0, max_codepoint=0x7F), max_size=12),
        st.builds(
            lambda n, v: f"{n}:{v}",
            st.text("AbZ-_09!~", min_size=1, max_size=5),
            st.text(" \tab\x0b\x0c\x1c\x7f", max_size=6),
        ),
    ),
    max_size=8,
)
_line_end = st.sampled_from(["\r\n", "\n", "\r"])


class HeaderSectionTests(SynchronousTestCase):
    """
    L{parse_header_section} gives what C{BytesParser(policy=compat32)}
    gives.
    """

    @settings(max_examples=1500, deadline=None)
    @given(_header_lines, st.lists(_line_end, min_size=8, max_size=8), st.booleans())
    def test_same_as_stdlib(self, lines: list[str], ends: list[str], last_end: bool) -> None:
        """
        Any lines, any line ends (CRLF, LF, bare CR), any octets: the same
        fields, values, envelope line, defects and payload.
        """
        text = "".join(line + end for line, end in zip(lines, ends, strict=False))
        if not last_end and text:
            text = text.rstrip("\r\n")
        section = text.encode("utf-8", "surrogateescape")
        self.assertEqual(_model(parse_header_section(section)), _model(_stdlib_section(section)))

    @settings(max_examples=300, deadline=None)
    @given(st.binary(max_size=60))
    def test_any_bytes(self, section: bytes) -> None:
        """
        Arbitrary bytes give what the standard library gives.
        """
        self.assertEqual(_model(parse_header_section(section)), _model(_stdlib_section(section)))

    def test_plain_section_is_fast(self) -> None:
        """
        A section of plain fields with folded values is read without the
        standard library's parser, with the values it would give.
        """
        section = (
            b"From: Ann <ann@example.com>\r\nSubject: one\r\n two\r\n\tthree\r\n"
            b"X-Empty:\r\nX-Space:   \r\nX-8bit: caf\xc3\xa9\r\n"
        )
        expected = _model(_stdlib_section(section))
        self.patch(mime, "_PARSER", None)
        self.assertEqual(_model(parse_header_section(section)), expected)
        self.assertEqual(
            list(parse_header_section(section).raw_items())[1],
            ("Subject", "one\r\n two\r\n\tthree"),
        )


_ct_fragments = st.sampled_from(
    [
        "text/plain",
        "multipart/alternative",
        "TEXT/HTML",
        "text",
        "charset",
        "a=b/c",
        "x/y/z",
        ";",
        "; ",
        ";\r\n\t",
        " ",
        "\t",
        "\r\n ",
        "=",
        "==",
        '"',
        '""',
        "\\",
        '\\"',
        "<",
        ">",
        "*",
        "'",
        "charset",
        "CHARSET",
        "boundary",
        "Boundary",
        "charset*",
        "charset*0",
        "charset*1*",
        "boundary*0",
        "name",
        "utf-8",
        "UTF-8",
        "us-ascii'en'",
        "utf-8''%C3%A9",
        "=_bench_7_alt",
        '"=_bench_7_alt"',
        '"a b "',
        '"a;b"',
        '"<x>"',
        "<x>",
        '"\\"x\\""',
        '""x""',
        "caf\u00e9",
        "\x0b",
        "\x1c",
        "(comment)",
        "a?b",
        " x",
        "--",
        "_-.",
    ]
)
_content_type = st.one_of(
    st.lists(_ct_fragments, max_size=10).map("".join),
    st.builds(
        lambda t, params, tail: t + "".join(params) + tail,
        st.sampled_from(["text/plain", "multipart/mixed", " Text/HTML ", "a/b"]),
        st.lists(
            st.builds(
                lambda sep, n, eq, v: f"{sep}{n}{eq}{v}",
                st.sampled_from([";", "; ", ";\r\n\t", " ;  "]),
                st.sampled_from(["charset", "boundary", "Charset", "BOUNDARY", "format", "name"]),
                st.sampled_from(["=", " = ", "=\t"]),
                st.one_of(
                    st.text("azAZ09-_.=+/:?@[]()!#$%&'*,<>\\;", min_size=1, max_size=8),
                    st.text('azAZ09-_.=+ \t/<>\\;"', max_size=8).map(lambda v: f'"{v}"'),
                ),
            ),
            max_size=4,
        ),
        st.sampled_from(["", ";", "; ", " ", ";\r\n"]),
    ),
)


class ContentParamsTests(SynchronousTestCase):
    """
    L{content_params} gives what C{get_boundary} and C{get_content_charset}
    give.
    """

    @settings(max_examples=1500, deadline=None)
    @given(st.lists(_content_type, max_size=2))
    def test_same_as_stdlib(self, values: list[str]) -> None:
        """
        Any Content-Type values (none, one, several): the same boundary and
        charset.
        """
        headers = Message(policy=compat32)
        for value in values:
            headers.set_raw("Content-Type", value)
        self.assertEqual(
            content_params(headers), (headers.get_boundary(), headers.get_content_charset())
        )

    def test_plain_is_fast(self) -> None:
        """
        Plain parameters are read without the standard library's parameter
        parser.
        """
        headers = Message(policy=compat32)
        headers.set_raw(
            "Content-Type", 'multipart/alternative;\r\n\tboundary="=_b 1 "; charset=UTF-8;'
        )
        self.patch(Message, "get_param", None)
        self.assertEqual(content_params(headers), ("=_b 1", "utf-8"))


def _old_entity(data: bytes, limit: int) -> tuple[object, ...]:
    """
    An entity's header section as read before the fast path: found by
    L{mime._header_end}, parsed by the standard library.
    """
    header_end, body_start = mime._header_end(data, 0, len(data), limit)
    if header_end > limit:
        return ("refused",)
    return _model(_stdlib_section(data[:header_end])), body_start


def _new_entity(data: bytes, limit: int) -> tuple[object, ...]:
    saved = mime.MAX_HEADER_BYTES
    mime.MAX_HEADER_BYTES = limit
    try:
        entity = mime.Structure().read_entity(data, 0, len(data), 0, ())
    except Refused:
        return ("refused",)
    finally:
        mime.MAX_HEADER_BYTES = saved
    return _model(entity.headers), entity.start


class ReadEntityTests(SynchronousTestCase):
    """
    L{mime.Structure.read_entity} finds and parses a header section as
    L{mime._header_end} and the standard library do.
    """

    @settings(max_examples=1500, deadline=None)
    @given(
        _header_lines,
        st.lists(_line_end, min_size=8, max_size=8),
        st.sampled_from(["", "\r\n", "\n", "\r", "\r\nbody\r\n", "body: x\r\n", "\x00x"]),
        st.sampled_from([4, 20, 64, 10_000]),
    )
    def test_same_section(self, lines: list[str], ends: list[str], rest: str, limit: int) -> None:
        """
        Any lines and line ends, then an empty line, a body or nothing, and
        any header-size limit: the same fields, the same start of body, or
        the same refusal.
        """
        text = "".join(line + end for line, end in zip(lines, ends, strict=False)) + rest
        data = text.encode("utf-8", "surrogateescape")
        self.assertEqual(_new_entity(data, limit), _old_entity(data, limit))


def _read(data: bytes, policy: HeadersConfig) -> object:
    """
    Parse a message; a refusal is a result too.
    """
    envelope = Envelope(mail_from="alice@example.com", rcpt_to=("bob@example.org", "c@d.e"))
    try:
        return parse_message(data, envelope, policy)
    except Refused as e:
        return e.reply


def _read_without_fast_paths(data: bytes, policy: HeadersConfig) -> object:
    saved = addresses.plain_addresses, mime.parse_header_section
    addresses.plain_addresses = lambda texts: None  # type: ignore[assignment]
    mime.parse_header_section = _stdlib_section
    try:
        return _read(data, policy)
    finally:
        addresses.plain_addresses, mime.parse_header_section = saved


_address_field = st.builds(
    lambda name, value: f"{name}: {value}",
    st.sampled_from(["From", "To", "Cc", "Reply-To", "Sender", "from", "TO"]),
    st.one_of(plain_mailbox, hostile_list),
)
_other_field = st.sampled_from(
    [
        "Subject: =?utf-8?q?caf=C3=A9?=",
        "Date: Thu, 20 Nov 2025 12:00:00 +0000",
        "Message-ID: <m1@example.com>",
        "MIME-Version: 1.0",
        "X-Tags: a, b",
        "X-Metadata-k: v",
        "X-Stream: outbound",
        "X-Track: false",
        "List-Unsubscribe: <mailto:u@example.com>",
        "Content-Type: text/plain; charset=utf-8",
        'Content-Type: text/html; charset="latin1"',
        "Content-Transfer-Encoding: quoted-printable",
        " folded",
        "Bcc: hidden@example.com",
        'Content-Type: multipart/alternative; boundary="b1"',
        "X-Other: caf\u00e9",
        "From nobody Mon Jan  1 00:00:00 2001",
    ]
)
_body = st.sampled_from(
    [
        "Hello\r\n",
        "--b1\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nText\r\n"
        "--b1\r\nContent-Type: text/html\r\n\r\n<p>HTML</p>\r\n--b1--\r\n",
        "caf=C3=A9\r\n",
    ]
)


class WholeMessageTests(SynchronousTestCase):
    """
    Messages read with the fast paths are read as with the standard
    library alone.
    """

    @settings(max_examples=400, deadline=None)
    @given(
        st.lists(st.one_of(_address_field, _other_field), max_size=8),
        _body,
        st.sampled_from(["\r\n", "\n"]),
    )
    def test_same_message(self, fields: list[str], body: str, eol: str) -> None:
        """
        Any mix of address fields (plain or not), control headers, MIME
        fields and bodies: the same L{OutboundMessage}, or the same refusal.
        """
        head = "".join(f + "\r\n" for f in fields)
        data = (head + "\r\n" + body).replace("\r\n", eol).encode("utf-8")
        policy = HeadersConfig()
        self.assertEqual(_read(data, policy), _read_without_fast_paths(data, policy))


class CraftedHeaderTests(SynchronousTestCase):
    """
    The fast paths take time linear in the header: values an authenticated
    client can craft (long runs of white space or slashes, folded so that
    every line stays under 998 octets) are read, or handed to the standard
    library, at once.  Each of these took 10 to 30 seconds of CPU on the
    reactor thread with the first expressions (quadratic backtracking).
    """

    def assertQuick(self, f: Any, *args: Any) -> Any:
        started = time.process_time()
        result = f(*args)
        self.assertLess(time.process_time() - started, 1.0)
        return result

    def message(self, field: bytes) -> bytes:
        return b"From: a@example.com\r\nTo: b@example.com\r\nSubject: x\r\n" + field + b"\r\nhi\r\n"

    def parse(self, data: bytes) -> Any:
        return parse_message(data, Envelope("a@example.com", ("b@example.com",)), HeadersConfig())

    def test_content_type_white_space(self) -> None:
        folded = b"\r\n".join([b" " * 990] * 16)
        message = self.assertQuick(
            self.parse, self.message(b"Content-Type: multipart/mixed\r\n" + folded + b"; x")
        )
        self.assertEqual(message.text, "hi\r\n".replace("\r\n", "\n"))

    def test_content_type_slashes(self) -> None:
        folded = b"\r\n ".join([b"/" * 990] * 16)
        self.assertQuick(self.parse, self.message(b"Content-Type: " + folded + b'"'))

    def test_content_params_long_values(self) -> None:
        self.assertIsNone(self.assertQuick(mime._plain_params, "a/b" + " " * 40000 + '"'))
        self.assertIsNone(self.assertQuick(mime._plain_params, "/" * 100000 + '"'))
        self.assertEqual(
            self.assertQuick(mime._plain_params, "a/ " + " " * 40000 + 'b; x=1 ; y="2" ;'),
            {"x": "1", "y": "2"},
        )

    def test_address_white_space(self) -> None:
        value = "b@example.com," + " \t" * 20000 + 'x"'
        # Not plain: read by getaddresses, whose "x" is no mailbox.
        self.assertEqual(self.assertQuick(mailboxes, [value]), [("", "b@example.com")])
        self.assertIsNone(self.assertQuick(plain_addresses, [" ".join(["ab"] * 20000) + " <x@y"]))
        folded = b"\r\n".join([b" \t" * 495] * 16)
        self.assertQuick(self.parse, self.message(b"Cc: c@example.com,\r\n" + folded + b'x"'))
