"""The failover monitor on a task.Clock: probes, recovery, modes set with continuityctl, SQL off the reactor.

Upstreams and probes are scripted (see :class:`~continuity.testing.upstream.ScriptedPool`):
the clock drives time here and no socket works without the real reactor.
"""

from __future__ import annotations

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from support import EPOCH, UPSTREAM, DeliveryStack, stack  # noqa: F401 (fixture)

from continuity.db import Database
from continuity.directory.store import Directory
from continuity.failover.modes import DomainFailover
from continuity.failover.monitor import FailoverMonitor, probe_recipient
from continuity.testing.inline import QueuedThread
from continuity.testing.upstream import OK, SOFT


def fail_over(stack: DeliveryStack) -> None:
    """Put example.com into emergency the automatic way: a 4xx to a delivery."""
    stack.pool.script(UPSTREAM, SOFT)
    stack.accept(["bob@example.com"])
    assert stack.directory.get_domain("example.com").mode == "emergency"


def test_probes_run_every_probe_interval_in_automatic_emergency(stack):
    """After an automatic switch the upstream is probed probe_interval (30 s) later, then every 30 s."""
    stack.domain()
    fail_over(stack)
    stack.clock.advance(29)
    assert stack.probes == []
    stack.clock.advance(1)
    assert stack.probes == ["example.com"]
    stack.clock.advance(29)
    assert len(stack.probes) == 1
    stack.clock.advance(1)
    assert len(stack.probes) == 2


def test_no_probes_in_manual_emergency(stack):
    """A domain with --activation manual in emergency is never probed: only an admin ends it."""
    stack.domain(activation="manual")
    stack.directory.set_mode("example.com", "emergency", "continuityctl emergency start", automatic=False)
    stack.clock.advance(300)
    assert stack.monitor.machines["example.com"].mode == "emergency"
    assert stack.probes == []


def test_no_probes_in_normal_mode(stack):
    """A domain in normal mode is not probed: deliveries tell whether its upstream works."""
    stack.domain()
    stack.clock.advance(300)
    assert stack.probes == []


def test_failed_probe_keeps_emergency_and_records_health(stack):
    """A failed probe leaves the domain in emergency with health failing and the probe's reply."""
    stack.domain()
    fail_over(stack)
    stack.clock.advance(30)
    domain = stack.directory.get_domain("example.com")
    assert (domain.mode, domain.health) == ("emergency", "failing")
    assert domain.health_detail == "421 4.4.1 connection refused"
    assert domain.health_checked == EPOCH + 30


def test_successful_probe_recovers_then_returns_to_normal(stack):
    """A good probe starts recovery (recovering), INBOX mail goes back upstream, then the mode is normal."""
    stack.domain()
    fail_over(stack)
    assert len(stack.inbox("bob@example.com")) == 1
    stack.probe_ok = True
    stack.clock.advance(30)
    domain = stack.directory.get_domain("example.com")
    assert (domain.mode, domain.health) == ("normal", "ok")
    assert stack.inbox("bob@example.com") == []
    assert [d.recipients for d in stack.pool.to(UPSTREAM)] == [("bob@example.com",)] * 2
    history = [(c.old_mode, c.new_mode, c.automatic) for c in reversed(stack.directory.mode_history("example.com"))]
    assert history == [("normal", "emergency", True), ("emergency", "recovering", True),
                       ("recovering", "normal", True)]
    assert stack.tracking("bob@example.com")[0]["status"] == "redelivered"


def test_mode_change_in_the_store_is_noticed_within_two_seconds(stack):
    """emergency start / stop written by continuityctl take effect within 2 s of clock time."""
    stack.domain(activation="manual")
    stack.directory.set_mode("example.com", "emergency", "continuityctl emergency start", automatic=False)
    stack.clock.advance(2)
    assert stack.monitor.machines["example.com"].mode == "emergency"
    stack.directory.set_mode("example.com", "recovering", "continuityctl emergency stop", automatic=False)
    stack.clock.advance(2)
    assert stack.directory.get_domain("example.com").mode == "normal"
    assert stack.monitor.machines["example.com"].mode == "normal"


def test_a_poll_fences_a_switch_another_process_committed_before_its_mark(stack):
    """continuityctl commits "recovering" and dies before its mark: the next poll clears the mark (waiting for
    a copy under way) before the service acts on the mode, so no continuity copy is written after it."""
    stack.domain(activation="manual")
    stack.directory.set_mode("example.com", "emergency", "continuityctl emergency start", automatic=False)
    stack.clock.advance(1)
    assert stack.directory.fence.says_emergency("example.com")
    with stack.directory.db.transaction() as conn:  # the switch without its mark
        conn.execute("UPDATE domains SET mode = 'recovering' WHERE name = 'example.com'")
    assert stack.directory.fence.says_emergency("example.com")
    stack.clock.advance(1)
    assert not stack.directory.fence.says_emergency("example.com")
    assert stack.monitor.machines["example.com"].mode in ("recovering", "normal")


def test_a_recovery_closes_the_gate_again_before_it_lists_the_inboxes(stack):
    """A mark filled after the switch (another process marking late, in the other order) is emptied by the
    recovery itself before it lists anything."""
    stack.domain()
    fail_over(stack)
    stack.pool.default = OK
    stack.directory.set_mode("example.com", "recovering", "probe succeeded", automatic=True)
    stack.directory.fence.open_gate("example.com", lambda: True)
    stack.monitor.start_recovery("example.com")
    assert not stack.directory.fence.says_emergency("example.com")
    assert stack.inbox("bob@example.com") == []  # the copy of the fail-over went upstream


def test_a_restart_resumes_an_interrupted_recovery(tmp_path):
    """A monitor starting on a store that says recovering runs the recovery (a crash mid-way)."""
    first = DeliveryStack(tmp_path)
    first.domain()
    first.directory.set_mode("example.com", "recovering", "probe succeeded", automatic=True)
    first.db.close()
    recovered = []

    async def recover(name):
        recovered.append(name)
        return True

    stack = DeliveryStack(tmp_path, recover=recover).start()
    try:
        assert recovered == ["example.com"]
        assert stack.directory.get_domain("example.com").mode == "normal"
    finally:
        stack.stop()


@pytest.mark.parametrize("outcome", [False, RuntimeError("pool closed")], ids=["interrupted", "raised"])
def test_a_failed_recovery_returns_the_domain_to_emergency(tmp_path, outcome):
    """A recovery that stops on a temporary failure, or raises, puts the domain back in emergency."""
    async def recover(name):
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    stack = DeliveryStack(tmp_path, recover=recover).start()
    try:
        stack.domain()
        fail_over(stack)
        stack.probe_ok = True
        stack.clock.advance(30)
        assert stack.directory.get_domain("example.com").mode == "emergency"
        assert stack.monitor.machines["example.com"].mode == "emergency"
        assert stack.directory.mode_history("example.com")[0].old_mode == "recovering"
    finally:
        stack.stop()


# -- SQL off the reactor thread -----------------------------------------------


class Rig:
    """A monitor whose SQL thread only runs when the test says (QueuedThread)."""

    def __init__(self, tmp_path):
        self.clock = Clock()
        self.clock.advance(EPOCH)
        self.db = Database(str(tmp_path / "store.sqlite3")).open()
        self.directory = Directory(self.db, clock=self.clock.seconds)
        self.directory.add_domain("example.com", UPSTREAM)
        self.sql = QueuedThread()
        self.seen: list[tuple[str, str]] = []
        self.recoveries: list[str] = []

        async def reroute(name):
            self.seen.append(("reroute", self.directory.get_domain(name).mode))

        async def release(name):
            self.seen.append(("release", self.directory.get_domain(name).mode))

        async def recover(name):
            self.recoveries.append(name)
            return True

        async def probe(domain):
            return False, "down"

        self.monitor = FailoverMonitor(self.clock, self.sql, self.directory, 30, probe, reroute, release, recover)


def test_persist_mode_runs_on_the_sql_thread(tmp_path):
    """An automatic switch writes nothing on the caller's thread: the write is a job of the SQL thread."""
    rig = Rig(tmp_path)
    stored = rig.monitor.upstream_failed("example.com", "451 4.3.0 busy")
    fired = []
    stored.addCallback(fired.append)
    assert rig.directory.get_domain("example.com").mode == "normal"
    assert rig.directory.mode_history("example.com") == []
    assert rig.sql.pending == 1
    assert fired == [] and rig.seen == []
    rig.sql.run_pending()
    assert rig.directory.get_domain("example.com").mode == "emergency"
    assert rig.directory.get_domain("example.com").health == "failing"
    assert fired == [None]


def test_reroute_waits_for_the_mode_write(tmp_path):
    """Rerouting after a switch starts only once the store says emergency."""
    rig = Rig(tmp_path)
    rig.monitor.upstream_failed("example.com", "451 4.3.0 busy")
    assert rig.seen == []
    rig.sql.run_pending()
    assert rig.seen == [("reroute", "emergency")]


def test_release_waits_for_the_normal_mode_write(tmp_path):
    """Held mail is released only once the store says normal, so it is relayed, not held again."""
    rig = Rig(tmp_path)
    machine = rig.monitor.machines["example.com"] = DomainFailover.restore("example.com", rig.monitor, "recovering")
    machine.recovery_finished("recovery finished")
    assert rig.seen == []
    rig.sql.run_pending()
    assert rig.seen == [("release", "normal")]


def test_a_poll_read_before_our_own_write_is_not_taken_for_an_admin_change(tmp_path):
    """A store read submitted before an automatic switch shows the old mode; it must not undo the switch."""
    rig = Rig(tmp_path)
    rig.monitor.startService()  # the first poll's read is now queued
    rig.sql.run_pending()  # ... and done: the machine knows the domain in normal mode
    rig.clock.advance(1)  # the next poll's read is queued
    assert rig.sql.pending == 1
    rig.monitor.upstream_failed("example.com", "451 4.3.0 busy")  # the write is queued behind it
    rig.sql.run_pending()
    assert rig.monitor.machines["example.com"].mode == "emergency"
    assert rig.recoveries == []
    rig.clock.advance(1)
    rig.sql.run_pending()
    assert rig.monitor.machines["example.com"].mode == "emergency"
    assert rig.recoveries == []
    rig.monitor.stopService()


def test_the_probe_names_a_covered_user(stack):
    """The probe's RCPT is a covered user; without one an active user, then postmaster."""
    stack.domain(users=["anna@example.com", "bob@example.com"])
    stack.directory.exclude("anna@example.com")
    domain = stack.directory.get_domain("example.com")
    assert probe_recipient(domain, stack.directory.list_users("example.com")) == "bob@example.com"
    stack.directory.exclude("bob@example.com")
    assert probe_recipient(domain, stack.directory.list_users("example.com")) == "anna@example.com"
    assert probe_recipient(domain, []) == "postmaster@example.com"


def test_a_recovery_cut_short_by_the_shut_down_resumes_at_the_next_start(tmp_path):
    """A recovery that fails because the service stops leaves the store in recovering, not emergency."""
    held: Deferred = Deferred()

    async def recover(name):
        await held
        raise RuntimeError("the connection pool is closed")

    first = DeliveryStack(tmp_path)
    first.domain()
    first.directory.set_mode("example.com", "recovering", "probe succeeded", automatic=True)
    first.db.close()
    stack = DeliveryStack(tmp_path, recover=recover).start()
    stack.monitor.stopService()
    held.callback(None)
    assert stack.directory.get_domain("example.com").mode == "recovering"
    assert stack.directory.mode_history("example.com")[0].new_mode == "recovering"
    stack.stop()
