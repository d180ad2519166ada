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
