"""The pipe between the service process and its SMTP workers: frames of accepted messages."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from continuity.workers import MAX_FRAME, FrameReader, frame


def read_all(chunks: list[bytes]) -> list[tuple[str, str, bytes]]:
    got: list[tuple[str, str, bytes]] = []
    reader = FrameReader(lambda *parts: got.append(parts))
    for chunk in chunks:
        reader.feed(chunk)
    return got


MESSAGES = [("0660E93981A08E35CBDA", "alice@sender.example", b"Subject: x\r\n\r\nwith \0 a NUL\r\n"),
            ("0660E93981A5EB8A18CC", "", b""),  # the null sender; too large to hand over: read from the spool
            ("0660E93981ABE0316E63", "j\u00f6rg@b\u00fccher.example", b"x" * 70000)]


@given(st.lists(st.integers(min_value=1, max_value=200), min_size=1, max_size=50))
def test_frames_survive_any_split_of_the_stream(cuts):
    stream = b"".join(frame(*message) for message in MESSAGES)
    chunks, offset = [], 0
    for cut in cuts:
        chunks.append(stream[offset:offset + cut])
        offset += cut
    chunks.append(stream[offset:])
    assert read_all(chunks) == MESSAGES


def test_an_oversized_frame_is_refused():
    """A broken worker cannot make the service buffer without limit."""
    with pytest.raises(ValueError, match="frame of"):
        read_all([(MAX_FRAME + 1).to_bytes(4, "big")])
