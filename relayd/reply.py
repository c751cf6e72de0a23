# -*- test-case-name: tests.test_reply -*-
"""
The one SMTP reply type, and every reply relayd sends, named once.

A L{Reply} is a reply code (RFC 5321 section 4.2), an enhanced status code
(RFC 3463) and one line of text. The protocol writes it, the delivery path
and the dialects return it, and the message pipeline raises it inside
L{Refused}. Tests compare against the named constants below instead of
copying reply strings, in the manner of aiosmtpd's C{statuscodes.py}.

This module is a leaf: it imports nothing from relayd.
"""

from __future__ import annotations

from attrs import frozen

__all__ = ["Refused", "Reply"]


@frozen
class Reply:
    """
    One SMTP reply.

    @ivar code: The reply code (RFC 5321 section 4.2), 200 to 599.
    @ivar status: The enhanced status code (RFC 3463), for example
        C{"5.7.8"}, or C{""} for none.
    @ivar text: The text: one line, printable ASCII (or UTF-8 under
        SMTPUTF8). The protocol replaces control characters before sending.
    """

    code: int
    status: str
    text: str

    @property
    def permanent(self) -> bool:
        """
        C{True} for a 5xx reply: the client must not retry (RFC 5321 4.2.1).
        """
        return self.code >= 500

    @property
    def temporary(self) -> bool:
        """
        C{True} for a 4xx reply: the client should retry later.
        """
        return 400 <= self.code < 500

    def with_text(self, text: str) -> Reply:
        """
        The same code and enhanced status code with another text.

        @param text: The new text (one line).
        @return: A new L{Reply}.
        """
        return Reply(self.code, self.status, text)


class Refused(Exception):
    """
    Raised where a check refuses the transaction or the message; carries the
    L{Reply} to send instead.

    @ivar reply: The reply (4xx or 5xx).
    """

    def __init__(self, reply: Reply) -> None:
        super().__init__(reply)
        self.reply = reply


# -- replies of the SMTP session (relayd.smtp) -----------------------------
#
# A 421 ("closing connection") names the server first (RFC 5321 section
# 4.2): the session sends these with its hostname put before the text.

#: The greeting's text follows the hostname (RFC 5321 section 4.2).
GREETING = Reply(220, "", "ESMTP relayd ready")
TOO_MANY_CONNECTIONS = Reply(421, "4.7.0", "Too many connections, try again later")
IDLE_TIMEOUT = Reply(421, "4.4.2", "Timeout exceeded, closing connection")
SESSION_LIFETIME_EXCEEDED = Reply(421, "4.4.2", "Session lifetime exceeded, closing connection")
TOO_MANY_ERRORS = Reply(421, "4.7.0", "Too many errors, closing connection")
#: The daemon is stopping (RFC 5321 section 3.8; RFC 3463 X.3.2: system not
#: accepting network messages).
SHUTTING_DOWN = Reply(421, "4.3.2", "Service shutting down, closing connection")
LINE_TOO_LONG_CLOSING = Reply(421, "4.7.0", "Line too long, closing connection")
LOCAL_ERROR_CLOSING = Reply(421, "4.3.0", "Local error, closing connection")
IMPROPER_PIPELINING = Reply(421, "4.5.0", "Improper pipelining after DATA, closing connection")
TOO_MANY_MESSAGES = Reply(421, "4.7.0", "Too many messages in this session, closing connection")
TOO_MANY_AUTH_FAILURES = Reply(
    421, "4.7.0", "Too many failed authentication attempts, closing connection"
)

# Command lines (RFC 5321 section 4.5.3.1.4, section 2.3.8).
LINE_TOO_LONG = Reply(500, "5.5.2", "Line too long")
#: A command line ended in a bare LF (C{bare_newline = "reject"}): a
#: command syntax error (RFC 5321 section 4.2.2: 500; RFC 3463 X.5.2).
BARE_LF_IN_COMMAND = Reply(500, "5.5.2", "Bare <LF> received; lines must end with <CR><LF>")
NUL_IN_COMMAND = Reply(501, "5.5.2", "NUL character in command")
COMMAND_NOT_UTF8 = Reply(500, "5.5.2", "Command is not valid UTF-8")
COMMAND_NOT_RECOGNIZED = Reply(500, "5.5.2", "Error: command not recognized")
COMMAND_NOT_IMPLEMENTED = Reply(502, "5.5.1", "Error: command not implemented")
NO_CHUNKING = Reply(502, "5.5.1", "Error: command not implemented (no CHUNKING)")
#: Any failure inside relayd that the client may retry (also the delivery
#: path's).
LOCAL_ERROR = Reply(451, "4.3.0", "Local error in processing, try again later")

# EHLO, STARTTLS and the simple verbs (RFC 5321 section 4.1.1, RFC 3207).
SYNTAX_EHLO = Reply(501, "5.5.4", "Syntax: EHLO hostname")
SYNTAX_HELO = Reply(501, "5.5.4", "Syntax: HELO hostname")
NEED_EHLO = Reply(503, "5.5.1", "Error: send HELO/EHLO first")
SYNTAX_STARTTLS = Reply(501, "5.5.4", "Syntax: STARTTLS")
TLS_ALREADY_ACTIVE = Reply(503, "5.5.1", "Error: TLS already active")
STARTTLS_NOT_AVAILABLE = Reply(503, "5.5.1", "Error: STARTTLS not available")
READY_TO_START_TLS = Reply(220, "2.0.0", "Ready to start TLS")
OK = Reply(250, "2.0.0", "Ok")
CANNOT_VRFY = Reply(252, "2.5.0", "Cannot VRFY user, but will accept message and attempt delivery")
HELP = Reply(
    214,
    "2.0.0",
    "See RFC 5321; commands: EHLO HELO STARTTLS AUTH MAIL RCPT DATA RSET NOOP VRFY HELP QUIT",
)
BYE = Reply(221, "2.0.0", "Bye")

# AUTH (RFC 4954, RFC 4616, draft-murchison-sasl-login).
ENCRYPTION_REQUIRED = Reply(
    538, "5.7.11", "Encryption required for requested authentication mechanism"
)
ALREADY_AUTHENTICATED = Reply(503, "5.5.1", "Error: already authenticated")
AUTH_DURING_TRANSACTION = Reply(503, "5.5.1", "Error: AUTH not allowed during a mail transaction")
SYNTAX_AUTH = Reply(501, "5.5.4", "Syntax: AUTH mechanism [initial-response]")
UNRECOGNIZED_AUTH_TYPE = Reply(504, "5.5.4", "Unrecognized authentication type")
#: The empty challenge of AUTH PLAIN (RFC 4616 section 2).
PLAIN_CHALLENGE = Reply(334, "", "")
#: "Username:" and "Password:" in base64, as LOGIN clients expect.
LOGIN_USERNAME_CHALLENGE = Reply(334, "", "VXNlcm5hbWU6")
LOGIN_PASSWORD_CHALLENGE = Reply(334, "", "UGFzc3dvcmQ6")
AUTH_ABORTED = Reply(501, "5.7.0", "Authentication aborted")
CANNOT_DECODE_AUTH = Reply(501, "5.5.2", "Cannot decode AUTH response")
MALFORMED_AUTH_PLAIN = Reply(501, "5.5.2", "Malformed AUTH PLAIN response")
AUTH_SUCCESSFUL = Reply(235, "2.7.0", "Authentication successful")
AUTH_INVALID = Reply(535, "5.7.8", "Authentication credentials invalid")
AUTH_REQUIRED = Reply(530, "5.7.0", "Authentication required")

# The envelope: MAIL and RCPT (RFC 5321 sections 4.1.1.2, 4.1.1.3).
NESTED_MAIL = Reply(503, "5.5.1", "Error: nested MAIL command")
NEED_MAIL = Reply(503, "5.5.1", "Error: need MAIL command")
SYNTAX_MAIL = Reply(501, "5.5.4", "Syntax: MAIL FROM:<address>")
SYNTAX_RCPT = Reply(501, "5.5.4", "Syntax: RCPT TO:<address>")
SYNTAX_PARAMETERS = Reply(501, "5.5.4", "Syntax error in parameters")
BAD_SIZE = Reply(501, "5.5.4", "Bad SIZE parameter")
UNSUPPORTED_BODY = Reply(501, "5.5.4", "Unsupported BODY parameter")
SMTPUTF8_TAKES_NO_VALUE = Reply(501, "5.5.4", "SMTPUTF8 takes no value")
BAD_SENDER_SYNTAX = Reply(501, "5.1.7", "Bad sender address syntax")
BAD_RECIPIENT_SYNTAX = Reply(501, "5.1.3", "Bad recipient address syntax")
NON_ASCII_ADDRESS = Reply(553, "5.6.7", "Non-ASCII address requires SMTPUTF8")
TOO_MANY_RECIPIENTS = Reply(452, "4.5.3", "Error: too many recipients")
SENDER_OK = Reply(250, "2.1.0", "Ok")
RECIPIENT_OK = Reply(250, "2.1.5", "Ok")

# DATA (RFC 5321 section 4.1.1.4, RFC 1870).
SYNTAX_DATA = Reply(501, "5.5.4", "Syntax: DATA")
NO_VALID_RECIPIENTS = Reply(554, "5.5.1", "Error: no valid recipients")
START_MAIL_INPUT = Reply(354, "", "End data with <CR><LF>.<CR><LF>")
MESSAGE_TOO_BIG = Reply(552, "5.3.4", "Message size exceeds fixed maximum message size")
BARE_NEWLINE_IN_DATA = Reply(
    550, "5.6.0", "Message contains bare <CR> or <LF>; lines must end with <CR><LF>"
)


def unsupported_parameter(keyword: str) -> Reply:
    """
    @param keyword: An ESMTP parameter of MAIL or RCPT relayd does not know.
    @return: C{555 5.5.4} naming it (RFC 5321 section 4.1.1.11).
    """
    return Reply(555, "5.5.4", f"Unsupported parameter {keyword}")


def message_line_too_long(limit: int) -> Reply:
    """
    @param limit: The message line limit, in octets without the line end.
    @return: C{552 5.3.4} naming it (RFC 5321 section 4.5.3.1.6).
    """
    return Reply(552, "5.3.4", f"Message line too long (limit {limit} octets)")


# -- replies of the message pipeline (relayd.message) ----------------------

#: The message has no From header field (RFC 5322 section 3.6.2).
NO_FROM_HEADER = Reply(550, "5.6.0", "Message has no From header")

#: The From header field holds no mailbox with a local part and a domain.
FROM_WITHOUT_ADDRESS = Reply(550, "5.6.0", "From header holds no valid address")

#: Several authors need a single Sender mailbox (RFC 5322 section 3.6.2).
SEVERAL_FROM_WITHOUT_SENDER = Reply(
    550, "5.6.0", "Message has several From addresses and no single Sender header"
)


def address_headers_too_large(limit: int) -> Reply:
    """
    The From, Sender, To, Cc and Reply-To fields together are too large.

    @param limit: The most bytes allowed.
    @return: C{550 5.6.0}.
    """
    return Reply(550, "5.6.0", f"Address headers are larger than {limit} bytes")


def headers_too_large(limit: int) -> Reply:
    """
    The header sections of all MIME entities together are too large.

    @param limit: The most bytes allowed.
    @return: C{550 5.6.0}.
    """
    return Reply(550, "5.6.0", f"Message headers are larger than {limit} bytes")


def too_many_mime_parts(limit: int) -> Reply:
    """
    The message has too many MIME entities.

    @param limit: The most entities allowed.
    @return: C{550 5.6.0}.
    """
    return Reply(550, "5.6.0", f"Message has more than {limit} MIME parts")


def mime_nested_too_deep(limit: int) -> Reply:
    """
    Multipart entities are nested too deep.

    @param limit: The deepest nesting allowed.
    @return: C{550 5.6.0}.
    """
    return Reply(550, "5.6.0", f"MIME parts are nested more than {limit} deep")


def missing_required_header(name: str) -> Reply:
    """
    A header the policy requires (C{[headers] required}) is missing or does
    not hold the required value.

    @param name: The header's name, printable ASCII (the caller makes it so).
    @return: C{550 5.7.1}.
    """
    return Reply(550, "5.7.1", f"Missing required header {name}")


def unknown_stream(name: str) -> Reply:
    """
    The stream header names a stream the policy (C{[headers] streams}) does
    not list.

    @param name: The stream, printable ASCII (the caller makes it so).
    @return: C{550 5.7.1}.
    """
    return Reply(550, "5.7.1", f"unknown stream '{name}'")


# -- replies of the delivery path and the upstream (relayd.delivery,
#    relayd.upstream, relayd.dialects) -------------------------------------

SENDER_NOT_ALLOWED = Reply(550, "5.7.1", "Sender not allowed")
STREAM_REQUIRED = Reply(550, "5.7.1", "A stream is required for this token")


def stream_not_allowed(stream: str) -> Reply:
    """
    @param stream: The message's stream, as printable ASCII.
    @return: C{550 5.7.1} naming it.
    """
    return Reply(550, "5.7.1", f"Stream '{stream}' not allowed for this token")


def queued(message_id: str) -> Reply:
    """
    @param message_id: The upstream's id for the message, or C{""}.
    @return: The C{250 2.0.0} to the final dot, with the id when there is one.
    """
    return Reply(250, "2.0.0", "Ok: queued as " + message_id if message_id else "Ok: queued")


# upstream and dialects (relayd.upstream, relayd.dialects)

#: Texts for an upstream error answer that gives no readable reason of its
#: own (see L{relayd.dialects.base.failure_for_status}).
FALLBACK_REJECTED = "Message rejected by upstream"
FALLBACK_TOKEN = "Upstream refused the API token"
FALLBACK_TOO_BIG = "Message too big"
FALLBACK_RATE = "Upstream rate limit reached, try again later"
FALLBACK_TEMPORARY = "Temporary failure, try again later"

#: The answer to everything that is not the upstream's considered verdict
#: (timeouts, refused connections, TLS errors, garbled HTTP), and to an
#: HTTP status that says the relay or the upstream is broken (RFC 3463
#: X.3.0: other or undefined mail system status).
TEMPORARY_FAILURE = Reply(451, "4.3.0", FALLBACK_TEMPORARY)

#: The upstream answered HTTP 413 (RFC 3463 X.3.4: message too big for
#: system).
UPSTREAM_TOO_BIG = Reply(552, "5.3.4", FALLBACK_TOO_BIG)

#: The upstream answered HTTP 429 (RFC 3463 X.7.1, temporary: the client
#: may retry later).
UPSTREAM_RATE_LIMITED = Reply(451, "4.7.1", FALLBACK_RATE)


# -- upstream2: retry hints of the upstream (relayd.upstream) ---------------


def upstream_retry_after(status: int, seconds: int) -> Reply:
    """
    The reply to an upstream C{429} or C{503} that said when to come back
    (C{Retry-After}, RFC 9110 section 10.2.3), with the wait in the text, so
    the client's queue can plan its next attempt: C{451 4.7.1} for a 429
    (RFC 3463 X.7.1: a rate limit, a policy), C{451 4.3.0} for a 503 (X.3.0:
    the upstream system is unavailable).

    @param status: The HTTP status: C{429} (rate limit) or C{503}
        (unavailable).
    @param seconds: The wait, in whole seconds (at least 0).
    @return: For example C{451 4.7.1 Upstream rate limit reached, try again
        in 30 seconds}.
    """
    wait = "1 second" if seconds == 1 else f"{seconds} seconds"
    if status == 429:
        return Reply(451, "4.7.1", f"Upstream rate limit reached, try again in {wait}")
    return Reply(451, "4.3.0", f"Upstream unavailable, try again in {wait}")


# -- provider2: provider mode (relayd.auth, relayd.auth_http, the
#    per-customer policy, relayd.replytexts) --------------------------------

#: The user name given with a token is not one C{[auth] usernames} accepts.
AUTH_USERNAME_REFUSED = Reply(
    535, "5.7.8", "Authentication credentials invalid: user name not accepted"
)

#: The auth backend could not answer (error, timeout): RFC 4954 section 6.
AUTH_TEMPORARY_FAILURE = Reply(454, "4.7.0", "Temporary authentication failure")

#: The upstream refused this session's credential (HTTP 401/403) at the end
#: of an earlier DATA: later transactions of the session are refused at MAIL
#: (550, a MAIL reply code: RFC 5321 section 4.3.2; RFC 3463 X.7.1).
CREDENTIAL_REFUSED_UPSTREAM = Reply(
    550, "5.7.1", "Upstream refused the credentials of this session"
)

#: The customer's policy does not allow attachments.
ATTACHMENTS_NOT_ALLOWED = Reply(550, "5.7.1", "Attachments are not allowed for this account")

#: The customer's C{messages_per_minute} is used up (RFC 3463 X.7.1, temporary).
MESSAGE_RATE_EXCEEDED = Reply(451, "4.7.1", "Too many messages per minute, try again later")


def auth_refused(text: str) -> Reply:
    """
    The auth endpoint refused the credential with a text of its own.

    @param text: Its text, already cleaned to printable ASCII.
    @return: C{535 5.7.8} with that text, or L{AUTH_INVALID} when empty.
    """
    return AUTH_INVALID.with_text(text) if text else AUTH_INVALID


#: The replies made by a function, for C{[replies]} overrides: name to
#: (reply code, enhanced status code, default text with C{{field}}
#: placeholders).  Each function above builds its text from this template.
TEMPLATES: dict[str, tuple[int, str, str]] = {
    "queued": (250, "2.0.0", "Ok: queued as {id}"),
    "stream_not_allowed": (550, "5.7.1", "Stream '{stream}' not allowed for this token"),
    "unknown_stream": (550, "5.7.1", "unknown stream '{stream}'"),
    "missing_required_header": (550, "5.7.1", "Missing required header {header}"),
    "message_line_too_long": (552, "5.3.4", "Message line too long (limit {limit} octets)"),
    "unsupported_parameter": (555, "5.5.4", "Unsupported parameter {keyword}"),
}


# -- guards2: back-pressure, memory bounds, slow clients, AUTH throttling
# (relayd.smtp.flow, relayd.smtp.guards) --

#: DATA refused, or a message failed at its final dot, because the
#: messages held in memory reached C{[limits] max_memory_bytes} (RFC 5321
#: section 4.2.2 452; RFC 3463 X.3.1: mail system full).
INSUFFICIENT_STORAGE = Reply(452, "4.3.1", "Insufficient system storage, try again later")

#: A DATA transfer below C{[limits] data_min_rate} after C{data_grace}
#: seconds (RFC 3463 X.4.2: bad connection); sent with the hostname.
DATA_TOO_SLOW = Reply(421, "4.4.2", "Data transfer too slow, closing connection")


def auth_throttled(retry_after: float) -> Reply:
    """
    AUTH refused for a while: too many failed attempts from the client's
    network (or with this credential).  Only AUTH is refused; the session
    goes on (RFC 4954 section 6: 454 4.7.0, temporary authentication
    failure).

    @param retry_after: Seconds after which AUTH is answered again, at most.
    @return: The C{454 4.7.0} saying when to retry.
    """
    seconds = max(1, int(retry_after + 0.999))
    return Reply(
        454,
        "4.7.0",
        f"Too many failed authentication attempts, try again in {seconds} seconds",
    )


# -- delivery2: idempotent delivery (relayd.delivery) ----------------------

#: A retry of a message whose first attempt is still open at the upstream
#: (its idempotency key is claimed, no answer yet): nothing is sent; the
#: client retries later and then gets the first attempt's outcome (RFC 3463
#: X.3.0, temporary).
FIRST_ATTEMPT_IN_FLIGHT = Reply(
    451,
    "4.3.0",
    "The first attempt of this message is still being processed, try again later",
)


# -- redis5: message rates per token and per client address (relayd.policy) --


def token_rate_exceeded(retry_after: float) -> Reply:
    """
    MAIL refused: the token sent C{[limits] messages_per_minute_per_token}
    messages in the last 60 seconds (counted across the fleet with
    C{[redis]}).  RFC 3463 X.7.1 (delivery not authorized), temporary.

    @param retry_after: Seconds until the next message is counted, at most.
    @return: The C{451 4.7.1} saying when to retry.
    """
    return Reply(
        451,
        "4.7.1",
        "Too many messages from this token, try again in"
        f" {max(1, int(retry_after + 0.999))} seconds",
    )


def ip_rate_exceeded(retry_after: float) -> Reply:
    """
    MAIL refused: the client's address (its /64 for IPv6) sent
    C{[limits] messages_per_minute_per_ip} messages in the last 60 seconds.
    RFC 3463 X.7.1, temporary.

    @param retry_after: Seconds until the next message is counted, at most.
    @return: The C{451 4.7.1} saying when to retry.
    """
    return Reply(
        451,
        "4.7.1",
        "Too many messages from this IP address, try again in"
        f" {max(1, int(retry_after + 0.999))} seconds",
    )


# -- fix5a: the delivery promise (relayd.delivery) ---------------------------

#: The upstream refused (HTTP 401/403) a credential relayd holds (the
#: token's held one or the route's): relayd's mistake, not the client's, so
#: temporary (RFC 3463 X.7.0) and never recorded as a permanent refusal.
UPSTREAM_REFUSED_RELAY_CREDENTIAL = Reply(
    451, "4.7.0", "Upstream refused relayd's credential, try again later"
)
