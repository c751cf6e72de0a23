"""
Tests for L{relayd.interfaces}: the real component and its fake provide
each seam.
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from relayd.config import HeadersConfig
from relayd.delivery import Pipeline, RelayDelivery
from relayd.interfaces import ISubmission, ISubmissionMessage
from relayd.testing import FakeDelivery
from relayd.tokens import TokenPolicy

# -- the avatar ------------------------------------------------------------


class SubmissionTests(SynchronousTestCase):
    """
    L{ISubmission} and L{ISubmissionMessage}: the avatar the realm returns
    and the message it begins.
    """

    def check(self, avatar: object) -> None:
        self.assertTrue(verifyObject(ISubmission, avatar))
        avatar.validateFrom(("client.test", "192.0.2.1"), "a@example.com")  # type: ignore[attr-defined]
        begin = avatar.validateTo("b@example.com")  # type: ignore[attr-defined]
        self.assertTrue(verifyObject(ISubmissionMessage, begin()))

    def test_relay_delivery_provides_isubmission(self) -> None:
        """
        The real avatar, L{RelayDelivery}, provides L{ISubmission}; its
        message provides L{ISubmissionMessage}.
        """
        pipeline = Pipeline(None, HeadersConfig(), Clock())  # type: ignore[arg-type]
        self.check(RelayDelivery("tok", TokenPolicy("web"), pipeline))

    def test_fake_delivery_provides_isubmission(self) -> None:
        """
        The fake avatar, L{FakeDelivery}, provides the same interfaces.
        """
        self.check(FakeDelivery())

    def test_limits_are_read_through_the_interface(self) -> None:
        """
        The policy name and the avatar's own limits are attributes of
        L{ISubmission}: C{None} when the token sets none.
        """
        policy = TokenPolicy("web", max_recipients=3, max_message_size=1000)
        avatar = RelayDelivery("tok", policy, None)  # type: ignore[arg-type]
        self.assertEqual(
            (avatar.name, avatar.max_recipients, avatar.max_message_size), ("web", 3, 1000)
        )
        fake = FakeDelivery()
        self.assertEqual((fake.max_recipients, fake.max_message_size), (None, None))
