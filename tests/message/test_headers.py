"""
Tests for L{relayd.message.headers}: the header policy (keep, strip,
map), tags, stream, tracking, metadata and required headers.
"""

from __future__ import annotations

from email.message import Message
from email.policy import compat32

import attrs
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from relayd.config import HeadersConfig
from relayd.message.headers import classify, sort_fields
from tests.message.support import (
    FROM,
    RejectionAssertions,
    message,
    parse,
)

# Strategies for the properties
_NAMES = [
    "X-Tags",
    "X-Stream",
    "X-Track",
    "X-List-Unsubscribe",
    "X-Metadata-User",
    "X-Metadata-",
    "X-Custom",
    "X-Secret",
    "List-Unsubscribe",
    "List-Unsubscribe-Post",
    "List-Id",
    "In-Reply-To",
    "References",
    "Received",
    "DKIM-Signature",
    "ARC-Seal",
    "Message-ID",
    "Date",
    "Bcc",
    "To",
    "Cc",
    "Reply-To",
    "Subject",
    "Sender",
    "MIME-Version",
    "Content-Type",
    "Content-Language",
    "Keywords",
    "X-Api-Key",
]
_REPRESENTED = {
    "from",
    "to",
    "cc",
    "reply-to",
    "subject",
    "sender",
    "mime-version",
    "content-type",
    "content-transfer-encoding",
    "content-disposition",
    "content-id",
}
_CONTROL_PATTERNS = st.sampled_from(_NAMES + ["X-*", "List-*", "*", "x-metadata-*", "Content-*"])


def _random_case(draw: st.DrawFn, name: str) -> str:
    flips = draw(st.lists(st.booleans(), min_size=len(name), max_size=len(name)))
    return "".join(c.swapcase() if f else c for c, f in zip(name, flips, strict=True))


@st.composite
def _header_fields(draw: st.DrawFn) -> list[tuple[str, str]]:
    names = st.one_of(
        st.sampled_from(_NAMES),
        st.from_regex(r"[A-Za-z][A-Za-z0-9-]{0,12}", fullmatch=True).filter(
            lambda n: n.lower() != "from"
        ),
    )
    words = st.text(
        st.characters(blacklist_categories=["Cs"], blacklist_characters="\r\n"),
        max_size=12,
    )
    fields = []
    count = draw(st.integers(0, 12))
    for _ in range(count):
        name = draw(names)
        parts = draw(st.lists(words, max_size=4))
        seps = draw(
            st.lists(st.sampled_from([" ", "\r\n ", "\r\n\t", ","]), min_size=3, max_size=3)
        )
        value = "".join(p + seps[i % 3] for i, p in enumerate(parts))
        fields.append((_random_case(draw, name), value.lstrip(" \t\r\n")))
    return fields


@st.composite
def _policies(draw: st.DrawFn) -> HeadersConfig:
    tags: tuple[str, ...] = draw(
        st.sampled_from([(), ("X-Tags",), ("X-Tags", "Keywords"), ("X-T*",)])
    )
    return HeadersConfig(
        keep=tuple(draw(st.lists(_CONTROL_PATTERNS, max_size=4))),
        strip=tuple(draw(st.lists(_CONTROL_PATTERNS, max_size=4))),
        tags=tags,
        max_tags=draw(st.integers(0, 5)),
        max_tag_length=draw(st.integers(1, 8)),
        stream=draw(st.sampled_from(["X-Stream", ""])),
        keep_message_id=draw(st.booleans()),
    )


def _matches(name: str, patterns: tuple[str, ...]) -> bool:
    name = name.lower()
    for pattern in patterns:
        pattern = pattern.lower()
        if pattern.endswith("*") and name.startswith(pattern[:-1]):
            return True
        if name == pattern:
            return True
    return False


class HeaderPolicyTests(RejectionAssertions):
    """
    The C{[headers]} policy.
    """

    def test_tags(self) -> None:
        """
        Tags are comma separated, trimmed, empty ones dropped, duplicates
        dropped keeping the first, read from every tags header.
        """
        result = parse(message(FROM + "X-Tags: welcome, , onboarding ,welcome\nx-tags: b2b\n"))
        self.assertEqual(result.tags, ("welcome", "onboarding", "b2b"))
        self.assertEqual(result.mapped, ("X-Tags",))
        self.assertEqual(result.headers, ())

    def test_tags_limits(self) -> None:
        """
        At most C{max_tags} tags, each cut to C{max_tag_length} characters.
        """
        policy = HeadersConfig(max_tags=2, max_tag_length=4)
        result = parse(message(FROM + "X-Tags: abcdef, abcdxx, ab, cd\n"), policy)
        self.assertEqual(result.tags, ("abcd", "ab"))
        self.assertEqual(parse(message(FROM + "X-Tags: a\n"), HeadersConfig(max_tags=0)).tags, ())

    def test_tags_patterns_and_encoded_words(self) -> None:
        """
        Tag header names may be prefix patterns; values are RFC 2047 decoded.
        """
        policy = HeadersConfig(tags=("X-Tag*", "Keywords"))
        result = parse(
            message(FROM + "X-Tag-A: one\nKeywords: =?utf-8?q?gr=C3=BCn?=\nX-Tags: two\n"), policy
        )
        self.assertEqual(result.tags, ("one", "grün", "two"))
        self.assertEqual(result.mapped, ("X-Tag-A", "Keywords", "X-Tags"))

    def test_stream(self) -> None:
        """
        The stream header selects the stream; it must be one of
        C{streams} when that is set (matched case-insensitively, reported
        as configured); absent, C{default_stream} or C{None}.
        """
        policy = HeadersConfig(streams=("outbound", "broadcast"), default_stream="outbound")
        self.assertEqual(parse(message(FROM + "X-Stream: broadcast\n"), policy).stream, "broadcast")
        self.assertEqual(parse(message(FROM + "X-Stream: Broadcast\n"), policy).stream, "broadcast")
        self.assertEqual(parse(message(FROM), policy).stream, "outbound")
        self.assertEqual(parse(message(FROM + "X-Stream:  \n"), policy).stream, "outbound")
        self.assertIsNone(parse(message(FROM)).stream)
        self.assertEqual(parse(message(FROM + "X-Stream: anything\n")).stream, "anything")
        result = parse(message(FROM + "X-Stream: broadcast\n"), policy)
        self.assertEqual((result.mapped, result.headers), (("X-Stream",), ()))

    def test_unknown_stream_gets_550_571(self) -> None:
        """
        A stream not in C{streams} is refused with 550 5.7.1; the value is
        quoted as bounded printable ASCII.
        """
        policy = HeadersConfig(streams=("outbound",))
        self.assertRejected(
            message(FROM + "X-Stream: marketing\n"),
            550,
            "5.7.1",
            "unknown stream 'marketing'",
            policy=policy,
        )
        error = self.assertRejected(
            message(FROM + "X-Stream: Grüße=?utf-8?q?=0D=0A?=x" + "y" * 100 + "\n"),
            550,
            "5.7.1",
            "unknown stream 'Gr??e  x" + "y" * 56 + "...'",
            policy=policy,
        )
        self.assertTrue(error.reply.text.isascii() and error.reply.text.isprintable())

    def test_tracking(self) -> None:
        """
        C{true} and C{false} (any case) set C{track}; other values do not.
        """
        for value, expected in [
            ("true", True),
            ("FALSE", False),
            (" True ", True),
            ("yes", None),
            ("", None),
        ]:
            result = parse(message(FROM + f"X-Track: {value}\n"))
            self.assertEqual(result.track, expected, value)
            self.assertEqual(result.mapped, ("X-Track",))
        self.assertIsNone(parse(message(FROM)).track)

    def test_list_unsubscribe(self) -> None:
        """
        The list_unsubscribe header fills C{list_unsubscribe}; the RFC 8058
        List-Unsubscribe and List-Unsubscribe-Post headers are kept.
        """
        result = parse(
            message(
                FROM + "X-List-Unsubscribe: <https://example.com/u/1>\n"
                "List-Unsubscribe: <https://example.com/u/2>,\n <mailto:u@example.com>\n"
                "List-Unsubscribe-Post: List-Unsubscribe=One-Click\n"
            )
        )
        self.assertEqual(result.list_unsubscribe, "<https://example.com/u/1>")
        self.assertEqual(
            result.headers,
            (
                ("List-Unsubscribe", "<https://example.com/u/2>, <mailto:u@example.com>"),
                ("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"),
            ),
        )
        self.assertEqual(result.mapped, ("X-List-Unsubscribe",))

    def test_metadata(self) -> None:
        """
        C{<prefix><key>: value} headers become metadata pairs, the key the
        rest of the name; the first of duplicate keys wins; an empty key is
        dropped.
        """
        result = parse(
            message(
                FROM + "X-Metadata-User-Id: 42\nx-metadata-Plan: =?utf-8?q?gr=C3=BCn?=\n"
                "X-METADATA-user-id: 43\nX-Metadata-: nothing\n"
            )
        )
        self.assertEqual(result.metadata, (("User-Id", "42"), ("Plan", "grün")))
        self.assertEqual(result.mapped, ("X-Metadata-User-Id", "x-metadata-Plan"))
        self.assertEqual(result.stripped, ("X-Metadata-",))
        self.assertEqual(result.headers, ())

    def test_required_headers(self) -> None:
        """
        Each required header must be present with its value (compared
        case-insensitively); it is consumed, never passed on.
        """
        policy = HeadersConfig(required={"X-Api-Client": "Billing"})
        result = parse(message(FROM + "x-api-client:  billing \n"), policy)
        self.assertEqual((result.mapped, result.headers), (("x-api-client",), ()))
        for head in ("", "X-Api-Client: other\n"):
            self.assertRejected(
                message(FROM + head),
                550,
                "5.7.1",
                "Missing required header X-Api-Client",
                policy=policy,
            )

    def test_keep_and_strip(self) -> None:
        """
        Headers matching C{keep} and not C{strip} are passed on in order,
        unfolded; C{strip} wins; the others are reported as stripped.
        """
        policy = HeadersConfig(keep=("X-*", "In-Reply-To"), strip=("X-Secret*",))
        result = parse(
            message(
                FROM + "X-Mailer: Mail\n 1.0\nX-Secret-Token: t\nIn-Reply-To: <a@b>\n"
                "Received: from x\nx-mailer: again\nReceived: from y\n"
            ),
            policy,
        )
        self.assertEqual(
            result.headers,
            (("X-Mailer", "Mail 1.0"), ("In-Reply-To", "<a@b>"), ("x-mailer", "again")),
        )
        self.assertEqual(result.stripped, ("X-Secret-Token", "Received"))

    def test_message_id(self) -> None:
        """
        Message-ID is passed on only with C{keep_message_id}, whatever
        C{keep} and C{strip} say.
        """
        data = message(FROM + "Message-ID: <1@example.com>\n")
        self.assertEqual(parse(data).headers, ())
        self.assertEqual(parse(data).stripped, ("Message-ID",))
        kept = parse(data, HeadersConfig(keep_message_id=True))
        self.assertEqual(kept.headers, (("Message-ID", "<1@example.com>"),))
        dropped = parse(data, HeadersConfig(keep=("*",), strip=()))
        self.assertEqual(dropped.headers, ())

    def test_represented_headers_never_kept(self) -> None:
        """
        Fields represented by message fields, Bcc and Date never pass
        through, even when C{keep} is C{*}; Bcc, Date and other Content-*
        fields are reported as stripped.
        """
        policy = HeadersConfig(keep=("*",), strip=())
        result = parse(
            message(
                FROM + "To: b@example.org\nCc: c@example.org\nBcc: d@example.org\n"
                "Reply-To: r@example.org\nSubject: s\nSender: alice@example.com\n"
                "Date: Mon, 1 Jan 2024 00:00:00 +0000\nMIME-Version: 1.0\n"
                "Content-Type: text/plain\nContent-Transfer-Encoding: 7bit\n"
                "Content-Language: en\nKeywords: kept\n"
            ),
            policy,
        )
        self.assertEqual(result.headers, (("Keywords", "kept"),))
        self.assertEqual(result.stripped, ("Bcc", "Date", "Content-Language"))

    def test_header_values_never_hold_line_breaks(self) -> None:
        """
        Kept values are unfolded; NUL and encoded line breaks do not
        survive anywhere.
        """
        result = parse(
            message(FROM + "X-A: one\n two\nX-B: a\x00b\nX-Metadata-K: =?utf-8?q?x=0Ay?=\n")
        )
        self.assertEqual(result.headers, (("X-A", "one two"), ("X-B", "a b")))
        self.assertEqual(result.metadata, (("K", "x y"),))

    def test_empty_control_names_disable_them(self) -> None:
        """
        An empty stream, tracking, list_unsubscribe or metadata_prefix
        name turns that control off: such headers are ordinary.
        """
        policy = HeadersConfig(
            tags=(), stream="", tracking="", list_unsubscribe="", metadata_prefix=""
        )
        result = parse(
            message(FROM + "X-Stream: s\nX-Track: true\nX-Tags: t\nX-List-Unsubscribe: u\n"),
            policy,
        )
        self.assertEqual(
            (result.stream, result.track, result.tags, result.list_unsubscribe, result.mapped),
            (None, None, (), None, ()),
        )
        self.assertEqual(
            [name for name, _ in result.headers],
            ["X-Stream", "X-Track", "X-Tags", "X-List-Unsubscribe"],
        )

    @settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
    @given(fields=_header_fields(), policy=_policies())
    def test_every_field_lands_in_one_place(
        self, fields: list[tuple[str, str]], policy: HeadersConfig
    ) -> None:
        """
        Every header field lands in exactly one place (kept, mapped,
        stripped, or represented by a message field); kept headers obey
        C{keep}/C{strip}; no output value holds CR, LF or NUL; tags obey
        their limits.
        """
        head = "From: a@example.com\r\n" + "".join(f"{n}: {v}\r\n" for n, v in fields)
        data = head.encode("utf-8") + b"\r\nbody"
        result = parse(data, policy)
        kept = {name.lower() for name, _ in result.headers}
        mapped = {name.lower() for name in result.mapped}
        stripped = {name.lower() for name in result.stripped}
        control = {policy.stream.lower(), "x-track", "x-list-unsubscribe"} - {""}
        for name, _ in fields:
            key = name.lower()
            places = [key in kept, key in mapped, key in stripped, key in _REPRESENTED]
            self.assertEqual(places.count(True), 1, (name, places))
        for name, value in result.headers:
            key = name.lower()
            self.assertNotIn(key, _REPRESENTED | {"bcc", "date"} | control)
            self.assertFalse(key.startswith("content-"))
            self.assertFalse(key.startswith("x-metadata-"))
            self.assertFalse(_matches(key, policy.tags))
            if key == "message-id":
                self.assertTrue(policy.keep_message_id)
            else:
                self.assertTrue(_matches(key, policy.keep) and not _matches(key, policy.strip))
            self.assertFalse(set(value) & {"\r", "\n", "\0"}, value)
        for key in mapped:
            self.assertTrue(
                key in control or key.startswith("x-metadata-") or _matches(key, policy.tags), key
            )
        self.assertLessEqual(len(result.tags), policy.max_tags)
        self.assertEqual(len(set(result.tags)), len(result.tags))
        for text in (
            result.subject,
            *result.tags,
            *result.to,
            *result.cc,
            *result.reply_to,
            *(v for _, v in result.metadata),
            result.stream or "",
        ):
            self.assertFalse(set(text) & {"\r", "\n", "\0"}, text)
        for tag in result.tags:
            self.assertTrue(0 < len(tag) <= policy.max_tag_length)
            self.assertNotIn(",", tag)
            self.assertEqual(tag, tag.strip())

    @settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
    @given(
        tags=st.lists(
            st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=10).filter(
                lambda t: "=?" not in t
            ),
            max_size=8,
        ),
        max_tags=st.integers(0, 6),
        max_length=st.integers(1, 6),
    )
    def test_tags_are_distinct_cut_items(
        self, tags: list[str], max_tags: int, max_length: int
    ) -> None:
        """
        Tags are the trimmed, cut, non-empty, distinct comma separated
        items, in order, at most C{max_tags}.
        """
        policy = HeadersConfig(max_tags=max_tags, max_tag_length=max_length)
        value = ",".join(tags)
        data = b"From: a@example.com\r\nX-Tags: " + value.encode("utf-8") + b"\r\n\r\n"
        expected: list[str] = []
        for item in value.strip().split(","):
            tag = item.strip()[:max_length].strip()
            if tag and tag not in expected:
                expected.append(tag)
        self.assertEqual(parse(data, policy).tags, tuple(expected[:max_tags]))


class SortAgreesWithClassifyTests(RejectionAssertions):
    """
    L{sort_fields} (which remembers each name's place per policy) puts every
    field where L{classify} (which works it out afresh) says it goes.
    """

    @settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
    @given(
        fields=_header_fields(),
        policy=_policies(),
        required=st.lists(st.sampled_from(_NAMES), max_size=3),
        forward=st.lists(st.sampled_from(_NAMES), max_size=2),
    )
    def test_same_place_twice(
        self,
        fields: list[tuple[str, str]],
        policy: HeadersConfig,
        required: list[str],
        forward: list[str],
    ) -> None:
        """
        Sorted twice (the second time from the remembered places), every
        field lands where L{classify} says, and both sorts are equal.
        """
        policy = attrs.evolve(
            policy,
            required={name: "*" for name in required},
            required_forward=tuple(n for n in forward if n in required),
        )
        headers = Message(policy=compat32)
        for name, value in fields:
            headers.set_raw(name, value)
        first = sort_fields(headers, policy)
        self.assertEqual(sort_fields(headers, policy), first)
        kept = {name.lower() for name, _ in first.kept}
        mapped = {name.lower() for name in first.mapped}
        stripped = {name.lower() for name in first.stripped}
        for name, _ in fields:
            key = name.strip().lower()
            if not key:
                continue
            outcome, _ = classify(name, policy)
            places = {
                "represented": key in first.represented,
                "mapped": key in mapped,
                "kept": key in kept,
                "stripped": key in stripped,
            }
            self.assertTrue(places[outcome], (name, outcome, places))
            if key in policy_required(policy):
                self.assertIn(key, first.required)


def policy_required(policy: HeadersConfig) -> set[str]:
    """
    @return: The lower-case names of the required headers.
    """
    return {name.strip().lower() for name in policy.required}
