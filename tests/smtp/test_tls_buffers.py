"""
When a TLS session gives back its memory BIOs' buffers
(L{relayd.tlsbuffers.release_buffers}): at the first reply after the handshake,
then at the first reply after each L{relayd.tlsbuffers.RELEASE_AFTER} bytes of
input, never in the clear and never in the middle of DATA.  What the
release itself does is tested in L{tests.test_tls.ReleaseBuffersTests};
a real daemon's idle sessions after large messages in
L{tests.test_tls_buffers}.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from relayd import reply as R
from relayd.smtp import session
from relayd.testing import SMTPDriver, reply_line
from relayd.tlsbuffers import RELEASE_AFTER
from tests.smtp.support import QUEUED


class ReleaseTimingTests(SynchronousTestCase):
    """
    The session asks for a release at the replies the module docstring
    names; each test records the transports it was asked for.
    """

    def setUp(self) -> None:
        self.released: list[object] = []
        self.patch(session, "release_buffers", self._release)

    def _release(self, transport: object) -> bool:
        self.released.append(transport)
        return True

    def test_first_reply_after_the_handshake(self) -> None:
        """
        Implicit TLS: the greeting goes before the handshake and releases
        nothing; the reply to the first command, EHLO, releases the
        handshake's buffers; later small commands release nothing.
        """
        s = SMTPDriver(implicit_tls=True)
        s.replies()
        self.assertEqual(self.released, [])
        self.assertEqual(s.send("EHLO c\r\n")[0], "250-mx.example.test")
        self.assertEqual(self.released, [s.proto.transport])
        for _ in range(20):
            self.assertEqual(s.send("NOOP\r\n"), [reply_line(R.OK)])
        self.assertEqual(len(self.released), 1)

    def test_not_in_the_clear(self) -> None:
        """
        Before STARTTLS nothing is released, however much is read; the
        reply to the first command after it releases.
        """
        s = SMTPDriver()
        s.replies()
        s.send("EHLO c\r\n")
        for _ in range(RELEASE_AFTER // 6 + 10):
            s.send("NOOP\r\n")
        self.assertEqual(self.released, [])
        self.assertEqual(s.send("STARTTLS\r\n"), [reply_line(R.READY_TO_START_TLS)])
        self.assertEqual(self.released, [])
        s.send("EHLO c\r\n")
        self.assertEqual(len(self.released), 1)

    def test_large_message_releases_at_its_final_reply(self) -> None:
        """
        A message larger than L{RELEASE_AFTER} releases once, at the
        reply to its final dot, not while it streams in; the next one
        does again.
        """
        s = SMTPDriver(implicit_tls=True)
        s.login()
        self.released.clear()
        line = b"x" * 76 + b"\r\n"
        for n in range(2):
            s.start()
            for _ in range(2 * RELEASE_AFTER // len(line)):
                self.assertEqual(s.send(line), [])
            self.assertEqual(self.released, [s.proto.transport] * n)
            [reply] = s.send(b".\r\n")
            self.assertRegex(reply, QUEUED)
            self.assertEqual(self.released, [s.proto.transport] * (n + 1))
        self.assertEqual(len(s.delivery.sent), 2)

    def test_small_messages_release_every_so_often(self) -> None:
        """
        1 KB messages release about once per L{RELEASE_AFTER} bytes of
        input, not at every reply.
        """
        s = SMTPDriver(implicit_tls=True)
        s.login()
        self.released.clear()
        body = b"Subject: x\r\n\r\n" + b"y" * 1000 + b"\r\n.\r\n"
        for _ in range(64):
            s.start()
            [reply] = s.send(body)
            self.assertRegex(reply, QUEUED)
        sent = 64 * (len(body) + 60)
        self.assertGreaterEqual(len(self.released), sent // RELEASE_AFTER - 1)
        self.assertLessEqual(len(self.released), sent // RELEASE_AFTER + 1)
