# -*- test-case-name: tests.test_smtp -*-
"""
relayd's SMTP server: the session protocol and its factory, and the parts
it is built from.

  - L{relayd.smtp.session}: the protocol (L{RelaySMTP}) and its factory;
  - L{relayd.smtp.framing}: bytes to command lines and DATA (no Twisted);
  - L{relayd.smtp.syntax}: RFC 5321 paths and ESMTP parameters (no Twisted);
  - L{relayd.smtp.sasl}: the AUTH PLAIN / LOGIN exchange (no Twisted);
  - L{relayd.smtp.guards}: connection caps, AUTH throttling, messages in
    flight.
"""

from relayd.reply import Reply
from relayd.smtp.guards import AuthThrottle, ConnectionLimiter, DeliveryTracker
from relayd.smtp.session import RelaySMTP, RelaySMTPFactory
from relayd.smtp.syntax import PathError, parse_path

__all__ = [
    "AuthThrottle",
    "ConnectionLimiter",
    "DeliveryTracker",
    "PathError",
    "RelaySMTP",
    "RelaySMTPFactory",
    "Reply",
    "parse_path",
]
