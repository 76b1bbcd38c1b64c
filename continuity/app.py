"""Composition root: build the whole service from a :class:`~continuity.config.Config`.

``build_service(config, reactor)`` returns one ``MultiService``: the SQL thread,
the listeners that exist in this release, and the long-running workers. This is
the only module that knows how the parts fit together.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import attrs
from twisted.application.service import MultiService, Service
from twisted.internet import endpoints
from twisted.internet.interfaces import IListeningPort, IProtocolFactory, IStreamServerEndpoint
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory

from continuity import durable, tls
from continuity.config import IMPLICIT_TLS, LISTENERS, Config
from continuity.db import Database, SchemaTooNew, SQLThread
from continuity.directory.store import Directory

log = Logger()


class StartupError(Exception):
    """The service cannot start (data_dir unusable, port taken...): one line for the operator."""


@attrs.define
class Components:
    """What the protocol factories are built from."""

    config: Config
    reactor: object
    db: Database
    sql: SQLThread
    directory: Directory
    tls_context: object


FactoryBuilder = Callable[[Components, str], IProtocolFactory]


class Listener(Service):
    """One configured listener: binds its endpoint (before privileges drop) and logs the address."""

    log = Logger()

    def __init__(self, name: str, description: str, endpoint: IStreamServerEndpoint, factory: IProtocolFactory):
        self.name = name
        self.description = description
        self._endpoint = endpoint
        self._factory = factory
        self._port: IListeningPort | None = None

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        failures: list = []
        d = self._endpoint.listen(self._factory)
        d.addCallbacks(self._listening, failures.append)
        if failures:
            raise StartupError(f"cannot listen for {self.name} on {self.description}: {failures[0].value}")

    def _listening(self, port: IListeningPort) -> None:
        self._port = port
        host = port.getHost()
        self.log.info(
            "{listener} listening on {host}:{port}",
            listener=self.name,
            host=getattr(host, "host", host),
            port=getattr(host, "port", ""),
        )

    def startService(self) -> None:
        if self._port is None and not self.running:
            # Started without privilegedStartService (e.g. in tests).
            self.privilegedStartService()
        super().startService()

    def stopService(self):
        super().stopService()
        if self._port is not None:
            port, self._port = self._port, None
            return port.stopListening()
        return None

    @property
    def port(self) -> IListeningPort | None:
        return self._port


def _factory_builders() -> dict[str, FactoryBuilder]:
    """The listeners implemented in this release, by config key."""
    return {}


def build_service(config: Config, reactor) -> MultiService:
    """The whole service for ``config`` on ``reactor``."""
    try:
        durable.make_dirs(config.data_dir)
        db = Database(config.db_path).open()
    except SchemaTooNew as exc:
        raise StartupError(str(exc)) from None
    except OSError as exc:
        raise StartupError(f"server.data_dir: cannot use {config.data_dir}: {exc.strerror}") from None
    root = MultiService()
    sql = SQLThread(reactor, db)
    sql.setServiceParent(root)
    cert_path, key_path = tls.resolve_pair(config.tls, config.data_dir, config.server.hostname)
    components = Components(
        config=config,
        reactor=reactor,
        db=db,
        sql=sql,
        directory=Directory(db),
        tls_context=tls.context_factory(cert_path, key_path),
    )
    builders = _factory_builders()
    for name in LISTENERS:
        description = config.listen[name]
        if not description:
            continue
        build = builders.get(name)
        if build is None:
            log.warn("listener {listener} ({description}) is configured but not available in this release",
                     listener=name, description=description)
            continue
        factory = build(components, name)
        if name in IMPLICIT_TLS:
            factory = TLSMemoryBIOFactory(components.tls_context, False, factory)
        endpoint = endpoints.serverFromString(reactor, description)
        Listener(name, description, endpoint, factory).setServiceParent(root)
    log.info("continuity starting as {hostname}, data in {data_dir}",
             hostname=config.server.hostname, data_dir=os.path.abspath(config.data_dir))
    return root
