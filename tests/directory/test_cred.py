"""Logins through the shared portal: checker, realm, throttling and equal answers for every failure."""

from __future__ import annotations

import pytest
from twisted.internet import defer, task
from twisted.cred.error import UnauthorizedLogin
from zope.interface import Interface

from continuity.db import Database
from continuity.directory import passwords
from continuity.directory.cred import (
    MAX_DELAY,
    IMailUser,
    LoginFailed,
    LoginThrottle,
    LoginThrottled,
    UnsupportedAvatar,
    build_authenticator,
)
from continuity.directory.store import Directory

GOOD = "Secret123"


def run_now(fn, *args, **kwargs):
    """Run the "blocking" call inline: the unit tests drive time with a Clock, not threads."""
    return defer.maybeDeferred(fn, *args, **kwargs)


class IMaildrop(Interface):
    """A protocol's avatar interface, as IMAP or POP3 would register one."""


@pytest.fixture
def directory(tmp_path):
    directory = Directory(Database(str(tmp_path / "s.db")).open())
    directory.add_domain("example.com", "mail.example.com:25")
    directory.add_user("alice@example.com", GOOD)
    directory.add_user("idle@example.com", GOOD, active=False)
    return directory


@pytest.fixture
def clock():
    return task.Clock()


@pytest.fixture
def auth(directory, clock):
    authenticator, realm = build_authenticator(directory, run_now, clock, max_failures=3)
    realm.register(IMaildrop, lambda user: {"maildrop": user.address})
    return authenticator


def outcome(d: defer.Deferred, clock: task.Clock, advance: float = 0.0):
    """The result or failure of ``d`` after ``advance`` seconds of clock time."""
    results: list = []
    d.addBoth(results.append)
    if advance:
        clock.advance(advance)
    return results


def test_good_password_gives_the_avatar_for_the_interface(auth, clock):
    """A correct login returns the canonical address and the protocol's avatar."""
    [login] = outcome(auth.login("Alice@Example.COM", GOOD, "192.0.2.1", IMaildrop, "imap"), clock)
    assert login.address == "alice@example.com"
    assert login.avatar == {"maildrop": "alice@example.com"}
    login.logout()


def test_mail_user_avatar_is_the_directory_user(auth, clock):
    """Submission asks for IMailUser and gets the User with its aliases."""
    [login] = outcome(auth.login("alice@example.com", GOOD, "192.0.2.1", IMailUser, "submission"), clock)
    assert login.avatar.address == "alice@example.com"


@pytest.mark.parametrize("username, password", [
    ("alice@example.com", "Wrong1234"),
    ("nobody@example.com", GOOD),
    ("idle@example.com", GOOD),
    ("not an address", GOOD),
])
def test_every_failure_gets_the_same_answer_after_the_same_delay(auth, clock, username, password):
    """Wrong password, unknown user, inactive user and garbage all fail alike, after 0.5 s."""
    results = outcome(auth.login(username, password, "192.0.2.1", IMaildrop, "imap"), clock)
    assert results == []
    clock.advance(0.49)
    assert results == []
    clock.advance(0.01)
    [failure] = results
    assert failure.type is LoginFailed
    assert not failure.value.temporary


@pytest.mark.parametrize("username, password", [
    ("alice@example.com", GOOD),
    ("alice@example.com", "Wrong1234"),
    ("nobody@example.com", GOOD),
    ("idle@example.com", GOOD),
    ("not an address", GOOD),
])
def test_every_login_costs_exactly_one_password_verification(auth, clock, monkeypatch, username, password):
    """Good, wrong, unknown, inactive and garbage logins each verify one Argon2id hash, no more, no less."""
    verified: list[str] = []
    real = passwords._verify

    def counting(stored_hash: str, secret: bytes) -> bool:
        verified.append(stored_hash)
        return real(stored_hash, secret)

    monkeypatch.setattr(passwords, "_verify", counting)
    outcome(auth.login(username, password, "192.0.2.1", IMaildrop, "imap"), clock, advance=1.0)
    assert len(verified) == 1
    assert passwords.sodium_verifiable(verified[0])


def test_delay_grows_with_each_failure_and_is_capped():
    """Each failure from an IP doubles the delay, up to the cap."""
    clock = task.Clock()
    throttle = LoginThrottle(clock.seconds, max_failures=100)
    delays = [throttle.failed("192.0.2.1", f"user{n}") for n in range(8)]
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0, MAX_DELAY, MAX_DELAY, MAX_DELAY]


def test_ip_over_the_limit_is_refused_at_once_even_with_the_right_password(auth, clock):
    """Beyond auth_failures failures from one IP, logins are refused as temporary without checking."""
    for n in range(3):
        outcome(auth.login(f"x{n}@example.com", "bad", "192.0.2.9", IMaildrop, "pop3"), clock, advance=10)
    [failure] = outcome(auth.login("alice@example.com", GOOD, "192.0.2.9", IMaildrop, "pop3"), clock)
    assert failure.type is LoginThrottled
    assert failure.value.temporary
    # Another IP is not affected.
    [login] = outcome(auth.login("alice@example.com", GOOD, "192.0.2.10", IMaildrop, "pop3"), clock)
    assert login.address == "alice@example.com"


def test_failures_expire_after_ten_minutes(auth, clock):
    """The window slides: failures older than 600 s no longer count."""
    for _ in range(3):
        outcome(auth.login("alice@example.com", "bad", "192.0.2.9", IMaildrop, "imap"), clock, advance=10)
    clock.advance(600)
    [login] = outcome(auth.login("alice@example.com", GOOD, "192.0.2.9", IMaildrop, "imap"), clock)
    assert login.address == "alice@example.com"


def test_account_attacked_from_many_ips_is_throttled(auth, clock):
    """Twice auth_failures failures for one account from any IPs refuse further tries for it."""
    for n in range(6):
        outcome(auth.login("alice@example.com", "bad", f"198.51.100.{n}", IMaildrop, "imap"), clock, advance=10)
    [failure] = outcome(auth.login("ALICE@example.com", GOOD, "203.0.113.1", IMaildrop, "imap"), clock)
    assert failure.type is LoginThrottled


def test_success_clears_the_failures(auth, clock):
    """A good login resets the IP's count, so a typo earlier does not add up."""
    for _ in range(2):
        outcome(auth.login("alice@example.com", "bad", "192.0.2.9", IMaildrop, "imap"), clock, advance=10)
    outcome(auth.login("alice@example.com", GOOD, "192.0.2.9", IMaildrop, "imap"), clock)
    for _ in range(2):
        outcome(auth.login("alice@example.com", "bad", "192.0.2.9", IMaildrop, "imap"), clock, advance=10)
    [login] = outcome(auth.login("alice@example.com", GOOD, "192.0.2.9", IMaildrop, "imap"), clock)
    assert login.address == "alice@example.com"


def test_interface_without_avatar_factory_is_an_error(auth, clock):
    """Asking for an interface nobody registered is a programming error, not a login failure."""

    class IUnknown(Interface):
        """Nobody serves this."""

    [failure] = outcome(auth.login("alice@example.com", GOOD, "192.0.2.1", IUnknown, "imap"), clock)
    assert failure.type is UnsupportedAvatar


def test_user_removed_between_check_and_avatar_fails_the_login(directory, clock):
    """If the user disappears after the password check, the login fails cleanly."""
    authenticator, realm = build_authenticator(directory, run_now, clock, max_failures=3)

    def gone(user):
        raise AssertionError("factory must not run")

    realm.register(IMaildrop, gone)
    check = directory.authenticate

    def check_then_vanish(address, password):
        user = check(address, password)
        directory.remove_user(address)
        return user

    directory.authenticate = check_then_vanish
    [failure] = outcome(authenticator.login("alice@example.com", GOOD, "192.0.2.1", IMaildrop, "imap"), clock)
    assert failure.type is LoginFailed


def test_passwords_are_verified_at_most_so_many_at_once(directory, clock):
    """A login storm: each verification waits for a free turn, in the order the logins came."""
    from continuity.directory.cred import Authenticator, DirectoryChecker, MailRealm

    started: list[defer.Deferred] = []

    def run_later(fn, *args):
        d = defer.Deferred()
        d.addCallback(lambda _: fn(*args))
        started.append(d)
        return d

    auth = Authenticator(DirectoryChecker(directory, run_later, look_up=run_now), MailRealm(directory, run_now),
                         LoginThrottle(clock.seconds, max_failures=3), clock, at_once=2)
    results = [outcome(auth.login("alice@example.com", password, "192.0.2.1", IMailUser, "imap"), clock)
               for password in (GOOD, "wrong", GOOD)]
    assert len(started) == 2  # the third waits
    started[1].callback(None)
    assert len(started) == 3
    started[0].callback(None)
    started[2].callback(None)
    clock.advance(MAX_DELAY)
    assert [r[0].address for r in (results[0], results[2])] == ["alice@example.com"] * 2
    assert results[1][0].check(LoginFailed)


def test_logins_waiting_their_turn_are_refused_once_the_throttle_trips(directory, clock):
    """Guesses sent side by side do not all get verified: the throttle is asked when each one's turn comes."""
    from continuity.directory.cred import Authenticator, DirectoryChecker, MailRealm

    auth = Authenticator(DirectoryChecker(directory, run_now), MailRealm(directory, run_now),
                         LoginThrottle(clock.seconds, max_failures=1), clock, at_once=1)
    gate = defer.Deferred()
    auth._turns.run(lambda: gate)  # a verification under way holds the one turn
    results = [outcome(auth.login("alice@example.com", password, "192.0.2.1", IMailUser, "imap"), clock)
               for password in ("wrong", "guess", GOOD)]
    gate.callback(None)
    clock.advance(MAX_DELAY)
    assert results[0][0].check(LoginFailed) and not results[0][0].check(LoginThrottled)
    assert results[1][0].check(LoginThrottled) and results[2][0].check(LoginThrottled)


def test_a_recent_login_repeated_does_not_wait_for_a_turn(directory, clock):
    """A login storm: a password that succeeded within the hour is accepted at once, not behind the
    verifications under way; a wrong one still waits its turn and is verified in full."""
    from continuity.directory.cred import Authenticator, DirectoryChecker, MailRealm

    auth = Authenticator(DirectoryChecker(directory, run_now), MailRealm(directory, run_now),
                         LoginThrottle(clock.seconds, max_failures=3), clock, at_once=1)
    [first] = outcome(auth.login("alice@example.com", GOOD, "192.0.2.1", IMailUser, "imap"), clock)
    assert first.address == "alice@example.com"
    gate = defer.Deferred()
    auth._turns.run(lambda: gate)  # a verification under way holds the one turn
    [again] = outcome(auth.login("Alice@example.com", GOOD, "192.0.2.2", IMailUser, "imap"), clock)
    assert again.address == "alice@example.com"
    wrong = outcome(auth.login("alice@example.com", "Wrong1234", "192.0.2.1", IMailUser, "imap"), clock)
    assert wrong == []
    gate.callback(None)
    clock.advance(MAX_DELAY)
    assert wrong[0].check(LoginFailed)


def test_a_throttled_client_gets_no_shortcut(directory, clock):
    """Refused by the throttle, even a password that succeeded before is refused as throttled."""
    auth, realm = build_authenticator(directory, run_now, clock, max_failures=1)
    outcome(auth.login("alice@example.com", GOOD, "192.0.2.1", IMailUser, "imap"), clock)
    outcome(auth.login("alice@example.com", "Wrong1234", "192.0.2.1", IMailUser, "imap"), clock, MAX_DELAY)
    [result] = outcome(auth.login("alice@example.com", GOOD, "192.0.2.1", IMailUser, "imap"), clock)
    assert result.check(LoginThrottled)
