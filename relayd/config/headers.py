# -*- test-case-name: tests.test_config -*-
"""
The C{[headers]} table: the header policy of this deployment, with its
per-stream defaults.

This module imports no reactor code.
"""

from __future__ import annotations

from typing import Literal

from attrs import field, frozen

__all__ = ["HeadersConfig", "StreamDefaultsConfig"]


@frozen
class StreamDefaultsConfig:
    """
    One C{[[headers.stream_defaults]]} entry: what a stream implies when the
    message does not say (Krafter: tracking off on C{transactional}, on
    and a List-Unsubscribe on C{broadcast}).

    @ivar stream: The stream these defaults are for.
    @ivar tracking: C{"on"} or C{"off"}: the tracking value when the
        tracking header is absent (or not C{true}/C{false}); C{"default"}:
        leave it to the upstream.
    @ivar list_unsubscribe: The list-unsubscribe value when the message has
        none (RFC 2369 syntax, C{<https://...>, <mailto:...>}); empty: none.
    """

    stream: str
    tracking: Literal["default", "on", "off"] = "default"
    list_unsubscribe: str = ""


@frozen
class HeadersConfig:
    """
    The C{[headers]} table: the header policy of this deployment.

    Header names are matched case-insensitively.  Patterns may end in C{*}
    to match a prefix (C{"X-*"}).

    @ivar tags: Headers tags are read from (comma separated values).
    @ivar max_tags: At most this many tags are sent; more are dropped.
    @ivar max_tag_length: Longer tags are cut to this many characters.
    @ivar stream: Header naming the message stream / type (empty: none).
    @ivar streams: Allowed stream values (empty: any value).
    @ivar default_stream: Stream used when the header is absent.
    @ivar tracking: Header with C{true}/C{false} tracking override.
    @ivar list_unsubscribe: Header mapped to the upstream's list-unsubscribe
        field.
    @ivar metadata_prefix: Headers C{<prefix><key>: value} become metadata.
    @ivar required: Header name to required value; a message without it
        gets C{550 5.7.1}.
    @ivar keep: Header patterns passed through to the upstream.
    @ivar strip: Header patterns never passed through (wins over C{keep}).
    @ivar keep_message_id: Pass C{Message-ID} through.
    @ivar required_forward: Required headers that are also passed through
        to the upstream (others are consumed).  A required value of C{"*"}
        asks for presence only (any non-empty value).
    @ivar stream_defaults: Per-stream defaults (L{StreamDefaultsConfig}).
    @ivar invalid_from: C{"refuse"}: a From without a valid address gets
        C{550 5.6.0}; C{"placeholder"}: the message goes with
        C{from_placeholder} as its From (enKod's C{EMPTY-FROM}).
    @ivar from_placeholder: The From given to the upstream for an invalid
        From with C{invalid_from = "placeholder"}.
    @ivar missing_from: A message without a From header field:
        C{"reject"} refuses it (C{550 5.6.0}, RFC 5322 section 3.6.2);
        C{"envelope"} adds C{From:} with the authenticated reverse-path, as
        a submission server may (RFC 6409 section 8.1); a message with the
        null reverse-path is refused either way.
    """

    tags: tuple[str, ...] = ("X-Tags",)
    max_tags: int = 10
    max_tag_length: int = 100
    stream: str = "X-Stream"
    streams: tuple[str, ...] = ()
    default_stream: str = ""
    tracking: str = "X-Track"
    list_unsubscribe: str = "X-List-Unsubscribe"
    metadata_prefix: str = "X-Metadata-"
    required: dict[str, str] = field(factory=dict)
    keep: tuple[str, ...] = (
        "In-Reply-To",
        "References",
        "List-*",
        "X-*",
        # RFC 3834 section 5: marks automatic mail, so that responders do
        # not answer it (and loop).
        "Auto-Submitted",
        # RFC 2076 section 3.9, RFC 3834 section 3.1.8: bulk/list mail.
        "Precedence",
        # Gmail's feedback loop identifier, set by the sender.
        "Feedback-ID",
    )
    strip: tuple[str, ...] = (
        "Received",
        "Return-Path",
        "DKIM-Signature",
        "ARC-*",
        "Authentication-Results",
        "Bcc",
        "Message-ID",
        "X-Original-To",
        "Delivered-To",
    )
    keep_message_id: bool = False
    required_forward: tuple[str, ...] = ()
    stream_defaults: tuple[StreamDefaultsConfig, ...] = ()
    invalid_from: Literal["refuse", "placeholder"] = "refuse"
    from_placeholder: str = "EMPTY-FROM"
    missing_from: Literal["reject", "envelope"] = "reject"
