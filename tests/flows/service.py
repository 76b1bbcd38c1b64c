"""Run the real ``twistd continuity`` as a subprocess for flow tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

BIN = Path(sys.executable).parent


def wait_for_port(port: int, timeout: float = 20.0, host: str = "127.0.0.1") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {host}:{port} after {timeout}s")


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether nothing listens on ``port``. Suspected, not confirmed: a killed service's socket may outlive its
    processes for a moment and take a connection, then reset it, so a restart waits until the bind succeeds."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def wait_until(predicate, timeout: float = 15.0, what: str = "condition"):
    """Poll ``predicate`` every 0.1 s until it returns something true; return that."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def maildir_inbox(data_dir: Path, address: str) -> list[Path]:
    """The files in the continuity INBOX of ``address`` (``new/`` then ``cur/``)."""
    local, domain = address.split("@")
    root = data_dir / "mail" / domain / local
    return sorted((root / "new").glob("*")) + sorted((root / "cur").glob("*")) if root.exists() else []


class Service:
    """``twistd -n continuity --config PATH`` with its log captured to a file."""

    def __init__(self, config: Path, log_path: Path | None = None):
        self.config = config
        self.log_path = log_path or config.with_suffix(".log")
        self.process: subprocess.Popen | None = None

    def start(self, wait_ports: tuple[int, ...] = ()) -> "Service":
        # A restart after a kill: the last run's sockets must be gone, or the wait below would find them.
        wait_until(lambda: all(port_free(port) for port in wait_ports), timeout=10,
                   what=f"ports {wait_ports} to be free")
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            [str(BIN / "twistd"), "--nodaemon", "--pidfile=", f"--logfile={self.log_path}", "continuity",
             "--config", str(self.config)],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=str(self.config.parent),
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        log.close()
        for port in wait_ports:
            try:
                wait_for_port(port)
            except TimeoutError:
                self.stop()
                raise AssertionError(f"service did not listen on {port}; log:\n{self.log()}")
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        if self.process is None:
            return 0
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(f"service did not stop on signal {sig}; log:\n{self.log()}")
        finally:
            self.process = None

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def stop_cleanly(self) -> None:
        """Stop with SIGTERM and check it was clean: twistd's exit status, its last words, no traceback."""
        code = self.stop()
        log = self.log()
        # twistd reports the signal that stopped it as its exit status (-SIGTERM) after a clean shut-down.
        assert code in (0, -15) and "Server Shut Down." in log, log
        assert "Traceback" not in log, log


MESSAGE = (b"From: alice@sender.example\r\nTo: bob@example.com\r\nSubject: hello\r\n"
           b"Message-ID: <m1@sender.example>\r\n\r\nHi Bob.\r\n")


class MX:
    """The service with its ``smtp`` listener on 127.0.0.1: continuityctl, data_dir and an SMTP client.

    ``relay`` and ``outbound`` override keys of those config sections (the
    defaults keep flows fast: 3 s timeout, probes every second, retries after 1 and 2 s).
    """

    def __init__(self, tmp_path: Path, relay: dict | None = None, outbound: dict | None = None,
                 server: dict | None = None):
        from support import CLI, default_sections, free_port, render_config

        self.port = free_port()
        sections = default_sections(listen={"smtp": f"tcp:{self.port}:interface=127.0.0.1"})
        sections["server"].update(server or {})
        sections["relay"] = {"timeout": 3, "probe_interval": 1, "retry_intervals": [1, 2], "max_queue_age": 3600,
                             **(relay or {})}
        if outbound:
            sections["outbound"] = outbound
        self.config = tmp_path / "c.toml"
        self.config.write_text(render_config(sections))
        self.data_dir = tmp_path / "var"
        self.cli = CLI(self.config)
        self.service = Service(self.config)

    def start(self) -> "MX":
        self.service.start(wait_ports=(self.port,))
        return self

    def stop(self) -> None:
        """Stop with SIGTERM and check it was clean (:meth:`Service.stop_cleanly`)."""
        self.service.stop_cleanly()

    def kill(self) -> None:
        self.service.kill()

    def send(self, recipients: list[str], message: bytes = MESSAGE, sender: str = "alice@sender.example") -> dict:
        """One transaction with smtplib; returns the refused recipients (raises if all were)."""
        import smtplib

        with smtplib.SMTP("127.0.0.1", self.port, timeout=20) as client:
            client.ehlo("client.sender.example")
            return client.sendmail(sender, recipients, message)

    def add_domain(self, upstream: str, *options: str, domain: str = "example.com",
                   users: tuple[str, ...] = ("bob",)) -> None:
        """Host ``domain`` with ``upstream`` and register ``users`` (local parts) with a password."""
        result = self.cli("domain", "add", domain, "--upstream", upstream, *options)
        assert result.returncode == 0, result.stderr
        for local in users:
            result = self.cli("user", "add", f"{local}@{domain}", "--password-stdin", stdin="Secret123\n")
            assert result.returncode == 0, result.stderr

    def inbox(self, address: str) -> list[Path]:
        return maildir_inbox(self.data_dir, address)
