# -*- test-case-name: tests.smtp.test_envelope -*-
"""
SMTP command grammar: RFC 5321 section 4.1.2 paths and ESMTP parameters.

No Twisted: pure functions over text decoded as UTF-8 (RFC 6531 allows
UTF-8 in addresses).
"""

from __future__ import annotations

import re

__all__ = [
    "MAIL_ARGS",
    "RCPT_ARGS",
    "PathError",
    "parse_parameters",
    "parse_path",
]

# RFC 5321 section 4.1.2, with RFC 6531's UTF-8 extensions: atext in the
# local part may be any non-ASCII UTF-8 character.
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~\-\u0080-\U0010ffff]"
_DOT_STRING = rf"{_ATEXT}+(?:\.{_ATEXT}+)*"
_QUOTED = r'"(?:[\x20\x21\x23-\x5b\x5d-\x7e\u0080-\U0010ffff]|\\[\x20-\x7e])*"'
_LABEL = (
    r"[A-Za-z0-9\u0080-\U0010ffff](?:[A-Za-z0-9\-\u0080-\U0010ffff]*[A-Za-z0-9\u0080-\U0010ffff])?"
)
_DOMAIN = rf"{_LABEL}(?:\.{_LABEL})*\.?"
_LITERAL = r"\[[\x21-\x5a\x5e-\x7e]+\]"
_MAILBOX = re.compile(rf"(?:{_DOT_STRING}|{_QUOTED})@(?:{_DOMAIN}|{_LITERAL})")
# An obsolete source route (RFC 5321 section 4.1.2, "A-d-l") is ignored.
_SOURCE_ROUTE = re.compile(r"^@[^:,]+(?:,@[^:,]+)*:")

#: MAIL and RCPT arguments: "FROM:" / "TO:", optional space (common), the
#: path (group 1), then space-separated ESMTP parameters (group 2).
MAIL_ARGS = re.compile(r"^FROM:\s*(<[^>]*>|[^\s<>]+)(.*)$", re.I | re.S)
RCPT_ARGS = re.compile(r"^TO:\s*(<[^>]*>|[^\s<>]+)(.*)$", re.I | re.S)

_ESMTP_KEYWORD = re.compile(r"^[A-Za-z0-9][A-Za-z0-9\-]*$")
# A parameter value (RFC 5321 section 4.1.2, esmtp-value), which is where
# xtext (RFC 3461 section 4) travels.
_XTEXT_VALUE = re.compile(r"^[\x21-\x3c\x3e-\x7e]+$")


class PathError(ValueError):
    """
    A reverse-path or forward-path is not valid RFC 5321 syntax.
    """


def parse_path(text: str, allow_empty: bool = False) -> str:
    """
    Parse a reverse-path or forward-path of MAIL FROM / RCPT TO.

    Angle brackets may be omitted (as many clients do); an obsolete source
    route is dropped (RFC 5321 section 4.1.2 and appendix C).

    @param text: The path as the client sent it, decoded as UTF-8.
    @param allow_empty: Accept the null path C{<>} (MAIL FROM only).
    @return: The mailbox (C{local@domain}), or C{""} for C{<>}.
    @raise PathError: The path is not a valid mailbox.
    """
    if text.startswith("<"):
        if not text.endswith(">"):
            raise PathError("unbalanced angle brackets")
        text = text[1:-1]
    if text == "":
        if allow_empty:
            return ""
        raise PathError("empty address")
    text = _SOURCE_ROUTE.sub("", text)
    if len(text) > 254 + 64 or not _MAILBOX.fullmatch(text):
        raise PathError("not a valid mailbox")
    return text


def parse_parameters(text: str) -> dict[str, str | None] | None:
    """
    Split the ESMTP parameters of MAIL or RCPT (RFC 5321 section 4.1.2,
    C{Mail-parameters}).

    @param text: What follows the path, decoded as UTF-8.
    @return: Upper-cased keyword to value (C{None} for a bare keyword), or
        C{None} when the syntax is wrong.
    """
    params: dict[str, str | None] = {}
    for item in text.split():
        keyword, sep, value = item.partition("=")
        if not _ESMTP_KEYWORD.match(keyword):
            return None
        if sep and not _XTEXT_VALUE.match(value):
            return None
        params[keyword.upper()] = value if sep else None
    return params
