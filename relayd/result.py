# -*- test-case-name: tests.test_upstream -*-
"""
What the upstream did with a message: L{Accepted} (with its id), the
L{Reply} to give the SMTP client, or L{NotSent} (the request certainly never
left).

The dialects build this value from the upstream's answer and the upstream
client returns it; the delivery path reads it.  This module is a leaf: it
imports only L{relayd.reply}, so each of those can import it without
importing the others.
"""

from __future__ import annotations

from attrs import frozen

from relayd.reply import Reply

__all__ = ["Accepted", "InFlight", "NotSent", "Outcome", "UpstreamResult"]


@frozen
class Accepted:
    """
    The upstream accepted the message.

    @ivar message_id: The upstream's id for it (printable ASCII, bounded).
    """

    message_id: str


@frozen
class NotSent:
    """
    The request certainly never reached the upstream: the connection was
    refused, the name did not resolve, the TLS handshake failed, or the
    deadline passed while connecting; no byte of the request was written to
    the upstream.  The delivery path may release the transaction's
    idempotency claim and a route may fail over to another upstream.

    @ivar reply: The temporary L{Reply} for the SMTP client (C{451 4.3.0}).
    """

    reply: Reply


#: L{Accepted}; the L{Reply} (4xx or 5xx) the upstream's answer, or a
#: request that may have been sent and got no answer, maps to; or
#: L{NotSent}.
UpstreamResult = Accepted | Reply | NotSent


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
