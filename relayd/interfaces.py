# -*- test-case-name: tests.test_interfaces -*-
"""
The seams between relayd's parts, as C{zope.interface} interfaces.

Each is implemented by the real component and by its fake in
L{relayd.testing}; tests check both with C{verifyObject}.
"""

from __future__ import annotations

from zope.interface import Attribute, Interface  # noqa: F401

# -- the avatar: what an authenticated SMTP session submits to -------------


# -- the upstream request format (a dialect) -------------------------------
