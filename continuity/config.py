"""The configuration file (TOML, CONTRACT section 2) as a frozen value.

Every key is validated here and nowhere else: a wrong type, an unknown key, a
bad endpoint description, a missing certificate file each raise
:class:`~continuity.errors.ConfigError` naming the key, which the entry points
print as one line. Relative paths resolve against the config file's folder.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import tomllib
from collections.abc import Callable, Mapping
from typing import Any

import attrs
from twisted.internet import endpoints

from continuity.errors import ConfigError

LISTENERS = ("smtp", "submission", "submissions", "imap", "imaps", "pop3", "pop3s", "http")
IMPLICIT_TLS = frozenset({"submissions", "imaps", "pop3s"})


@attrs.frozen
class ServerConfig:
    hostname: str
    data_dir: str
    smtp_workers: int


@attrs.frozen
class TLSConfig:
    certificate: str
    key: str
    require_tls_for_auth: bool


@attrs.frozen
class RelayConfig:
    timeout: float
    probe_interval: float
    retry_intervals: tuple[float, ...]
    max_queue_age: int


@attrs.frozen
class OutboundConfig:
    smarthost: tuple[str, int] | None
    relay_networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]


@attrs.frozen
class LimitsConfig:
    max_message_size: int
    max_recipients: int
    max_hops: int
    max_errors: int
    idle_timeout: int
    connections_per_ip: int
    auth_failures: int
    messages_per_hour: int


@attrs.frozen
class Config:
    path: str
    server: ServerConfig
    listen: Mapping[str, str]
    tls: TLSConfig
    relay: RelayConfig
    outbound: OutboundConfig
    limits: LimitsConfig

    @property
    def data_dir(self) -> str:
        return self.server.data_dir

    @property
    def db_path(self) -> str:
        return os.path.join(self.server.data_dir, "continuity.sqlite3")

    @property
    def mail_root(self) -> str:
        return os.path.join(self.server.data_dir, "mail")

    @property
    def spool_root(self) -> str:
        return os.path.join(self.server.data_dir, "spool")

    @property
    def run_root(self) -> str:
        """State of the running processes only (the SMTP listener's shared connection counts)."""
        return os.path.join(self.server.data_dir, "run")

    @property
    def cs_sent_root(self) -> str:
        """Copies of mail sent during an outage, kept for recovery (:mod:`continuity.failover.cssent`)."""
        return os.path.join(self.server.data_dir, "cs-sent")


class _Placeholder:
    """Stands in for the reactor while endpoint descriptions are only parsed."""


def _check_endpoint(key: str, value: Any) -> str:
    if not isinstance(value, str):
        raise ConfigError(key, f"must be a string (endpoint description or \"\"), got {value!r}")
    if value == "":
        return value
    try:
        endpoints.serverFromString(_Placeholder(), value)
    except Exception as exc:  # the parser raises ValueError, TypeError, KeyError...
        raise ConfigError(key, f"bad endpoint description {value!r}: {exc}") from None
    return value


def _string(key: str, value: Any) -> str:
    if not isinstance(value, str):
        raise ConfigError(key, f"must be a string, got {value!r}")
    return value


def _boolean(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(key, f"must be true or false, got {value!r}")
    return value


def _positive_int(key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(key, f"must be a positive integer, got {value!r}")
    return value


def _worker_count(key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 64:
        raise ConfigError(key, f"must be a whole number from 0 to 64, got {value!r}")
    return value


def _positive_number(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ConfigError(key, f"must be a positive number, got {value!r}")
    return float(value)


def _intervals(key: str, value: Any) -> tuple[float, ...]:
    if not isinstance(value, list) or not value:
        raise ConfigError(key, f"must be a non-empty list of positive numbers, got {value!r}")
    return tuple(_positive_number(key, item) for item in value)


def _hostname(key: str, value: Any) -> str:
    value = _string(key, value)
    labels = value.rstrip(".").split(".")
    if not value or any(
        not label or len(label) > 63 or not all(c.isalnum() or c == "-" for c in label) for label in labels
    ):
        raise ConfigError(key, f"must be a host name like mx.example.com, got {value!r}")
    return value.rstrip(".").lower()


def _smarthost(key: str, value: Any) -> tuple[str, int] | None:
    value = _string(key, value)
    if value == "":
        return None
    host, sep, port = value.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(key, f"must be \"host:port\" or \"\", got {value!r}")
    return host, int(port)


def _networks(key: str, value: Any) -> tuple:
    if not isinstance(value, list):
        raise ConfigError(key, f"must be a list of CIDR strings, got {value!r}")
    networks = []
    for item in value:
        if not isinstance(item, str):
            raise ConfigError(key, f"must be a list of CIDR strings, got {item!r}")
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError as exc:
            raise ConfigError(key, f"bad network {item!r}: {exc}") from None
    return tuple(networks)


def _readable_file(key: str, path: str) -> str:
    if not os.path.isfile(path):
        raise ConfigError(key, f"file not found: {path}")
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise ConfigError(key, f"cannot read {path}: {exc.strerror}") from None
    return path


Validator = Callable[[str, Any], Any]

# section -> key -> (validator, default)
_SCHEMA: dict[str, dict[str, tuple[Validator, Any]]] = {
    "server": {
        "hostname": (_hostname, None),  # default: this machine's FQDN, looked up at load
        "data_dir": (_string, "var"),
        "smtp_workers": (_worker_count, 1),
    },
    "listen": {
        "smtp": (_check_endpoint, "tcp:25"),
        "submission": (_check_endpoint, "tcp:587"),
        "submissions": (_check_endpoint, ""),
        "imap": (_check_endpoint, "tcp:143"),
        "imaps": (_check_endpoint, ""),
        "pop3": (_check_endpoint, "tcp:110"),
        "pop3s": (_check_endpoint, ""),
        "http": (_check_endpoint, ""),
    },
    "tls": {
        "certificate": (_string, ""),
        "key": (_string, ""),
        "require_tls_for_auth": (_boolean, True),
    },
    "relay": {
        "timeout": (_positive_number, 30),
        "probe_interval": (_positive_number, 30),
        "retry_intervals": (_intervals, [60, 300, 900, 1800, 3600]),
        "max_queue_age": (_positive_int, 432000),
    },
    "outbound": {
        "smarthost": (_smarthost, ""),
        "relay_networks": (_networks, []),
    },
    "limits": {
        "max_message_size": (_positive_int, 52428800),
        "max_recipients": (_positive_int, 1000),
        "max_hops": (_positive_int, 50),
        "max_errors": (_positive_int, 20),
        "idle_timeout": (_positive_int, 300),
        "connections_per_ip": (_positive_int, 50),
        "auth_failures": (_positive_int, 10),
        "messages_per_hour": (_positive_int, 300),
    },
}


def _section(raw: Mapping[str, Any], name: str) -> dict[str, Any]:
    table = raw.get(name, {})
    if not isinstance(table, dict):
        raise ConfigError(name, "must be a table")
    schema = _SCHEMA[name]
    for key in table:
        if key not in schema:
            raise ConfigError(f"{name}.{key}", "unknown key")
    values = {}
    for key, (validate, default) in schema.items():
        full = f"{name}.{key}"
        if key in table:
            values[key] = validate(full, table[key])
        elif default is not None:
            values[key] = validate(full, default)
        else:
            values[key] = None
    return values


def _resolve(base: str, path: str) -> str:
    return os.path.normpath(os.path.join(base, path)) if path else path


def parse_config(raw: Mapping[str, Any], path: str) -> Config:
    """Validate the parsed TOML document ``raw`` read from ``path``."""
    for name in raw:
        if name not in _SCHEMA:
            raise ConfigError(name, "unknown section")
    base = os.path.dirname(os.path.abspath(path))
    server = _section(raw, "server")
    if server["hostname"] is None:
        server["hostname"] = _hostname("server.hostname", socket.getfqdn())
    if not server["data_dir"]:
        raise ConfigError("server.data_dir", "must not be empty")
    server["data_dir"] = _resolve(base, server["data_dir"])
    tls = _section(raw, "tls")
    if bool(tls["certificate"]) != bool(tls["key"]):
        missing = "tls.key" if tls["certificate"] else "tls.certificate"
        raise ConfigError(missing, "tls.certificate and tls.key are set together or both left empty")
    for key in ("certificate", "key"):
        if tls[key]:
            tls[key] = _readable_file(f"tls.{key}", _resolve(base, tls[key]))
    relay = _section(raw, "relay")
    relay["max_queue_age"] = int(relay["max_queue_age"])
    return Config(
        path=os.path.abspath(path),
        server=ServerConfig(**server),
        listen=_section(raw, "listen"),
        tls=TLSConfig(**tls),
        relay=RelayConfig(**relay),
        outbound=OutboundConfig(**_section(raw, "outbound")),
        limits=LimitsConfig(**_section(raw, "limits")),
    )


def load_config(path: str) -> Config:
    """Read and validate the TOML file at ``path``."""
    try:
        with open(path, "rb") as handle:
            raw = tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError("config", f"file not found: {path}") from None
    except OSError as exc:
        raise ConfigError("config", f"cannot read {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("config", f"{path} is not valid TOML: {exc}") from None
    return parse_config(raw, path)


def config_path_from(argument: str | None) -> str:
    """The config path from ``--config`` or ``$CONTINUITY_CONFIG``."""
    path = argument or os.environ.get("CONTINUITY_CONFIG", "")
    if not path:
        raise ConfigError("config", "no config file: pass --config PATH or set CONTINUITY_CONFIG")
    return path
