# -*- test-case-name: tests.message -*-
"""
RFC 5322 / MIME parsing and the header policy: the bytes of one message in,
a typed L{OutboundMessage} out.  No Twisted here.

One module per job:

  - L{relayd.message.model}: the outbound model (L{Envelope},
    L{OutboundMessage}, L{Attachment});
  - L{relayd.message.decoding}: charsets, transfer encodings (RFC 2045),
    encoded words (RFC 2047), parameters (RFC 2231), 8-bit headers
    (RFC 6532);
  - L{relayd.message.addresses}: author, Sender and address lists
    (RFC 5322 section 3.4, 3.6.2), L{address_key};
  - L{relayd.message.mime}: the MIME walk over byte offsets (RFC 2046) and
    the bodies;
  - L{relayd.message.attachments}: the leaf parts that are not bodies;
  - L{relayd.message.headers}: the header policy (keep, strip, map);
  - L{relayd.message.parse}: L{parse_message}, the steps in order.

This package re-exports the names the rest of relayd uses.
"""

from relayd.message.addresses import MAX_ADDRESS_BYTES, address_key
from relayd.message.decoding import decode_text
from relayd.message.mime import MAX_DEPTH, MAX_HEADER_BYTES, MAX_PARTS
from relayd.message.model import Attachment, Base64Text, Envelope, OutboundMessage
from relayd.message.parse import parse_message

__all__ = [
    "MAX_ADDRESS_BYTES",
    "MAX_DEPTH",
    "MAX_HEADER_BYTES",
    "MAX_PARTS",
    "Attachment",
    "Base64Text",
    "Envelope",
    "OutboundMessage",
    "address_key",
    "decode_text",
    "parse_message",
]
