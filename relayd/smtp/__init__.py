# -*- test-case-name: tests.test_smtp -*-
"""
relayd's SMTP server: the session protocol and its factory, and the pure
parts it is built from (input framing, path syntax, the AUTH exchange,
connection guards).
"""

from relayd.smtp.session import (
    AuthThrottle,
    ConnectionLimiter,
    DeliveryTracker,
    PathError,
    RelaySMTP,
    RelaySMTPFactory,
    Reply,
    parse_path,
)

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
