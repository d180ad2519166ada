"""The UWS routes and JobService's policy with the whole service in the test's process
(tests/inprocess.py): the real app, store and scheduler, and a fake executor whose runs are
scripted per job (complete, fail, hang, die, time out). No process is started, so each test
takes milliseconds where a subprocess server takes seconds.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from lxml import etree

from astro_otf.domain.errors import JobNotFound, ParameterError, PhaseConflict
from astro_otf.domain.job import ErrorType
from astro_otf.domain.phases import Phase
from astro_otf.execution.task import BatchTask
from tests.inprocess import (
    Complete,
    Die,
    Fail,
    FakeExecutor,
    Hang,
    InProcessService,
    TimeOut,
)

JSON = {"Accept": "application/json"}
FINAL = ("COMPLETED", "ERROR", "ABORTED")


@pytest.fixture(scope="module")
def svc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcessService]:
    """One service for the module (anonymous mode), its jobs on a fake executor."""
    with InProcessService(tmp_path_factory.mktemp("inprocess") / "data") as service:
        yield service


@pytest.fixture
def client(svc: InProcessService) -> httpx.Client:
    """A client of the module's service."""
    return svc.client()


def create(client: httpx.Client, **fields: str) -> str:
    """A new job (a sleep job unless MODEL says otherwise); its id."""
    r = client.post("/jobs", data={"MODEL": "sleep", "DURATION": "0", **fields})
    assert r.status_code == 303, r.text
    location = r.headers["location"]
    assert location.startswith("http://testserver/jobs/")
    return location.rsplit("/", 1)[-1]


def job(client: httpx.Client, job_id: str, **params: str) -> dict[str, Any]:
    """The job's JSON document (``params``: query parameters such as WAIT)."""
    r = client.get(f"/jobs/{job_id}", params=params, headers=JSON)
    assert r.status_code == 200, r.text
    doc: dict[str, Any] = r.json()
    return doc


def run(client: httpx.Client, job_id: str) -> None:
    """PHASE=RUN for the job, which must answer 303."""
    r = client.post(f"/jobs/{job_id}/phase", data={"PHASE": "RUN"})
    assert r.status_code == 303, r.text


def final(client: httpx.Client, job_id: str, timeout: float = 10) -> dict[str, Any]:
    """The job's document once it has ended (WAITing for it)."""
    deadline = time.monotonic() + timeout
    while True:
        doc = job(client, job_id, WAIT="2")
        if doc["phase"] in FINAL:
            return doc
        assert time.monotonic() < deadline, doc


def phase_becomes(client: httpx.Client, job_id: str, phase: str, timeout: float = 10) -> None:
    """Wait until the job's phase is ``phase``."""
    deadline = time.monotonic() + timeout
    while client.get(f"/jobs/{job_id}/phase").text != phase:
        assert time.monotonic() < deadline, f"{job_id} never became {phase}"
        time.sleep(0.01)


# -- the job resources ------------------------------------------------------------------------


def test_create_list_get_phase_and_delete(
    svc: InProcessService, client: httpx.Client, uws_schema: etree.XMLSchema
) -> None:
    """A job is created PENDING, listed, read (its XML valid UWS 1.1) and deleted with its folder,
    by DELETE and by ACTION=DELETE; it never reaches the executor."""
    job_id = create(client, RUNID="first")
    assert client.get(f"/jobs/{job_id}/phase").text == "PENDING"
    doc = job(client, job_id)
    assert doc["jobId"] == job_id and doc["runId"] == "first" and doc["phase"] == "PENDING"
    assert doc["parameters"]["duration"] == "0" and doc["parameters"]["model"] == "sleep"
    # the XML documents are UWS 1.1
    listing = client.get("/jobs")
    assert listing.status_code == 200
    uws_schema.assertValid(etree.fromstring(listing.content))
    assert job_id in listing.text
    one = client.get(f"/jobs/{job_id}")
    uws_schema.assertValid(etree.fromstring(one.content))
    listed = client.get("/jobs", params={"PHASE": "PENDING"}, headers=JSON).json()["jobs"]
    assert job_id in [j["jobId"] for j in listed]
    # DELETE, and POST ACTION=DELETE: gone, folder and all
    assert (svc.data_dir / "jobs" / job_id).is_dir()
    r = client.delete(f"/jobs/{job_id}")
    assert r.status_code == 303 and r.headers["location"].endswith("/jobs")
    assert client.get(f"/jobs/{job_id}").status_code == 404
    assert not (svc.data_dir / "jobs" / job_id).exists()
    other = create(client)
    assert client.post(f"/jobs/{other}", data={"ACTION": "DELETE"}).status_code == 303
    assert client.get(f"/jobs/{other}/phase").status_code == 404
    # a PENDING job never reached the executor
    assert job_id not in svc.executor.jobs_run() and other not in svc.executor.jobs_run()


def test_a_completed_run_lists_the_file_the_worker_wrote(
    svc: InProcessService, client: httpx.Client
) -> None:
    """A completed run's file is moved from its staging folder into results/ and listed and served;
    a finished job is neither aborted nor run again."""
    job_id = create(client)
    svc.executor.script(job_id, Complete(text="42 sources\n", info={"n_sources": 42}))
    run(client, job_id)
    doc = final(client, job_id)
    assert doc["phase"] == "COMPLETED"
    assert doc["startTime"] and doc["endTime"]
    assert doc["jobInfo"]["n_sources"] == 42
    (result,) = doc["results"]
    assert result["id"] == "result" and result["mimeType"] == "text/plain"
    assert result["size"] == len("42 sources\n")
    assert client.get(f"/jobs/{job_id}/results/result").text == "42 sources\n"
    # moved from the run's staging folder into results/, in the transaction that listed it
    folder = svc.data_dir / "jobs" / job_id
    assert (folder / "results" / "report.txt").read_text() == "42 sources\n"
    assert not (folder / "staging").exists()
    batch = next(b for b in svc.executor.batches if b.tasks[0].job_id == job_id)
    assert isinstance(batch, BatchTask) and batch.model_id == "sleep"
    assert batch.tasks[0].run_token is not None
    # a finished job is not run again, and is not aborted
    conflict = client.post(f"/jobs/{job_id}/phase", data={"PHASE": "ABORT"})
    assert conflict.status_code == 409 and "COMPLETED" in conflict.text
    assert client.post(f"/jobs/{job_id}/phase", data={"PHASE": "RUN"}).status_code == 409


def test_a_failed_run_gives_its_error_summary(client: httpx.Client, svc: InProcessService) -> None:
    """A failed run makes the job ERROR with the worker's message and type, in the document, as text
    and as a DALI VOTable."""
    job_id = create(client)
    svc.executor.script(job_id, Fail("IMAGE: no sky in it", error_type=ErrorType.TRANSIENT))
    run(client, job_id)
    doc = final(client, job_id)
    assert doc["phase"] == "ERROR"
    assert doc["errorSummary"]["type"] == "transient"
    assert doc["errorSummary"]["message"] == "IMAGE: no sky in it"
    assert doc["results"] == []
    assert client.get(f"/jobs/{job_id}/error").text == "IMAGE: no sky in it"
    votable = client.get(f"/jobs/{job_id}/error", params={"FORMAT": "votable"})
    assert "QUERY_STATUS" in votable.text and "no sky" in votable.text


def test_abort_stops_a_running_job_and_its_progress_shows_while_it_runs(
    svc: InProcessService, client: httpx.Client
) -> None:
    """A running job shows its stage and tiles; ABORT ends it at once and stops its run."""
    job_id = create(client)
    svc.executor.script(job_id, Hang(stage="inference", tiles=(3, 8)))
    run(client, job_id)
    phase_becomes(client, job_id, "EXECUTING")
    svc.wait_until(lambda: bool(job(client, job_id)["jobInfo"].get("progress")))
    progress = job(client, job_id)["jobInfo"]["progress"]
    assert progress["stage"] == "inference"
    assert (progress["tiles_done"], progress["tiles_total"]) == (3, 8)
    r = client.post(f"/jobs/{job_id}/phase", data={"PHASE": "ABORT"})
    assert r.status_code == 303
    doc = job(client, job_id)
    assert doc["phase"] == "ABORTED" and doc["endTime"]
    assert job_id in svc.executor.cancelled  # the run was stopped, not left to finish
    assert job_id not in svc.executor.running
    # ABORT again is no error; DELETE after it is fine
    assert client.post(f"/jobs/{job_id}/phase", data={"PHASE": "ABORT"}).status_code == 303
    assert client.delete(f"/jobs/{job_id}").status_code == 303


def test_delete_of_a_running_job_stops_its_run(svc: InProcessService, client: httpx.Client) -> None:
    """DELETE of an EXECUTING job stops its run and the job is gone."""
    job_id = create(client)
    svc.executor.script(job_id, Hang())
    run(client, job_id)
    phase_becomes(client, job_id, "EXECUTING")
    assert client.delete(f"/jobs/{job_id}").status_code == 303
    svc.wait_until(lambda: job_id in svc.executor.cancelled)
    assert client.get(f"/jobs/{job_id}").status_code == 404


def test_a_worker_dying_twice_while_the_job_runs_alone_is_an_error(
    svc: InProcessService, client: httpx.Client
) -> None:
    """The first death queues the job again (nobody is blamed yet); the second, alone, is
    the job's: ERROR, with what happened in words."""
    job_id = create(client)
    svc.executor.script(job_id, Die(exitcode=-9), Die(exitcode=-9))
    run(client, job_id)
    doc = final(client, job_id)
    assert doc["phase"] == "ERROR", doc
    assert svc.executor.jobs_run().count(job_id) == 2
    assert "died twice" in doc["errorSummary"]["message"]
    assert "SIGKILL" in doc["errorSummary"]["message"]
    assert doc["jobInfo"]["worker_deaths"]["alone"] == 2


def test_a_run_past_its_execution_duration_is_aborted(
    svc: InProcessService, client: httpx.Client
) -> None:
    """A run stopped at its time limit makes the job ABORTED, saying its executionDuration; the
    limit changes only while PENDING."""
    job_id = create(client)
    r = client.post(f"/jobs/{job_id}/executionduration", data={"EXECUTIONDURATION": "5"})
    assert r.status_code == 303
    assert client.get(f"/jobs/{job_id}/executionduration").text == "5"
    svc.executor.script(job_id, TimeOut())
    run(client, job_id)
    doc = final(client, job_id)
    assert doc["phase"] == "ABORTED"
    assert "executionDuration of 5 s" in doc["errorSummary"]["message"]
    # only a PENDING job's limit can change
    late = client.post(f"/jobs/{job_id}/executionduration", data={"EXECUTIONDURATION": "9"})
    assert late.status_code == 409 and "PENDING" in late.text


def test_execution_duration_is_capped_and_checked(
    svc: InProcessService, client: httpx.Client
) -> None:
    """0 and values over the cap become the cap; a negative or unreadable value is 400 naming
    EXECUTIONDURATION."""
    job_id = create(client)
    cap = svc.settings.max_execution_duration
    for asked, kept in (("0", cap), (str(cap * 10), cap), ("60", 60)):
        r = client.post(f"/jobs/{job_id}/executionduration", data={"EXECUTIONDURATION": asked})
        assert r.status_code == 303, r.text
        assert client.get(f"/jobs/{job_id}/executionduration").text == str(kept)
    for bad in ("-1", "soon"):
        r = client.post(f"/jobs/{job_id}/executionduration", data={"EXECUTIONDURATION": bad})
        assert r.status_code == 400 and r.text.startswith("EXECUTIONDURATION:"), r.text
    r = client.post(f"/jobs/{job_id}/executionduration", data={})
    assert r.status_code == 400 and r.text.startswith("EXECUTIONDURATION:")


def test_destruction_is_set_within_the_configured_bounds(
    svc: InProcessService, client: httpx.Client
) -> None:
    """The destruction time defaults to the configured days, is set in UTC with Z, is held to the
    maximum, and an unreadable one is 400."""
    job_id = create(client)
    default = datetime.fromisoformat(client.get(f"/jobs/{job_id}/destruction").text)
    days = svc.settings.default_destruction_days
    assert abs(default - datetime.now(UTC) - timedelta(days=days)) < timedelta(minutes=1)
    when = (datetime.now(UTC) + timedelta(days=2)).replace(microsecond=0)
    r = client.post(f"/jobs/{job_id}/destruction", data={"DESTRUCTION": when.isoformat()})
    assert r.status_code == 303, r.text
    text = client.get(f"/jobs/{job_id}/destruction").text
    assert text.endswith("Z") and datetime.fromisoformat(text) == when
    # past the maximum: the maximum
    far = datetime.now(UTC) + timedelta(days=10 * svc.settings.max_destruction_days)
    client.post(f"/jobs/{job_id}/destruction", data={"DESTRUCTION": far.isoformat()})
    kept = datetime.fromisoformat(client.get(f"/jobs/{job_id}/destruction").text)
    latest = datetime.now(UTC) + timedelta(days=svc.settings.max_destruction_days)
    assert abs(kept - latest) < timedelta(minutes=1)
    r = client.post(f"/jobs/{job_id}/destruction", data={"DESTRUCTION": "next week"})
    assert r.status_code == 400 and r.text.startswith("DESTRUCTION:"), r.text


def test_a_destruction_time_past_deletes_the_job(
    svc: InProcessService, client: httpx.Client
) -> None:
    """The reaper deletes a job once its destruction time has come (clamped to now)."""
    job_id = create(client)
    past = datetime.now(UTC) - timedelta(days=1)
    r = client.post(f"/jobs/{job_id}/destruction", data={"DESTRUCTION": past.isoformat()})
    assert r.status_code == 303
    svc.wait_until(lambda: client.get(f"/jobs/{job_id}").status_code == 404)
    # the row goes first, then the folder (a crash between them leaves an orphan folder,
    # which recovery removes): the folder is gone soon after, not necessarily at once
    svc.wait_until(lambda: not (svc.data_dir / "jobs" / job_id).exists())


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"MODEL": "no-such-model"}, "MODEL"),
        ({"MODEL": "sleep", "DURATION": "-1"}, "DURATION"),
        ({"MODEL": "sleep", "DURATION": "long"}, "DURATION"),
        ({"MODEL": "sleep", "NOSUCH": "1"}, "NOSUCH"),
        ({"MODEL": "sleep", "PHASE": "EXPLODE"}, "PHASE"),
        ({"MODEL": "sep"}, "IMAGE"),
        ({"MODEL": "sleep", "RUNID": "x" * 300}, "RUNID"),
    ],
)
def test_parameter_errors_are_400_naming_the_parameter(
    svc: InProcessService, client: httpx.Client, fields: dict[str, str], named: str
) -> None:
    """A creation with a bad parameter is 400 naming it, and leaves no job folder."""
    before = set((svc.data_dir / "jobs").iterdir())
    r = client.post("/jobs", data=fields)
    assert r.status_code == 400, r.text
    assert named in r.text, r.text
    assert set((svc.data_dir / "jobs").iterdir()) == before  # nothing left behind


def test_parameters_of_a_pending_job_change_and_are_checked(client: httpx.Client) -> None:
    """A PENDING job's parameters change, checked as at creation; a phase change without PHASE is
    400."""
    job_id = create(client, DURATION="1")
    r = client.post(f"/jobs/{job_id}/parameters", data={"DURATION": "2.5"})
    assert r.status_code == 303, r.text
    assert job(client, job_id)["parameters"]["duration"] == "2.5"
    r = client.post(f"/jobs/{job_id}/parameters", data={"DURATION": "-3"})
    assert r.status_code == 400 and "DURATION" in r.text
    assert job(client, job_id)["parameters"]["duration"] == "2.5"
    assert client.post(f"/jobs/{job_id}/phase", data={}).status_code == 400


def test_wait_returns_when_the_phase_changes(svc: InProcessService, client: httpx.Client) -> None:
    """WAIT returns when the phase changes, at once on a finished job, and after its time on a
    PENDING one."""
    job_id = create(client)
    svc.executor.script(job_id, Complete(delay=1.0))
    run(client, job_id)
    phase_becomes(client, job_id, "EXECUTING")
    started = time.monotonic()
    doc = job(client, job_id, WAIT="20")
    assert doc["phase"] == "COMPLETED"
    assert time.monotonic() - started < 10  # woken by the change, not by the 20 s
    # on a job that is not active, WAIT answers at once
    started = time.monotonic()
    assert job(client, job_id, WAIT="20")["phase"] == "COMPLETED"
    assert time.monotonic() - started < 5
    # a PENDING job is active: WAIT holds it for its time, then answers the same phase
    pending = create(client)
    started = time.monotonic()
    assert job(client, pending, WAIT="1")["phase"] == "PENDING"
    assert 0.9 < time.monotonic() - started < 5


def test_jobs_stay_queued_while_the_executor_is_down(
    tmp_path: Path,
) -> None:
    """While the executor is not alive, /health/ready is 503 with its reason and jobs stay QUEUED;
    once it is back they run."""
    executor = FakeExecutor(capacity=1)
    executor.down = "the cluster is unreachable"
    with InProcessService(tmp_path / "data", executor=executor) as svc:
        client = svc.client()
        ready = client.get("/health/ready")
        assert ready.status_code == 503
        assert ready.json()["checks"]["executor"]["problem"] == "the cluster is unreachable"
        job_id = create(client, PHASE="RUN")
        time.sleep(0.3)
        assert client.get(f"/jobs/{job_id}/phase").text == "QUEUED"
        assert executor.batches == []
        executor.down = None
        assert final(client, job_id)["phase"] == "COMPLETED"
        assert client.get("/health/ready").status_code == 200


# -- owners ------------------------------------------------------------------------------------


TOKENS = {"tok-alice": "alice", "tok-bob": "bob", "tok-olga": "olga"}


def test_an_owner_sees_only_its_own_jobs(tmp_path: Path) -> None:
    """In token mode another owner gets 404 for a job and an empty list, an anonymous caller 401, an
    operator everything."""
    with InProcessService(
        tmp_path / "data", auth_mode="token", tokens=TOKENS, operators=["olga"]
    ) as svc:
        alice = svc.client(headers={"Authorization": "Bearer tok-alice"})
        bob = svc.client(headers={"Authorization": "Bearer tok-bob"})
        olga = svc.client(headers={"Authorization": "Bearer tok-olga"})
        anonymous = svc.client()
        job_id = create(alice)
        assert job(alice, job_id)["ownerId"] == "alice"
        # another owner gets the answer an unknown id gets, whatever it tries
        for method, suffix in (("GET", ""), ("GET", "/phase"), ("DELETE", "")):
            assert bob.request(method, f"/jobs/{job_id}{suffix}").status_code == 404
        assert bob.post(f"/jobs/{job_id}/phase", data={"PHASE": "RUN"}).status_code == 404
        assert bob.get("/jobs", headers=JSON).json()["jobs"] == []
        assert anonymous.get("/jobs").status_code == 401
        # an operator sees everyone's
        assert job(olga, job_id)["ownerId"] == "alice"
        listed = olga.get("/jobs", headers=JSON).json()["jobs"]
        assert [j["jobId"] for j in listed] == [job_id]
        assert client_phase(alice, job_id) == "PENDING"


def client_phase(client: httpx.Client, job_id: str) -> str:
    """The job's phase, as ``client``'s owner sees it."""
    return client.get(f"/jobs/{job_id}/phase").text


# -- JobService directly -----------------------------------------------------------------------


def test_job_service_policy_called_directly(svc: InProcessService) -> None:
    """The policy without HTTP: parameters are checked with the parameter named, a job is
    found only by its owner in token mode (anonymous here: everyone), the phase rules hold."""
    service = svc.service
    job_id = service.new_job_id()
    service.prepare(job_id)
    made = svc.call(service.create(job_id, None, {"model": "sleep", "duration": "0"}, []))
    assert made.phase == Phase.PENDING and made.model_id == "sleep"
    bad = service.new_job_id()
    service.prepare(bad)
    with pytest.raises(ParameterError) as refused:
        svc.call(service.create(bad, None, {"model": "sleep", "duration": "x"}, []))
    svc.call(service.discard(bad))
    assert not (svc.data_dir / "jobs" / bad).exists()
    assert refused.value.name == "duration"
    svc.call(service.abort(job_id, None))
    assert svc.call(service.get(job_id, None)).phase == Phase.ABORTED
    with pytest.raises(PhaseConflict):
        svc.call(service.run(job_id, None))
    with pytest.raises(ParameterError):
        svc.call(service.list(None, None, None, 0))
    svc.call(service.delete(job_id, None))
    with pytest.raises(JobNotFound):
        svc.call(service.get(job_id, None))
    with pytest.raises(JobNotFound):  # not a job id at all: not even looked up
        svc.call(service.get("../etc", None))


def test_concurrent_creations_from_an_async_client(svc: InProcessService) -> None:
    """Requests sent together from the service's own loop (an async client) are served
    together: every job is created once, with its own id, and each one runs."""

    async def scenario() -> list[str]:
        async with svc.async_client() as client:
            answers = await asyncio.gather(
                *(
                    client.post("/jobs", data={"MODEL": "sleep", "DURATION": "0", "PHASE": "RUN"})
                    for _ in range(8)
                )
            )
        assert [a.status_code for a in answers] == [303] * 8
        return [a.headers["location"].rsplit("/", 1)[-1] for a in answers]

    ids = svc.call(scenario())
    assert len(set(ids)) == 8
    client = svc.client()
    assert {final(client, job_id)["phase"] for job_id in ids} == {"COMPLETED"}
    assert sorted(j for j in svc.executor.jobs_run() if j in ids) == sorted(ids)
