"""The submission policy's pieces: sender ownership, From: parsing, the per-user sending rate."""

from __future__ import annotations

from twisted.internet import task

from continuity.directory.store import User
from continuity.smtp.submission import SendRate, from_addresses, has_field, owned_addresses


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
