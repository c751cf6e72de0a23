# -*- test-case-name: tests.test_interfaces -*-
"""
The seams between relayd's parts, as C{zope.interface} interfaces.

Each is implemented by the real component and by its fake in
L{relayd.testing}; tests check both with C{verifyObject}.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from zope.interface import Attribute, Interface  # noqa: F401

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred

    from relayd.reply import Reply

# -- the avatar: what an authenticated SMTP session submits to -------------


class ISubmissionMessage(Interface):
    """
    The message of one SMTP transaction, as the session hands it over.
    """

    def bodyReceived(data: bytes) -> None:
        """
        Take message content: complete lines with CRLF line ends, dot-
        stuffing already undone (RFC 5321 section 4.5.2).  Called once per
        message, with the whole content, in bytes.
        """

    def eomReceived() -> Deferred[Reply]:
        """
        The final dot arrived: deliver the message.

        @return: A Deferred that fires with the L{relayd.reply.Reply} for
            the client (C{250} only when the message was taken); it never
            fails.
        """

    def connectionLost() -> None:
        """
        The transaction was abandoned (or the message failed as it
        arrived): forget the content.
        """


class ISubmission(Interface):
    """
    relayd's avatar: what an authenticated SMTP session submits to (the
    realm returns it for this interface).

    Addresses arrive as C{str} mailboxes (C{local@domain}, C{""} for the
    null reverse-path), already checked for RFC 5321 section 4.1.2 syntax.
    A validation answers at once or with a Deferred; either raises (or
    fails with) L{relayd.reply.Refused} to refuse with its reply.
    """

    name = Attribute("The policy (token) name, for logs; never the token itself.")
    max_message_size = Attribute(
        "The avatar's own message size limit in bytes, or None; the session uses the lower"
        " of it and the configured one."
    )
    max_recipients = Attribute(
        "The avatar's own limit of forward-paths per transaction, or None; the session uses"
        " the lower of it and the configured one."
    )

    def validateFrom(helo: object, origin: str, smtputf8: bool = False) -> object:
        """
        Validate the reverse-path of MAIL FROM and begin a transaction.

        @param helo: C{(EHLO argument, client IP)}.
        @param origin: The reverse-path mailbox.
        @param smtputf8: The client gave the SMTPUTF8 parameter (RFC 6531).
        @return: Any value, or a Deferred of one.
        @raise relayd.reply.Refused: The reverse-path is refused.
        """

    def validateTo(user: str) -> object:
        """
        Validate one forward-path of RCPT TO in the current transaction.

        @param user: The forward-path mailbox.
        @return: A callable (or a Deferred of one) that begins the
            message at DATA: it returns an L{ISubmissionMessage}, the same
            one for every forward-path of the transaction.
        @raise relayd.reply.Refused: The forward-path is refused.
        """


# -- the upstream request format (a dialect) -------------------------------
