"""The twistd plugin: packaging, start-up, listeners, config errors, clean SIGTERM."""

from __future__ import annotations

import os
import signal
import smtplib
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from support import ROOT, default_sections, free_port, render_config
from service import BIN, Service, wait_for_port


def test_twistd_lists_the_plugin():
    """`twistd --help` lists the continuity sub-command."""
    result = subprocess.run([str(BIN / "twistd"), "--help"], capture_output=True, text=True, timeout=60)
    assert "continuity" in result.stdout


def test_wheel_ships_the_plugin(tmp_path):
    """A plain `pip install .` wheel contains twisted/plugins/continuity_plugin.py."""
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path),
         str(ROOT)],
        check=True, timeout=300, capture_output=True,
    )
    (wheel,) = tmp_path.glob("continuity-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "twisted/plugins/continuity_plugin.py" in names
    assert "twisted/plugins/__init__.py" not in names
    assert "continuity/tap.py" in names


def test_bad_config_stops_start_with_one_line(tmp_path):
    """A bad value: exit status non-zero, one line naming the key, no traceback."""
    config = tmp_path / "c.toml"
    config.write_text("[listen]\nsmtp = 'tcp:nope'\n")
    result = subprocess.run([str(BIN / "twistd"), "-n", "continuity", "--config", str(config)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr + result.stdout
    assert result.stderr.strip().splitlines()[-1].startswith("continuity: config error: listen.smtp: bad endpoint")


def test_service_listens_and_stops_on_sigterm(tmp_path):
    """The service binds each configured listener, logs its address, and SIGTERM stops it cleanly."""
    port = free_port()
    config = tmp_path / "c.toml"
    config.write_text(render_config(default_sections(listen={"smtp": f"tcp:{port}:interface=127.0.0.1"})))
    service = Service(config).start(wait_ports=(port,))
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        code, banner = client.ehlo("client.example")
        assert code == 250
    assert service.stop() in (0, -15)  # twistd exits with the signal's status after a clean stop
    log = service.log()
    assert "Server Shut Down." in log
    assert f"smtp listening on 127.0.0.1:{port}" in log
    assert "Traceback" not in log
    # The self-signed pair was generated once in data_dir.
    assert (tmp_path / "var" / "tls" / "selfsigned-cert.pem").exists()
    with pytest.raises(OSError):
        wait_for_port(port, timeout=0.5)


def test_port_in_use_is_one_line(tmp_path):
    """A listener that cannot bind stops the start with a clear line."""
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        config = tmp_path / "c.toml"
        config.write_text(render_config(default_sections(listen={"smtp": f"tcp:{port}:interface=127.0.0.1"})))
        result = subprocess.run([str(BIN / "twistd"), "-n", "--pidfile=", "continuity", "--config", str(config)],
                                capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert result.returncode != 0
    assert f"cannot listen for smtp on tcp:{port}" in result.stderr + result.stdout


def test_daemon_mode_with_pidfile_and_logfile(tmp_path):
    """Without -n it daemonizes, writes --pidfile and --logfile, and SIGTERM stops it."""
    port = free_port()
    config = tmp_path / "c.toml"
    config.write_text(render_config(default_sections(listen={"smtp": f"tcp:{port}:interface=127.0.0.1"})))
    pidfile, logfile = tmp_path / "twistd.pid", tmp_path / "twistd.log"
    subprocess.run([str(BIN / "twistd"), f"--pidfile={pidfile}", f"--logfile={logfile}", "continuity",
                    "--config", str(config)], check=True, timeout=60, cwd=tmp_path)
    wait_for_port(port)
    pid = int(pidfile.read_text())
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 30
    while pidfile.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not pidfile.exists(), logfile.read_text()
    assert "smtp listening on" in logfile.read_text()
