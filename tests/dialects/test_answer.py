"""
Reading a 2xx answer without parsing JSON (L{relayd.dialects.base.id_only}):
the same id as parsing it, for every body, and only when the dialect reads
the id as L{JSONDialect} does.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from relayd.dialects import DIALECTS, get_dialect
from relayd.dialects.base import MAX_ID, clean_id, id_only, parse_answer
from relayd.dialects.native import NativeDialect
from relayd.result import Accepted


def parsed_id(body: bytes) -> str:
    """
    The id as parsing the body finds it: L{clean_id} of its C{"id"}.
    """
    answer = parse_answer(body)
    return clean_id(answer.get("id")) if isinstance(answer, dict) else ""


#: Bodies that look like the fast case and are not, or are and look odd.
EDGES = [
    b'{"id":"abc"}',
    b' \r\n{ "id" : "abc" }\n',
    b'{"id":"' + b"x" * 150 + b'"}',
    b'{"id":""}',
    b'{"id":"a b"}',
    b'{"id":"a\\"b"}',
    b'{"id":"a\\u0041"}',
    b'{"id":"\xc3\xa9t\xc3\xa9"}',
    b'{"id":7}',
    b'{"id":"a","id":"b"}',
    b'{"id":"a","other":1}',
    b'{"id":"a"',
    b'{"id":"a"}x',
    b'{"id":"a"}\x0c',
    b'\xef\xbb\xbf{"id":"a"}',
    b'[{"id":"a"}]',
    b'{"ID":"a"}',
    b"",
]


class IdOnlyTests(SynchronousTestCase):
    def test_common_answer(self) -> None:
        """
        nginx's C{{"id":"$request_id"}} (the benchmark sink) and a spaced
        variant give their id.
        """
        self.assertEqual(
            id_only(b'{"id":"0f1e2d3c4b5a69788796a5b4c3d2e1f0"}'),
            "0f1e2d3c4b5a69788796a5b4c3d2e1f0",
        )
        self.assertEqual(id_only(b'{ "id": "<msg@example.com>" }\n'), "<msg@example.com>")

    def test_long_id_is_cut(self) -> None:
        self.assertEqual(id_only(b'{"id":"' + b"x" * 150 + b'"}'), "x" * MAX_ID)

    def test_escapes_and_other_shapes_are_left_to_json(self) -> None:
        """
        Anything but one unescaped visible-ASCII C{"id"} string is not read
        here (C{None}: parse it).
        """
        for body in [
            b'{"id":"a\\"b"}',
            b'{"id":"a b"}',
            b'{"id":7}',
            b'{"id":"a","x":1}',
            b'{"id":""}',
            b'\xef\xbb\xbf{"id":"a"}',
            b'{"id":"a"}\x0c',
        ]:
            self.assertIsNone(id_only(body), body)

    def test_edges_agree_with_parsing(self) -> None:
        for body in EDGES:
            found = id_only(body)
            if found is not None:
                self.assertEqual(found, parsed_id(body), body)

    @given(st.text(max_size=120), st.sampled_from(["", " ", "\r\n", "\t"]))
    def test_any_id_agrees_with_parsing(self, value: str, space: str) -> None:
        """
        For any string id, written as JSON would write it (escaped or not),
        the id read here, when there is one, is the id parsing finds.
        """
        for ascii_only in (True, False):
            # White space around the key's colon only (not a colon in the id).
            separators = (",", space + ":" + space)
            text = json.dumps({"id": value}, ensure_ascii=ascii_only, separators=separators)
            body = (space + text + space).encode()
            found = id_only(body)
            if found is not None:
                self.assertEqual(found, parsed_id(body))
            elif value and all("!" <= c <= "~" and c not in '"\\' for c in value):
                self.fail(f"a plain id was not read: {body!r}")

    @given(st.binary(max_size=200))
    def test_any_bytes_agree_with_parsing(self, body: bytes) -> None:
        found = id_only(body)
        if found is not None:
            self.assertEqual(found, parsed_id(body))


class ResultTests(SynchronousTestCase):
    def test_every_dialect_reads_the_common_answer_as_before(self) -> None:
        """
        Every built-in dialect's result for the common 2xx answer, and for
        answers the fast path leaves alone, is what parsing gives.
        """
        for name in DIALECTS:
            dialect: Any = get_dialect(name)
            for body in EDGES:
                for status in (200, 202, 400, 503):
                    expected = _parsed_result(dialect, status, body)
                    self.assertEqual(dialect.result(status, body), expected, (name, body))

    def test_dialect_with_its_own_message_id_is_asked(self) -> None:
        """
        A dialect (a plugin) that overrides C{message_id} reads even the
        common answer itself.
        """

        class Own(NativeDialect):
            def message_id(self, answer: object) -> str:
                return "own"

        self.assertEqual(Own().result(200, b'{"id":"abc"}'), Accepted("own"))

    def test_dialect_without_id_key(self) -> None:
        """
        A dialect that does not read C{"id"} does not find it.
        """

        class Other(NativeDialect):
            id_keys = ("MessageID",)

        self.assertEqual(Other().result(200, b'{"id":"abc"}'), Accepted(""))


def _parsed_result(dialect: Any, status: int, body: bytes) -> object:
    """
    C{dialect}'s result as parsing the answer gives it (the fast path off).
    """
    answer = parse_answer(body)
    if 200 <= status < 300:
        return Accepted(dialect.message_id(answer))
    return dialect.failure(status, answer)
