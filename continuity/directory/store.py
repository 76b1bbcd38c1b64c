"""The directory in the store: hosted domains, users, aliases, modes (synchronous).

Every entry point (CLI, protocols through the SQL thread, later LDAP sync and the
web panel) changes the directory through :class:`Directory`, so validation of
addresses and the password policy hold everywhere. Methods are synchronous and
run on whichever thread owns the connection: the CLI's main thread, or the
service's :class:`~continuity.db.SQLThread`.
"""

from __future__ import annotations

import ipaddress
import os
import sqlite3
import time
from collections.abc import Callable, Sequence

import attrs
from twisted.logger import Logger

from continuity.db import Database
from continuity.directory.fence import EmergencyFence
from continuity.directory.passwords import (
    DEFAULT_POLICY,
    PasswordPolicy,
    VerifiedPasswords,
    hash_password,
    verify_password,
)
from continuity.envelope import Address, normalise_domain, parse_address
from continuity.errors import Conflict, InvalidAddress, InvalidValue, NotFound

SCOPES = ("all", "selected")
ACTIVATIONS = ("auto", "manual")
MODES = ("normal", "emergency", "recovering")


@attrs.frozen
class Upstream:
    """The customer's own mail server for a domain."""

    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @classmethod
    def parse(cls, text: str) -> "Upstream":
        host, sep, port = text.strip().rpartition(":")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
            try:
                ipaddress.IPv6Address(host)
            except ValueError:
                raise InvalidAddress(f"bad upstream {text!r}: not an IPv6 address in brackets") from None
        elif not sep or not host:
            raise InvalidAddress(f"bad upstream {text!r}: expected HOST:PORT")
        else:
            try:
                ipaddress.IPv4Address(host)
            except ValueError:
                try:
                    host = normalise_domain(host) if "." in host else _single_label(host)
                except InvalidAddress:
                    raise InvalidAddress(f"bad upstream {text!r}: invalid host name") from None
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise InvalidAddress(f"bad upstream {text!r}: port must be 1-65535")
        return cls(host, int(port))


def _single_label(host: str) -> str:
    if not host.replace("-", "").isalnum():
        raise InvalidAddress(host)
    return host.lower()


@attrs.frozen
class Domain:
    name: str
    upstream: Upstream
    scope: str
    activation: str
    continuity: bool
    password_policy: PasswordPolicy
    mode: str
    mode_since: float | None
    health: str
    health_checked: float | None
    health_detail: str | None


@attrs.frozen
class User:
    address: str
    domain: str
    active: bool
    inclusion: str | None
    source: str
    has_password: bool
    aliases: tuple[str, ...]
    password_hash: str | None = attrs.field(repr=False, eq=False)


@attrs.frozen
class ModeChange:
    domain: str
    time: float
    old_mode: str
    new_mode: str
    reason: str
    automatic: bool


def is_covered(user: User, domain: Domain) -> bool:
    """Whether ``user`` gets a continuity mailbox now (CONTRACT section 3, ``covered``)."""
    if not (domain.continuity and user.active):
        return False
    if domain.scope == "all":
        return user.inclusion != "excluded"
    return user.inclusion == "included"


def fails_over_automatically(domain: Domain) -> bool:
    """Whether an upstream's temporary failure switches ``domain`` to emergency (auto activation, continuity on)."""
    return domain.activation == "auto" and domain.continuity


def _domain(row: sqlite3.Row) -> Domain:
    return Domain(
        name=row["name"],
        upstream=Upstream(row["upstream_host"], row["upstream_port"]),
        scope=row["scope"],
        activation=row["activation"],
        continuity=bool(row["continuity"]),
        password_policy=PasswordPolicy.parse(row["password_policy"]),
        mode=row["mode"],
        mode_since=row["mode_since"],
        health=row["health"],
        health_checked=row["health_checked"],
        health_detail=row["health_detail"],
    )


class Directory:
    """Domains, users and aliases in a :class:`~continuity.db.Database`."""

    log = Logger()

    def __init__(self, db: Database, clock: Callable[[], float] = time.time,
                 verified: VerifiedPasswords | None = None):
        self.db = db
        self._clock = clock
        self.verified = verified if verified is not None else VerifiedPasswords()
        #: Each domain's emergency mode as direct delivery reads it, beside the store (kept by :meth:`set_mode`).
        self.fence = EmergencyFence(os.path.join(os.path.dirname(os.path.abspath(db.path)), "emergency"))

    # -- domains ---------------------------------------------------------

    def add_domain(
        self,
        name: str,
        upstream: str,
        scope: str = "all",
        activation: str = "auto",
        continuity: bool = True,
    ) -> Domain:
        name = normalise_domain(name)
        parsed = Upstream.parse(upstream)
        _check_choice("scope", scope, SCOPES)
        _check_choice("activation", activation, ACTIVATIONS)
        now = self._clock()
        with self.db.transaction() as conn:
            if conn.execute("SELECT 1 FROM domains WHERE name = ?", (name,)).fetchone():
                raise Conflict(f"domain {name} is already hosted")
            conn.execute(
                "INSERT INTO domains (name, upstream_host, upstream_port, scope, activation, continuity,"
                " password_policy, created, mode, mode_since) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'normal', ?)",
                (name, parsed.host, parsed.port, scope, activation, int(continuity), DEFAULT_POLICY.spec(), now, now),
            )
        return self.get_domain(name)

    def set_domain(
        self,
        name: str,
        *,
        upstream: str | None = None,
        scope: str | None = None,
        activation: str | None = None,
        continuity: bool | None = None,
        password_policy: str | None = None,
    ) -> Domain:
        name = normalise_domain(name)
        changes: dict[str, object] = {}
        if upstream is not None:
            parsed = Upstream.parse(upstream)
            changes["upstream_host"], changes["upstream_port"] = parsed.host, parsed.port
        if scope is not None:
            changes["scope"] = _check_choice("scope", scope, SCOPES)
        if activation is not None:
            changes["activation"] = _check_choice("activation", activation, ACTIVATIONS)
        if continuity is not None:
            changes["continuity"] = int(continuity)
        if password_policy is not None:
            changes["password_policy"] = PasswordPolicy.parse(password_policy).spec()
        with self.db.transaction() as conn:
            row = conn.execute("SELECT scope FROM domains WHERE name = ?", (name,)).fetchone()
            if row is None:
                raise NotFound(f"no such domain: {name}")
            if changes:
                assignments = ", ".join(f"{column} = ?" for column in changes)
                conn.execute(f"UPDATE domains SET {assignments} WHERE name = ?", (*changes.values(), name))
            if scope is not None and scope != row["scope"]:
                # Switching scope starts the selection afresh, as the product does.
                conn.execute("UPDATE users SET inclusion = NULL WHERE domain = ?", (name,))
        return self.get_domain(name)

    def get_domain(self, name: str) -> Domain:
        name = normalise_domain(name)
        rows = self.db.read("SELECT * FROM domains WHERE name = ?", (name,))
        if not rows:
            raise NotFound(f"no such domain: {name}")
        return _domain(rows[0])

    def find_domain(self, name: str) -> Domain | None:
        """The hosted domain ``name``, or None (no error for malformed names)."""
        try:
            return self.get_domain(name)
        except (NotFound, InvalidAddress):
            return None

    def list_domains(self) -> list[Domain]:
        return [_domain(row) for row in self.db.read("SELECT * FROM domains ORDER BY name")]

    def remove_domain(self, name: str) -> None:
        """Remove the domain with its users and aliases (callers check queued/stored mail)."""
        name = normalise_domain(name)
        self.fence.close_gate(name)
        with self.db.transaction() as conn:
            if not conn.execute("SELECT 1 FROM domains WHERE name = ?", (name,)).fetchone():
                raise NotFound(f"no such domain: {name}")
            conn.execute("DELETE FROM aliases WHERE domain = ? OR address IN "
                         "(SELECT address FROM users WHERE domain = ?)", (name, name))
            conn.execute("DELETE FROM users WHERE domain = ?", (name,))
            conn.execute("DELETE FROM domains WHERE name = ?", (name,))

    def set_mode(self, name: str, mode: str, reason: str, automatic: bool) -> ModeChange | None:
        """Switch the domain's mode and record the change; None when it was already in ``mode``.

        With the domain's emergency mark (:class:`~continuity.directory.fence.EmergencyFence`): out of
        emergency mode, the mark is emptied first and this returns only once no continuity mailbox copy
        is being written for the domain (an ``OSError`` there leaves the mode as it was); into it, the mark
        is filled after the write. Both also when the mode was already ``mode``.
        """
        _check_choice("mode", mode, MODES)
        now = self._clock()
        if mode != "emergency":
            self.fence.close_gate(name)
        change = None
        with self.db.transaction() as conn:
            row = conn.execute("SELECT mode FROM domains WHERE name = ?", (name,)).fetchone()
            if row is None:
                raise NotFound(f"no such domain: {name}")
            if row["mode"] != mode:
                conn.execute("UPDATE domains SET mode = ?, mode_since = ? WHERE name = ?", (mode, now, name))
                conn.execute(
                    "INSERT INTO mode_changes (domain, time, old_mode, new_mode, reason, automatic)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    (name, now, row["mode"], mode, reason, int(automatic)),
                )
                change = ModeChange(name, now, row["mode"], mode, reason, automatic)
        if mode == "emergency":
            try:
                self.fence.open_gate(name, lambda: self.mode_of(name) == "emergency")
            except OSError as error:  # the spool path takes the domain's mail until the monitor's next poll
                self.log.error("emergency mark of {domain} cannot be set: {error}", domain=name, error=error)
        return change

    def mode_of(self, name: str) -> str | None:
        """The domain's mode as this thread's connection sees it (its own transaction's writes too)."""
        domain = self.find_domain(name)
        return domain.mode if domain is not None else None

    def agree_marks(self, domains: Sequence[Domain]) -> list[str]:
        """Make the emergency marks of ``domains`` (as just read) agree with their modes; return those whose
        mark could not be (:meth:`EmergencyFence.agree <continuity.directory.fence.EmergencyFence.agree>`)."""
        return self.fence.agree({d.name: d.mode for d in domains}, self.mode_of)

    def reconcile_marks(self) -> None:
        """At the service's start: every mark as the store says, none for a domain no longer hosted."""
        self.fence.reconcile({d.name: d.mode for d in self.list_domains()}, self.mode_of)

    def set_health(self, name: str, health: str, detail: str | None = None) -> None:
        _check_choice("health", health, ("ok", "failing", "unknown"))
        with self.db.transaction() as conn:
            conn.execute(
                "UPDATE domains SET health = ?, health_checked = ?, health_detail = ? WHERE name = ?",
                (health, self._clock(), detail, name),
            )

    def mode_history(self, name: str, limit: int = 20) -> list[ModeChange]:
        rows = self.db.read(
            "SELECT * FROM mode_changes WHERE domain = ? ORDER BY time DESC, id DESC LIMIT ?",
            (normalise_domain(name), limit),
        )
        return [
            ModeChange(r["domain"], r["time"], r["old_mode"], r["new_mode"], r["reason"], bool(r["automatic"]))
            for r in rows
        ]

    # -- users -----------------------------------------------------------

    def add_user(self, address: str, password: str | None = None, active: bool = True, source: str = "local") -> User:
        addr = parse_address(address)
        domain = self._hosted(addr)
        password_hash = None
        if password is not None:
            domain.password_policy.check(password)
            password_hash = hash_password(password)
        now = self._clock()
        with self.db.transaction() as conn:
            self._check_free(conn, str(addr))
            conn.execute(
                "INSERT INTO users (address, domain, local_part, password_hash, active, inclusion, source,"
                " created, updated) VALUES (?, ?, ?, ?, ?, NULL, ?, ?, ?)",
                (str(addr), addr.domain, addr.local, password_hash, int(active), source, now, now),
            )
        return self.get_user(str(addr))

    def set_password(self, address: str, password: str) -> User:
        user = self.get_user(address)
        self.get_domain(user.domain).password_policy.check(password)
        password_hash = hash_password(password)
        self._update_user(user.address, password_hash=password_hash)
        return self.get_user(user.address)

    def set_active(self, address: str, active: bool) -> User:
        user = self.get_user(address)
        self._update_user(user.address, active=int(active))
        return self.get_user(user.address)

    def include(self, address: str) -> User:
        """Put the user into continuity: clear an exclusion (scope all), or select it (scope selected)."""
        user = self.get_user(address)
        domain = self.get_domain(user.domain)
        self._update_user(user.address, inclusion="included" if domain.scope == "selected" else None)
        return self.get_user(user.address)

    def exclude(self, address: str) -> User:
        """Take the user out of continuity."""
        user = self.get_user(address)
        domain = self.get_domain(user.domain)
        self._update_user(user.address, inclusion="excluded" if domain.scope == "all" else None)
        return self.get_user(user.address)

    def get_user(self, address: str) -> User:
        addr = str(parse_address(address))
        users = self._users("WHERE u.address = ?", (addr,))
        if not users:
            raise NotFound(f"no such user: {addr}")
        return users[0]

    def list_users(self, domain: str | None = None) -> list[User]:
        if domain is None:
            return self._users("ORDER BY u.address", ())
        name = normalise_domain(domain)
        self.get_domain(name)
        return self._users("WHERE u.domain = ? ORDER BY u.address", (name,))

    def remove_user(self, address: str) -> None:
        user = self.get_user(address)
        with self.db.transaction() as conn:
            conn.execute("DELETE FROM aliases WHERE address = ?", (user.address,))
            conn.execute("DELETE FROM users WHERE address = ?", (user.address,))

    def resolve(self, address: str | Address) -> User | None:
        """The user that receives mail for ``address`` (itself or an alias), or None."""
        try:
            addr = str(parse_address(str(address)))
        except InvalidAddress:
            return None
        users = self._users(
            "WHERE u.address = ? OR u.address = (SELECT address FROM aliases WHERE alias = ?)", (addr, addr)
        )
        return users[0] if users else None

    def authenticate(self, address: str, password: str) -> User | None:
        """The active user whose password matches, else None; a failure costs one full verification whoever
        the user is.

        An active user's success is remembered in :attr:`verified`, and a repeat of it (the other connections
        of a phone that waited behind the first) is accepted without verifying again.
        """
        try:
            user = self.get_user(address)
        except (NotFound, InvalidAddress):
            verify_password(None, password)
            return None
        if not user.active:
            verify_password(user.password_hash, password)
            return None
        if self._remembered(user, password):
            return user
        if not verify_password(user.password_hash, password):
            return None
        self.verified.remember(user.address, user.password_hash, password)
        return user

    def _remembered(self, user: User, password: str) -> bool:
        return user.password_hash is not None and self.verified.holds(user.address, user.password_hash, password)

    def recently_verified(self, address: str, password: str) -> User | None:
        """The active user if ``password`` is the one :meth:`authenticate` accepted for it within the hour.

        A read and an HMAC, never an Argon2id; None means only that
        :meth:`authenticate` must decide (the wrong password, an inactive or
        unknown user, nothing remembered).
        """
        try:
            user = self.get_user(address)
        except (NotFound, InvalidAddress):
            return None
        return user if user.active and self._remembered(user, password) else None

    # -- aliases ---------------------------------------------------------

    def add_alias(self, address: str, alias: str) -> User:
        user = self.get_user(address)
        alias_addr = parse_address(alias)
        self._hosted(alias_addr)
        with self.db.transaction() as conn:
            self._check_free(conn, str(alias_addr))
            conn.execute(
                "INSERT INTO aliases (alias, address, domain) VALUES (?, ?, ?)",
                (str(alias_addr), user.address, alias_addr.domain),
            )
        return self.get_user(user.address)

    def remove_alias(self, address: str, alias: str) -> User:
        user = self.get_user(address)
        alias_text = str(parse_address(alias))
        with self.db.transaction() as conn:
            deleted = conn.execute(
                "DELETE FROM aliases WHERE alias = ? AND address = ?", (alias_text, user.address)
            ).rowcount
        if not deleted:
            raise NotFound(f"{alias_text} is not an alias of {user.address}")
        return self.get_user(user.address)

    # -- internals -------------------------------------------------------

    def _hosted(self, addr: Address) -> Domain:
        domain = self.find_domain(addr.domain)
        if domain is None:
            raise NotFound(f"domain {addr.domain} is not hosted (add it with: continuityctl domain add)")
        return domain

    @staticmethod
    def _check_free(conn: sqlite3.Connection, address: str) -> None:
        if conn.execute("SELECT 1 FROM users WHERE address = ?", (address,)).fetchone():
            raise Conflict(f"{address} is already a user")
        row = conn.execute("SELECT address FROM aliases WHERE alias = ?", (address,)).fetchone()
        if row:
            raise Conflict(f"{address} is already an alias of {row['address']}")

    def _update_user(self, address: str, **columns: object) -> None:
        assignments = ", ".join(f"{column} = ?" for column in columns)
        with self.db.transaction() as conn:
            conn.execute(
                f"UPDATE users SET {assignments}, updated = ? WHERE address = ?",
                (*columns.values(), self._clock(), address),
            )

    def _users(self, where: str, params: tuple) -> list[User]:
        rows = self.db.read(
            "SELECT u.*, (SELECT group_concat(alias, char(10)) FROM"
            " (SELECT alias FROM aliases a WHERE a.address = u.address ORDER BY alias)) AS alias_list"
            f" FROM users u {where}",
            params,
        )
        return [
            User(
                address=r["address"],
                domain=r["domain"],
                active=bool(r["active"]),
                inclusion=r["inclusion"],
                source=r["source"],
                has_password=r["password_hash"] is not None,
                aliases=tuple(r["alias_list"].split("\n")) if r["alias_list"] else (),
                password_hash=r["password_hash"],
            )
            for r in rows
        ]


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise InvalidValue(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    return value
