# -*- test-case-name: tests.test_policy -*-
"""
The per-customer policy checks that need more than one field of
L{relayd.tokens.TokenPolicy}: attachments at the end of DATA, messages per
minute at MAIL FROM (counted in an L{ICounters}), and recognising the
upstream's refusal of a credential.

No reactor code here: the counters are passed in.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from collections.abc import Callable

import attrs
from twisted.internet.defer import Deferred

from relayd import reply as R
from relayd.config import HeadersConfig
from relayd.interfaces import ICounters
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
    Messages per minute at MAIL FROM, counted in an L{ICounters} (in this
    process, or shared by a fleet through Redis): the customer's
    C{messages_per_minute} (its policy), and C{[limits]}
    C{messages_per_minute_per_token} and C{messages_per_minute_per_ip}.

    Each limit is a sliding window of L{WINDOW} seconds.  Every limit is
    read first and the transaction is counted only when all allow it, so a
    refused MAIL uses up nothing; MAILs checked at the same moment on
    several processes may each pass, so a burst can exceed a limit by the
    number of MAILs in flight.  Credentials become SHA-256 digests before
    they are keys; an IPv6 client counts for its /64 (RFC 6177).
    """

    WINDOW = 60.0

    def __init__(self, counters: ICounters, per_token: int = 0, per_ip: int = 0) -> None:
        """
        @param counters: Where the messages are counted.
        @param per_token: C{[limits] messages_per_minute_per_token}; 0: off.
        @param per_ip: C{[limits] messages_per_minute_per_ip}; 0: off.
        """
        self.counters = counters
        self.per_token = per_token
        self.per_ip = per_ip

    def applies(self, policy: TokenPolicy) -> bool:
        """
        @return: Whether any limit counts the transactions of C{policy}
            (else L{check} need not be called: MAIL is answered at once).
        """
        return bool(policy.messages_per_minute or self.per_token or self.per_ip)

    def check(self, credential: str, ip: str | None, policy: TokenPolicy) -> Deferred[None]:
        """
        Count one transaction if every limit allows it.

        @param credential: The key of the customer (its credential, or the
            identity of its policy).
        @param ip: The client's address (from the PROXY header behind a
            load balancer), or C{None} when unknown (not counted per IP).
        @param policy: The customer's policy (C{messages_per_minute}).
        @return: A Deferred firing with C{None} once counted, or failing
            with L{Refused}: L{relayd.reply.MESSAGE_RATE_EXCEEDED} (the
            policy's limit), L{relayd.reply.token_rate_exceeded} or
            L{relayd.reply.ip_rate_exceeded} (RFC 3463 X.7.1, temporary,
            with the seconds to wait).
        """
        return Deferred.fromCoroutine(self._check(credential, ip, policy))

    async def _check(self, credential: str, ip: str | None, policy: TokenPolicy) -> None:
        digest = hashlib.sha256(credential.encode("utf-8", "surrogatepass")).hexdigest()[:32]
        limits: list[tuple[str, int, Callable[[int], Reply]]] = []
        if policy.messages_per_minute:
            limits.append(("msg:c:" + digest, policy.messages_per_minute, _customer_rate))
        if self.per_token:
            limits.append(("msg:t:" + digest, self.per_token, R.token_rate_exceeded))
        if self.per_ip and ip:
            limits.append(("msg:i:" + _network(ip), self.per_ip, R.ip_rate_exceeded))
        for key, limit, refusal in limits:
            if await self.counters.count(key, self.WINDOW) >= limit:
                raise Refused(refusal(await self._wait(key, limit)))
        for key, _, _ in limits:
            await self.counters.hit(key, self.WINDOW)

    async def _wait(self, key: str, limit: int) -> int:
        """
        @return: The whole seconds until fewer than C{limit} events of
            C{key} are in the window (a binary search on shorter windows:
            a few reads, for a refusal only).
        """
        low, high = 1, int(self.WINDOW)
        while low < high:
            middle = (low + high) // 2
            if await self.counters.count(key, self.WINDOW - middle) < limit:
                high = middle
            else:
                low = middle + 1
        return low


def _customer_rate(wait: int) -> Reply:
    return R.MESSAGE_RATE_EXCEEDED


def _network(ip: str) -> str:
    """
    The address a client counts for: itself, or its /64 for IPv6.
    """
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return ip
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is None:
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(getattr(address, "ipv4_mapped", None) or address)
