"""The emergency marks direct delivery writes under (continuity.directory.fence)."""

from __future__ import annotations

import fcntl
import os
import threading

import pytest

from continuity.directory.fence import EmergencyFence

EMERGENCY = {"example.com": "emergency"}.get


def fence_in(tmp_path) -> EmergencyFence:
    return EmergencyFence(str(tmp_path / "emergency"))


def unlocked(fence: EmergencyFence, domain: str) -> bool:
    """Whether nobody holds a lock on the domain's mark (a probe that never waits)."""
    fd = os.open(os.path.join(fence.path, domain), os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


def test_a_domain_without_a_mark_is_not_in_emergency(tmp_path):
    """A domain never marked (just added, or the marks' directory not made yet) gets no direct copy."""
    fence = fence_in(tmp_path)
    assert not fence.says_emergency("example.com")
    with fence.writing(["example.com"]) as emergency:
        assert emergency is False


def test_the_gates_open_only_as_the_store_says_and_close(tmp_path):
    """open_gate writes what the store says under the lock, not what its caller once read."""
    fence = fence_in(tmp_path)
    assert fence.open_gate("example.com", lambda: True) is True
    with fence.writing(["example.com", "example.com"]) as emergency:
        assert emergency is True
    assert fence.open_gate("example.com", lambda: False) is False  # switched back meanwhile: the store wins
    assert not fence.says_emergency("example.com")
    fence.open_gate("example.com", lambda: True)
    fence.close_gate("example.com")
    assert not fence.says_emergency("example.com")


def test_writing_needs_every_domain_in_emergency(tmp_path):
    """A message with recipients in two domains is written directly only if both are in emergency mode."""
    fence = fence_in(tmp_path)
    fence.open_gate("a.example", lambda: True)
    with fence.writing(["b.example", "a.example"]) as emergency:
        assert emergency is False
    fence.open_gate("b.example", lambda: True)
    with fence.writing(["b.example", "a.example"]) as emergency:
        assert emergency is True


def test_a_writer_holds_the_lock_only_inside_its_block(tmp_path):
    """Each use opens the mark (flock is per open file description) and closing it lets the lock go."""
    fence = fence_in(tmp_path)
    fence.open_gate("example.com", lambda: True)
    with fence.writing(["example.com"]):
        assert not unlocked(fence, "example.com")
    assert unlocked(fence, "example.com")


def test_closing_empties_the_mark_at_once_and_waits_for_the_writer_under_way(tmp_path):
    """New writers see the closed gate while close_gate still waits for the one already writing."""
    fence = fence_in(tmp_path)
    fence.open_gate("example.com", lambda: True)
    closed = threading.Event()
    closer = threading.Thread(target=lambda: (fence.close_gate("example.com"), closed.set()))
    with fence.writing(["example.com"]) as emergency:
        assert emergency is True
        closer.start()
        assert not closed.wait(0.3)
        with fence.writing(["example.com"]) as late:  # a shared lock is still granted, and says no
            assert late is False
    closer.join(10)
    assert closed.is_set()


def test_agree_corrects_only_what_disagrees_and_reconcile_clears_domains_gone(tmp_path):
    """A mark that agrees is not touched (no lock taken: a writer under way is not waited for)."""
    fence = fence_in(tmp_path)
    fence.open_gate("gone.example", lambda: True)
    fence.open_gate("normal.example", lambda: True)
    fence.open_gate("steady.example", lambda: True)
    modes = {"normal.example": "normal", "example.com": "emergency", "back.example": "recovering",
             "steady.example": "emergency"}
    with fence.writing(["steady.example"]):  # close_gate or open_gate on it would wait forever here
        assert fence.agree(modes, EMERGENCY) == []
    assert [fence.says_emergency(d) for d in ("normal.example", "example.com", "back.example")] == [
        False, True, False]
    assert fence.says_emergency("gone.example")  # agree() looks at the domains it is given only
    fence.reconcile({"example.com": "emergency"}, EMERGENCY)
    assert not fence.says_emergency("gone.example") and fence.says_emergency("example.com")


def test_agree_names_the_domains_it_could_not_fence(tmp_path):
    """An I/O error on one mark leaves that domain out (the monitor does not act on its mode), not the rest."""
    fence = fence_in(tmp_path)
    fence.open_gate("example.com", lambda: True)
    os.mkdir(os.path.join(fence.path, "broken.example"))  # open() of a directory for writing: EISDIR
    assert fence.agree({"broken.example": "emergency", "example.com": "normal"}, EMERGENCY) == ["broken.example"]
    assert not fence.says_emergency("example.com")
    fence.reconcile({}, EMERGENCY)  # and the start is not stopped by a directory among the marks


def test_a_mark_that_cannot_be_read_says_no(tmp_path):
    """An I/O error on the mark (here: its directory is a file) must not let the writer write: the spool
    takes the message."""
    (tmp_path / "emergency").write_bytes(b"")
    with fence_in(tmp_path).writing(["example.com"]) as emergency:
        assert emergency is False


@pytest.mark.parametrize("name", ["", "../x", ".hidden", "a/b"])
def test_names_that_are_no_domain_are_refused(tmp_path, name):
    """A mark is a file named after a hosted domain, never a path."""
    with pytest.raises(ValueError):
        fence_in(tmp_path).close_gate(name)
