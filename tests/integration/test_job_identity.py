"""Jobs people can recognise, follow and reuse (issue 14), over real HTTP on SQLite and
PostgreSQL: the image's name and header in the job, the list and the catalogue; list filters;
the job log; the event stream; reuse of results; reruns with changed parameters."""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import io
import json
import queue
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from astropy.io.votable import parse
from lxml import etree

from tests.conftest import ServerProcess
from tests.integration.test_uws_api import job_json, valid_xml, wait_final

UWS = "{http://www.ivoa.net/xml/UWS/v1.0}"
JSON = {"Accept": "application/json"}


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def image(real_data: Path) -> Path:
    return real_data / "aegean" / "synthetic_test.fits"


def submit(
    client: httpx.Client, image: Path, fields: dict[str, str], name: str = "field A.fits"
) -> str:
    with image.open("rb") as f:
        r = client.post("/jobs", data=fields, files={"IMAGE": (name, f, "application/fits")})
    assert r.status_code == 303, r.text
    return r.headers["location"].rsplit("/", 1)[-1]


def listing(client: httpx.Client, **params: Any) -> list[dict[str, Any]]:
    r = client.get("/jobs", params=params, headers=JSON)
    assert r.status_code == 200, r.text
    jobs: list[dict[str, Any]] = r.json()["jobs"]
    return jobs


# -- identity ------------------------------------------------------------------------------


def test_the_image_name_and_header_follow_the_job(
    client: httpx.Client, image: Path, uws_schema: etree.XMLSchema
) -> None:
    tag = f"id-{time.monotonic_ns()}"
    job_id = submit(client, image, {"PHASE": "RUN", "RUNID": tag}, name=f"../{tag} field.fits")
    doc = wait_final(client, job_id)
    assert doc["phase"] == "COMPLETED", doc["errorSummary"]
    seen = doc["jobInfo"]["input"]
    # the client's name, without its path; the bytes' sha256; the header's facts
    assert seen["filename"] == f"{tag} field.fits"
    assert seen["sha256"] == hashlib.sha256(image.read_bytes()).hexdigest()
    assert seen["bytes"] == image.stat().st_size
    assert len(seen["shape"]) == 2 and all(n > 0 for n in seen["shape"])
    # the XML document carries it flattened, and stays valid UWS
    xml = valid_xml(uws_schema, client.get(f"/jobs/{job_id}").content)
    infos = {el.get("id") or el.tag: el.text for el in xml.find(f"{UWS}jobInfo")}
    assert any(v == f"{tag} field.fits" for v in infos.values()), infos

    # the list: name, model, sources, end time, preview; filtered by run id and name
    (entry,) = listing(client, RUNID=tag)
    assert entry["jobId"] == job_id
    assert entry["image"] == f"{tag} field.fits"
    assert entry["modelId"] == "sep"
    assert entry["sources"] == doc["jobInfo"]["n_sources"] > 0
    assert entry["endTime"].endswith("Z")
    assert entry["preview"].endswith(f"/jobs/{job_id}/results/preview")
    assert [j["jobId"] for j in listing(client, IMAGE=f"{tag} field.fits")] == [job_id]
    assert [j["jobId"] for j in listing(client, IMAGE=f"{tag}*")] == [job_id]
    assert listing(client, IMAGE=f"{tag}_field.fits") == []  # _ is no SQL wildcard here
    assert listing(client, RUNID=tag + "x") == []
    assert client.get("/jobs", params={"RUNID": "a\x01b"}).status_code == 400

    # the catalogue says what it was made from
    table = parse(io.BytesIO(client.get(f"/jobs/{job_id}/results/result").content))
    infos_vot = {info.name: info.value for info in table.resources[0].infos}
    assert infos_vot["input_filename"] == f"{tag} field.fits"
    assert infos_vot["input_sha256"] == seen["sha256"]
    prov = client.get(f"/jobs/{job_id}/provenance").text
    assert f"{tag} field.fits" in prov


# -- the log -------------------------------------------------------------------------------


def test_the_job_log_is_served_whole_or_by_its_tail(client: httpx.Client, image: Path) -> None:
    job_id = submit(client, image, {"PHASE": "RUN", "NOCACHE": "true"})
    assert wait_final(client, job_id)["phase"] == "COMPLETED"
    r = client.get(f"/jobs/{job_id}/log")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    lines = r.text.splitlines()
    assert len(lines) >= 2 and any("done in" in line for line in lines)
    tail = client.get(f"/jobs/{job_id}/log", params={"TAIL": 1}).text
    assert tail.splitlines() == lines[-1:]
    for bad in ("0", "-1", "x", "10001"):
        r = client.get(f"/jobs/{job_id}/log", params={"tail": bad})
        assert r.status_code == 400 and "tail" in r.text.lower(), (bad, r.text)
    assert client.get("/jobs/0123456789abcdef/log").status_code == 404


# -- reuse of results -------------------------------------------------------------------------


def test_an_identical_job_reuses_the_results(client: httpx.Client, image: Path) -> None:
    fields = {"PHASE": "RUN", "THRESH": "7.5"}
    first = submit(client, image, fields)
    done = wait_final(client, first)
    assert done["phase"] == "COMPLETED" and "cached_from" not in done["jobInfo"]

    started = time.monotonic()
    again = submit(client, image, fields, name="another name.fits")
    doc = job_json(client, again)
    elapsed = time.monotonic() - started
    assert doc["phase"] == "COMPLETED", doc
    assert elapsed < 1.0, f"a cached job took {elapsed:.2f} s"
    assert doc["jobInfo"]["cached_from"] == first
    assert doc["jobInfo"]["input"]["filename"] == "another name.fits"
    assert doc["jobInfo"]["n_sources"] == done["jobInfo"]["n_sources"]
    assert [r["id"] for r in doc["results"]] == [r["id"] for r in done["results"]]
    for result in ("result", "csv", "preview"):
        a = client.get(f"/jobs/{first}/results/{result}")
        b = client.get(f"/jobs/{again}/results/{result}")
        assert a.status_code == b.status_code == 200
        assert a.content == b.content, result
    prov = json.loads(client.get(f"/jobs/{again}/provenance").content)
    text = json.dumps(prov)
    assert "cachedFrom" in text and first in text and again in text
    assert f"the results of job {first} are reused" in client.get(f"/jobs/{again}/log").text

    # NOCACHE runs it; another threshold runs it; PENDING then RUN takes the cache
    forced = submit(client, image, {**fields, "NOCACHE": "true"})
    other = submit(client, image, {"PHASE": "RUN", "THRESH": "8"})
    pending = submit(client, image, {"THRESH": "7.5"})
    assert client.post(f"/jobs/{pending}/phase", data={"PHASE": "RUN"}).status_code == 303
    # (the newest job that computed it: the forced one, if it has finished by now)
    assert job_json(client, pending)["jobInfo"].get("cached_from") in (first, forced)
    for job_id in (forced, other):
        doc = wait_final(client, job_id)
        assert doc["phase"] == "COMPLETED" and "cached_from" not in doc["jobInfo"]
        assert "worker" in doc["jobInfo"]

    # a deleted original leaves its copies whole (hard links), and a new job runs
    assert client.delete(f"/jobs/{first}").status_code == 303
    assert client.get(f"/jobs/{again}/results/result").status_code == 200


def test_a_rerun_changes_parameters_without_sending_the_image(
    client: httpx.Client, image: Path
) -> None:
    first = submit(client, image, {"PHASE": "RUN", "THRESH": "6.5", "RUNID": "rerun-base"})
    base = wait_final(client, first)
    r = client.post(f"/jobs/{first}/rerun", data={"PHASE": "RUN", "thresh": "9"})
    assert r.status_code == 303, r.text
    again = r.headers["location"].rsplit("/", 1)[-1]
    doc = wait_final(client, again)
    assert doc["phase"] == "COMPLETED"
    assert doc["parameters"]["thresh"] == "9"
    assert doc["runId"] == "rerun-base"
    assert doc["jobInfo"]["input"]["sha256"] == base["jobInfo"]["input"]["sha256"]
    assert doc["jobInfo"]["input"]["filename"] == base["jobInfo"]["input"]["filename"]
    assert doc["jobInfo"]["n_sources"] <= base["jobInfo"]["n_sources"]
    for bad, name in (({"model": "sleep"}, "model"), ({"nonsense": "1"}, "nonsense")):
        r = client.post(f"/jobs/{first}/rerun", data=bad)
        assert r.status_code == 400 and name in r.text.lower(), r.text


# -- the event stream ------------------------------------------------------------------------


def read_events(
    url: str, out: queue.Queue[tuple[str, str, dict[str, Any]]], **headers: str
) -> None:
    """Read an event stream into ``out`` as (id, event, data) until the server closes it."""
    with contextlib.suppress(httpx.RemoteProtocolError, httpx.ReadTimeout):
        _read_events(url, out, headers)


def _read_events(
    url: str, out: queue.Queue[tuple[str, str, dict[str, Any]]], headers: dict[str, str]
) -> None:
    with httpx.stream("GET", url, headers=headers, timeout=httpx.Timeout(5, read=60)) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        fields: dict[str, str] = {}
        for line in r.iter_lines():
            if not line:
                if "event" in fields:
                    out.put((fields.get("id", ""), fields["event"], json.loads(fields["data"])))
                fields = {}
            elif not line.startswith(":"):
                key, _, value = line.partition(": ")
                fields[key] = value


def collect_until(
    out: queue.Queue[tuple[str, str, dict[str, Any]]], job_id: str, phase: str
) -> list[tuple[str, str, dict[str, Any]]]:
    seen = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        event = out.get(timeout=max(0.1, deadline - time.monotonic()))
        seen.append(event)
        if event[2].get("job_id") == job_id and event[2].get("phase") == phase:
            return seen
    raise AssertionError(f"no {phase} event for {job_id}: {seen}")


def test_the_event_stream_pushes_phases_and_resumes(
    server: ServerProcess, client: httpx.Client, image: Path
) -> None:
    events: queue.Queue[tuple[str, str, dict[str, Any]]] = queue.Queue()
    threading.Thread(
        target=read_events, args=(f"{server.url}/jobs/events", events), daemon=True
    ).start()
    time.sleep(0.5)  # the stream is open
    job_id = submit(client, image, {"PHASE": "RUN", "NOCACHE": "true", "RUNID": "events"})
    seen = collect_until(events, job_id, "COMPLETED")
    mine = [(i, kind, data) for i, kind, data in seen if data.get("job_id") == job_id]
    phases = [data["phase"] for _, kind, data in mine if kind == "phase"]
    assert phases[0] == "QUEUED" and phases[-1] == "COMPLETED", phases
    assert mine[-1][2]["run_id"] == "events" and mine[-1][2]["sources"] > 0
    ids = [i for i, _, _ in seen]
    assert all(i.rsplit("-", 1)[1].isdigit() for i in ids)

    # resumed after the first event: the rest comes again
    replay: queue.Queue[tuple[str, str, dict[str, Any]]] = queue.Queue()
    threading.Thread(
        target=read_events,
        args=(f"{server.url}/jobs/events?job={job_id}", replay),
        kwargs={"Last-Event-ID": mine[0][0]},
        daemon=True,
    ).start()
    again = collect_until(replay, job_id, "COMPLETED")
    assert [i for i, _, _ in again] == [i for i, _, _ in mine[1:]]

    # an id from another run of the server: a reset first
    stale: queue.Queue[tuple[str, str, dict[str, Any]]] = queue.Queue()
    threading.Thread(
        target=read_events,
        args=(f"{server.url}/jobs/events", stale),
        kwargs={"Last-Event-ID": "00000000-5"},
        daemon=True,
    ).start()
    assert stale.get(timeout=10)[1] == "reset"


def test_event_stream_filters_are_checked(client: httpx.Client) -> None:
    r = client.get("/jobs/events", params={"JOB": "x" * 65})
    assert r.status_code == 400 and "job" in r.text.lower()


# -- webhooks --------------------------------------------------------------------------------


class _Hook(http.server.BaseHTTPRequestHandler):
    notes: queue.Queue[dict[str, Any]] = queue.Queue()

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["content-length"]))
        self.notes.put(json.loads(body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def test_a_job_notifies_only_an_allowed_host(tmp_path: Path, image: Path) -> None:
    receiver = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hook)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    hook = f"http://127.0.0.1:{receiver.server_address[1]}/done"
    server = ServerProcess(tmp_path / "data", None, webhook_hosts='["127.0.0.1"]')
    server.start()
    try:
        with httpx.Client(base_url=server.url, timeout=60) as c:
            job_id = submit(c, image, {"PHASE": "RUN", "NOTIFY": hook, "RUNID": "hooked"})
            assert wait_final(c, job_id)["phase"] == "COMPLETED"
            note = _Hook.notes.get(timeout=20)
            assert note["job_id"] == job_id and note["phase"] == "COMPLETED"
            assert note["run_id"] == "hooked"
            for url, problem in (
                ("http://169.254.169.254/latest", "not one this service calls"),
                ("file:///etc/passwd", "not an http"),
                ("http://user:pw@127.0.0.1/x", "password"),
            ):
                r = c.post("/jobs", data={"MODEL": "sleep", "DURATION": "0.1", "NOTIFY": url})
                assert r.status_code == 400 and "notify" in r.text.lower(), r.text
                assert problem in r.text, r.text
    finally:
        server.stop()
        receiver.shutdown()


# -- stored uploads in jobs -------------------------------------------------------------------


def test_one_upload_serves_three_jobs_with_different_thresholds(
    client: httpx.Client, image: Path
) -> None:
    with image.open("rb") as f:
        r = client.post("/uploads", files={"file": ("deep field.fits", f, "application/fits")})
    assert r.status_code in (200, 201), r.text
    upload = r.json()
    refs = [
        f"upload:{upload['upload_id']}",
        f"sha256:{upload['sha256']}",
        f"upload:{upload['upload_id']}",
    ]
    jobs = []
    for thresh, ref in zip(("3", "60", "600"), refs, strict=True):
        r = client.post(
            "/jobs", data={"PHASE": "RUN", "IMAGE": ref, "THRESH": thresh, "NOCACHE": "true"}
        )
        assert r.status_code == 303, r.text
        jobs.append(r.headers["location"].rsplit("/", 1)[-1])
    found = []
    for job_id in jobs:
        doc = wait_final(client, job_id)
        assert doc["phase"] == "COMPLETED", doc["errorSummary"]
        assert doc["jobInfo"]["input"]["upload_id"] == upload["upload_id"]
        assert doc["jobInfo"]["input"]["filename"] == "deep field.fits"
        assert doc["jobInfo"]["input"]["sha256"] == upload["sha256"]
        # the job's own IMAGE is the stored file, served back like an uploaded one
        assert client.get(f"/jobs/{job_id}/parameters/image").content == image.read_bytes()
        found.append(doc["jobInfo"]["n_sources"])
    assert found[0] > found[1] > found[2] > 0
    # deleting the upload leaves the jobs' inputs whole
    assert client.delete(f"/uploads/{upload['upload_id']}").status_code == 204
    assert client.get(f"/jobs/{jobs[0]}/parameters/image").status_code == 200
    for ref, problem in (
        (f"upload:{upload['upload_id']}", "upload"),
        ("upload:", "image"),
        ("sha256:xyz", "image"),
        ("https://example.org/a.fits", "image"),
    ):
        r = client.post("/jobs", data={"PHASE": "RUN", "IMAGE": ref})
        assert 400 <= r.status_code < 500 and problem in r.text.lower(), (ref, r.text)


def test_a_replaced_image_is_what_the_job_and_its_catalogue_name(
    client: httpx.Client, image: Path, test_data: Path
) -> None:
    job_id = submit(client, image, {"THRESH": "6"}, name="first.fits")
    other = test_data / "image2d.fits"
    with other.open("rb") as f:
        r = client.post(
            f"/jobs/{job_id}/parameters", files={"IMAGE": ("second.fits", f, "application/fits")}
        )
    assert r.status_code == 303, r.text
    seen = job_json(client, job_id)["jobInfo"]["input"]
    assert seen["filename"] == "second.fits"
    assert seen["sha256"] == hashlib.sha256(other.read_bytes()).hexdigest()
    assert client.post(f"/jobs/{job_id}/phase", data={"PHASE": "RUN"}).status_code == 303
    assert wait_final(client, job_id)["phase"] == "COMPLETED"
    table = parse(io.BytesIO(client.get(f"/jobs/{job_id}/results/result").content))
    infos = {info.name: info.value for info in table.resources[0].infos}
    assert infos["input_filename"] == "second.fits"
    assert infos["input_sha256"] == seen["sha256"]
