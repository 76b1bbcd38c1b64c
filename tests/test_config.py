"""Config validation: every bad value stops the start with one line naming the key."""

from __future__ import annotations

import os

import pytest

from continuity.config import load_config
from continuity.errors import ConfigError
from support import default_sections, render_config


def load(tmp_path, sections=None, text=None):
    path = tmp_path / "c.toml"
    path.write_text(text if text is not None else render_config(sections))
    return load_config(str(path))


def with_value(section, key, value):
    sections = default_sections()
    sections.setdefault(section, {})[key] = value
    return sections


def test_defaults_match_the_contract(tmp_path):
    """An empty file gives the contract's defaults, data_dir relative to the file."""
    config = load(tmp_path, text="")
    assert config.listen["smtp"] == "tcp:25" and config.listen["imaps"] == ""
    assert config.limits.max_message_size == 52428800 and config.limits.max_recipients == 1000
    assert config.relay.retry_intervals == (60, 300, 900, 1800, 3600)
    assert config.tls.require_tls_for_auth is True
    assert config.data_dir == os.path.join(str(tmp_path), "var")
    assert config.server.smtp_workers == 1


def test_relative_paths_resolve_against_the_config_folder(tmp_path):
    """data_dir and certificate paths are relative to the config file, not the cwd."""
    (tmp_path / "c.pem").write_text("x")
    (tmp_path / "k.pem").write_text("x")
    sections = default_sections(data_dir="../data")
    sections["tls"].update(certificate="c.pem", key="k.pem")
    config = load(tmp_path, sections)
    assert config.data_dir == os.path.join(str(tmp_path.parent), "data")
    assert config.tls.certificate == str(tmp_path / "c.pem")


@pytest.mark.parametrize(
    "section, key, value, fragment",
    [
        ("limits", "max_recipients", -3, "limits.max_recipients: must be a positive integer"),
        ("limits", "max_message_size", "big", "limits.max_message_size: must be a positive integer"),
        ("limits", "idle_timeout", True, "limits.idle_timeout: must be a positive integer"),
        ("tls", "require_tls_for_auth", "yes", "tls.require_tls_for_auth: must be true or false"),
        ("listen", "smtp", "tcp:notaport", "listen.smtp: bad endpoint description"),
        ("listen", "imap", "carrier-pigeon:25", "listen.imap: bad endpoint description"),
        ("listen", "pop3", 110, "listen.pop3: must be a string"),
        ("relay", "timeout", 0, "relay.timeout: must be a positive number"),
        ("relay", "retry_intervals", [], "relay.retry_intervals: must be a non-empty list"),
        ("relay", "retry_intervals", [60, "x"], "relay.retry_intervals: must be a positive number"),
        ("outbound", "smarthost", "nohostport", "outbound.smarthost: must be \"host:port\""),
        ("outbound", "relay_networks", ["10.0.0.0/33"], "outbound.relay_networks: bad network"),
        ("server", "hostname", "bad host!", "server.hostname: must be a host name"),
        ("server", "smtp_workers", -1, "server.smtp_workers: must be a whole number from 0 to 64"),
        ("server", "smtp_workers", 65, "server.smtp_workers: must be a whole number from 0 to 64"),
        ("server", "smtp_workers", "auto", "server.smtp_workers: must be a whole number from 0 to 64"),
        ("limits", "bogus", 1, "limits.bogus: unknown key"),
    ],
)
def test_bad_value_names_the_key(tmp_path, section, key, value, fragment):
    """Each bad value raises one ConfigError whose line names the key and the problem."""
    with pytest.raises(ConfigError) as info:
        load(tmp_path, with_value(section, key, value))
    assert fragment in str(info.value)
    assert "\n" not in str(info.value)


def test_unknown_section_is_refused(tmp_path):
    """A misspelt section name stops the start."""
    with pytest.raises(ConfigError, match="^lisen: unknown section"):
        load(tmp_path, text="[lisen]\nsmtp = 'tcp:25'\n")


def test_missing_certificate_file_is_refused(tmp_path):
    """A configured certificate that does not exist names tls.certificate."""
    sections = default_sections()
    sections["tls"].update(certificate="missing.pem", key="missing-key.pem")
    with pytest.raises(ConfigError, match="^tls.certificate: file not found"):
        load(tmp_path, sections)


def test_certificate_without_key_is_refused(tmp_path):
    """certificate and key go together."""
    (tmp_path / "c.pem").write_text("x")
    sections = default_sections()
    sections["tls"].update(certificate="c.pem")
    with pytest.raises(ConfigError, match="^tls.key:"):
        load(tmp_path, sections)


def test_invalid_toml_is_one_line(tmp_path):
    """A TOML syntax error is reported with the file name."""
    with pytest.raises(ConfigError, match="is not valid TOML"):
        load(tmp_path, text="[server\n")


def test_missing_file(tmp_path):
    """A config path that does not exist is a clear error."""
    with pytest.raises(ConfigError, match="file not found"):
        load_config(str(tmp_path / "nope.toml"))


def test_shipped_configs_are_valid():
    """etc/continuity.toml and etc/dev.toml load (certificate paths aside)."""
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    dev = load_config(os.path.join(here, "etc", "dev.toml"))
    assert dev.listen["smtp"].startswith("tcp:2525")
    with pytest.raises(ConfigError, match="^tls.certificate: file not found"):
        load_config(os.path.join(here, "etc", "continuity.toml"))
