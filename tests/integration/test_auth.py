"""Owners: bearer tokens name them in token mode, and a job is visible only to its owner.

Another owner's job answers 404 everywhere, exactly like a job that does not exist, so
that job ids do not leak. In anonymous mode (the default) jobs have no owner.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from lxml import etree

from tests.conftest import ServerProcess

UWS = "{http://www.ivoa.net/xml/UWS/v1.0}"
XSI_NIL = "{http://www.w3.org/2001/XMLSchema-instance}nil"
TOKENS = {"tok-alice": "alice", "tok-bob": "bob"}
ALICE = {"Authorization": "Bearer tok-alice"}
BOB = {"Authorization": "Bearer tok-bob"}


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def token_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    database_url = None
    if request.param == "postgres":
        database_url = request.getfixturevalue("pg_databases").create()
    proc = ServerProcess(
        tmp_path_factory.mktemp(f"otf-auth-{request.param}") / "data",
        database_url,
        auth_mode="token",
        tokens=json.dumps(TOKENS),
    )
    proc.start()
    yield proc
    proc.stop()


def job_dirs(server: ServerProcess) -> set[str]:
    root = server.data_dir / "jobs"
    return {p.name for p in root.iterdir()} if root.is_dir() else set()


def create_job(server: ServerProcess, headers: dict[str, str], run_id: str) -> str:
    """A sleep job that completes at once; returns its id once it is COMPLETED."""
    response = httpx.post(
        f"{server.url}/jobs",
        data={"MODEL": "sleep", "DURATION": "0", "PHASE": "RUN", "RUNID": run_id},
        headers=headers,
        timeout=30,
    )
    assert response.status_code == 303, response.text
    job_id = response.headers["location"].rsplit("/", 1)[1]
    phase = ""
    for _ in range(20):
        doc = httpx.get(
            f"{server.url}/jobs/{job_id}",
            params={"WAIT": "2"},
            headers={**headers, "Accept": "application/json"},
            timeout=30,
        )
        assert doc.status_code == 200, doc.text
        phase = doc.json()["phase"]
        if phase in ("COMPLETED", "ERROR", "ABORTED"):
            break
    assert phase == "COMPLETED"
    return job_id


def listed_ids(server: ServerProcess, headers: dict[str, str]) -> set[str]:
    response = httpx.get(f"{server.url}/jobs", headers=headers, timeout=10)
    assert response.status_code == 200, response.text
    root = etree.fromstring(response.content)
    return {ref.get("id") for ref in root.iter(f"{UWS}jobref")}


# -- who may ask ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer"},
        {"Authorization": "Basic dG9rLWFsaWNlOg=="},
        {"Authorization": "tok-alice"},
    ],
    ids=["none", "empty-bearer", "basic", "no-scheme"],
)
def test_missing_token_is_401_with_bearer_challenge(
    token_server: ServerProcess, headers: dict[str, str]
) -> None:
    for method, path in (("GET", "/jobs"), ("POST", "/jobs"), ("GET", "/jobs/abc/phase")):
        response = httpx.request(
            method,
            f"{token_server.url}{path}",
            headers=headers,
            data={"MODEL": "sleep"} if method == "POST" else None,
            timeout=10,
        )
        assert response.status_code == 401, (method, path, response.text)
        assert response.headers["www-authenticate"].split()[0] == "Bearer"
        assert response.headers["content-type"].startswith("text/plain")
        assert "Authorization: Bearer" in response.text  # it says what to send


def test_wrong_token_is_401(token_server: ServerProcess) -> None:
    before = job_dirs(token_server)
    for token in ("tok-mallory", "tok-alic", "tok-alice-extra", "alice"):
        headers = {"Authorization": f"Bearer {token}"}
        listing = httpx.get(f"{token_server.url}/jobs", headers=headers, timeout=10)
        assert listing.status_code == 401, token
        assert listing.headers["www-authenticate"].startswith("Bearer")
        assert "not valid" in listing.text
        created = httpx.post(
            f"{token_server.url}/jobs",
            headers=headers,
            data={"MODEL": "sleep", "PHASE": "RUN"},
            timeout=10,
        )
        assert created.status_code == 401, token
    assert job_dirs(token_server) == before
    assert token not in listing.text  # the token is not echoed back


def test_scheme_is_case_insensitive(token_server: ServerProcess) -> None:
    response = httpx.get(
        f"{token_server.url}/jobs", headers={"Authorization": "bearer tok-alice"}, timeout=10
    )
    assert response.status_code == 200


# -- owners and visibility -------------------------------------------------------------------


def test_owner_is_the_token_holder(token_server: ServerProcess) -> None:
    job_id = create_job(token_server, ALICE, "alice-1")
    url = f"{token_server.url}/jobs/{job_id}"

    owner = httpx.get(f"{url}/owner", headers=ALICE, timeout=10)
    assert owner.status_code == 200
    assert owner.text == "alice"

    doc = etree.fromstring(httpx.get(url, headers=ALICE, timeout=10).content)
    owner_el = doc.find(f"{UWS}ownerId")
    assert owner_el is not None
    assert owner_el.text == "alice"
    assert owner_el.get(XSI_NIL) is None

    as_json = httpx.get(url, headers={**ALICE, "Accept": "application/json"}, timeout=10).json()
    assert as_json["ownerId"] == "alice"

    listing = etree.fromstring(
        httpx.get(f"{token_server.url}/jobs", headers=ALICE, timeout=10).content
    )
    refs = {ref.get("id"): ref for ref in listing.iter(f"{UWS}jobref")}
    assert job_id in refs
    assert refs[job_id].findtext(f"{UWS}ownerId") == "alice"


def test_other_owner_sees_404_everywhere(token_server: ServerProcess) -> None:
    job_id = create_job(token_server, ALICE, "alice-private")
    base = f"{token_server.url}/jobs/{job_id}"
    unknown = httpx.get(f"{token_server.url}/jobs/0000000000000000", headers=BOB, timeout=10)
    assert unknown.status_code == 404

    reads = [
        "",
        "/phase",
        "/results",
        "/results/result",
        "/parameters",
        "/parameters/model",
        "/parameters/duration",
        "/owner",
        "/destruction",
        "/executionduration",
        "/quote",
        "/error",
    ]
    for sub in reads:
        response = httpx.get(f"{base}{sub}", headers=BOB, timeout=10)
        assert response.status_code == 404, (sub, response.status_code, response.text)
        assert "alice" not in response.text
    # The same answer as for an id that does not exist: nothing tells the two apart.
    assert httpx.get(base, headers=BOB, timeout=10).text == unknown.text.replace(
        "0000000000000000", job_id
    )
    waited = httpx.get(base, params={"WAIT": "1"}, headers=BOB, timeout=10)
    assert waited.status_code == 404

    writes: list[tuple[str, str, dict[str, str] | None]] = [
        ("POST", "/phase", {"PHASE": "ABORT"}),
        ("POST", "/phase", {"PHASE": "RUN"}),
        ("POST", "/parameters", {"DURATION": "5"}),
        ("POST", "/destruction", {"DESTRUCTION": "2030-01-01T00:00:00Z"}),
        ("POST", "/executionduration", {"EXECUTIONDURATION": "10"}),
        ("POST", "", {"ACTION": "DELETE"}),
        ("DELETE", "", None),
    ]
    for method, sub, data in writes:
        response = httpx.request(method, f"{base}{sub}", headers=BOB, data=data, timeout=10)
        assert response.status_code == 404, (method, sub, response.status_code, response.text)

    assert job_id not in listed_ids(token_server, BOB)

    # Nothing bob tried changed alice's job.
    doc = httpx.get(base, headers={**ALICE, "Accept": "application/json"}, timeout=10)
    assert doc.status_code == 200
    job = doc.json()
    assert job["phase"] == "COMPLETED"
    assert job["parameters"]["duration"] == "0"
    assert job["ownerId"] == "alice"
    assert job_id in listed_ids(token_server, ALICE)
    assert (token_server.data_dir / "jobs" / job_id).is_dir()


def test_each_owner_lists_only_their_jobs(token_server: ServerProcess) -> None:
    alice_job = create_job(token_server, ALICE, "alice-list")
    bob_job = create_job(token_server, BOB, "bob-list")
    alice_sees = listed_ids(token_server, ALICE)
    bob_sees = listed_ids(token_server, BOB)
    assert alice_job in alice_sees and bob_job not in alice_sees
    assert bob_job in bob_sees and alice_job not in bob_sees
    assert not alice_sees & bob_sees
    # Filters do not widen the view.
    filtered = httpx.get(
        f"{token_server.url}/jobs",
        params={"PHASE": "COMPLETED", "LAST": "100"},
        headers=BOB,
        timeout=10,
    )
    assert filtered.status_code == 200
    assert alice_job not in filtered.text

    # Owners delete their own jobs.
    deleted = httpx.delete(f"{token_server.url}/jobs/{bob_job}", headers=BOB, timeout=10)
    assert deleted.status_code == 303
    assert bob_job not in listed_ids(token_server, BOB)


# -- anonymous mode ------------------------------------------------------------------------------


def test_anonymous_jobs_have_no_owner(server: ServerProcess) -> None:
    response = httpx.post(
        f"{server.url}/jobs", data={"MODEL": "sleep", "DURATION": "0"}, timeout=10
    )
    assert response.status_code == 303, response.text
    url = response.headers["location"]

    owner = httpx.get(f"{url}/owner", timeout=10)
    assert owner.status_code == 200
    assert owner.text == ""

    doc = etree.fromstring(httpx.get(url, timeout=10).content)
    owner_el = doc.find(f"{UWS}ownerId")
    assert owner_el is not None
    assert owner_el.get(XSI_NIL) == "true"
    assert not (owner_el.text or "").strip()

    listing = etree.fromstring(httpx.get(f"{server.url}/jobs", timeout=10).content)
    ref = next(r for r in listing.iter(f"{UWS}jobref") if r.get("id") == url.rsplit("/", 1)[1])
    ref_owner = ref.find(f"{UWS}ownerId")
    assert ref_owner is not None
    assert ref_owner.get(XSI_NIL) == "true"

    # A token sent to an anonymous service changes nothing.
    with_token = httpx.get(f"{url}/owner", headers=ALICE, timeout=10)
    assert with_token.status_code == 200
    assert with_token.text == ""
    httpx.delete(url, timeout=10)


def test_tokens_are_not_stored_or_logged(token_server: ServerProcess) -> None:
    """The tokens are configuration: not written to the job store, job folders or the log."""
    files = [p for p in Path(token_server.data_dir).rglob("*") if p.is_file()]
    files.append(token_server.log_path)
    assert any(p.suffix.startswith(".sqlite") for p in files) or token_server.database_url
    for path in files:
        if path.stat().st_size < 5_000_000:
            data = path.read_bytes()
            assert b"tok-alice" not in data, path
            assert b"tok-bob" not in data, path


# -- operators (token mode) ----------------------------------------------------------------------

OLGA = {"Authorization": "Bearer tok-olga"}


@pytest.fixture(scope="module")
def operator_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = ServerProcess(
        tmp_path_factory.mktemp("otf-operators") / "data",
        None,
        auth_mode="token",
        tokens=json.dumps({**TOKENS, "tok-olga": "olga"}),
        operators=json.dumps(["olga"]),
    )
    proc.start()
    yield proc
    proc.stop()


def test_operator_sees_and_manages_every_owner(operator_server: ServerProcess) -> None:
    server = operator_server
    alice_job = create_job(server, ALICE, "alice-op")
    running = httpx.post(
        f"{server.url}/jobs",
        data={"MODEL": "sleep", "DURATION": "120", "PHASE": "RUN", "RUNID": "bob-long"},
        headers=BOB,
        timeout=30,
    )
    assert running.status_code == 303, running.text
    bob_job = running.headers["location"].rsplit("/", 1)[1]

    # A non-operator sees only their own and cannot touch the other's.
    assert bob_job not in listed_ids(server, ALICE)
    refused = httpx.post(
        f"{server.url}/jobs/{bob_job}/phase", data={"PHASE": "ABORT"}, headers=ALICE, timeout=10
    )
    assert refused.status_code == 404
    assert (
        httpx.delete(f"{server.url}/jobs/{bob_job}", headers=ALICE, timeout=10).status_code == 404
    )

    # The operator lists both owners' jobs, reads them and aborts bob's.
    assert {alice_job, bob_job} <= listed_ids(server, OLGA)
    owner = httpx.get(f"{server.url}/jobs/{alice_job}/owner", headers=OLGA, timeout=10)
    assert owner.status_code == 200 and owner.text == "alice"
    aborted = httpx.post(
        f"{server.url}/jobs/{bob_job}/phase", data={"PHASE": "ABORT"}, headers=OLGA, timeout=10
    )
    assert aborted.status_code == 303, aborted.text
    phase = ""
    for _ in range(20):
        doc = httpx.get(
            f"{server.url}/jobs/{bob_job}",
            params={"WAIT": "2"},
            headers={**BOB, "Accept": "application/json"},
            timeout=30,
        )
        phase = doc.json()["phase"]
        if phase == "ABORTED":
            break
    assert phase == "ABORTED"
    # ... and deletes alice's; the owners' own views agree.
    deleted = httpx.delete(f"{server.url}/jobs/{alice_job}", headers=OLGA, timeout=10)
    assert deleted.status_code == 303
    assert alice_job not in listed_ids(server, ALICE)
    assert bob_job in listed_ids(server, BOB)
    # A job the operator creates is the operator's own, under their name.
    own = create_job(server, OLGA, "olga-own")
    assert httpx.get(f"{server.url}/jobs/{own}/owner", headers=OLGA).text == "olga"
    assert own not in listed_ids(server, ALICE)
