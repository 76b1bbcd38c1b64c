"""POP3's multi-line form of a message: CRLF, byte-stuffing, TOP's cut and exact sizes, chunked anywhere."""

from __future__ import annotations

import io

from hypothesis import given, settings
from hypothesis import strategies as st

from continuity.pop3.readahead import top_of
from continuity.pop3.wire import MultilineEncoder, TopCut, encode_message, survey

# Messages made of the octets that matter here.
messages = st.lists(st.sampled_from([b"\r", b"\n", b"\r\n", b".", b"a", b"..", b"\n.", b"\r\n.\r\n"]),
                    max_size=40).map(b"".join)


def encode_in_pieces(message: bytes, cuts: list[int], top: int | None = None) -> bytes:
    encoder = MultilineEncoder()
    cut = TopCut(top) if top is not None else None
    out = []
    previous = 0
    for position in sorted(set(cuts)) + [len(message)]:
        piece = message[previous:position]
        previous = position
        if cut is not None:
            piece = cut.cut(piece)
        out.append(encoder.encode(piece))
    return b"".join(out) + encoder.finish()


def unstuff(wire: bytes) -> bytes:
    """What a client makes of the response body (RFC 1939 3)."""
    assert wire.endswith(b".\r\n")
    if wire == b".\r\n":
        return b""
    lines = wire[:-3].split(b"\r\n")
    assert lines[-1] == b""
    return b"\r\n".join(line[1:] if line.startswith(b".") else line for line in lines[:-1]) + b"\r\n"


def test_leading_dot_of_the_message_is_stuffed():
    """A dot at the very start of the message is doubled (the stock Twisted encoder misses it)."""
    assert encode_message(b".hidden\r\n") == b"..hidden\r\n.\r\n"


def test_dot_lines_are_stuffed_and_bare_lf_becomes_crlf():
    """Bare LF line ends become CRLF and every leading dot is doubled."""
    assert encode_message(b"a\n.\n..b\n") == b"a\r\n..\r\n...b\r\n.\r\n"


def test_missing_final_line_end_is_added():
    """A message without a final line end gets one before the terminator."""
    assert encode_message(b"no end") == b"no end\r\n.\r\n"


def test_lone_cr_inside_a_line_is_kept():
    """A CR that ends no line is message content and is kept."""
    assert encode_message(b"a\rb\r\n") == b"a\rb\r\n.\r\n"


def test_crlf_split_between_chunks_is_one_line_end():
    """A CRLF cut between two chunks stays one CRLF."""
    assert encode_in_pieces(b"a\r\n.b\r\n", [2]) == b"a\r\n..b\r\n.\r\n"


def test_dot_at_the_start_of_a_chunk_after_a_line_end_is_stuffed():
    """A dot opening a chunk right after a line end is doubled."""
    assert encode_in_pieces(b"a\r\n.b\r\n", [3]) == b"a\r\n..b\r\n.\r\n"


@settings(max_examples=120)
@given(messages, st.lists(st.integers(min_value=0, max_value=200), max_size=6))
def test_chunking_never_changes_the_output(message, cuts):
    """Cutting the message into chunks anywhere gives the same octets as encoding it whole."""
    cuts = [cut for cut in cuts if cut <= len(message)]
    assert encode_in_pieces(message, cuts) == encode_message(message)


@settings(max_examples=120)
@given(messages)
def test_measured_size_is_what_the_client_receives(message):
    """survey() gives the size of the message as the client gets it (CRLF, unstuffed, RFC 1939 11)."""
    wire = encode_message(message)
    assert survey(io.BytesIO(message))[0] == len(unstuff(wire))


@settings(max_examples=120)
@given(messages, st.integers(min_value=0, max_value=5), st.lists(st.integers(min_value=0, max_value=200), max_size=4))
def test_top_chunking_never_changes_the_output(message, lines, cuts):
    """TOP's cut gives the same octets whatever the chunking."""
    cuts = [cut for cut in cuts if cut <= len(message)]
    assert encode_in_pieces(message, cuts, top=lines) == encode_message(message, top_lines=lines)


def test_top_zero_sends_the_header_and_the_blank_line():
    """TOP n 0 is the header and the empty line after it."""
    assert encode_message(b"A: 1\nB: 2\n\nbody\n", top_lines=0) == b"A: 1\r\nB: 2\r\n\r\n.\r\n"


def test_top_counts_body_lines_after_the_blank_line():
    """TOP n k adds k lines of the body."""
    message = b"A: 1\r\n\r\none\r\ntwo\r\nthree\r\n"
    assert encode_message(message, top_lines=2) == b"A: 1\r\n\r\none\r\ntwo\r\n.\r\n"


def test_top_of_a_message_without_body_sends_it_whole():
    """A message with no empty line is all header: TOP sends it all."""
    assert encode_message(b"A: 1\r\nB: 2\r\n", top_lines=0) == b"A: 1\r\nB: 2\r\n.\r\n"


def test_top_header_end_split_between_chunks():
    """The empty line that ends the header is found when it is cut between chunks."""
    message = b"A: 1\r\n\r\nbody\r\n"
    for cut in range(len(message) + 1):
        assert encode_in_pieces(message, [cut], top=0) == b"A: 1\r\n\r\n.\r\n", cut


@settings(max_examples=200)
@given(messages)
def test_survey_calls_plain_exactly_the_messages_that_are_their_own_wire_form(message):
    """survey: the size of the message as sent, and plain only when the octets need no CR, dot or final line end."""
    size, plain = survey(io.BytesIO(message))
    assert size == survey(io.BytesIO(message))[0]
    assert plain == (encode_message(message) == message + b".\r\n")


def test_usual_crlf_mail_is_plain():
    """CRLF mail with no line starting with a dot is plain; a leading dot, a bare LF or no final CRLF is not."""
    assert survey(io.BytesIO(b"Subject: x\r\n\r\nbody\r\n"))[1]
    for message in (b"Subject: x\r\n\r\n.body\r\n", b"Subject: x\n\nbody\n", b"Subject: x\r\n\r\nbody"):
        assert not survey(io.BytesIO(message))[1], message


@settings(max_examples=200)
@given(messages, st.integers(min_value=0, max_value=5))
def test_top_cut_from_the_wire_form_is_the_top_cut_of_the_message(message, lines):
    """TOP from a message read ahead (its wire form) sends what TOP from the file sends."""
    assert top_of(encode_message(message), lines) == encode_message(message, top_lines=lines)
