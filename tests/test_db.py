"""The SQLite store: pragmas, versioned migrations on open, old schemas upgraded in place."""

from __future__ import annotations

import sqlite3

import pytest

from continuity.db import MIGRATIONS, SCHEMA_VERSION, Database, SchemaTooNew


def test_new_database_has_the_latest_schema(tmp_path):
    """Opening a new file applies every migration and uses WAL with synchronous=FULL."""
    db = Database(str(tmp_path / "s.db")).open()
    assert db.schema_version() == SCHEMA_VERSION
    conn = db.connection()
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1


def test_old_schema_is_migrated_keeping_its_data(tmp_path):
    """A store written by release 1 (schema 1) is upgraded on open and keeps its rows."""
    path = str(tmp_path / "old.db")
    Database(path, migrations=MIGRATIONS[:1]).open()
    raw = sqlite3.connect(path)
    raw.execute(
        "INSERT INTO domains (name, upstream_host, upstream_port, scope, activation, continuity,"
        " password_policy, created) VALUES ('example.com', 'mail.example.com', 25, 'all', 'auto', 1,"
        " 'min=8,upper,lower,digit', 0)"
    )
    raw.execute(
        "INSERT INTO users (address, domain, local_part, active, source, created, updated)"
        " VALUES ('bob@example.com', 'example.com', 'bob', 1, 'local', 0, 0)"
    )
    raw.commit()
    raw.close()

    db = Database(path).open()
    assert db.schema_version() == SCHEMA_VERSION
    row = db.read("SELECT name, mode, health FROM domains")[0]
    assert tuple(row) == ("example.com", "normal", "unknown")
    assert db.read("SELECT address FROM users")[0][0] == "bob@example.com"
    assert db.read("SELECT COUNT(*) FROM queue")[0][0] == 0


def test_migrating_twice_is_harmless(tmp_path):
    """A second open applies nothing and records each version once."""
    path = str(tmp_path / "s.db")
    Database(path).open().close()
    db = Database(path).open()
    assert db.read("SELECT COUNT(*) FROM schema_version")[0][0] == SCHEMA_VERSION


def test_newer_schema_is_refused(tmp_path):
    """A store from a newer release is not touched."""
    path = str(tmp_path / "s.db")
    Database(path).open().close()
    with pytest.raises(SchemaTooNew):
        Database(path, migrations=MIGRATIONS[:1]).open()


def test_failed_migration_rolls_back(tmp_path):
    """A migration that fails half-way leaves the previous version intact."""
    path = str(tmp_path / "s.db")
    Database(path, migrations=MIGRATIONS[:1]).open().close()
    broken = (*MIGRATIONS[:1], ("CREATE TABLE extra (x)", "THIS IS NOT SQL"))
    with pytest.raises(sqlite3.OperationalError):
        Database(path, migrations=broken).open()
    db = Database(path, migrations=MIGRATIONS[:1]).open()
    assert db.schema_version() == 1
    assert not db.read("SELECT name FROM sqlite_master WHERE name = 'extra'")
