"""Our service for the benchmarks: ``twistd -n continuity`` with its own config and data_dir.

Started exactly as an operator would (CONTRACT section 1), as a subprocess
of the harness, and administered with ``continuityctl`` on the same config.
The config enables only the listeners a benchmark asks for, on 127.0.0.1
ports, and raises ``connections_per_ip`` so one loopback client can open the
benchmarks' thousand connections.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from lab import Process, wait_for_port

BIN = Path(sys.executable).parent
LISTENERS = ("smtp", "submission", "submissions", "imap", "imaps", "pop3", "pop3s", "http")


def _toml(sections: dict[str, dict]) -> str:
    lines = []
    for section, values in sections.items():
        lines.append(f"[{section}]")
        lines.extend(f"{key} = {json.dumps(value)}" for key, value in values.items())
        lines.append("")
    return "\n".join(lines)


class Ours(Process):
    """One instance of our service under ``root`` (config, data_dir and log there).

    :meth:`stop` sends SIGTERM, as an operator would: twistd shuts down cleanly.
    """

    stop_timeout = 60.0

    def __init__(self, root: Path, ports: dict[str, int], relay: dict | None = None,
                 limits: dict | None = None, tls: dict | None = None, outbound: dict | None = None):
        self.root = root
        self.ports = dict(ports)
        self.config = root / "continuity.toml"
        self.data_dir = root / "var"
        self.log_path = root / "twistd.log"
        self.relay = {"timeout": 30, "probe_interval": 30, "retry_intervals": [5, 30, 60], "max_queue_age": 86400,
                      **(relay or {})}
        self.limits = {"connections_per_ip": 5000, **(limits or {})}
        self.tls = {"certificate": "", "key": "", "require_tls_for_auth": True, **(tls or {})}
        self.outbound = {"smarthost": "", "relay_networks": [], **(outbound or {})}
        self.process: subprocess.Popen | None = None

    def write_config(self) -> None:
        listen = {name: "" for name in LISTENERS}
        listen.update({name: f"tcp:{port}:interface=127.0.0.1" for name, port in self.ports.items()})
        self.config.write_text(_toml({
            "server": {"hostname": "mx.bench.test", "data_dir": "var"},
            "listen": listen,
            "tls": self.tls,
            "relay": self.relay,
            "outbound": self.outbound,
            "limits": self.limits,
        }))

    def start(self, timeout: float = 60.0) -> "Ours":
        self.root.mkdir(parents=True, exist_ok=True)
        if not self.config.exists():
            self.write_config()
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [str(BIN / "twistd"), "--nodaemon", "--pidfile=", f"--logfile={self.log_path}", "continuity",
                 "--config", str(self.config)],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=str(self.root),
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        for port in self.ports.values():
            wait_for_port(port, timeout, what=f"continuity (log: {self.log_path})", process=self.process)
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None, "not started"
        return self.process.pid

    def ctl(self, *args: str, stdin: str | None = None) -> str:
        """Run ``continuityctl --config ... ARGS``; return its output, raise on a refusal."""
        result = subprocess.run(self._ctl_command(*args), input=stdin, capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            raise RuntimeError(f"continuityctl {' '.join(args)}: {result.stderr.strip()}")
        return result.stdout

    def _ctl_command(self, *args: str) -> list[str]:
        return [str(BIN / "continuityctl"), "--config", str(self.config), *args]

    def ctl_json(self, *args: str) -> object:
        return json.loads(self.ctl(*args, "--json"))

    def add_domain(self, domain: str, upstream: str, *options: str, users: Sequence[str] = (),
                   password: str | None = None) -> None:
        """Host ``domain`` (relaying to ``upstream``) with ``users`` registered (covered with scope all).

        Without ``password`` the users get none (no Argon2 hashing: quicker, and
        mail delivery does not need one); IMAP and POP3 benchmarks pass one.
        """
        self.ctl("domain", "add", domain, "--upstream", upstream, *options)
        stdin = subprocess.PIPE if password is not None else subprocess.DEVNULL
        adding = [subprocess.Popen(self._ctl_command("user", "add", f"{local}@{domain}",
                                                     *(["--password-stdin"] if password is not None else [])),
                                   stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                  for local in users]  # side by side: each continuityctl start takes ~0.3 s
        for process in adding:
            _, error = process.communicate(f"{password}\n" if password is not None else None, timeout=120)
            if process.returncode != 0:
                raise RuntimeError(f"continuityctl user add: {error.strip()}")

    def mode(self, domain: str) -> str:
        return self.ctl_json("domain", "show", domain)["mode"]

    def maildir(self, address: str) -> Path:
        local, _, domain = address.partition("@")
        return self.data_dir / "mail" / domain / local

    def spool_count(self) -> int:
        try:
            return len(os.listdir(self.data_dir / "spool" / "messages"))
        except FileNotFoundError:
            return 0

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""
