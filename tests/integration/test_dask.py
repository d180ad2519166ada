"""The Dask executor against real ``dask scheduler`` and ``dask worker`` processes: jobs run
on the cluster's workers; a scheduler that is not there keeps jobs QUEUED and the service
not ready until it comes; a lost worker's batch is retried once, then its job is ERROR; ABORT
cancels; a batch that asks for resources no worker has fails with a clear message."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import ServerProcess, free_port
from tests.integration.test_uws_api import create, job_json, sleep_job, wait_final

DASK = Path(sys.executable).with_name("dask")


class DaskCluster:
    """A ``dask scheduler`` and ``dask worker`` processes (one thread each, as the service
    expects), with Dask's allowed-failures at 1: a task is retried once after a lost worker."""

    def __init__(self, folder: Path, port: int, workers: int = 2, resources: str = "") -> None:
        self.folder = folder
        self.port = port
        self.address = f"tcp://127.0.0.1:{port}"
        self.workers = workers
        self.resources = resources
        self.procs: list[subprocess.Popen[bytes]] = []

    def _spawn(self, *args: str, name: str) -> subprocess.Popen[bytes]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("OTF_")}
        env["DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES"] = "1"
        log = (self.folder / f"{name}.log").open("ab")
        proc = subprocess.Popen([str(DASK), *args], env=env, stdout=log, stderr=subprocess.STDOUT)
        self.procs.append(proc)
        return proc

    def start(self) -> None:
        self._spawn(
            "scheduler", "--host", "127.0.0.1", "--port", str(self.port), "--no-dashboard",
            name="scheduler",
        )  # fmt: skip
        args = ["--nthreads", "1", "--nworkers", str(self.workers), "--no-dashboard"]
        if self.resources:
            args += ["--resources", self.resources]
        self._spawn("worker", self.address, *args, name="workers")

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs = []


def wait_ready(server: ServerProcess, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if httpx.get(f"{server.url}/health/ready", timeout=5).status_code == 200:
            return
        time.sleep(0.2)
    raise AssertionError(f"not ready: {httpx.get(f'{server.url}/health/ready').text}")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaskCluster]:
    c = DaskCluster(tmp_path_factory.mktemp("dask"), free_port(), resources="GPU=1")
    c.start()
    yield c
    c.stop()


@pytest.fixture(scope="module")
def server(
    cluster: DaskCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    proc = ServerProcess(
        tmp_path_factory.mktemp("otf-dask") / "data",
        None,
        executor="dask",
        dask_address=cluster.address,
        dask_resources='{"GPU": 1}',
    )
    proc.start(ready=False)
    wait_ready(proc)
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=60) as c:
        yield c


def started_pids(server: ServerProcess, job_id: str) -> list[int]:
    log = server.data_dir / "jobs" / job_id / "logs" / "job.log"
    return [int(p) for p in re.findall(r", pid (\d+)", log.read_text())] if log.exists() else []


def wait_started(server: ServerProcess, job_id: str, times: int, timeout: float = 60) -> int:
    """The pid of the worker that started the job's run number ``times``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pids = started_pids(server, job_id)
        if len(pids) >= times:
            return pids[times - 1]
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} did not start {times} time(s): {pids}")


def test_jobs_run_on_the_dask_workers(
    client: httpx.Client, server: ServerProcess, real_data: Path
) -> None:
    image = real_data / "aegean" / "synthetic_test.fits"
    ids = [
        create(client, {"PHASE": "RUN", "MODEL": "matched-filter", "NOCACHE": "true"}, image)
        for _ in range(3)
    ]
    ids += [create(client, {"PHASE": "RUN", "NOCACHE": "true"}, image) for _ in range(2)]
    docs = [wait_final(client, job_id, timeout=120) for job_id in ids]
    assert [d["phase"] for d in docs] == ["COMPLETED"] * 5, [d["errorSummary"] for d in docs]
    assert server.worker_pids() == []  # no local worker processes: Dask ran them
    assert server.proc is not None
    for doc in docs:
        assert doc["jobInfo"]["worker"]["pid"] != server.proc.pid
        assert doc["results"][0]["id"] == "result"
    ready = httpx.get(f"{server.url}/health/ready").json()
    assert ready["checks"]["executor"]["kind"] == "dask"


def test_abort_cancels_the_batch(client: httpx.Client, server: ServerProcess) -> None:
    job_id = sleep_job(client, 30, run=True)
    wait_started(server, job_id, 1)
    r = client.post(f"/jobs/{job_id}/phase", data={"PHASE": "ABORT"})
    assert r.status_code == 303
    assert job_json(client, job_id)["phase"] == "ABORTED"
    assert job_json(client, job_id)["results"] == []


def test_lost_worker_is_retried_once_then_the_job_fails(
    client: httpx.Client, server: ServerProcess
) -> None:
    job_id = sleep_job(client, 120, run=True)
    first = wait_started(server, job_id, 1)
    os.kill(first, signal.SIGKILL)  # the nanny restarts it; Dask runs the batch again
    second = wait_started(server, job_id, 2)
    assert second != first
    assert job_json(client, job_id)["phase"] == "EXECUTING"
    os.kill(second, signal.SIGKILL)
    doc = wait_final(client, job_id, timeout=60)
    assert doc["phase"] == "ERROR"
    message = doc["errorSummary"]["message"]
    assert "Dask worker" in message and "lost" in message and job_id in message
    # the cluster is whole again and runs the next job
    assert wait_final(client, sleep_job(client, 0.1, run=True), 120)["phase"] == "COMPLETED"


def test_batch_asking_resources_no_worker_has_fails_clearly(
    cluster: DaskCluster, tmp_path: Path
) -> None:
    proc = ServerProcess(
        tmp_path / "data",
        None,
        executor="dask",
        dask_address=cluster.address,
        dask_resources='{"TPU": 2}',
    )
    proc.start(ready=False)
    try:
        wait_ready(proc)
        with httpx.Client(base_url=proc.url, timeout=60) as c:
            doc = wait_final(c, sleep_job(c, 0.1, run=True))
        assert doc["phase"] == "ERROR"
        message = doc["errorSummary"]["message"]
        assert "TPU=2" in message and "GPU=1" in message and "operators" in message
    finally:
        proc.stop()


def test_without_its_scheduler_the_service_waits_and_loses_nothing(tmp_path: Path) -> None:
    late = DaskCluster(tmp_path, free_port(), workers=1)
    proc = ServerProcess(tmp_path / "data", None, executor="dask", dask_address=late.address)
    proc.start(ready=False)
    try:
        with httpx.Client(base_url=proc.url, timeout=60) as c:
            deadline = time.monotonic() + 30
            while True:  # "connecting ..." until the first attempt has timed out
                not_ready = c.get("/health/ready")
                assert not_ready.status_code == 503
                problem = not_ready.json()["checks"]["executor"]["problem"]
                assert late.address in problem
                if "cannot reach the Dask scheduler" in problem or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
            assert "cannot reach the Dask scheduler" in problem
            job_id = sleep_job(c, 0.1, run=True)
            time.sleep(3)
            assert job_json(c, job_id)["phase"] == "QUEUED"
            late.start()
            assert wait_final(c, job_id, timeout=120)["phase"] == "COMPLETED"
            assert c.get("/health/ready").status_code == 200
        assert "cannot reach the Dask scheduler" in proc.log_path.read_text()
    finally:
        proc.stop()
        late.stop()
