"""
Tests for L{relayd.auth}: the token checker, the realm and the portal.
"""

from __future__ import annotations

import base64

from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import Anonymous, IUsernamePassword, UsernamePassword
from twisted.cred.error import UnauthorizedLogin, UnhandledCredentials
from twisted.cred.portal import IRealm
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.mail.interfaces import IMessageDeliveryFactory
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from relayd.auth import TokenChecker, TokenRealm, make_portal
from relayd.config import LimitsConfig
from relayd.interfaces import ISubmission
from relayd.smtp.session import RelaySMTPFactory
from relayd.tokens import TokenPolicy, TokenStore

TOKEN = "rly_test-token"
OTHER = "rly_other-token"


class _Avatar:
    """
    What the fake avatar factory builds: a record of its arguments.
    """

    name = "avatar"

    def __init__(self, token: str, policy: TokenPolicy) -> None:
        self.token = token
        self.policy = policy


def _store() -> TokenStore:
    return TokenStore.from_tokens({"website": TOKEN, "other": OTHER})


class TokenCheckerTests(SynchronousTestCase):
    """
    Tests for L{TokenChecker}.
    """

    def setUp(self) -> None:
        self.checker = TokenChecker(_store())

    def assertAccepted(self, username: str | bytes, password: str | bytes) -> bytes:
        """
        The checker accepts the credentials; return the avatar ID.
        """
        result = self.successResultOf(
            self.checker.requestAvatarId(UsernamePassword(username, password))  # type: ignore[arg-type]
        )
        self.assertIsInstance(result, bytes)
        assert isinstance(result, bytes)  # for mypy
        return result

    def assertRefused(self, username: str | bytes, password: str | bytes) -> None:
        """
        The checker refuses the credentials with L{UnauthorizedLogin}, whose
        message does not repeat them.
        """
        failure = self.failureResultOf(
            self.checker.requestAvatarId(UsernamePassword(username, password)),  # type: ignore[arg-type]
            UnauthorizedLogin,
        )
        for secret in (username, password):
            if isinstance(secret, bytes):
                secret = secret.decode("utf-8", "replace")
            if secret:
                self.assertNotIn(secret, str(failure.value))

    def test_interface(self) -> None:
        """
        L{TokenChecker} provides L{ICredentialsChecker} for
        L{IUsernamePassword} credentials only.
        """
        self.assertTrue(verifyObject(ICredentialsChecker, self.checker))
        self.assertEqual(self.checker.credentialInterfaces, (IUsernamePassword,))

    def test_token_as_username(self) -> None:
        """
        The token as both user name and password is accepted; the avatar ID
        is the token.
        """
        self.assertEqual(self.assertAccepted(TOKEN, TOKEN), TOKEN.encode())

    def test_apikey_username(self) -> None:
        """
        The user name C{apikey}, in any case, is accepted.
        """
        for username in ("apikey", "APIKEY", "ApiKey"):
            self.assertEqual(self.assertAccepted(username, TOKEN), TOKEN.encode())

    def test_empty_username(self) -> None:
        """
        An empty user name is accepted.
        """
        self.assertEqual(self.assertAccepted("", TOKEN), TOKEN.encode())

    def test_wrong_token(self) -> None:
        """
        An unknown token is refused, whatever the user name.
        """
        for username in ("", "apikey", "rly_wrong"):
            self.assertRefused(username, "rly_wrong")

    def test_empty_password(self) -> None:
        """
        An empty password is refused.
        """
        self.assertRefused("", "")
        self.assertRefused("apikey", "")

    def test_wrong_username(self) -> None:
        """
        A user name that is neither empty, C{apikey} nor the token is refused
        even with a valid token; so is another valid token as user name.
        """
        for username in ("admin", "apikeys", "website", OTHER, TOKEN + "x"):
            self.assertRefused(username, TOKEN)

    def test_bytes_credentials(self) -> None:
        """
        Credentials as UTF-8 bytes, as the SMTP server gives them, are
        decoded; the avatar ID is text.
        """
        self.assertEqual(self.assertAccepted(b"apikey", TOKEN.encode()), TOKEN.encode())
        self.assertEqual(self.assertAccepted(TOKEN.encode(), TOKEN.encode()), TOKEN.encode())
        self.assertEqual(self.assertAccepted(b"", TOKEN.encode()), TOKEN.encode())

    def test_non_ascii_token(self) -> None:
        """
        Tokens are compared as UTF-8.
        """
        checker = TokenChecker(TokenStore.from_tokens({"u": "jeton-é"}))
        result = checker.requestAvatarId(UsernamePassword(b"apikey", "jeton-é".encode()))
        self.assertEqual(self.successResultOf(result), "jeton-é".encode())

    def test_invalid_utf8(self) -> None:
        """
        Credentials that are not UTF-8 are refused, not an exception.
        """
        self.assertRefused(b"apikey", b"\xff\xfe")
        self.assertRefused(b"\xff", TOKEN.encode())

    def test_lone_surrogates(self) -> None:
        """
        Text credentials that cannot be encoded are refused, not an
        exception.
        """
        self.assertRefused("\udcff", TOKEN)
        self.assertRefused("", "\udcff")

    def test_reloaded_store(self) -> None:
        """
        The checker asks the store on each login, so a reload takes effect
        at once.
        """
        store = _store()
        checker = TokenChecker(store)
        store._entries = TokenStore.from_tokens({"new": "rly_new"})._entries
        self.failureResultOf(
            checker.requestAvatarId(UsernamePassword(b"", TOKEN.encode())),
            UnauthorizedLogin,
        )
        self.successResultOf(checker.requestAvatarId(UsernamePassword(b"", b"rly_new")))


class TokenRealmTests(SynchronousTestCase):
    """
    Tests for L{TokenRealm}.
    """

    def setUp(self) -> None:
        self.realm = TokenRealm(_store(), _Avatar)

    def test_interface(self) -> None:
        """
        L{TokenRealm} provides L{IRealm}.
        """
        self.assertTrue(verifyObject(IRealm, self.realm))

    def test_submission_avatar(self) -> None:
        """
        Asked for L{ISubmission} (after an interface it does not make),
        the realm returns the avatar the factory
        built from the token and its policy, and a logout callable.
        """
        interface, avatar, logout = self.realm.requestAvatar(
            TOKEN,  # type: ignore[arg-type]  # text avatar IDs are taken too
            None,
            IMessageDeliveryFactory,
            ISubmission,
        )
        self.assertIs(interface, ISubmission)
        assert isinstance(avatar, _Avatar)
        self.assertEqual(avatar.token, TOKEN)
        self.assertEqual(avatar.policy, TokenPolicy("website"))
        self.assertIsNone(logout())

    def test_bytes_avatar_id(self) -> None:
        """
        An avatar ID given as bytes is decoded; the factory gets text.
        """
        _, avatar, _ = self.realm.requestAvatar(TOKEN.encode(), None, ISubmission)
        assert isinstance(avatar, _Avatar)
        self.assertEqual(avatar.token, TOKEN)

    def test_other_interface(self) -> None:
        """
        Without L{ISubmission} among the interfaces, the realm raises
        L{NotImplementedError}.
        """
        self.assertRaises(
            NotImplementedError,
            self.realm.requestAvatar,
            TOKEN,
            None,
            IMessageDeliveryFactory,
        )

    def test_unknown_token(self) -> None:
        """
        An avatar ID that is not a known token is refused.
        """
        self.assertRaises(
            UnauthorizedLogin,
            self.realm.requestAvatar,
            "rly_wrong",
            None,
            ISubmission,
        )


class PortalTests(SynchronousTestCase):
    """
    Tests for L{make_portal}.
    """

    def setUp(self) -> None:
        self.portal = make_portal(_store(), _Avatar)

    def test_login(self) -> None:
        """
        Logging in with a token gives the factory's avatar for it.
        """
        interface, avatar, logout = self.successResultOf(
            self.portal.login(
                UsernamePassword(b"apikey", TOKEN.encode()),
                None,
                IMessageDeliveryFactory,
                ISubmission,
            )
        )
        self.assertIs(interface, ISubmission)
        assert isinstance(avatar, _Avatar)
        self.assertEqual((avatar.token, avatar.policy), (TOKEN, TokenPolicy("website")))

    def test_login_refused(self) -> None:
        """
        A wrong token fails the login with L{UnauthorizedLogin}.
        """
        self.failureResultOf(
            self.portal.login(UsernamePassword(b"apikey", b"rly_wrong"), None, ISubmission),
            UnauthorizedLogin,
        )

    def test_anonymous_refused(self) -> None:
        """
        There is no anonymous login.
        """
        self.failureResultOf(
            self.portal.login(Anonymous(), None, ISubmission),
            UnhandledCredentials,
        )


class SessionAuthTests(SynchronousTestCase):
    """
    The portal behind relayd's SMTP session, with AUTH PLAIN and AUTH
    LOGIN (RFC 4954, RFC 4616 and draft-murchison-sasl-login).
    """

    def setUp(self) -> None:
        self.clock = Clock()
        factory = RelaySMTPFactory(
            make_portal(_store(), _Avatar),
            "relay.test",
            LimitsConfig(),
            self.clock,
            implicit_tls=True,
        )
        self.protocol = factory.buildProtocol(None)
        self.transport = StringTransport(peerAddress=IPv4Address("TCP", "192.0.2.1", 40000))
        self.protocol.makeConnection(self.transport)
        self.addCleanup(self.protocol.connectionLost, None)
        self.protocol.dataReceived(b"EHLO client.test\r\n")
        self.transport.clear()

    def test_auth_plain(self) -> None:
        """
        AUTH PLAIN with the token logs in; the avatar becomes the delivery.
        """
        response = base64.b64encode(b"\0apikey\0" + TOKEN.encode())
        self.protocol.dataReceived(b"AUTH PLAIN " + response + b"\r\n")
        self.assertTrue(self.transport.value().startswith(b"235 "))
        delivery = self.protocol.avatar
        assert isinstance(delivery, _Avatar)
        self.assertEqual(delivery.token, TOKEN)

    def test_auth_login(self) -> None:
        """
        AUTH LOGIN with the token as user name and password logs in.
        """
        self.protocol.dataReceived(b"AUTH LOGIN\r\n")
        self.protocol.dataReceived(base64.b64encode(TOKEN.encode()) + b"\r\n")
        self.protocol.dataReceived(base64.b64encode(TOKEN.encode()) + b"\r\n")
        self.assertIn(b"\r\n235 ", b"\r\n" + self.transport.value())

    def test_auth_plain_wrong_token(self) -> None:
        """
        AUTH PLAIN with an unknown token is refused with 535.
        """
        response = base64.b64encode(b"\0apikey\0rly_wrong")
        self.protocol.dataReceived(b"AUTH PLAIN " + response + b"\r\n")
        self.assertTrue(self.transport.value().startswith(b"535 "))
        self.assertIsNone(self.protocol.avatar)
