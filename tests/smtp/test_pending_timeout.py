# -*- test-case-name: tests.smtp.test_pending_timeout -*-
"""
The session lifetime also ends a session whose command waits on something
that never answers (a checker, an envelope check), but not one waiting for
the upstream's verdict on a message.
"""

from __future__ import annotations

from typing import Any

from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import IUsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import IRealm, Portal
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from relayd import reply as R
from relayd.config import LimitsConfig
from relayd.smtp.session import RelaySMTPFactory
from relayd.testing import reply_line
from tests.smtp.support import HOST, plain, session


@implementer(ICredentialsChecker)
class _SilentChecker:
    """
    A checker whose answer never comes.
    """

    credentialInterfaces = (IUsernamePassword,)

    def __init__(self) -> None:
        self.asked: list[defer.Deferred[Any]] = []

    def requestAvatarId(self, credentials: Any) -> defer.Deferred[Any]:
        d: defer.Deferred[Any] = defer.Deferred()
        self.asked.append(d)
        return d


@implementer(IRealm)
class _NoRealm:
    def requestAvatar(self, avatarId: Any, mind: Any, *interfaces: Any) -> Any:
        raise NotImplementedError()


class PendingLifetimeTests(SynchronousTestCase):
    def test_auth_waiting_forever_is_closed(self) -> None:
        """
        AUTH whose checker never answers: at the session lifetime the
        client gets C{421 4.4.2} and the connection closes, giving back its
        connection slot.
        """
        clock = Clock()
        checker = _SilentChecker()
        factory = RelaySMTPFactory(
            Portal(_NoRealm(), [checker]),
            HOST,
            LimitsConfig(session_timeout=100),
            clock,
            context_factory=object(),
            implicit_tls=True,
        )
        s = session(factory=factory, clock=clock)
        s.send("EHLO client.example\r\n")
        self.assertEqual(s.send(f"AUTH PLAIN {plain('apikey', 'secret')}\r\n"), [])
        self.assertEqual(len(checker.asked), 1)
        clock.advance(100)
        self.assertEqual(s.replies(), [reply_line(R.SESSION_LIFETIME_EXCEEDED, HOST)])
        self.assertTrue(s.transport.disconnecting)
        s.close()
        self.assertEqual(factory.tracker.sessions, set())
        self.assertEqual(factory.limiter.total, 0)
        # A late answer writes nothing.
        checker.asked[0].errback(UnauthorizedLogin())
        self.assertEqual(s.replies(), [])
