"""Owners: bearer tokens name them in token mode, and a job is visible only to its owner.

Another owner's job answers 404 everywhere, exactly like a job that does not exist, so
that job ids do not leak. In anonymous mode (the default) jobs have no owner.

Who may ask, and what each owner sees, is decided by the HTTP layer and JobService: the
service runs in the test's process (tests/inprocess.py), its sleep jobs emulated, once on
SQLite and once on PostgreSQL (the owner filters are SQL).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from lxml import etree

from tests.inprocess import InProcessService

UWS = "{http://www.ivoa.net/xml/UWS/v1.0}"
XSI_NIL = "{http://www.w3.org/2001/XMLSchema-instance}nil"
TOKENS = {"tok-alice": "alice", "tok-bob": "bob"}
ALICE = {"Authorization": "Bearer tok-alice"}
BOB = {"Authorization": "Bearer tok-bob"}
BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


class _Keep(logging.Handler):
    """Keeps every record it is handed, as text: message, fields (extras included) and
    traceback."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        exc = logging.Formatter().formatException(record.exc_info) if record.exc_info else ""
        self.lines.append(f"{record.getMessage()} {vars(record)!r} {exc}")


@contextlib.contextmanager
def service_log() -> Iterator[list[str]]:
    """What the service logs meanwhile: its own loggers (``astro_otf.*``) at every level
    (a server at log_level=warning writes only their warnings), the other libraries' from
    the level the test process lets through (WARNING by default, as such a server)."""
    handler = _Keep()
    own = logging.getLogger("astro_otf")
    level = own.level
    own.setLevel(logging.DEBUG)
    logging.getLogger().addHandler(handler)
    try:
        yield handler.lines
    finally:
        logging.getLogger().removeHandler(handler)
        own.setLevel(level)


@pytest.fixture(scope="module")
def token_log() -> Iterator[list[str]]:
    """The log of the module's token-mode services, from before they start."""
    with service_log() as lines:
        yield lines


@pytest.fixture(scope="module", params=BACKENDS)
def token_server(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    token_log: list[str],
) -> Iterator[InProcessService]:
    """The service in token mode (alice, bob), once on SQLite and once on PostgreSQL."""
    database_url = None
    if request.param == "postgres":
        database_url = request.getfixturevalue("pg_databases").create()
    with InProcessService(
        tmp_path_factory.mktemp(f"otf-auth-{request.param}") / "data",
        database_url=database_url,
        auth_mode="token",
        tokens=TOKENS,
    ) as service:
        yield service


@pytest.fixture(scope="module", params=BACKENDS)
def anonymous_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[InProcessService]:
    """The service in anonymous mode (the default), once on each backend."""
    database_url = None
    if request.param == "postgres":
        database_url = request.getfixturevalue("pg_databases").create()
    with InProcessService(
        tmp_path_factory.mktemp(f"otf-anonymous-{request.param}") / "data",
        database_url=database_url,
    ) as service:
        yield service


def job_dirs(server: InProcessService) -> set[str]:
    root = server.data_dir / "jobs"
    return {p.name for p in root.iterdir()} if root.is_dir() else set()


def create_job(server: InProcessService, headers: dict[str, str], run_id: str) -> str:
    """A sleep job that completes at once; returns its id once it is COMPLETED."""
    response = server.http.post(
        "/jobs",
        data={"MODEL": "sleep", "DURATION": "0", "PHASE": "RUN", "RUNID": run_id},
        headers=headers,
        timeout=30,
    )
    assert response.status_code == 303, response.text
    job_id = response.headers["location"].rsplit("/", 1)[1]
    phase = ""
    for _ in range(20):
        doc = server.http.get(
            f"/jobs/{job_id}",
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


def listed_ids(server: InProcessService, headers: dict[str, str]) -> set[str]:
    response = server.http.get("/jobs", headers=headers, timeout=10)
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
    token_server: InProcessService, headers: dict[str, str]
) -> None:
    for method, path in (("GET", "/jobs"), ("POST", "/jobs"), ("GET", "/jobs/abc/phase")):
        response = token_server.http.request(
            method,
            path,
            headers=headers,
            data={"MODEL": "sleep"} if method == "POST" else None,
            timeout=10,
        )
        assert response.status_code == 401, (method, path, response.text)
        assert response.headers["www-authenticate"].split()[0] == "Bearer"
        assert response.headers["content-type"].startswith("text/plain")
        assert "Authorization: Bearer" in response.text  # it says what to send


def test_wrong_token_is_401(token_server: InProcessService) -> None:
    before = job_dirs(token_server)
    for token in ("tok-mallory", "tok-alic", "tok-alice-extra", "alice"):
        headers = {"Authorization": f"Bearer {token}"}
        listing = token_server.http.get("/jobs", headers=headers, timeout=10)
        assert listing.status_code == 401, token
        assert listing.headers["www-authenticate"].startswith("Bearer")
        assert "not valid" in listing.text
        created = token_server.http.post(
            "/jobs",
            headers=headers,
            data={"MODEL": "sleep", "PHASE": "RUN"},
            timeout=10,
        )
        assert created.status_code == 401, token
    assert job_dirs(token_server) == before
    assert token not in listing.text  # the token is not echoed back


def test_scheme_is_case_insensitive(token_server: InProcessService) -> None:
    response = token_server.http.get(
        "/jobs", headers={"Authorization": "bearer tok-alice"}, timeout=10
    )
    assert response.status_code == 200


# -- owners and visibility -------------------------------------------------------------------


def test_owner_is_the_token_holder(token_server: InProcessService) -> None:
    http = token_server.http
    job_id = create_job(token_server, ALICE, "alice-1")
    url = f"/jobs/{job_id}"

    owner = http.get(f"{url}/owner", headers=ALICE, timeout=10)
    assert owner.status_code == 200
    assert owner.text == "alice"

    doc = etree.fromstring(http.get(url, headers=ALICE, timeout=10).content)
    owner_el = doc.find(f"{UWS}ownerId")
    assert owner_el is not None
    assert owner_el.text == "alice"
    assert owner_el.get(XSI_NIL) is None

    as_json = http.get(url, headers={**ALICE, "Accept": "application/json"}, timeout=10).json()
    assert as_json["ownerId"] == "alice"

    listing = etree.fromstring(http.get("/jobs", headers=ALICE, timeout=10).content)
    refs = {ref.get("id"): ref for ref in listing.iter(f"{UWS}jobref")}
    assert job_id in refs
    assert refs[job_id].findtext(f"{UWS}ownerId") == "alice"


def test_other_owner_sees_404_everywhere(token_server: InProcessService) -> None:
    http = token_server.http
    job_id = create_job(token_server, ALICE, "alice-private")
    base = f"/jobs/{job_id}"
    unknown = http.get("/jobs/0000000000000000", headers=BOB, timeout=10)
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
        response = http.get(f"{base}{sub}", headers=BOB, timeout=10)
        assert response.status_code == 404, (sub, response.status_code, response.text)
        assert "alice" not in response.text
    # The same answer as for an id that does not exist: nothing tells the two apart.
    assert http.get(base, headers=BOB, timeout=10).text == unknown.text.replace(
        "0000000000000000", job_id
    )
    waited = http.get(base, params={"WAIT": "1"}, headers=BOB, timeout=10)
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
        response = http.request(method, f"{base}{sub}", headers=BOB, data=data, timeout=10)
        assert response.status_code == 404, (method, sub, response.status_code, response.text)

    assert job_id not in listed_ids(token_server, BOB)

    # Nothing bob tried changed alice's job.
    doc = http.get(base, headers={**ALICE, "Accept": "application/json"}, timeout=10)
    assert doc.status_code == 200
    job = doc.json()
    assert job["phase"] == "COMPLETED"
    assert job["parameters"]["duration"] == "0"
    assert job["ownerId"] == "alice"
    assert job_id in listed_ids(token_server, ALICE)
    assert (token_server.data_dir / "jobs" / job_id).is_dir()


def test_each_owner_lists_only_their_jobs(token_server: InProcessService) -> None:
    alice_job = create_job(token_server, ALICE, "alice-list")
    bob_job = create_job(token_server, BOB, "bob-list")
    alice_sees = listed_ids(token_server, ALICE)
    bob_sees = listed_ids(token_server, BOB)
    assert alice_job in alice_sees and bob_job not in alice_sees
    assert bob_job in bob_sees and alice_job not in bob_sees
    assert not alice_sees & bob_sees
    # Filters do not widen the view.
    filtered = token_server.http.get(
        "/jobs",
        params={"PHASE": "COMPLETED", "LAST": "100"},
        headers=BOB,
        timeout=10,
    )
    assert filtered.status_code == 200
    assert alice_job not in filtered.text

    # Owners delete their own jobs.
    deleted = token_server.http.delete(f"/jobs/{bob_job}", headers=BOB, timeout=10)
    assert deleted.status_code == 303
    assert bob_job not in listed_ids(token_server, BOB)


# -- anonymous mode ------------------------------------------------------------------------------


def test_anonymous_jobs_have_no_owner(anonymous_server: InProcessService) -> None:
    http = anonymous_server.http
    response = http.post("/jobs", data={"MODEL": "sleep", "DURATION": "0"}, timeout=10)
    assert response.status_code == 303, response.text
    url = response.headers["location"]

    owner = http.get(f"{url}/owner", timeout=10)
    assert owner.status_code == 200
    assert owner.text == ""

    doc = etree.fromstring(http.get(url, timeout=10).content)
    owner_el = doc.find(f"{UWS}ownerId")
    assert owner_el is not None
    assert owner_el.get(XSI_NIL) == "true"
    assert not (owner_el.text or "").strip()

    listing = etree.fromstring(http.get("/jobs", timeout=10).content)
    ref = next(r for r in listing.iter(f"{UWS}jobref") if r.get("id") == url.rsplit("/", 1)[1])
    ref_owner = ref.find(f"{UWS}ownerId")
    assert ref_owner is not None
    assert ref_owner.get(XSI_NIL) == "true"

    # A token sent to an anonymous service changes nothing.
    with_token = http.get(f"{url}/owner", headers=ALICE, timeout=10)
    assert with_token.status_code == 200
    assert with_token.text == ""
    http.delete(url, timeout=10)


def test_tokens_are_not_stored_or_logged(
    token_server: InProcessService, token_log: list[str]
) -> None:
    """The tokens are configuration: not written to the job store, job folders or the log."""
    files = [p for p in Path(token_server.data_dir).rglob("*") if p.is_file()]
    assert any(p.suffix.startswith(".sqlite") for p in files) or token_server.settings.database_url
    for path in files:
        if path.stat().st_size < 5_000_000:
            data = path.read_bytes()
            assert b"tok-alice" not in data, path
            assert b"tok-bob" not in data, path
    assert token_log  # the requests above were logged
    for line in token_log:
        assert "tok-alice" not in line, line
        assert "tok-bob" not in line, line


# -- operators (token mode) ----------------------------------------------------------------------

OLGA = {"Authorization": "Bearer tok-olga"}


@pytest.fixture(scope="module")
def operator_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcessService]:
    """The service in token mode with olga as its operator (SQLite)."""
    with InProcessService(
        tmp_path_factory.mktemp("otf-operators") / "data",
        auth_mode="token",
        tokens={**TOKENS, "tok-olga": "olga"},
        operators=["olga"],
    ) as service:
        yield service


def test_operator_sees_and_manages_every_owner(operator_server: InProcessService) -> None:
    server = operator_server
    http = server.http
    alice_job = create_job(server, ALICE, "alice-op")
    running = http.post(
        "/jobs",
        data={"MODEL": "sleep", "DURATION": "120", "PHASE": "RUN", "RUNID": "bob-long"},
        headers=BOB,
        timeout=30,
    )
    assert running.status_code == 303, running.text
    bob_job = running.headers["location"].rsplit("/", 1)[1]

    # A non-operator sees only their own and cannot touch the other's.
    assert bob_job not in listed_ids(server, ALICE)
    refused = http.post(
        f"/jobs/{bob_job}/phase", data={"PHASE": "ABORT"}, headers=ALICE, timeout=10
    )
    assert refused.status_code == 404
    assert http.delete(f"/jobs/{bob_job}", headers=ALICE, timeout=10).status_code == 404

    # The operator lists both owners' jobs, reads them and aborts bob's.
    assert {alice_job, bob_job} <= listed_ids(server, OLGA)
    owner = http.get(f"/jobs/{alice_job}/owner", headers=OLGA, timeout=10)
    assert owner.status_code == 200 and owner.text == "alice"
    aborted = http.post(f"/jobs/{bob_job}/phase", data={"PHASE": "ABORT"}, headers=OLGA, timeout=10)
    assert aborted.status_code == 303, aborted.text
    phase = ""
    for _ in range(20):
        doc = http.get(
            f"/jobs/{bob_job}",
            params={"WAIT": "2"},
            headers={**BOB, "Accept": "application/json"},
            timeout=30,
        )
        phase = doc.json()["phase"]
        if phase == "ABORTED":
            break
    assert phase == "ABORTED"
    # ... and deletes alice's; the owners' own views agree.
    deleted = http.delete(f"/jobs/{alice_job}", headers=OLGA, timeout=10)
    assert deleted.status_code == 303
    assert alice_job not in listed_ids(server, ALICE)
    assert bob_job in listed_ids(server, BOB)
    # A job the operator creates is the operator's own, under their name.
    own = create_job(server, OLGA, "olga-own")
    assert http.get(f"/jobs/{own}/owner", headers=OLGA).text == "olga"
    assert own not in listed_ids(server, ALICE)
