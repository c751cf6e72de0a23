# -*- test-case-name: tests.message -*-
"""
The bytes of one message in, a typed L{OutboundMessage} out: the steps of
reading a message and applying the header policy, in order.

L{parse_message} takes the message as received after the final dot of SMTP
DATA (RFC 5321 section 4.1.1.4): CRLF line ends, dot-stuffing removed.  Bare
LF line ends are accepted as well.  It reads the top-level header section
(L{relayd.message.mime}), sorts its fields by the header policy
(L{relayd.message.headers}), reads the author and the recipients
(L{relayd.message.addresses}), then walks the MIME tree for the bodies and
attachments (L{relayd.message.mime}, L{relayd.message.attachments}).  The
refusals come in that order: limits of the top-level header section, the
address fields, the From field, required headers, the stream, then limits
of the MIME tree.
"""

from __future__ import annotations

from relayd.config import HeadersConfig
from relayd.message.addresses import (
    blind_copies,
    format_mailbox,
    mailboxes,
    read_authors,
)
from relayd.message.attachments import build_attachments
from relayd.message.headers import (
    check_required,
    first_text,
    read_stream,
    read_subject,
    read_tags,
    read_track,
    sort_fields,
)
from relayd.message.mime import Structure
from relayd.message.model import Envelope, OutboundMessage

__all__ = ["parse_message"]


def parse_message(data: bytes, envelope: Envelope, policy: HeadersConfig) -> OutboundMessage:
    """
    Read one message and apply the header policy.

    @param data: The message as received after SMTP DATA (RFC 5321 section
        4.1.1.4): CRLF (or LF) line ends, dot-stuffing removed.  Any size;
        the work done is linear in it.
    @type data: L{bytes}
    @param envelope: The transaction's envelope; recipients in neither To
        nor Cc become L{OutboundMessage.bcc}.
    @type envelope: L{Envelope}
    @param policy: The C{[headers]} table of the configuration.
    @type policy: L{HeadersConfig}
    @return: The message as the upstream should receive it.
    @rtype: L{OutboundMessage}
    @raise relayd.reply.Refused: C{550 5.6.0} when the From header field is
        missing (unless C{policy.missing_from} is C{"envelope"} and the
        reverse-path is not null: then C{From:} is the reverse-path, also
        prepended to C{raw}) or unusable (RFC 5322 section 3.6.2) or a limit of
        L{relayd.message.mime} or L{relayd.message.addresses} is exceeded;
        C{550 5.7.1} when the policy refuses the message (a stream not
        allowed, a required header missing).
    """
    structure = Structure()
    top = structure.read_entity(data, 0, len(data), 0, ())
    fields = sort_fields(top.headers, policy)
    represented = fields.represented
    raw = data
    if "from" not in represented and policy.missing_from == "envelope" and envelope.mail_from:
        # RFC 6409 section 8.1: a submission server may add From from the
        # authenticated reverse-path.
        represented["from"] = [envelope.mail_from]
        raw = b"From: " + envelope.mail_from.encode("utf-8") + b"\r\n" + data
    authors = read_authors(represented)
    check_required(fields.required, policy)
    stream = read_stream(fields.streams, policy)
    to = mailboxes(represented.get("to", []))
    cc = mailboxes(represented.get("cc", []))
    structure.walk(top)
    return OutboundMessage(
        envelope=envelope,
        from_=authors.author,
        author_address=authors.author_address,
        to=tuple(format_mailbox(*m) for m in to),
        cc=tuple(format_mailbox(*m) for m in cc),
        bcc=blind_copies(envelope.rcpt_to, to + cc),
        reply_to=tuple(format_mailbox(*m) for m in mailboxes(represented.get("reply-to", []))),
        subject=read_subject(represented.get("subject", [])),
        text=structure.text,
        html=structure.html,
        attachments=build_attachments(structure.parts, structure.html),
        tags=read_tags(fields.tags, policy),
        headers=tuple(fields.kept),
        stream=stream,
        track=read_track(fields.tracking),
        list_unsubscribe=first_text(fields.unsubscribe),
        metadata=tuple(fields.metadata),
        raw=raw,
        raw_only=structure.raw_only,
        mapped=tuple(fields.mapped),
        stripped=tuple(fields.stripped),
        sender=authors.sender,
    )
