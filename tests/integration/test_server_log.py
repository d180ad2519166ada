"""The server's own log (issue 17, item 15): written to data_dir/logs/server.log as well as
stdout, rotated by size, one line per request with its request id, and that id repeated in
the log of the job the request made or changed."""

from __future__ import annotations

import time
from pathlib import Path

import httpx

from tests.conftest import ServerProcess


def read_until(path: Path, needle: str, timeout: float = 10) -> str:
    """The file's text once it holds ``needle`` (lines are written by a background
    thread)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = path.read_text() if path.exists() else ""
        if needle in text:
            return text
        time.sleep(0.05)
    raise AssertionError(f"{needle!r} never appeared in {path}")


def test_requests_are_logged_with_an_id_that_their_jobs_repeat(tmp_path: Path) -> None:
    server = ServerProcess(
        tmp_path / "data", None, log_level="info", log_file_bytes="20000", log_files="2"
    )
    server.start()
    try:
        log = server.data_dir / "logs" / "server.log"
        with httpx.Client(base_url=server.url, timeout=30) as c:
            # a client's own id is kept and answered
            r = c.post(
                "/jobs",
                data={"MODEL": "sleep", "DURATION": "0.1"},
                headers={"X-Request-ID": "client-req-42"},
            )
            assert r.status_code == 303 and r.headers["x-request-id"] == "client-req-42"
            job_id = r.headers["location"].rsplit("/", 1)[-1]
            text = read_until(log, "POST /jobs 303")
            lines = [x for x in text.splitlines() if "[client-req-42]" in x]
            # the request's line, and the service's own lines while it was served
            assert any("astro_otf.access" in x and "POST /jobs 303" in x for x in lines)
            assert any("astro_otf.service.jobs" in x and job_id in x for x in lines)
            # the job's log names the request that made it, and the one that ran it
            r = c.post(f"/jobs/{job_id}/phase", data={"PHASE": "RUN"})
            run_id = r.headers["x-request-id"]
            assert run_id and run_id != "client-req-42"
            job_log = c.get(f"/jobs/{job_id}/log").text
            assert "[request client-req-42]" in job_log and "created as PENDING" in job_log
            assert f"[request {run_id}] RUN: queued" in job_log
            # an id that is not one (too long, odd characters) is replaced, not echoed
            for bad in ("x" * 65, "a b", "<script>"):
                got = c.get("/health", headers={"X-Request-ID": bad}).headers["x-request-id"]
                assert got != bad and len(got) == 16
            # rotation: past log_file_bytes, server.log.1 holds the older lines
            for _ in range(200):
                c.get("/jobs/0123456789abcdef")
            read_until(log.with_name("server.log.1"), "GET /jobs/0123456789abcdef 404")
            assert not log.with_name("server.log.3").exists()  # log_files=2 kept
    finally:
        server.stop()
    # stdout has the same lines
    assert "client-req-42" in server.log_path.read_text()
