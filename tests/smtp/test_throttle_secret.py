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
        # The supervisor's own guards and its workers use one key: the one
        # guards drew into the environment the workers inherit.
        self.assertEqual(bytes.fromhex(os.environ[SECRET_ENV]), guards._SECRET)

    def test_key_file_gives_every_host_one_key(self) -> None:
        """
        C{limits.auth_hmac_key_file}: two hosts reading the same secret
        count one credential under one name; another secret, another name.
        """
        from relayd.smtp.guards import read_secret

        folder = self.mktemp()
        os.makedirs(folder)
        one, two = os.path.join(folder, "one"), os.path.join(folder, "two")
        with open(one, "w") as f:
            f.write("shared-secret-for-tests\n")
        with open(two, "w") as f:
            f.write("another")
        counters = LocalCounters(Clock())
        a = AuthGuard(counters, secret=read_secret(one))
        b = AuthGuard(counters, secret=read_secret(one))
        c = AuthGuard(counters, secret=read_secret(two))
        self.assertEqual(a._credential("u", b"p"), b._credential("u", b"p"))
        self.assertNotEqual(a._credential("u", b"p"), c._credential("u", b"p"))
        empty = os.path.join(folder, "empty")
        open(empty, "w").close()
        self.assertRaises(ValueError, read_secret, empty)

    def test_unreadable_key_file_is_one_config_error(self) -> None:
        """
        A missing C{limits.auth_hmac_key_file} stops start-up with one line
        naming the key and the file.
        """
        from twisted.internet.testing import MemoryReactorClock

        from relayd.config import ConfigError, parse_config
        from relayd.service import make_service

        folder = os.path.abspath(self.mktemp())
        os.makedirs(folder)
        text = (
            '[server]\nhostname = "mx.example.test"\n'
            "[tls]\ngenerate_self_signed = true\n"
            f'certificate = "{folder}/cert.pem"\nkey = "{folder}/key.pem"\n'
            f'[auth]\ntokens_file = "{folder}/tokens.toml"\n'
            f'[limits]\nauth_hmac_key_file = "{folder}/missing"\n'
            "[dev_upstream]\nenabled = false\n"
            '[[listeners]]\nendpoint = "tcp:0:interface=127.0.0.1"\ntls = "starttls"\n'
        )
        with open(os.path.join(folder, "tokens.toml"), "w") as f:
            f.write("")
        config = parse_config(text, os.path.join(folder, "relayd.toml"))
        e = self.assertRaises(ConfigError, make_service, config, MemoryReactorClock())
        self.assertEqual(
            str(e), f"limits.auth_hmac_key_file: {folder}/missing: No such file or directory"
        )
