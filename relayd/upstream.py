# -*- test-case-name: tests.test_upstream -*-
"""
CONTRACT STUB: the upstream client (treq).  Types fixed, code being written.
"""

from __future__ import annotations

from attrs import frozen


@frozen
class Accepted:
    """
    The upstream accepted the message.

    @ivar message_id: The upstream's id for it (printable ASCII, bounded).
    """

    message_id: str


@frozen
class Failed:
    """
    The upstream did not accept the message: the SMTP reply to give.

    @ivar code: Reply code: 4xx (the client should retry) or 5xx (not).
    @ivar status: Enhanced status code (RFC 3463), e.g. C{"4.3.0"}.
    @ivar text: One line of printable ASCII, bounded in length.
    """

    code: int
    status: str
    text: str


UpstreamResult = Accepted | Failed
