"""The directory: domains, users, aliases, coverage and the password policy in the store."""

from __future__ import annotations

import pytest

from continuity.db import Database
from continuity.directory.store import Directory, is_covered
from continuity.errors import Conflict, InvalidAddress, InvalidValue, NotFound, WeakPassword

GOOD = "Secret123"


@pytest.fixture
def directory(tmp_path):
    directory = Directory(Database(str(tmp_path / "s.db")).open())
    directory.add_domain("Example.COM", "mail.example.com:25")
    return directory


def test_domain_names_are_normalised(directory):
    """Domains are stored lower-case, internationalised ones as IDNA A-labels."""
    assert directory.get_domain("EXAMPLE.com").name == "example.com"
    assert directory.add_domain("bücher.example", "10.0.0.1:25").name == "xn--bcher-kva.example"


@pytest.mark.parametrize("upstream", ["nohost", "host:0", "host:99999", "[not-v6]:25", "a b:25", ":25"])
def test_bad_upstream_is_refused(directory, upstream):
    """An upstream must be HOST:PORT."""
    with pytest.raises(InvalidAddress, match="bad upstream"):
        directory.add_domain("other.example", upstream)


def test_duplicate_domain_is_refused(directory):
    """A domain is hosted once."""
    with pytest.raises(Conflict):
        directory.add_domain("example.com", "x.example:25")


@pytest.mark.parametrize(
    "address",
    [
        "a\r\nb@example.com",
        "a\x00b@example.com",
        "../etc@example.com",
        "a/b@example.com",
        "a..b@example.com",
        '"quoted"@example.com',
        "a%b@example.com",
        "a!b@example.com",
        "@route:a@example.com",
        "a@b@example.com",
    ],
)
def test_unsafe_addresses_never_reach_the_store(directory, address):
    """CR, LF, NUL, '/', '..' and quoting tricks are refused."""
    with pytest.raises(InvalidAddress):
        directory.add_user(address, GOOD)
    assert directory.list_users() == []


def test_user_of_unhosted_domain_is_refused(directory):
    """Users belong to hosted domains."""
    with pytest.raises(NotFound, match="not hosted"):
        directory.add_user("bob@elsewhere.example", GOOD)


def test_weak_password_is_refused_with_reason(directory):
    """The default policy names the first unmet requirement."""
    with pytest.raises(WeakPassword, match="password too weak: needs an upper-case letter"):
        directory.add_user("bob@example.com", "secret123")
    with pytest.raises(WeakPassword, match="needs at least 8 characters"):
        directory.add_user("bob@example.com", "Sec1")
    with pytest.raises(WeakPassword, match="needs a digit"):
        directory.add_user("bob@example.com", "SecretSecret")


def test_domain_policy_applies_to_password_changes(directory):
    """A stricter policy set on the domain applies to every later password."""
    directory.add_user("bob@example.com", GOOD)
    directory.set_domain("example.com", password_policy="min=12,upper,lower,digit,special")
    with pytest.raises(WeakPassword, match="at least 12"):
        directory.set_password("bob@example.com", "Secret12345")
    with pytest.raises(WeakPassword, match="special"):
        directory.set_password("bob@example.com", "Secret1234567")
    directory.set_password("bob@example.com", "Secret12345!x")


def test_passwords_are_hashed_and_verified(directory):
    """Only the salted hash is stored; authenticate checks it."""
    directory.add_user("Bob@Example.com", GOOD)
    stored = directory.db.read("SELECT password_hash FROM users")[0][0]
    assert GOOD not in stored and stored.startswith("$argon2id$")
    assert directory.authenticate("bob@example.com", GOOD).address == "bob@example.com"
    assert directory.authenticate("bob@example.com", "Wrong1234") is None
    assert directory.authenticate("nobody@example.com", GOOD) is None


def test_a_login_is_remembered_for_recently_verified(directory, monkeypatch):
    """authenticate always verifies fully; what it accepted, recently_verified accepts with no Argon2id."""
    from continuity.directory import store

    directory.add_user("bob@example.com", GOOD)
    assert directory.recently_verified("bob@example.com", GOOD) is None
    assert directory.authenticate("bob@example.com", GOOD).address == "bob@example.com"
    monkeypatch.setattr(store, "verify_password", lambda *a: pytest.fail("verified again"))
    assert directory.recently_verified("Bob@Example.com", GOOD).address == "bob@example.com"
    assert directory.authenticate("bob@example.com", GOOD).address == "bob@example.com"  # one that waited
    assert directory.recently_verified("bob@example.com", "Wrong1234") is None
    assert directory.recently_verified("nobody@example.com", GOOD) is None


def test_failures_are_verified_in_full_even_after_a_login(directory, monkeypatch):
    """A wrong password of a remembered user, or any password of a deactivated one, costs a verification."""
    from continuity.directory import store

    directory.add_user("bob@example.com", GOOD)
    assert directory.authenticate("bob@example.com", GOOD) is not None
    verifications = []
    real = store.verify_password
    monkeypatch.setattr(store, "verify_password", lambda *a: verifications.append(a[1]) or real(*a))
    assert directory.authenticate("bob@example.com", "Wrong1234") is None
    directory.set_active("bob@example.com", False)
    assert directory.authenticate("bob@example.com", GOOD) is None
    assert verifications == ["Wrong1234", GOOD]


def test_a_changed_password_applies_at_once(directory):
    """The remembered login is for the stored hash it matched: the old password stops working with the change."""
    directory.add_user("bob@example.com", GOOD)
    assert directory.authenticate("bob@example.com", GOOD) is not None
    directory.set_password("bob@example.com", "Other4567")
    assert directory.recently_verified("bob@example.com", GOOD) is None
    assert directory.authenticate("bob@example.com", GOOD) is None
    assert directory.authenticate("bob@example.com", "Other4567") is not None


def test_a_deactivated_user_is_refused_even_after_a_login(directory):
    """The user's record is read for each login: deactivation applies at once."""
    directory.add_user("bob@example.com", GOOD)
    assert directory.authenticate("bob@example.com", GOOD) is not None
    directory.set_active("bob@example.com", False)
    assert directory.recently_verified("bob@example.com", GOOD) is None
    assert directory.authenticate("bob@example.com", GOOD) is None


def test_an_inactive_users_password_is_not_remembered(directory):
    """A right password of an inactive user is a failure like any other: nothing is kept of it."""
    directory.add_user("bob@example.com", GOOD, active=False)
    assert directory.authenticate("bob@example.com", GOOD) is None
    directory.set_active("bob@example.com", True)
    assert directory.recently_verified("bob@example.com", GOOD) is None


def test_inactive_user_cannot_authenticate(directory):
    """Deactivation refuses logins."""
    directory.add_user("bob@example.com", GOOD)
    directory.set_active("bob@example.com", False)
    assert directory.authenticate("bob@example.com", GOOD) is None


def test_aliases_resolve_to_their_user(directory):
    """Mail for an alias resolves to the user; an alias cannot shadow a user."""
    directory.add_user("bob@example.com", GOOD)
    directory.add_user("eve@example.com", GOOD)
    directory.add_alias("bob@example.com", "Robert@Example.com")
    assert directory.resolve("robert@example.com").address == "bob@example.com"
    assert directory.get_user("bob@example.com").aliases == ("robert@example.com",)
    with pytest.raises(Conflict):
        directory.add_alias("eve@example.com", "robert@example.com")
    with pytest.raises(Conflict):
        directory.add_alias("eve@example.com", "bob@example.com")
    directory.remove_alias("bob@example.com", "robert@example.com")
    assert directory.resolve("robert@example.com") is None


def test_coverage_follows_scope_activation_and_exclusion(directory):
    """Covered = continuity on, active, and included by the domain's scope."""
    directory.add_user("bob@example.com", GOOD)
    directory.add_user("eve@example.com", GOOD)

    def covered(address):
        user = directory.get_user(address)
        return is_covered(user, directory.get_domain(user.domain))

    assert covered("bob@example.com") and covered("eve@example.com")
    directory.exclude("eve@example.com")
    assert not covered("eve@example.com")
    directory.set_domain("example.com", scope="selected")
    assert not covered("bob@example.com") and not covered("eve@example.com")
    directory.include("bob@example.com")
    assert covered("bob@example.com") and not covered("eve@example.com")
    directory.set_active("bob@example.com", False)
    assert not covered("bob@example.com")
    directory.set_active("bob@example.com", True)
    directory.set_domain("example.com", continuity=False)
    assert not covered("bob@example.com")


def test_bad_scope_is_refused(directory):
    """Only all or selected."""
    with pytest.raises(InvalidValue):
        directory.set_domain("example.com", scope="some")


def test_mode_changes_are_recorded(directory):
    """Each switch is kept with time, reason and whether it was automatic."""
    assert directory.set_mode("example.com", "emergency", "upstream said 451", automatic=True)
    assert directory.set_mode("example.com", "emergency", "again", automatic=True) is None
    directory.set_mode("example.com", "recovering", "continuityctl emergency stop", automatic=False)
    history = directory.mode_history("example.com")
    assert [(c.old_mode, c.new_mode, c.automatic) for c in history] == [
        ("emergency", "recovering", False),
        ("normal", "emergency", True),
    ]
    assert directory.get_domain("example.com").mode == "recovering"


def test_remove_domain_takes_users_and_aliases(directory):
    """Removing a domain removes its users and their aliases."""
    directory.add_user("bob@example.com", GOOD)
    directory.add_alias("bob@example.com", "b@example.com")
    directory.remove_domain("example.com")
    assert directory.list_users() == []
    assert directory.db.read("SELECT COUNT(*) FROM aliases")[0][0] == 0
