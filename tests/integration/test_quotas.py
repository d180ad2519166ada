"""Per-owner quotas on a real server in token mode: active jobs (429 with Retry-After, the
job kept PENDING, other owners unaffected), the job creation rate (429 before an upload
streams in) and the bytes an owner's jobs may hold (413 until jobs are deleted)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import ServerProcess

TOKENS = {"tok-alice": "alice", "tok-bob": "bob", "tok-olga": "olga"}
ALICE = {"Authorization": "Bearer tok-alice"}
BOB = {"Authorization": "Bearer tok-bob"}
OLGA = {"Authorization": "Bearer tok-olga"}
JSON = {"Accept": "application/json"}


def start(tmp_path_factory: pytest.TempPathFactory, name: str, **settings: str) -> ServerProcess:
    proc = ServerProcess(
        tmp_path_factory.mktemp(name) / "data",
        None,
        auth_mode="token",
        tokens=json.dumps(TOKENS),
        operators=json.dumps(["olga"]),
        **settings,
    )
    proc.start()
    return proc


@pytest.fixture(scope="module")
def active_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = start(tmp_path_factory, "otf-active", max_active_jobs="2", workers="1")
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def rate_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    # one job a minute after a burst of three: the fourth is refused for about a minute
    proc = start(tmp_path_factory, "otf-rate", job_creation_rate="1", job_creation_burst="3")
    yield proc
    proc.stop()


def create(
    server: ServerProcess,
    headers: dict[str, str],
    fields: dict[str, str],
    image: Path | None = None,
) -> httpx.Response:
    files = {"IMAGE": (image.name, image.read_bytes(), "application/fits")} if image else None
    return httpx.post(f"{server.url}/jobs", data=fields, files=files, headers=headers, timeout=30)


def job_id_of(response: httpx.Response) -> str:
    assert response.status_code == 303, response.text
    return response.headers["location"].rsplit("/", 1)[1]


def phase(server: ServerProcess, headers: dict[str, str], job_id: str) -> str:
    return httpx.get(f"{server.url}/jobs/{job_id}/phase", headers=headers, timeout=10).text


def run(server: ServerProcess, headers: dict[str, str], job_id: str) -> httpx.Response:
    return httpx.post(
        f"{server.url}/jobs/{job_id}/phase", data={"PHASE": "RUN"}, headers=headers, timeout=10
    )


def abort(server: ServerProcess, headers: dict[str, str], job_id: str) -> None:
    httpx.post(
        f"{server.url}/jobs/{job_id}/phase", data={"PHASE": "ABORT"}, headers=headers, timeout=10
    )


def job_count(server: ServerProcess, headers: dict[str, str]) -> int:
    response = httpx.get(f"{server.url}/jobs", headers={**headers, **JSON}, timeout=10)
    assert response.status_code == 200, response.text
    return len(response.json()["jobs"])


SLEEP = {"MODEL": "sleep", "DURATION": "60"}


# -- active jobs -----------------------------------------------------------------------------


def test_active_jobs_over_the_limit_answer_429_with_retry_after(
    active_server: ServerProcess,
) -> None:
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


def test_runs_arriving_together_do_not_overshoot_the_limit(active_server: ServerProcess) -> None:
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
    rate_server: ServerProcess, test_data: Path
) -> None:
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
    listed = httpx.get(f"{server.url}/jobs", headers={**ALICE, **JSON}, timeout=10).json()
    ended = listed["jobs"][0]["jobId"]
    abort(server, ALICE, ended)
    rerun = httpx.post(f"{server.url}/jobs/{ended}/rerun", headers=ALICE, timeout=10)
    assert rerun.status_code == 429, rerun.text
    assert rerun.headers.get("retry-after", "").isdigit()
    # another owner, and an operator (not exempt, but its own bucket), still create
    job_id_of(create(server, BOB, SLEEP))
    job_id_of(create(server, OLGA, SLEEP))


# -- stored bytes ----------------------------------------------------------------------------


def test_stored_bytes_over_the_quota_answer_413_until_jobs_are_deleted(
    tmp_path_factory: pytest.TempPathFactory, test_data: Path
) -> None:
    image = test_data / "image2d.fits"
    size = image.stat().st_size
    server = start(tmp_path_factory, "otf-bytes", max_stored_bytes=str(int(size * 1.5)))
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
        deleted = httpx.delete(f"{server.url}/jobs/{first}", headers=ALICE, timeout=10)
        assert deleted.status_code == 303
        job_id_of(create(server, ALICE, {"MODEL": "sep"}, image))
        standing = httpx.get(f"{server.url}/accounting", headers=ALICE, timeout=10).json()
        (me,) = standing["owners"]
        assert me["quota"]["stored_bytes"] == {"used": size, "limit": int(size * 1.5)}
        assert me["bytes_stored"] == size
    finally:
        server.stop()
