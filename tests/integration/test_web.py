"""The web pages over HTTP: pages render from the service's own data, the login cookie
and its CSRF token guard what a browser may change, jobs stay owner-scoped, the results
zip holds the job's files, and /docs works with no network (only local assets).

Everything here is the HTTP layer and the service's policy, so the service runs in the
test's process (tests/inprocess.py): its sep jobs run the real worker code in a thread (the
results zip holds a real catalogue and preview), its sleep jobs are emulated.
"""

from __future__ import annotations

import io
import re
import time
import zipfile
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

import httpx
import pytest

from tests.inprocess import FakeExecutor, InProcessService, real_runs

SAMPLE = Path(__file__).resolve().parents[2] / "src" / "astro_otf" / "data" / "sample.fits"
TOKENS = {"tok-alice": "alice", "tok-bob": "bob"}
ALICE = {"Authorization": "Bearer tok-alice"}
BOB = {"Authorization": "Bearer tok-bob"}
FINAL = {"COMPLETED", "ERROR", "ABORTED"}


@pytest.fixture(scope="module")
def anon_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcessService]:
    """The service in anonymous mode; its sep jobs run the real worker code."""
    with InProcessService(
        tmp_path_factory.mktemp("otf-web") / "data", executor=FakeExecutor(default=real_runs)
    ) as service:
        yield service


@pytest.fixture(scope="module")
def token_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcessService]:
    """The service in token mode (alice, bob)."""
    with InProcessService(
        tmp_path_factory.mktemp("otf-web-auth") / "data", auth_mode="token", tokens=TOKENS
    ) as service:
        yield service


class Assets(HTMLParser):
    """The URLs a page loads: scripts, style sheets, icons, images."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "script" and a.get("src"):
            self.urls.append(a["src"] or "")
        elif tag == "link" and a.get("href"):
            self.urls.append(a["href"] or "")
        elif tag == "img" and a.get("src"):
            self.urls.append(a["src"] or "")


def assets_of(html: str) -> list[str]:
    parser = Assets()
    parser.feed(html)
    return parser.urls


def csrf_of(html: str) -> str:
    match = re.search(r'<meta name="csrf-token" content="([^"]+)"', html)
    assert match, "the page has no CSRF token"
    return match.group(1)


def wait_final(client: httpx.Client, job_id: str, headers: dict[str, str] | None = None) -> str:
    deadline = time.monotonic() + 60
    phase = ""
    while time.monotonic() < deadline:
        doc = client.get(
            f"/jobs/{job_id}",
            params={"WAIT": "5"},
            headers={**(headers or {}), "Accept": "application/json"},
        )
        assert doc.status_code == 200, doc.text
        phase = str(doc.json()["phase"])
        if phase in FINAL:
            return phase
    raise AssertionError(f"job {job_id} is still {phase}")


def sleep_job(client: httpx.Client, run_id: str, headers: dict[str, str] | None = None) -> str:
    response = client.post(
        "/jobs",
        data={"MODEL": "sleep", "DURATION": "0", "PHASE": "RUN", "RUNID": run_id},
        headers=headers or {},
    )
    assert response.status_code == 303, response.text
    return str(response.headers["location"]).rsplit("/", 1)[1]


# -- pages ---------------------------------------------------------------------------------


def test_pages_render_with_local_assets(anon_server: InProcessService) -> None:
    with anon_server.client(timeout=30) as client:
        for path, expected in (
            ("/", "<h1>Jobs</h1>"),
            ("/ui/submit", 'id="image" name="IMAGE" type="file"'),
            ("/ui/models", 'href="/ui/models/radio-detector"'),
            ("/ui/models/radio-detector", "Model card: radio-detector"),
            ("/ui/models/radio-detector?version=1.0", "radio-detector <span"),
            ("/ui/models/sep", "THRESH"),
        ):
            page = client.get(path)
            assert page.status_code == 200, (path, page.text[:300])
            assert page.headers["content-type"].startswith("text/html")
            assert expected in page.text, path
            csp = page.headers["content-security-policy"]
            assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
            csrf_of(page.text)
            for url in assets_of(page.text):
                assert url.startswith("/"), (path, url)  # nothing from another site
                asset = client.get(url)
                assert asset.status_code == 200, (path, url)
        # The model card's Markdown became HTML: headings and tables, no raw Markdown.
        card = client.get("/ui/models/radio-detector").text
        assert "<table>" in card and "<h2>" in card
        assert "\n## " not in card
        # Unknown things are 404 pages, not 500s.
        assert client.get("/ui/models/no-such-model").status_code == 404
        missing = client.get("/ui/jobs/0000000000000000")
        assert missing.status_code == 404
        assert "text/html" in missing.headers["content-type"]
        bad = client.get("/", params={"phase": "SLEEPING"})
        assert bad.status_code == 400
        assert "phase" in bad.text.lower()


def test_job_list_filters_and_rows(anon_server: InProcessService) -> None:
    with anon_server.client(timeout=30) as api:
        first = sleep_job(api, "web-filter-a")
        second = sleep_job(api, "web-filter-b")
        wait_final(api, first)
        wait_final(api, second)
    with anon_server.client(timeout=30) as client:
        page = client.get("/").text
        assert first in page and second in page
        assert 'class="phase phase-completed"' in page
        only_a = client.get("/", params={"runid": "web-filter-a"}).text
        assert first in only_a and second not in only_a
        assert 'value="web-filter-a"' in only_a  # the form shows the filter
        none = client.get("/", params={"phase": "ERROR"}).text
        assert first not in none and "No jobs" in none
        rows = client.get("/ui/job-rows", params={"runid": "web-filter-b"})
        assert rows.status_code == 200
        assert second in rows.text and first not in rows.text
        assert "<html" not in rows.text  # rows alone, for the live refresh


def test_job_page_and_results_zip(anon_server: InProcessService) -> None:
    with anon_server.client(timeout=60) as client:
        created = client.post(
            "/jobs",
            data={"PHASE": "RUN", "RUNID": "web-zip"},
            files={"IMAGE": ("sample.fits", SAMPLE.read_bytes(), "application/fits")},
        )
        assert created.status_code == 303, created.text
        job_id = str(created.headers["location"]).rsplit("/", 1)[1]
        assert wait_final(client, job_id) == "COMPLETED"

        page = client.get(f"/ui/jobs/{job_id}")
        assert page.status_code == 200
        html = page.text
        assert f"/jobs/{job_id}/results/preview" in html  # the preview, full size
        assert f"/jobs/{job_id}/provenance?FORMAT=svg" in html
        assert f"/ui/jobs/{job_id}/results.zip" in html
        assert f'action="/jobs/{job_id}/rerun"' in html
        assert 'name="csrf_token"' in html
        assert "web-zip" in html and "sample.fits" in html
        svg = client.get(f"/jobs/{job_id}/provenance", params={"FORMAT": "svg"})
        assert svg.status_code == 200 and svg.headers["content-type"].startswith("image/svg")

        archive = client.get(f"/ui/jobs/{job_id}/results.zip")
        assert archive.status_code == 200
        assert archive.headers["content-type"] == "application/zip"
        assert f"{job_id}-results.zip" in archive.headers["content-disposition"]
        with zipfile.ZipFile(io.BytesIO(archive.content)) as zipped:
            assert zipped.testzip() is None
            names = zipped.namelist()
            assert "catalogue.xml" in names and "preview.png" in names
            assert len(names) == len(set(names))
            # The same bytes as each result's own download.
            results = client.get(f"/jobs/{job_id}/results", headers={"Accept": "application/json"})
            hrefs = {r["id"]: r["href"] for r in results.json()}
            assert zipped.read("catalogue.xml") == client.get(hrefs["result"]).content
            assert zipped.read("preview.png")[:8] == b"\x89PNG\r\n\x1a\n"
            assert len(names) == len(hrefs)

        # A job without results yet: 404 naming why; an unknown job: 404.
        pending = anon_server.client().post(  # no cookie: an API client
            "/jobs", data={"MODEL": "sleep", "DURATION": "0"}, timeout=10
        )
        pending_id = str(pending.headers["location"]).rsplit("/", 1)[1]
        empty = client.get(f"/ui/jobs/{pending_id}/results.zip")
        assert empty.status_code == 404 and "no result files" in empty.text
        assert client.get("/ui/jobs/0000000000000000/results.zip").status_code == 404


# -- CSRF in anonymous mode -----------------------------------------------------------------


def test_anonymous_csrf(anon_server: InProcessService) -> None:
    job = {"MODEL": "sleep", "DURATION": "0"}
    with anon_server.client(timeout=30) as browser:
        page = browser.get("/ui/submit")
        cookie = page.headers["set-cookie"]
        assert "otf_csrf=" in cookie and "HttpOnly" in cookie
        assert "SameSite=strict" in cookie or "SameSite=Strict" in cookie
        token = csrf_of(page.text)
        # The page's session cookie is sent: a POST without the token is refused ...
        refused = browser.post("/jobs", data=job)
        assert refused.status_code == 403
        assert "X-CSRF-Token" in refused.text and "csrf_token" in refused.text
        assert (
            browser.post("/jobs", data=job, headers={"X-CSRF-Token": "x" + token}).status_code
            == 403
        )
        assert browser.delete("/jobs/0000000000000000").status_code == 403
        # ... and accepted with it, as a header or as a form field (which the job never sees).
        by_header = browser.post("/jobs", data=job, headers={"X-CSRF-Token": token})
        assert by_header.status_code == 303, by_header.text
        by_field = browser.post("/jobs", data={**job, "csrf_token": token, "RUNID": "f"})
        assert by_field.status_code == 303, by_field.text
        job_id = str(by_field.headers["location"]).rsplit("/", 1)[1]
        params = browser.get(f"/jobs/{job_id}/parameters", headers={"Accept": "application/json"})
        assert "csrf_token" not in params.json()
        # A multipart form carries the field before its file.
        upload = browser.post(
            "/jobs",
            data={"csrf_token": token, "RUNID": "multipart"},
            files={"IMAGE": ("sample.fits", SAMPLE.read_bytes(), "application/fits")},
        )
        assert upload.status_code == 303, upload.text
        upload_id = str(upload.headers["location"]).rsplit("/", 1)[1]
        doc = browser.get(f"/jobs/{upload_id}", headers={"Accept": "application/json"}).json()
        assert doc["runId"] == "multipart"
        assert "csrf_token" not in doc["parameters"]
        # A token from another session does not fit this one.
        with anon_server.client(timeout=30) as other:
            theirs = csrf_of(other.get("/").text)
        assert theirs != token
        assert browser.post("/jobs", data=job, headers={"X-CSRF-Token": theirs}).status_code == 403
    # Plain API clients (no cookies) are not affected.
    with anon_server.client(timeout=30) as api:
        assert api.post("/jobs", data=job).status_code == 303


# -- token mode: login, cookie, CSRF, owners --------------------------------------------------


def login(server: InProcessService, token: str) -> tuple[httpx.Client, str]:
    """A browser-like client logged in with ``token``, and its CSRF token."""
    client = server.client(timeout=30)
    form = client.get("/ui/login")
    assert form.status_code == 200
    done = client.post(
        "/ui/login", data={"token": token, "next": "/", "csrf_token": csrf_of(form.text)}
    )
    assert done.status_code == 303, done.text
    assert done.headers["location"] == "/"
    return client, csrf_of(client.get("/").text)


def test_login_sets_a_strict_cookie(token_server: InProcessService) -> None:
    with token_server.client(timeout=30) as client:
        # Pages without a token send the browser to the login form, and back after.
        to_login = client.get("/ui/submit")
        assert to_login.status_code == 303
        assert to_login.headers["location"] == "/ui/login?next=/ui/submit"
        form = client.get("/ui/login", params={"next": "/ui/submit"})
        assert 'name="token" type="password"' in form.text
        csrf = csrf_of(form.text)
        wrong = client.post(
            "/ui/login", data={"token": "tok-mallory", "next": "/", "csrf_token": csrf}
        )
        assert wrong.status_code == 401
        assert "not valid" in wrong.text
        assert "otf_token" not in wrong.headers.get("set-cookie", "")
        done = client.post(
            "/ui/login",
            data={"token": "tok-alice", "next": "https://evil.example/", "csrf_token": csrf},
        )
        assert done.status_code == 303
        assert done.headers["location"] == "/"  # never to another site
        cookie = done.headers["set-cookie"]
        assert cookie.startswith("otf_token=tok-alice;")
        assert "HttpOnly" in cookie and "Path=/" in cookie
        assert re.search(r"SameSite=strict", cookie, re.IGNORECASE)
        assert "Secure" not in cookie  # plain http here; Secure only behind https
        # The cookie authenticates the API too (GET needs no CSRF token).
        listing = client.get("/jobs", headers={"Accept": "application/json"})
        assert listing.status_code == 200
        page = client.get("/")
        assert "Signed in as <strong>alice</strong>" in page.text
        # Logging out clears it.
        out = client.post("/ui/logout", data={"csrf_token": csrf_of(page.text)})
        assert out.status_code == 303
        assert (
            'otf_token=""' in out.headers["set-cookie"] or "Max-Age=0" in out.headers["set-cookie"]
        )
        client.cookies.delete("otf_token")
        assert client.get("/").status_code == 303
    # A cookie with a token the service does not know is a 401 on the API.
    with token_server.client(timeout=30, cookies={"otf_token": "tok-mallory"}) as forged:
        answer = forged.get("/jobs")
        assert answer.status_code == 401
        assert "log in again" in answer.text


def test_cookie_requests_need_the_csrf_token(token_server: InProcessService) -> None:
    alice, csrf = login(token_server, "tok-alice")
    try:
        job = {"MODEL": "sleep", "DURATION": "0", "PHASE": "RUN", "RUNID": "by-cookie"}
        refused = alice.post("/jobs", data=job)
        assert refused.status_code == 403
        assert "CSRF" in refused.text
        accepted = alice.post("/jobs", data=job, headers={"X-CSRF-Token": csrf})
        assert accepted.status_code == 303, accepted.text
        job_id = str(accepted.headers["location"]).rsplit("/", 1)[1]
        owner = token_server.client().get(f"/jobs/{job_id}/owner", headers=ALICE, timeout=10)
        assert owner.text == "alice"
        wait_final(alice, job_id)
        # Abort, delete and rerun are unsafe too.
        assert alice.post(f"/jobs/{job_id}/rerun", data={"PHASE": "RUN"}).status_code == 403
        rerun = alice.post(f"/jobs/{job_id}/rerun", data={"PHASE": "RUN", "csrf_token": csrf})
        assert rerun.status_code == 303, rerun.text
        assert alice.delete(f"/jobs/{job_id}").status_code == 403
        assert alice.delete(f"/jobs/{job_id}", headers={"X-CSRF-Token": csrf}).status_code == 303
        # The CSRF token is bound to the session: bob's does not work with alice's cookie.
        bob, bob_csrf = login(token_server, "tok-bob")
        bob.close()
        assert bob_csrf != csrf
        assert alice.post("/jobs", data=job, headers={"X-CSRF-Token": bob_csrf}).status_code == 403
    finally:
        alice.close()
    # A bearer header needs no CSRF token, even next to a cookie.
    with token_server.client(timeout=30, cookies={"otf_token": "tok-alice"}) as both:
        assert both.post("/jobs", data={"MODEL": "sleep"}, headers=ALICE).status_code == 303


def test_pages_are_owner_scoped(token_server: InProcessService) -> None:
    with token_server.client(timeout=30) as api:
        alice_job = sleep_job(api, "alice-web", ALICE)
        bob_job = sleep_job(api, "bob-web", BOB)
        wait_final(api, alice_job, ALICE)
        wait_final(api, bob_job, BOB)
    alice, _ = login(token_server, "tok-alice")
    try:
        listing = alice.get("/").text
        assert alice_job in listing and bob_job not in listing
        rows = alice.get("/ui/job-rows").text
        assert alice_job in rows and bob_job not in rows
        assert alice.get(f"/ui/jobs/{alice_job}").status_code == 200
        theirs = alice.get(f"/ui/jobs/{bob_job}")
        assert theirs.status_code == 404
        assert "bob" not in theirs.text
        assert alice.get(f"/ui/jobs/{bob_job}/results.zip").status_code == 404
    finally:
        alice.close()
    # Without a login, the zip is a 401 (an API-like download), not someone's files.
    anonymous = token_server.client().get(f"/ui/jobs/{alice_job}/results.zip", timeout=10)
    assert anonymous.status_code == 401
    # The model pages and the docs are public, like /models and /openapi.json.
    assert token_server.client().get("/ui/models", timeout=10).status_code == 200


# -- /docs, offline ----------------------------------------------------------------------------


def test_docs_work_offline(anon_server: InProcessService) -> None:
    with anon_server.client(timeout=30) as client:
        docs = client.get("/docs")
        assert docs.status_code == 200
        html = docs.text
        assert "swagger-ui" in html
        assert not re.search(r"(src|href)=\"(https?:)?//", html), "an asset from another site"
        urls = assets_of(html)
        assert any(u.endswith("swagger-ui-bundle.js") for u in urls)
        assert any(u.endswith("swagger-ui.css") for u in urls)
        for url in urls:
            assert url.startswith("/")
            asset = client.get(url)
            assert asset.status_code == 200, url
            assert len(asset.content) > 0
        # The script that starts Swagger UI points at this service's OpenAPI document.
        openapi_url = re.search(r'data-openapi-url="([^"]+)"', html)
        assert openapi_url is not None
        spec = client.get(openapi_url.group(1))
        assert spec.status_code == 200
        # Swagger UI 4 reads OpenAPI 3.0: the same operations as /openapi.json (3.1)
        assert spec.json()["openapi"] == "3.0.3"
        original = client.get("/openapi.json").json()
        assert original["openapi"].startswith("3.1")
        assert spec.json()["paths"].keys() == original["paths"].keys()
        assert "/jobs" in spec.json()["paths"]
        bundle = client.get("/ui/swagger/swagger-ui-bundle.js").text
        assert "SwaggerUIBundle" in bundle
