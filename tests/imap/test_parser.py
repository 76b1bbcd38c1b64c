"""Command syntax, sequence sets, FETCH attributes and MIME sections, without a connection."""

from __future__ import annotations

import pytest

from continuity.imap.fetch import parse_fetch
from continuity.imap.mailbox import format_flags, parse_flags
from continuity.imap.mime import Part, SectionNotFound
from continuity.imap.parser import (
    Literal,
    ParseError,
    SequenceSet,
    compress,
    format_date_time,
    nstring,
    parse_date_time,
    tokenize,
)

MULTIPART = (b'From: "A B" <a@b.example>\r\nSubject: =?utf-8?q?h=C3=A9llo?=\r\n'
             b'Content-Type: multipart/mixed; boundary="XX"\r\n\r\npreamble\r\n'
             b"--XX\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nhello\r\n"
             b"--XX\r\nContent-Type: message/rfc822\r\n\r\nSubject: inner\r\n\r\ninner body\r\n--XX--\r\n")


def test_tokenize_atoms_strings_lists_literals_and_sections():
    """Atoms, quoted strings with escapes, lists, literals and bracketed fetch sections become tokens."""
    tokens = tokenize([b'a FETCH 1:* (FLAGS BODY.PEEK[HEADER.FIELDS (FROM TO)]<0.10>) "x\\"y" {3}', Literal(b"abc")])
    assert tokens == ["a", "FETCH", "1:*", ["FLAGS", "BODY.PEEK[HEADER.FIELDS (FROM TO)]<0.10>"], b'x"y', b"abc"]


@pytest.mark.parametrize("line", [b"a (", b"a )", b'a "open', b"a " + b"(" * 40, b'a "bad\\escape"', b"a {x}"])
def test_tokenize_refuses_malformed_syntax(line):
    """Unbalanced or too deep parentheses, open strings, bad escapes and bad literals are ParseErrors."""
    with pytest.raises(ParseError):
        tokenize([line])


def test_sequence_sets_resolve_star_and_compress():
    """'*' resolves to the largest number, ranges may be reversed, and numbers compress back to a set."""
    sequence = SequenceSet.parse(tokenize([b"4:2,9,7:*"])[0])
    assert sequence.resolve(8) == [(2, 4), (9, 9), (7, 8)]
    assert compress([1, 2, 3, 5, 7, 8]) == "1:3,5,7:8"
    for bad in (b"0", b"1:", b"a", b"4294967296"):
        with pytest.raises(ParseError):
            SequenceSet.parse(tokenize([bad])[0])


def test_date_time_round_trip():
    """APPEND's date-time is parsed with its zone; INTERNALDATE is written in UTC."""
    seconds = parse_date_time(b"17-Jul-1996 02:44:25 -0700")
    assert format_date_time(seconds) == b'"17-Jul-1996 09:44:25 +0000"'
    with pytest.raises(ParseError):
        parse_date_time(b"31-Foo-1996 02:44:25 -0700")


def test_nstring_quotes_or_uses_a_literal():
    """Plain text is quoted (with escapes); 8-bit or CR/LF values become literals."""
    assert nstring(b'a "b"') == b'"a \\"b\\""'
    assert nstring(b"caf\xc3\xa9") == b"{5}\r\ncaf\xc3\xa9"
    assert nstring(None) == b"NIL"


def test_flags_map_to_maildir_letters_and_keywords():
    """System flags map to Maildir letters, keywords stay names (one per case-folded name), \\Recent is dropped."""
    letters, keywords = parse_flags([b"\\Seen", b"\\deleted", b"$Forwarded", b"$forwarded", b"\\Recent", b"Junk"])
    assert (letters, keywords) == ("ST", ("$Forwarded", "Junk"))
    assert format_flags("RS", ("$Junk",), recent=True) == b"(\\Answered \\Seen $Junk \\Recent)"


@pytest.mark.parametrize("flag", [b"\\Bogus", b"a]b", b"a%b", b"a*", b"a(b", b"a{b", b'a"b', b"a\\b", b"a b", b"caf\xc3\xa9",
                                  b"a\x01b", b""])
def test_bad_flags_are_a_syntax_error(flag):
    """An unknown system flag, or a keyword that is no RFC 3501 atom (specials, CTL, 8-bit, empty), is BAD."""
    with pytest.raises(ParseError):
        parse_flags([flag])


def test_fetch_plan_macros_sections_and_modifiers():
    """Macros expand, sections parse with partials, UID comes first for UID FETCH, CHANGEDSINCE adds MODSEQ."""
    plan = parse_fetch(tokenize([b"FAST (CHANGEDSINCE 5)"]), by_uid=True, condstore=False)
    assert [item.kind for item in plan.items] == ["UID", "FLAGS", "INTERNALDATE", "RFC822.SIZE", "MODSEQ"]
    assert plan.changed_since == 5
    plan = parse_fetch(tokenize([b"(BODY[1.MIME] BODY.PEEK[TEXT]<2.3>)"]), by_uid=False, condstore=False)
    assert plan.sets_seen and plan.items[1].partial == (2, 3) and plan.items[0].numbers == (1,)
    with pytest.raises(ParseError):
        parse_fetch(tokenize([b"BODY[MIME]"]), by_uid=False, condstore=False)


def test_mime_sections_of_a_multipart_message():
    """Part numbers, HEADER/TEXT/MIME and HEADER.FIELDS address the exact octets; message/rfc822 is entered."""
    part = Part.from_bytes(MULTIPART)
    assert part.section([], "") == MULTIPART
    assert part.section([1], "") == b"hello"
    assert part.section([1], "MIME") == b"Content-Type: text/plain; charset=utf-8\r\n\r\n"
    assert part.section([2], "HEADER") == b"Subject: inner\r\n\r\n"
    assert part.section([2, 1], "") == b"inner body"
    assert part.section([], "HEADER.FIELDS", {b"subject"}) == b"Subject: =?utf-8?q?h=C3=A9llo?=\r\n\r\n"
    assert part.decoded_header("subject") == "héllo"
    with pytest.raises(SectionNotFound):
        part.section([3], "")


def test_envelope_and_bodystructure():
    """ENVELOPE carries raw header values and parsed addresses; BODYSTRUCTURE describes nested parts."""
    part = Part.from_bytes(MULTIPART)
    assert part.envelope().startswith(b'(NIL "=?utf-8?q?h=C3=A9llo?=" (("A B" NIL "a" "b.example"))')
    structure = part.body_structure(False)
    assert structure.startswith(b'(("TEXT" "PLAIN" ("CHARSET" "utf-8") NIL NIL "7BIT" 5 1)("MESSAGE" "RFC822"')
    assert structure.endswith(b' "MIXED")')
