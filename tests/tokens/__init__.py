"""
Tests for L{relayd.tokens}, by part: policies, the store and its file, the command.
"""
