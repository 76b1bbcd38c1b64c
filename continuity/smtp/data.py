"""The DATA section, read byte by byte and safely (RFC 5321 4.1.1.4, 4.5.2).

:class:`DataReader` is sans-I/O: the protocol feeds it whatever the transport
delivered and it says how much of that belonged to the message. It exists
because a line splitter that only knows ``<CRLF>`` loses the information that
SMTP smuggling (CVE-2023-51766 and its kin) is made of:

- the end of data is ``<CRLF>.<CRLF>`` and nothing else: ``<LF>.<LF>``,
  ``<LF>.<CRLF>``, ``<CRLF>.<LF>`` or ``<CR>.<CR>`` are message content, so
  what follows them can never be read as commands;
- a bare ``<LF>``, a bare ``<CR>`` or a NUL anywhere in the data marks the
  message as bad, but reading goes on to the real end of data, so that the
  session stays in step with the client and the refusal is the reply to that
  end of data (as mox's ``smtp/data.go`` does);
- a leading dot is removed from every line (dot-unstuffing, RFC 5321 4.5.2);
- the size is counted on the unstuffed message; once it is over the limit
  the octets are no longer kept, only counted, so an oversized message
  costs no memory while it is read to its end;
- ``Received:`` fields of the header section are counted for the hop limit
  (RFC 5321 6.3).

- a line longer than :data:`LINE_LIMIT` octets (the command line limit,
  Postfix's ``line_length_limit``; RFC 5322 2.1.1 allows only 998) marks the
  message as bad too, and again reading goes on to the real end of data: a
  long line is never a way out of DATA mode, only ``<CRLF>.<CRLF>`` is. Lines
  are consumed in fragments of :data:`FRAGMENT` octets, so a line without end
  costs no more memory than the size limit allows.
"""

from __future__ import annotations

import re

FRAGMENT = 64 * 1024
#: Octets of text a message line may have, without its CRLF.
LINE_LIMIT = 2048
_LONG_LINE = re.compile(rb"(?<![^\n])[^\r\n]{%d}" % (LINE_LIMIT + 1))  # from line starts only: one pass
_FIELD_NAME = re.compile(rb"^[!-9;-~]+$")  # RFC 5322 3.6.8 ftext


class DataReader:
    """Reads one message of a DATA command; see the module docstring.

    :param max_size: octets of (unstuffed) message beyond which it is
        refused as too big; the content is then no longer kept.
    """

    def __init__(self, max_size: int):
        self.max_size = max_size
        self.size = 0
        self.too_big = False
        self.bare_lf = False
        self.bare_cr = False
        self.nul = False
        self.long_line = False
        self.received_headers = 0
        self.done = False
        self._body = bytearray()
        self._pending = bytearray()
        self._line_start = True  # the previous octets were <CRLF> (or DATA's reply)
        self._mid_line = False  # the next octets continue a line already partly stored
        self._in_header = True

    @property
    def bad_line_ending(self) -> bool:
        return self.bare_lf or self.bare_cr

    def message(self) -> bytes:
        """The message as received, dot-unstuffed, without the final ``.<CRLF>``."""
        return bytes(self._body)

    def feed(self, data: bytes | bytearray) -> int:
        """Read ``data``; return how many of its octets belong to the message.

        When the end of data is in ``data``, :attr:`done` becomes true and the
        octets after it (pipelined commands, RFC 2920) are not consumed.
        """
        if self.done:
            return 0
        already = len(self._pending)  # a partial line: it holds no LF
        self._pending += data
        buffer = self._pending
        position = 0
        slow_until = 0
        newline = buffer.find(b"\n", already)
        while newline >= 0:
            if self._line_start and not self._mid_line and not self._in_header and position >= slow_until:
                # Fast path: a run of clean lines (every LF after a CR, no bare CR,
                # no NUL) is stored in one piece; it stops before the next line
                # that starts with a dot, which goes through _line.
                if buffer[position : position + 1] == b".":
                    slow_until = newline + 1
                else:
                    end = buffer.rfind(b"\n", position) + 1
                    dot = buffer.find(b"\r\n.", position, end)
                    if dot >= 0:
                        end = dot + 2
                    if _clean(buffer, position, end):
                        if not self.long_line and _LONG_LINE.search(buffer, position, end):
                            self.long_line = True
                        self._store(buffer[position:end])
                        position = end
                        newline = buffer.find(b"\n", position)
                        continue
                    slow_until = end  # line by line through this run, then try again
            line = bytes(buffer[position : newline + 1])
            position = newline + 1
            if self._line(line):
                self.done = True
                self._pending = bytearray()
                return position - already
            newline = buffer.find(b"\n", position)
        del buffer[:position]
        if len(buffer) > FRAGMENT:
            # Keep a final CR back: the LF that makes it a line end may come next.
            keep = 1 if buffer.endswith(b"\r") else 0
            self._fragment(bytes(buffer[: len(buffer) - keep]))
            del buffer[: len(buffer) - keep]
        return len(data)

    def _line(self, line: bytes) -> bool:
        """Take one line ending in LF; return True if it is the end of data."""
        starts_line = not self._mid_line
        if starts_line and self._line_start:
            if line == b".\r\n":  # RFC 5321 4.1.1.4: only <CRLF>.<CRLF> ends the data
                return True
            if line[:1] == b".":  # RFC 5321 4.5.2: remove the stuffed dot
                line = line[1:]
        crlf = line.endswith(b"\r\n")
        content = line[:-2] if crlf else line[:-1]
        if not crlf:
            self.bare_lf = True
        if len(content) > LINE_LIMIT:
            self.long_line = True
        self._check(content)
        if starts_line:
            self._header_line(line)
        self._store(line)
        self._line_start = crlf
        self._mid_line = False
        return False

    def _fragment(self, fragment: bytes) -> None:
        """Take the start or middle of a line longer than :data:`FRAGMENT`."""
        if not fragment:
            return
        if not self._mid_line:
            if self._line_start and fragment[:1] == b".":
                fragment = fragment[1:]
            self._header_line(fragment)
        self._check(fragment)  # no LF here, so every CR in it is bare
        self.long_line = True  # a fragment is longer than any allowed line
        self._store(fragment)
        self._mid_line = True
        self._line_start = False

    def _check(self, content: bytes) -> None:
        if b"\r" in content:
            self.bare_cr = True
        if b"\x00" in content:
            self.nul = True

    def _header_line(self, line: bytes) -> None:
        """Count ``Received:`` fields while in the header section (RFC 5322 2.2, 3.6.7)."""
        if not self._in_header:
            return
        if line in (b"\r\n", b"\n"):
            self._in_header = False
            return
        if line[:1] in (b" ", b"\t"):
            return  # a folded continuation of the previous field
        name, colon, _ = line.partition(b":")
        name = name.rstrip(b" \t")  # RFC 5322 4.5.3 obsolete WSP before the colon
        if not colon or not _FIELD_NAME.match(name):
            self._in_header = False  # not a header field: the body has begun
            return
        if name.lower() == b"received":
            self.received_headers += 1

    def _store(self, octets: bytes | bytearray) -> None:
        self.size += len(octets)
        if self.too_big:
            return
        if self.size > self.max_size:
            self.too_big = True
            self._body = bytearray()  # let the memory go; keep counting only
            return
        self._body += octets


def _clean(buffer: bytes, start: int, end: int) -> bool:
    """Whether ``buffer[start:end]`` (whole lines) is CRLF-only text without NUL."""
    if buffer.find(b"\x00", start, end) >= 0:
        return False
    lines = buffer.count(b"\n", start, end)
    return buffer.count(b"\r\n", start, end) == lines and buffer.count(b"\r", start, end) == lines
