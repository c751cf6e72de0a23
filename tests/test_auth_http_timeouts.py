# -*- test-case-name: tests.test_auth_http_timeouts -*-
"""
The http auth backend's deadline covers the whole answer, its body too,
and it keeps a bounded part of the body (L{relayd.auth_http}).
"""

from __future__ import annotations

import json
from typing import Any

from treq.testing import StubTreq
from twisted.cred.credentials import UsernamePassword
from twisted.internet import defer, task
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from relayd import reply as R
from relayd.auth import CredentialRules, Login
from relayd.auth_http import MAX_ANSWER, HTTPAuthChecker
from relayd.config import PolicyConfig
from relayd.reply import Refused

TOKEN = "kr_live_abc123"


class SlowBody(Resource):
    """
    An auth endpoint that sends its status and the start of its body, then
    nothing more (while C{self.stall}), or a huge body.
    """

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.stall = True
        self.requests: list[Request] = []
        self.body = json.dumps({"name": "acme"}).encode()

    def render_POST(self, request: Request) -> bytes | int:
        self.requests.append(request)
        request.setResponseCode(200)
        if self.stall:
            request.write(b'{"na')
            return NOT_DONE_YET
        return self.body


class AuthBodyTimeoutTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = task.Clock()
        self.endpoint = SlowBody()
        self.http = StubTreq(self.endpoint)
        self.checker = HTTPAuthChecker(
            self.http,
            "https://auth.example/smtp-auth",
            self.clock,
            rules=CredentialRules(usernames=("apikey",)),
            defaults=PolicyConfig(),
            timeout=5.0,
        )

    def login(self) -> defer.Deferred[Any]:
        return self.checker.requestAvatarId(UsernamePassword(b"apikey", TOKEN.encode()))

    def test_slow_body_times_out(self) -> None:
        """
        An endpoint that sends its headers but never finishes its body:
        after C{timeout} seconds the login (and one waiting on the same
        credential) fails with C{454 4.7.0}, and the next login asks again.
        """
        first, second = self.login(), self.login()
        self.http.flush()
        self.assertNoResult(first)
        self.clock.advance(5.0)
        for d in (first, second):
            self.assertEqual(self.failureResultOf(d, Refused).value.reply, R.AUTH_TEMPORARY_FAILURE)
        self.endpoint.stall = False
        third = self.login()
        self.http.flush()
        self.assertIsInstance(self.successResultOf(third), Login)
        self.assertEqual(len(self.endpoint.requests), 2)

    def test_big_body_bounded(self) -> None:
        """
        A body longer than L{MAX_ANSWER} is cut there: the answer is not
        JSON, a temporary failure, not a login.
        """
        self.endpoint.stall = False
        self.endpoint.body = b'{"name": "' + b"a" * (2 * MAX_ANSWER) + b'"}'
        d = self.login()
        self.http.flush()
        self.assertEqual(self.failureResultOf(d, Refused).value.reply, R.AUTH_TEMPORARY_FAILURE)
