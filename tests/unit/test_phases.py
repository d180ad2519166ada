"""The phase machine: which moves are allowed."""

from __future__ import annotations

import itertools

import pytest

from astro_otf.domain.phases import (
    ACTIVE_PHASES,
    FINAL_PHASES,
    TRANSITIONS,
    Phase,
    can_move,
    sources_of,
)


def test_normal_path_is_allowed() -> None:
    path = [Phase.PENDING, Phase.QUEUED, Phase.EXECUTING, Phase.COMPLETED]
    for src, dst in itertools.pairwise(path):
        assert can_move(src, dst)


@pytest.mark.parametrize("src", sorted(ACTIVE_PHASES))
def test_every_active_phase_can_be_aborted(src: Phase) -> None:
    assert can_move(src, Phase.ABORTED)


@pytest.mark.parametrize("src", [Phase.COMPLETED, Phase.ERROR, Phase.ABORTED])
def test_final_phases_never_run_again(src: Phase) -> None:
    for dst in (Phase.PENDING, Phase.QUEUED, Phase.EXECUTING, Phase.COMPLETED, Phase.ERROR):
        assert not can_move(src, dst)


def test_no_skipping_the_queue() -> None:
    assert not can_move(Phase.PENDING, Phase.EXECUTING)
    assert not can_move(Phase.QUEUED, Phase.COMPLETED)


def test_only_a_job_that_runs_nothing_completes_from_pending() -> None:
    # RUN of a job whose computation a completed job made: its results at once (reuse of results)
    assert can_move(Phase.PENDING, Phase.COMPLETED)
    assert not can_move(Phase.PENDING, Phase.EXECUTING)


def test_sources_of_aborted_are_the_active_phases() -> None:
    assert sources_of(Phase.ABORTED) == ACTIVE_PHASES


def test_final_and_active_are_disjoint_and_cover_the_machine() -> None:
    assert not ACTIVE_PHASES & FINAL_PHASES
    assert set(TRANSITIONS) <= ACTIVE_PHASES | FINAL_PHASES


def test_phase_values_are_the_uws_names() -> None:
    assert {p.value for p in Phase} == {
        "PENDING",
        "QUEUED",
        "EXECUTING",
        "COMPLETED",
        "ERROR",
        "ABORTED",
        "UNKNOWN",
        "HELD",
        "SUSPENDED",
        "ARCHIVED",
    }
