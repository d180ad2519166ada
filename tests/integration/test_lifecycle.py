"""What the server drives by itself: time limits, worker death, destruction and restarts."""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from tests.conftest import ServerProcess
from tests.integration.test_uws_api import create, job_json, sleep_job, wait_final, wait_phase


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=60) as c:
        yield c


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split()[2] != "Z"


def running_pid(server: ServerProcess, job_id: str, timeout: float = 30) -> int:
    """The pid of the worker running a job, from the first line of the job's log."""
    log = server.data_dir / "jobs" / job_id / "logs" / "job.log"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if log.is_file() and (match := re.search(r", pid (\d+)", log.read_text())):
            return int(match.group(1))
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} never started in a worker")


def test_abort_of_executing_job_stops_its_worker(
    client: httpx.Client, server: ServerProcess
) -> None:
    job_id = sleep_job(client, 60, run=True)
    pid = running_pid(server, job_id)
    assert client.post(f"/jobs/{job_id}/phase", data={"PHASE": "ABORT"}).status_code == 303
    assert job_json(client, job_id)["phase"] == "ABORTED"
    # the worker that ran it is gone (the work really stopped) and has a successor
    assert not pid_alive(pid)
    deadline = time.monotonic() + 10
    while len(server.worker_pids()) != 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(server.worker_pids()) == 2 and pid not in server.worker_pids()
    assert job_json(client, job_id)["results"] == []


def test_abort_right_after_run_never_starts_the_work(
    client: httpx.Client, server: ServerProcess
) -> None:
    for _ in range(5):
        job_id = sleep_job(client, 60)
        client.post(f"/jobs/{job_id}/phase", data={"PHASE": "RUN"})
        client.post(f"/jobs/{job_id}/phase", data={"PHASE": "ABORT"})
        assert job_json(client, job_id)["phase"] == "ABORTED"
    time.sleep(1)
    # no worker is left sleeping: a short job runs at once on either worker
    quick = [sleep_job(client, 0.1, run=True) for _ in range(2)]
    t0 = time.monotonic()
    for q in quick:
        assert wait_final(client, q, timeout=30)["phase"] == "COMPLETED"
    assert time.monotonic() - t0 < 20


def test_execution_duration_limit_aborts_with_reason(client: httpx.Client) -> None:
    job_id = sleep_job(client, 60)
    client.post(f"/jobs/{job_id}/executionduration", data={"EXECUTIONDURATION": "1"})
    client.post(f"/jobs/{job_id}/phase", data={"PHASE": "RUN"})
    t0 = time.monotonic()
    doc = wait_final(client, job_id, timeout=30)
    assert time.monotonic() - t0 < 10
    assert doc["phase"] == "ABORTED"
    assert "executionDuration of 1 s" in doc["errorSummary"]["message"]
    assert client.get(f"/jobs/{job_id}/error").text == doc["errorSummary"]["message"]


def run_pids(server: ServerProcess, job_id: str) -> list[int]:
    """The pid of the worker of each run of a job so far, from the job's log."""
    log = server.data_dir / "jobs" / job_id / "logs" / "job.log"
    return [int(p) for p in re.findall(r", pid (\d+)", log.read_text())] if log.is_file() else []


def test_worker_that_dies_fails_only_its_job(client: httpx.Client, server: ServerProcess) -> None:
    """A worker that dies blames its job only once it has died twice running it alone: the
    first death queues the job again; the second ends it in ERROR, with the reason."""
    victim = sleep_job(client, 60, run=True)
    pid = running_pid(server, victim)
    # an idle worker dying harms nobody: the victim keeps running and the pool refills
    idle = [p for p in server.worker_pids() if p != pid]
    assert idle
    for other in idle:
        os.kill(other, signal.SIGKILL)
    time.sleep(0.5)
    assert job_json(client, victim)["phase"] == "EXECUTING"
    # the busy worker dying once: the job runs again (alone), in another worker
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while len(run_pids(server, victim)) < 2:
        assert time.monotonic() < deadline, "the job did not run again"
        time.sleep(0.05)
    second = run_pids(server, victim)[1]
    assert second != pid
    doc = job_json(client, victim)
    assert doc["phase"] == "EXECUTING"
    assert doc["jobInfo"]["worker_deaths"]["alone"] == 1
    # its worker dying a second time while it runs alone fails it, with a reason
    os.kill(second, signal.SIGKILL)
    doc = wait_final(client, victim, timeout=30)
    assert doc["phase"] == "ERROR"
    message = doc["errorSummary"]["message"]
    assert "worker process" in message and "SIGKILL" in message and "twice" in message
    assert victim in message
    assert doc["errorSummary"]["type"] == "transient"
    # the server is alive, replaced its workers, and runs the next jobs
    assert client.get("/health/ready").status_code == 200
    after = [sleep_job(client, 0.1, run=True) for _ in range(3)]
    for job_id in after:
        assert wait_final(client, job_id, timeout=60)["phase"] == "COMPLETED"
    assert len(server.worker_pids()) == 2


def test_reaper_deletes_job_and_folder_at_destruction(
    client: httpx.Client, server: ServerProcess
) -> None:
    job_id = sleep_job(client, 0.1, run=True)
    wait_final(client, job_id)
    folder = server.data_dir / "jobs" / job_id
    assert folder.is_dir()
    soon = datetime.now(UTC) + timedelta(seconds=1)
    client.post(f"/jobs/{job_id}/destruction", data={"DESTRUCTION": soon.isoformat()})
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and client.get(f"/jobs/{job_id}").status_code == 200:
        time.sleep(0.1)
    assert client.get(f"/jobs/{job_id}").status_code == 404
    assert not folder.exists()


def test_restart_requeues_unfinished_jobs(
    tmp_path: Path, real_data: Path, request: pytest.FixtureRequest
) -> None:
    """SIGKILL the server with a job executing and one queued: after a restart both run
    to completion once, and a job whose upload vanished is ERROR with the reason."""
    proc = ServerProcess(tmp_path / "data", None, workers="1")
    proc.start()
    try:
        with httpx.Client(base_url=proc.url, timeout=60) as c:
            running = sleep_job(c, 3, run=True)
            wait_phase(c, running, "EXECUTING")
            queued = sleep_job(c, 0.1, run=True)
            lost = create(c, {"PHASE": "RUN"}, real_data / "aegean" / "synthetic_test.fits")
            assert job_json(c, queued)["phase"] == "QUEUED"
        proc.stop(signal.SIGKILL)
        for pid in Path("/proc").glob("[0-9]*"):  # orphaned workers of the killed server
            try:
                if str(tmp_path) in (pid / "environ").read_bytes().decode(errors="ignore"):
                    os.kill(int(pid.name), signal.SIGKILL)
            except (OSError, ValueError):
                pass
        (proc.data_dir / "jobs" / lost / "inputs" / "image.fits").unlink()
        proc.start()
        with httpx.Client(base_url=proc.url, timeout=60) as c:
            first = wait_final(c, running, timeout=60)
            assert first["phase"] == "COMPLETED"
            assert wait_final(c, queued, timeout=60)["phase"] == "COMPLETED"
            gone = job_json(c, lost)
            assert gone["phase"] == "ERROR"
            assert "lost" in gone["errorSummary"]["message"]
            assert "IMAGE" in gone["errorSummary"]["message"]
            assert first["results"][0]["id"] == "result"
    finally:
        proc.stop()
