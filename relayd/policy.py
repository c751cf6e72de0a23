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
from collections import deque

from twisted.internet.interfaces import IReactorTime

from relayd import reply as R
from relayd.message import OutboundMessage
from relayd.reply import Refused, Reply
from relayd.tokens import TokenPolicy

__all__ = ["MessageRates", "check_message", "upstream_refused_credential"]


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
