"""The service in auth_mode = "oidc" against a stand-in provider (tests/oidc_provider.py:
key pairs made here, the JWKS served by a local HTTP thread): a user's JWT makes them the
owner of their jobs, another user's cannot see them, a member of the operators' group
manages everyone's, and each bad token gets 401 with its reason in the body and in the
WWW-Authenticate challenge.

These are decisions of the HTTP layer and the service: they run in the test's process
(tests/inprocess.py, its sleep jobs emulated), which fetches the provider's keys over HTTP
as a server does. pyvo needs a port to talk to: its test starts a real server."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import requests
from lxml import etree
from pyvo.dal.tap import AsyncTAPJob

from tests.conftest import ServerProcess
from tests.inprocess import InProcessService
from tests.oidc_provider import AUDIENCE, ISSUER, JwksServer, SigningKey, claims

UWS = "{http://www.ivoa.net/xml/UWS/v1.0}"
OPERATORS = "otf-operators"


@pytest.fixture(scope="module")
def keys() -> list[SigningKey]:
    return [SigningKey("RSA", kid="rsa-1"), SigningKey("EC", kid="ec-1")]


@pytest.fixture(scope="module")
def provider(keys: list[SigningKey]) -> Iterator[JwksServer]:
    with JwksServer(keys) as server:
        yield server


def oidc_settings(provider: JwksServer) -> dict[str, Any]:
    """The service's OIDC settings against ``provider`` (its key refresher off: the tests
    rotate the keys themselves)."""
    return {
        "auth_mode": "oidc",
        "oidc_issuer": ISSUER,
        "oidc_audience": AUDIENCE,
        "oidc_jwks_url": provider.url,
        "oidc_operator_group": OPERATORS,
        "oidc_jwks_refresh_interval": "0",
    }


@pytest.fixture(scope="module")
def oidc(
    provider: JwksServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[InProcessService]:
    """The service in OIDC mode, in the test's process."""
    with InProcessService(
        tmp_path_factory.mktemp("otf-oidc") / "data", **oidc_settings(provider)
    ) as service:
        yield service


@pytest.fixture(scope="module")
def http(oidc: InProcessService) -> httpx.Client:
    """The in-process service's shared client (each request passes its user's token)."""
    return oidc.http


@pytest.fixture(scope="module")
def oidc_server(
    provider: JwksServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """A real server in OIDC mode, for pyvo."""
    proc = ServerProcess(
        tmp_path_factory.mktemp("otf-oidc-server") / "data", None, **oidc_settings(provider)
    )
    proc.start()
    yield proc
    proc.stop()


def bearer(key: SigningKey, user: str, **extra: object) -> dict[str, str]:
    return {"Authorization": f"Bearer {key.sign(claims(user, **extra))}"}


def create_job(http: httpx.Client, headers: dict[str, str], duration: str = "0") -> str:
    response = http.post(
        "/jobs",
        data={"MODEL": "sleep", "DURATION": duration, "PHASE": "RUN"},
        headers=headers,
        timeout=30,
    )
    assert response.status_code == 303, response.text
    return response.headers["location"].rsplit("/", 1)[1]


def wait_phase(http: httpx.Client, job_id: str, headers: dict[str, str], *phases: str) -> str:
    phase = ""
    for _ in range(30):
        doc = http.get(
            f"/jobs/{job_id}",
            params={"WAIT": "2"},
            headers={**headers, "Accept": "application/json"},
            timeout=30,
        )
        assert doc.status_code == 200, doc.text
        phase = str(doc.json()["phase"])
        if phase in phases:
            return phase
    raise AssertionError(f"job {job_id} stayed {phase}")


def listed_ids(http: httpx.Client, headers: dict[str, str]) -> set[str]:
    response = http.get("/jobs", headers=headers, timeout=10)
    assert response.status_code == 200, response.text
    root = etree.fromstring(response.content)
    return {ref.get("id") for ref in root.iter(f"{UWS}jobref")}


def test_owner_sees_own_jobs_only(http: httpx.Client, keys: list[SigningKey]) -> None:
    rsa, ec = keys
    alice, bob = bearer(rsa, "alice"), bearer(ec, "bob")
    job_id = create_job(http, alice)
    assert wait_phase(http, job_id, alice, "COMPLETED") == "COMPLETED"
    owner = http.get(f"/jobs/{job_id}/owner", headers=alice, timeout=10)
    assert owner.status_code == 200 and owner.text == "alice"
    assert job_id in listed_ids(http, alice)

    for sub in ("", "/phase", "/results", "/owner"):
        response = http.get(f"/jobs/{job_id}{sub}", headers=bob, timeout=10)
        assert response.status_code == 404, (sub, response.text)
    gone = http.delete(f"/jobs/{job_id}", headers=bob, timeout=10)
    assert gone.status_code == 404
    assert job_id not in listed_ids(http, bob)
    # a fresh token of alice's (another key of the provider) is the same owner
    assert job_id in listed_ids(http, bearer(ec, "alice"))


def test_operator_group_manages_every_owner(http: httpx.Client, keys: list[SigningKey]) -> None:
    rsa, ec = keys
    alice, bob = bearer(rsa, "alice"), bearer(ec, "bob")
    olga = bearer(rsa, "olga", groups=["staff", OPERATORS])
    alice_job = create_job(http, alice)
    bob_job = create_job(http, bob, duration="120")
    wait_phase(http, alice_job, alice, "COMPLETED")
    # running (or about to): asked without WAIT, which would block while it runs
    running = http.get(f"/jobs/{bob_job}", headers={**bob, "Accept": "application/json"})
    assert running.status_code == 200, running.text
    assert running.json()["phase"] in ("EXECUTING", "QUEUED")

    seen = listed_ids(http, olga)
    assert {alice_job, bob_job} <= seen
    # not in the group: only their own
    assert alice_job not in listed_ids(http, bearer(rsa, "otto", groups=["staff"]))

    aborted = http.post(f"/jobs/{bob_job}/phase", data={"PHASE": "ABORT"}, headers=olga, timeout=10)
    assert aborted.status_code == 303, aborted.text
    assert wait_phase(http, bob_job, bob, "ABORTED") == "ABORTED"
    deleted = http.delete(f"/jobs/{alice_job}", headers=olga, timeout=10)
    assert deleted.status_code == 303, deleted.text
    assert alice_job not in listed_ids(http, alice)
    assert http.delete(f"/jobs/{bob_job}", headers=olga, timeout=10).is_redirect
    # the operator's own job is theirs
    own = create_job(http, olga)
    owner = http.get(f"/jobs/{own}/owner", headers=olga, timeout=10)
    assert owner.text == "olga"


def test_bad_tokens_get_401_with_reason(http: httpx.Client, keys: list[SigningKey]) -> None:
    rsa, _ = keys
    now = int(time.time())
    bad = {
        "expired at": rsa.sign(claims(iat=now - 7200, nbf=now - 7200, exp=now - 3600)),
        "not valid yet": rsa.sign(claims(nbf=now + 3600, exp=now + 7200)),
        "signature does not verify": SigningKey("RSA", kid="rsa-1").sign(claims()),
        f"expected {AUDIENCE!r}": rsa.sign(claims(aud="some-other-app")),
        f"expected issuer {ISSUER!r}": rsa.sign(claims(iss="https://evil.example.org")),
        "unsigned (alg none)": "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0."
        + rsa.sign(claims("olga")).split(".")[1]
        + ".",
        "do not hold": rsa.sign(claims(), kid="no-such-key"),
        "no 'preferred_username' claim": rsa.sign(claims(preferred_username=None)),
        "not a well-formed JWT": "not-a-jwt",
    }
    for reason, token in bad.items():
        response = http.get("/jobs", headers={"Authorization": f"Bearer {token}"}, timeout=10)
        assert response.status_code == 401, (reason, response.text)
        assert reason in response.text, (reason, response.text)
        challenge = response.headers["www-authenticate"]
        assert challenge.startswith('Bearer error="invalid_token", error_description="'), challenge
        assert reason.replace('"', "'") in challenge, (reason, challenge)
        assert token not in response.text or token == "not-a-jwt"
    # no token at all: the plain challenge and what to send
    none = http.get("/jobs", timeout=10)
    assert none.status_code == 401 and none.headers["www-authenticate"] == "Bearer"
    assert "Authorization: Bearer" in none.text


def test_key_rotation_and_provider_down(
    http: httpx.Client, provider: JwksServer, keys: list[SigningKey]
) -> None:
    rsa, ec = keys
    assert listed_ids(http, bearer(rsa, "alice")) is not None  # keys fetched
    # The provider is down: a known key still verifies; an unknown one cannot be checked.
    provider.down = True
    try:
        newer = SigningKey("EC", kid="ec-2")
        assert http.get("/jobs", headers=bearer(ec, "bob")).status_code == 200
        busy = http.get("/jobs", headers=bearer(newer, "bob"), timeout=10)
        assert busy.status_code == 503, busy.text
        assert "identity provider's keys cannot be read" in busy.text
        assert int(busy.headers["retry-after"]) >= 1
    finally:
        provider.down = False
    # The provider rotates: the new key works at once, the withdrawn one no more.
    provider.keys = [rsa, newer]
    try:
        assert http.get("/jobs", headers=bearer(newer, "bob")).status_code == 200
        refused = http.get("/jobs", headers=bearer(ec, "bob"), timeout=10)
        assert refused.status_code == 401 and "'ec-1'" in refused.text
    finally:
        provider.keys = list(keys)


def test_web_login_takes_a_jwt(
    oidc: InProcessService, http: httpx.Client, keys: list[SigningKey]
) -> None:
    rsa, _ = keys
    page = http.get("/ui/login", timeout=10)
    assert page.status_code == 200 and "JWT" in page.text and ISSUER in page.text
    expired = rsa.sign(claims(exp=int(time.time()) - 3600, iat=0, nbf=0))
    with oidc.client(timeout=10) as browser:
        form = browser.get("/ui/login")
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', form.text)
        assert csrf is not None
        fields = {"next": "/", "csrf_token": csrf.group(1)}
        refused = browser.post("/ui/login", data={**fields, "token": expired})
        assert refused.status_code == 401 and "expired at" in refused.text
        logged = browser.post("/ui/login", data={**fields, "token": rsa.sign(claims("alice"))})
        assert logged.status_code == 303, logged.text
        assert "otf_token" in browser.cookies
        jobs = browser.get("/")
        assert jobs.status_code == 200 and "Signed in as <strong>alice</strong>" in jobs.text
    # an expired token in the cookie: back to the login form, saying why
    with oidc.client(timeout=10) as browser:
        browser.cookies.set("otf_token", expired)
        back = browser.get("/jobs")
        assert back.status_code == 401 and "log in again" in back.text
        assert "expired at" in back.text


def test_pyvo_with_a_bearer_session(oidc_server: ServerProcess, keys: list[SigningKey]) -> None:
    rsa, _ = keys
    headers = bearer(rsa, "alice")
    with httpx.Client(base_url=oidc_server.url) as client:
        job_id = create_job(client, headers)
    session = requests.Session()
    session.headers.update(headers)
    job = AsyncTAPJob(f"{oidc_server.url}/jobs/{job_id}", session=session)
    job.wait(phases={"COMPLETED", "ERROR", "ABORTED"}, timeout=60)
    assert job.phase == "COMPLETED"
    assert job.owner == "alice"
