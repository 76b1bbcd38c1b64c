"""The SMTP policies' directory cache: answers kept for a second, dropped on our own mode changes."""

from __future__ import annotations

import pytest
from twisted.internet.task import Clock

from continuity.db import Database
from continuity.directory.cache import DirectoryCache
from continuity.directory.store import Directory
from continuity.envelope import parse_address
from continuity.testing.inline import QueuedThread


@pytest.fixture
def world(tmp_path):
    db = Database(str(tmp_path / "store.sqlite3")).open()
    directory = Directory(db)
    directory.add_domain("example.com", "upstream.example.com:25")
    directory.add_user("bob@example.com")
    sql, clock = QueuedThread(), Clock()
    yield clock, sql, directory, DirectoryCache(clock, sql, directory)
    db.close()


def answer(d):
    results = []
    d.addBoth(results.append)
    return results


def test_an_answer_is_reused_within_the_ttl_without_a_trip(world):
    clock, sql, directory, cache = world
    first = answer(cache.domain("example.com"))
    assert sql.run_pending() == 1
    assert first[0].name == "example.com"
    clock.advance(0.9)
    again = answer(cache.domain("EXAMPLE.com"))
    assert sql.pending == 0 and again[0].name == "example.com"


def test_a_change_by_continuityctl_is_seen_after_the_ttl(world):
    """CONTRACT 1: the service notices a CLI change within 2 s; the cache keeps answers for 1 s."""
    clock, sql, directory, cache = world
    answer(cache.domain("example.org"))
    sql.run_pending()
    directory.add_domain("example.org", "upstream.example.org:25")  # continuityctl, another process
    assert answer(cache.domain("example.org")) == [None]
    clock.advance(1.0)
    fresh = answer(cache.domain("example.org"))
    sql.run_pending()
    assert fresh[0].name == "example.org"


def test_recipient_resolves_the_user_only_outside_normal_mode(world):
    clock, sql, directory, cache = world
    normal = answer(cache.recipient(parse_address("nobody@example.com")))
    sql.run_pending()
    assert normal[0][0].mode == "normal" and normal[0][1] is None
    directory.set_mode("example.com", "emergency", "test", automatic=False)
    cache.clear()
    unknown = answer(cache.recipient(parse_address("nobody@example.com")))
    known = answer(cache.recipient(parse_address("bob@example.com")))
    sql.run_pending()
    assert unknown[0][0].mode == "emergency" and unknown[0][1] is None
    assert known[0][1].address == "bob@example.com"


def test_concurrent_misses_share_one_lookup(world):
    clock, sql, directory, cache = world
    answers = [answer(cache.domain("example.com")) for _ in range(10)]
    assert sql.pending == 1
    sql.run_pending()
    assert all(a[0].name == "example.com" for a in answers)


def test_a_lookup_from_before_clear_answers_its_callers_but_is_not_kept(world):
    """A mode switch lands while an RCPT's lookup is on the SQL thread: the next RCPT asks again."""
    clock, sql, directory, cache = world
    early = answer(cache.domain("example.com"))
    cache.clear()
    late = answer(cache.domain("example.com"))
    assert sql.pending == 2  # the late caller does not join the lookup from before the clear
    sql.run_pending()
    assert early[0].name == late[0].name == "example.com"
    answer(cache.domain("example.com"))
    assert sql.pending == 0  # the late lookup (after the clear) was kept


def test_a_failed_lookup_reaches_every_caller_and_is_not_kept(world):
    clock, sql, directory, cache = world
    directory.db.close()
    directory.db.path = "/nonexistent/dir/store.sqlite3"
    first, second = answer(cache.domain("example.com")), answer(cache.domain("example.com"))
    sql.run_pending()
    assert first[0].check(Exception) and second[0].check(Exception)
    for result in (first[0], second[0]):
        result.trap(Exception)
    answer(cache.domain("example.com"))
    assert sql.pending == 1
