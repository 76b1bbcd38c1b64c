"""twistd glue: ``twistd continuity --config PATH`` -> :func:`continuity.app.build_service`."""

from __future__ import annotations

import sys

from twisted.python import usage

from continuity.config import config_path_from, load_config
from continuity.errors import ConfigError


class Options(usage.Options):
    synopsis = "--config PATH"
    longdesc = (
        "Run the continuity mail service. The config file is TOML (see etc/continuity.toml);"
        " without --config, $CONTINUITY_CONFIG names it."
    )
    optParameters = [["config", "c", None, "path of the TOML config file (default: $CONTINUITY_CONFIG)"]]


def makeService(options: Options):
    from twisted.internet import reactor

    from continuity.app import StartupError, build_service
    from continuity.logs import destination

    try:
        config = load_config(config_path_from(options["config"]))
        # twistd's own options (--logfile, --nodaemon, --syslog) say where the log goes.
        return build_service(config, reactor, destination(getattr(options, "parent", None)))
    except (ConfigError, StartupError) as exc:
        # One clear line, no traceback, non-zero exit (CONTRACT section 2).
        sys.stderr.write(f"continuity: {'config error: ' if isinstance(exc, ConfigError) else ''}{exc}\n")
        sys.stderr.flush()
        raise SystemExit(1) from None
