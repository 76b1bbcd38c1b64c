"""The SQLite store: pragmas, versioned migrations on open, old schemas upgraded in place; the SQL thread's group commit."""

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


class _ThreadReactor:
    """Just ``callFromThread``: the SQL thread's results wait here until the test runs them."""

    def __init__(self):
        import queue

        self.calls = queue.Queue()

    def callFromThread(self, fn, *args, **kwargs):
        self.calls.put((fn, args, kwargs))

    def run_one(self, timeout: float = 10.0) -> None:
        fn, args, kwargs = self.calls.get(timeout=timeout)
        fn(*args, **kwargs)


def _sql_thread(tmp_path):
    from continuity.db import SQLThread

    db = Database(str(tmp_path / "s.db")).open()
    db.connection().execute("CREATE TABLE t (x INTEGER)")
    reactor = _ThreadReactor()
    return SQLThread(reactor, db), reactor, db


def _insert(db, value):
    with db.transaction() as conn:
        conn.execute("INSERT INTO t VALUES (?)", (value,))
    return value


def _insert_then_fail(db, value):
    with db.transaction() as conn:
        conn.execute("INSERT INTO t VALUES (?)", (value,))
        raise ValueError("refused")


def test_jobs_queued_together_commit_once(tmp_path):
    """Jobs waiting for the SQL thread run in one transaction; each result arrives after its commit."""
    sql, reactor, db = _sql_thread(tmp_path)
    results = []
    for value in (1, 2, 3):
        sql.run(_insert, db, value).addCallback(results.append)
    sql.startService()
    try:
        reactor.run_one()
        assert results == [1, 2, 3]
        assert sql.commits == 1
        assert [r[0] for r in Database(db.path).read("SELECT x FROM t ORDER BY x")] == [1, 2, 3]
    finally:
        sql.stopService()


def test_a_failing_job_undoes_only_its_own_changes(tmp_path):
    """In a group, a job whose transaction block raises is rolled back; the others commit."""
    sql, reactor, db = _sql_thread(tmp_path)
    outcomes = []
    sql.run(_insert, db, 1).addCallback(outcomes.append)
    sql.run(_insert_then_fail, db, 2).addErrback(lambda f: outcomes.append(f.trap(ValueError)))
    sql.run(_insert, db, 3).addCallback(outcomes.append)
    sql.startService()
    try:
        reactor.run_one()
        assert outcomes == [1, ValueError, 3]
        assert [r[0] for r in Database(db.path).read("SELECT x FROM t ORDER BY x")] == [1, 3]
    finally:
        sql.stopService()


def test_a_nested_transaction_is_a_savepoint(tmp_path):
    """transaction() inside an open transaction rolls back only its own block on error."""
    db = Database(str(tmp_path / "s.db")).open()
    db.connection().execute("CREATE TABLE t (x INTEGER)")
    with db.transaction() as conn:
        conn.execute("INSERT INTO t VALUES (1)")
        with pytest.raises(ValueError):
            _insert_then_fail(db, 2)
    assert [r[0] for r in db.read("SELECT x FROM t")] == [1]


def test_batched_jobs_under_load_wait_to_share_a_commit(tmp_path):
    """A job nobody waits for, submitted while the thread is busy, waits for others to commit with it."""
    sql, reactor, db = _sql_thread(tmp_path)
    sql.linger, sql.busy = 30.0, 60.0  # every commit leaves the thread busy; a wait lasts until it is ended
    results = []
    sql.startService()
    try:
        sql.run_batched(_insert, db, 1).addCallback(results.append)
        reactor.run_one()  # idle: the first one does not wait
        assert results == [1] and sql.commits == 1
        sql.run_batched(_insert, db, 2).addCallback(results.append)
        sql.run_batched(_insert, db, 3).addCallback(results.append)
        sql.run(_insert, db, 4).addCallback(results.append)  # someone waits for this one: the wait ends
        reactor.run_one()
        assert results == [1, 2, 3, 4] and sql.commits == 2
    finally:
        sql.stopService()


def test_a_lingering_group_ends_at_the_stop(tmp_path):
    """Stopping ends the wait of batched jobs and commits them."""
    sql, reactor, db = _sql_thread(tmp_path)
    sql.linger, sql.busy = 30.0, 60.0
    results = []
    sql.startService()
    sql.run_batched(_insert, db, 1).addCallback(results.append)
    reactor.run_one()
    sql.run_batched(_insert, db, 2).addCallback(results.append)
    sql.stopService()
    reactor.run_one()
    assert results == [1, 2]


def test_stopping_finishes_submitted_jobs(tmp_path):
    """stopService runs what was already submitted before the thread ends."""
    sql, reactor, db = _sql_thread(tmp_path)
    sql.startService()
    results = []
    sql.run(_insert, db, 7).addCallback(results.append)
    sql.stopService()
    reactor.run_one()
    assert results == [7]


def test_writers_take_turns_on_the_writer_lock(tmp_path):
    """An SMTP worker's SQL thread holds the store's writer flock: ours waits for it, then commits at once."""
    import fcntl
    import os
    import queue

    sql, reactor, db = _sql_thread(tmp_path)
    other = os.open(db.path + ".writer", os.O_RDWR | os.O_CREAT, 0o600)  # another process's open of it
    fcntl.flock(other, fcntl.LOCK_EX)
    results = []
    sql.run(_insert, db, 1).addCallback(results.append)
    sql.startService()
    try:
        with pytest.raises(queue.Empty):
            reactor.run_one(timeout=0.3)  # the job waits for the lock, not for SQLite's busy timeout
        assert Database(db.path).read("SELECT x FROM t") == []
        os.close(other)  # the other writer is done
        reactor.run_one()
        assert results == [1]
    finally:
        sql.stopService()


def test_a_writer_lock_that_cannot_be_had_fails_the_group_and_not_the_thread(tmp_path):
    """No descriptor left, or the lock file unusable: that group's jobs fail, the next ones run."""
    import os

    sql, reactor, db = _sql_thread(tmp_path)
    os.mkdir(db.path + ".writer")  # cannot be opened for writing
    outcomes = []
    sql.run(_insert, db, 1).addErrback(lambda f: outcomes.append(f.check(OSError)))
    sql.startService()
    try:
        reactor.run_one()
        assert outcomes == [OSError]
        os.rmdir(db.path + ".writer")
        sql.run(_insert, db, 2).addCallback(outcomes.append)
        reactor.run_one()
        assert outcomes == [OSError, 2]
    finally:
        sql.stopService()


def test_the_sql_thread_keeps_statement_journals_in_memory(tmp_path):
    """Each job of a group is a savepoint whose journal of changed pages is kept in memory, not in a temp
    file; other connections keep SQLite's default."""
    sql, reactor, db = _sql_thread(tmp_path)
    sql.startService()
    try:
        stores = []
        sql.run(lambda: stores.append(db.connection().execute("PRAGMA temp_store").fetchone()[0]))
        reactor.run_one()
        assert stores == [2]  # MEMORY
        assert db.connection().execute("PRAGMA temp_store").fetchone()[0] == 0  # this thread's: the default
    finally:
        sql.stopService()
