"""The submission policy's pieces: sender ownership, From: parsing, the per-user sending rate."""

from __future__ import annotations

import email.utils
from email.parser import BytesHeaderParser
from email.policy import compat32

import pytest
from twisted.internet import task

from continuity.directory.store import User
from continuity.smtp.submission import SendRate, field_values, from_addresses, has_field, owned_addresses


def user(*aliases: str) -> User:
    return User(address="alice@example.com", domain="example.com", active=True, inclusion=None, source="local",
                has_password=True, aliases=tuple(aliases), password_hash=None)


def test_user_owns_address_and_aliases():
    """A user may send as their address and each alias, nothing else."""
    assert owned_addresses(user("sales@example.com")) == {"alice@example.com", "sales@example.com"}


def test_from_addresses_are_normalised():
    """From: addresses come back lower-cased and canonical, display names dropped."""
    assert from_addresses(b"From: Alice <Alice@EXAMPLE.com>\r\nTo: x@y\r\n\r\n") == ["alice@example.com"]


def test_every_from_address_is_returned():
    """A From: with two mailboxes yields both (each must be owned)."""
    found = from_addresses(b"From: a@example.com, Bob <bob@example.com>\r\n\r\n")
    assert found == ["a@example.com", "bob@example.com"]


def test_missing_from_is_none():
    """No From: field at all is None (the MSA adds one)."""
    assert from_addresses(b"To: x@example.com\r\n\r\n") is None


def test_unparseable_from_is_returned_as_is():
    """A From: that is not an address comes back as text, so it is refused as not owned."""
    assert from_addresses(b"From: <>\r\n\r\n") == ["(empty)"]
    assert from_addresses(b"From: a%b@example.com\r\n\r\n") == ["a%b@example.com"]


HEADERS = [
    b"From: Alice <Alice@EXAMPLE.com>\r\nTo: x@y\r\n\r\n",
    b"Subject: hi\r\nFROM: a@example.com,\r\n\t\"B, C\" <b@example.com>\r\n (comment)\r\nTo: z@z\r\n\r\n",
    b"From: =?utf-8?q?Al=C3=AFce?= <alice@example.com>\r\n\r\n",
    b"From: group: a@example.com, b@example.com;\r\n\r\n",
    b"From: \xc3\xa9l\xc3\xa8ve <eleve@example.com>\r\n\r\n",
    b"From:a@example.com\r\nFrom: b@example.com\r\n\r\n",
    b"From:\r\n <a@example.com>\r\n\r\n",
    b"From: \"quoted \\\" name\" <a@example.com>\r\n\r\n",
    b"From:  <a.b+c@sub.example.com> \r\n\r\n",
    b"From: a.@example.com\r\n\r\n",
]


@pytest.mark.parametrize("headers", HEADERS)
def test_from_addresses_are_those_the_email_package_finds(headers):
    """The From: fields are read without parsing the whole section, to the same addresses as before."""
    fields = BytesHeaderParser(policy=compat32).parsebytes(headers).get_all("From")
    assert field_values(headers, b"From") == [str(field) for field in fields]
    expected = [address for _, address in email.utils.getaddresses([str(field) for field in fields])]
    assert [found.lower() for found in from_addresses(headers)] == [address.lower() for address in expected]


def test_a_from_after_a_line_that_is_no_field_counts():
    """The email package stops at a line that is no field; a forged From: after one is still checked."""
    assert from_addresses(b"X-Broken line\r\nFrom: boss@example.com\r\n\r\n") == ["boss@example.com"]


def test_has_field_is_case_insensitive():
    """Header names match whatever their case."""
    assert has_field(b"message-id: <x@y>\r\nDATE: now\r\n", b"Message-ID")
    assert has_field(b"message-id: <x@y>\r\nDATE: now\r\n", b"Date")
    assert not has_field(b"X-Date: now\r\n", b"Date")


def test_send_rate_slides_over_an_hour():
    """Three messages an hour: the fourth waits until the first is an hour old."""
    clock = task.Clock()
    rate = SendRate(clock.seconds, 3)
    for _ in range(3):
        assert not rate.exceeded("alice@example.com")
        rate.count("alice@example.com")
        clock.advance(60)
    assert rate.exceeded("alice@example.com")
    assert not rate.exceeded("bob@example.com")
    clock.advance(3600 - 180)
    assert not rate.exceeded("alice@example.com")
