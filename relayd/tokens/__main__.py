# -*- test-case-name: tests.tokens.test_command -*-
"""
C{python -m relayd.tokens}: the tokens command (L{relayd.tokens.command}).
"""

from __future__ import annotations

import sys

from relayd.tokens.command import main

if __name__ == "__main__":
    sys.exit(main())
