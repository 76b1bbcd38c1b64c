"""The emergency marks direct delivery writes under (continuity.directory.fence)."""

from __future__ import annotations

import os

import pytest

from continuity.directory.fence import EmergencyFence


def test_a_domain_without_a_mark_is_not_in_emergency(tmp_path):
    fence = EmergencyFence(str(tmp_path / "emergency"))
    assert not fence.says_emergency("example.com")
    with fence.writing(["example.com"]) as emergency:
        assert emergency is False


def test_marks_say_what_was_marked_last(tmp_path):
    fence = EmergencyFence(str(tmp_path / "emergency"))
    fence.mark("example.com", True)
    assert fence.says_emergency("example.com")
    with fence.writing(["example.com", "example.com"]) as emergency:
        assert emergency is True
    fence.mark("example.com", False)
    assert not fence.says_emergency("example.com")


def test_writing_needs_every_domain_in_emergency(tmp_path):
    fence = EmergencyFence(str(tmp_path / "emergency"))
    fence.mark("a.example", True)
    with fence.writing(["b.example", "a.example"]) as emergency:
        assert emergency is False
    fence.mark("b.example", True)
    with fence.writing(["b.example", "a.example"]) as emergency:
        assert emergency is True


def test_a_writer_holds_no_descriptor_or_lock_afterwards(tmp_path):
    """Each use opens the mark (flock is per open file description) and closes it."""
    fence = EmergencyFence(str(tmp_path / "emergency"))
    fence.mark("example.com", True)
    before = len(os.listdir("/proc/self/fd"))
    with fence.writing(["example.com"]):
        assert len(os.listdir("/proc/self/fd")) == before + 1
    assert len(os.listdir("/proc/self/fd")) == before
    fence.mark("example.com", False)  # would wait forever for a lock left behind


def test_agree_corrects_only_what_disagrees_and_reconcile_clears_domains_gone(tmp_path):
    fence = EmergencyFence(str(tmp_path / "emergency"))
    fence.mark("gone.example", True)
    fence.mark("normal.example", True)
    fence.agree({"normal.example": "normal", "down.example": "emergency", "back.example": "recovering"})
    assert [fence.says_emergency(d) for d in ("normal.example", "down.example", "back.example")] == [
        False, True, False]
    assert fence.says_emergency("gone.example")  # agree() looks at the domains it is given only
    fence.reconcile({"down.example": "emergency"})
    assert not fence.says_emergency("gone.example") and fence.says_emergency("down.example")


@pytest.mark.parametrize("name", ["", "../x", ".hidden", "a/b"])
def test_names_that_are_no_domain_are_refused(tmp_path, name):
    with pytest.raises(ValueError):
        EmergencyFence(str(tmp_path / "emergency")).mark(name, True)
