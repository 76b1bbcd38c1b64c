"""The store of everything that is not a message body: SQLite, migrations, the SQL thread.

One file ``data_dir/continuity.sqlite3`` in WAL mode with ``synchronous=FULL``,
so a committed change survives a crash and the CLI can write while the
service reads. The schema is versioned: :data:`MIGRATIONS` is applied in order
on open, each in its own transaction. Callers get connections from
:class:`Database` (synchronous, one per thread) and, in the service, run their
work on :class:`SQLThread` so SQL never blocks the reactor.

This module imports nothing of ours. A second backend (PostgreSQL, for several
nodes) replaces :class:`Database`; callers only use ``transaction()``,
``read()`` and ``data_version()``.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorThreads
from twisted.logger import Logger
from twisted.python.failure import Failure


T = TypeVar("T")

# Each migration is a list of statements, applied in one transaction. Never edit
# a released migration: append a new one.
MIGRATIONS: Sequence[Sequence[str]] = (
    # 1: the directory: hosted domains, users, aliases.
    (
        """CREATE TABLE domains (
            name TEXT PRIMARY KEY,
            upstream_host TEXT NOT NULL,
            upstream_port INTEGER NOT NULL,
            scope TEXT NOT NULL CHECK (scope IN ('all', 'selected')),
            activation TEXT NOT NULL CHECK (activation IN ('auto', 'manual')),
            continuity INTEGER NOT NULL,
            password_policy TEXT NOT NULL,
            created REAL NOT NULL
        )""",
        """CREATE TABLE users (
            address TEXT PRIMARY KEY,
            domain TEXT NOT NULL REFERENCES domains(name),
            local_part TEXT NOT NULL,
            password_hash TEXT,
            active INTEGER NOT NULL,
            inclusion TEXT CHECK (inclusion IN ('included', 'excluded')),
            source TEXT NOT NULL CHECK (source IN ('local', 'ldap')),
            created REAL NOT NULL,
            updated REAL NOT NULL
        )""",
        "CREATE INDEX users_domain ON users(domain)",
        """CREATE TABLE aliases (
            alias TEXT PRIMARY KEY,
            address TEXT NOT NULL REFERENCES users(address) ON DELETE CASCADE,
            domain TEXT NOT NULL
        )""",
        "CREATE INDEX aliases_address ON aliases(address)",
    ),
    # 2: failover state of each domain and the history of its mode changes.
    (
        "ALTER TABLE domains ADD COLUMN mode TEXT NOT NULL DEFAULT 'normal'",
        "ALTER TABLE domains ADD COLUMN mode_since REAL",
        "ALTER TABLE domains ADD COLUMN health TEXT NOT NULL DEFAULT 'unknown'",
        "ALTER TABLE domains ADD COLUMN health_checked REAL",
        "ALTER TABLE domains ADD COLUMN health_detail TEXT",
        """CREATE TABLE mode_changes (
            id INTEGER PRIMARY KEY,
            domain TEXT NOT NULL,
            time REAL NOT NULL,
            old_mode TEXT NOT NULL,
            new_mode TEXT NOT NULL,
            reason TEXT NOT NULL,
            automatic INTEGER NOT NULL
        )""",
        "CREATE INDEX mode_changes_domain ON mode_changes(domain, time)",
    ),
    # 3: the queue index (spooled messages, per-recipient delivery state) and tracking.
    (
        """CREATE TABLE messages (
            queue_id TEXT PRIMARY KEY,
            message_id TEXT,
            sender TEXT NOT NULL,
            size INTEGER NOT NULL,
            received REAL NOT NULL,
            direction TEXT NOT NULL CHECK (direction IN ('inbound', 'outbound')),
            origin TEXT NOT NULL,
            client TEXT,
            auth_user TEXT
        )""",
        """CREATE TABLE queue (
            id INTEGER PRIMARY KEY,
            queue_id TEXT NOT NULL REFERENCES messages(queue_id),
            recipient TEXT NOT NULL,
            domain TEXT NOT NULL,
            direction TEXT NOT NULL CHECK (direction IN ('inbound', 'outbound')),
            state TEXT NOT NULL CHECK (state IN ('queued', 'deferred', 'held', 'done')),
            attempts INTEGER NOT NULL DEFAULT 0,
            next_attempt REAL NOT NULL,
            last_error TEXT,
            tracking_id INTEGER NOT NULL
        )""",
        "CREATE INDEX queue_due ON queue(state, next_attempt)",
        "CREATE INDEX queue_domain ON queue(domain, state)",
        "CREATE INDEX queue_message ON queue(queue_id)",
        """CREATE TABLE tracking (
            id INTEGER PRIMARY KEY,
            queue_id TEXT,
            message_id TEXT,
            sender TEXT NOT NULL,
            recipient TEXT NOT NULL,
            direction TEXT NOT NULL,
            status TEXT NOT NULL,
            time REAL NOT NULL,
            mailbox_ref TEXT
        )""",
        "CREATE INDEX tracking_time ON tracking(time)",
        "CREATE INDEX tracking_recipient ON tracking(recipient, time)",
        "CREATE INDEX tracking_sender ON tracking(sender, time)",
        "CREATE INDEX tracking_queue ON tracking(queue_id)",
        """CREATE TABLE tracking_events (
            id INTEGER PRIMARY KEY,
            tracking_id INTEGER NOT NULL,
            time REAL NOT NULL,
            status TEXT NOT NULL,
            detail TEXT
        )""",
        "CREATE INDEX tracking_events_row ON tracking_events(tracking_id, time)",
        # Recovery journal: a row before each redelivery attempt, marked after the upstream's 250.
        """CREATE TABLE recovery_journal (
            id INTEGER PRIMARY KEY,
            domain TEXT NOT NULL,
            address TEXT NOT NULL,
            kind TEXT NOT NULL CHECK (kind IN ('inbox', 'cs-sent')),
            message_key TEXT NOT NULL,
            state TEXT NOT NULL CHECK (state IN ('sending', 'sent', 'removed')),
            time REAL NOT NULL,
            UNIQUE (address, kind, message_key)
        )""",
    ),
    # 4: recovery finds a message's tracking rows by mailbox_ref for every message it
    # redelivers; without an index that scanned the whole (ever growing) tracking table.
    (
        "CREATE INDEX tracking_mailbox_ref ON tracking(mailbox_ref)",
    ),
)

SCHEMA_VERSION = len(MIGRATIONS)


class SchemaTooNew(Exception):
    """The database was written by a newer release than this one."""


class Database:
    """An SQLite database file with one connection per thread."""

    log = Logger()

    def __init__(self, path: str, migrations: Sequence[Sequence[str]] = MIGRATIONS):
        self.path = path
        self._migrations = migrations
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()

    def open(self) -> "Database":
        """Create the file if needed and bring its schema up to date."""
        directory = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(directory, mode=0o700, exist_ok=True)
        self.migrate()
        return self

    def connection(self) -> sqlite3.Connection:
        """This thread's connection (autocommit; transactions are explicit)."""
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, isolation_level=None, timeout=30.0, check_same_thread=False)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA busy_timeout = 30000")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute("PRAGMA foreign_keys = ON")
            self._local.conn = conn
            with self._lock:
                self._connections.append(conn)
        return conn

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction (``BEGIN IMMEDIATE``): commit on success, roll back on error.

        Inside a transaction already open on this thread's connection (a group of
        :class:`SQLThread` jobs) it is a savepoint: an error undoes only its own changes.
        """
        conn = self.connection()
        if conn.in_transaction:
            conn.execute("SAVEPOINT tx")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK TO tx")
                conn.execute("RELEASE tx")
                raise
            conn.execute("RELEASE tx")
            return
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def read(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> list[sqlite3.Row]:
        """Run one query outside any write transaction and return all rows."""
        return self.connection().execute(sql, params).fetchall()

    def data_version(self) -> int:
        """A number that changes when another connection commits (PRAGMA data_version)."""
        return self.connection().execute("PRAGMA data_version").fetchone()[0]

    def schema_version(self) -> int:
        conn = self.connection()
        conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        row = conn.execute("SELECT MAX(version) FROM schema_version").fetchone()
        return row[0] or 0

    def migrate(self) -> int:
        """Apply the migrations this file lacks; return the resulting version."""
        current = self.schema_version()
        if current > len(self._migrations):
            raise SchemaTooNew(
                f"{self.path} has schema version {current}, this release knows {len(self._migrations)}"
            )
        for number, statements in enumerate(self._migrations[current:], start=current + 1):
            with self.transaction() as conn:
                # Re-check inside the lock: another process may have migrated meanwhile.
                done = conn.execute("SELECT MAX(version) FROM schema_version").fetchone()[0] or 0
                if done >= number:
                    continue
                for statement in statements:
                    conn.execute(statement)
                conn.execute("INSERT INTO schema_version (version) VALUES (?)", (number,))
            self.log.info("database {path} migrated to schema version {version}", path=self.path, version=number)
        return len(self._migrations)

    def close(self) -> None:
        with self._lock:
            for conn in self._connections:
                conn.close()
            self._connections.clear()
        self._local = threading.local()


def _failed(group: list, failure: Failure) -> list[tuple[Deferred, bool, Any]]:
    """Every job of ``group`` failed with ``failure`` (its transaction could not be had or committed)."""
    return [(d, False, failure) for _, _, _, d, _ in group]


class SQLThread(Service):
    """The single thread all of the service's SQL runs on, committing jobs in groups.

    One writer thread means the service never contends with itself for SQLite's
    write lock. Jobs submitted while the thread is busy run together, in order,
    in one write transaction, and one ``COMMIT`` - one fsync of the WAL with
    ``synchronous=FULL`` - makes all of them durable. Every job's Deferred fires
    only after that commit, so a result still means "on disk": ten messages
    accepted at once cost one fsync, not ten, and one wake-up of the thread and
    of the reactor instead of ten. A job's writes go through
    :meth:`Database.transaction`, a savepoint inside the group: an error in
    one undoes that block only, as it did when each was a transaction of its own.

    A job that no client waits for (:meth:`run_batched`: the index rows of a
    message an SMTP worker acknowledged, a delivery's outcome, tracking rows
    written after the ``250``) may wait up to :attr:`linger` seconds for others
    to share its commit, when the thread committed within the last
    :attr:`busy` seconds (under load, never when idle); a job that someone
    waits for (:meth:`run`, the index rows behind a ``250``) ends the wait. Each
    commit writes every page it changed to the WAL: a commit per message wrote
    ~20 pages of queue, tracking and their indexes, where ten messages share
    most of theirs. In A/Bs: submission +10% msg/s (-11% CPU per message),
    emergency mode +6%, relay unchanged; a linger for every job had cost
    relay 11%, in the latency of its ``250``. A linger of 50 ms instead of 5
    makes emergency mode's tracking commits groups of ~50 messages instead
    of ~6: the SQL thread's CPU per message halves (35 us against 70, the
    rows alone in a loop), and the service's CPU per message fell 6% in one
    A/B of six rounds each (another, on a slower hour, was too noisy to say).
    Nothing behind a reply waits for these rows, and a crash loses at most
    that much more of them (the mail they track is already on disk).
    """

    name = "sql"
    log = Logger()
    #: Jobs per transaction at most (a group is whatever queued meanwhile, up to this).
    max_group = 256
    #: Seconds a group of batched jobs waits for more, when the thread is busy.
    linger = 0.05
    #: The thread counts as busy when its last commit was at most this many seconds ago.
    busy = 0.1

    def __init__(self, reactor: IReactorThreads, db: Database):
        self._reactor = reactor
        self.db = db
        self._jobs: deque[tuple[Callable[..., Any], tuple, dict, Deferred, bool]] = deque()
        self._urgent = 0  # jobs queued that someone waits for
        self._lingering = False
        self._ready = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopping = False
        #: Transactions committed so far (tests count them).
        self.commits = 0
        self._writer: int | None = None  # the store's writer lock file, opened at the first group

    def startService(self) -> None:
        super().startService()
        self._stopping = False
        self._thread = threading.Thread(target=self._work, name="continuity-sql", daemon=True)
        self._thread.start()

    def stopService(self) -> None:
        """Finish the jobs already submitted, then stop the thread and close the connections."""
        super().stopService()
        with self._ready:
            self._stopping = True
            self._ready.notify()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._writer is not None:
            os.close(self._writer)
            self._writer = None
        self.db.close()

    def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> Deferred[T]:
        """Run ``fn(*args, **kwargs)`` on the SQL thread; its result fires the Deferred once committed."""
        d: Deferred[T] = Deferred()
        self.submit(d, fn, *args, **kwargs)
        return d

    def run_batched(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> Deferred[T]:
        """:meth:`run` for a job nobody waits for: it may wait :attr:`linger` seconds to share a commit."""
        d: Deferred[T] = Deferred()
        self._queue(d, fn, args, kwargs, False)
        return d

    def submit(self, d: Deferred[T], fn: Callable[..., T], *args: Any, **kwargs: Any) -> None:
        """Queue ``fn`` to fire ``d`` (made on the reactor) once committed; safe from any thread.

        An I/O worker hands its result straight on with this (the spool write,
        then its index rows) instead of a trip back through the reactor.
        """
        self._queue(d, fn, args, kwargs, True)

    def submit_batched(self, d: Deferred[T], fn: Callable[..., T], *args: Any, **kwargs: Any) -> None:
        """:meth:`submit` for a job nobody waits for (see :meth:`run_batched`)."""
        self._queue(d, fn, args, kwargs, False)

    def _queue(self, d: Deferred, fn: Callable[..., Any], args: tuple, kwargs: dict, urgent: bool) -> None:
        with self._ready:
            self._jobs.append((fn, args, kwargs, d, urgent))
            if urgent:
                self._urgent += 1
            if urgent or not self._lingering:
                self._ready.notify()

    def _work(self) -> None:
        # The savepoint of each job in a group keeps the pages it changes in a statement journal; in a temp
        # file (the default) that was two pwrite calls per page, ~40 per message relayed. Only here: other
        # connections (continuityctl's sorts of a long queue) keep spilling to disk.
        self.db.connection().execute("PRAGMA temp_store = MEMORY")
        last_commit = float("-inf")
        while True:
            with self._ready:
                while not self._jobs and not self._stopping:
                    self._ready.wait()
                if not self._jobs:
                    return
                if (not self._urgent and not self._stopping and len(self._jobs) < self.max_group
                        and time.monotonic() - last_commit <= self.busy):
                    self._lingering = True
                    self._ready.wait(self.linger)  # a job someone waits for, or the stop, ends it sooner
                    self._lingering = False
                group = [self._jobs.popleft() for _ in range(min(len(self._jobs), self.max_group))]
                self._urgent -= sum(1 for job in group if job[4])
            outcomes = self._run_group(group)
            last_commit = time.monotonic()
            self._reactor.callFromThread(self._settle, outcomes)

    def _run_group(self, group: list) -> list[tuple[Deferred, bool, Any]]:
        # Other processes write the same file: continuityctl, and SMTP workers
        # reading the directory (their jobs take the lock as any). SQLite's own
        # wait for the write lock polls with sleeps of 1 ms and more, which
        # stalled every job of the group behind it; a flock wakes the next
        # writer the moment the last one commits. If the lock cannot be had
        # (no descriptor left, say), this group fails and the thread goes on.
        try:
            if self._writer is None:
                self._writer = os.open(self.db.path + ".writer", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            fcntl.flock(self._writer, fcntl.LOCK_EX)
        except OSError:
            failure = Failure()
            return _failed(group, failure)
        try:
            return self._write_group(group)
        finally:
            fcntl.flock(self._writer, fcntl.LOCK_UN)

    def _write_group(self, group: list) -> list[tuple[Deferred, bool, Any]]:
        outcomes: list[tuple[Deferred, bool, Any]] = []
        try:
            conn = self.db.connection()
            conn.execute("BEGIN IMMEDIATE")
        except Exception:
            failure = Failure()
            return _failed(group, failure)
        try:
            for fn, args, kwargs, d, _ in group:
                try:
                    result = fn(*args, **kwargs)
                except Exception:
                    outcomes.append((d, False, Failure()))
                else:
                    outcomes.append((d, True, result))
            conn.execute("COMMIT")
            self.commits += 1
        except Exception:
            # The transaction itself failed (disk full, I/O error): nothing of it is durable.
            failure = Failure()
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            return _failed(group, failure)
        return outcomes

    @staticmethod
    def _settle(outcomes: list[tuple[Deferred, bool, Any]]) -> None:
        for d, ok, value in outcomes:
            if ok:
                d.callback(value)
            else:
                d.errback(value)
