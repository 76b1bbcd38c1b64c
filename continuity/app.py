"""Composition root: build the whole service from a :class:`~continuity.config.Config`.

``build_service(config, reactor)`` returns one ``MultiService``: the SQL thread,
the listeners that exist in this release, and the long-running workers. They
start in the order they were added and stop one by one in the reverse order
(:class:`ServiceStack`), so the threads outlive the work that needs them. This
is the only module that knows how the parts fit together.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable

import attrs
from twisted.application.service import MultiService, Service
from twisted.internet import endpoints
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IListeningPort, IProtocolFactory, IStreamServerEndpoint
from twisted.logger import ILogObserver, Logger
from twisted.protocols.tls import TLSMemoryBIOFactory

from continuity import durable, tls
from continuity.config import IMPLICIT_TLS, LISTENERS, Config
from continuity.counters import ConnectionCounter, SharedConnectionCounter, Window, sliding_window
from continuity.db import Database, SchemaTooNew, SQLThread
from continuity.directory.cache import DirectoryCache
from continuity.directory.cred import build_authenticator, verifications_at_once
from continuity.directory.store import Directory
from continuity.failover.cssent import SentCopies
from continuity.logs import observer as log_observer
from continuity.mailstore import MaildirStore
from continuity.threads import WorkerThreads

log = Logger()


#: Listeners the SMTP workers serve alone while one runs (the service indexes and delivers their mail): a
#: submission session's TLS, login and dialogue then leave the service's core to delivery (+28% in an A/B
#: of the submission benchmark). On ``smtp`` both accept: in emergency mode a worker writes the mailboxes'
#: copies itself, and the service taking its share of that is worth more (a paused service cost 42%).
WORKERS_ONLY = ("submission", "submissions")


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
    #: The I/O pool of the mail flow: spool, deliveries, recovery.
    io: object = None
    #: The I/O pool of mailbox access (IMAP, POP3, logins): a storm of folder listings after a failover
    #: never holds up the writes behind a 250 (in an SMTP worker, which serves no mailbox, the same as io).
    mailbox_io: object = None
    mailstore: object = None
    authenticator: object = None
    realm: object = None
    sent_copies: object = None
    index: object = None
    intake: object = None
    directory_cache: object = None
    #: Emergency mode's writes straight into the continuity mailboxes (the MX policy's).
    direct: object = None
    #: In an SMTP worker: its pipe to the service process, which indexes, delivers and tracks for it.
    parent: object = None
    #: 0 in the service process, N in SMTP worker N (:mod:`continuity.workers`).
    process: int = 0
    #: Called when a mode switch of ours has landed in the store: cached directory answers are stale.
    directory_changed: list[Callable[[], None]] = attrs.Factory(list)
    _windows: dict[str, Window] = attrs.Factory(dict)

    def changed(self) -> None:
        for hook in self.directory_changed:
            hook()

    def connections(self, listener: str) -> ConnectionCounter | None:
        """The count of ``connections_per_ip`` of a listener the SMTP workers accept on too, one for every
        process (None: the policy counts alone)."""
        config = self.config
        if not config.server.smtp_workers:
            return None
        return SharedConnectionCounter(config.limits.connections_per_ip, config.run_root, listener, self.process,
                                       1 + config.server.smtp_workers)

    def window(self, name: str, seconds: float) -> Window:
        """The sliding window ``name`` of this process, one for all its listeners, and counted with the SMTP
        workers' when there are any (the login throttle, the messages per user and hour)."""
        if name not in self._windows:
            config = self.config
            self._windows[name] = sliding_window(self.reactor.seconds, seconds, config.run_root, name, self.process,
                                                 1 + config.server.smtp_workers)
        return self._windows[name]


FactoryBuilder = Callable[[Components, str], IProtocolFactory]


class ServiceStack(MultiService):
    """A MultiService that stops its children one after another, the last added first.

    Twisted's ``MultiService`` stops all children at once. Here the SQL and I/O
    threads (added first) must outlive the listeners, the queue runner and the
    connection pool (added later), whose work in flight still runs on them: a
    job submitted to a stopped thread never finishes, and shut-down would hang.
    """

    #: twistd's log observer for the application this joins (:mod:`continuity.logs`), if set.
    log_observer = None

    def setServiceParent(self, parent) -> None:
        super().setServiceParent(parent)
        if self.log_observer is not None and hasattr(parent, "setComponent"):
            # twistd starts logging with an application's ILogObserver component in place of its own.
            parent.setComponent(ILogObserver, self.log_observer)

    def stopService(self):
        Service.stopService(self)
        return Deferred.fromCoroutine(self._stop_children())

    async def _stop_children(self) -> None:
        for service in reversed(list(self)):
            try:
                await maybeDeferred(service.stopService)
            except Exception:
                log.failure("stopping {service} failed", service=service.name)


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

    def accept(self, accepting: bool) -> None:
        """Accept connections in this process, or leave them to the SMTP workers sharing the socket."""
        if self._port is not None:
            if accepting:
                self._port.startReading()
            else:
                self._port.stopReading()

    def fileno(self) -> int:
        """The listening socket's descriptor (the SMTP workers are given it)."""
        return self._port.fileno()


def _smtp_factory(components: "Components", name: str) -> IProtocolFactory:
    from continuity.smtp.inbound import InboundPolicy
    from continuity.smtp.server import SMTPServerFactory

    config = components.config
    policy = InboundPolicy(config, components.sql, components.directory_cache, components.index, components.intake,
                           components.reactor, components.direct, components.connections(name))
    if components.parent is not None:
        policy.hand_over = components.parent.rejected
    return SMTPServerFactory(policy, config.server.hostname, config.limits, tls_context=components.tls_context,
                             auth_enabled=False, require_tls_for_auth=config.tls.require_tls_for_auth,
                             clock=components.reactor)


def _submission_factory(components: "Components", name: str) -> IProtocolFactory:
    from continuity.smtp.server import SMTPServerFactory
    from continuity.smtp.submission import HOUR, SubmissionPolicy

    config = components.config
    policy = SubmissionPolicy(config, components.io.run, components.intake, components.authenticator,
                              components.sent_copies, components.reactor, components.directory_cache,
                              components.connections(name), components.window("sent-per-hour", HOUR))
    return SMTPServerFactory(policy, config.server.hostname, config.limits, tls_context=components.tls_context,
                             auth_enabled=True, require_tls_for_auth=config.tls.require_tls_for_auth,
                             clock=components.reactor)


def _pop3_factory(components: "Components", name: str) -> IProtocolFactory:
    from continuity.pop3.maildrop import IMaildrop, Maildrop
    from continuity.pop3.server import POP3ServerFactory

    config, mailstore = components.config, components.mailstore
    components.realm.register(IMaildrop, lambda user: Maildrop(mailstore, user.address))
    return POP3ServerFactory(components.authenticator, components.mailbox_io.run, config.server.hostname,
                             config.limits,
                             tls_context=components.tls_context,
                             require_tls_for_auth=config.tls.require_tls_for_auth,
                             implicit_tls=name in IMPLICIT_TLS, clock=components.reactor)


def _imap_factory(components: "Components", name: str) -> IProtocolFactory:
    from continuity.imap.server import IMAPServerFactory, shared_state

    config = components.config
    shared = shared_state(components.realm, components.mailstore, components.mailbox_io.run, components.reactor)
    return IMAPServerFactory(store=components.mailstore, run=components.mailbox_io.run,
                             authenticator=components.authenticator, hostname=config.server.hostname,
                             limits=config.limits, require_tls_for_auth=config.tls.require_tls_for_auth,
                             tls_context=components.tls_context, clock=components.reactor, shared=shared,
                             implicit_tls=name in IMPLICIT_TLS)


def _http_factory(components: "Components", name: str) -> IProtocolFactory:
    from continuity.web.root import build_site

    return build_site(components.config, components.reactor)


def _factory_builders() -> dict[str, FactoryBuilder]:
    """The listeners implemented in this release, by config key."""
    return {"smtp": _smtp_factory, "submission": _submission_factory, "submissions": _submission_factory,
            "pop3": _pop3_factory, "pop3s": _pop3_factory, "imap": _imap_factory, "imaps": _imap_factory,
            "http": _http_factory}


class _ClosePool(Service):
    """Closes the connection pool once the runner (stopped before it) has no delivery left in flight."""

    name = "connection-pool"

    def __init__(self, pool):
        self._pool = pool

    def stopService(self):
        super().stopService()
        return Deferred.fromCoroutine(self._pool.close())


def _delivery(components: Components, root: MultiService) -> None:
    """Spool, queue runner, agents, failover monitor and recovery. The connection pool and the runner are
    children of ``root`` (the runner stopped first); new mail goes to the runner at once."""
    from continuity.delivery.agents import Agents
    from continuity.delivery.runner import QueueRunner
    from continuity.failover.monitor import FailoverMonitor, probe_recipient
    from continuity.failover.recovery import Recovery, RecoveryJournal
    from continuity.smtp.client import hostname_endpoint_factory, probe
    from continuity.smtp.pool import ConnectionPool
    from continuity.spool.store import MessageSpool

    config, reactor = components.config, components.reactor
    io, mailstore = components.io, components.mailstore
    spool = MessageSpool(config.spool_root)
    spool.prepare()
    _intake(components, spool)
    intake = components.intake
    endpoints_for = hostname_endpoint_factory(reactor)
    pool = ConnectionPool(clock=reactor, hostname=config.server.hostname, endpoint_factory=endpoints_for,
                          timeout=config.relay.timeout)
    agents = Agents(config, pool, mailstore, io.run, clock=reactor)
    agents.intake = intake
    runner = QueueRunner(reactor, config, components.sql, io.run, components.index, spool, components.directory,
                         agents)
    intake.kick, intake.claim = runner.kick, runner.claim_new
    _ClosePool(pool).setServiceParent(root)
    runner.setServiceParent(root)
    recovery = Recovery(components.sql, io.run, components.directory,
                        RecoveryJournal(components.db, reactor.seconds), mailstore, pool, components.sent_copies)

    async def probe_domain(domain):
        users = await components.sql.run(components.directory.list_users, domain.name)
        result = await probe(endpoints_for(str(domain.upstream), config.relay.timeout), config.server.hostname,
                             probe_recipient(domain, users), clock=reactor, timeout=config.relay.timeout)
        return result.ok, result.detail

    monitor = FailoverMonitor(reactor, components.sql, components.directory, config.relay.probe_interval,
                              probe_domain, runner.reroute, runner.flush, recovery,
                              mode_written=components.changed)
    runner.failover = monitor
    recovery.still_recovering = monitor.is_recovering

    class _Startup(Service):
        name = "spool-recovery"

        def startService(self):
            super().startService()
            d = Deferred.fromCoroutine(self._recover(reactor.seconds()))
            d.addErrback(lambda f: log.failure("spool recovery failed", f))
            d.addBoth(lambda _: runner.kick())

        async def _recover(self, started: float) -> None:
            reindexed, removed = await intake.recover_spool()
            released = await components.sql.run(components.index.release_stale_claims, started, reactor.seconds())
            log.info("spool: {reindexed} message(s) re-indexed, {removed} finished removed, {released} attempt(s)"
                     " of the last run to retry now", reindexed=reindexed, removed=removed, released=released)

    # Stopped in the reverse order (ServiceStack): the monitor, then the runner's
    # deliveries in flight, then the pool they use.
    _Startup().setServiceParent(root)
    monitor.setServiceParent(root)


def _intake(components: Components, spool) -> None:
    """The queue index and the intake over ``spool``, set on ``components`` (for the SMTP policies)."""
    from continuity.spool.index import QueueIndex
    from continuity.spool.intake import MessageIntake

    components.index = QueueIndex(components.db)
    components.intake = MessageIntake(components.reactor, components.sql, components.io, spool, components.index)


def _components(config: Config, reactor, root: MultiService, process: int = 0) -> Components:
    """The store, its SQL thread and I/O pool (children of ``root``), TLS, mail store, login; ``process`` 0
    for the service, N for SMTP worker N."""
    try:
        durable.make_dirs(config.data_dir)
        db = Database(config.db_path).open()
    except SchemaTooNew as exc:
        raise StartupError(str(exc)) from None
    except OSError as exc:
        raise StartupError(f"server.data_dir: cannot use {config.data_dir}: {exc.strerror}") from None
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
        process=process,
    )
    io = WorkerThreads(reactor, "io")
    io.setServiceParent(root)
    components.io = io
    if process:
        components.mailbox_io = io
    else:
        components.mailbox_io = WorkerThreads(reactor, "mailbox")
        components.mailbox_io.setServiceParent(root)
    hashing = WorkerThreads(reactor, "auth", size=verifications_at_once())
    hashing.setServiceParent(root)
    # An SMTP worker writes nothing to the store: its lookups are plain reads on the I/O pool, not jobs of
    # its SQL thread, which take the store's writer lock as a write would and wait for the service's commits.
    components.directory_cache = DirectoryCache(reactor, io if process else sql, components.directory)
    components.directory_changed.append(components.directory_cache.clear)
    components.mailstore = MaildirStore(config.mail_root, hostname=config.server.hostname)
    components.sent_copies = SentCopies(config.cs_sent_root)
    components.authenticator, components.realm = build_authenticator(
        components.directory, components.mailbox_io.run, reactor, config.limits.auth_failures, components.window,
        verify=hashing.run)
    from continuity.delivery.direct import DirectDelivery

    components.direct = DirectDelivery(reactor, sql, io.run, components.directory, components.mailstore)
    return components


def protocol_factory(components: Components, name: str) -> IProtocolFactory | None:
    """The factory of listener ``name`` (TLS-wrapped for the implicit-TLS ones), None if not in this release."""
    build = _factory_builders().get(name)
    if build is None:
        return None
    factory = build(components, name)
    if name in IMPLICIT_TLS:
        factory = TLSMemoryBIOFactory(components.tls_context, False, factory)
    return factory


class AdoptedListener(Listener):
    """A listener on a socket inherited from the service process (an SMTP worker's, :mod:`continuity.workers`)."""

    def __init__(self, name: str, fileno: int, factory: IProtocolFactory, reactor):
        super().__init__(name, f"inherited socket {fileno}", None, factory)
        self._fileno = fileno
        self._reactor = reactor

    def privilegedStartService(self) -> None:
        Service.privilegedStartService(self)
        with socket.socket(fileno=os.dup(self._fileno)) as listening:
            family = listening.family
        self._port = self._reactor.adoptStreamPort(self._fileno, family, self._factory)
        os.close(self._fileno)  # adoptStreamPort listens on a duplicate


def build_smtp_worker(config: Config, reactor, number: int, adopted: dict[str, int], parent) -> tuple[
        MultiService, Components]:
    """An SMTP worker process (:mod:`continuity.workers`): the listeners in ``adopted`` (name -> fd) with their
    policies and the spool. Each message it acknowledges goes to ``parent.spooled(queue_id)`` once durable:
    the service process indexes and delivers it. In emergency mode the worker writes the continuity mailboxes'
    copies itself and hands their tracking rows over (``parent.delivered``), as those of refused recipients
    (``parent.rejected``): it writes nothing to the store."""
    from continuity.spool.store import MessageSpool

    root = ServiceStack()
    components = _components(config, reactor, root, number)
    components.parent = parent
    _intake(components, MessageSpool(config.spool_root))  # the service process prepared it
    components.intake.hand_over = parent.spooled
    components.direct.hand_over = parent.delivered
    for name, fileno in adopted.items():
        AdoptedListener(name, fileno, protocol_factory(components, name), reactor).setServiceParent(root)
    return root, components


def build_service(config: Config, reactor, logs: str | None = None) -> MultiService:
    """The whole service for ``config`` on ``reactor``.

    :param logs: where twistd logs (:func:`continuity.logs.destination`): the service's log observer (a
        file is opened for appending), and where the SMTP workers write their own lines.
    """
    root = ServiceStack()
    root.log_observer = log_observer(logs, reactor)
    components = _components(config, reactor, root)
    # Only here: preparing removes half-written files, which in an SMTP worker could be this process's.
    components.sent_copies.prepare()
    # Before any listener: direct delivery trusts the emergency marks (continuity.directory.fence).
    components.directory.reconcile_marks()
    _delivery(components, root)
    listeners: dict[str, Listener] = {}
    for name in LISTENERS:
        description = config.listen[name]
        if not description:
            continue
        factory = protocol_factory(components, name)
        if factory is None:
            log.warn("listener {listener} ({description}) is configured but not available in this release",
                     listener=name, description=description)
            continue
        endpoint = endpoints.serverFromString(reactor, description)
        listeners[name] = Listener(name, description, endpoint, factory)
        listeners[name].setServiceParent(root)
    shared = [name for name in ("smtp", *WORKERS_ONLY) if name in listeners]
    if config.server.smtp_workers and shared:
        from continuity.workers import SMTPWorkers

        def serving(workers: bool) -> None:
            for name in WORKERS_ONLY:
                if name in listeners:
                    listeners[name].accept(not workers)

        # Added after the listeners: started once they listen, stopped before them.
        workers = SMTPWorkers(reactor, config.path, config.server.smtp_workers,
                              {name: listeners[name].fileno for name in shared}, components.intake,
                              components.direct.record,
                              lambda *refused: components.sql.run_batched(components.index.record_rejection,
                                                                          *refused),
                              logs, serving)
        workers.setServiceParent(root)
        components.directory_changed.append(workers.directory_changed)
    log.info("continuity starting as {hostname}, data in {data_dir}",
             hostname=config.server.hostname, data_dir=os.path.abspath(config.data_dir))
    return root
