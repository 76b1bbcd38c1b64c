"""Password hashing and the per-domain password policy (CONTRACT section 3).

Hashes are Argon2id (RFC 9106) in PHC string format rather than stdlib scrypt:
the string carries its own parameters, so they can be raised later and old
hashes upgraded (:func:`needs_rehash`). The parameters are RFC 9106 section
4's second recommended option, made for machines without gigabytes to spare:
t=3 passes over m=64 MiB in p=4 lanes, a 16-byte salt and a 32-byte tag
(above every OWASP Argon2id setting).

Two libraries, each for what it does best:

- **verifying** (every login) runs on libsodium through PyNaCl, as Dovecot's
  ``{ARGON2ID}`` scheme does. libsodium picks its Argon2 block function at run
  time (AVX-512F, AVX2, SSSE3); argon2-cffi's wheels are built for the
  baseline CPU (SSE2 at best) and spend ~1.7x the CPU for the same hash (on
  the bench machine ~165 ms against ~95 ms: even spread over both cores by
  its 4 threads for p=4 it finished ~10 ms later, and took both). libsodium
  verifies any Argon2id v=19 hash whatever its lane count; the few it cannot
  read (a tag under 16 bytes, a string over 127 characters, another Argon2
  version or type) are recognised from their parameters *before* verifying
  and go to argon2-cffi, so a wrong password never costs two verifications.
- **hashing** (``user add``, ``user passwd``) uses argon2-cffi, because
  libsodium only makes single-lane hashes.

Both compare in constant time. A verification costs ~0.1 s and 64 MiB, so the
service always runs it off the reactor thread, and remembers a user's
successful login for an hour (:class:`VerifiedPasswords`).
"""

from __future__ import annotations

import collections
import functools
import hashlib
import hmac
import secrets
import threading
import time
from collections.abc import Callable

import argon2
import attrs
import nacl.bindings
import nacl.exceptions

from continuity.errors import PolicyError, WeakPassword

MAX_PASSWORD_LENGTH = 1024

#: RFC 9106 section 4, second recommended option.
TIME_COST = 3
MEMORY_COST_KIB = 64 * 1024
PARALLELISM = 4

_hasher = argon2.PasswordHasher(time_cost=TIME_COST, memory_cost=MEMORY_COST_KIB, parallelism=PARALLELISM,
                                hash_len=32, salt_len=16, type=argon2.Type.ID)

#: What libsodium's ``crypto_pwhash_str_verify`` reads (``crypto_pwhash_STRBYTES`` includes the NUL).
_SODIUM_MAX_HASH_CHARS = nacl.bindings.crypto_pwhash_STRBYTES - 1


@functools.cache
def _dummy_hash() -> str:
    """Verified against when the user does not exist, so an unknown user costs the same time.

    Made on first use, not at import: one hash costs a tenth of a second, which
    every ``continuityctl`` run would otherwise pay.
    """
    return _hasher.hash("not a password of anyone")


def hash_password(password: str) -> str:
    """A salted Argon2id hash of ``password`` in PHC string format (module parameters)."""
    return _hasher.hash(password)


def sodium_verifiable(stored_hash: str) -> bool:
    """Whether libsodium verifies ``stored_hash`` exactly as argon2-cffi would.

    True for Argon2id, version 19 (0x13), any cost and lane count, a tag of at
    least 16 bytes, in at most 127 characters; otherwise argon2-cffi verifies.
    """
    if (len(stored_hash) > _SODIUM_MAX_HASH_CHARS or not stored_hash.isascii()
            or not stored_hash.startswith("$argon2id$v=19$")):
        return False
    try:
        params = argon2.extract_parameters(stored_hash)
    except argon2.exceptions.InvalidHashError:
        return False
    return params.hash_len >= nacl.bindings.crypto_pwhash_BYTES_MIN


def _verify(stored_hash: str, password: bytes) -> bool:
    if sodium_verifiable(stored_hash):
        try:
            return nacl.bindings.crypto_pwhash_str_verify(stored_hash.encode("ascii"), password)
        except nacl.exceptions.InvalidkeyError:
            return False
    try:
        return _hasher.verify(stored_hash, password)
    except (argon2.exceptions.VerificationError, argon2.exceptions.InvalidHashError):
        return False


def verify_password(stored_hash: str | None, password: str) -> bool:
    """Check ``password`` against ``stored_hash`` in constant time.

    A missing hash (unknown user, no password set) still costs one verification.
    """
    if len(password) > MAX_PASSWORD_LENGTH:
        return False
    # surrogatepass: a lone surrogate cannot match any hash, but still costs a verification.
    secret = password.encode("utf-8", "surrogatepass")
    return _verify(stored_hash or _dummy_hash(), secret) and stored_hash is not None


class VerifiedPasswords:
    """Recent successful logins, so that a user's next login within the hour costs an HMAC, not an Argon2id.

    A phone keeps several IMAP connections and logs in again for each, and
    each submission logs in: after a failover every device of every user comes
    back at once, and at ~0.1 s of a core per verification the logins would
    hold the cores the mail needs. As PingDirectory's encoded password cache
    does, a verified password is remembered as a keyed SHA-256 of it (HMAC,
    under a random key of this process, never written anywhere), with the
    stored hash it matched; a login that presents the same password against the
    same stored hash within :attr:`ttl` is then accepted after one HMAC.

    - Only successes of active users are remembered (the caller's business:
      :meth:`continuity.directory.store.Directory.authenticate`). A wrong
      password, an inactive user, or a stored hash changed since (``user
      passwd``, an LDAP sync) goes to the full verification, so a failure costs
      what it did before and tells nothing by its timing.
    - One entry per user: a changed hash or an expired entry is dropped when
      seen, and the entries older than :attr:`ttl` when another is added, so a
      digest stays in memory only as long as it can be used.
    - Bounded (:attr:`size` users, least recently verified first out) and
      thread-safe (logins run on pools).

    Trade-off: a memory dump of the running service yields, for the users who
    logged in within the hour, digests that are fast to test guesses against
    (as the plain password would have been in that memory during the login).
    """

    def __init__(self, ttl: float = 3600.0, size: int = 10_000, clock: Callable[[], float] = time.monotonic):
        self.ttl = ttl
        self.size = size
        self._clock = clock
        self._key = secrets.token_bytes(32)
        self._lock = threading.Lock()
        # user -> (the stored hash matched, HMAC of the password, when); oldest verification first
        self._entries: collections.OrderedDict[str, tuple[str, bytes, float]] = collections.OrderedDict()

    def __len__(self) -> int:
        """Users remembered."""
        return len(self._entries)

    def _digest(self, password: str) -> bytes:
        return hmac.new(self._key, password.encode("utf-8", "surrogatepass"), hashlib.sha256).digest()

    def holds(self, user: str, stored_hash: str, password: str) -> bool:
        """Whether ``password`` was verified against ``stored_hash`` for ``user`` within the last :attr:`ttl`."""
        if len(password) > MAX_PASSWORD_LENGTH:
            return False
        digest = self._digest(password)
        with self._lock:
            entry = self._entries.get(user)
            if entry is None:
                return False
            if entry[0] != stored_hash or self._clock() - entry[2] >= self.ttl:
                del self._entries[user]
                return False
        return hmac.compare_digest(entry[1], digest)

    def remember(self, user: str, stored_hash: str, password: str) -> None:
        """Record that ``password`` matched ``stored_hash`` for ``user`` just now (by a full verification)."""
        digest = self._digest(password)
        with self._lock:
            now = self._clock()
            self._entries.pop(user, None)
            self._entries[user] = (stored_hash, digest, now)
            while self._entries:
                oldest = next(iter(self._entries.values()))
                if len(self._entries) <= self.size and now - oldest[2] < self.ttl:
                    break
                self._entries.popitem(last=False)


def needs_rehash(stored_hash: str) -> bool:
    """Whether ``stored_hash`` was made with other parameters than :func:`hash_password` uses now."""
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
