# -*- test-case-name: tests.smtp.test_framing -*-
"""
SMTP framing: bytes to command lines, DATA content and the end of data, and
replies to the lines written back (L{line_of}).

The session feeds every received buffer to a L{Framer} and then pulls what
it can use next: a command line (L{Framer.read_line}) or, during DATA, the
message content up to the end of data (L{Framer.read_data} with a
L{DataReader}).  Pulling, not pushing, lets the session stop reading while
a command waits (RFC 2920 section 3.1: replies in command order).

This is where "SMTP smuggling" is decided, so it has no Twisted code and
can be tested and fuzzed alone:

  - a command line is at most a limit of octets with its line end (RFC 5321
    section 4.5.3.1.4); a longer one is dropped as it arrives, never
    buffered, and one past L{COMMAND_DISCARD_LIMIT} octets ends the session;
  - only C{<CR><LF>.<CR><LF>} ends DATA (RFC 5321 section 4.1.1.4); a bare
    C{<CR>} or C{<LF>} is normalized to C{<CR><LF>} or fails the message;
  - dot-stuffing is undone (RFC 5321 section 4.5.2) on whole buffers;
  - a message line is at most a limit of octets (RFC 5321 section
    4.5.3.1.6); a longer one fails the message and is dropped as it
    arrives, its line end still counts for finding the end of data.
"""

from __future__ import annotations

import enum
import io
import re
from collections.abc import Callable

from relayd import reply as R
from relayd.reply import Reply

__all__ = [
    "AUTH_LINE_LIMIT",
    "COMMAND_DISCARD_LIMIT",
    "DataError",
    "DataReader",
    "Framer",
    "LineError",
    "line_of",
    "wire_line",
]

#: RFC 4954 section 4: an AUTH line may be up to 12288 octets long.
AUTH_LINE_LIMIT = 12288

#: How many octets of one over-long command line are read (and dropped)
#: before the session is closed instead.
COMMAND_DISCARD_LIMIT = 65536


class LineError(enum.Enum):
    """
    Why L{Framer.read_line} gave no command line.
    """

    #: The line was over the limit and has been dropped (C{500 5.5.2}).
    TOO_LONG = "too long"
    #: The line ended with a bare C{<LF>} in reject mode (C{550 5.6.0}).
    BARE_LF = "bare LF"


class DataError(enum.Enum):
    """
    Why a message failed while its content arrived; the first one counts.
    """

    #: A line over the message line limit (C{552 5.3.4}).
    LINE_TOO_LONG = "line too long"
    #: More content than the message size limit (C{552 5.3.4}).
    TOO_BIG = "too big"
    #: A bare C{<CR>} or C{<LF>} in reject mode (C{550 5.6.0}).
    BARE_NEWLINE = "bare newline"
    #: The memory bound of the process was reached (C{452 4.3.1}).
    NO_MEMORY = "no memory"


class DataReader:
    """
    The content of one DATA command, as it arrives.

    @ivar content: The content so far: complete lines with C{<CR><LF>} line
        ends, dot-stuffing undone, in one growing L{io.BytesIO} (one large
        block that goes back to the system when freed, handed over by
        L{body} without a copy: C{getvalue} gives its own buffer), or
        C{None} when there is none.  Dropped when the message fails, so a
        failed message holds no memory.
    @ivar grow: Asked before the content grows to a size in bytes, or
        C{None}; its C{False} fails the message (L{DataError.NO_MEMORY}).
    @ivar size: Octets of content taken, in bytes.
    @ivar error: The first reason the message failed, or C{None}.
    @ivar crlf: The last line taken ended with C{<CR><LF>}: a C{.<CR><LF>}
        at the start of the buffer ends the data.
    @ivar skip_line: An over-long line is being dropped up to its end.
    @ivar skip_cr: The dropped line's last octet so far was C{<CR>}.
    """

    def __init__(self, max_line_length: int, max_size: int, reject_bare_newline: bool) -> None:
        """
        @param max_line_length: The longest message line, in octets
            without its line end.
        @param max_size: The largest message, in bytes (after undoing
            dot-stuffing and normalizing line ends).
        @param reject_bare_newline: Fail a message with a bare C{<CR>} or
            C{<LF>} instead of normalizing it.
        """
        self.max_line_length = max_line_length
        self.max_size = max_size
        self.reject_bare_newline = reject_bare_newline
        self.content: io.BytesIO | None = None
        self.grow: Callable[[int], bool] | None = None
        self.size = 0
        self.crlf = True
        self.error: DataError | None = None
        self.skip_line = False
        self.skip_cr = False

    def fail(self, error: DataError) -> None:
        """
        Fail the message (the first reason is kept) and drop its content.
        """
        if self.error is None:
            self.error = error
        self.content = None

    @property
    def parts(self) -> list[bytes]:
        """
        The content so far, for a look at what is held: one L{bytes} (a
        copy once more content follows), or none.
        """
        return [self.content.getvalue()] if self.content is not None else []

    def body(self) -> bytes | bytearray:
        """
        Take the content, without copying it.

        @return: The message so far (C{b""} after a failure), as C{bytes}:
            the reader's C{io.BytesIO} buffer itself (C{getvalue} gives
            its buffer away, trimmed to size, rather than copy it, when
            nothing else holds a view of it), so a 25 MB message is not
            copied on the reactor; the reader holds none of it afterwards.
        """
        content, self.content = self.content, None
        return content.getvalue() if content is not None else b""

    def take(self, block: bytes) -> None:
        """
        Take complete lines of message content, as received (each ends
        with C{<LF>}; none is the end of data).
        """
        if not block:
            return
        self.crlf = block.endswith(b"\r\n")
        if self.error is not None:
            return
        # Undo dot-stuffing (RFC 5321 section 4.5.2).  The test for a dot
        # is memchr-fast, the one for LF-dot is not: base64 has no dots.
        if b"." in block:
            if block.startswith(b"."):
                block = block[1:]
            if b"\n." in block:
                block = block.replace(b"\n.", b"\n")
        # Line length (RFC 5321 section 4.5.3.1.6): at most the limit, plus
        # the CR (lines end at LF), measured as received (a bare CR is not a
        # line end), once the dot-stuffing is undone; and line ends: every
        # LF part of a CRLF, no bare CR.  Lines of one length (base64) are
        # checked at once.
        limit = self.max_line_length + 1
        if len(block) < _EVEN_MIN or not _even_crlf_lines(block, limit):
            if len(block) > limit and _has_long_line(block, limit):
                self.fail(DataError.LINE_TOO_LONG)
                return
            lf = block.count(b"\n")
            if block.count(b"\r") != lf or block.count(b"\r\n") != lf:
                if self.reject_bare_newline:
                    self.fail(DataError.BARE_NEWLINE)
                    return
                block = block.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")
        self.size += len(block)
        if self.size > self.max_size:
            self.fail(DataError.TOO_BIG)
            return
        if self.grow is not None and not self.grow(self.size):
            self.fail(DataError.NO_MEMORY)
            return
        if self.content is None:
            self.content = io.BytesIO()
        self.content.write(block)


def _has_long_line(block: bytes, limit: int) -> bool:
    """
    Tell whether a line of C{block} is over C{limit} octets, its LF aside.

    @param block: Lines, each ending with LF (the last one may have none).
    @param limit: The longest line allowed, in octets without its LF.
    @return: C{True} when a line is longer, exactly as
        C{max(map(len, block.split(b"\\n"))) > limit}, without making a
        list of lines: one search per about C{limit} octets.
    """
    # Proof.  Invariant: pos is the start of a line (0, or just past an
    # LF) and every line that starts before pos is at most `limit` octets
    # long.  The window block[pos : pos + limit + 1] holds the line at pos
    # with its LF if and only if that line is at most `limit` octets long.
    # With no LF in the window, the line at pos is longer: found.
    # Otherwise let nl be the last LF in the window: every line that starts
    # in block[pos : nl + 1] ends at an LF at nl or before, so it is at
    # most nl - pos <= limit octets long, and nl + 1 is the start of the
    # next line: pos = nl + 1 keeps the invariant and skips no line start.
    # Once at most `limit` octets are left, no line in them can be longer.
    # Cost: pos grows at every step, and two steps take it more than
    # `limit` octets on (the line at nl + 1 has its LF past the window), so
    # there are at most 2 * len(block) / limit + 1 searches, each over at
    # most limit + 1 octets, and rfind reads from the window's end: the
    # octets it reads are those of the line cut by the window's end.
    pos, size = 0, len(block)
    while size - pos > limit:
        nl = block.rfind(b"\n", pos, pos + limit + 1)
        if nl < 0:
            return True
        pos = nl + 1
    return False


def _even_crlf_lines(block: bytes, limit: int) -> bool:
    """
    Tell whether C{block} is lines of one length, each at most C{limit}
    octets with its CR and each ending with CRLF, with no other CR or LF:
    what a base64 body is made of (RFC 2045 section 6.8).

    Cheaper than counting CR, LF and CRLF: the line ends are read with a
    stride, then blanked in a copy, which is searched for a CR or an LF
    (memchr-fast: none is left when the block passes).

    @param block: Lines, each ending with LF.
    @param limit: The longest line allowed, in octets with its CR, without
        its LF.
    @return: C{True} when it is; C{False} says nothing.
    """
    width = block.find(b"\n") + 1  # one line with its CRLF
    count, rest = divmod(len(block), width) if width > 1 else (0, 1)
    if rest or width - 1 > limit:
        return False
    lf, cr = b"\n" * count, b"\r" * count
    if block[width - 1 :: width] != lf or block[width - 2 :: width] != cr:
        return False
    # The copy is made a piece of whole lines at a time: never a copy of a
    # whole message (a buffered one may be all in one block).
    step = width * max(1, _EVEN_PIECE // width)
    blank = bytes(step // width)
    view = memoryview(block)
    for pos in range(0, len(block), step):
        copy = bytearray(view[pos : pos + step])
        copy[width - 1 :: width] = copy[width - 2 :: width] = blank[: len(copy) // width]
        if b"\n" in copy or b"\r" in copy:
            return False
    return True


#: Octets of a block of even lines copied at once by L{_even_crlf_lines}.
_EVEN_PIECE = 64 * 1024

#: Blocks shorter than this (in octets) are not tried as even lines: their
#: counts of line ends take no longer.
_EVEN_MIN = 2048


class Framer:
    """
    The input of one SMTP session: a buffer cut into command lines and DATA.

    @ivar buffer: Received octets not used yet.
    @ivar discarding: Octets of an over-long command line dropped so far
        (0 when none is being dropped).
    """

    __slots__ = (
        "buffer",
        "discarding",
        "max_command_length",
        "max_line_length",
        "reject_bare_newline",
    )

    def __init__(
        self, max_command_length: int, max_line_length: int, reject_bare_newline: bool
    ) -> None:
        """
        @param max_command_length: The longest command line, in octets with
            its line end (RFC 5321 section 4.5.3.1.4: 512).
        @param max_line_length: The longest message line, in octets without
            its line end (RFC 5321 section 4.5.3.1.6: 998).
        @param reject_bare_newline: A line ending with a bare C{<LF>} is an
            error (instead of a line).
        """
        self.max_command_length = max_command_length
        self.max_line_length = max_line_length
        self.reject_bare_newline = reject_bare_newline
        self.buffer = bytearray()
        self.discarding = 0

    def feed(self, data: bytes) -> bool:
        """
        Add received octets.

        @param data: What the transport delivered.
        @return: C{False} when an over-long command line went past
            L{COMMAND_DISCARD_LIMIT} octets: the session should close.
        """
        if self.discarding:
            newline = data.find(b"\n")
            if newline < 0:
                self.discarding += len(data)
                return self.discarding <= COMMAND_DISCARD_LIMIT
            self.discarding = 0
            data = data[newline + 1 :]
        self.buffer += data
        return True

    def clear(self) -> None:
        """
        Forget all buffered input (STARTTLS, RFC 3207 section 4.2: what
        followed it in the clear is thrown away; or the session closed).
        """
        self.buffer = bytearray()
        self.discarding = 0

    def read_line(self, auth: bool = False) -> bytes | LineError | None:
        """
        Take the next command line (or AUTH response line).

        @param auth: The line is a response in an AUTH exchange, which may
            be up to L{AUTH_LINE_LIMIT} octets long (RFC 4954 section 4).
        @return: The line without its line end; a L{LineError} when the
            line was dropped; C{None} when no whole line has arrived.
        """
        buf = self.buffer
        newline = buf.find(b"\n")
        limit = AUTH_LINE_LIMIT if auth else self.max_command_length
        head = buf[:5].upper()
        if head == b"MAIL ":
            limit += 500  # RFC 4954 section 5: room for AUTH=<mailbox>
        elif head == b"AUTH ":
            limit = AUTH_LINE_LIMIT  # RFC 4954 section 4: initial response
        # RFC 5321 section 4.5.3.1.4: at most `limit` octets with CRLF.
        if newline < 0 or newline >= limit:
            if newline < 0 and len(buf) < limit:
                return None
            if newline < 0:
                self.discarding = len(buf)
                self.buffer = bytearray()
            else:
                del buf[: newline + 1]
            return LineError.TOO_LONG
        line = bytes(buf[:newline])
        del buf[: newline + 1]
        if line.endswith(b"\r"):
            return line[:-1]
        if self.reject_bare_newline:
            return LineError.BARE_LF
        return line

    def read_data(self, reader: DataReader) -> bool:
        """
        Give buffered DATA content to C{reader}: complete lines at once, in
        whole buffers.

        Only a line C{.<CR><LF>} that follows a C{<CR><LF>} ends the data
        (RFC 5321 section 4.1.1.4).

        @return: Whether the end of data was found (and taken from the
            buffer); C{False} when more input is needed.
        """
        buf = self.buffer
        if reader.skip_line:
            newline = buf.find(b"\n")
            if newline < 0:
                reader.skip_cr = buf.endswith(b"\r")
                self.buffer = bytearray()
                return False
            if newline > 0:
                reader.skip_cr = buf[newline - 1] == 0x0D
            reader.crlf = reader.skip_cr
            del buf[: newline + 1]
            reader.skip_line = False
            if not buf:
                return False
        last = buf.rfind(b"\n")
        if last < 0:
            if len(buf) > self.max_line_length + 2:
                self._skip_long_line(reader, buf)
            return False
        # Find the end of data among the complete lines.
        if reader.crlf and buf.startswith(b".\r\n"):
            end = 0
        else:
            # Its dot comes at or after the first dot: the search for one
            # octet is memchr-fast, the one for five is not (and base64
            # holds no dot).
            dot = buf.find(b".", 2, last + 1)
            end = -1 if dot < 0 else buf.find(b"\r\n.\r\n", dot - 2, last + 1)
            if end >= 0:
                end += 2
        # One copy of the lines (a slice of a memoryview), and the buffer
        # keeps the rest without another (del moves its start).
        if end >= 0:
            reader.take(bytes(memoryview(buf)[:end]))
            del buf[: end + 3]
            return True
        reader.take(bytes(memoryview(buf)[: last + 1]))
        del buf[: last + 1]
        if len(buf) > self.max_line_length + 2:
            self._skip_long_line(reader, buf)
        return False

    def _skip_long_line(self, reader: DataReader, partial: bytearray) -> None:
        """
        The line being received is over the limit: fail the message and
        drop the line up to its end.

        @param partial: What has arrived of the line (no LF in it).
        """
        reader.fail(DataError.LINE_TOO_LONG)
        reader.skip_line = True
        reader.skip_cr = partial.endswith(b"\r")
        self.buffer = bytearray()


# -- reply lines out ---------------------------------------------------------

_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f]")


def wire_line(code: int, status: str, text: str) -> bytes:
    """
    One reply line as the session writes it (RFC 5321 section 4.2): C{code},
    the enhanced status code (RFC 3463) when there is one, the text, CRLF.

    @param code: The reply code.
    @param status: The enhanced status code, or C{""}.
    @param text: The text; a control character in it becomes a space, so
        that nothing in it can end the reply or forge another.
    @return: The line, UTF-8, with its CRLF.
    """
    text = _UNPRINTABLE.sub(" ", text)
    line = f"{code} {status} {text}" if status else f"{code} {text}"
    return line.encode("utf-8", "replace") + b"\r\n"


#: The named replies of L{relayd.reply} (module constants, alive for the
#: process: their ids are theirs), by id; their lines are made once, on
#: first use.
_NAMED: dict[int, Reply] = {id(v): v for v in vars(R).values() if isinstance(v, Reply)}
_LINES: dict[int, bytes] = {}


def line_of(r: Reply) -> bytes:
    """
    L{wire_line} of C{r}, made once for each named reply of L{relayd.reply}.

    @param r: The reply.
    @return: Its line, with its CRLF.
    """
    line = _LINES.get(id(r))
    if line is None:
        line = wire_line(r.code, r.status, r.text)
        if id(r) in _NAMED:
            _LINES[id(r)] = line
    return line
