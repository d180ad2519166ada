"""Per-owner quotas of the service in token mode: active jobs (429 with Retry-After, the job
kept PENDING, other owners unaffected), the job creation rate (429 before an upload streams
in) and the bytes an owner's jobs may hold (413 until jobs are deleted).

Quotas are JobService's policy: the service runs in the test's process (tests/inprocess.py),
its sleep jobs on a fake executor that holds them EXECUTING for their DURATION.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.inprocess import InProcessService

TOKENS = {"tok-alice": "alice", "tok-bob": "bob", "tok-olga": "olga"}
ALICE = {"Authorization": "Bearer tok-alice"}
BOB = {"Authorization": "Bearer tok-bob"}
OLGA = {"Authorization": "Bearer tok-olga"}
JSON = {"Accept": "application/json"}


def start(tmp_path_factory: pytest.TempPathFactory, name: str, **settings: Any) -> InProcessService:
    """A started service in token mode (alice, bob; olga the operator) with ``settings``."""
    service = InProcessService(
        tmp_path_factory.mktemp(name) / "data",
        auth_mode="token",
        tokens=TOKENS,
        operators=["olga"],
        **settings,
    )
    return service.start()


@pytest.fixture(scope="module")
def active_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcessService]:
    """A service of one worker where an owner may have two active jobs."""
    service = start(tmp_path_factory, "otf-active", max_active_jobs=2, workers=1)
    yield service
    service.stop()


@pytest.fixture(scope="module")
def rate_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcessService]:
    """A service where an owner may create three jobs at once, then one a minute."""
    # one job a minute after a burst of three: the fourth is refused for about a minute
    service = start(tmp_path_factory, "otf-rate", job_creation_rate=1, job_creation_burst=3)
    yield service
    service.stop()


def create(
    server: InProcessService,
    headers: dict[str, str],
    fields: dict[str, str],
    image: Path | None = None,
) -> httpx.Response:
    """POST /jobs as the owner ``headers`` names (with ``image`` uploaded)."""
    files = {"IMAGE": (image.name, image.read_bytes(), "application/fits")} if image else None
    return server.http.post("/jobs", data=fields, files=files, headers=headers, timeout=30)


def job_id_of(response: httpx.Response) -> str:
    """The id of the job a 303 answer created."""
    assert response.status_code == 303, response.text
    return response.headers["location"].rsplit("/", 1)[1]


def phase(server: InProcessService, headers: dict[str, str], job_id: str) -> str:
    """The job's phase, as its owner sees it."""
    return server.http.get(f"/jobs/{job_id}/phase", headers=headers, timeout=10).text


def run(server: InProcessService, headers: dict[str, str], job_id: str) -> httpx.Response:
    """PHASE=RUN for the job; the answer."""
    return server.http.post(
        f"/jobs/{job_id}/phase", data={"PHASE": "RUN"}, headers=headers, timeout=10
    )


def abort(server: InProcessService, headers: dict[str, str], job_id: str) -> None:
    """PHASE=ABORT for the job."""
    server.http.post(f"/jobs/{job_id}/phase", data={"PHASE": "ABORT"}, headers=headers, timeout=10)


def job_count(server: InProcessService, headers: dict[str, str]) -> int:
    """How many jobs the owner's listing holds."""
    response = server.http.get("/jobs", headers={**headers, **JSON}, timeout=10)
    assert response.status_code == 200, response.text
    return len(response.json()["jobs"])


SLEEP = {"MODEL": "sleep", "DURATION": "60"}


# -- active jobs -----------------------------------------------------------------------------


def test_active_jobs_over_the_limit_answer_429_with_retry_after(
    active_server: InProcessService,
) -> None:
    """A RUN past max_active_jobs is 429 with Retry-After and the count, stores nothing or keeps the
    job PENDING, and counts against the job's owner only."""
    server = active_server
    mine: list[str] = []
    theirs: list[str] = []
    try:
        # two active jobs (one EXECUTING on the single worker, one QUEUED): the limit
        mine += [job_id_of(create(server, ALICE, {**SLEEP, "PHASE": "RUN"})) for _ in range(2)]
        assert {phase(server, ALICE, j) for j in mine} <= {"QUEUED", "EXECUTING"}

        # a third with PHASE=RUN: 429, Retry-After, the limit and the count in the message,
        # and nothing stored
        before = job_count(server, ALICE)
        refused = create(server, ALICE, {**SLEEP, "PHASE": "RUN"})
        assert refused.status_code == 429, refused.text
        assert refused.headers["content-type"].startswith("text/plain")
        retry = refused.headers.get("retry-after", "")
        assert retry.isdigit() and int(retry) >= 1
        assert "max_active_jobs = 2" in refused.text
        assert "alice has 2 active job(s)" in refused.text
        assert job_count(server, ALICE) == before

        # a PENDING job is no active job; its RUN is refused the same way and it stays PENDING
        pending = job_id_of(create(server, ALICE, SLEEP))
        mine.append(pending)
        answer = run(server, ALICE, pending)
        assert answer.status_code == 429, answer.text
        assert answer.headers.get("retry-after", "").isdigit()
        assert phase(server, ALICE, pending) == "PENDING"

        # another owner has a quota of its own
        theirs.append(job_id_of(create(server, BOB, {**SLEEP, "PHASE": "RUN"})))
        assert phase(server, BOB, theirs[0]) == "QUEUED"

        # an operator running alice's job counts it against alice's quota, not its own
        assert run(server, OLGA, pending).status_code == 429

        # once one of alice's jobs has ended, the RUN goes through
        abort(server, ALICE, mine[0])
        assert run(server, ALICE, pending).status_code == 303
        assert phase(server, ALICE, pending) in ("QUEUED", "EXECUTING")
    finally:
        for job_id in mine:
            abort(server, ALICE, job_id)
        for job_id in theirs:
            abort(server, BOB, job_id)


def test_runs_arriving_together_do_not_overshoot_the_limit(active_server: InProcessService) -> None:
    """Five RUNs arriving at once: two go through, three are 429."""
    server = active_server
    ids = [job_id_of(create(server, BOB, SLEEP)) for _ in range(5)]
    answers: dict[str, int] = {}
    barrier = threading.Barrier(len(ids))

    def go(job_id: str) -> None:
        barrier.wait()
        answers[job_id] = run(server, BOB, job_id).status_code

    threads = [threading.Thread(target=go, args=(job_id,)) for job_id in ids]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(answers.values()) == [303, 303, 429, 429, 429]
        active = [j for j in ids if phase(server, BOB, j) in ("QUEUED", "EXECUTING")]
        assert len(active) == 2
    finally:
        for job_id in ids:
            abort(server, BOB, job_id)


# -- creation rate ---------------------------------------------------------------------------


def test_creation_rate_answers_429_with_retry_after(
    rate_server: InProcessService, test_data: Path
) -> None:
    """Past the burst a creation, an upload's creation and a rerun are 429 with Retry-After; other
    owners still create."""
    server = rate_server
    for _ in range(3):  # the burst
        job_id_of(create(server, ALICE, SLEEP))
    before = job_count(server, ALICE)
    refused = create(server, ALICE, SLEEP)
    assert refused.status_code == 429, refused.text
    retry = refused.headers.get("retry-after", "")
    assert retry.isdigit() and 1 <= int(retry) <= 60
    assert "job_creation_rate" in refused.text and "1 job(s) per minute" in refused.text
    # refused before its upload is stored, and nothing is created
    with_image = create(server, ALICE, {"MODEL": "sep"}, test_data / "image2d.fits")
    assert with_image.status_code == 429, with_image.text
    assert job_count(server, ALICE) == before
    jobs_dir = server.data_dir / "jobs"
    assert len([p for p in jobs_dir.iterdir()]) == before
    # a rerun creates a job too
    listed = server.http.get("/jobs", headers={**ALICE, **JSON}, timeout=10).json()
    ended = listed["jobs"][0]["jobId"]
    abort(server, ALICE, ended)
    rerun = server.http.post(f"/jobs/{ended}/rerun", headers=ALICE, timeout=10)
    assert rerun.status_code == 429, rerun.text
    assert rerun.headers.get("retry-after", "").isdigit()
    # another owner, and an operator (not exempt, but its own bucket), still create
    job_id_of(create(server, BOB, SLEEP))
    job_id_of(create(server, OLGA, SLEEP))


# -- stored bytes ----------------------------------------------------------------------------


def test_stored_bytes_over_the_quota_answer_413_until_jobs_are_deleted(
    tmp_path_factory: pytest.TempPathFactory, test_data: Path
) -> None:
    """A job past max_stored_bytes is 413 saying how to make room; deleting a job makes it, and
    /accounting shows the quota."""
    image = test_data / "image2d.fits"
    size = image.stat().st_size
    server = start(tmp_path_factory, "otf-bytes", max_stored_bytes=int(size * 1.5))
    try:
        first = job_id_of(create(server, ALICE, {"MODEL": "sep"}, image))
        refused = create(server, ALICE, {"MODEL": "sep"}, image)
        assert refused.status_code == 413, refused.text
        assert "max_stored_bytes" in refused.text and "DELETE /jobs/" in refused.text
        assert f"{size} bytes" in refused.text
        assert job_count(server, ALICE) == 1
        # another owner holds nothing yet
        job_id_of(create(server, BOB, {"MODEL": "sep"}, image))
        # deleting frees the room
        deleted = server.http.delete(f"/jobs/{first}", headers=ALICE, timeout=10)
        assert deleted.status_code == 303
        job_id_of(create(server, ALICE, {"MODEL": "sep"}, image))
        standing = server.http.get("/accounting", headers=ALICE, timeout=10).json()
        (me,) = standing["owners"]
        assert me["quota"]["stored_bytes"] == {"used": size, "limit": int(size * 1.5)}
        assert me["bytes_stored"] == size
    finally:
        server.stop()
