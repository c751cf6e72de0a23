"""
Tests for L{relayd.auth}: the token checker, the realm and the portal.
(AUTH in the SMTP session, through this portal: tests.smtp.test_auth.)
"""

from __future__ import annotations

from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import Anonymous, IUsernamePassword, UsernamePassword
from twisted.cred.error import UnauthorizedLogin, UnhandledCredentials
from twisted.cred.portal import IRealm
from twisted.mail.interfaces import IMessageDeliveryFactory
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from relayd.auth import TokenChecker, TokenRealm, make_portal
from relayd.interfaces import ISubmission
from relayd.tokens import TokenPolicy, TokenStore

TOKEN = "rly_test-token"
OTHER = "rly_other-token"


class RecordingAvatar:
    """
    What the fake avatar factory builds: a record of its arguments.
    """

    name = "avatar"

    def __init__(self, token: str, policy: TokenPolicy) -> None:
        self.token = token
        self.policy = policy


def token_store() -> TokenStore:
    return TokenStore.from_tokens({"website": TOKEN, "other": OTHER})


class TokenCheckerTests(SynchronousTestCase):
    """
    Tests for L{TokenChecker}.
    """

    def setUp(self) -> None:
        self.checker = TokenChecker(token_store())

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
        store = token_store()
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
        self.realm = TokenRealm(token_store(), RecordingAvatar)

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
        assert isinstance(avatar, RecordingAvatar)
        self.assertEqual(avatar.token, TOKEN)
        self.assertEqual(avatar.policy, TokenPolicy("website"))
        self.assertIsNone(logout())

    def test_bytes_avatar_id(self) -> None:
        """
        An avatar ID given as bytes is decoded; the factory gets text.
        """
        _, avatar, _ = self.realm.requestAvatar(TOKEN.encode(), None, ISubmission)
        assert isinstance(avatar, RecordingAvatar)
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
        self.portal = make_portal(token_store(), RecordingAvatar)

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
        assert isinstance(avatar, RecordingAvatar)
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
