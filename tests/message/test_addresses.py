"""
Tests for L{relayd.message.addresses}: the author and Sender (RFC 5322
section 3.6.2), address lists and the blind copies.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from tests.message.support import (
    FROM,
    RejectionAssertions,
    message,
    parse,
)


class FromTests(RejectionAssertions):
    """
    The From and Sender fields (RFC 5322 section 3.6.2).
    """

    def test_no_from_header_gets_550_560(self) -> None:
        """
        A message without a From field is refused with 550 5.6.0.
        """
        self.assertRejected(
            message("To: bob@example.org\nSubject: hi\n"),
            550,
            "5.6.0",
            "Message has no From header",
        )

    def test_from_without_address_gets_550_560(self) -> None:
        """
        A From field that holds no usable mailbox is refused with 550 5.6.0.
        """
        for value in ("Alice", "", "<>", "undisclosed-recipients:;", "@example.com"):
            self.assertRejected(
                message(f"From: {value}\n"),
                550,
                "5.6.0",
                "From header holds no valid address",
            )

    def test_several_from_addresses_without_sender_rejected(self) -> None:
        """
        Several authors need a single Sender; without it 550 5.6.0.
        """
        text = "Message has several From addresses and no single Sender header"
        self.assertRejected(message("From: a@example.com, b@example.com\n"), 550, "5.6.0", text)
        self.assertRejected(
            message("From: a@example.com\nFrom: b@example.com\n"), 550, "5.6.0", text
        )
        self.assertRejected(
            message(
                "From: a@example.com, b@example.com\nSender: a@example.com\nSender: b@example.com\n"
            ),
            550,
            "5.6.0",
            text,
        )
        self.assertRejected(
            message("From: a@example.com, b@example.com\nSender: a@x.org, b@x.org\n"),
            550,
            "5.6.0",
            text,
        )

    def test_several_from_addresses_with_single_sender_accepted(self) -> None:
        """
        With a single Sender the first author is C{from_}; the Sender is
        reported too.
        """
        result = parse(
            message(
                "From: Ann <a@example.com>, Ben <b@example.com>\n"
                "Sender: =?iso-8859-1?q?Andr=E9?= <sec@example.com>\n"
            )
        )
        self.assertEqual(result.from_, "Ann <a@example.com>")
        self.assertEqual(result.author_address, "a@example.com")
        self.assertEqual(result.sender, "André <sec@example.com>")

    def test_sender_absent_is_none(self) -> None:
        """
        Without a Sender field L{OutboundMessage.sender} is C{None}.
        """
        self.assertIsNone(parse(message(FROM)).sender)

    def test_from_formatted_and_decoded(self) -> None:
        """
        The display name is RFC 2047 decoded (also inside quotes) and the
        mailbox formatted as C{Name <addr>}.
        """
        cases = {
            "Alice <alice@example.com>": "Alice <alice@example.com>",
            "alice@example.com": "alice@example.com",
            "<alice@example.com>": "alice@example.com",
            "=?utf-8?q?J=C3=B6rg?= <j@example.com>": "Jörg <j@example.com>",
            '"=?utf-8?b?SsO2cmc=?=" <j@example.com>': "Jörg <j@example.com>",
            '"Doe, John" <j@example.com>': '"Doe, John" <j@example.com>',
            '"A \\"B\\" C" <j@example.com>': '"A \\"B\\" C" <j@example.com>',
            "j@example.com (John Doe)": "John Doe <j@example.com>",
            "Jörg <jörg@bücher.example>": "Jörg <jörg@bücher.example>",
        }
        for value, expected in cases.items():
            result = parse(message(f"From: {value}\n"))
            self.assertEqual(result.from_, expected, value)
        result = parse(message("From: Jörg <jörg@bücher.example>\n"))
        self.assertEqual(result.author_address, "jörg@bücher.example")

    def test_from_display_name_latin1_8bit(self) -> None:
        """
        An 8-bit From that is not UTF-8 is read as windows-1252.
        """
        data = b"From: J\xf6rg <j@example.com>\r\n\r\nHi\r\n"
        self.assertEqual(parse(data).from_, "Jörg <j@example.com>")


class AddressTests(SynchronousTestCase):
    """
    To, Cc, Reply-To and the computed bcc.
    """

    def test_lists_formatted(self) -> None:
        """
        To, Cc and Reply-To are lists of formatted mailboxes, in order,
        over every field of that name.
        """
        result = parse(
            message(
                FROM + "To: Bob <bob@example.org>, carol@example.org\n"
                "To: =?utf-8?q?Dani=C3=ABl?= <d@example.org>\n"
                "Cc: Eve <eve@example.net>\n"
                "Reply-To: Desk <desk@example.com>\n"
            )
        )
        self.assertEqual(
            result.to,
            ("Bob <bob@example.org>", "carol@example.org", "Daniël <d@example.org>"),
        )
        self.assertEqual(result.cc, ("Eve <eve@example.net>",))
        self.assertEqual(result.reply_to, ("Desk <desk@example.com>",))

    def test_group_syntax(self) -> None:
        """
        Group members are listed; an empty group lists nobody
        (RFC 5322 section 3.4).
        """
        result = parse(
            message(
                FROM + "To: Team: a@example.org, B <b@example.org>;, c@example.net\n"
                "Cc: undisclosed-recipients:;\n"
            )
        )
        self.assertEqual(result.to, ("a@example.org", "B <b@example.org>", "c@example.net"))
        self.assertEqual(result.cc, ())

    def test_entries_without_domain_dropped(self) -> None:
        """
        Entries without a local part and a domain are not passed on.
        """
        result = parse(message(FROM + "To: bob, <>, @x.org, ok@example.org, ,\n"))
        self.assertEqual(result.to, ("ok@example.org",))

    def test_idn_and_utf8_local_part(self) -> None:
        """
        UTF-8 local parts and IDN domains are read as written (RFC 6532).
        """
        result = parse(
            message(FROM + "To: Müller <müller@bücher.example>, x@xn--bcher-kva.example\n")
        )
        self.assertEqual(result.to, ("Müller <müller@bücher.example>", "x@xn--bcher-kva.example"))

    def test_bcc_is_envelope_minus_to_and_cc(self) -> None:
        """
        Envelope recipients found in neither To nor Cc (compared
        case-insensitively on the addr-spec) are the bcc, in envelope order,
        once each.
        """
        result = parse(
            message(FROM + "To: Bob <Bob@Example.ORG>\nCc: carol@example.org\n"),
            rcpt=(
                "bob@example.org",
                "dave@example.net",
                "CAROL@example.org",
                "Dave@Example.net",
                "erin@example.net",
            ),
        )
        self.assertEqual(result.bcc, ("dave@example.net", "erin@example.net"))

    def test_bcc_idn_labels_compared_decoded(self) -> None:
        """
        An A-label in the header and a U-label in the envelope name the
        same mailbox (RFC 5890).
        """
        result = parse(
            message(FROM + "To: x@xn--bcher-kva.example\n"),
            rcpt=("x@bücher.example", "y@bücher.example"),
        )
        self.assertEqual(result.bcc, ("y@bücher.example",))

    def test_recipients_never_hold_line_breaks(self) -> None:
        """
        Folded and encoded display names reach no field with CR, LF or NUL.
        """
        result = parse(
            message(
                FROM + "To: =?utf-8?q?Bob=0D=0ABcc=3A_x=00?= <bob@example.org>,\n"
                " Carol\n <carol@example.org>\n"
            )
        )
        self.assertEqual(result.to, ('"Bob Bcc: x" <bob@example.org>', "Carol <carol@example.org>"))
