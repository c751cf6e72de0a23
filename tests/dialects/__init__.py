"""
Tests for the provider dialects (L{relayd.dialects.request} and one module
per provider): the request a recorded fake of the provider's API receives,
and the reading of the provider's documented answers.
"""
