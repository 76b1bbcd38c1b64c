"""The composition root's service stack: children stop one by one, last added first."""

from __future__ import annotations

from twisted.application.service import Service
from twisted.internet.defer import Deferred

from continuity.app import ServiceStack


class Recorded(Service):
    """A service whose stop is recorded and, if asked, finishes only when the test says."""

    def __init__(self, name: str, log: list, wait: bool = False, fail: bool = False):
        self.name, self._log, self._wait, self._fail = name, log, wait, fail
        self.stopped: Deferred | None = None

    def stopService(self):
        super().stopService()
        self._log.append(self.name)
        if self._fail:
            raise RuntimeError("broken")
        if self._wait:
            self.stopped = Deferred()
            return self.stopped
        return None


def test_children_stop_in_reverse_order_each_after_the_last_finished():
    """The threads (added first) are stopped only once the work added after them has stopped."""
    log: list[str] = []
    stack = ServiceStack()
    for service in (Recorded("sql", log), Recorded("io", log), Recorded("runner", log, wait=True)):
        service.setServiceParent(stack)
    stack.startService()
    done = []
    stack.stopService().addCallback(done.append)
    assert log == ["runner"]
    stack.getServiceNamed("runner").stopped.callback(None)
    assert log == ["runner", "io", "sql"] and done == [None]


def test_a_child_failing_to_stop_does_not_keep_the_others_running():
    """A stopService that raises is logged and the next child is stopped all the same."""
    log: list[str] = []
    stack = ServiceStack()
    Recorded("sql", log).setServiceParent(stack)
    Recorded("broken", log, fail=True).setServiceParent(stack)
    stack.startService()
    done = []
    stack.stopService().addCallback(done.append)
    assert log == ["broken", "sql"] and done == [None]
    assert not stack.running
