"""The failover monitor: one mode machine per hosted domain, probes, and the store kept in step.

- Deliveries report an upstream's temporary failure (:meth:`upstream_failed`);
  with ``--activation auto`` and continuity on, the domain enters emergency at once.
- Every second the monitor reads the domains from the store, so a mode an admin
  set with ``continuityctl`` (``emergency start|stop``) takes effect within 2 s.
- In emergency with automatic activation, the upstream is probed every
  ``probe_interval``; a successful probe starts recovery.

All SQL runs on the SQL thread. A mode write is submitted there the moment the
machine changes state, and the work that depends on the new mode (rerouting,
releasing held mail, the message that caused the switch) waits for it, so the
store says ``emergency`` before any mail is routed as in emergency.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from continuity.db import SQLThread
from continuity.directory.store import Directory, Domain, User, is_covered
from continuity.failover.modes import DomainFailover

ProbeFunction = Callable[[Domain], Awaitable[tuple[bool, str]]]


def probe_recipient(domain: Domain, users: Sequence[User]) -> str:
    """Whom the probe's RCPT names (CONTRACT 4: a covered user), else an active user, else postmaster."""
    for wanted in (lambda u: is_covered(u, domain), lambda u: u.active):
        for user in users:
            if wanted(user):
                return user.address
    return f"postmaster@{domain.name}"


class FailoverMonitor(Service):
    """Keeps every domain's :class:`DomainFailover` and drives probes and recovery."""

    name = "failover"
    log = Logger()
    poll_interval = 1.0

    def __init__(self, reactor: IReactorTime, sql: SQLThread, directory: Directory, probe_interval: float,
                 probe: ProbeFunction, reroute: Callable[[str], Awaitable[None]],
                 release: Callable[[str], Awaitable[None]], recover: Callable[[str], Awaitable[bool]],
                 mode_written: Callable[[], None] = lambda: None):
        self._reactor = reactor
        self._mode_written = mode_written
        self._sql = sql
        self._directory = directory
        self._probe_interval = probe_interval
        self._probe = probe
        self._reroute = reroute
        self._release = release
        self._recover = recover
        self.machines: dict[str, DomainFailover] = {}
        self._domains: dict[str, Domain] = {}
        self._next_probe: dict[str, float] = {}
        self._busy: set[str] = set()
        # Mode writes still on their way to the store, per domain, and how many
        # were ever submitted (a poll that read the store before one of ours
        # was submitted must not take the old mode for an admin's change).
        self._mode_writes: dict[str, set[Deferred[None]]] = {}
        self._mode_generation: dict[str, int] = {}
        self._loop = LoopingCall(self._tick)
        self._loop.clock = reactor
        self._tick_running = False

    def startService(self) -> None:
        super().startService()
        self._loop.start(self.poll_interval, now=True).addErrback(
            lambda f: self.log.failure("failover monitor stopped", f))

    def stopService(self):
        super().stopService()
        if self._loop.running:
            self._loop.stop()

    # -- the periodic tick -------------------------------------------------

    def _tick(self):
        if self._tick_running:
            return None
        self._tick_running = True
        d = Deferred.fromCoroutine(self._poll())
        d.addErrback(lambda f: self.log.failure("failover poll failed", f))

        def done(_):
            self._tick_running = False

        d.addBoth(done)
        return None

    async def _poll(self) -> None:
        generations = dict(self._mode_generation)
        domains, unfenced = await self._sql.run(self._domains_fenced)
        self._domains = {d.name: d for d in domains}
        for name in list(self.machines):
            if name not in self._domains:
                del self.machines[name]
        now = self._reactor.seconds()
        for domain in domains:
            if domain.name in unfenced:
                continue  # its emergency mark disagrees with its mode: not acted on until it agrees
            machine = self.machines.get(domain.name)
            if machine is None:
                # Resume where the store says we were (after a restart, too).
                machine = self.machines[domain.name] = DomainFailover.restore(domain.name, self, "normal")
            if self._mode_generation.get(domain.name, 0) == generations.get(domain.name, 0):
                # Else our own mode write was submitted after this read: the
                # SQL thread runs jobs in order, so the read shows the old mode.
                machine.observe(domain.mode)
            if machine.mode == "emergency" and domain.activation == "auto" and domain.continuity:
                if now >= self._next_probe.get(domain.name, 0) and domain.name not in self._busy:
                    self._next_probe[domain.name] = now + self._probe_interval
                    self._spawn(domain.name, self._probe_once(domain))

    def _domains_fenced(self) -> tuple[list[Domain], set[str]]:
        """On the SQL thread: the domains, with their emergency marks made to agree (a switch committed by
        ``continuityctl`` is fenced before this poll acts on it, e.g. by starting a recovery); a domain whose
        mark could not be (the second item) is not acted on in this poll."""
        domains = self._directory.list_domains()
        return domains, set(self._directory.agree_marks(domains))

    def _spawn(self, name: str, coroutine) -> None:
        self._busy.add(name)
        d = Deferred.fromCoroutine(coroutine)
        d.addErrback(lambda f: self.log.failure("failover work for {domain} failed", f, domain=name))
        d.addBoth(lambda _: self._busy.discard(name))

    async def _probe_once(self, domain: Domain) -> None:
        ok, detail = await self._probe(domain)
        if not self.running:
            return
        health = "ok" if ok else "failing"
        await self._sql.run(self._directory.set_health, domain.name, health, detail)
        self.log.info("probe of {upstream} for {domain}: {health} ({detail})", upstream=str(domain.upstream),
                      domain=domain.name, health=health, detail=detail)
        machine = self.machines.get(domain.name)
        if ok and machine is not None and machine.mode == "emergency":
            self._busy.discard(domain.name)
            machine.upstream_healthy(f"probe succeeded: {detail}")

    # -- inputs from deliveries --------------------------------------------

    def is_recovering(self, domain: str) -> bool:
        """Whether ``domain`` is in ``recovering`` mode as far as this process knows (store polled every second)."""
        machine = self.machines.get(domain)
        return machine is not None and machine.mode == "recovering"

    def upstream_failed(self, name: str, reason: str) -> Deferred[None]:
        """A delivery met a temporary failure; fires once the resulting mode is in the store.

        The caller routes the failed recipients again after that (CONTRACT 4:
        that message goes to the continuity mailboxes at once).
        """
        machine = self.machines.get(name)
        if machine is None:
            machine = self.machines[name] = DomainFailover.restore(name, self, "normal")
        self.log.warn("upstream of {domain} failed: {reason}", domain=name, reason=reason)
        machine.upstream_failed(reason)
        self._next_probe[name] = self._reactor.seconds() + self._probe_interval
        return self.mode_stored(name)

    def mode_stored(self, domain: str) -> Deferred[None]:
        """Fires once every mode write submitted so far for ``domain`` has landed (or failed)."""
        pending = self._mode_writes.get(domain)
        if not pending:
            return succeed(None)
        return DeferredList(list(pending), consumeErrors=True).addCallback(lambda _: None)

    # -- FailoverActions -----------------------------------------------------

    def persist_mode(self, domain: str, mode: str, reason: str, automatic: bool) -> None:
        """Submit the new mode (and the health it implies) to the SQL thread; see :meth:`mode_stored`."""
        self._mode_generation[domain] = self._mode_generation.get(domain, 0) + 1
        writes = self._mode_writes.setdefault(domain, set())
        d = self._sql.run(self._store_mode, domain, mode, reason, automatic)
        writes.add(d)  # before the callbacks: a thread stand-in in tests may have fired it already

        def stored(change) -> None:
            self._mode_written()  # e.g. the SMTP policies' cached answers hold the old mode
            if change is not None:
                self.log.warn("domain {domain} is now in {mode} mode ({reason})", domain=domain, mode=mode,
                              reason=reason)

        d.addCallback(stored)
        d.addErrback(lambda f: self.log.failure("storing mode {mode} of {domain} failed", f, mode=mode,
                                                domain=domain))
        d.addBoth(lambda _: writes.discard(d))

    def _store_mode(self, domain: str, mode: str, reason: str, automatic: bool):
        """On the SQL thread: the mode with its history row, then the health it implies."""
        change = self._directory.set_mode(domain, mode, reason, automatic)
        if mode == "emergency":
            self._directory.set_health(domain, "failing", reason)
        elif mode == "normal":
            self._directory.set_health(domain, "ok", reason)
        return change

    def reroute(self, domain: str) -> None:
        self._after_mode_stored(domain, self._reroute, "rerouting {domain} failed")

    def release(self, domain: str) -> None:
        self._after_mode_stored(domain, self._release, "releasing {domain} failed")

    def _after_mode_stored(self, domain: str, work: Callable[[str], Awaitable[None]], failed: str) -> None:
        async def run() -> None:
            await self.mode_stored(domain)
            await work(domain)

        Deferred.fromCoroutine(run()).addErrback(lambda f: self.log.failure(failed, f, domain=domain))

    def start_recovery(self, domain: str) -> None:
        self._spawn(domain, self._run_recovery(domain))

    async def _run_recovery(self, domain: str) -> None:
        await self.mode_stored(domain)
        self.log.info("recovery of {domain} started", domain=domain)
        reason = "the upstream failed again during recovery"
        try:
            # Once more now that the switch has committed, whatever order another process marked in: no
            # continuity copy is being written, or will be, into the INBOXes this recovery lists.
            await self._sql.run(self._directory.fence.close_gate, domain)
            finished = await self._recover(domain)
        except Exception as exc:
            if not self.running:
                # Cut short by the shut-down (the pool closed under it): the store still
                # says recovering, so the next start resumes it from the journal.
                self.log.info("recovery of {domain} stopped by the shut-down: {error}", domain=domain, error=exc)
                return
            # Never stay in recovering with nothing running: back to emergency, probed again.
            self.log.failure("recovery of {domain} failed", domain=domain)
            finished, reason = False, f"recovery failed: {exc}"
        if not self.running:
            return  # stopping: the next start reads the mode from the store
        machine = self.machines.get(domain)
        if machine is None:
            return
        if finished:
            machine.recovery_finished("recovery finished")
        else:
            machine.recovery_interrupted(reason)
