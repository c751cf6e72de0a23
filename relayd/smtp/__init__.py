# -*- test-case-name: tests.test_imports -*-
"""
relayd's SMTP server: the session protocol and the parts it is built from.

Import from the submodules; this package runs no code of its own, so that
importing the parts without Twisted (framing, syntax, sasl) loads no
reactor code.

  - L{relayd.smtp.session}: the protocol (L{RelaySMTP}) and its factory;
  - L{relayd.smtp.envelope}: MAIL, RCPT, DATA and the mail transaction;
  - L{relayd.smtp.framing}: bytes to command lines and DATA (no Twisted);
  - L{relayd.smtp.syntax}: RFC 5321 paths and ESMTP parameters (no Twisted);
  - L{relayd.smtp.sasl}: the AUTH PLAIN / LOGIN exchange (no Twisted);
  - L{relayd.smtp.guards}: connection caps, AUTH throttling, messages in
    flight.
"""
