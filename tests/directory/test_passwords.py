"""Password policy SPEC parsing and checking; hashing and the two verification paths."""

from __future__ import annotations

import hashlib

import argon2
import nacl.bindings
import nacl.pwhash.argon2id
import pytest

from continuity.directory import passwords
from continuity.directory.passwords import (
    DEFAULT_POLICY,
    PasswordPolicy,
    VerifiedPasswords,
    hash_password,
    needs_rehash,
    verify_password,
)
from continuity.errors import PolicyError, WeakPassword


def test_default_policy_is_eight_with_upper_lower_digit():
    """The contract's default: at least 8 characters, upper, lower, digit."""
    assert DEFAULT_POLICY.spec() == "min=8,upper,lower,digit"


@pytest.mark.parametrize("spec", ["", "min=", "min=x", "min=0", "upper,,lower", "min=8,shouty", "upper=1"])
def test_malformed_spec_is_refused(spec):
    """A malformed SPEC is an error that says what is wrong."""
    with pytest.raises(PolicyError, match="bad password policy"):
        PasswordPolicy.parse(spec)


def test_spec_round_trips():
    """parse(spec()) is the same policy, options in canonical order."""
    policy = PasswordPolicy.parse("special,digit,min=10")
    assert policy.spec() == "min=10,digit,special"
    assert PasswordPolicy.parse(policy.spec()) == policy


def test_special_means_punctuation():
    """'special' needs a character that is neither letter, digit nor space."""
    policy = PasswordPolicy.parse("min=4,special")
    with pytest.raises(WeakPassword, match="special"):
        policy.check("abcd 1")
    policy.check("ab-cd")


def test_control_characters_are_refused():
    """CR, LF and NUL never get into a password."""
    with pytest.raises(WeakPassword):
        DEFAULT_POLICY.check("Secret123\n")


def test_verify_missing_hash_is_false():
    """No hash (unknown user) never verifies, yet costs the same work."""
    assert verify_password(None, "anything") is False
    assert verify_password(hash_password("Secret123"), "Secret123") is True


# -- verification paths: libsodium for what it reads, argon2-cffi for the rest ---------------------

def cffi_hash(password: str, **params) -> str:
    """An argon2-cffi hash with small costs unless told (the tests check paths, not strength)."""
    settings = {"time_cost": 1, "memory_cost": 64, "parallelism": 1, **params}
    return argon2.PasswordHasher(**settings).hash(password)


def test_new_hashes_are_rfc9106_argon2id():
    """hash_password makes Argon2id v=19, t=3, 64 MiB, 4 lanes, 16-byte salt, 32-byte tag."""
    params = argon2.extract_parameters(hash_password("Secret123"))
    assert (params.type, params.version) == (argon2.Type.ID, 19)
    assert (params.time_cost, params.memory_cost, params.parallelism) == (3, 65536, 4)
    assert (params.salt_len, params.hash_len) == (16, 32)


def test_new_hashes_are_verified_by_libsodium():
    """Our own hashes take the libsodium path, and libsodium alone accepts them."""
    stored = hash_password("Secret123")
    assert passwords.sodium_verifiable(stored)
    nacl.bindings.crypto_pwhash_str_verify(stored.encode(), b"Secret123")
    assert verify_password(stored, "Secret123") is True


def test_libsodium_made_hash_verifies():
    """A single-lane hash made by libsodium itself (as Dovecot would store it) verifies."""
    stored = nacl.pwhash.argon2id.str(b"Secret123", opslimit=1, memlimit=8 * 1024 * 1024).decode()
    assert passwords.sodium_verifiable(stored)
    assert verify_password(stored, "Secret123") is True
    assert verify_password(stored, "Secret124") is False


@pytest.mark.parametrize("lanes", [1, 2, 4, 8])
def test_argon2_cffi_hashes_of_any_lane_count_verify(lanes):
    """Hashes made by argon2-cffi before libsodium verified them still verify, whatever p."""
    stored = cffi_hash("Secret123", parallelism=lanes, memory_cost=8 * lanes)
    assert passwords.sodium_verifiable(stored)
    assert verify_password(stored, "Secret123") is True
    assert verify_password(stored, "secret123") is False


def test_old_default_p4_hash_verifies():
    """An argon2-cffi hash with the old default parameters (t=3, 64 MiB, p=4) verifies."""
    stored = argon2.PasswordHasher().hash("Secret123")
    assert verify_password(stored, "Secret123") is True
    assert verify_password(stored, "Secret12") is False
    assert not needs_rehash(stored)


@pytest.mark.parametrize("params", [
    {"hash_len": 12},                  # libsodium wants a tag of 16 bytes or more
    {"hash_len": 64, "salt_len": 32},  # over libsodium's 127 characters
    {"type": argon2.Type.I},
])
def test_hashes_libsodium_cannot_read_fall_back_to_argon2_cffi(params):
    """A hash outside what libsodium reads is verified by argon2-cffi, with the same answers."""
    stored = cffi_hash("Secret123", **params)
    assert not passwords.sodium_verifiable(stored)
    assert verify_password(stored, "Secret123") is True
    assert verify_password(stored, "Secret124") is False


def test_version_16_hash_falls_back_to_argon2_cffi():
    """An Argon2 v1.0 (0x10) hash, which libsodium refuses, verifies through argon2-cffi."""
    salt = b"0123456789abcdef"
    stored = argon2.low_level.hash_secret(b"Secret123", salt, time_cost=1, memory_cost=64, parallelism=1,
                                          hash_len=32, type=argon2.Type.ID, version=0x10).decode()
    assert not passwords.sodium_verifiable(stored)
    assert verify_password(stored, "Secret123") is True
    assert verify_password(stored, "Secret124") is False


@pytest.mark.parametrize("stored", ["", "not a hash", "$argon2id$v=19$m=65536,t=3,p=4$short", "$2b$12$abc"])
def test_malformed_hash_never_verifies(stored):
    """A stored value that is no Argon2 hash is a failed login, never an exception."""
    assert verify_password(stored, "Secret123") is False


def test_wrong_password_costs_one_verification(monkeypatch):
    """A wrong password is checked once, by libsodium, never again by argon2-cffi."""
    stored = cffi_hash("Secret123", parallelism=4, memory_cost=32)
    fallbacks = []

    class Recording:
        def verify(self, *args) -> bool:
            fallbacks.append(args)
            return False

    monkeypatch.setattr(passwords, "_hasher", Recording())
    assert verify_password(stored, "wrong") is False
    assert fallbacks == []


def test_unknown_user_costs_one_verification_of_a_real_hash(monkeypatch):
    """No stored hash: the password is verified against a dummy of our parameters, and fails."""
    calls = []
    real = nacl.bindings.crypto_pwhash_str_verify

    def counting(stored: bytes, password: bytes) -> bool:
        calls.append(stored)
        return real(stored, password)

    monkeypatch.setattr(nacl.bindings, "crypto_pwhash_str_verify", counting)
    assert verify_password(None, "not a password of anyone") is False
    assert verify_password(None, "Secret123") is False
    assert len(calls) == 2
    assert argon2.extract_parameters(calls[0].decode()) == argon2.extract_parameters(hash_password("x"))


def test_too_long_password_fails():
    """A password over MAX_PASSWORD_LENGTH fails without being hashed."""
    stored = cffi_hash("Secret123")
    assert verify_password(stored, "A1a" * passwords.MAX_PASSWORD_LENGTH) is False


def test_lone_surrogate_fails_without_error():
    """A password that is not valid UTF-8 text is a failed login, not an exception."""
    assert verify_password(cffi_hash("Secret123"), "Secret\ud800") is False


def test_needs_rehash_spots_weaker_parameters():
    """A hash with lower costs than ours needs rehashing; one of ours does not."""
    assert needs_rehash(cffi_hash("Secret123"))
    assert not needs_rehash(hash_password("Secret123"))


class _Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_verified_password_is_held_for_the_ttl_then_forgotten():
    """A remembered success holds for the same user, stored hash and password until the TTL runs out."""
    clock = _Clock()
    verified = VerifiedPasswords(ttl=60, clock=clock)
    assert not verified.holds("bob@example.com", "$hash1", "Secret123")
    verified.remember("bob@example.com", "$hash1", "Secret123")
    assert verified.holds("bob@example.com", "$hash1", "Secret123")
    clock.now += 59.9
    assert verified.holds("bob@example.com", "$hash1", "Secret123")
    clock.now += 0.1
    assert not verified.holds("bob@example.com", "$hash1", "Secret123")
    assert len(verified) == 0  # gone, not just stale


@pytest.mark.parametrize("user, stored, password", [
    ("bob@example.com", "$hash1", "Secret124"),  # another password
    ("bob@example.com", "$hash2", "Secret123"),  # the password was changed since
    ("eve@example.com", "$hash1", "Secret123"),  # another user
])
def test_verified_password_holds_only_for_what_was_verified(user, stored, password):
    """Anything but the very user, stored hash and password verified goes to a full verification."""
    verified = VerifiedPasswords()
    verified.remember("bob@example.com", "$hash1", "Secret123")
    assert not verified.holds(user, stored, password)


def test_verified_passwords_keep_no_digest_past_its_use():
    """A changed stored hash drops the user's digest when seen; expired digests go when another is added."""
    clock = _Clock()
    verified = VerifiedPasswords(ttl=60, clock=clock)
    verified.remember("bob@example.com", "$hash1", "Secret123")
    assert not verified.holds("bob@example.com", "$hash2", "Secret123")
    assert len(verified) == 0
    verified.remember("bob@example.com", "$hash2", "Secret123")
    clock.now += 60
    verified.remember("eve@example.com", "$hash3", "Secret123")
    assert len(verified) == 1 and verified.holds("eve@example.com", "$hash3", "Secret123")


def test_verified_passwords_keep_the_most_recent_users():
    """Bounded: the least recently verified user goes first."""
    verified = VerifiedPasswords(size=2)
    for user in ("a@example.com", "b@example.com"):
        verified.remember(user, "$h", "Secret123")
    verified.remember("a@example.com", "$h", "Secret123")  # verified again: now the most recent
    verified.remember("c@example.com", "$h", "Secret123")
    assert verified.holds("a@example.com", "$h", "Secret123")
    assert not verified.holds("b@example.com", "$h", "Secret123")
    assert verified.holds("c@example.com", "$h", "Secret123")


def test_verified_passwords_keep_no_password():
    """What is kept is a keyed digest, under a key of this instance: neither the password nor a plain hash."""
    verified = VerifiedPasswords()
    verified.remember("bob@example.com", "$h", "Secret123")
    kept = repr(vars(verified)).encode()
    assert b"Secret123" not in kept
    assert hashlib.sha256(b"Secret123").digest() not in kept
    assert hashlib.sha256(b"Secret123").hexdigest().encode() not in kept
