"""
Tests for L{relayd.message}: RFC 5322 / MIME parsing and the header policy,
one module per behaviour.
"""
