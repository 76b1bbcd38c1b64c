"""Password policy SPEC parsing and checking."""

from __future__ import annotations

import pytest

from continuity.directory.passwords import DEFAULT_POLICY, PasswordPolicy, hash_password, verify_password
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
