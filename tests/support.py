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
