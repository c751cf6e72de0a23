"""
Tests for L{relayd.tokens.policy}: which senders and message streams a
token's policy allows.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from relayd.tokens import (
    TokenPolicy,
)


class TokenPolicySenderTests(SynchronousTestCase):
    """
    Tests for L{TokenPolicy.allows_sender}.
    """

    def test_no_senders_allows_any(self) -> None:
        """
        Without C{senders}, any reverse-path is allowed, the null one too.
        """
        policy = TokenPolicy("t")
        self.assertTrue(policy.allows_sender("a@example.com"))
        self.assertTrue(policy.allows_sender(""))

    def test_domain_matches_any_local_part(self) -> None:
        """
        A domain entry allows every address at that domain, ignoring case.
        """
        policy = TokenPolicy("t", senders=("Example.COM",))
        self.assertTrue(policy.allows_sender("news@example.com"))
        self.assertTrue(policy.allows_sender("Alice@EXAMPLE.com"))

    def test_domain_is_exact(self) -> None:
        """
        A domain entry does not allow its subdomains or other domains that
        end with the same text.
        """
        policy = TokenPolicy("t", senders=("example.com",))
        self.assertFalse(policy.allows_sender("a@mail.example.com"))
        self.assertFalse(policy.allows_sender("a@badexample.com"))
        self.assertFalse(policy.allows_sender("a@example.org"))

    def test_domain_in_local_part_does_not_match(self) -> None:
        """
        Only the part after the last C{@} is the domain.
        """
        policy = TokenPolicy("t", senders=("example.com",))
        self.assertFalse(policy.allows_sender('"x@example.com"@evil.test'))
        self.assertFalse(policy.allows_sender("example.com@evil.test"))

    def test_address_matches_whole_address(self) -> None:
        """
        An address entry allows that address only, ignoring case.
        """
        policy = TokenPolicy("t", senders=("alerts@example.org",))
        self.assertTrue(policy.allows_sender("alerts@example.org"))
        self.assertTrue(policy.allows_sender("ALERTS@Example.Org"))
        self.assertFalse(policy.allows_sender("other@example.org"))
        self.assertFalse(policy.allows_sender("alerts@example.com"))

    def test_domains_and_addresses_together(self) -> None:
        """
        Any matching entry allows the sender.
        """
        policy = TokenPolicy("t", senders=("example.com", "alerts@example.org"))
        self.assertTrue(policy.allows_sender("x@example.com"))
        self.assertTrue(policy.allows_sender("alerts@example.org"))
        self.assertFalse(policy.allows_sender("x@example.org"))

    def test_internationalized_domain(self) -> None:
        """
        A domain matches in U-label and A-label form (RFC 5890).
        """
        unicode = TokenPolicy("t", senders=("bücher.example",))
        self.assertTrue(unicode.allows_sender("a@xn--bcher-kva.example"))
        self.assertTrue(unicode.allows_sender("a@BÜCHER.example"))
        ascii_ = TokenPolicy("t", senders=("xn--bcher-kva.example",))
        self.assertTrue(ascii_.allows_sender("a@bücher.example"))
        address = TokenPolicy("t", senders=("info@bücher.example",))
        self.assertTrue(address.allows_sender("INFO@xn--bcher-kva.example"))

    def test_trailing_dot(self) -> None:
        """
        A fully qualified domain with its trailing dot is the same domain.
        """
        policy = TokenPolicy("t", senders=("example.com.",))
        self.assertTrue(policy.allows_sender("a@example.com"))
        self.assertTrue(TokenPolicy("t", ("example.com",)).allows_sender("a@example.com."))

    def test_not_an_address(self) -> None:
        """
        With C{senders}, the null reverse-path and strings without a local
        part or domain are refused.
        """
        policy = TokenPolicy("t", senders=("example.com",))
        for address in ("", "example.com", "@example.com", "a@"):
            self.assertFalse(policy.allows_sender(address), address)

    @given(
        local=st.from_regex(r"[A-Za-z0-9._+-]{1,20}", fullmatch=True),
        domain=st.from_regex(r"[A-Za-z0-9-]{1,20}\.[A-Za-z]{2,6}", fullmatch=True),
    )
    def test_case_never_matters(self, local: str, domain: str) -> None:
        """
        Changing the case of the address or the entry never changes the
        answer.
        """
        address = f"{local}@{domain}"
        for entry in (domain, address):
            for policy in (
                TokenPolicy("t", senders=(entry,)),
                TokenPolicy("t", senders=(entry.upper(),)),
            ):
                self.assertTrue(policy.allows_sender(address))
                self.assertTrue(policy.allows_sender(address.swapcase()))
                self.assertTrue(policy.allows_sender(address.upper()))


class TokenPolicyStreamTests(SynchronousTestCase):
    """
    Tests for L{TokenPolicy.allows_stream}.
    """

    def test_no_streams_allows_any(self) -> None:
        """
        Without C{streams}, any stream is allowed, and no stream.
        """
        policy = TokenPolicy("t")
        self.assertTrue(policy.allows_stream("broadcast"))
        self.assertTrue(policy.allows_stream(None))

    def test_listed_streams_only(self) -> None:
        """
        With C{streams}, only the listed streams are allowed, exactly.
        """
        policy = TokenPolicy("t", streams=("outbound", "broadcast"))
        self.assertTrue(policy.allows_stream("outbound"))
        self.assertTrue(policy.allows_stream("broadcast"))
        self.assertFalse(policy.allows_stream("other"))
        self.assertFalse(policy.allows_stream("Outbound"))
        self.assertFalse(policy.allows_stream(""))

    def test_no_stream_refused_when_restricted(self) -> None:
        """
        With C{streams}, a message that names no stream is refused.
        """
        self.assertFalse(TokenPolicy("t", streams=("outbound",)).allows_stream(None))

    def test_lists_become_tuples(self) -> None:
        """
        Lists given for C{senders} and C{streams} are stored as tuples, so a
        policy stays immutable and hashable.
        """
        policy = TokenPolicy("t", senders=["a.example"], streams=["s"])  # type: ignore[arg-type]
        self.assertEqual(policy.senders, ("a.example",))
        self.assertEqual(policy.streams, ("s",))
        hash(policy)
