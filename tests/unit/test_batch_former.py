"""The batch former's rules: when a batch closes, what it holds, and fairness."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from astro_otf.batching.former import Batch, BatchFormer, BatchKey, BatchRules, QueuedJob

A = BatchKey("matched-filter", "1.0", "fp32", (256, 256))
B = BatchKey("matched-filter", "1.0", "fp16", (256, 256))
C = BatchKey("detector", "2.1", "fp32", (512, 512))


def job(
    i: int,
    key: BatchKey = A,
    *,
    owner: str | None = "alice",
    priority: int = 0,
    at: float = 0.0,
    tiles: int = 1,
) -> QueuedJob:
    return QueuedJob(f"j{i:04d}", key, owner, priority, at, tiles)


def former(**rules: float) -> BatchFormer:
    return BatchFormer(BatchRules(**rules))  # type: ignore[arg-type]


def test_nothing_ready_before_the_wait_and_ready_after() -> None:
    f = former(max_jobs=10, max_tiles=100, max_wait=0.5)
    queue = [job(1, at=10.0), job(2, at=10.2)]
    assert f.next_batch(queue, now=10.4) is None
    assert f.next_deadline(queue) == 10.5
    batch = f.next_batch(queue, now=10.5)
    assert batch is not None and batch.reason == "wait"
    assert [j.job_id for j in batch.jobs] == ["j0001", "j0002"]


def test_closes_on_job_count_and_on_tile_budget() -> None:
    f = former(max_jobs=3, max_tiles=100, max_wait=60)
    batch = f.next_batch([job(i) for i in range(5)], now=0.0)
    assert batch is not None and batch.reason == "jobs" and len(batch.jobs) == 3
    f = former(max_jobs=50, max_tiles=10, max_wait=60)
    batch = f.next_batch([job(i, tiles=4) for i in range(5)], now=0.0)
    assert batch is not None and batch.reason == "tiles"
    assert batch.tiles == 8 and len(batch.jobs) == 2


def test_a_job_bigger_than_the_budget_runs_alone_and_small_ones_fill_gaps() -> None:
    f = former(max_jobs=50, max_tiles=10, max_wait=0)
    batch = f.next_batch([job(1, tiles=40)], now=0.0)
    assert batch is not None and batch.tiles == 40
    batch = f.next_batch(
        [job(1, tiles=6, at=0), job(2, tiles=6, at=1), job(3, tiles=3, at=2)], now=5.0
    )
    assert batch is not None and [j.job_id for j in batch.jobs] == ["j0001", "j0003"]


def test_only_jobs_of_one_key_share_a_batch_and_keys_take_turns() -> None:
    f = former(max_jobs=2, max_tiles=100, max_wait=0)
    queue = [job(1, A), job(2, B), job(3, A), job(4, C), job(5, B)]
    seen = []
    for _ in range(6):
        batch = f.next_batch(queue, now=1.0)
        assert batch is not None
        assert {j.key for j in batch.jobs} == {batch.key}
        seen.append(batch.key)
    # every ready key gets its turn before any key runs twice
    assert set(seen[:3]) == {A, B, C}
    assert seen[3:] == seen[:3]


def test_one_owner_cannot_starve_another() -> None:
    f = former(max_jobs=8, max_tiles=1000, max_wait=0)
    flood = [job(i, owner="alice", at=i * 0.001) for i in range(1000)]
    late = job(5000, owner="bob", at=5.0)
    batch = f.next_batch([*flood, late], now=6.0)
    assert batch is not None
    assert late in batch.jobs
    assert sum(j.owner == "alice" for j in batch.jobs) == 7


def test_priority_goes_first() -> None:
    f = former(max_jobs=2, max_tiles=1000, max_wait=0)
    queue = [job(1, at=0), job(2, at=1), job(3, at=2, priority=5, owner="carol")]
    batch = f.next_batch(queue, now=3)
    assert batch is not None and batch.jobs[0].job_id == "j0003"


def test_invalid_rules_are_refused() -> None:
    import pytest

    with pytest.raises(ValueError):
        BatchRules(max_jobs=0)


jobs_strategy = st.lists(
    st.builds(
        QueuedJob,
        job_id=st.uuids().map(str),
        key=st.sampled_from([A, B, C]),
        owner=st.sampled_from(["alice", "bob", None]),
        priority=st.integers(-10, 10),
        queued_at=st.floats(0, 100),
        tiles=st.integers(1, 40),
    ),
    min_size=1,
    max_size=60,
    unique_by=lambda j: j.job_id,
)


@settings(max_examples=200, deadline=None)
@given(queue=jobs_strategy, max_jobs=st.integers(1, 16), max_tiles=st.integers(1, 64))
def test_batches_respect_limits_and_drain_the_queue(
    queue: list[QueuedJob], max_jobs: int, max_tiles: int
) -> None:
    f = BatchFormer(BatchRules(max_jobs=max_jobs, max_tiles=max_tiles, max_wait=0))
    left = list(queue)
    ran: list[str] = []
    while left:
        batch = f.next_batch(left, now=1000.0)
        assert isinstance(batch, Batch) and batch.jobs
        assert len(batch.jobs) <= max_jobs
        assert len(batch.jobs) == 1 or batch.tiles <= max_tiles
        assert {j.key for j in batch.jobs} == {batch.key}
        ran += [j.job_id for j in batch.jobs]
        left = [j for j in left if j not in batch.jobs]
    assert sorted(ran) == sorted(j.job_id for j in queue)  # each exactly once


def test_jobs_that_run_alone_go_in_fair_order_one_at_a_time() -> None:
    sep = BatchKey("sep", "1.0", "", (0, 0))
    f = former(max_jobs=8, max_tiles=100, max_wait=60)
    queue = [QueuedJob(f"z{i}", sep, "alice", 0, float(i), 1, False) for i in range(3)]
    queue.append(QueuedJob("a9", sep, "alice", 0, 10.0, 1, False))
    queue.append(QueuedJob("m5", sep, "alice", 3, 11.0, 1, False))
    order = []
    while queue:
        batch = f.next_batch(queue, now=12.0)
        assert batch is not None and len(batch.jobs) == 1 and batch.reason == "alone"
        order.append(batch.jobs[0].job_id)
        queue = [q for q in queue if q not in batch.jobs]
    assert order == ["m5", "z0", "z1", "z2", "a9"]  # priority, then age; not by id


def test_a_lone_job_is_ready_at_once_while_a_worker_is_idle() -> None:
    """Nobody is coming: with an idle worker a lone job does not wait max_wait for company;
    with every worker busy it would."""
    f = former(max_jobs=32, max_tiles=256, max_wait=3600)
    queue = [job(1, at=10.0)]
    assert f.next_batch(queue, now=10.0) is None  # no idle worker: waits for company
    batch = f.next_batch(queue, now=10.0, idle=1, workers=2)
    assert batch is not None and batch.reason == "idle" and len(batch.jobs) == 1
    [batch] = f.next_batches(queue, 10.0, idle=2, workers=2)
    assert [j.job_id for j in batch.jobs] == ["j0001"]


def test_a_burst_is_shared_between_the_workers() -> None:
    """32 jobs and two idle workers: two batches of 16, not one of 32 and an idle worker."""
    f = former(max_jobs=64, max_tiles=1000, max_wait=0.25)
    queue = [job(i, at=i * 0.01) for i in range(32)]
    batches = f.next_batches(queue, 1.0, idle=2, workers=2)
    assert [len(b.jobs) for b in batches] == [16, 16]
    assert {j.job_id for b in batches for j in b.jobs} == {j.job_id for j in queue}
    assert [j.job_id for j in batches[0].jobs] == [f"j{i:04d}" for i in range(16)]  # oldest


def test_a_worker_freed_while_the_other_is_busy_takes_half_of_the_queue() -> None:
    """One idle worker of two, 23 queued jobs: it takes 12 and leaves 11 for the other, and
    the shares shrink as the queue drains, so both end together."""
    f = former(max_jobs=64, max_tiles=1000, max_wait=0.25)
    queue = [job(i) for i in range(23)]
    [batch] = f.next_batches(queue, 1.0, idle=1, workers=2)
    assert len(batch.jobs) == 12
    left = [j for j in queue if j not in batch.jobs]
    [batch] = f.next_batches(left, 1.0, idle=1, workers=2)
    assert len(batch.jobs) == 6


def test_the_share_follows_tiles_and_the_rules_still_bound_it() -> None:
    f = former(max_jobs=4, max_tiles=1000, max_wait=0.25)
    batches = f.next_batches([job(i) for i in range(32)], 1.0, idle=2, workers=2)
    assert [len(b.jobs) for b in batches] == [4, 4]  # max_jobs still bounds a share
    f = former(max_jobs=64, max_tiles=1000, max_wait=0.25)
    queue = [job(1, tiles=30, at=0), job(2, tiles=10, at=1), job(3, tiles=10, at=2)]
    batches = f.next_batches(queue, 1.0, idle=2, workers=2)
    # 50 tiles, 25 a worker: the big job alone, the two small ones on the other worker
    assert [[j.job_id for j in b.jobs] for b in batches] == [["j0001"], ["j0002", "j0003"]]


@settings(max_examples=200, deadline=None)
@given(
    queue=jobs_strategy,
    idle=st.integers(1, 4),
    workers=st.integers(1, 4),
    max_jobs=st.integers(1, 16),
)
def test_shares_drain_the_queue_once_each(
    queue: list[QueuedJob], idle: int, workers: int, max_jobs: int
) -> None:
    f = BatchFormer(BatchRules(max_jobs=max_jobs, max_tiles=64, max_wait=3600))
    left = list(queue)
    ran: list[str] = []
    while left:
        batches = f.next_batches(left, 0.0, idle=idle, workers=max(idle, workers))
        assert 1 <= len(batches) <= idle
        for batch in batches:
            assert batch.jobs and len(batch.jobs) <= max_jobs
            ran += [j.job_id for j in batch.jobs]
            left = [j for j in left if j not in batch.jobs]
    assert sorted(ran) == sorted(j.job_id for j in queue)
