"""Password hashing and the per-domain password policy (CONTRACT section 3).

Hashes are Argon2id (RFC 9106) via argon2-cffi rather than stdlib scrypt: the
encoded PHC string carries its own parameters, so they can be raised later and
old hashes upgraded on the next login (:meth:`PasswordHasher.needs_rehash`),
and verification is constant-time in the library. Hashing costs ~50 ms and
64 MiB, so the service always runs it off the reactor thread.
"""

from __future__ import annotations

import functools

import argon2
import attrs

from continuity.errors import PolicyError, WeakPassword

MAX_PASSWORD_LENGTH = 1024

_hasher = argon2.PasswordHasher()


@functools.cache
def _dummy_hash() -> str:
    """Verified against when the user does not exist, so an unknown user costs the same time.

    Made on first use, not at import: one hash costs a quarter of a second, which
    every ``continuityctl`` run would otherwise pay.
    """
    return _hasher.hash("not a password of anyone")


def hash_password(password: str) -> str:
    """A salted Argon2id hash of ``password`` in PHC string format."""
    return _hasher.hash(password)


def verify_password(stored_hash: str | None, password: str) -> bool:
    """Check ``password`` against ``stored_hash`` in constant time.

    A missing hash (unknown user, no password set) still costs one verification.
    """
    if len(password) > MAX_PASSWORD_LENGTH:
        return False
    try:
        return _hasher.verify(stored_hash or _dummy_hash(), password) and stored_hash is not None
    except (argon2.exceptions.VerificationError, argon2.exceptions.InvalidHashError):
        return False


def needs_rehash(stored_hash: str) -> bool:
    return _hasher.check_needs_rehash(stored_hash)


_OPTIONS = {
    "upper": ("an upper-case letter", str.isupper),
    "lower": ("a lower-case letter", str.islower),
    "digit": ("a digit", str.isdigit),
    "special": ("a special character", lambda c: not c.isalnum() and not c.isspace()),
}


@attrs.frozen
class PasswordPolicy:
    """Minimum length and the character classes a password must contain."""

    min_length: int = 8
    required: tuple[str, ...] = ("upper", "lower", "digit")

    @classmethod
    def parse(cls, spec: str) -> "PasswordPolicy":
        """Parse ``min=8,upper,lower,digit[,special]``; raise PolicyError when malformed."""
        min_length = 1
        required: list[str] = []
        parts = [part.strip() for part in spec.split(",")]
        if not spec.strip() or not all(parts):
            raise PolicyError(f"bad password policy {spec!r}: expected e.g. min=8,upper,lower,digit")
        for part in parts:
            key, sep, value = part.partition("=")
            if key == "min" and sep:
                if not value.isdigit() or not 1 <= int(value) <= 256:
                    raise PolicyError(f"bad password policy {spec!r}: min takes a number from 1 to 256")
                min_length = int(value)
            elif part in _OPTIONS and not sep:
                if part not in required:
                    required.append(part)
            else:
                known = "min=N, " + ", ".join(_OPTIONS)
                raise PolicyError(f"bad password policy {spec!r}: unknown option {part!r} (known: {known})")
        order = list(_OPTIONS)
        return cls(min_length=min_length, required=tuple(sorted(required, key=order.index)))

    def spec(self) -> str:
        return ",".join([f"min={self.min_length}", *self.required])

    def check(self, password: str) -> None:
        """Raise WeakPassword with the first unmet requirement."""
        if len(password) < self.min_length:
            raise WeakPassword(f"password too weak: needs at least {self.min_length} characters")
        if len(password) > MAX_PASSWORD_LENGTH:
            raise WeakPassword(f"password too long: at most {MAX_PASSWORD_LENGTH} characters")
        if any(c in password for c in "\r\n\x00"):
            raise WeakPassword("password must not contain CR, LF or NUL")
        for option in self.required:
            description, test = _OPTIONS[option]
            if not any(test(c) for c in password):
                raise WeakPassword(f"password too weak: needs {description}")


DEFAULT_POLICY = PasswordPolicy()
