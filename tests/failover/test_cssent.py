"""CS-SENT copies: the subject rewrite and the durable records kept until recovery."""

from __future__ import annotations

import email
import email.header
import email.policy

import pytest

from continuity.failover.cssent import SentCopies, prefix_subject


def subject_of(message: bytes) -> str:
    parsed = email.message_from_bytes(message, policy=email.policy.default)
    return str(parsed["Subject"])


def test_plain_subject_is_prefixed():
    """A plain subject gets "(CS-SENT) " in front."""
    out = prefix_subject(b"From: a@example.com\r\nSubject: Quarterly numbers\r\n\r\nbody\r\n")
    assert out == b"From: a@example.com\r\nSubject: (CS-SENT) Quarterly numbers\r\n\r\nbody\r\n"


def test_encoded_subject_stays_valid():
    """An RFC 2047 encoded subject decodes to the prefix and the original text."""
    out = prefix_subject(b"Subject: =?UTF-8?Q?Gr=C3=BC=C3=9Fe_aus_K=C3=B6ln?=\r\n\r\nx\r\n")
    assert subject_of(out) == "(CS-SENT) Grüße aus Köln"


def test_folded_subject_stays_folded():
    """A folded subject keeps its continuation line."""
    out = prefix_subject(b"Subject: a long\r\n subject line\r\nTo: b@example.com\r\n\r\nx\r\n")
    assert out.startswith(b"Subject: (CS-SENT) a long\r\n subject line\r\nTo: b@example.com\r\n")
    assert subject_of(out) == "(CS-SENT) a long subject line"


def test_missing_subject_becomes_the_bare_prefix():
    """A message without a subject gets "Subject: (CS-SENT)"."""
    out = prefix_subject(b"From: a@example.com\r\n\r\nSubject: not a header\r\n")
    assert subject_of(out) == "(CS-SENT)"
    assert out.endswith(b"\r\n\r\nSubject: not a header\r\n")


def test_empty_subject_becomes_the_bare_prefix():
    """An empty subject field becomes "(CS-SENT)" without a trailing space."""
    assert prefix_subject(b"Subject:\r\nTo: b@example.com\r\n\r\nx") == \
        b"Subject: (CS-SENT)\r\nTo: b@example.com\r\n\r\nx"


def test_subject_in_the_body_is_not_touched():
    """Only the header section is searched."""
    message = b"From: a@example.com\r\n\r\nSubject: quoted in the body\r\n"
    assert prefix_subject(message).count(b"(CS-SENT)") == 1
    assert b"Subject: quoted in the body" in prefix_subject(message)


def test_prefix_is_not_doubled():
    """A subject that already has the prefix is left alone."""
    message = b"Subject: (CS-SENT) again\r\n\r\nx"
    assert prefix_subject(message) == message


def test_only_the_first_subject_is_prefixed():
    """With two Subject: fields (malformed mail) only the first one changes."""
    out = prefix_subject(b"Subject: one\r\nSubject: two\r\n\r\nx")
    assert out == b"Subject: (CS-SENT) one\r\nSubject: two\r\n\r\nx"


def test_lf_only_message_gets_lf_header():
    """A message with bare LF line ends gets the added field with LF too."""
    assert prefix_subject(b"From: a@example.com\n\nbody\n") == b"Subject: (CS-SENT)\nFrom: a@example.com\n\nbody\n"


@pytest.fixture
def copies(tmp_path):
    copies = SentCopies(str(tmp_path / "cs-sent"))
    copies.prepare()
    return copies


def test_records_are_listed_per_domain_oldest_first(copies):
    """pending(domain) lists that domain's records in queue-id order, with the user as recipient."""
    copies.record("0000000000000BAAAAAA", "bob@example.com", "example.com", "bob@example.com", 1.0, "<b@x>",
                  [b"Subject: b\r\n\r\n"])
    copies.record("0000000000000AAAAAAA", "al@example.com", "example.com", "al@example.com", 1.0, None,
                  [b"Subject: a\r\n", b"\r\nbody"])
    copies.record("0000000000000CAAAAAA", "x@other.example", "other.example", "x@other.example", 1.0, None,
                  [b"Subject: c\r\n\r\n"])
    pending = copies.pending("example.com")
    assert [(e.queue_id, e.recipients) for e in pending] == [
        ("0000000000000AAAAAAA", ("al@example.com",)), ("0000000000000BAAAAAA", ("bob@example.com",))]
    assert copies.read("0000000000000AAAAAAA") == b"Subject: a\r\n\r\nbody"


def test_removed_and_discarded_records_are_gone(copies):
    """remove (after the upstream's 250) and discard (submission failed) delete the record durably."""
    copies.record("0000000000000AAAAAAA", "al@example.com", "example.com", "al@example.com", 1.0, None, [b"x"])
    copies.record("0000000000000BAAAAAA", "al@example.com", "example.com", "al@example.com", 1.0, None, [b"y"])
    assert copies.remove("0000000000000AAAAAAA")
    copies.discard("0000000000000BAAAAAA")
    assert copies.pending("example.com") == []
    assert not copies.remove("0000000000000AAAAAAA")
