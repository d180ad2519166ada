"""Live progress: the maths (fraction, eta, learned pace, queue places), the throttles, and the
reports a real worker run sends."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from astro_otf.execution.task import BatchTask, JobProgress, JobTask
from astro_otf.execution.worker import ProgressSender, run_batch
from astro_otf.service.progress import (
    STAGES,
    TRUST_FRACTION,
    LiveBatch,
    LiveJob,
    RateModel,
    WriteThrottle,
    isotime,
    job_fraction,
    queue_etas,
    remaining_seconds,
)
from tests.products import point_source_field


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_fraction_rises_through_the_stages_and_the_tiles() -> None:
    order = ["loading", "reading", "inference", "fitting", "writing"]
    assert list(STAGES) == order
    starts = [job_fraction(stage) for stage in order]
    assert starts == sorted(starts) and starts[0] == 0.0
    lo, hi = STAGES["inference"]
    assert job_fraction("inference", 0, 40) == lo
    assert job_fraction("inference", 10, 40) == pytest.approx(lo + (hi - lo) / 4)
    assert job_fraction("inference", 40, 40) == pytest.approx(hi)
    assert job_fraction("inference", 80, 40) == pytest.approx(hi)  # clamped
    assert job_fraction("writing", 1, 1) == pytest.approx(1.0)
    assert job_fraction("no-such-stage") == 0.0


def test_remaining_time_blends_plan_and_measured_pace() -> None:
    assert remaining_seconds(3.0, 0.0, 10.0) == pytest.approx(7.0)  # plan only
    assert remaining_seconds(30.0, 0.0, 10.0) == 0.0  # late: never negative
    assert remaining_seconds(3.0, 0.0, None) is None
    # from TRUST_FRACTION on only the measured pace counts: 4 s for half -> 4 s left
    assert remaining_seconds(4.0, 0.5, 100.0) == pytest.approx(4.0)
    assert remaining_seconds(4.0, 0.5, None) == pytest.approx(4.0)
    # halfway to TRUST_FRACTION: half each
    f = TRUST_FRACTION / 2
    measured = 2.0 * (1 - f) / f
    assert remaining_seconds(2.0, f, 12.0) == pytest.approx(0.5 * measured + 0.5 * 10.0)


def test_rate_model_learns_overhead_and_per_tile_time() -> None:
    rate = RateModel.for_tiles((528, 528))
    assert rate.estimate(0) == pytest.approx(rate.overhead) and rate.overhead > 0
    assert rate.estimate(100) > rate.estimate(10)
    for tiles in (10, 80, 30, 200, 5, 120, 60, 150):
        rate.learn(tiles, 2.0 + 0.05 * tiles)  # the truth: 2 s + 50 ms a tile
    assert rate.overhead == pytest.approx(2.0, abs=0.3)
    assert rate.per_tile == pytest.approx(0.05, rel=0.1)
    assert rate.estimate(400) == pytest.approx(22.0, rel=0.1)


def test_rate_model_with_batches_of_one_size_predicts_that_size() -> None:
    rate = RateModel.for_tiles((256, 256))
    for _ in range(6):
        rate.learn(64, 9.0)
    assert rate.estimate(64) == pytest.approx(9.0, rel=0.1)
    assert rate.overhead >= 0 and rate.per_tile >= 0


def test_rate_model_follows_a_change_of_pace() -> None:
    rate = RateModel.for_tiles((256, 256))
    for _ in range(5):
        rate.learn(50, 5.0)
    for _ in range(8):
        rate.learn(50, 1.0)  # the machine got faster (a GPU worker)
    assert rate.estimate(50) == pytest.approx(1.0, rel=0.25)


def test_a_key_without_tiles_counts_jobs() -> None:
    rate = RateModel.for_tiles((0, 0))
    assert rate.estimate(1) == pytest.approx(rate.overhead + rate.per_tile)
    assert rate.per_tile > 0


def test_queue_etas_place_jobs_on_the_first_free_worker() -> None:
    etas = queue_etas([5.0, 1.0], 0, [("a", 2.0, 2.0), ("b", 2.0, 2.0), ("c", 3.0, 1.0)])
    assert etas["a"] == (1.0, 3.0)  # the worker free after 1 s
    assert etas["b"] == (3.0, 5.0)  # the same one again, free at 3 s
    assert etas["c"] == (5.0, 8.0)  # both free at 5 s
    assert queue_etas([], 2, [("a", 4.0, 4.0)])["a"] == (0.0, 4.0)
    # a job sharing a batch adds only its share: the next starts sooner
    shared = queue_etas([0.0], 0, [("a", 4.0, 1.0), ("b", 4.0, 1.0)])
    assert shared["b"] == (1.0, 5.0)


def test_live_batch_weights_jobs_by_tiles_and_gives_one_eta() -> None:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    live = LiveBatch(
        "b1", 0.0, start, 10.0, {"big": LiveJob(weight=90), "small": LiveJob(weight=10)}
    )
    assert live.fraction == 0.0
    assert live.eta(0.0) == start + timedelta(seconds=10)  # the plan before any report
    assert live.update("other", "reading", None, None) is None
    live.update("big", "inference", 45, 90)
    live.update("small", "writing", None, None)
    expected = (90 * job_fraction("inference", 45, 90) + 10 * job_fraction("writing")) / 100
    assert live.fraction == pytest.approx(expected)
    doc = live.progress("big", 4.0)
    assert doc["stage"] == "inference" and doc["tiles_done"] == 45 and doc["tiles_total"] == 90
    assert doc["batch_jobs"] == 2
    assert doc["fraction"] == pytest.approx(job_fraction("inference", 45, 90), abs=1e-4)
    left = 4.0 * (1 - live.fraction) / live.fraction
    assert doc["eta"] == isotime(start + timedelta(seconds=4.0 + left))
    assert doc["eta"].endswith("Z") and doc["updated"] == isotime(start + timedelta(seconds=4))
    assert live.progress("small", 4.0)["eta"] == doc["eta"]  # a batch ends together
    live.jobs["small"].finished = True
    assert live.jobs["small"].fraction == 1.0


def test_write_throttle_writes_new_stages_at_once_and_others_once_a_second() -> None:
    throttle = WriteThrottle(1.0)
    assert throttle.due("j", "reading", 0.0) == 0.0
    throttle.wrote("j", "reading", 0.0)
    assert throttle.due("j", "reading", 0.4) == pytest.approx(0.6)
    assert throttle.due("j", "inference", 0.4) == 0.0  # a new stage
    throttle.wrote("j", "inference", 0.4)
    assert throttle.due("j", "inference", 1.5) == 0.0
    assert throttle.due("k", "inference", 0.5) == 0.0  # per job
    throttle.forget("j")
    assert throttle.due("j", "inference", 0.6) == 0.0


def test_progress_sender_sends_every_stage_and_at_most_four_a_second() -> None:
    clock = Clock()
    sent: list[JobProgress] = []
    sender = ProgressSender(sent.append, 2, interval=0.25, clock=clock)
    sender("a", "loading")
    sender("b", "loading")
    sender("a", "reading")
    assert [(p.job_id, p.stage) for p in sent] == [
        ("a", "loading"),
        ("b", "loading"),
        ("a", "reading"),
    ]
    sent.clear()
    for tile in range(1, 1001):  # 1000 tiles in 2 s
        clock.now += 0.002
        sender("a", "inference", tile, 1000)
    assert 1 <= len(sent) <= 9
    assert sent[0].tiles_done == 1 and sent[0].batch_jobs == 2
    assert all(p.tiles_total == 1000 for p in sent)
    sender("a", "fitting")  # a new stage goes at once
    assert sent[-1].stage == "fitting"


def test_progress_sender_never_raises() -> None:
    def broken(_: JobProgress) -> None:
        raise OSError("pipe closed")

    assert ProgressSender(broken, 1).send("a", "reading") is False


def test_a_real_batch_reports_its_stages_in_order(tmp_path: Path) -> None:
    image = tmp_path / "field.fits"
    point_source_field(image, 1024, 12, seed=3)
    tasks = []
    for name in ("job1", "job2"):
        job_dir = tmp_path / name
        job_dir.mkdir()
        tasks.append(JobTask(name, "matched-filter", {}, str(image), str(job_dir), None))
    reports: list[JobProgress] = []
    outcomes = run_batch(BatchTask("b1", "matched-filter", tuple(tasks)), progress=reports.append)
    assert all(o.ok for o in outcomes), [o.error_message for o in outcomes]
    for name in ("job1", "job2"):
        mine = [p for p in reports if p.job_id == name]
        stages = [p.stage for p in mine]
        # every stage, in order (repeats within a stage allowed)
        assert list(dict.fromkeys(stages)) == list(STAGES), stages
        tiles = [p for p in mine if p.stage == "inference"]
        assert tiles[0].tiles_done == 0
        assert len({p.tiles_total for p in tiles}) == 1 and (tiles[0].tiles_total or 0) > 1
        assert all(p.tiles_total and 0 <= (p.tiles_done or 0) <= p.tiles_total for p in tiles)
        assert all(p.batch_jobs == 2 for p in mine)
        assert len(mine) < 30  # throttled, not one per tile
