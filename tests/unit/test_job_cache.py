"""The per-job cache: a read that raced a write never puts the old state back, an
invalidated job is read again, and documents belong to the record they were rendered from."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

from astro_otf.domain.job import Job
from astro_otf.domain.phases import Phase
from astro_otf.store.cache import JobCache

T0 = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)


def job(job_id: str = "a1", phase: Phase = Phase.PENDING) -> Job:
    return Job(job_id, None, None, phase, "sleep", 0, T0, None, None, 600, None)


def test_a_filled_record_is_served_until_invalidated() -> None:
    cache = JobCache()
    pending = job()
    cache.fill(pending, cache.ticket())
    assert cache.get("a1") is pending
    cache.invalidate("a1")
    assert cache.get("a1") is None


def test_a_read_that_raced_a_write_is_not_kept() -> None:
    cache = JobCache()
    ticket = cache.ticket()  # reader: ticket, then reads PENDING from the database ...
    cache.invalidate("a1")  # ... meanwhile a writer commits QUEUED and invalidates
    cache.fill(job(), ticket)  # the reader's PENDING is already old: not kept
    assert cache.get("a1") is None
    queued = job(phase=Phase.QUEUED)
    cache.fill(queued, cache.ticket())  # a read after the write is kept
    assert cache.get("a1") is queued


def test_an_invalidation_of_another_job_does_not_block_filling() -> None:
    cache = JobCache()
    ticket = cache.ticket()
    cache.invalidate("b2")
    pending = job()
    cache.fill(pending, ticket)
    assert cache.get("a1") is pending


def test_readers_older_than_a_pruning_do_not_fill() -> None:
    cache = JobCache(capacity=2)
    ticket = cache.ticket()
    cache.invalidate("a1")
    for n in range(10):  # more stamps than 4 x capacity: they are pruned
        cache.invalidate(f"x{n}")
    cache.fill(job(), ticket)  # its stamp for a1 is gone: refused all the same
    assert cache.get("a1") is None


def test_capacity_drops_the_least_recently_used() -> None:
    cache = JobCache(capacity=2)
    for name in ("a", "b"):
        cache.fill(job(name), cache.ticket())
    assert cache.get("a") is not None  # a is now the most recently used
    cache.fill(job("c"), cache.ticket())
    assert cache.get("b") is None
    assert cache.get("a") is not None and cache.get("c") is not None
    assert len(cache) == 2


def test_documents_belong_to_the_cached_record() -> None:
    cache = JobCache()
    pending = job()
    cache.fill(pending, cache.ticket())
    renders: list[str] = []

    def render(text: str) -> bytes:
        renders.append(text)
        return text.encode()

    assert cache.document(pending, "xml", lambda: render("one")) == b"one"
    assert cache.document(pending, "xml", lambda: render("two")) == b"one"
    assert cache.document(pending, "json", lambda: render("three")) == b"three"
    # a record that is not the cached one (an equal copy, or a newer read) renders anew
    copy = dataclasses.replace(pending)
    assert cache.document(copy, "xml", lambda: render("four")) == b"four"
    cache.invalidate("a1")
    assert cache.document(pending, "xml", lambda: render("five")) == b"five"
    assert renders == ["one", "three", "four", "five"]


def test_refilling_an_equal_record_keeps_its_documents() -> None:
    cache = JobCache()
    pending = job()
    cache.fill(pending, cache.ticket())
    cache.document(pending, "xml", lambda: b"doc")
    cache.fill(dataclasses.replace(pending), cache.ticket())
    assert cache.get("a1") is pending
    assert cache.document(pending, "xml", lambda: b"other") == b"doc"
