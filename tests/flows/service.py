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
