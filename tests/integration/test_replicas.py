"""Two API replicas on two ports share one PostgreSQL database and one data folder: jobs
submitted to either run exactly once, on the leader; a WAIT on one replica wakes when the
other finishes the job (LISTEN/NOTIFY); an ABORT sent to the follower stops the leader's run;
and when the leader is killed the other replica takes over, running the jobs the dead one
left behind."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import PostgresDatabases, ServerProcess
from tests.integration.test_uws_api import create, job_json, sleep_job, wait_final

pytestmark = pytest.mark.postgres


def replica(data_dir: Path, url: str, name: str) -> ServerProcess:
    proc = ServerProcess(data_dir, url)
    proc.log_path = data_dir.parent / f"{name}.log"
    return proc


def leader_of(*procs: ServerProcess) -> ServerProcess:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        leaders = [
            p
            for p in procs
            if p.proc is not None
            and httpx.get(f"{p.url}/health/ready", timeout=5).json()["checks"]["replica"]["leader"]
        ]
        if len(leaders) == 1:
            return leaders[0]
        assert len(leaders) < 2, "two leaders"
        time.sleep(0.2)
    raise AssertionError("no leader")


@pytest.fixture
def pair(
    pg_databases: PostgresDatabases, tmp_path: Path
) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    if not pg_databases.available():
        pytest.fail("PostgreSQL is not running on 127.0.0.1:5432")
    url = pg_databases.create()
    data = tmp_path / "data"
    a, b = replica(data, url, "a"), replica(data, url, "b")
    a.start()
    b.start()
    yield a, b
    for p in (a, b):
        p.stop()


def done_count(proc: ServerProcess, job_id: str) -> int:
    log = proc.data_dir / "jobs" / job_id / "logs" / "job.log"
    return log.read_text().count("done in") if log.exists() else 0


def test_jobs_on_both_replicas_run_exactly_once(
    pair: tuple[ServerProcess, ServerProcess], real_data: Path
) -> None:
    a, b = pair
    lead = leader_of(a, b)
    follower = b if lead is a else a
    assert follower.worker_pids() and lead.worker_pids()
    image = real_data / "aegean" / "synthetic_test.fits"
    with (
        httpx.Client(base_url=a.url, timeout=60) as ca,
        httpx.Client(base_url=b.url, timeout=60) as cb,
    ):
        ids = []
        for i in range(6):
            c = ca if i % 2 else cb
            ids.append(create(c, {"PHASE": "RUN", "NOCACHE": "true"}, image))
            ids.append(sleep_job(c, 0.3, run=True))
        # WAIT on the replica that did not take the job wakes when the leader ends it
        docs = [wait_final(cb if i % 2 else ca, job_id, 120) for i, job_id in enumerate(ids)]
        assert [d["phase"] for d in docs] == ["COMPLETED"] * len(ids)
        for job_id in ids:
            assert done_count(a, job_id) == 1
        # every run happened in the leader's worker processes
        pids = {d["jobInfo"]["worker"]["pid"] for d in docs}
        assert pids <= set(lead.worker_pids())

        # a WAIT on the follower returns as soon as the leader finishes (no polling delay)
        job_id = sleep_job(ca if follower is a else cb, 1.0, run=True)
        fc = ca if follower is a else cb
        wait_final(fc, job_id, 60)
        t0 = time.monotonic()
        job2 = sleep_job(fc, 1.0, run=True)
        r = fc.get(
            f"/jobs/{job2}",
            params={"WAIT": 30, "PHASE": "QUEUED"},
            headers={"Accept": "application/json"},
        )
        assert r.json()["phase"] in ("EXECUTING", "COMPLETED")
        r = fc.get(
            f"/jobs/{job2}",
            params={"WAIT": 30, "PHASE": "EXECUTING"},
            headers={"Accept": "application/json"},
        )
        assert r.json()["phase"] == "COMPLETED"
        assert time.monotonic() - t0 < 10

        # an ABORT sent to the follower stops the run on the leader
        victim = sleep_job(fc, 60, run=True)
        deadline = time.monotonic() + 30
        while job_json(fc, victim)["phase"] != "EXECUTING":
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert fc.post(f"/jobs/{victim}/phase", data={"PHASE": "ABORT"}).status_code == 303
        quick = sleep_job(fc, 0.1, run=True)
        quick2 = sleep_job(fc, 0.1, run=True)
        t1 = time.monotonic()
        assert wait_final(fc, quick, 60)["phase"] == "COMPLETED"
        assert wait_final(fc, quick2, 60)["phase"] == "COMPLETED"
        assert time.monotonic() - t1 < 20  # both leader workers are free again
        assert job_json(fc, victim)["phase"] == "ABORTED"


def test_when_the_leader_dies_the_other_replica_carries_on(
    pair: tuple[ServerProcess, ServerProcess],
) -> None:
    a, b = pair
    lead = leader_of(a, b)
    other = b if lead is a else a
    with httpx.Client(base_url=other.url, timeout=60) as c:
        running = sleep_job(c, 3, run=True)
        deadline = time.monotonic() + 30
        while job_json(c, running)["phase"] != "EXECUTING":
            assert time.monotonic() < deadline
            time.sleep(0.1)
        workers = lead.worker_pids()
        lead.stop(signal.SIGKILL)
        for pid in workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        assert leader_of(other) is other
        queued = [sleep_job(c, 0.2, run=True) for _ in range(3)]
        docs = [wait_final(c, job_id, 120) for job_id in [running, *queued]]
        assert [d["phase"] for d in docs] == ["COMPLETED"] * 4
        for job_id in [running, *queued]:
            assert done_count(other, job_id) == 1
        pids = {d["jobInfo"]["worker"]["pid"] for d in docs}
        assert pids <= set(other.worker_pids())
