"""The DATA reader: end of data only at <CRLF>.<CRLF>, whatever the packet boundaries."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from continuity.smtp.data import FRAGMENT, LINE_LIMIT, DataReader

_RECEIVED = re.compile(rb"^received[ \t]*:", re.IGNORECASE)
_FIELD = re.compile(rb"^[!-9;-~]+[ \t]*:")


def reference(stream: bytes, max_size: int) -> dict:
    """A slow, obviously right reading of ``stream`` (RFC 5321 4.1.1.4, 4.5.2)."""
    end = 0 if stream.startswith(b".\r\n") else stream.find(b"\r\n.\r\n") + 2
    raw = stream[:end]
    message, position = bytearray(), 0
    for line in raw.splitlines(keepends=True) if raw else []:
        line_start = position == 0 or raw[position - 2 : position] == b"\r\n"
        position += len(line)
        message += line[1:] if line_start and line[:1] == b"." else line
    message = bytes(message)
    received = 0
    for line in message.split(b"\n"):
        line += b"\n"
        if line in (b"\n", b"\r\n") or (line[:1] not in (b" ", b"\t") and not _FIELD.match(line)):
            break
        if _RECEIVED.match(line):
            received += 1
    return {
        "consumed": end + 3,
        "message": message if len(message) <= max_size else b"",
        "size": len(message),
        "too_big": len(message) > max_size,
        "bare_lf": message.count(b"\n") != message.count(b"\r\n"),
        "bare_cr": message.count(b"\r") != message.count(b"\r\n"),
        "nul": b"\x00" in message,
        "received": received,
    }


def read(chunks: list[bytes], max_size: int) -> dict:
    reader = DataReader(max_size)
    consumed = 0
    for chunk in chunks:
        used = reader.feed(chunk)
        consumed += used
        if reader.done:
            break
    assert reader.done
    return {
        "consumed": consumed,
        "message": reader.message(),
        "size": reader.size,
        "too_big": reader.too_big,
        "bare_lf": reader.bare_lf,
        "bare_cr": reader.bare_cr,
        "nul": reader.nul,
        "received": reader.received_headers,
    }


def split(stream: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({0, len(stream), *(cut % (len(stream) + 1) for cut in cuts)})
    return [stream[a:b] for a, b in zip(points, points[1:])]


TOKENS = st.sampled_from(
    [b"a", b"text ", b".", b"..", b"\r", b"\n", b"\r\n", b"\x00", b"Received: x", b"Subject: y", b":", b" ", b"\t"]
    + [b"\r\n.", b"\n.", b".\n", b".\r", b".\r\n", b"\r\n\r\n", b"\r\nReceived: z\r\n"]
)


@settings(max_examples=500, deadline=None, database=None)
@given(st.lists(TOKENS, max_size=60), st.lists(st.integers(min_value=0), max_size=8), st.integers(10, 200))
def test_reader_agrees_with_the_reference_for_any_packet_boundaries(tokens, cuts, max_size):
    """End of data, unstuffing, size, bare CR/LF, NUL and hop count match a slow reference reading."""
    stream = b"".join(tokens) + b"\r\n.\r\nNOOP\r\n"
    expected = reference(stream, max_size)
    assert read(split(stream, cuts), max_size) == expected


def test_octets_after_the_end_are_left_for_the_commands():
    """feed returns how much of the chunk was message; pipelined commands stay unread."""
    reader = DataReader(1000)
    assert reader.feed(b"hi\r\n.\r\nQUIT\r\n") == len(b"hi\r\n.\r\n")
    assert reader.done and reader.message() == b"hi\r\n"


def test_line_longer_than_a_fragment_keeps_its_content():
    """A line of several fragments is stored whole, and a CR at a fragment edge still pairs with its LF."""
    reader = DataReader(10 * FRAGMENT)
    line = b"y" * (FRAGMENT + 10) + b"\r"
    reader.feed(line)
    reader.feed(b"\n.\r\n")
    assert reader.done and reader.message() == line + b"\n"
    assert not reader.bare_cr


def test_bare_cr_inside_a_long_line_is_seen():
    """A bare CR in a flushed fragment is noticed."""
    reader = DataReader(10 * FRAGMENT)
    reader.feed(b"z" * 100 + b"\rz" + b"z" * FRAGMENT)
    reader.feed(b"\r\n.\r\n")
    assert reader.done and reader.bare_cr


def test_leading_dot_of_a_long_line_is_unstuffed():
    """Dot-unstuffing also applies to a line longer than a fragment."""
    reader = DataReader(10 * FRAGMENT)
    reader.feed(b"." + b"w" * (FRAGMENT + 5))
    reader.feed(b"\r\n.\r\n")
    assert reader.message() == b"w" * (FRAGMENT + 5) + b"\r\n"


def test_long_line_in_a_clean_run_is_seen():
    """A line over LINE_LIMIT among clean lines (the fast path) marks the message."""
    reader = DataReader(10 * FRAGMENT)
    reader.feed(b"ok\r\n" + b"q" * (LINE_LIMIT + 1) + b"\r\nok\r\n.\r\n")
    assert reader.done and reader.long_line


def test_line_at_the_limit_is_fine():
    """A line of exactly LINE_LIMIT octets plus CRLF is not long, nor one split over feeds."""
    reader = DataReader(10 * FRAGMENT)
    reader.feed(b"q" * 1000)
    reader.feed(b"q" * (LINE_LIMIT - 1000) + b"\r\n.\r\n")
    assert reader.done and not reader.long_line


def test_long_line_split_over_feeds_is_seen():
    """A long line arriving in pieces (slow path) marks the message."""
    reader = DataReader(10 * FRAGMENT)
    reader.feed(b"Subject: x\r\n\r\n" + b"q" * 2000)
    reader.feed(b"q" * 100 + b"\r\n.\r\n")
    assert reader.done and reader.long_line
