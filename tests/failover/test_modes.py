"""The per-domain mode machine: every state and input, the outputs each transition asks for."""

from __future__ import annotations

import pytest

from continuity.failover.modes import DomainFailover

MODES = ("normal", "emergency", "recovering")
INPUTS = ("upstream_failed", "admin_started", "upstream_healthy", "admin_stopped", "recovery_finished",
          "recovery_interrupted")


class RecordedActions:
    """FailoverActions that only remember what they were asked (the machine's outputs)."""

    def __init__(self):
        self.calls: list[tuple] = []

    def persist_mode(self, domain, mode, reason, automatic):
        self.calls.append(("persist", mode, automatic))

    def reroute(self, domain):
        self.calls.append(("reroute",))

    def start_recovery(self, domain):
        self.calls.append(("recover",))

    def release(self, domain):
        self.calls.append(("release",))


PERSIST_EMERGENCY = ("persist", "emergency", True)

# (state, input) -> (next state, outputs); every pair of the machine is listed.
TRANSITIONS = {
    ("normal", "upstream_failed"): ("emergency", [PERSIST_EMERGENCY, ("reroute",)]),
    ("normal", "admin_started"): ("emergency", [("reroute",)]),
    ("normal", "upstream_healthy"): ("normal", []),
    ("normal", "admin_stopped"): ("recovering", [("recover",)]),
    ("normal", "recovery_finished"): ("normal", []),
    ("normal", "recovery_interrupted"): ("normal", []),
    ("emergency", "upstream_failed"): ("emergency", []),
    ("emergency", "admin_started"): ("emergency", []),
    ("emergency", "upstream_healthy"): ("recovering", [("persist", "recovering", True), ("recover",)]),
    ("emergency", "admin_stopped"): ("recovering", [("recover",)]),
    ("emergency", "recovery_finished"): ("emergency", []),
    ("emergency", "recovery_interrupted"): ("emergency", []),
    ("recovering", "upstream_failed"): ("emergency", [PERSIST_EMERGENCY, ("reroute",)]),
    ("recovering", "admin_started"): ("emergency", [("reroute",)]),
    ("recovering", "upstream_healthy"): ("recovering", []),
    ("recovering", "admin_stopped"): ("recovering", []),
    ("recovering", "recovery_finished"): ("normal", [("persist", "normal", True), ("release",)]),
    ("recovering", "recovery_interrupted"): ("emergency", [PERSIST_EMERGENCY, ("reroute",)]),
}


def test_the_table_covers_every_state_and_input():
    """The transition table below names every (state, input) pair of the machine."""
    assert set(TRANSITIONS) == {(mode, name) for mode in MODES for name in INPUTS}


@pytest.mark.parametrize(("state", "name"), sorted(TRANSITIONS))
def test_transition(state, name):
    """Each input in each state leads to the listed state with exactly the listed outputs, in order."""
    actions = RecordedActions()
    machine = DomainFailover.restore("example.com", actions, state)
    getattr(machine, name)("a reason")
    expected_state, expected_calls = TRANSITIONS[(state, name)]
    assert machine.mode == expected_state
    assert actions.calls == expected_calls


def test_a_new_machine_starts_in_normal():
    """A domain's machine starts in normal mode and asks for nothing."""
    actions = RecordedActions()
    assert DomainFailover("example.com", actions).mode == "normal"
    assert actions.calls == []


def test_restoring_an_unknown_mode_is_refused():
    """A mode the machine does not know cannot be restored."""
    with pytest.raises(ValueError, match="bogus"):
        DomainFailover.restore("example.com", RecordedActions(), "bogus")


def test_automatic_transitions_pass_the_reason_to_the_store():
    """The reason of an automatic switch is what the store records."""
    reasons = []

    class Actions(RecordedActions):
        def persist_mode(self, domain, mode, reason, automatic):
            reasons.append((domain, mode, reason))

    DomainFailover("example.com", Actions()).upstream_failed("451 4.3.0 busy (in reply to RCPT)")
    assert reasons == [("example.com", "emergency", "451 4.3.0 busy (in reply to RCPT)")]


@pytest.mark.parametrize(("state", "stored", "expected", "calls"), [
    ("normal", "normal", "normal", []),
    ("normal", "emergency", "emergency", [("reroute",)]),
    ("normal", "recovering", "recovering", [("recover",)]),
    ("emergency", "recovering", "recovering", [("recover",)]),
    ("emergency", "normal", "recovering", [("recover",)]),
    ("recovering", "emergency", "emergency", [("reroute",)]),
    ("recovering", "normal", "recovering", []),
    ("emergency", "bogus", "emergency", []),
])
def test_observe_follows_the_store(state, stored, expected, calls):
    """A mode an admin wrote into the store is followed without writing it back; unknown modes are ignored."""
    actions = RecordedActions()
    machine = DomainFailover.restore("example.com", actions, state)
    machine.observe(stored)
    assert machine.mode == expected
    assert actions.calls == calls
