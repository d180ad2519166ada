"""GET /accounting and the per-owner Prometheus series add up to the jobs a test ran, on
SQLite and PostgreSQL: jobs by phase and model, wall seconds (the sum of end - start), CPU
seconds (measured by the worker code; 0 for reused results), bytes; an owner sees its own
figures, an operator everyone's, and the figures survive the jobs' deletion.

The service runs in the test's process (tests/inprocess.py): its sep jobs run the real worker
code in a thread (which measures their CPU time), its sleep jobs are emulated. ``otf
accounting`` needs a real server to talk to: its test starts one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import ServerProcess
from tests.inprocess import FakeExecutor, InProcessService, real_runs

TOKENS = {"tok-alice": "alice", "tok-bob": "bob", "tok-olga": "olga"}
ALICE = {"Authorization": "Bearer tok-alice"}
BOB = {"Authorization": "Bearer tok-bob"}
OLGA = {"Authorization": "Bearer tok-olga"}
JSON = {"Accept": "application/json"}
FINAL = ("COMPLETED", "ERROR", "ABORTED")


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[InProcessService]:
    """The service in token mode (alice, bob; olga the operator), once on SQLite and once on
    PostgreSQL (the ledger's sums are SQL)."""
    url = None
    if request.param == "postgres":
        url = request.getfixturevalue("pg_databases").create()
    with InProcessService(
        tmp_path_factory.mktemp(f"otf-accounting-{request.param}") / "data",
        executor=FakeExecutor(default=real_runs),
        database_url=url,
        auth_mode="token",
        tokens=TOKENS,
        operators=["olga"],
    ) as service:
        yield service


@pytest.fixture(scope="module")
def cli_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A real server for ``otf accounting`` to call."""
    proc = ServerProcess(
        tmp_path_factory.mktemp("otf-accounting-cli") / "data",
        None,
        auth_mode="token",
        tokens=json.dumps(TOKENS),
        operators=json.dumps(["olga"]),
    )
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def http(server: InProcessService) -> httpx.Client:
    """The in-process service's shared client (each request passes its owner's token)."""
    return server.http


def create(
    http: httpx.Client,
    headers: dict[str, str],
    fields: dict[str, str],
    image: Path | None = None,
) -> str:
    """A new job of the owner ``headers`` names (with ``image`` uploaded); its id."""
    files = {"IMAGE": (image.name, image.read_bytes(), "application/fits")} if image else None
    r = http.post("/jobs", data=fields, files=files, headers=headers, timeout=30)
    assert r.status_code == 303, r.text
    return r.headers["location"].rsplit("/", 1)[1]


def post(http: httpx.Client, headers: dict[str, str], path: str, **data: str) -> None:
    """A form POST to ``path`` that must answer 303."""
    r = http.post(path, data=data, headers=headers, timeout=30)
    assert r.status_code == 303, r.text


def final(http: httpx.Client, headers: dict[str, str], job_id: str) -> dict[str, Any]:
    """The job's document once it has ended (WAITing for it, at most two minutes)."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        doc: dict[str, Any] = http.get(
            f"/jobs/{job_id}",
            params={"WAIT": "10"},
            headers={**headers, **JSON},
            timeout=30,
        ).json()
        if doc["phase"] in FINAL:
            return doc
    raise AssertionError(f"job {job_id} did not end")


def seconds(doc: dict[str, Any]) -> float:
    """The job's wall time: end - start (0 for a job that never started)."""
    if doc["startTime"] is None:
        return 0.0
    start = datetime.fromisoformat(doc["startTime"].replace("Z", "+00:00"))
    end = datetime.fromisoformat(doc["endTime"].replace("Z", "+00:00"))
    return (end - start).total_seconds()


def accounting(http: httpx.Client, headers: dict[str, str], **params: str) -> httpx.Response:
    """GET /accounting as the owner ``headers`` names."""
    return http.get("/accounting", params=params, headers=headers, timeout=30)


def figures(http: httpx.Client, headers: dict[str, str], **params: str) -> dict[str, Any]:
    """The /accounting document, which must be JSON and 200."""
    r = accounting(http, headers, **params)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/json")
    return dict(r.json())


def by_owner(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The document's per-owner figures, by owner."""
    return {o["owner"]: o for o in document["owners"]}


def scrape(http: httpx.Client) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of /metrics, by (name, sorted labels)."""
    r = http.get("/metrics", timeout=30)
    assert r.status_code == 200
    out = {}
    for family in text_string_to_metric_families(r.text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def test_accounting_adds_up_and_survives_deletion(http: httpx.Client, real_data: Path) -> None:
    """Real runs, a reuse, an aborted job and a time-limited one add up per owner in /accounting and
    in Prometheus, and deleting the jobs keeps the period's figures."""
    image = real_data / "aegean" / "synthetic_test.fits"
    started = datetime.now(UTC) - timedelta(seconds=5)
    alice: list[str] = []
    # two real runs (the second with another threshold), then a repeat of the first, which
    # takes its results (reuse: no CPU, no wall time)
    alice.append(create(http, ALICE, {"MODEL": "sep", "PHASE": "RUN"}, image))
    alice.append(create(http, ALICE, {"MODEL": "sep", "THRESH": "8", "PHASE": "RUN"}, image))
    first = final(http, ALICE, alice[0])
    assert first["phase"] == "COMPLETED"
    alice.append(create(http, ALICE, {"MODEL": "sep", "PHASE": "RUN"}, image))
    # a job aborted before it ran, and one stopped by its time limit
    alice.append(create(http, ALICE, {"MODEL": "sleep", "DURATION": "30"}))
    post(http, ALICE, f"/jobs/{alice[-1]}/phase", PHASE="ABORT")
    alice.append(create(http, ALICE, {"MODEL": "sleep", "DURATION": "30"}))
    post(http, ALICE, f"/jobs/{alice[-1]}/executionduration", EXECUTIONDURATION="1")
    post(http, ALICE, f"/jobs/{alice[-1]}/phase", PHASE="RUN")
    bob = [create(http, BOB, {"MODEL": "sleep", "DURATION": "0.2", "PHASE": "RUN"})]

    docs = {job_id: final(http, ALICE, job_id) for job_id in alice}
    docs.update({job_id: final(http, BOB, job_id) for job_id in bob})
    phases = [docs[j]["phase"] for j in alice]
    assert phases == ["COMPLETED", "COMPLETED", "COMPLETED", "ABORTED", "ABORTED"], phases
    assert docs[alice[2]]["jobInfo"]["cached_from"] == alice[0]
    assert docs[alice[2]]["jobInfo"]["cpu_seconds"] == 0
    runs = [docs[alice[0]], docs[alice[1]]]
    assert all(d["jobInfo"]["cpu_seconds"] > 0 for d in runs)

    # alice sees her own figures only
    mine = figures(http, ALICE)
    assert [o["owner"] for o in mine["owners"]] == ["alice"]
    (me,) = mine["owners"]
    assert me["jobs"]["by_phase"] == {"ABORTED": 2, "COMPLETED": 3}
    assert me["jobs"]["by_model"] == {"sep": 3, "sleep": 2}
    assert me["jobs"]["total"] == 5
    assert me["wall_seconds"] == pytest.approx(sum(seconds(docs[j]) for j in alice), abs=0.02)
    assert me["wall_seconds"] >= 1.0  # the time-limited job ran about a second
    cpu = sum(float(docs[j]["jobInfo"].get("cpu_seconds") or 0) for j in alice)
    assert me["cpu_seconds"] == pytest.approx(cpu, abs=0.01) and cpu > 0
    inputs = sum(docs[j]["jobInfo"]["input"]["bytes"] for j in alice[:3])
    listed = sum(r["size"] or 0 for j in alice for r in docs[j]["results"])
    assert me["bytes_computed"] == me["bytes_stored"] >= inputs + listed
    assert me["active_jobs"] == 0
    assert me["quota"]["active_jobs"] == {"used": 0, "limit": None}

    # bob: his own; another owner's is 403, his own by name is fine
    theirs = figures(http, BOB)
    (him,) = theirs["owners"]
    assert him["owner"] == "bob" and him["jobs"]["by_phase"] == {"COMPLETED": 1}
    assert him["wall_seconds"] == pytest.approx(seconds(docs[bob[0]]), abs=0.02)
    assert him["wall_seconds"] >= 0.2
    forbidden = accounting(http, BOB, OWNER="alice")
    assert forbidden.status_code == 403 and "operator" in forbidden.text
    assert [o["owner"] for o in figures(http, BOB, OWNER="bob")["owners"]] == ["bob"]

    # the operator sees both, and the totals are their sums
    every = figures(http, OLGA, SINCE=started.isoformat())
    owners = by_owner(every)
    assert set(owners) == {"alice", "bob"}
    assert owners["alice"] == me
    totals = every["totals"]
    assert totals["jobs"]["by_phase"] == {"ABORTED": 2, "COMPLETED": 4}
    assert totals["jobs"]["by_model"] == {"sep": 3, "sleep": 3}
    for key in ("cpu_seconds", "wall_seconds"):
        assert totals[key] == pytest.approx(me[key] + him[key], abs=0.002)
    assert totals["bytes_stored"] == me["bytes_stored"] + him["bytes_stored"]
    assert [o["owner"] for o in figures(http, OLGA, OWNER="alice")["owners"]] == ["alice"]

    # Prometheus has the same per owner
    samples = scrape(http)
    label = (("owner", "alice"),)
    assert samples[("otf_owner_cpu_seconds_total", label)] == pytest.approx(
        me["cpu_seconds"], abs=0.001
    )
    assert samples[("otf_owner_wall_seconds_total", label)] == pytest.approx(
        me["wall_seconds"], abs=0.001
    )
    assert samples[("otf_owner_stored_bytes", label)] == me["bytes_stored"]
    ended = (("owner", "alice"), ("phase", "COMPLETED"))
    assert samples[("otf_owner_jobs_ended_total", ended)] == 3
    assert samples[("otf_owner_jobs_ended_total", (("owner", "bob"), ("phase", "COMPLETED")))] == 1

    # deleted jobs: the period's figures stay, only what is stored now goes
    for job_id in alice:
        r = http.delete(f"/jobs/{job_id}", headers=ALICE, timeout=30)
        assert r.status_code == 303
    (after,) = figures(http, ALICE)["owners"]
    assert after["bytes_stored"] == 0
    assert {k: after[k] for k in ("jobs", "cpu_seconds", "wall_seconds", "bytes_computed")} == {
        k: me[k] for k in ("jobs", "cpu_seconds", "wall_seconds", "bytes_computed")
    }
    label_ended = (("owner", "alice"), ("phase", "COMPLETED"))
    assert scrape(http)[("otf_owner_jobs_ended_total", label_ended)] == 3

    # a period before the test holds none of it
    before = figures(http, OLGA, UNTIL=(started - timedelta(hours=1)).isoformat())
    assert before["totals"]["jobs"]["total"] == 0


@pytest.mark.parametrize(
    ("params", "named"),
    [
        ({"SINCE": "yesterday"}, "SINCE"),
        ({"UNTIL": "2026-13-01T00:00:00Z"}, "UNTIL"),
        ({"SINCE": "2026-01-02T00:00:00Z", "UNTIL": "2026-01-01T00:00:00Z"}, "SINCE"),
        ({"OWNER": ""}, "OWNER"),
    ],
)
def test_bad_periods_are_400_naming_the_parameter(
    http: httpx.Client, params: dict[str, str], named: str
) -> None:
    """A period that cannot be read, or that ends before it starts, is 400 naming the parameter."""
    r = accounting(http, ALICE, **params)
    assert r.status_code == 400, r.text
    assert r.text.startswith(f"{named}:")


def test_accounting_needs_a_token(http: httpx.Client) -> None:
    """In token mode an anonymous caller gets 401."""
    assert http.get("/accounting", timeout=10).status_code == 401


def otf(server: ServerProcess, token: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``otf`` run against ``server`` with ``token``, as a user's shell would."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTF_")}
    env.update(OTF_URL=server.url, OTF_TOKEN=token, COLUMNS="250", NO_COLOR="1", TERM="dumb")
    return subprocess.run(
        [str(Path(sys.executable).with_name("otf")), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_cli_prints_the_accounting(cli_server: ServerProcess) -> None:
    """``otf accounting`` prints the same figures as /accounting (JSON and a table), refuses another
    owner's to a non-operator and names a bad SINCE."""
    server = cli_server
    with httpx.Client(base_url=server.url, timeout=30) as http:
        for headers in (ALICE, BOB):
            job = {"MODEL": "sleep", "DURATION": "0", "PHASE": "RUN"}
            final(http, headers, create(http, headers, job))
        as_json = otf(server, "tok-olga", "accounting", "--json")
        assert as_json.returncode == 0, as_json.stderr
        doc = json.loads(as_json.stdout)
        period = doc["period"]
        assert doc == figures(http, OLGA, SINCE=period["since"], UNTIL=period["until"])
    table = otf(server, "tok-olga", "accounting", "--since", "2020-01-01")
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    for owner in ("alice", "bob", "total"):
        assert any(line.strip("│┃ ").startswith(owner) for line in lines), table.stdout
    refused = otf(server, "tok-bob", "accounting", "--owner", "alice")
    assert refused.returncode == 4
    assert "operators" in refused.stderr
    bad = otf(server, "tok-bob", "accounting", "--since", "soon")
    assert bad.returncode == 4 and "SINCE" in bad.stderr
