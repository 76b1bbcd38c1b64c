"""The per-domain mode state machine: ``normal`` -> ``emergency`` -> ``recovering`` -> ``normal``.

The store holds each domain's mode (so ``continuityctl`` and the service agree
and a restart resumes where it was); :class:`DomainFailover` is the service's
machine for one domain, built with automat. Inputs come from deliveries
(an upstream's 4xx or timeout), probes, recovery, and mode changes an admin
made with ``continuityctl`` (noticed by polling the store). Outputs persist
the new mode with its reason and start the work the new mode needs.
"""

from __future__ import annotations

from typing import Protocol

from automat import MethodicalMachine
from twisted.logger import Logger

from continuity.directory.store import MODES


class FailoverActions(Protocol):
    """What the machine asks of the service (implemented by the FailoverMonitor)."""

    def persist_mode(self, domain: str, mode: str, reason: str, automatic: bool) -> None: ...

    def reroute(self, domain: str) -> None: ...

    def start_recovery(self, domain: str) -> None: ...

    def release(self, domain: str) -> None: ...


class DomainFailover:
    """The mode machine of one hosted domain."""

    _machine = MethodicalMachine()
    log = Logger()

    def __init__(self, domain: str, actions: FailoverActions):
        self.domain = domain
        self._actions = actions

    # -- states ----------------------------------------------------------

    @_machine.state(initial=True, serialized="normal")
    def normal(self):
        "Mail is relayed to the upstream."

    @_machine.state(serialized="emergency")
    def emergency(self):
        "Covered users' mail goes to continuity mailboxes; the upstream is probed."

    @_machine.state(serialized="recovering")
    def recovering(self):
        "INBOX and CS-SENT mail is being redelivered to the upstream."

    # -- inputs ----------------------------------------------------------

    @_machine.input()
    def upstream_failed(self, reason: str):
        "A delivery to the upstream met a 4xx reply, a refused connection or a timeout."

    @_machine.input()
    def admin_started(self, reason: str):
        "An admin ran `emergency start` (the store already says emergency)."

    @_machine.input()
    def upstream_healthy(self, reason: str):
        "A probe transaction succeeded."

    @_machine.input()
    def admin_stopped(self, reason: str):
        "An admin ran `emergency stop` (the store already says recovering)."

    @_machine.input()
    def recovery_finished(self, reason: str):
        "Everything left in INBOXes and CS-SENT was redelivered."

    @_machine.input()
    def recovery_interrupted(self, reason: str):
        "The upstream failed again during recovery."

    # -- outputs ---------------------------------------------------------

    @_machine.output()
    def _persist_emergency(self, reason: str):
        self._actions.persist_mode(self.domain, "emergency", reason, True)

    @_machine.output()
    def _persist_recovering(self, reason: str):
        self._actions.persist_mode(self.domain, "recovering", reason, True)

    @_machine.output()
    def _persist_normal(self, reason: str):
        self._actions.persist_mode(self.domain, "normal", reason, True)

    @_machine.output()
    def _reroute(self, reason: str):
        self._actions.reroute(self.domain)

    @_machine.output()
    def _recover(self, reason: str):
        self._actions.start_recovery(self.domain)

    @_machine.output()
    def _release(self, reason: str):
        self._actions.release(self.domain)

    @_machine.output()
    def _ignore(self, reason: str):
        pass

    normal.upon(upstream_failed, enter=emergency, outputs=[_persist_emergency, _reroute])
    normal.upon(admin_started, enter=emergency, outputs=[_reroute])
    normal.upon(upstream_healthy, enter=normal, outputs=[_ignore])
    normal.upon(admin_stopped, enter=recovering, outputs=[_recover])
    normal.upon(recovery_finished, enter=normal, outputs=[_ignore])
    normal.upon(recovery_interrupted, enter=normal, outputs=[_ignore])

    emergency.upon(upstream_failed, enter=emergency, outputs=[_ignore])
    emergency.upon(admin_started, enter=emergency, outputs=[_ignore])
    emergency.upon(upstream_healthy, enter=recovering, outputs=[_persist_recovering, _recover])
    emergency.upon(admin_stopped, enter=recovering, outputs=[_recover])
    emergency.upon(recovery_finished, enter=emergency, outputs=[_ignore])
    emergency.upon(recovery_interrupted, enter=emergency, outputs=[_ignore])

    recovering.upon(upstream_failed, enter=emergency, outputs=[_persist_emergency, _reroute])
    recovering.upon(admin_started, enter=emergency, outputs=[_reroute])
    recovering.upon(upstream_healthy, enter=recovering, outputs=[_ignore])
    recovering.upon(admin_stopped, enter=recovering, outputs=[_ignore])
    recovering.upon(recovery_finished, enter=normal, outputs=[_persist_normal, _release])
    recovering.upon(recovery_interrupted, enter=emergency, outputs=[_persist_emergency, _reroute])

    # -- persistence -----------------------------------------------------

    @_machine.serializer()
    def _save(self, state):
        return state

    @_machine.unserializer()
    def _restore(self, state):
        return state

    @property
    def mode(self) -> str:
        return self._save()

    @classmethod
    def restore(cls, domain: str, actions: FailoverActions, mode: str) -> "DomainFailover":
        """The machine of ``domain`` in ``mode``, without running any output.

        :raises ValueError: for a mode the machine does not have.
        """
        if mode not in MODES:
            raise ValueError(f"domain {domain}: unknown mode {mode!r}")
        machine = cls(domain, actions)
        machine._restore(mode)
        return machine

    def observe(self, stored_mode: str) -> None:
        """Reconcile with the mode in the store (changed by an admin with continuityctl)."""
        if stored_mode == self.mode:
            return
        self.log.info("domain {domain}: mode changed in the store from {old} to {new}",
                      domain=self.domain, old=self.mode, new=stored_mode)
        if stored_mode == "emergency":
            self.admin_started("continuityctl emergency start")
        elif stored_mode == "recovering":
            self.admin_stopped("continuityctl emergency stop")
        elif stored_mode == "normal" and self.mode == "emergency":
            # Not reachable through continuityctl; treat it as a stop so nothing stays held.
            self.admin_stopped("mode set to normal in the store")
