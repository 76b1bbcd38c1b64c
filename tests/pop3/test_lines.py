"""Command lines of the POP3 server: the one-read fast path agrees with the buffered one, limits included."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from continuity.pop3.lines import COMMAND_LINE_LIMIT, TOO_LONG, LineBuffer

reads = st.lists(st.sampled_from([b"RETR 1", b"\r", b"\n", b"\r\n", b"x" * 100, b"AUTH ", b"\x00"]),
                 max_size=6).map(b"".join)


@settings(max_examples=300)
@given(reads)
def test_whole_line_is_what_the_buffer_would_give(data):
    """When whole_line takes a read, it is exactly the one line next_line would give, and nothing is left."""
    line = LineBuffer().whole_line(data)
    if line is None:
        return
    buffered = LineBuffer()
    buffered.feed(data)
    assert buffered.next_line() == line and buffered.next_line() is None and len(buffered) == 0


def test_whole_line_keeps_the_255_octet_limit():
    """A line at the limit (CRLF counted) is whole; one octet more, or a bare LF line that long, is not."""
    at_limit = b"N" * (COMMAND_LINE_LIMIT - 2) + b"\r\n"
    assert LineBuffer().whole_line(at_limit) == b"N" * (COMMAND_LINE_LIMIT - 2)
    for data in (b"N" * (COMMAND_LINE_LIMIT - 1) + b"\r\n", b"N" * (COMMAND_LINE_LIMIT - 1) + b"\n"):
        assert LineBuffer().whole_line(data) is None
        buffered = LineBuffer()
        buffered.feed(data)
        assert buffered.next_line() is TOO_LONG


def test_whole_line_only_when_nothing_is_pending():
    """With octets already buffered, or more than one line in the read, the buffer takes the read."""
    buffered = LineBuffer()
    buffered.feed(b"RET")
    assert buffered.whole_line(b"R 1\r\n") is None
    assert LineBuffer().whole_line(b"STAT\r\nRETR 1\r\n") is None
    assert LineBuffer().whole_line(b"RETR 1") is None
