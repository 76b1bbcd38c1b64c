"""The failover monitor: one mode machine per hosted domain, probes, and the store kept in step.

- Deliveries report an upstream's temporary failure (:meth:`upstream_failed`);
  with ``--activation auto`` and continuity on, the domain enters emergency at once.
- Every second the monitor reads the domains from the store, so a mode an admin
  set with ``continuityctl`` (``emergency start|stop``) takes effect within 2 s.
- In emergency with automatic activation, the upstream is probed every
  ``probe_interval``; a successful probe starts recovery.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from continuity.db import SQLThread
from continuity.directory.store import Directory, Domain
from continuity.failover.modes import DomainFailover

ProbeFunction = Callable[[Domain], Awaitable[tuple[bool, str]]]


class FailoverMonitor(Service):
    """Keeps every domain's :class:`DomainFailover` and drives probes and recovery."""

    name = "failover"
    log = Logger()
    poll_interval = 1.0

    def __init__(self, reactor: IReactorTime, sql: SQLThread, directory: Directory, probe_interval: float,
                 probe: ProbeFunction, reroute: Callable[[str], Awaitable[None]],
                 release: Callable[[str], Awaitable[None]], recover: Callable[[str], Awaitable[bool]]):
        self._reactor = reactor
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
        domains = await self._sql.run(self._directory.list_domains)
        self._domains = {d.name: d for d in domains}
        for name in list(self.machines):
            if name not in self._domains:
                del self.machines[name]
        now = self._reactor.seconds()
        for domain in domains:
            machine = self.machines.get(domain.name)
            if machine is None:
                machine = self.machines[domain.name] = DomainFailover.restore(domain.name, self, "normal")
                # Resume where the store says we were (after a restart, too).
                machine.observe(domain.mode)
            else:
                machine.observe(domain.mode)
            if machine.mode == "emergency" and domain.activation == "auto" and domain.continuity:
                if now >= self._next_probe.get(domain.name, 0) and domain.name not in self._busy:
                    self._next_probe[domain.name] = now + self._probe_interval
                    self._spawn(domain.name, self._probe_once(domain))

    def _spawn(self, name: str, coroutine) -> None:
        self._busy.add(name)
        d = Deferred.fromCoroutine(coroutine)
        d.addErrback(lambda f: self.log.failure("failover work for {domain} failed", f, domain=name))
        d.addBoth(lambda _: self._busy.discard(name))

    async def _probe_once(self, domain: Domain) -> None:
        ok, detail = await self._probe(domain)
        health = "ok" if ok else "failing"
        await self._sql.run(self._directory.set_health, domain.name, health, detail)
        self.log.info("probe of {upstream} for {domain}: {health} ({detail})", upstream=str(domain.upstream),
                      domain=domain.name, health=health, detail=detail)
        machine = self.machines.get(domain.name)
        if ok and machine is not None and machine.mode == "emergency":
            self._busy.discard(domain.name)
            machine.upstream_healthy(f"probe succeeded: {detail}")

    # -- inputs from deliveries --------------------------------------------

    def can_fail_over(self, domain: Domain) -> bool:
        """Whether a temporary failure switches ``domain`` to emergency (auto activation, continuity on)."""
        return domain.activation == "auto" and domain.continuity

    def upstream_failed(self, name: str, reason: str) -> None:
        machine = self.machines.get(name)
        if machine is None:
            machine = self.machines[name] = DomainFailover.restore(name, self, "normal")
        self.log.warn("upstream of {domain} failed: {reason}", domain=name, reason=reason)
        machine.upstream_failed(reason)
        self._next_probe[name] = self._reactor.seconds() + self._probe_interval

    # -- FailoverActions -----------------------------------------------------

    def persist_mode(self, domain: str, mode: str, reason: str, automatic: bool) -> None:
        # Synchronous on purpose: the new mode must be in the store before the
        # message that caused it is routed again. It is one short transaction.
        change = self._directory.set_mode(domain, mode, reason, automatic)
        if mode == "emergency":
            self._directory.set_health(domain, "failing", reason)
        elif mode == "normal":
            self._directory.set_health(domain, "ok", reason)
        if change is not None:
            self.log.warn("domain {domain} is now in {mode} mode ({reason})", domain=domain, mode=mode, reason=reason)

    def reroute(self, domain: str) -> None:
        Deferred.fromCoroutine(self._reroute(domain)).addErrback(
            lambda f: self.log.failure("rerouting {domain} failed", f, domain=domain))

    def release(self, domain: str) -> None:
        Deferred.fromCoroutine(self._release(domain)).addErrback(
            lambda f: self.log.failure("releasing {domain} failed", f, domain=domain))

    def start_recovery(self, domain: str) -> None:
        self._spawn(domain, self._run_recovery(domain))

    async def _run_recovery(self, domain: str) -> None:
        self.log.info("recovery of {domain} started", domain=domain)
        finished = await self._recover(domain)
        machine = self.machines.get(domain)
        if machine is None:
            return
        if finished:
            machine.recovery_finished("recovery finished")
        else:
            machine.recovery_interrupted("the upstream failed again during recovery")
