"""
relayd: an SMTP submission relay that hands each message to an email
provider's HTTP API.

SMTP clients (RFC 5321, with STARTTLS per RFC 3207 or implicit TLS per
RFC 8314, and AUTH per RFC 4954) submit mail; each transaction becomes one
JSON request to the upstream API, and the reply to the final dot of DATA
tells the client what the upstream did with it.
"""

__version__ = "0.1.0"
