"""Crash safety: what kill -9 of the server or of its workers may and may not do.

- A worker that dies running a batch fails nobody: the batch's jobs are queued again and run
  alone; a job ends in ERROR only when its worker died twice while it ran alone.
- Workers die with their server (no orphan finishes a batch the restarted server re-runs).
- A run that lost its job (the job was queued again and claimed by another run) can neither
  record the job's end nor list its result files.
- A second server on a data folder refuses to start before it changes anything.
- Job folders without a database row (a creation cut short) are removed at recovery.
- A chaos run, on SQLite and on PostgreSQL: jobs submitted while the server and busy workers
  are killed -9 several times all end, none twice at once, none in ERROR.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import random
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from astro_otf.domain.phases import Phase
from astro_otf.execution.task import BatchTask, ProducedResult, TaskOutcome
from astro_otf.models.registry import RegistryConfig, build_registry
from astro_otf.service.events import JobEvents
from astro_otf.service.lifecycle import recover, remove_orphans
from astro_otf.service.scheduler import Scheduler
from astro_otf.store.database import make_engine, migrate
from astro_otf.store.files import JobFolders
from astro_otf.store.lock import DataFolderBusy, DataFolderLock
from astro_otf.store.repository import JobStore
from tests.conftest import PostgresDatabases, ServerProcess
from tests.integration.test_batching import big_images, slow_batch_server, submit
from tests.integration.test_lifecycle import pid_alive
from tests.integration.test_scheduler import _sleep_job
from tests.integration.test_uws_api import job_json, sleep_job, wait_final, wait_phase

FINAL = ("COMPLETED", "ERROR", "ABORTED")


# -- helpers -----------------------------------------------------------------------------------


def run_pids(data_dir: Path, job_id: str) -> list[int]:
    """The worker pid of each run of a job so far (from the job's log)."""
    log = data_dir / "jobs" / job_id / "logs" / "job.log"
    return [int(p) for p in re.findall(r", pid (\d+)", log.read_text())] if log.is_file() else []


def wait_dead(pids: list[int], timeout: float) -> list[int]:
    """The pids still alive after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive = [p for p in pids if pid_alive(p)]
        if not alive:
            return []
        time.sleep(0.05)
    return [p for p in pids if pid_alive(p)]


_TAG = re.compile(r"\[run ([0-9a-f]+)\]")


def overlapping_runs(log_text: str) -> list[tuple[str, str]]:
    """Pairs of runs of one job whose lines interleave in its log (one run wrote after
    another had started), and runs that found another live run holding the job's lock."""
    spans: dict[str, list[int]] = {}
    overlaps: list[tuple[str, str]] = []
    for n, line in enumerate(log_text.splitlines()):
        match = _TAG.search(line)
        if match is None:
            continue
        token = match.group(1)
        spans.setdefault(token, [n, n])[1] = n
        if "OVERLAP" in line:
            overlaps.append((token, "?"))
    ordered = sorted(spans.items(), key=lambda kv: kv[1][0])
    for (a, (_, a_end)), (b, (b_start, _)) in itertools.pairwise(ordered):
        if a_end > b_start:
            overlaps.append((a, b))
    return overlaps


def kill_orphans_of(tmp_path: Path) -> None:
    """Last resort for the code before the fix: workers of killed servers, found by the
    data folder in their environment."""
    for pid in Path("/proc").glob("[0-9]*"):
        try:
            if str(tmp_path) in (pid / "environ").read_bytes().decode(errors="ignore"):
                os.kill(int(pid.name), signal.SIGKILL)
        except (OSError, ValueError):
            pass


# -- 9a: workers die with their server -------------------------------------------------------


def test_killing_the_server_kills_its_workers(tmp_path: Path) -> None:
    proc = ServerProcess(tmp_path / "data", None)
    proc.start()
    try:
        with httpx.Client(base_url=proc.url, timeout=60) as c:
            busy = sleep_job(c, 30, run=True)
            wait_phase(c, busy, "EXECUTING")
        deadline = time.monotonic() + 30
        while not run_pids(proc.data_dir, busy):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        workers = proc.worker_pids()
        assert len(workers) == 2 and run_pids(proc.data_dir, busy)[0] in workers
        proc.stop(signal.SIGKILL)
        # both the busy worker and the idle one end within a second or two
        assert wait_dead(workers, 2.0) == []
    finally:
        proc.stop()
        kill_orphans_of(tmp_path)


# -- 9c: one server per data folder -------------------------------------------------------------


def test_second_server_on_the_same_folder_refuses_to_start(tmp_path: Path) -> None:
    """A second ``make run`` on the folder (same port, taken) or another port: it stops
    before recovering anything, with one line naming the folder and the first server's pid;
    the first server's running job is not run twice."""
    first = ServerProcess(tmp_path / "data", None)
    first.start()
    try:
        with httpx.Client(base_url=first.url, timeout=60) as c:
            job_id = sleep_job(c, 8, run=True)
            wait_phase(c, job_id, "EXECUTING")
            assert first.proc is not None
            for port in (first.port, first.port + 1):
                second = subprocess.run(
                    [
                        sys.executable,
                        "-c",
                        f"from astro_otf.app import run_server; run_server('127.0.0.1', {port})",
                    ],
                    env=first.env,
                    capture_output=True,
                    text=True,
                    timeout=60,
                )
                assert second.returncode == 1
                lines = second.stderr.strip().splitlines()
                assert len(lines) == 1, second.stderr
                assert str((tmp_path / "data").resolve()) in lines[0]
                assert f"pid {first.proc.pid}" in lines[0]
                assert job_json(c, job_id)["phase"] == "EXECUTING"
            doc = wait_final(c, job_id, 30)
            assert doc["phase"] == "COMPLETED"
        log = (first.data_dir / "jobs" / job_id / "logs" / "job.log").read_text()
        assert log.count("done in") == 1
        assert len(run_pids(first.data_dir, job_id)) == 1
    finally:
        first.stop()


def test_folder_lock_is_shared_by_replicas_and_exclusive_for_sqlite(tmp_path: Path) -> None:
    a = DataFolderLock(tmp_path, shared=True)
    b = DataFolderLock(tmp_path, shared=True)
    a._take()
    b._take()  # two PostgreSQL replicas on one folder
    alone = DataFolderLock(tmp_path, shared=False)
    with pytest.raises(DataFolderBusy, match="replicas on PostgreSQL"):
        alone._take()
    a._users = b._users = 1
    a.release()
    b.release()
    alone._take()
    alone._users = 1
    replica = DataFolderLock(tmp_path, shared=True)
    with pytest.raises(DataFolderBusy, match=f"pid {os.getpid()}"):
        replica._take()
    alone.release()


# -- 9b: a run that lost its job changes nothing ---------------------------------------------


class _GatedExecutor:
    """Runs a batch when its gate opens: each job 'succeeds' with a report naming the run,
    written where a worker writes it (the run's staging folder)."""

    capacity = 1

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.started = asyncio.Event()

    def start(self) -> None:
        pass

    def alive(self) -> bool:
        return True

    async def run(
        self, task: BatchTask, timeout: float | None, report: object = None
    ) -> list[TaskOutcome]:
        self.started.set()
        await self.gate.wait()
        outcomes = []
        for t in task.tasks:
            token = getattr(t, "run_token", None)  # None: the code before run tokens
            staging = Path(t.job_dir) / "staging" / (token or "")
            staging.mkdir(parents=True, exist_ok=True)
            report = staging / "report.txt"
            report.write_text(f"run {token}\n")
            if token is None:  # the code before run tokens: the worker publishes
                (Path(t.job_dir) / "results").mkdir(exist_ok=True)
                report = report.replace(Path(t.job_dir) / "results" / "report.txt")
            produced = ProducedResult("result", "report.txt", "text/plain", report.stat().st_size)
            outcomes.append(TaskOutcome(t.job_id, True, [produced], {"run": token}))
        return outcomes

    async def shutdown(self) -> None:
        pass


def test_a_run_that_lost_its_job_records_nothing(tmp_path: Path) -> None:
    """Run A has the job; a restarted server's recovery queues it again and run B claims it.
    When A ends (its worker outlived the old server), neither its end nor its files count;
    B's do."""
    engine = make_engine(f"sqlite:///{tmp_path / 'jobs.sqlite'}")
    migrate(engine)
    store = JobStore(engine)
    folders = JobFolders(tmp_path)
    config = RegistryConfig(diagnostic_apps=True)
    apps = build_registry(config)
    job_id = "eeee000000000001"

    async def scenario() -> None:
        old, new = _GatedExecutor(), _GatedExecutor()
        a = Scheduler(store, folders, old, JobEvents(), apps=apps, registry=config)  # type: ignore[arg-type]
        b = Scheduler(store, folders, new, JobEvents(), apps=apps, registry=config)  # type: ignore[arg-type]
        folders.create(job_id)
        store.create(_sleep_job(job_id, 1))
        await a._fill()
        await old.started.wait()
        token_a = store.run_token(job_id)
        assert token_a is not None
        recover(store, folders)  # what the restarted server does first
        assert store.get(job_id).phase == Phase.QUEUED and store.run_token(job_id) is None
        await b._fill()
        await new.started.wait()
        token_b = store.run_token(job_id)
        assert token_b not in (None, token_a)
        old.gate.set()  # the stale run ends
        await asyncio.gather(*a._batches, return_exceptions=True)
        await asyncio.gather(*list(a._endings), return_exceptions=True)
        job = store.get(job_id)
        assert job.phase == Phase.EXECUTING and store.run_token(job_id) == token_b
        assert job.results == [] and not list(folders.results(job_id).iterdir())
        assert not folders.staging(job_id, token_a).exists()
        new.gate.set()
        await asyncio.gather(*b._batches, return_exceptions=True)
        await asyncio.gather(*list(b._endings), return_exceptions=True)
        job = store.get(job_id)
        assert job.phase == Phase.COMPLETED and job.info["run"] == token_b
        report = folders.result_file(job_id, "report.txt").read_text()
        assert report == f"run {token_b}\n"
        assert not folders.staging(job_id).exists()

    asyncio.run(scenario())
    engine.dispose()


def test_a_worker_run_with_a_token_never_writes_results(tmp_path: Path) -> None:
    from astro_otf.execution.task import JobTask
    from astro_otf.execution.worker import run_batch

    job_dir = tmp_path / "jobs" / "ffff000000000001"
    (job_dir / "results").mkdir(parents=True)
    config = RegistryConfig(diagnostic_apps=True)
    task = JobTask(
        "ffff000000000001", "sleep", {"duration": "0"}, None, str(job_dir), None, config, "t0k3n"
    )
    [outcome] = run_batch(BatchTask("b1", "sleep", (task,), config))
    assert outcome.ok and [r.filename for r in outcome.results] == ["report.txt"]
    assert not list((job_dir / "results").iterdir())
    assert (job_dir / "staging" / "t0k3n" / "report.txt").is_file()
    log = (job_dir / "logs" / "job.log").read_text()
    assert "run t0k3n" in log and "[run t0k3n]" in log and "run t0k3n ended" in log


# -- 8: a worker death in a batch fails no one --------------------------------------------------


def _job_log(data_dir: Path, job_id: str) -> str:
    path = data_dir / "jobs" / job_id / "logs" / "job.log"
    return path.read_text() if path.exists() else ""


def _batch_size(data_dir: Path, job_id: str) -> int:
    """How many jobs the job's latest run shared its batch with (0 before it ran)."""
    found = re.findall(r"of (\d+) job\(s\)", _job_log(data_dir, job_id))
    return int(found[-1]) if found else 0


def test_a_worker_death_in_a_batch_queues_its_jobs_again_to_run_alone(
    real_data: Path, tmp_path: Path
) -> None:
    big = big_images(real_data, tmp_path)
    proc = slow_batch_server(tmp_path)
    try:
        with httpx.Client(base_url=proc.url, timeout=120) as client:
            ids = [submit(client, img) for img in big]
            # the first job starts alone on the idle worker; the others queue up behind it
            # and share the next batch: kill its worker while it runs that batch
            deadline = time.monotonic() + 60
            while True:
                assert time.monotonic() < deadline, "the jobs did not share a batch"
                shared = [j for j in ids if _batch_size(proc.data_dir, j) > 1]
                if shared:
                    pids = run_pids(proc.data_dir, shared[0])
                    if pids:
                        break
                time.sleep(0.05)
            batch_jobs = _batch_size(proc.data_dir, shared[0])
            done = [j for j in shared if "done in" in _job_log(proc.data_dir, j)]
            os.kill(pids[0], signal.SIGKILL)  # an operator's kill, or the OOM killer
            docs = [wait_final(client, job_id, timeout=240) for job_id in ids]
            assert [d["phase"] for d in docs] == ["COMPLETED"] * len(ids), [
                d.get("errorSummary") for d in docs
            ]
            killed = [d for d in docs if d["jobInfo"].get("worker_deaths")]
            # every job of the batch that had not ended when its worker died, and only those:
            # a job that had reported its end stays COMPLETED and is not run again
            assert len(killed) == batch_jobs - len(done) >= 1
            for job_id in done:
                assert _job_log(proc.data_dir, job_id).count("done in") == 1
            for doc in killed:
                assert doc["jobInfo"]["worker_deaths"]["in_batch"] == 1
                assert doc["jobInfo"]["worker_deaths"]["alone"] == 0
                assert "SIGKILL" in doc["jobInfo"]["worker_deaths"]["how"]
                assert doc["jobInfo"]["batch_jobs"] == 1  # ran again alone
                assert doc["results"]
    finally:
        proc.stop()


# -- 10: orphan job folders --------------------------------------------------------------------


def test_job_folders_without_a_row_are_removed_at_recovery(tmp_path: Path) -> None:
    proc = ServerProcess(tmp_path / "data", None)
    proc.start()
    try:
        with httpx.Client(base_url=proc.url, timeout=60) as c:
            kept = sleep_job(c, 0.1, run=True)
            wait_final(c, kept)
        proc.stop(signal.SIGKILL)
        # a creation cut short by the kill: the folder and part of an upload, no row
        orphan = proc.data_dir / "jobs" / "0123456789abcdef"
        (orphan / "inputs").mkdir(parents=True)
        (orphan / "inputs" / "image.fits").write_bytes(b"SIMPLE  =" + b" " * 100)
        not_a_job = proc.data_dir / "jobs" / ".keep"
        not_a_job.mkdir()
        proc.start()
        assert not orphan.exists()
        assert (proc.data_dir / "jobs" / kept).is_dir() and not_a_job.is_dir()
    finally:
        proc.stop()
        kill_orphans_of(tmp_path)


def test_replicas_remove_only_orphans_untouched_for_minutes(tmp_path: Path) -> None:
    """With replicas another server may be creating a job right now: only folders in which
    nothing changed for the minimum age go."""
    engine = make_engine(f"sqlite:///{tmp_path / 'jobs.sqlite'}")
    migrate(engine)
    store = JobStore(engine)
    folders = JobFolders(tmp_path)
    store.create(_sleep_job("aaaa00000000000a", 1))
    folders.create("aaaa00000000000a")
    old, young, uploading = "bbbb00000000000b", "cccc00000000000c", "dddd00000000000d"
    for name in (old, young, uploading):
        folders.create(name)
        (folders.inputs(name) / "image.fits").write_bytes(b"x")
    long_ago = time.time() - 3600
    for name in (old, uploading):
        for path in (folders.job_dir(name), *folders.job_dir(name).rglob("*")):
            os.utime(path, (long_ago, long_ago))
    os.utime(folders.inputs(uploading) / "image.fits")  # its upload is still streaming
    for path in (
        folders.job_dir("aaaa00000000000a"),
        *folders.job_dir("aaaa00000000000a").rglob("*"),
    ):
        os.utime(path, (long_ago, long_ago))
    assert remove_orphans(store, folders, 600) == 1
    assert not folders.job_dir(old).exists()
    assert folders.job_dir(young).exists() and folders.job_dir(uploading).exists()
    assert folders.job_dir("aaaa00000000000a").exists()
    engine.dispose()


# -- the whole: kill -9 campaign, short --------------------------------------------------------


class Chaos:
    """Jobs submitted to a real server while its busy workers and the server itself are
    killed -9; the server is restarted after each kill."""

    def __init__(self, proc: ServerProcess, seed: int = 7) -> None:
        self.proc = proc
        self.rng = random.Random(seed)
        self.ids: list[str] = []
        self.hit: set[str] = set()  # jobs whose worker was killed (each at most once)
        self.survivors: list[int] = []  # workers alive 2 s after their server was killed

    def submit(self, client: httpx.Client, n: int, image: Path) -> None:
        for _ in range(n):
            if self.rng.random() < 0.2:
                self.ids.append(submit(client, image))
            else:
                self.ids.append(sleep_job(client, round(self.rng.uniform(0.3, 1.2), 2), True))

    def kill_busy_worker(self, client: httpx.Client) -> bool:
        listing = client.get(
            "/jobs", params={"PHASE": "EXECUTING"}, headers={"Accept": "application/json"}
        ).json()["jobs"]
        workers = set(self.proc.worker_pids())
        for entry in listing:
            job_id = entry["jobId"]
            pids = run_pids(self.proc.data_dir, job_id)
            if job_id in self.hit or not pids or pids[-1] not in workers:
                continue
            self.hit.add(job_id)
            os.kill(pids[-1], signal.SIGKILL)
            return True
        return False

    def kill_server(self) -> None:
        workers = self.proc.worker_pids()
        self.proc.stop(signal.SIGKILL)
        self.survivors += wait_dead(workers, 2.0)
        self.proc.start()


def run_chaos(proc: ServerProcess, image: Path, tmp_path: Path) -> None:
    chaos = Chaos(proc)
    proc.start()
    try:
        t0 = time.monotonic()
        with httpx.Client(base_url=proc.url, timeout=60) as c:
            chaos.submit(c, 24, image)
        worker_kills = server_kills = 0
        plan = ["worker", "server", "worker", "server", "worker"]
        for step in plan:
            time.sleep(1.0)
            with httpx.Client(base_url=proc.url, timeout=60) as c:
                if step == "worker":
                    deadline = time.monotonic() + 10
                    while not chaos.kill_busy_worker(c):
                        assert time.monotonic() < deadline, "no busy worker to kill"
                        time.sleep(0.1)
                    worker_kills += 1
                else:
                    chaos.kill_server()
                    server_kills += 1
                    with httpx.Client(base_url=proc.url, timeout=60) as c2:
                        chaos.submit(c2, 4, image)
        assert (worker_kills, server_kills) == (3, 2)
        with httpx.Client(base_url=proc.url, timeout=60) as c:
            docs = {job_id: wait_final(c, job_id, 90) for job_id in chaos.ids}
            listed = {
                j["jobId"]
                for j in c.get("/jobs", headers={"Accept": "application/json"}).json()["jobs"]
            }
        elapsed = time.monotonic() - t0
        # nothing lost, every job ended, none in ERROR (no job's worker was killed twice)
        assert set(chaos.ids) <= listed
        phases = {job_id: d["phase"] for job_id, d in docs.items()}
        errors = {j: d.get("errorSummary") for j, d in docs.items() if d["phase"] != "COMPLETED"}
        assert not errors, errors
        assert chaos.survivors == [], "workers outlived their server"
        for job_id, doc in docs.items():
            folder = proc.data_dir / "jobs" / job_id
            log = (folder / "logs" / "job.log").read_text()
            assert overlapping_runs(log) == [], (job_id, log)
            assert doc["results"], job_id
            for r in doc["results"]:
                if r["size"] is None:  # drawn on the first request (the PNG preview)
                    continue
                files = list((folder / "results").iterdir())
                assert any(f.stat().st_size == r["size"] for f in files), (job_id, r)
            assert not (folder / "staging").exists(), job_id
        # every job folder belongs to a job
        for folder in (proc.data_dir / "jobs").iterdir():
            assert folder.name in listed, folder
        assert len(phases) == len(chaos.ids) >= 30
        print(f"chaos: {len(chaos.ids)} jobs, {server_kills} server kills, "
              f"{worker_kills} worker kills, {elapsed:.1f} s")  # fmt: skip
    finally:
        proc.stop()
        kill_orphans_of(tmp_path)


@pytest.fixture
def small_image(real_data: Path) -> Path:
    return real_data / "aegean" / "synthetic_test.fits"


def test_chaos_on_sqlite(tmp_path: Path, small_image: Path) -> None:
    proc = ServerProcess(tmp_path / "data", None, batch_max_wait="0.3")
    run_chaos(proc, small_image, tmp_path)


def test_chaos_on_postgres(
    tmp_path: Path, small_image: Path, pg_databases: PostgresDatabases
) -> None:
    proc = ServerProcess(tmp_path / "data", pg_databases.create(), batch_max_wait="0.3")
    run_chaos(proc, small_image, tmp_path)


@pytest.fixture(autouse=True)
def _no_stray_processes(tmp_path: Path) -> Iterator[None]:
    yield
    with contextlib.suppress(Exception):
        kill_orphans_of(tmp_path)
