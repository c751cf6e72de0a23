# -*- test-case-name: tests.test_auth -*-
"""
SMTP AUTH (RFC 4954) against the token store: a C{twisted.cred} checker
that takes the API token as the password, and a realm that turns an
authenticated token into the avatar that delivers its mail.

The SMTP session logs in with C{portal.login(credentials, None,
ISubmission)}; the realm answers for L{ISubmission}, relayd's avatar
interface.  The portal has no checker for anonymous credentials,
so a client that has not authenticated cannot get an avatar at all.

The avatar ID is the token itself.  The realm gives the avatar the
credential to send upstream: the upstream credential relayd holds for the
token (C{upstream_credential_*} in the tokens file, read at start-up and
on reload, L{TokenStore.upstream_credential}) when it names one, else the
client's token.  Both are secrets: never log them, and never put them in
an exception message.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from typing import Any

from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import IUsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import IRealm, Portal
from twisted.internet import defer
from zope.interface import implementer

from relayd.interfaces import ISubmission
from relayd.tokens import TokenPolicy, TokenStore

__all__ = ["API_KEY_USERNAME", "TokenChecker", "TokenRealm", "make_portal"]

#: The user name clients may give with a token as their password (ignoring
#: case), as several email providers document for their SMTP relays.
API_KEY_USERNAME = "apikey"

#: Builds the avatar of an authenticated client from the credential to send
#: upstream (the held one, else the client's token) and the token's policy.
AvatarFactory = Callable[[str, TokenPolicy], object]


def _text(value: str | bytes) -> str:
    """
    Decode a credential field.

    @param value: The field, as the SMTP server gives it (bytes) or as text.
    @type value: L{bytes} or L{str}
    @return: The text.
    @rtype: L{str}
    @raise UnauthorizedLogin: When the bytes are not UTF-8 (RFC 4954
        section 4: user names and passwords are UTF-8).
    """
    if isinstance(value, str):
        return value
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        raise UnauthorizedLogin("invalid credentials") from None


def _username_allowed(username: str, token: str) -> bool:
    """
    Is C{username} acceptable alongside C{token}?

    @param username: The authentication identity the client gave.
    @param token: The password the client gave.
    @return: C{True} for the empty string, C{"apikey"} in any case, or the
        token itself (compared in constant time: it is a secret).
    """
    if username == "" or username.lower() == API_KEY_USERNAME:
        return True
    return hmac.compare_digest(
        username.encode("utf-8", "surrogatepass"),
        token.encode("utf-8", "surrogatepass"),
    )


@implementer(ICredentialsChecker)
class TokenChecker:
    """
    Check a user name and password where the password is an API token.

    @ivar credentialInterfaces: L{IUsernamePassword} only: AUTH PLAIN and
        AUTH LOGIN give those.
    """

    credentialInterfaces = (IUsernamePassword,)

    def __init__(self, store: TokenStore) -> None:
        """
        @param store: The tokens accepted; asked on every login, so a
            reloaded store takes effect at once.
        @type store: L{TokenStore}
        """
        self._store = store

    def requestAvatarId(self, credentials: Any) -> defer.Deferred[bytes | tuple[()]]:
        """
        Accept a known token.

        The password is the token.  The user name may be empty, C{apikey}
        (in any case) or the token again; any other user name is refused,
        so a client configured with a wrong account name learns so.

        @param credentials: The client's user name and password, as
            L{bytes} (from the SMTP server) or L{str}.
        @type credentials: L{IUsernamePassword}
        @return: A Deferred that fires with the token as the avatar ID
            (UTF-8 L{bytes}, as C{twisted.cred} avatar IDs are), or fails with L{UnauthorizedLogin} for a bad user
            name, an unknown token, or fields that are not UTF-8.  The
            failure's message never contains what the client sent.
        @rtype: L{defer.Deferred} of L{bytes}
        """
        try:
            username = _text(credentials.username)
            token = _text(credentials.password)
        except UnauthorizedLogin as e:
            return defer.fail(e)
        # Look the token up even when the user name is wrong, so that the
        # answer takes the same time either way.
        policy = self._store.lookup(token) if token else None
        if not _username_allowed(username, token) or policy is None:
            return defer.fail(UnauthorizedLogin("invalid credentials"))
        return defer.succeed(token.encode("utf-8"))


def _noLogout() -> None:
    """
    Nothing to release when an avatar logs out.
    """


@implementer(IRealm)
class TokenRealm:
    """
    Make the L{ISubmission} avatar of an authenticated token.
    """

    def __init__(self, store: TokenStore, avatar_factory: AvatarFactory) -> None:
        """
        @param store: The tokens, for the policy of each avatar ID.
        @type store: L{TokenStore}
        @param avatar_factory: Called with the credential to send upstream
            (the one relayd holds for the token, else the client's token)
            and the token's policy; returns an L{ISubmission} provider.
        @type avatar_factory: C{Callable[[str, TokenPolicy], object]}
        """
        self._store = store
        self._avatar_factory = avatar_factory

    def requestAvatar(
        self, avatarId: bytes | tuple[()], mind: object, *interfaces: Any
    ) -> tuple[Any, object, Callable[[], None]]:
        """
        Build the avatar of C{avatarId}.

        @param avatarId: The token, from L{TokenChecker} (L{str}, or UTF-8
            L{bytes}).
        @param mind: Unused (the SMTP server passes C{None}).
        @param interfaces: The interfaces the caller can use, in its order
            of preference; L{ISubmission} must be among them.
        @return: C{(ISubmission, avatar, logout)}.
        @raise NotImplementedError: When L{ISubmission} is not asked for.
        @raise UnauthorizedLogin: When the token is not (or, after a reload,
            no longer) in the store.
        """
        if ISubmission not in interfaces:
            raise NotImplementedError("TokenRealm only makes ISubmission avatars")
        if not isinstance(avatarId, (bytes, str)):
            raise UnauthorizedLogin("anonymous access is not allowed")
        token = _text(avatarId)
        policy = self._store.lookup(token)
        if policy is None:
            raise UnauthorizedLogin("invalid credentials")
        held = self._store.upstream_credential(policy)
        credential = token if held is None else held
        return ISubmission, self._avatar_factory(credential, policy), _noLogout


def make_portal(store: TokenStore, avatar_factory: AvatarFactory) -> Portal:
    """
    The portal the SMTP server authenticates clients with.

    @param store: The tokens accepted.
    @type store: L{TokenStore}
    @param avatar_factory: Builds an L{ISubmission} avatar from a token
        and its policy (see L{TokenRealm}).
    @type avatar_factory: C{Callable[[str, TokenPolicy], object]}
    @return: A portal with a L{TokenRealm} and one L{TokenChecker}.
    @rtype: L{Portal}
    """
    return Portal(TokenRealm(store, avatar_factory), [TokenChecker(store)])
