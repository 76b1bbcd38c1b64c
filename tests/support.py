"""Helpers shared by the whole suite: free ports, config files, continuityctl as a subprocess."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def render_config(sections: dict[str, dict]) -> str:
    """TOML text for ``{section: {key: value}}`` (strings, numbers, booleans, lists)."""
    lines = []
    for section, values in sections.items():
        lines.append(f"[{section}]")
        for key, value in values.items():
            lines.append(f"{key} = {json.dumps(value)}")
        lines.append("")
    return "\n".join(lines)


def default_sections(data_dir: str = "var", listen: dict | None = None) -> dict[str, dict]:
    """A config with every listener disabled unless ``listen`` names it."""
    listeners = dict.fromkeys(("smtp", "submission", "submissions", "imap", "imaps", "pop3", "pop3s", "http"), "")
    listeners.update(listen or {})
    return {
        "server": {"hostname": "mx.example.test", "data_dir": data_dir},
        "listen": listeners,
        "tls": {"certificate": "", "key": "", "require_tls_for_auth": True},
        "relay": {"timeout": 5, "probe_interval": 1, "retry_intervals": [1, 2, 4], "max_queue_age": 3600},
    }


@pytest.fixture
def config_file(tmp_path: Path):
    """A function writing a config (default: no listeners) into tmp_path; returns its path."""

    def write(sections: dict[str, dict] | None = None, name: str = "continuity.toml") -> Path:
        path = tmp_path / name
        path.write_text(render_config(sections if sections is not None else default_sections()))
        return path

    return write


class CLI:
    """Runs the installed ``continuityctl`` against one config file."""

    def __init__(self, config: Path):
        self.config = config

    def __call__(self, *args: str, stdin: str | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(BIN / "continuityctl"), "--config", str(self.config), *args],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, **(env or {})},
        )

    def json(self, *args: str) -> object:
        result = self(*args, "--json")
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)


@pytest.fixture
def cli(config_file) -> CLI:
    """continityctl as a subprocess on a fresh config and data_dir."""
    return CLI(config_file())


# -- the delivery path on a task.Clock -----------------------------------------

EPOCH = 1_800_000_000.0  # clock time the unit stacks start at (a realistic Unix time)
UPSTREAM = "upstream.example.com:25"  # DeliveryStack.domain()'s default upstream


class DeliveryStack:
    """The real delivery path on a ``task.Clock``: no reactor, no sockets, no sleeping.

    Real SQLite, spool, Maildirs, intake, agents, queue runner and failover
    monitor under ``tmp_path``; the threads are :class:`InlineThread` s (work
    runs at once), upstreams a :class:`ScriptedPool` (no socket works on a
    Clock). ``recover`` is the real :class:`Recovery` unless a test passes its own.
    """

    def __init__(self, tmp_path: Path, relay: dict | None = None, smarthost: str = "smarthost.test:25",
                 recover=None, probe=None, concurrency: int = 32):
        from twisted.internet.task import Clock

        from continuity.config import parse_config
        from continuity.db import Database
        from continuity.delivery.agents import Agents
        from continuity.delivery.runner import QueueRunner
        from continuity.directory.store import Directory
        from continuity.failover.monitor import FailoverMonitor
        from continuity.failover.recovery import Recovery, RecoveryJournal
        from continuity.mailstore import MaildirStore
        from continuity.spool.index import QueueIndex
        from continuity.spool.intake import MessageIntake
        from continuity.spool.store import MessageSpool
        from continuity.testing.inline import InlineThread
        from continuity.testing.upstream import ScriptedPool

        self.clock = Clock()
        self.clock.advance(EPOCH)
        sections = default_sections(str(tmp_path / "var"))
        sections["relay"].update({"retry_intervals": [60, 300, 900], "max_queue_age": 3600, "probe_interval": 30},
                                 **(relay or {}))
        sections["outbound"] = {"smarthost": smarthost}
        self.config = parse_config(sections, str(tmp_path / "continuity.toml"))
        self.db = Database(self.config.db_path).open()
        self.sql, self.io = InlineThread(), InlineThread()
        self.directory = Directory(self.db, clock=self.clock.seconds)
        self.index = QueueIndex(self.db, clock=self.clock.seconds)
        self.spool = MessageSpool(self.config.spool_root)
        self.spool.prepare()
        self.intake = MessageIntake(self.clock, self.sql, self.io, self.spool, self.index)
        self.mailstore = MaildirStore(self.config.mail_root, hostname="mx.example.test")
        self.pool = ScriptedPool()
        self.agents = Agents(self.config, self.pool, self.mailstore, self.io, clock=self.clock)
        self.agents.intake = self.intake
        self.runner = QueueRunner(self.clock, self.config, self.sql, self.io, self.index, self.spool,
                                  self.directory, self.agents, concurrency=concurrency)
        self.intake.kick, self.intake.claim = self.runner.kick, self.runner.claim_new
        self.journal = RecoveryJournal(self.db, self.clock.seconds)
        self.recovery = Recovery(self.sql, self.io, self.directory, self.journal, self.mailstore, self.pool)
        self.probes: list[str] = []
        self.probe_ok = False

        async def scripted_probe(domain):
            self.probes.append(domain.name)
            return self.probe_ok, "250 2.1.5 Ok" if self.probe_ok else "421 4.4.1 connection refused"

        self.monitor = FailoverMonitor(self.clock, self.sql, self.directory, self.config.relay.probe_interval,
                                       probe or scripted_probe, self.runner.reroute, self.runner.flush,
                                       recover or self.recovery)
        self.runner.failover = self.monitor

    def start(self) -> "DeliveryStack":
        """Start the runner and the monitor (the monitor polls the store at once)."""
        self.runner.startService()
        self.monitor.startService()
        self.clock.advance(0)
        return self

    def stop(self) -> None:
        for service in (self.monitor, self.runner):
            if service.running:
                service.stopService()
        self.db.close()

    def domain(self, name: str = "example.com", upstream: str = UPSTREAM, **settings):
        """Host ``name`` with ``users`` (a list of addresses, default bob@) registered."""
        users = settings.pop("users", [f"bob@{name}"])
        domain = self.directory.add_domain(name, upstream, **settings)
        for address in users:
            self.directory.add_user(address)
        return domain

    def accept(self, recipients: list[str], sender: str = "alice@sender.example",
               message: bytes = b"Subject: hello\r\nMessage-ID: <m1@sender.example>\r\n\r\nHi.\r\n") -> str:
        """Spool a message as the SMTP server does; the runner delivers it at once."""
        from twisted.internet.defer import Deferred

        hosted = {r for r in recipients if self.directory.find_domain(r.rpartition("@")[2]) is not None}
        directions = ["inbound" if r in hosted else "outbound" for r in recipients]
        d = Deferred.fromCoroutine(self.intake.accept(
            sender=sender, recipients=recipients, chunks=[message], origin="smtp", client="192.0.2.1",
            direction="inbound" if all(x == "inbound" for x in directions) else "outbound", directions=directions))
        results: list = []
        d.addBoth(results.append)
        assert results and isinstance(results[0], str), results
        return results[0]

    def queue(self, queue_id: str) -> list:
        """The queue rows of one message, delivered ones too."""
        return self.index.recipients(queue_id)

    def inbox(self, address: str) -> list[bytes]:
        """The messages in the INBOX of ``address``."""
        from continuity.envelope import parse_address

        refs = self.mailstore.inbox_messages(parse_address(address))
        return [self.mailstore.read_message(ref) for ref in refs]

    def tracking(self, recipient: str) -> list[dict]:
        from continuity import tracking

        return tracking.query(self.db, recipient=recipient)


@pytest.fixture
def stack(tmp_path: Path):
    """A started :class:`DeliveryStack` (no domain yet), stopped after the test."""
    stack = DeliveryStack(tmp_path).start()
    yield stack
    stack.stop()
