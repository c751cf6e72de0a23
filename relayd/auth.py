# -*- test-case-name: tests.test_auth -*-
"""
SMTP AUTH (RFC 4954) checkers and the realm: the tokens file, the
passthrough backend, the credential rules, and the realm that turns an
authenticated credential into the avatar that delivers its mail.

The C{http} backend's checker is in L{relayd.auth_http}; L{make_auth_portal}
picks the checker the C{[auth] backend} setting names.

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

import base64
import hmac
import re
from collections.abc import Callable, Mapping
from typing import Any

from attrs import field as attrs_field
from attrs import frozen
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import IUsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import IRealm, Portal
from twisted.internet import defer
from zope.interface import implementer

from relayd import reply as R
from relayd.config import AuthConfig, PolicyConfig
from relayd.interfaces import ISubmission
from relayd.reply import Reply
from relayd.tokens import TokenPolicy, TokenStore

__all__ = [
    "API_KEY_USERNAME",
    "AuthRefused",
    "CredentialRules",
    "Login",
    "PassthroughChecker",
    "TokenChecker",
    "TokenRealm",
    "make_auth_portal",
    "make_portal",
    "policy_from",
]

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


def _username_allowed(
    username: str, token: str, rules: tuple[str, ...] = ("blank", "apikey", "token")
) -> bool:
    """
    Is C{username} acceptable alongside C{token}?

    @param username: The authentication identity the client gave.
    @param token: The password the client gave.
    @param rules: The C{[auth] usernames} words: C{"blank"} (the empty
        string), C{"apikey"} (in any case), C{"token"} (the token itself,
        compared in constant time: it is a secret), C{"any"}.
    @return: Whether one of the rules accepts it.
    """
    if "any" in rules:
        return True
    if username == "" and "blank" in rules:
        return True
    if username.lower() == API_KEY_USERNAME and "apikey" in rules:
        return True
    return "token" in rules and hmac.compare_digest(
        username.encode("utf-8", "surrogatepass"),
        token.encode("utf-8", "surrogatepass"),
    )


class AuthRefused(UnauthorizedLogin):
    """
    A login refused with a reply of its own (the auth endpoint's text, or a
    reason named in L{relayd.reply}); the session sends L{reply} instead of
    the generic C{535}.

    @ivar reply: The 535 reply.
    """

    def __init__(self, reply: Reply) -> None:
        super().__init__("invalid credentials")
        self.reply = reply


@frozen
class Login:
    """
    The avatar ID of an authenticated client (what the checkers of this
    module and L{relayd.auth_http} return).

    @ivar credential: What the upstream gets as C{{token}}: the token, or
        C{base64(user:password)} for HTTP Basic (see L{CredentialRules}).
        A secret: never logged; C{repr} hides it.
    @ivar policy: What the client may do.
    """

    credential: str = attrs_field(repr=False)
    policy: TokenPolicy


@frozen
class CredentialRules:
    """
    The C{[auth]} credential settings: which user names go with a token,
    and what relayd forwards upstream.

    @ivar credentials: C{"token"} or C{"account"}.
    @ivar usernames: With C{"token"}: the accepted user names.
    @ivar forward: C{"password"} or C{"basic"} (RFC 7617).
    @ivar pattern: A compiled pattern a password must match in full, or
        C{None}.
    """

    credentials: str = "token"
    usernames: tuple[str, ...] = ("blank", "apikey", "token")
    forward: str = "password"
    pattern: re.Pattern[str] | None = None

    @classmethod
    def from_config(cls, config: AuthConfig) -> CredentialRules:
        """
        @param config: The C{[auth]} table.
        @rtype: L{CredentialRules}
        """
        return cls(
            config.credentials,
            config.usernames,
            config.forward,
            re.compile(config.pattern) if config.pattern else None,
        )

    def credential(self, credentials: Any) -> tuple[str, str, str]:
        """
        Check the user name and password the client gave, and build what
        goes upstream.

        @param credentials: An L{IUsernamePassword}.
        @return: C{(username, password, forwarded credential)}.
        @raise UnauthorizedLogin: For fields that are not UTF-8, an empty
            password, a user name the rules refuse, or a password that does
            not match the pattern.
        """
        username = _text(credentials.username)
        password = _text(credentials.password)
        if not password:
            raise UnauthorizedLogin("invalid credentials")
        if self.credentials == "token" and not _username_allowed(
            username, password, self.usernames
        ):
            raise AuthRefused(R.AUTH_USERNAME_REFUSED)
        if self.credentials == "account" and not username:
            raise UnauthorizedLogin("invalid credentials")
        if self.pattern is not None and not self.pattern.fullmatch(password):
            raise UnauthorizedLogin("invalid credentials")
        if self.forward == "basic":
            pair = f"{username}:{password}".encode()
            return username, password, base64.b64encode(pair).decode("ascii")
        return username, password, password


def _strings(value: object) -> tuple[str, ...] | None:
    if isinstance(value, list) and all(isinstance(v, str) and v for v in value):
        return tuple(value)
    return None


def _count(value: object) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return value
    return None


def policy_from(name: str, answer: Mapping[str, Any], defaults: PolicyConfig) -> TokenPolicy:
    """
    Build a policy from an auth backend's answer, over the C{[auth.defaults]}.

    Keys (C{docs/upstream-api.md}, "Auth contract"): C{name},
    C{senders}, C{sender_domains}, C{streams}, C{max_recipients},
    C{max_message_size} (bytes), C{attachments}, C{messages_per_minute}.
    A key that is absent, or of the wrong type, keeps the default.

    @param name: The name to use when the answer has none.
    @param answer: The decoded JSON object (may be empty).
    @param defaults: The C{[auth.defaults]} table.
    @rtype: L{TokenPolicy}
    """
    given_name = answer.get("name")
    senders = _strings(answer.get("senders"))
    domains = _strings(answer.get("sender_domains"))
    if senders is None and domains is None:
        allowed = defaults.senders
    else:
        allowed = (senders or ()) + (domains or ())
    attachments = answer.get("attachments")
    return TokenPolicy(
        name=given_name if isinstance(given_name, str) and given_name else name,
        senders=allowed,
        streams=_strings(answer.get("streams")) or defaults.streams,
        max_recipients=_count(answer.get("max_recipients")) or defaults.max_recipients or None,
        max_message_size=(
            _count(answer.get("max_message_size")) or defaults.max_message_size or None
        ),
        attachments=attachments if isinstance(attachments, bool) else defaults.attachments,
        messages_per_minute=(
            _count(answer.get("messages_per_minute")) or defaults.messages_per_minute or None
        ),
    )


@implementer(ICredentialsChecker)
class TokenChecker:
    """
    Check a user name and password where the password is an API token.

    @ivar credentialInterfaces: L{IUsernamePassword} only: AUTH PLAIN and
        AUTH LOGIN give those.
    """

    credentialInterfaces = (IUsernamePassword,)

    def __init__(self, store: TokenStore, rules: CredentialRules | None = None) -> None:
        """
        @param store: The tokens accepted; asked on every login, so a
            reloaded store takes effect at once.
        @type store: L{TokenStore}
        @param rules: The accepted user names (C{[auth] usernames});
            C{None} for the default (blank, C{apikey}, the token).
        """
        self._store = store
        self._rules = rules or CredentialRules()

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
        if policy is None or not _username_allowed(username, token, self._rules.usernames):
            return defer.fail(UnauthorizedLogin("invalid credentials"))
        return defer.succeed(token.encode("utf-8"))


@implementer(ICredentialsChecker)
class PassthroughChecker:
    """
    The C{passthrough} backend: accept any credential that matches the
    configured pattern, and let the upstream judge it at the end of DATA
    (its 401/403 becomes a 5.7.x refusal, L{relayd.delivery}).

    @ivar credentialInterfaces: L{IUsernamePassword} only.
    """

    credentialInterfaces = (IUsernamePassword,)

    def __init__(self, rules: CredentialRules, defaults: PolicyConfig) -> None:
        """
        @param rules: The credential rules; their pattern is required.
        @param defaults: The policy every client gets.
        """
        self._rules = rules
        self._policy = policy_from("passthrough", {}, defaults)

    def requestAvatarId(self, credentials: Any) -> defer.Deferred[Any]:
        """
        @param credentials: The client's user name and password.
        @return: A Deferred firing with a L{Login}, or failing with
            L{UnauthorizedLogin} when the rules refuse the credential.
        """
        try:
            _, _, forwarded = self._rules.credential(credentials)
        except UnauthorizedLogin as e:
            return defer.fail(e)
        return defer.succeed(Login(forwarded, self._policy))


def _noLogout() -> None:
    """
    Nothing to release when an avatar logs out.
    """


@implementer(IRealm)
class TokenRealm:
    """
    Make the L{ISubmission} avatar of an authenticated token.
    """

    def __init__(self, store: TokenStore | None, avatar_factory: AvatarFactory) -> None:
        """
        @param store: The tokens, for the policy of each token avatar ID
            (C{None} when every avatar ID is a L{Login}).
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
        login: object = avatarId
        if isinstance(login, Login):
            return ISubmission, self._avatar_factory(login.credential, login.policy), _noLogout
        if not isinstance(avatarId, (bytes, str)) or self._store is None:
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


def make_auth_portal(
    config: AuthConfig,
    avatar_factory: AvatarFactory,
    store: TokenStore | None = None,
    checker: ICredentialsChecker | None = None,
) -> Portal:
    """
    The portal of the C{[auth] backend} the configuration names.

    @param config: The C{[auth]} table.
    @param avatar_factory: Builds the L{ISubmission} avatar.
    @param store: The tokens file (C{tokens_file} backend).
    @param checker: The C{http} backend's checker
        (L{relayd.auth_http.HTTPAuthChecker}), built by the caller, which
        has the HTTP client and the clock.
    @return: The portal.
    @raise ValueError: When the backend's store or checker is not given.
    """
    rules = CredentialRules.from_config(config)
    if config.backend == "tokens_file":
        if store is None:
            raise ValueError("the tokens_file backend needs a token store")
        return Portal(TokenRealm(store, avatar_factory), [TokenChecker(store, rules)])
    if config.backend == "passthrough":
        checker = PassthroughChecker(rules, config.defaults)
    if checker is None:
        raise ValueError("the http backend needs its checker")
    return Portal(TokenRealm(None, avatar_factory), [checker])
