"""Operator limits: the upload size (413, nothing stored) and the queue length (503 with
Retry-After, the job kept PENDING)."""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from lxml import etree

from tests.conftest import ServerProcess

UWS = "{http://www.ivoa.net/xml/UWS/v1.0}"
UPLOAD_LIMIT = 200_000
JSON = {"Accept": "application/json"}


@pytest.fixture(scope="module")
def small_upload_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = ServerProcess(
        tmp_path_factory.mktemp("otf-upload") / "data", None, max_upload_bytes=str(UPLOAD_LIMIT)
    )
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def short_queue_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = ServerProcess(
        tmp_path_factory.mktemp("otf-queue") / "data", None, max_queued_jobs="2", workers="1"
    )
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def big_image(real_data: Path) -> Path:
    path = real_data / "aegean" / "synthetic_test.fits"
    assert path.stat().st_size > UPLOAD_LIMIT
    return path


def job_ids(server: ServerProcess) -> set[str]:
    response = httpx.get(f"{server.url}/jobs", timeout=10)
    assert response.status_code == 200, response.text
    return {ref.get("id") for ref in etree.fromstring(response.content).iter(f"{UWS}jobref")}


def job_dirs(server: ServerProcess) -> set[str]:
    root = server.data_dir / "jobs"
    return {p.name for p in root.iterdir()} if root.is_dir() else set()


def stored_files(server: ServerProcess) -> set[Path]:
    root = server.data_dir / "jobs"
    return {p for p in root.rglob("*") if p.is_file()} if root.is_dir() else set()


def multipart_body(boundary: str, fields: dict[str, str], image: Path) -> bytes:
    """A multipart/form-data body: text fields, then the image as the IMAGE file part."""
    out = bytearray()
    for name, value in fields.items():
        out += (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'
        ).encode()
    out += (
        f'--{boundary}\r\nContent-Disposition: form-data; name="IMAGE"; '
        f'filename="{image.name}"\r\nContent-Type: application/fits\r\n\r\n'
    ).encode()
    out += image.read_bytes()
    out += f"\r\n--{boundary}--\r\n".encode()
    return bytes(out)


def chunks(body: bytes, size: int = 16 * 1024) -> Iterator[bytes]:
    for start in range(0, len(body), size):
        yield body[start : start + size]


# -- upload size ---------------------------------------------------------------------------


def test_upload_over_the_limit_is_413_and_stores_nothing(
    small_upload_server: ServerProcess, big_image: Path
) -> None:
    before_ids = job_ids(small_upload_server)
    before_dirs = job_dirs(small_upload_server)

    response = httpx.post(
        f"{small_upload_server.url}/jobs",
        files={"IMAGE": (big_image.name, big_image.read_bytes(), "application/fits")},
        data={"MODEL": "sep", "PHASE": "RUN"},
        timeout=30,
    )
    assert response.status_code == 413, response.text
    assert response.headers["content-type"].startswith("text/plain")
    assert str(UPLOAD_LIMIT) in response.text  # the message names the limit
    assert "location" not in response.headers

    assert job_ids(small_upload_server) == before_ids
    assert job_dirs(small_upload_server) == before_dirs


def test_chunked_upload_over_the_limit_is_413_and_stores_nothing(
    small_upload_server: ServerProcess, big_image: Path
) -> None:
    """No Content-Length to refuse early: the limit must hold while the body streams in."""
    before_ids = job_ids(small_upload_server)
    before_dirs = job_dirs(small_upload_server)
    boundary = secrets.token_hex(12)
    body = multipart_body(boundary, {"MODEL": "sep", "PHASE": "RUN"}, big_image)
    sent: list[int] = []

    def stream() -> Iterator[bytes]:
        for chunk in chunks(body):
            sent.append(len(chunk))
            yield chunk

    request = httpx.Request(
        "POST",
        f"{small_upload_server.url}/jobs",
        content=stream(),
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    assert "content-length" not in request.headers
    assert request.headers["transfer-encoding"] == "chunked"
    with httpx.Client(timeout=30) as client:
        response = client.send(request)
    # httpx reads the answer even when the server closed its side while we were sending.
    assert response.status_code == 413, response.text
    assert str(UPLOAD_LIMIT) in response.text
    assert sum(sent) > UPLOAD_LIMIT

    # The folder made for the upload is gone again, with its partial image.
    deadline = time.monotonic() + 5
    while job_dirs(small_upload_server) != before_dirs and time.monotonic() < deadline:
        time.sleep(0.1)
    assert job_dirs(small_upload_server) == before_dirs
    assert job_ids(small_upload_server) == before_ids


def test_upload_under_the_limit_is_accepted(
    small_upload_server: ServerProcess, test_data: Path
) -> None:
    """The limit refuses only what is over it, also for a chunked body."""
    image = test_data / "image2d.fits"
    assert image.stat().st_size < UPLOAD_LIMIT / 2
    boundary = secrets.token_hex(12)
    body = multipart_body(boundary, {"MODEL": "sep"}, image)
    response = httpx.post(
        f"{small_upload_server.url}/jobs",
        content=chunks(body, 4096),
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
        timeout=30,
    )
    assert response.status_code == 303, response.text
    url = response.headers["location"]
    stored = httpx.get(f"{url}/parameters/image", timeout=10)
    assert stored.status_code == 200
    assert stored.content == image.read_bytes()
    assert httpx.delete(url, timeout=10).status_code == 303


def test_replacing_the_image_over_the_limit_is_413_and_keeps_the_old_one(
    small_upload_server: ServerProcess, test_data: Path, big_image: Path
) -> None:
    small = test_data / "image2d.fits"
    created = httpx.post(
        f"{small_upload_server.url}/jobs",
        files={"IMAGE": (small.name, small.read_bytes(), "application/fits")},
        timeout=30,
    )
    assert created.status_code == 303, created.text
    url = created.headers["location"]
    job_id = url.rsplit("/", 1)[1]
    files_before = stored_files(small_upload_server)

    response = httpx.post(
        f"{url}/parameters",
        files={"IMAGE": (big_image.name, big_image.read_bytes(), "application/fits")},
        timeout=30,
    )
    assert response.status_code == 413, response.text
    assert str(UPLOAD_LIMIT) in response.text
    assert httpx.get(f"{url}/phase", timeout=10).text == "PENDING"
    assert httpx.get(f"{url}/parameters/image", timeout=10).content == small.read_bytes()
    leftovers = stored_files(small_upload_server) - files_before
    assert not leftovers, leftovers
    assert job_id in job_ids(small_upload_server)
    httpx.delete(url, timeout=10)


# -- queue length --------------------------------------------------------------------------


def create_sleep(server: ServerProcess, duration: str = "30", run: bool = False) -> httpx.Response:
    data = {"MODEL": "sleep", "DURATION": duration}
    if run:
        data["PHASE"] = "RUN"
    return httpx.post(f"{server.url}/jobs", data=data, timeout=10)


def phase_of(server: ServerProcess, job_id: str) -> str:
    response = httpx.get(f"{server.url}/jobs/{job_id}/phase", timeout=10)
    assert response.status_code == 200, response.text
    return response.text


def wait_for(server: ServerProcess, job_id: str, phase: str, timeout: float = 20) -> str:
    deadline = time.monotonic() + timeout
    now = phase_of(server, job_id)
    while now != phase and time.monotonic() < deadline:
        time.sleep(0.05)
        now = phase_of(server, job_id)
    return now


def queued(server: ServerProcess) -> set[str]:
    response = httpx.get(f"{server.url}/jobs", params={"PHASE": "QUEUED"}, timeout=10)
    assert response.status_code == 200, response.text
    return {ref.get("id") for ref in etree.fromstring(response.content).iter(f"{UWS}jobref")}


def run_together(server: ServerProcess, job_ids: list[str]) -> dict[str, int]:
    """POST PHASE=RUN to every job at the same moment; the HTTP status of each answer."""
    answers: dict[str, int] = {}
    barrier = threading.Barrier(len(job_ids))

    def run(job_id: str) -> None:
        barrier.wait()
        answers[job_id] = httpx.post(
            f"{server.url}/jobs/{job_id}/phase", data={"PHASE": "RUN"}, timeout=30
        ).status_code

    threads = [threading.Thread(target=run, args=(job_id,)) for job_id in job_ids]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(answers) == len(job_ids)
    return answers


def test_full_queue_answers_503_and_keeps_the_job_pending(
    short_queue_server: ServerProcess,
) -> None:
    server = short_queue_server
    ids: list[str] = []
    try:
        # The single worker takes the first job; two more fill the queue (max 2 QUEUED).
        for _ in range(4):
            created = create_sleep(server)
            assert created.status_code == 303, created.text
            ids.append(created.headers["location"].rsplit("/", 1)[1])
        running, second, third, refused = ids

        assert (
            httpx.post(
                f"{server.url}/jobs/{running}/phase", data={"PHASE": "RUN"}, timeout=10
            ).status_code
            == 303
        )
        assert wait_for(server, running, "EXECUTING") == "EXECUTING"
        for job_id in (second, third):
            answer = httpx.post(
                f"{server.url}/jobs/{job_id}/phase", data={"PHASE": "RUN"}, timeout=10
            )
            assert answer.status_code == 303, answer.text
            assert phase_of(server, job_id) == "QUEUED"
        assert queued(server) == {second, third}

        # The third RUN into a queue of two: 503, Retry-After, a clear message.
        full = httpx.post(f"{server.url}/jobs/{refused}/phase", data={"PHASE": "RUN"}, timeout=10)
        assert full.status_code == 503, full.text
        assert full.headers["content-type"].startswith("text/plain")
        retry_after = full.headers.get("retry-after")
        assert retry_after is not None and retry_after.isdigit() and int(retry_after) > 0
        assert "queue" in full.text.lower() and "full" in full.text.lower()
        # Not lost: still there, still PENDING, parameters intact, and it can run later.
        assert phase_of(server, refused) == "PENDING"
        doc = httpx.get(f"{server.url}/jobs/{refused}", headers=JSON, timeout=10).json()
        assert doc["parameters"]["duration"] == "30"
        assert refused in job_ids(server)
        assert queued(server) == {second, third}
        # RUN of a job already QUEUED is idempotent, full queue or not.
        repeat = httpx.post(f"{server.url}/jobs/{second}/phase", data={"PHASE": "RUN"}, timeout=10)
        assert repeat.status_code == 303, repeat.text

        # Creating with PHASE=RUN while full is refused the same way, and stores nothing.
        before_ids, before_dirs = job_ids(server), job_dirs(server)
        at_creation = create_sleep(server, run=True)
        assert at_creation.status_code == 503, at_creation.text
        assert at_creation.headers.get("retry-after", "").isdigit()
        assert "location" not in at_creation.headers
        assert job_ids(server) == before_ids
        assert job_dirs(server) == before_dirs

        # Room again once the running job is aborted and a queued one moves on.
        aborted = httpx.post(
            f"{server.url}/jobs/{running}/phase", data={"PHASE": "ABORT"}, timeout=10
        )
        assert aborted.status_code == 303
        assert wait_for(server, second, "EXECUTING") == "EXECUTING"
        again = httpx.post(f"{server.url}/jobs/{refused}/phase", data={"PHASE": "RUN"}, timeout=10)
        assert again.status_code == 303, again.text
        assert phase_of(server, refused) == "QUEUED"
    finally:
        for job_id in ids:
            httpx.delete(f"{server.url}/jobs/{job_id}", timeout=10)


def test_concurrent_runs_never_overfill_the_queue(short_queue_server: ServerProcess) -> None:
    """The limit holds when RUNs arrive together: at most max_queued_jobs (2) get QUEUED.

    A check-then-act race shows only sometimes, so several rounds of 8 simultaneous RUNs
    are tried, each on an empty queue behind one EXECUTING job.
    """
    server = short_queue_server
    created = create_sleep(server)
    assert created.status_code == 303, created.text
    running = created.headers["location"].rsplit("/", 1)[1]
    try:
        httpx.post(f"{server.url}/jobs/{running}/phase", data={"PHASE": "RUN"}, timeout=10)
        assert wait_for(server, running, "EXECUTING") == "EXECUTING"
        for round_no in range(4):
            assert queued(server) == set()
            contenders = []
            for _ in range(8):
                made = create_sleep(server)
                assert made.status_code == 303, made.text
                contenders.append(made.headers["location"].rsplit("/", 1)[1])
            answers = run_together(server, contenders)
            try:
                accepted = {job_id for job_id, status in answers.items() if status == 303}
                assert set(answers.values()) <= {303, 503}, answers
                now_queued = queued(server)
                assert len(now_queued) <= 2, (
                    f"round {round_no}: {len(now_queued)} jobs QUEUED with max_queued_jobs=2"
                )
                assert len(accepted) <= 2, (
                    f"round {round_no}: {len(accepted)} RUNs accepted with max_queued_jobs=2"
                )
                assert now_queued == accepted
                for job_id in set(contenders) - accepted:
                    assert phase_of(server, job_id) == "PENDING"
            finally:
                for job_id in contenders:
                    httpx.delete(f"{server.url}/jobs/{job_id}", timeout=10)
    finally:
        httpx.delete(f"{server.url}/jobs/{running}", timeout=10)


def test_cianna_fits_part_over_the_limit_is_413(
    small_upload_server: ServerProcess, big_image: Path, shared_dir: Path
) -> None:
    """The limit covers the CIANNA On-The-Fly upload field (``fits``) too."""
    before_ids, before_dirs = job_ids(small_upload_server), job_dirs(small_upload_server)
    xml = (shared_dir / "compat" / "cianna_otf_parameters.xml").read_bytes()
    response = httpx.post(
        f"{small_upload_server.url}/jobs/",
        files={"xml": (None, xml), "fits": (big_image.name, big_image.read_bytes())},
        timeout=30,
    )
    assert response.status_code == 413, response.text
    assert str(UPLOAD_LIMIT) in response.text
    assert job_ids(small_upload_server) == before_ids
    assert job_dirs(small_upload_server) == before_dirs


def test_form_encoded_body_over_the_limit_is_413(small_upload_server: ServerProcess) -> None:
    before_ids = job_ids(small_upload_server)
    response = httpx.post(
        f"{small_upload_server.url}/jobs",
        data={"MODEL": "sleep", "PADDING": "x" * (UPLOAD_LIMIT + 1000)},
        timeout=30,
    )
    assert response.status_code == 413, response.text
    assert str(UPLOAD_LIMIT) in response.text
    assert job_ids(small_upload_server) == before_ids
