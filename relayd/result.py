# -*- test-case-name: tests.test_upstream -*-
"""
What the upstream did with a message: L{Accepted} (with its id) or the
L{Reply} to give the SMTP client.

The dialects build this value from the upstream's answer and the upstream
client returns it; the delivery path reads it.  This module is a leaf: it
imports only L{relayd.reply}, so each of those can import it without
importing the others.
"""

from __future__ import annotations

from attrs import frozen

from relayd.reply import Reply

__all__ = ["Accepted", "InFlight", "Outcome", "UpstreamResult"]


@frozen
class Accepted:
    """
    The upstream accepted the message.

    @ivar message_id: The upstream's id for it (printable ASCII, bounded).
    """

    message_id: str


#: L{Accepted}, or the L{Reply} (4xx or 5xx) the upstream's answer maps to.
UpstreamResult = Accepted | Reply


@frozen
class InFlight:
    """
    An upstream request for this idempotency key is open: sent, and its
    answer not yet known (L{relayd.idempotency}).

    @ivar since: When it was claimed, in the store clock's seconds.
    """

    since: float


#: What an idempotency record says of a key's request: still open, accepted
#: (L{Accepted}, with the upstream's id), or refused for good (the C{5xx}
#: L{Reply} the client was given).
Outcome = InFlight | Accepted | Reply
