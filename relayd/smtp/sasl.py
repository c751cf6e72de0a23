# -*- test-case-name: tests.smtp.test_framing -*-
"""
The AUTH exchange: SASL PLAIN (RFC 4616) and LOGIN over SMTP (RFC 4954).

A L{SASLExchange} takes the initial response or each response line and
says what comes next: a L{Challenge} to send, the L{Credentials} to check,
or why the exchange ended (L{Aborted}, L{Denied}).  It checks no password
and has no Twisted code: the session hands the credentials to its portal.
"""

from __future__ import annotations

import base64
import binascii

from attrs import frozen

from relayd.reply import (
    AUTH_ABORTED,
    AUTH_INVALID,
    CANNOT_DECODE_AUTH,
    LOGIN_PASSWORD_CHALLENGE,
    LOGIN_USERNAME_CHALLENGE,
    MALFORMED_AUTH_PLAIN,
    PLAIN_CHALLENGE,
    Reply,
)

__all__ = [
    "MECHANISMS",
    "Aborted",
    "Challenge",
    "Credentials",
    "Denied",
    "SASLExchange",
    "Step",
]

#: The mechanisms relayd offers, in its order of preference.
MECHANISMS = ("PLAIN", "LOGIN")


@frozen
class Challenge:
    """
    Send C{reply} (a C{334}) and read the next line as a response.
    """

    reply: Reply


@frozen
class Credentials:
    """
    The exchange is complete: check these.

    @ivar username: The authentication identity (UTF-8, undecodable octets
        replaced).
    @ivar password: The password, as sent.
    """

    username: str
    password: bytes


@frozen
class Aborted:
    """
    The client cancelled or sent a malformed response: send C{reply} (a
    C{501}, a command error) and go back to commands.
    """

    reply: Reply


@frozen
class Denied:
    """
    The exchange is well-formed but cannot succeed (an authorization
    identity other than the authentication identity): a failed AUTH, as a
    wrong password would be.
    """

    reply: Reply = AUTH_INVALID


Step = Challenge | Credentials | Aborted | Denied


class SASLExchange:
    """
    One AUTH exchange.

    @ivar mechanism: C{"PLAIN"} or C{"LOGIN"}.
    """

    def __init__(self, mechanism: str) -> None:
        """
        @param mechanism: One of L{MECHANISMS}, upper case.
        """
        self.mechanism = mechanism
        self._username: str | None = None

    def start(self, initial: bytes | None) -> Step:
        """
        Begin the exchange.

        @param initial: The initial response of the AUTH command (RFC 4954
            section 4), or C{None} when there is none.
        @return: What to do next.
        """
        if initial is None:
            if self.mechanism == "PLAIN":
                return Challenge(PLAIN_CHALLENGE)
            return Challenge(LOGIN_USERNAME_CHALLENGE)
        return self.respond(initial)

    def respond(self, line: bytes) -> Step:
        """
        Take one response line (RFC 4954 section 4): base64, C{*} to
        cancel, C{=} for an empty response.

        @param line: The line without its line end.
        @return: What to do next.
        """
        line = line.strip()
        if line == b"*":
            return Aborted(AUTH_ABORTED)
        try:
            decoded = b"" if line == b"=" else base64.b64decode(line, validate=True)
        except (binascii.Error, ValueError):
            return Aborted(CANNOT_DECODE_AUTH)
        if self.mechanism == "LOGIN":
            if self._username is None:
                self._username = decoded.decode("utf-8", "replace")
                return Challenge(LOGIN_PASSWORD_CHALLENGE)
            return Credentials(self._username, decoded)
        # RFC 4616 section 2: [authzid] NUL authcid NUL passwd
        fields = decoded.split(b"\0")
        if len(fields) != 3:
            return Aborted(MALFORMED_AUTH_PLAIN)
        authzid, authcid, password = fields
        if authzid and authzid != authcid:
            return Denied()
        return Credentials(authcid.decode("utf-8", "replace"), password)
