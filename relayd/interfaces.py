# -*- test-case-name: tests.test_interfaces -*-
"""
The seams between relayd's parts, as C{zope.interface} interfaces.

Each is implemented by the real component and by its fake in
L{relayd.testing}; tests check both with C{verifyObject}.
"""

from __future__ import annotations

from zope.interface import Attribute, Interface  # noqa: F401

from relayd.message import OutboundMessage
from relayd.result import UpstreamResult

# -- the avatar: what an authenticated SMTP session submits to -------------


# -- the upstream request format (a dialect) -------------------------------


class IDialect(Interface):
    """
    One upstream API's request format and answer format (implemented by
    the modules of L{relayd.dialects}, found by name with
    L{relayd.dialects.get_dialect}).
    """

    name = Attribute("The dialect's name in C{upstream.dialect} (C{str}).")
    token_header = Attribute(
        "Default request header carrying the client's token (C{str}), used "
        "when C{upstream.token_header} is empty."
    )
    token_format = Attribute(
        "Default value of that header (C{str}); C{{token}} is replaced by "
        "the token.  Used when C{upstream.token_format} is empty."
    )
    path = Attribute(
        "The provider's documented endpoint path (C{str}), for the "
        "documentation only: the request goes to C{upstream.url} as is."
    )

    def body(message: OutboundMessage) -> bytes:
        """
        Build the JSON request body for C{message}.

        @param message: The message to relay.
        @return: The UTF-8 encoded JSON document.
        @raise relayd.reply.Refused: When this upstream cannot
            carry the message (for example a signed message through an API
            that rebuilds the MIME structure).
        """

    def result(status: int, body: bytes) -> UpstreamResult:
        """
        Read the upstream's answer.

        @param status: The HTTP status code of the answer.
        @param body: The answer's body (possibly truncated, possibly not
            JSON at all).
        @return: L{relayd.result.Accepted} or L{relayd.reply.Reply}; never
            raises.
        """
