# -*- test-case-name: tests.test_policy -*-
"""
The per-customer policy checks that need more than one field of
L{relayd.tokens.TokenPolicy}: attachments at the end of DATA, messages per
minute at MAIL FROM, and recognising the upstream's refusal of a
credential.

No reactor code here: the clock is passed in.
"""

from __future__ import annotations

import hashlib
import re
from collections import deque

import attrs
from twisted.internet.interfaces import IReactorTime

from relayd import reply as R
from relayd.config import HeadersConfig
from relayd.message import Envelope, OutboundMessage, parse_message
from relayd.reply import Refused, Reply
from relayd.tokens import TokenPolicy

__all__ = [
    "MessageRates",
    "check_message",
    "parse_with_policy",
    "stream_defaults",
    "upstream_refused_credential",
]

#: The top-level From field(s) of a message, with their folded lines.
_FROM_FIELD = re.compile(rb"^From[ \t]*:.*?\r\n(?![ \t])", re.IGNORECASE | re.MULTILINE | re.DOTALL)

#: Stands in for an invalid From while the message is parsed again.
_STAND_IN = b"From: placeholder@invalid.invalid\r\n"


def parse_with_policy(data: bytes, envelope: Envelope, policy: HeadersConfig) -> OutboundMessage:
    """
    L{relayd.message.parse_message}, then the deployment's rules that the
    message pipeline leaves open: an invalid From replaced by a placeholder
    (C{[headers] invalid_from = "placeholder"}), and the stream's defaults
    (C{[[headers.stream_defaults]]}).

    @param data: The message, CRLF line ends.
    @param envelope: The transaction's envelope.
    @param policy: The C{[headers]} table.
    @return: The message for the upstream.
    @raise Refused: As L{relayd.message.parse_message}.
    """
    try:
        message = parse_message(data, envelope, policy)
    except Refused as e:
        if policy.invalid_from != "placeholder" or e.reply not in (
            R.FROM_WITHOUT_ADDRESS,
            R.NO_FROM_HEADER,
        ):
            raise
        head, sep, body = data.partition(b"\r\n\r\n")
        head = _FROM_FIELD.sub(b"", head + b"\r\n")
        message = parse_message(_STAND_IN + head + sep[2:] + body, envelope, policy)
        message = attrs.evolve(message, from_=policy.from_placeholder, author_address="")
    return stream_defaults(message, policy)


def stream_defaults(message: OutboundMessage, policy: HeadersConfig) -> OutboundMessage:
    """
    Apply the defaults of the message's stream where the message says
    nothing.

    @param message: The parsed message.
    @param policy: The C{[headers]} table.
    @return: The message, with C{track} and C{list_unsubscribe} filled in.
    """
    for defaults in policy.stream_defaults:
        if defaults.stream != message.stream:
            continue
        track = message.track
        if track is None and defaults.tracking != "default":
            track = defaults.tracking == "on"
        unsubscribe = message.list_unsubscribe or defaults.list_unsubscribe or None
        return attrs.evolve(message, track=track, list_unsubscribe=unsubscribe)
    return message


def check_message(message: OutboundMessage, policy: TokenPolicy) -> None:
    """
    The checks of the end of DATA that the message pipeline does not make.

    @param message: The parsed message.
    @param policy: The customer's policy.
    @raise Refused: L{relayd.reply.ATTACHMENTS_NOT_ALLOWED} for a message
        with an attachment (inline parts too: they are files) when the
        policy forbids them.
    """
    if not policy.attachments and message.attachments:
        raise Refused(R.ATTACHMENTS_NOT_ALLOWED)


def upstream_refused_credential(reply: Reply) -> bool:
    """
    Is C{reply} the upstream's refusal of the credential?  The dialects map
    HTTP 401 and 403 to C{554 5.7.1}
    (L{relayd.dialects.base.failure_for_status}).
    """
    return reply.code == 554 and reply.status == "5.7.1"


class MessageRates:
    """
    Transactions per credential in the last 60 seconds (a sliding window),
    for C{messages_per_minute}.  Credentials are kept as SHA-256 digests.
    """

    WINDOW = 60.0

    def __init__(self, clock: IReactorTime) -> None:
        """
        @param clock: Time source.
        """
        self._clock = clock
        self._seen: dict[bytes, deque[float]] = {}

    def allow(self, credential: str, policy: TokenPolicy) -> bool:
        """
        Count one transaction for C{credential} if the policy allows it.

        @param credential: The client's credential.
        @param policy: Its policy; no C{messages_per_minute}: always allowed
            (and not counted).
        @return: Whether the transaction may start.
        """
        limit = policy.messages_per_minute
        if limit is None:
            return True
        key = hashlib.sha256(credential.encode("utf-8", "surrogatepass")).digest()
        now = self._clock.seconds()
        times = self._seen.setdefault(key, deque())
        while times and times[0] <= now - self.WINDOW:
            times.popleft()
        if len(times) >= limit:
            return False
        times.append(now)
        if len(self._seen) > 100000:  # bound memory: forget idle credentials
            for k in [k for k, v in self._seen.items() if not v or v[-1] <= now - self.WINDOW]:
                del self._seen[k]
        return True
