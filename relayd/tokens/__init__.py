# -*- test-case-name: tests.tokens -*-
"""
API tokens: the tokens file, the in-memory store the SMTP AUTH checker asks,
and the C{relayd tokens} (C{python -m relayd.tokens}) command that manages
the file.

  - L{relayd.tokens.policy}: L{TokenPolicy}, what one token may do, and the
    parsing of one C{[tokens.NAME]} table;
  - L{relayd.tokens.store}: L{TokenStore}, the file by SHA-256 digest
    (L{digest}), its reload and the held upstream credentials;
  - L{relayd.tokens.command}: the command (L{main}).

The names other modules use are importable from here.  This package imports
no reactor code.
"""

from __future__ import annotations

from relayd.tokens.command import DEFAULT_TOKENS_FILE, TOKEN_PREFIX, main
from relayd.tokens.policy import TokenPolicy
from relayd.tokens.store import TokenStore, digest

__all__ = [
    "DEFAULT_TOKENS_FILE",
    "TOKEN_PREFIX",
    "TokenPolicy",
    "TokenStore",
    "digest",
    "main",
]
