# -*- test-case-name: tests.message.test_headers -*-
"""
The header policy: which top-level header fields of a message are kept,
mapped to control fields (tags, stream, tracking, list-unsubscribe,
metadata, required headers) or stripped, by the C{[headers]} table
(L{relayd.config.HeadersConfig}).

Every top-level field (RFC 5322 section 3.6) lands in exactly one place:

  - represented by a field of L{relayd.message.model.OutboundMessage}
    (From, Sender, To, Cc, Reply-To, Subject, MIME-Version, Content-Type,
    Content-Transfer-Encoding, Content-Disposition, Content-ID);
  - mapped: a control header the policy names, consumed;
  - kept (L{HeadersConfig.keep} and not L{HeadersConfig.strip}): passed on
    with its value as the client wrote it (encoded words included, since
    they are re-emitted into a message), only unfolded (RFC 5322 section
    2.2.3);
  - stripped: everything else, Bcc and Date always.

Control values and the Subject are decoded from RFC 2047 encoded words and
8-bit UTF-8 (RFC 6532).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from email.message import Message

from attrs import define, field

from relayd.config import HeadersConfig
from relayd.message.decoding import decode_words, header_text
from relayd.reply import Refused, missing_required_header, unknown_stream

__all__ = [
    "SortedFields",
    "check_required",
    "classify",
    "first_text",
    "printable",
    "read_stream",
    "read_subject",
    "read_tags",
    "read_track",
    "sort_fields",
]

# Represented by fields of OutboundMessage, never passed through, never
# reported as stripped.
_REPRESENTED = frozenset(
    {
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
)
# Never passed through, whatever the policy keeps.
_NEVER_KEPT = frozenset({"bcc", "date"})

# Where a top-level field goes (_Rules.kind).
(
    _KIND_REPRESENTED,
    _KIND_STREAM,
    _KIND_TRACKING,
    _KIND_UNSUBSCRIBE,
    _KIND_TAGS,
    _KIND_METADATA,
    _KIND_REQUIRED,
    _KIND_KEPT,
    _KIND_STRIPPED,
) = range(9)

# Most field names whose kind one policy's rules remember: a deployment
# sees a few dozen; a client inventing names does not grow the table.
_KINDS_CACHED = 1024


def _matcher(patterns: Iterable[str]) -> Callable[[str], bool]:
    """
    Compile header name patterns.

    @param patterns: Names, or prefixes ending in C{*}; any case.
    @return: A test of a lower-case header name.
    """
    exact = set()
    prefixes = []
    for pattern in patterns:
        pattern = pattern.strip().lower()
        if pattern.endswith("*"):
            prefixes.append(pattern[:-1])
        elif pattern:
            exact.add(pattern)
    starts = tuple(prefixes)
    return lambda name: name in exact or name.startswith(starts)


def _tags(values: list[str], policy: HeadersConfig) -> tuple[str, ...]:
    """
    Read tags from comma separated header values.

    @param values: Decoded header values, in message order.
    @param policy: The header policy (C{max_tags}, C{max_tag_length}).
    @return: Tags: trimmed, cut to C{max_tag_length} characters, empty
        ones dropped, duplicates dropped (first kept), at most C{max_tags}.
    """
    tags: list[str] = []
    for value in values:
        for item in value.split(","):
            tag = item.strip()[: policy.max_tag_length].strip()
            if tag and tag not in tags:
                if len(tags) >= policy.max_tags:
                    return tuple(tags)
                tags.append(tag)
    return tuple(tags)


def _add_name(names: list[str], seen: set[str], name: str) -> None:
    """
    Append a header name once, comparing case-insensitively.
    """
    key = name.lower()
    if key not in seen:
        seen.add(key)
        names.append(name)


def printable(text: str, limit: int = 64) -> str:
    """
    Make text safe to quote in an SMTP reply: printable ASCII, bounded.

    @param text: Text from the message.
    @param limit: The most characters kept.
    @return: C{text} with every other character replaced by C{?}.
    """
    cut = text[:limit]
    safe = "".join(c if " " <= c <= "~" else "?" for c in cut)
    return safe + ("..." if len(text) > limit else "")


class _Rules:
    """
    The header policy in the form the fields are sorted by: lower-case
    names and compiled patterns.  Empty control names disable a control.
    """

    __slots__ = (
        "is_tags",
        "is_kept",
        "is_stripped",
        "stream",
        "tracking",
        "unsubscribe",
        "prefix",
        "required",
        "forwarded",
        "keep_message_id",
        "kinds",
    )

    def __init__(self, policy: HeadersConfig) -> None:
        self.is_tags = _matcher(policy.tags)
        self.is_kept = _matcher(policy.keep)
        self.is_stripped = _matcher(policy.strip)
        self.stream = policy.stream.strip().lower()
        self.tracking = policy.tracking.strip().lower()
        self.unsubscribe = policy.list_unsubscribe.strip().lower()
        self.prefix = policy.metadata_prefix.strip().lower()
        self.required = {name.strip().lower(): name for name in policy.required}
        self.forwarded = frozenset(name.strip().lower() for name in policy.required_forward)
        self.keep_message_id = policy.keep_message_id
        self.kinds: dict[str, int] = {}

    def kind(self, key: str) -> int:
        """
        Where a field of this name goes, by the rules of L{sort_fields}:
        represented, one of the control headers (the stream, tracking,
        list-unsubscribe, tags, metadata, a required header consumed), kept
        or stripped.  The answer depends on the name alone, so it is
        remembered (for the first L{_KINDS_CACHED} names).

        @param key: The field name, lower case, stripped.
        @return: One of the C{_KIND_*} constants.
        """
        if key in _REPRESENTED:
            kind = _KIND_REPRESENTED
        elif self.stream and key == self.stream:
            kind = _KIND_STREAM
        elif self.tracking and key == self.tracking:
            kind = _KIND_TRACKING
        elif self.unsubscribe and key == self.unsubscribe:
            kind = _KIND_UNSUBSCRIBE
        elif self.is_tags(key):
            kind = _KIND_TAGS
        elif self.prefix and key.startswith(self.prefix):
            kind = _KIND_METADATA
        elif key in self.required and key not in self.forwarded:
            kind = _KIND_REQUIRED
        elif key == "message-id":
            kind = _KIND_KEPT if self.keep_message_id else _KIND_STRIPPED
        elif key in self.forwarded:
            kind = _KIND_KEPT
        elif (
            key not in _NEVER_KEPT
            and not key.startswith("content-")
            and self.is_kept(key)
            and not self.is_stripped(key)
        ):
            kind = _KIND_KEPT
        else:
            kind = _KIND_STRIPPED
        if len(self.kinds) < _KINDS_CACHED:
            self.kinds[key] = kind
        return kind


class _RulesCache:
    """
    The rules of the last policy seen.  A deployment uses one policy for
    every message, so they are compiled once rather than per message; a
    new policy object (a reloaded configuration) replaces them.
    """

    __slots__ = ("entry",)

    def __init__(self) -> None:
        self.entry: tuple[HeadersConfig, _Rules] | None = None

    def get(self, policy: HeadersConfig) -> _Rules:
        """
        @param policy: The C{[headers]} table.
        @return: Its rules.
        """
        entry = self.entry
        if entry is not None and entry[0] is policy:
            return entry[1]
        rules = _Rules(policy)
        self.entry = (policy, rules)
        return rules


_RULES = _RulesCache()


@define
class SortedFields:
    """
    The top-level header fields of one message, sorted by the policy.
    Values are raw, as C{Message.raw_items} gives them, in message order.

    @ivar represented: Values of the represented fields, by lower-case name.
    @ivar streams: Values of the stream header.
    @ivar tracking: Values of the tracking header.
    @ivar unsubscribe: Values of the list-unsubscribe header.
    @ivar tags: Values of the tags headers.
    @ivar metadata: C{(key, decoded value)} of the metadata headers; of
        keys equal but for case, the first.
    @ivar required: Values of the required headers, by lower-case name.
    @ivar kept: C{(name, unfolded value)} of the kept fields.
    @ivar mapped: Names of the consumed control headers, each once,
        spelled as first seen.
    @ivar stripped: Names of the stripped fields, each once, spelled as
        first seen.
    """

    represented: dict[str, list[str]] = field(factory=dict)
    streams: list[str] = field(factory=list)
    tracking: list[str] = field(factory=list)
    unsubscribe: list[str] = field(factory=list)
    tags: list[str] = field(factory=list)
    metadata: list[tuple[str, str]] = field(factory=list)
    required: dict[str, list[str]] = field(factory=dict)
    kept: list[tuple[str, str]] = field(factory=list)
    mapped: list[str] = field(factory=list)
    stripped: list[str] = field(factory=list)
    _metadata_seen: set[str] = field(factory=set)
    _mapped_seen: set[str] = field(factory=set)
    _stripped_seen: set[str] = field(factory=set)

    def add_metadata(self, key: str, raw: str) -> None:
        """
        Record a metadata header, unless one of its key (but for case) was
        recorded before.
        """
        if key.lower() not in self._metadata_seen:
            self._metadata_seen.add(key.lower())
            self.metadata.append((key, decode_words(header_text(raw))))

    def add_mapped(self, name: str) -> None:
        """
        Record a consumed control header's name.
        """
        _add_name(self.mapped, self._mapped_seen, name)

    def add_stripped(self, name: str) -> None:
        """
        Record a stripped field's name.
        """
        _add_name(self.stripped, self._stripped_seen, name)


def sort_fields(headers: Message, policy: HeadersConfig) -> SortedFields:
    """
    Sort the top-level header fields of a message by the header policy.

    @param headers: The message's parsed header section.
    @param policy: The C{[headers]} table of the configuration.
    @return: The sorted fields.
    """
    rules = _RULES.get(policy)
    fields = SortedFields()
    required = rules.required
    for name, raw in headers.raw_items():
        name = name.strip()
        key = name.lower()
        if not key:
            continue
        if key in required:
            fields.required.setdefault(key, []).append(raw)
        kind = rules.kinds.get(key)
        if kind is None:
            kind = rules.kind(key)
        if kind == _KIND_REPRESENTED:
            fields.represented.setdefault(key, []).append(raw)
        elif kind == _KIND_KEPT:
            fields.kept.append((name, header_text(raw)))
        elif kind == _KIND_STRIPPED:
            fields.add_stripped(name)
        else:
            _map_control(rules, fields, kind, name, raw)
    return fields


def _map_control(rules: _Rules, fields: SortedFields, kind: int, name: str, raw: str) -> None:
    """
    Consume a field that is a control header of the policy.

    @param rules: The policy.
    @param fields: Where the field goes.
    @param kind: Which control header it is (L{_Rules.kind}).
    @param name: Its name as written.
    @param raw: Its raw value.
    """
    if kind == _KIND_STREAM:
        fields.streams.append(raw)
    elif kind == _KIND_TRACKING:
        fields.tracking.append(raw)
    elif kind == _KIND_UNSUBSCRIBE:
        fields.unsubscribe.append(raw)
    elif kind == _KIND_TAGS:
        fields.tags.append(raw)
    elif kind == _KIND_METADATA:
        meta_key = name[len(rules.prefix) :].strip()
        if not meta_key:
            # A metadata header without a key is stripped.
            fields.add_stripped(name)
            return
        fields.add_metadata(meta_key, raw)
    fields.add_mapped(name)


def classify(name: str, policy: HeadersConfig) -> tuple[str, str]:
    """
    Where one top-level header field goes under the policy, and why: the
    rules of L{sort_fields}, in words (for C{relayd explain}).

    @param name: The field name, any case.
    @param policy: The C{[headers]} table.
    @return: C{(outcome, reason)}; the outcome is one of C{"represented"},
        C{"mapped"}, C{"kept"}, C{"stripped"}.
    """
    rules = _RULES.get(policy)
    key = name.strip().lower()
    if key in _REPRESENTED:
        return "represented", "a field of the request of its own"
    controls = [
        (rules.stream, "the stream (headers.stream)"),
        (rules.tracking, "tracking (headers.tracking)"),
        (rules.unsubscribe, "list-unsubscribe (headers.list_unsubscribe)"),
    ]
    for control, reason in controls:
        if control and key == control:
            return "mapped", reason
    if rules.is_tags(key):
        return "mapped", "tags (headers.tags)"
    if rules.prefix and key.startswith(rules.prefix):
        if not key[len(rules.prefix) :].strip():
            return "stripped", "the metadata prefix without a key"
        return "mapped", "metadata (headers.metadata_prefix)"
    if key in rules.required and key not in rules.forwarded:
        return "mapped", "a required header, checked and consumed (headers.required)"
    if key == "message-id":
        if rules.keep_message_id:
            return "kept", "headers.keep_message_id = true"
        return "stripped", "headers.keep_message_id = false"
    if key in rules.forwarded:
        return "kept", "a required header passed on (headers.required_forward)"
    if key in _NEVER_KEPT:
        return "stripped", "never passed on (Bcc, Date)"
    if key.startswith("content-"):
        return "stripped", "a MIME field of the message's own"
    if rules.is_stripped(key):
        return "stripped", "in headers.strip"
    if not rules.is_kept(key):
        return "stripped", "not in headers.keep"
    return "kept", "in headers.keep"


def check_required(values: Mapping[str, list[str]], policy: HeadersConfig) -> None:
    """
    Check the required headers (L{HeadersConfig.required}).

    @param values: Raw values of the required headers, by lower-case name.
    @param policy: The C{[headers]} table.
    @raise relayd.reply.Refused: C{550 5.7.1} naming the first required
        header that no field of that name holds with the required value
        (compared case-insensitively, decoded); a required value of
        C{"*"} is met by any non-empty value.
    """
    for key, configured in _RULES.get(policy).required.items():
        wanted = policy.required[configured].strip().casefold()
        present = [decode_words(header_text(v)).strip().casefold() for v in values.get(key, [])]
        if wanted == "*":
            if not any(present):
                raise Refused(missing_required_header(printable(configured)))
        elif wanted not in present:
            raise Refused(missing_required_header(printable(configured)))


def first_text(values: Iterable[str]) -> str | None:
    """
    The first non-empty value of a control header.

    @param values: Raw values, in message order.
    @return: It, decoded and stripped, or C{None}.
    """
    for raw in values:
        value = decode_words(header_text(raw)).strip()
        if value:
            return value
    return None


def read_stream(values: Iterable[str], policy: HeadersConfig) -> str | None:
    """
    The message stream: the first non-empty stream header value, spelled as
    configured in L{HeadersConfig.streams} (compared case-insensitively)
    when that is set; else L{HeadersConfig.default_stream}.

    @param values: Raw values of the stream header, in message order.
    @param policy: The C{[headers]} table.
    @return: The stream, or C{None}.
    @raise relayd.reply.Refused: C{550 5.7.1} for a stream that
        L{HeadersConfig.streams} does not list.
    """
    stream = first_text(values)
    if stream is not None and policy.streams and stream not in policy.streams:
        folded = {s.casefold(): s for s in policy.streams}
        if stream.casefold() not in folded:
            raise Refused(unknown_stream(printable(stream)))
        stream = folded[stream.casefold()]
    if stream is None:
        stream = policy.default_stream or None
    return stream


def read_track(values: Iterable[str]) -> bool | None:
    """
    The tracking override: the first tracking header value that is
    C{true} or C{false} (any case).

    @param values: Raw values of the tracking header, in message order.
    @return: C{True}, C{False}, or C{None} when there is none.
    """
    for raw in values:
        value = header_text(raw).lower()
        if value in ("true", "false"):
            return value == "true"
    return None


def read_tags(values: Iterable[str], policy: HeadersConfig) -> tuple[str, ...]:
    """
    The tags: comma separated items of the tags headers, decoded.

    @param values: Raw values of the tags headers, in message order.
    @param policy: The C{[headers]} table (C{max_tags}, C{max_tag_length}).
    @return: Tags: trimmed, cut to C{max_tag_length} characters, empty
        ones dropped, duplicates dropped (first kept), at most C{max_tags}.
    """
    return _tags([decode_words(header_text(v)) for v in values], policy)


def read_subject(values: list[str]) -> str:
    """
    The subject (RFC 5322 section 3.6.5): the first Subject field, unfolded
    and decoded (RFC 2047, RFC 6532).

    @param values: Raw values of the Subject fields.
    @return: The subject, stripped; C{""} when there is none.
    """
    return decode_words(header_text(values[0])).strip() if values else ""
