# -*- test-case-name: tests.smtp.test_throttle_secret -*-
"""
Every worker of a supervisor counts one credential under one key: the
supervisor passes its HMAC key in C{RELAYD_AUTH_SECRET}
(L{relayd.smtp.guards.process_secret}).
"""

from __future__ import annotations

import os
from unittest import mock

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from relayd.smtp import guards
from relayd.smtp.guards import SECRET_ENV, AuthGuard, LocalCounters, process_secret


class SecretTests(SynchronousTestCase):
    def test_from_the_supervisor(self) -> None:
        """
        A worker given the supervisor's key uses it: two processes with it
        name one credential's counter alike.
        """
        secret = os.urandom(32)
        with mock.patch.dict(os.environ, {SECRET_ENV: secret.hex()}):
            self.assertEqual(process_secret(), secret)
        counters = LocalCounters(Clock())
        one = AuthGuard(counters, secret=secret)
        two = AuthGuard(counters, secret=secret)
        self.assertEqual(one._credential("u", b"p"), two._credential("u", b"p"))

    def test_random_without(self) -> None:
        """
        Without (or with a broken) C{RELAYD_AUTH_SECRET}: a random key.
        """
        for value in ("", "not hex"):
            with mock.patch.dict(os.environ, {SECRET_ENV: value}):
                self.assertEqual(len(process_secret()), 32)
                self.assertNotEqual(process_secret(), process_secret())

    def test_default_is_the_process_key(self) -> None:
        self.assertEqual(AuthGuard(LocalCounters(Clock())).secret, guards._SECRET)

    def test_workers_get_the_name_guards_read(self) -> None:
        """
        The supervisor sets the variable the workers' guards read.
        """
        from relayd import workers

        self.assertEqual(workers.AUTH_SECRET_ENV, SECRET_ENV)
        self.assertEqual(len(bytes.fromhex(workers._AUTH_SECRET)), 32)
