"""
Tests of L{relayd.message} against the enmime corpus of real messages.

The corpus tests read the enmime test messages (MIT licence, see
C{enmime/LICENSE} in the corpus folder).  The folder is found at
C{shared/corpus} next to the project checkout, or at C{$RELAYD_CORPUS};
those tests are skipped when it is absent.
"""

from __future__ import annotations

import email
import email.policy
import os
import re
from collections.abc import Callable
from pathlib import Path
from unittest import SkipTest

from attrs import field, frozen
from twisted.trial.unittest import SynchronousTestCase

from relayd.reply import Refused
from tests.message.support import parse

CORPUS = Path(
    os.environ.get("RELAYD_CORPUS") or Path(__file__).resolve().parents[3] / "shared" / "corpus"
)
ENMIME = CORPUS / "enmime"


@frozen
class Expected:
    """
    What the upstream must receive from one corpus message.

    @ivar subject: The decoded Subject.
    @ivar author: The addr-spec of the first From mailbox (RFC 5322
        section 3.6.2).
    @ivar text: The start of the text body, or C{None} for no text body.
    @ivar html: The start of the HTML body, or C{None}.
    @ivar attachments: C{(filename, content_type, size in bytes, inline)}.
    @ivar differs: Aspects (C{subject}, C{author}, C{text}, C{html},
        C{attachments}) where relayd deliberately reads the file otherwise
        than C{email.message_from_bytes(data, policy=policy.default)}, and
        why.  Every aspect not listed must agree with the standard library.
    """

    subject: str
    author: str
    text: str | None
    html: str | None
    attachments: tuple[tuple[str, str, int, bool], ...] = ()
    raw_only: bool = False
    differs: dict[str, str] = field(factory=dict)


@frozen
class Rejected:
    """
    The corpus message is refused with C{550 <status> <text>}.
    """

    status: str
    text: str


_EMPTY_PART = "an empty part without headers or name carries nothing"
_ALTERNATIVE = "the second text/plain is another rendering in the same alternative"
_BETTER_CHARSET = "the standard library cannot decode it (wrong or unknown charset)"

CORPUS_TABLE: dict[str, Expected | Rejected] = {
    "low-quality/bad-final-boundary.raw": Expected(
        subject="Attachment",
        author="james@makita.skynet",
        text="A text section",
        html=None,
        attachments=(("foo_9E5D72.zip", "application/x-zip-compressed", 7, False),),
        differs={"attachments": _EMPTY_PART},
    ),
    # The first line is a continuation line: the From field is lost.
    "low-quality/bad-header-start.raw": Rejected("5.6.0", "Message has no From header"),
    "low-quality/bad-header-wrap.raw": Expected(
        subject="Attachment",
        author="james@makita.skynet",
        text="A text section",
        html=None,
        # The unindented name= line ends the part's header: no file name,
        # the rest is (garbled) base64.
        attachments=(("attachment-1.zip", "application/x-zip-compressed", 63, False),),
    ),
    "low-quality/empty-header.raw": Expected(
        subject="plain text",
        author="james@makita.skynet",
        text="A text section",
        html=None,
        differs={"attachments": _ALTERNATIVE},
    ),
    "low-quality/html-only-inline.raw": Expected(
        subject="MIME test 1",
        author="james@makita.skynet",
        text=None,
        html="<html><head></head><body style",
        attachments=(("favicon.png", "image/png", 687, True),),
    ),
    "low-quality/incorrect-charset.raw": Expected(
        subject="plain text",
        author="james@makita.skynet",
        text="Using Unicode/UTF-8, you can write in emails and source code things "
        "such as\n\nMathematics and sciences:\n\n  ∮ E⋅da = Q,  n → ∞",
        html=None,
        differs={"text": "us-ascii is declared but the part is UTF-8: decoded as UTF-8"},
    ),
    "low-quality/malformed-base64-attach.raw": Expected(
        subject="Attachment",
        author="james@makita.skynet",
        text="A text section",
        html=None,
        attachments=(("some.doc", "application/msword", 7, False),),
    ),
    "low-quality/missing-content-type.raw": Expected(
        subject="plain text",
        author="james@makita.skynet",
        text="A plain text email\n",
        html=None,
    ),
    "low-quality/missing-content-type2.raw": Expected(
        subject="plain text",
        author="james@makita.skynet",
        text="A text section",
        html=None,
        differs={"attachments": _ALTERNATIVE},
    ),
    "low-quality/unk-charset-html-only.raw": Expected(
        subject="Attachment",
        author="james@makita.skynet",
        text=None,
        html='<meta charset="fakescii-7">\n<p>Hello World!</p>\n',
    ),
    "low-quality/unk-charset-part.raw": Expected(
        subject="Attachment",
        author="james@makita.skynet",
        text="A text section",
        html=None,
        attachments=(("foo_9E5D72.zip", "application/x-zip-compressed", 7, False),),
        differs={"text": _BETTER_CHARSET},
    ),
    "low-quality/unk-encoding-part.raw": Expected(
        subject="Attachment",
        author="james@makita.skynet",
        text="A text section",
        html=None,
        # Content-Transfer-Encoding base9000: passed on undecoded.
        attachments=(("foo_9E5D72.zip", "application/x-zip-compressed", 13, False),),
    ),
    "mail/attachment-application.raw": Expected(
        subject="Attachment",
        author="james@makita.skynet",
        text="A text section",
        html=None,
        attachments=(("some.doc", "application/msword", 7, False),),
    ),
    "mail/attachment-octet.raw": Expected(
        subject="In One Ear",
        author="me@here.com",
        text="A text section",
        html=None,
        attachments=(("attachment-1.bin", "application/octet-stream", 61, False),),
    ),
    "mail/attachment-only-inline-quoted-printable.raw": Expected(
        subject="Text body only with disposition inline",
        author="cgarrett@stuff.com",
        text=None,
        html='\n<!DOCTYPE html PUBLIC "-//W3C//DTD XHTML 1.0 Transitional//EN"',
    ),
    "mail/attachment-only-inline.raw": Expected(
        subject="Test",
        author="alice@test.com",
        text=None,
        html=None,
        attachments=(("favicon.jpg", "image/jpeg", 687, False),),
    ),
    "mail/attachment-only-no-disposition.raw": Expected(
        subject="Test",
        author="alice@test.com",
        text=None,
        html=None,
        attachments=(("favicon.jpg", "image/jpeg", 687, False),),
    ),
    "mail/attachment-only-text-attachment.raw": Expected(
        subject="Test",
        author="alice@test.com",
        text=None,
        html=None,
        attachments=(("test.csv", "text/plain", 10, False),),
    ),
    "mail/attachment-only.raw": Expected(
        subject="Test",
        author="alice@test.com",
        text=None,
        html=None,
        attachments=(("favicon.jpg", "image/jpeg", 687, False),),
    ),
    "mail/attachment.raw": Expected(
        subject="Attachment",
        author="james@makita.skynet",
        text="A text section",
        html=None,
        attachments=(("test.html", "text/html", 7, False),),
    ),
    "mail/ctype-bug.raw": Expected(
        subject="Welcome to Papertrail",
        author="support@papertrailapp.com",
        text="What's next? Head over to the Quick Start:",
        html="<html>\n  <head>\n    <title>Papertrail</title>",
    ),
    "mail/epilogue-sample.raw": Expected(
        subject="Epilogue",
        author="pem@open.ch",
        text="A text section",
        html=None,
        attachments=(("test.html", "text/html", 7, False),),
    ),
    # No header section at all.
    "mail/erroneous.raw": Rejected("5.6.0", "Message has no From header"),
    "mail/header-only.raw": Expected(
        subject="Attachment",
        author="james@makita.skynet",
        text=None,
        html=None,
        differs={"attachments": "a multipart without any part carries nothing"},
    ),
    "mail/html-mime-bad-charset-inline.raw": Expected(
        subject="MIME test 1",
        author="james@makita.skynet",
        text="Test of text section",
        html="<html><head></head><body style",
        attachments=(("favicon.png", "image/png", 687, True),),
        differs={"text": _BETTER_CHARSET, "html": _BETTER_CHARSET},
    ),
    "mail/html-mime-bad-unknown-charset-inline.raw": Expected(
        subject="MIME test 1",
        author="james@makita.skynet",
        text="Test of text section",
        html="<html><head></head><body style",
        attachments=(("favicon.png", "image/png", 687, True),),
        differs={"text": _BETTER_CHARSET, "html": _BETTER_CHARSET},
    ),
    "mail/html-mime-inline.raw": Expected(
        subject="MIME test 1",
        author="james@makita.skynet",
        text="Test of text section",
        html="<html><head></head><body style",
        attachments=(("favicon.png", "image/png", 687, True),),
    ),
    "mail/html-only-inline.raw": Expected(
        subject="MIME test 1",
        author="james@makita.skynet",
        text=None,
        html="<html><head></head><body style",
        attachments=(("favicon.png", "image/png", 687, True),),
    ),
    "mail/inlinemultipart.raw": Expected(
        subject="Test",
        author="bob@extern",
        text="Simple text.\n",
        html=None,
        attachments=(
            ("test.pdf", "application/pdf", 524, False),
            ("test.txt", "text/plain", 18, False),
        ),
    ),
    # "From: Bob Dunite <bob@extern> Bobby Dunite <bobby@extern>" holds two
    # mailboxes (policy.default keeps only the first) and there is no Sender.
    "mail/malformed-multiple-address-header-values.raw": Rejected(
        "5.6.0", "Message has several From addresses and no single Sender header"
    ),
    "mail/mime-alternative.raw": Expected(
        subject="Multipart Mixed",
        author="jamehi03@jamehi03lx.noa.com",
        text="Section one\n",
        html=None,
        differs={"attachments": _ALTERNATIVE},
    ),
    "mail/mime-bad-8bit-filename.raw": Expected(
        subject="Malformed test",
        author="pavel.bazika@some.domain",
        text="Text part\n",
        html=None,
        attachments=(("管理.doc", "application/msword", 7, False),),
    ),
    "mail/mime-bad-content-transfer-encoding.raw": Expected(
        subject="alert",
        author="example@demo.com",
        text="ploozdect  nispplul swunkglap zarplontruskdremp fruftsist\nploystoov",
        html='<meta http-equiv="Content-Type" content="text/html; charset=utf-8">',
        differs={"text": "plain text labelled base64 is kept with its line breaks"},
    ),
    "mail/mime-bad-content-type.raw": Expected(
        subject="Confirmation of Booking with easyHotel",
        author="bookings@easyHotel.com",
        text="\n\nThank you for booking with easyHotel.",
        html=None,
        # "application/pdf name=..." (no semicolon) is cut to its media type.
        attachments=(("Invoice_302232133150612.pdf", "application/pdf", 524, False),),
    ),
    "mail/mime-blank-media-name.raw": Expected(
        subject="Confirmation of Booking with easyHotel",
        author="bookings@easyHotel.com",
        text="\n\nThank you for booking with easyHotel.",
        html=None,
        attachments=(("Invoice_302232133150612.pdf", "application/pdf", 524, False),),
    ),
    "mail/mime-duplicate-param.raw": Expected(
        subject="Confirmation of Booking with easyHotel",
        author="bookings@easyHotel.com",
        text="\n\nThank you for booking with easyHotel.",
        html=None,
        attachments=(("Invoice_302232133150612.pdf", "application/pdf", 524, False),),
    ),
    "mail/mime-mixed-related.raw": Expected(
        subject="Multipart Mixed",
        author="jamehi03@jamehi03lx.noa.com",
        text=None,
        html="<p>html1</p>",
        attachments=(("attachment-1.html", "text/html", 12, False),),
    ),
    "mail/mime-mixed.raw": Expected(
        subject="Multipart Mixed",
        author="jamehi03@jamehi03lx.noa.com",
        text="Section one\n",
        html=None,
        attachments=(("attachment-1.txt", "text/plain", 11, False),),
    ),
    "mail/mime-signed.raw": Expected(
        subject="Multipart Signed",
        author="jamehi03@jamehi03lx.noa.com",
        text="Section one\n",
        html=None,
        attachments=(
            ("signature.asc", "application/pgp-signature", 828, False),
            ("attachment-2.txt", "text/plain", 11, False),
        ),
        raw_only=True,
    ),
    "mail/mime-unquoted-tspecials-param.raw": Expected(
        subject="Confirmation of Booking with easyHotel",
        author="bookings@easyHotel.com",
        text="\n\nThank you for booking with easyHotel.",
        html=None,
        attachments=(("Invoice_(302232133150612).pdf", "application/pdf", 524, False),),
    ),
    "mail/multipart-wo-boundary.raw": Expected(
        subject="Delivery Status Notification (Failure)",
        author="Mailer-Daemon@example.com",
        text="I'm  multipart message without boundary\n",
        html=None,
        differs={
            "text": "a multipart without boundary is passed on as text, not lost",
            "attachments": "a multipart without boundary is passed on as text, not lost",
        },
    ),
    "mail/non-mime-html-charset-header-only.raw": Expected(
        subject="Test",
        author="alice@intern.com",
        text=None,
        html="<html>\n  <head>\n    <title>Page Title</title>\n  </head>\n  <body>\n    Test Müller",
    ),
    "mail/non-mime-html.raw": Expected(
        subject="test Sun, 14 Oct 2012 16:09:01 -0700",
        author="james@hillyerd.com",
        text=None,
        html="<html>\n  <head>\n    <title>Document Title</title>",
    ),
    "mail/non-mime-missing-charset.raw": Expected(
        subject="test Sun, 14 Oct 2012 16:09:01 -0700",
        author="james@hillyerd.com",
        text=None,
        html='<html>\n  <head>\n    <meta charset="windows-1250"/>\n  </head>\n  <body>\n'
        "    Unencoded Euro Sign: \x80\n",
        differs={"html": "8-bit text without a charset is read as UTF-8"},
    ),
    "mail/non-mime.raw": Expected(
        subject="test Sun, 14 Oct 2012 16:09:01 -0700",
        author="james@hillyerd.com",
        text="This is a test mailing\n\n",
        html=None,
    ),
    "mail/other-multi-related.raw": Expected(
        subject="MIME test 1",
        author="james@makita.skynet",
        text="Plain text.\n",
        html="<i>HTML text.</i>",
        # They have a Content-ID, but the HTML references neither.
        attachments=(
            ("image001.png", "image/png", 687, False),
            ("image002.png", "image/png", 687, False),
        ),
    ),
    "mail/other-parts.raw": Expected(
        subject="Emoji from Gmail",
        author="valere.jeantet@gmail.com",
        text="A text section",
        html=None,
        attachments=(("B05.gif", "image/gif", 123, False),),
    ),
    "mail/qp-ascii-header.raw": Expected(
        subject="Test QP Subject!",
        author="james@hillyerd.com",
        text="This is a test mailing\n\n",
        html=None,
    ),
    "mail/qp-utf8-header-no-break.raw": Expected(
        subject="MIME UTF8 Test ¢ More Text",
        author="jamehi03@jamehi03lx.noa.com",
        text="Lorem ipsum dolor sit amet, consectetur adipiscing elit.",
        html="<html>\n  <head>\n\n    <meta http-equiv",
    ),
    # policy.default raises on this From; two From, one Sender: accepted.
    "mail/qp-utf8-header-recursed.raw": Expected(
        subject="MIME UTF8 Test ¢ More Text",
        author="jamehi03@jamehi03lx.noa.com",
        text="Lorem ipsum dolor sit amet, consectetur adipiscing elit.",
        html="<html>\n  <head>\n\n    <meta http-equiv",
    ),
    "mail/qp-utf8-header.raw": Expected(
        subject="MIME UTF8 Test ¢ More Text",
        author="jamehi03@jamehi03lx.noa.com",
        text="Lorem ipsum dolor sit amet, consectetur adipiscing elit.",
        html="<html>\n  <head>\n\n    <meta http-equiv",
    ),
    "mail/quoted-printable-mime.raw": Expected(
        subject="MIME Quoted Printable",
        author="jamehi03@jamehi03lx.noa.com",
        text="Lorem ipsum dolor sit amet, consectetur adipiscing elit.",
        html="<html>\n  <head>\n\n    <meta http-equiv",
    ),
    "mail/quoted-printable.raw": Expected(
        subject="Quoted Printable",
        author="james@makita.skynet",
        text="Lorem ipsum dolor sit amet, consectetur adipiscing elit.",
        html=None,
    ),
    "mail/unknown-part-type.raw": Expected(
        subject="Emoji from Gmail",
        author="valere.jeantet@gmail.com",
        text="A text section",
        html=None,
        attachments=(("B05.gif", "image/gif", 123, False),),
    ),
}

_UNREADABLE = object()


def _stdlib_reading(data: bytes) -> dict[str, object]:
    """
    What C{email.message_from_bytes(data, policy=policy.default)} reads:
    subject, first From addr-spec, text and HTML body (C{get_body}), and
    the number of leaf parts that are not those bodies.  Values it raises
    on are L{_UNREADABLE}.
    """
    msg = email.message_from_bytes(data, policy=email.policy.default)
    reading: dict[str, object] = {}
    try:
        subject = msg["subject"]
        reading["subject"] = "" if subject is None else str(subject)
    except Exception:
        reading["subject"] = _UNREADABLE
    try:
        author = msg["from"]
        reading["author"] = author.addresses[0].addr_spec if author else None
    except Exception:
        reading["author"] = _UNREADABLE
    bodies = []
    for kind in ("text", "html"):
        part = msg.get_body(("plain",) if kind == "text" else ("html",))
        bodies.append(part)
        try:
            content = part.get_content() if part is not None else None
            reading[kind] = content.replace("\r\n", "\n") if content is not None else None
        except Exception:
            reading[kind] = _UNREADABLE
    leaves = [p for p in msg.walk() if not p.is_multipart()]
    reading["attachments"] = len([p for p in leaves if all(p is not b for b in bodies)])
    return reading


class CorpusTests(SynchronousTestCase):
    """
    Every message of the enmime corpus, and what the upstream receives.
    """

    def setUp(self) -> None:
        if not ENMIME.is_dir():
            raise SkipTest(f"corpus not found at {ENMIME}")

    def read(self, name: str) -> bytes:
        return (ENMIME / name).read_bytes()

    def test_every_file_has_an_entry(self) -> None:
        """
        The table covers exactly the files of the corpus.
        """
        files = {str(p.relative_to(ENMIME)).replace(os.sep, "/") for p in ENMIME.glob("*/*.raw")}
        self.assertEqual(files, set(CORPUS_TABLE))

    def check(self, name: str) -> None:
        expected = CORPUS_TABLE[name]
        data = self.read(name)
        if isinstance(expected, Rejected):
            error = self.assertRaises(Refused, parse, data)
            self.assertEqual(
                (error.reply.code, error.reply.status, error.reply.text),
                (550, expected.status, expected.text),
            )
            return
        result = parse(data)
        self.assertEqual(result.subject, expected.subject)
        self.assertEqual(result.author_address, expected.author)
        for kind in ("text", "html"):
            want = getattr(expected, kind)
            got = getattr(result, kind)
            if want is None:
                self.assertIsNone(got, kind)
            else:
                self.assertIsNotNone(got, kind)
                self.assertTrue(got.startswith(want), f"{kind}: {got[: len(want) + 20]!r}")
        self.assertEqual(
            tuple(
                (a.filename, a.content_type, len(a.content), a.inline) for a in result.attachments
            ),
            expected.attachments,
        )
        self.assertEqual(result.raw_only, expected.raw_only)
        self.assertEqual(result.raw, data)

        # Agreement with the standard library, aspect by aspect.
        reading = _stdlib_reading(data)
        ours = {
            "subject": result.subject,
            "author": result.author_address,
            "text": result.text,
            "html": result.html,
            "attachments": len(result.attachments),
        }
        for aspect, value in ours.items():
            theirs = reading[aspect]
            if theirs is _UNREADABLE:
                continue
            if aspect in expected.differs:
                self.assertNotEqual(value, theirs, f"{aspect} now agrees: update the table")
            else:
                self.assertEqual(value, theirs, aspect)

    def test_decoded_addresses(self) -> None:
        """
        Encoded display names in From, Sender and To are decoded; the
        second author is covered by the single Sender.
        """
        for name in ("mail/qp-utf8-header.raw", "mail/qp-utf8-header-recursed.raw"):
            result = parse(self.read(name), rcpt=("marczak@inbucket.com", "x@example.org"))
            self.assertEqual(result.from_, "James Hillyerd <jamehi03@jamehi03lx.noa.com>")
            self.assertEqual(result.sender, "André Pirard <PIRARD@vm1.ulg.ac.be>")
            self.assertEqual(result.to, ("Mirosław Marczak <marczak@inbucket.com>",))
            self.assertEqual(result.bcc, ("x@example.org",))

    def test_quoted_printable_latin1_body(self) -> None:
        """
        The ISO-8859-1 quoted-printable alternative decodes to Unicode.
        """
        result = parse(self.read("mail/quoted-printable-mime.raw"))
        reading = _stdlib_reading(self.read("mail/quoted-printable-mime.raw"))
        self.assertEqual(result.text, reading["text"])
        self.assertNotIn("=\n", result.text or "")

    def test_inline_image_content(self) -> None:
        """
        The inline image keeps its Content-ID and decodes to a PNG.
        """
        result = parse(self.read("mail/html-mime-inline.raw"))
        (image,) = result.attachments
        self.assertEqual(image.content_id, "8B8481A2-25CA-4886-9B5A-8EB9115DD064@skynet")
        self.assertTrue(image.content.startswith(b"\x89PNG\r\n"))
        self.assertIn(f"cid:{image.content_id}", result.html or "")

    def test_header_policy_on_real_headers(self) -> None:
        """
        Trace and authentication fields of a real message are stripped,
        X- fields kept.
        """
        result = parse(self.read("mail/ctype-bug.raw"))
        self.assertIn(("X-Mandrill-User", "md_30112948"), result.headers)
        for name in ("Received", "DKIM-Signature", "Authentication-Results", "Date"):
            self.assertIn(name, result.stripped)
        self.assertEqual(result.mapped, ())


def _corpus_test(name: str) -> Callable[[CorpusTests], None]:
    def test(self: CorpusTests) -> None:
        self.check(name)

    entry = CORPUS_TABLE[name]
    test.__doc__ = f"{name}: " + (
        f"refused with 550 {entry.status} {entry.text}."
        if isinstance(entry, Rejected)
        else "subject, author, bodies and attachments as in the table."
    )
    return test


for _name in CORPUS_TABLE:
    setattr(
        CorpusTests,
        "test_" + re.sub(r"\W+", "_", _name.removesuffix(".raw")),
        _corpus_test(_name),
    )
