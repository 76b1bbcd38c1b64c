"""Counters shared by the service and its SMTP workers: the sliding windows of logins and sending."""

from __future__ import annotations

from continuity.counters import SharedWindow, SlidingWindow, sliding_window


class Clock:
    def __init__(self, now: float = 1_800_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def windows(tmp_path, clock, processes: int = 3, window: float = 600.0) -> list[SharedWindow]:
    """The service's (0, made first: it clears every table) and its workers'."""
    return [SharedWindow(clock, window, str(tmp_path), "failures", number, processes) for number in range(processes)]


def test_events_are_counted_across_processes(tmp_path):
    clock = Clock()
    service, first, second = windows(tmp_path, clock)
    assert service.add("192.0.2.1") == 1
    assert first.add("192.0.2.1") == 2
    assert second.add("192.0.2.1") == 3
    assert first.add("192.0.2.1") == 4
    assert [w.count("192.0.2.1") for w in (service, first, second)] == [4, 4, 4]
    assert service.count("192.0.2.2") == 0


def test_events_leave_the_window(tmp_path):
    clock = Clock()
    service, worker, _ = windows(tmp_path, clock)
    service.add("key")
    clock.now += 300
    worker.add("key")
    assert service.count("key") == 2
    clock.now += 301  # the first is older than 600 s (to the bucket: 20 s)
    assert service.count("key") == 1
    clock.now += 300
    assert worker.count("key") == 0
    assert worker.add("key") == 1  # the bucket of long ago starts again


def test_a_clear_in_one_process_forgets_the_others_counts(tmp_path):
    clock = Clock()
    service, worker, _ = windows(tmp_path, clock)
    for _ in range(5):
        service.add("alice@example.com")
    worker.add("alice@example.com")
    clock.now += 60
    worker.clear("alice@example.com")
    assert service.count("alice@example.com") == 0
    assert service.add("alice@example.com") == 1
    worker.clear("nobody@example.com")  # never counted: nothing to do
    assert worker.count("nobody@example.com") == 0


def test_a_worker_started_again_keeps_what_it_counted(tmp_path):
    """A crashed worker must not wipe the failed logins or the sends counted in it: they age out."""
    clock = Clock()
    service, worker, _ = windows(tmp_path, clock)
    service.add("key")
    worker.add("key")
    again = SharedWindow(clock, 600.0, str(tmp_path), "failures", 1, 3)
    assert again.add("key") == 3
    assert service.count("key") == 3


def test_the_service_starts_every_table_afresh_with_a_new_hash_key(tmp_path):
    clock = Clock()
    service, worker, _ = windows(tmp_path, clock)
    worker.add("key")
    key = (tmp_path / "failures.key").read_bytes()
    service, worker, _ = windows(tmp_path, clock)
    assert service.count("key") == 0 and (tmp_path / "failures.key").read_bytes() != key
    assert len(key) == 16 and (tmp_path / "failures.key").stat().st_mode & 0o777 == 0o600


def test_a_flood_of_keys_takes_bounded_space_and_keeps_counting(tmp_path):
    clock = Clock()
    (window,) = windows(tmp_path, clock, processes=1)
    for number in range(SharedWindow.SLOTS * 2):
        window.add(f"made-up-{number}")
    assert window.add("attacker") == 1
    assert window.add("attacker") == 2
    assert (tmp_path / "failures-0").stat().st_size == SharedWindow.SLOTS * SharedWindow._ENTRY * 8


def test_a_service_alone_keeps_its_window_in_memory(tmp_path):
    clock = Clock()
    assert isinstance(sliding_window(clock, 600.0, str(tmp_path), "x", 0, 1), SlidingWindow)
    assert not (tmp_path / "x-0").exists()
    assert isinstance(sliding_window(clock, 600.0, str(tmp_path), "x", 0, 2), SharedWindow)
