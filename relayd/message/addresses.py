# -*- test-case-name: tests.message.test_addresses -*-
"""
Addresses: the author and Sender (RFC 5322 section 3.6.2), address lists
(RFC 5322 section 3.4), and the form addresses are compared in.

Address lists are read with C{email.utils.getaddresses} (groups of RFC 5322
section 3.4, quoted local parts, UTF-8 local parts and IDN domains of RFC
6532); entries without a local part and a domain are dropped.  Lists made
only of the plainest mailboxes (a bare addr-spec or C{Name <addr-spec>} of
ASCII atoms) are read by L{plain_addresses} instead, with the result
C{getaddresses} gives.  Display
names are decoded from RFC 2047 encoded words (also inside quoted strings,
as many clients write them).  Addresses keep the domain as written; the bcc
comparison folds case and decodes C{xn--} labels (RFC 5890).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from email.utils import getaddresses

from attrs import frozen

from relayd.message.decoding import UNSAFE, decode_words, header_text
from relayd.reply import (
    FROM_WITHOUT_ADDRESS,
    NO_FROM_HEADER,
    SEVERAL_FROM_WITHOUT_SENDER,
    Refused,
    address_headers_too_large,
)

__all__ = [
    "MAX_ADDRESS_BYTES",
    "Authors",
    "address_key",
    "blind_copies",
    "format_mailbox",
    "mailboxes",
    "plain_addresses",
    "read_authors",
]

#: Most bytes of the From, Sender, To, Cc and Reply-To fields together.
MAX_ADDRESS_BYTES = 128 * 1024

_ADDRESS_FIELDS = ("from", "sender", "to", "cc", "reply-to")
_SPECIALS = frozenset('()<>[]:;@\\,."')
_WHITESPACE = re.compile(r"[ \t]+")

# The plainest mailboxes (RFC 5322 section 3.4, 3.2.3): a bare addr-spec,
# or a display name of atoms then an angle-addr, every atom and the
# addr-spec's local part and domain made of ASCII atext and dots only (no
# quotes, comments, groups, domain literals, routes or non-ASCII).  For
# these getaddresses gives (the atoms joined by one space, the addr-spec).
_ATEXT = r"[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~]"
_DOT_ATOM = rf"{_ATEXT}+(?:\.{_ATEXT}+)*"
# Matched against an entry with its surrounding spaces and tabs taken off,
# so that no two adjacent parts of the expression match the same
# character: the time stays linear in the entry (with a white-space run at
# either end it took seconds to fail on a crafted folded header).
_PLAIN_MAILBOX = re.compile(
    rf"(?:((?:{_ATEXT}+[ \t]+)*{_ATEXT}+)[ \t]*)?<({_DOT_ATOM}@{_DOT_ATOM})>"
    rf"|({_DOT_ATOM}@{_DOT_ATOM})"
)


def format_mailbox(name: str, address: str) -> str:
    """
    Format one mailbox as C{Name <address>} (RFC 5322 section 3.4).

    @param name: The decoded display name, possibly empty.
    @param address: The addr-spec.
    @return: C{address} alone when there is no name; the name is quoted
        when it holds specials; non-ASCII is kept (RFC 6532).
    """
    if not name:
        return address
    if any(c in _SPECIALS for c in name):
        name = '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return f"{name} <{address}>"


def plain_addresses(texts: list[str]) -> list[tuple[str, str]] | None:
    """
    Read address lists made only of the plainest mailboxes, without
    C{email.utils.getaddresses}.

    @param texts: Unfolded address-list values.
    @return: What C{getaddresses(texts)} returns, when every comma
        separated entry of every value is a bare addr-spec or C{Name
        <addr-spec>} of atext atoms and dot-atoms (RFC 5322 section 3.2.3);
        C{None} for anything else (the caller then asks C{getaddresses}).
    """
    pairs: list[tuple[str, str]] = []
    for text in texts:
        for entry in text.split(","):
            found = _PLAIN_MAILBOX.fullmatch(entry.strip(" \t"))
            if found is None:
                return None
            phrase, angle, bare = found.groups()
            if bare is not None:
                pairs.append(("", bare))
            else:
                pairs.append((" ".join(phrase.split()) if phrase else "", angle))
    return pairs


def mailboxes(values: list[str]) -> list[tuple[str, str]]:
    """
    Read address-list header values.

    @param values: Raw values of every field of one name (To, Cc...).
    @return: C{(display name, addr-spec)} for every entry that has a local
        part and a domain, in order; display names decoded.
    """
    if not values:
        return []
    texts = [header_text(v) for v in values]
    pairs = plain_addresses(texts)
    if pairs is None:
        try:
            pairs = getaddresses(texts)
        except RecursionError:
            # Deeply nested comments or groups: nothing usable.
            return []
    result: list[tuple[str, str]] = []
    for name, address in pairs:
        address = address.translate(UNSAFE).strip()
        local, _, domain = address.rpartition("@")
        if not local or not domain or " " in domain or "\t" in domain:
            continue
        name = _WHITESPACE.sub(" ", decode_words(name)).strip()
        result.append((name, address))
    return result


def address_key(address: str) -> str:
    """
    The form addresses are compared in: case folded, angle brackets and a
    trailing dot of the domain removed, C{xn--} labels decoded (RFC 5890).

    @param address: An addr-spec.
    @return: The comparison key.
    """
    address = address.strip().strip("<>")
    local, _, domain = address.rpartition("@")
    labels = []
    for label in domain.lower().rstrip(".").split("."):
        if label.startswith("xn--"):
            try:
                label = label[4:].encode("ascii").decode("punycode")
            except (UnicodeError, ValueError):
                pass
        labels.append(label)
    return local.lower() + "@" + ".".join(labels).lower()


@frozen
class Authors:
    """
    Who wrote the message and who sent it (RFC 5322 section 3.6.2).

    @ivar author: The first mailbox of the From field, formatted.
    @ivar author_address: Its addr-spec.
    @ivar sender: The mailbox of the Sender field, formatted, when there is
        one such field holding one mailbox; otherwise C{None}.
    """

    author: str
    author_address: str
    sender: str | None


def read_authors(fields: Mapping[str, list[str]]) -> Authors:
    """
    Read the From and Sender fields.

    @param fields: Raw values of the address fields, by lower-case name
        (C{from}, C{sender}, C{to}, C{cc}, C{reply-to}).
    @return: The authors.
    @raise relayd.reply.Refused: C{550 5.6.0} when the address fields
        together exceed L{MAX_ADDRESS_BYTES}, when there is no From field,
        when it holds no usable mailbox, or when it holds several and there
        is no single Sender mailbox (RFC 5322 section 3.6.2).
    """
    address_bytes = sum(len(value) for key in _ADDRESS_FIELDS for value in fields.get(key, []))
    if address_bytes > MAX_ADDRESS_BYTES:
        raise Refused(address_headers_too_large(MAX_ADDRESS_BYTES))
    if "from" not in fields:
        raise Refused(NO_FROM_HEADER)
    authors = mailboxes(fields["from"])
    if not authors:
        raise Refused(FROM_WITHOUT_ADDRESS)
    sender_fields = fields.get("sender", [])
    senders = mailboxes(sender_fields)
    sender = None
    if len(sender_fields) == 1 and len(senders) == 1:
        sender = format_mailbox(*senders[0])
    if len(authors) > 1 and sender is None:
        raise Refused(SEVERAL_FROM_WITHOUT_SENDER)
    return Authors(format_mailbox(*authors[0]), authors[0][1], sender)


def blind_copies(
    forward_paths: Iterable[str], listed: Iterable[tuple[str, str]]
) -> tuple[str, ...]:
    """
    The envelope's recipients that no To or Cc field names: the blind
    carbon copies (RFC 5322 section 3.6.3).

    @param forward_paths: The forward-paths of the envelope, in order.
    @param listed: C{(display name, addr-spec)} of every To and Cc mailbox.
    @return: The forward-paths not listed (compared by L{address_key}), in
        envelope order, once each, without CR, LF, NUL or angle brackets.
    """
    seen = {address_key(address) for _, address in listed}
    bcc: list[str] = []
    for recipient in forward_paths:
        recipient_key = address_key(recipient)
        if recipient_key not in seen:
            seen.add(recipient_key)
            bcc.append(recipient.translate(UNSAFE).strip().strip("<>"))
    return tuple(bcc)
