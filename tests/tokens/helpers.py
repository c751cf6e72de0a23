"""
Shared helpers of the L{relayd.tokens} tests: temporary tokens files and
the development tokens file.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile

from twisted.trial.unittest import SynchronousTestCase

__all__ = ["DEV_TOKENS", "FULL", "folder", "hex_digest", "write_tokens"]

DEV_TOKENS = os.path.join(
    os.path.dirname(os.path.abspath(__file__)), os.pardir, os.pardir, "etc", "dev-tokens.toml"
)


def hex_digest(token: str) -> str:
    """
    @return: The SHA-256 digest of C{token}, in hexadecimal, as the tokens
        file writes it.
    """
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def folder(case: SynchronousTestCase) -> str:
    """
    A temporary folder removed when C{case} ends.
    """
    path = tempfile.mkdtemp(prefix="relayd-test-tokens-")
    case.addCleanup(shutil.rmtree, path, True)
    return path


def write_tokens(case: SynchronousTestCase, text: str) -> str:
    """
    Write C{text} to a new tokens file; return its path.
    """
    path = os.path.join(folder(case), "tokens.toml")
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    return path


#: A tokens file with two tokens, one with every policy setting the
#: command writes.
FULL = f"""\
# relayd tokens file: SHA-256 digests of API tokens, never the tokens.
[tokens.website]
sha256 = "{hex_digest("website-token")}"
senders = ["example.com", "alerts@example.org"]
streams = ["outbound", "broadcast"]
max_recipients = 50
max_message_size = 10485760

[tokens.backups]
sha256 = "{hex_digest("backups-token").upper()}"
"""
