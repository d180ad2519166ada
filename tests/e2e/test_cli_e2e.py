"""The installed ``otf`` console script against a real server subprocess.

Unlike tests/unit/test_cli.py (in-process, stand-in service), these run the real entry point
as a separate process, with the service URL from ``OTF_URL``, and check exit codes, output
and the effect on the service.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from astropy.io.votable import parse_single_table

from astro_otf.client import OTFClient
from tests.conftest import ServerProcess, free_port

OTF = Path(sys.executable).with_name("otf")
JOB_ID = re.compile(r"^[0-9A-Za-z_-]{6,}$")


@pytest.fixture(scope="module")
def cli_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = ServerProcess(tmp_path_factory.mktemp("otf-cli") / "data", None)
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def default_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server left with the service's own default model (the trained detector)."""
    proc = ServerProcess(tmp_path_factory.mktemp("otf-default") / "data", None, default_model=None)
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def image(real_data: Path) -> Path:
    return real_data / "aegean" / "synthetic_test.fits"


def otf_env(url: str, **extra: str) -> dict[str, str]:
    """The environment of an ``otf`` run: OTF_URL=url and ``extra``, no other OTF_* from
    this process."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTF_")}
    env.update(OTF_URL=url, COLUMNS="200", NO_COLOR="1", TERM="dumb", **extra)
    return env


def otf(
    url: str, *args: str, timeout: float = 60, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the ``otf`` console script with OTF_URL=url (no other OTF_* from this process)."""
    return subprocess.run(
        [str(OTF), *args],
        env=otf_env(url, **(env or {})),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def phase_of(server: ServerProcess, job_id: str) -> str:
    response = httpx.get(f"{server.url}/jobs/{job_id}/phase", timeout=10)
    assert response.status_code == 200, response.text
    return response.text.strip()


def wait_phase(server: ServerProcess, job_id: str, phases: set[str], timeout: float = 20) -> str:
    deadline = time.monotonic() + timeout
    phase = phase_of(server, job_id)
    while phase not in phases and time.monotonic() < deadline:
        time.sleep(0.1)
        phase = phase_of(server, job_id)
    return phase


def count_rows(path: Path) -> int:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return len(parse_single_table(str(path)).array)


def test_console_script_is_installed() -> None:
    assert OTF.is_file(), f"no otf console script next to {sys.executable}"
    done = subprocess.run([str(OTF), "--help"], capture_output=True, text=True, check=False)
    assert done.returncode == 0
    for command in ("submit", "jobs", "job", "result", "abort", "delete"):
        assert command in done.stdout


def test_submit_wait_out_and_follow_the_job(
    cli_server: ServerProcess, image: Path, tmp_path: Path
) -> None:
    url = cli_server.url
    catalogue = tmp_path / "cat.vot"

    done = otf(url, "submit", str(image), "--wait", "--out", str(catalogue))
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    match = re.search(r"job (\S+) COMPLETED", done.stdout)
    assert match, done.stdout
    job_id = match.group(1)
    assert JOB_ID.match(job_id)
    assert str(catalogue) in done.stdout

    assert catalogue.is_file()
    rows = count_rows(catalogue)
    assert 100 <= rows <= 104
    assert f"{rows} sources" in done.stdout
    served = httpx.get(f"{url}/jobs/{job_id}/results/result", timeout=10)
    assert served.status_code == 200
    assert catalogue.read_bytes() == served.content
    assert phase_of(cli_server, job_id) == "COMPLETED"

    # otf jobs: the job is listed with its phase.
    listing = otf(url, "jobs")
    assert listing.returncode == 0, listing.stderr
    line = next((ln for ln in listing.stdout.splitlines() if job_id in ln), None)
    assert line is not None, listing.stdout
    assert "COMPLETED" in line
    as_json = otf(url, "jobs", "--json")
    assert as_json.returncode == 0, as_json.stderr
    listed = {j["jobId"]: j["phase"] for j in json.loads(as_json.stdout)["jobs"]}
    assert listed[job_id] == "COMPLETED"

    # otf job ID: phase, parameters and the result link.
    shown = otf(url, "job", job_id)
    assert shown.returncode == 0, shown.stderr
    assert job_id in shown.stdout
    assert "COMPLETED" in shown.stdout
    assert re.search(r"model\s+sep", shown.stdout), shown.stdout
    assert f"{url}/jobs/{job_id}/results/result" in shown.stdout
    doc = json.loads(otf(url, "job", job_id, "--json").stdout)
    assert doc["jobId"] == job_id
    assert doc["phase"] == "COMPLETED"
    assert doc["parameters"]["model"] == "sep"

    # otf result ID --out FILE, and to stdout: the same bytes as the service's result.
    again = tmp_path / "again.vot"
    fetched = otf(url, "result", job_id, "--out", str(again))
    assert fetched.returncode == 0, fetched.stderr
    assert again.read_bytes() == served.content
    to_stdout = subprocess.run(
        [str(OTF), "--url", url, "result", job_id], capture_output=True, timeout=60, check=False
    )
    assert to_stdout.returncode == 0
    assert to_stdout.stdout == served.content

    # otf delete ID: gone from the service; asking for it again is a refusal (exit 4).
    deleted = otf(url, "delete", job_id)
    assert deleted.returncode == 0, deleted.stderr
    assert job_id in deleted.stdout
    assert httpx.get(f"{url}/jobs/{job_id}", timeout=10).status_code == 404
    missing = otf(url, "job", job_id)
    assert missing.returncode == 4
    assert job_id in missing.stderr
    assert "Traceback" not in missing.stderr


def test_abort_a_running_sleep_job(cli_server: ServerProcess, image: Path) -> None:
    url = cli_server.url
    started = otf(url, "submit", str(image), "--model", "sleep", "--param", "DURATION=30")
    assert started.returncode == 0, started.stderr
    job_id = started.stdout.strip()
    assert JOB_ID.match(job_id), started.stdout
    doc = httpx.get(
        f"{url}/jobs/{job_id}", headers={"Accept": "application/json"}, timeout=10
    ).json()
    assert doc["parameters"]["model"] == "sleep"
    assert doc["parameters"]["duration"] == "30"
    assert wait_phase(cli_server, job_id, {"EXECUTING"}) == "EXECUTING"

    t0 = time.monotonic()
    aborted = otf(url, "abort", job_id)
    assert aborted.returncode == 0, aborted.stderr
    assert f"job {job_id} ABORTED" in aborted.stdout
    assert time.monotonic() - t0 < 15  # it did not wait for the 30 s sleep
    assert phase_of(cli_server, job_id) == "ABORTED"

    # Aborting again is harmless; aborting a finished job is refused with exit 4.
    assert otf(url, "abort", job_id).returncode == 0
    assert otf(url, "delete", job_id).returncode == 0
    quick = otf(url, "submit", str(image), "-m", "sleep", "-p", "DURATION=0", "--wait")
    assert quick.returncode == 0, quick.stderr
    quick_id = re.search(r"job (\S+) COMPLETED", quick.stdout)
    assert quick_id, quick.stdout
    refused = otf(url, "abort", quick_id.group(1))
    assert refused.returncode == 4
    assert "COMPLETED" in refused.stderr


def test_no_run_leaves_the_job_pending(cli_server: ServerProcess, image: Path) -> None:
    done = otf(cli_server.url, "submit", str(image), "--no-run", "--run-id", "cli-e2e")
    assert done.returncode == 0, done.stderr
    job_id = done.stdout.strip()
    assert phase_of(cli_server, job_id) == "PENDING"
    doc = httpx.get(
        f"{cli_server.url}/jobs/{job_id}", headers={"Accept": "application/json"}, timeout=10
    ).json()
    assert doc["runId"] == "cli-e2e"
    pending = otf(cli_server.url, "jobs", "--phase", "PENDING", "--json")
    assert pending.returncode == 0, pending.stderr
    assert job_id in {j["jobId"] for j in json.loads(pending.stdout)["jobs"]}
    assert otf(cli_server.url, "delete", job_id).returncode == 0


@pytest.mark.parametrize("args", [("jobs",), ("job", "abc123"), ("submit", "{image}")])
def test_unreachable_service_exit_3_one_line(args: tuple[str, ...], image: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    argv = [a.replace("{image}", str(image)) for a in args]
    done = otf(url, *argv, timeout=30)
    assert done.returncode == 3, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr
    lines = [ln for ln in done.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, done.stderr
    assert url in lines[0] or "127.0.0.1" in lines[0]
    assert done.stdout == ""


def test_non_fits_upload_ends_error_exit_1(
    cli_server: ServerProcess, test_data: Path, tmp_path: Path
) -> None:
    catalogue = tmp_path / "never.vot"
    done = otf(
        cli_server.url, "submit", str(test_data / "not_fits.txt"), "--wait", "--out", str(catalogue)
    )
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr
    match = re.search(r"job (\S+) ERROR", done.stdout)
    assert match, done.stdout
    job_id = match.group(1)
    assert phase_of(cli_server, job_id) == "ERROR"
    error = httpx.get(f"{cli_server.url}/jobs/{job_id}/error", timeout=10).text.strip()
    assert "FITS" in error
    # The service's errorSummary is what the user is told (one line, on stderr).
    assert " ".join(error.split()) in done.stderr
    assert not catalogue.exists()


def test_missing_local_file_is_a_usage_error(cli_server: ServerProcess, tmp_path: Path) -> None:
    before = httpx.get(f"{cli_server.url}/jobs", timeout=10).text
    done = otf(cli_server.url, "submit", str(tmp_path / "nope.fits"))
    assert done.returncode == 2
    assert "nope.fits" in done.stderr
    assert "Traceback" not in done.stderr
    assert httpx.get(f"{cli_server.url}/jobs", timeout=10).text.count("jobref") == before.count(
        "jobref"
    )


def test_service_refusal_is_exit_4_with_its_message(cli_server: ServerProcess, image: Path) -> None:
    done = otf(cli_server.url, "submit", str(image), "--param", "THRESH=-5")
    assert done.returncode == 4, (done.stdout, done.stderr)
    assert "THRESH" in done.stderr
    assert "Traceback" not in done.stderr


def test_rerun_and_provenance(cli_server: ServerProcess, image: Path, tmp_path: Path) -> None:
    first = otf(cli_server.url, "submit", str(image), "--wait", "--json", timeout=120)
    assert first.returncode == 0, first.stderr
    old = json.loads(first.stdout)["jobId"]
    out = tmp_path / "again.xml"
    again = otf(cli_server.url, "rerun", old, "--out", str(out), timeout=120)
    assert again.returncode == 0, again.stderr
    assert "COMPLETED" in again.stdout and out.is_file()
    assert (
        len(parse_single_table(str(out)).array) == json.loads(first.stdout)["jobInfo"]["n_sources"]
    )
    provn = otf(cli_server.url, "provenance", old)
    assert provn.returncode == 0, provn.stderr
    assert provn.stdout.startswith("document") and "wasGeneratedBy(" in provn.stdout
    bad = otf(cli_server.url, "provenance", old, "--format", "yaml")
    assert bad.returncode == 2 and "--format" in bad.stderr
    pending = otf(cli_server.url, "submit", str(image), "--no-run")
    refused = otf(cli_server.url, "rerun", pending.stdout.strip())
    assert refused.returncode == 4 and "PENDING" in refused.stderr


def test_bulk_submit_every_real_image_with_progress_and_summary(
    default_server: ServerProcess, real_data: Path, tmp_path: Path
) -> None:
    """A recursive glob over ../shared/data/real, --wait, --out DIR, with no --model: every
    image gets its catalogue from the default model, the trained detector."""
    listed = json.loads(otf(default_server.url, "models", "--json").stdout)
    assert listed["default"] == "radio-detector"
    out = tmp_path / "results"
    run = otf(
        default_server.url, "submit", f"{real_data}/**/*.fits", "--wait", "--out", f"{out}/",
        timeout=300,
    )  # fmt: skip
    # three of the .fits files there are catalogues (FITS tables): those jobs are ERROR, and
    # the exit code says a job failed
    assert run.returncode == 1, run.stderr
    assert "uploading 12 images" in run.stderr and "jobs ending" in run.stderr
    assert run.stdout.count("COMPLETED") == 9 and run.stdout.count("ERROR") == 3
    assert "no image HDU" in run.stdout
    written = sorted(p.name for p in out.iterdir())
    assert len(written) == 9
    assert "magpis_G10.5+0.0.xml" in written and "SWIFT_554620-130504.xml" in written
    for name in written:
        assert 'name="model_id" value="radio-detector"' in (out / name).read_text()
        table = parse_single_table(str(out / name))
        assert table.get_field_by_id_or_name("int_flux").unit == "Jy"
        if name == "SWIFT_554620-130504.xml":  # the single-source AMI image
            assert len(table.array) == 1
        else:
            assert len(table.array) >= 1, name


def test_models_wait_results_show_roi_and_config_file(
    cli_server: ServerProcess, image: Path, tmp_path: Path
) -> None:
    listed = otf(cli_server.url, "models", "--json")
    assert listed.returncode == 0, listed.stderr
    doc = json.loads(listed.stdout)
    assert doc["default"] == "sep" and {"sep", "matched-filter"} <= {m["id"] for m in doc["models"]}
    described = otf(cli_server.url, "models", "describe", "sep")
    assert described.returncode == 0 and "thresh" in described.stdout
    assert otf(cli_server.url, "models", "describe", "nope").returncode == 4

    job_id = otf(cli_server.url, "submit", str(image), "--roi", "29.9", "-15.5", "10arcmin", "100")
    job_id_text = job_id.stdout.strip()
    assert job_id.returncode == 0 and JOB_ID.match(job_id_text), job_id.stderr
    waited = otf(cli_server.url, "wait", job_id_text, "--json", timeout=120)
    assert waited.returncode == 0, waited.stderr
    params = json.loads(waited.stdout)["jobs"][0]["parameters"]
    assert (params["ra"], params["width"], params["height"]) == ("29.9", "10 arcmin", "100")
    got = otf(cli_server.url, "results", job_id_text, "--out", str(tmp_path / "all"))
    assert got.returncode == 0, got.stderr
    names = sorted(p.name for p in (tmp_path / "all").iterdir())
    assert names == sorted(
        f"{job_id_text}-{n}"
        for n in (
            "catalogue.xml",
            "catalogue.csv",
            "catalogue.json",
            "catalogue.reg",
            "preview.png",
            "provenance.json",
        )
    )
    shown = otf(cli_server.url, "show", job_id_text)
    assert shown.returncode == 0 and "COMPLETED" in shown.stdout

    config = tmp_path / "client.toml"
    config.write_text(f'url = "{cli_server.url}"\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTF_")}
    env.update(OTF_CLIENT_CONFIG=str(config), COLUMNS="200")
    health = subprocess.run(
        [str(OTF), "health"], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert health.returncode == 0 and cli_server.url in health.stdout, health.stderr


# -- issue 14: run ids from file names, logs, reruns with overrides, uploads, events --------


def test_bulk_submit_names_runs_after_the_files_and_log_shows_the_run(
    cli_server: ServerProcess, image: Path, tmp_path: Path
) -> None:
    first, second = tmp_path / "field-a.fits", tmp_path / "field-b.fits"
    first.write_bytes(image.read_bytes())
    second.write_bytes(image.read_bytes())
    done = otf(cli_server.url, "submit", str(first), str(second), "--wait", "--json", "--no-cache")
    assert done.returncode == 0, done.stderr
    jobs = json.loads(done.stdout)["jobs"]
    assert not any(j["jobInfo"].get("cached_from") for j in jobs)
    assert [j["runId"] for j in jobs] == ["field-a", "field-b"]
    assert {j["phase"] for j in jobs} == {"COMPLETED"}
    by_run = {j["runId"]: j["jobId"] for j in jobs}

    # the table form shows the run ids too
    table = otf(cli_server.url, "submit", str(first), str(second), "--run-id", "mine")
    assert table.returncode == 0, table.stderr
    assert table.stdout.count(" mine ") == 2, table.stdout

    listed = otf(cli_server.url, "jobs", "--run-id", "field-b", "--json")
    assert listed.returncode == 0, listed.stderr
    assert [j["jobId"] for j in json.loads(listed.stdout)["jobs"]] == [by_run["field-b"]]
    named = otf(cli_server.url, "jobs", "--image", "field-a.fits", "--json")
    assert by_run["field-a"] in {j["jobId"] for j in json.loads(named.stdout)["jobs"]}
    assert by_run["field-b"] not in {j["jobId"] for j in json.loads(named.stdout)["jobs"]}
    shown = otf(cli_server.url, "jobs", "--run-id", "field-a")
    line = next(ln for ln in shown.stdout.splitlines() if by_run["field-a"] in ln)
    assert "field-a.fits" in line and "COMPLETED" in line

    log = otf(cli_server.url, "log", by_run["field-a"])
    assert log.returncode == 0, log.stderr
    served = httpx.get(f"{cli_server.url}/jobs/{by_run['field-a']}/log", timeout=10).text
    assert served.strip() and log.stdout.strip() == served.strip()
    tail = otf(cli_server.url, "log", by_run["field-a"], "--tail", "1")
    assert tail.returncode == 0 and tail.stdout.strip() == served.strip().splitlines()[-1]
    assert otf(cli_server.url, "log", "nosuchjob123").returncode == 4
    assert otf(cli_server.url, "log", by_run["field-a"], "--tail", "0").returncode == 2


def test_rerun_with_a_changed_threshold(cli_server: ServerProcess, image: Path) -> None:
    first = otf(cli_server.url, "submit", str(image), "--wait", "--json", "-p", "thresh=5")
    assert first.returncode == 0, first.stderr
    old = json.loads(first.stdout)
    again = otf(
        cli_server.url, "rerun", old["jobId"], "-p", "thresh=20", "--run-id", "strict",
        "--wait", "--json",
    )  # fmt: skip
    assert again.returncode == 0, again.stderr
    new = json.loads(again.stdout)
    assert new["jobId"] != old["jobId"] and new["phase"] == "COMPLETED"
    assert new["runId"] == "strict"
    assert new["parameters"]["thresh"] == "20" and old["parameters"]["thresh"] == "5"
    assert new["jobInfo"]["input"]["sha256"] == old["jobInfo"]["input"]["sha256"]
    assert 0 < new["jobInfo"]["n_sources"] < old["jobInfo"]["n_sources"]
    refused = otf(cli_server.url, "rerun", old["jobId"], "-p", "thresh=-1")
    assert refused.returncode == 4 and "thresh" in refused.stderr.lower()


def test_upload_once_then_three_thresholds(
    cli_server: ServerProcess, image: Path, tmp_path: Path
) -> None:
    stored = otf(cli_server.url, "upload", str(image))
    assert stored.returncode == 0, stored.stderr
    upload_id = stored.stdout.strip()
    assert JOB_ID.match(upload_id), stored.stdout
    record = json.loads(otf(cli_server.url, "upload", str(image), "--json").stdout)
    assert record["upload_id"] == upload_id  # the same bytes: the same upload

    counts = []
    for thresh, how in (("4", "--upload-id"), ("20", "--upload-id"), ("60", "positional")):
        args = ["--upload-id", upload_id] if how == "--upload-id" else [f"upload:{upload_id}"]
        done = otf(cli_server.url, "submit", *args, "-p", f"thresh={thresh}", "--wait", "--json")
        assert done.returncode == 0, done.stderr
        doc = json.loads(done.stdout)
        assert doc["phase"] == "COMPLETED"
        assert doc["jobInfo"]["input"]["upload_id"] == upload_id
        assert doc["jobInfo"]["input"]["filename"] == image.name
        assert doc["parameters"]["thresh"] == thresh
        counts.append(doc["jobInfo"]["n_sources"])
    assert counts[0] >= counts[1] >= counts[2] and counts[0] > counts[2], counts
    uploads = httpx.get(
        f"{cli_server.url}/uploads", headers={"Accept": "application/json"}, timeout=10
    ).json()["uploads"]
    assert [u["upload_id"] for u in uploads].count(upload_id) == 1

    # the same parameters again: the service reuses the finished job; --no-cache runs it
    cached = json.loads(
        otf(cli_server.url, "submit", "-u", upload_id, "-p", "thresh=4", "--json", "-w").stdout
    )
    assert cached["phase"] == "COMPLETED" and cached["jobInfo"].get("cached_from")
    fresh = json.loads(
        otf(
            cli_server.url, "submit", "-u", upload_id, "-p", "thresh=4", "--no-cache",
            "--json", "-w",
        ).stdout
    )  # fmt: skip
    assert fresh["phase"] == "COMPLETED" and not fresh["jobInfo"].get("cached_from")
    assert fresh["parameters"].get("nocache") in (None, "true")

    missing = otf(cli_server.url, "submit", "--upload-id", "nosuchupload")
    assert missing.returncode == 4 and "Traceback" not in missing.stderr
    not_fits = otf(cli_server.url, "upload", str(tmp_path / "absent.fits"))
    assert not_fits.returncode == 2


def test_wait_follows_the_event_stream(cli_server: ServerProcess, image: Path) -> None:
    from astro_otf.cli.follow import JobFollower
    from astro_otf.client import OTFClient

    started = otf(cli_server.url, "submit", str(image), "-m", "sleep", "-p", "DURATION=1.5")
    job_id = started.stdout.strip()
    assert started.returncode == 0 and JOB_ID.match(job_id), started.stderr
    waited = otf(cli_server.url, "wait", job_id)
    assert waited.returncode == 0, waited.stderr
    assert f"job {job_id} COMPLETED" in waited.stdout
    assert "Traceback" not in waited.stderr

    # the same machinery in-process: it was the event stream that carried the wait
    with OTFClient(cli_server.url) as client:
        ids = [
            client.submit(image, {"MODEL": "sleep", "DURATION": "1"}, run_id=f"ev{i}")
            for i in range(2)
        ]
        follower = JobFollower(client, ids, show=False, resync=60.0)
        t0 = time.monotonic()
        jobs = follower.run(timeout=60)
        assert follower.used_events
        assert {j.phase for j in jobs.values()} == {"COMPLETED"}
        assert time.monotonic() - t0 < 30
        # a timeout while the job still runs: exit 5 from the CLI
        slow = client.submit(image, {"MODEL": "sleep", "DURATION": "20"})
    timed_out = otf(cli_server.url, "wait", slow, "--timeout", "1")
    assert timed_out.returncode == 5, (timed_out.stdout, timed_out.stderr)
    assert otf(cli_server.url, "abort", slow).returncode == 0


def test_job_shows_progress_and_quote_while_it_runs(cli_server: ServerProcess, image: Path) -> None:
    started = otf(cli_server.url, "submit", str(image), "-m", "sleep", "-p", "DURATION=20")
    job_id = started.stdout.strip()
    assert wait_phase(cli_server, job_id, {"EXECUTING"}) == "EXECUTING"
    shown = otf(cli_server.url, "job", job_id)
    assert shown.returncode == 0, shown.stderr
    assert "Progress" in shown.stdout and "EXECUTING" in shown.stdout
    assert "Image" in shown.stdout and image.name in shown.stdout
    assert otf(cli_server.url, "abort", job_id).returncode == 0


# -- issue 18: Ctrl-C names the jobs, many ids, --json records, URLs and tokens ------------


@pytest.fixture(scope="module")
def token_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = ServerProcess(
        tmp_path_factory.mktemp("otf-cli-token") / "data",
        None,
        auth_mode="token",
        tokens=json.dumps({"tok-carol": "carol"}),
    )
    proc.start()
    yield proc
    proc.stop()


def test_ctrl_c_during_a_bulk_wait_names_every_job(
    cli_server: ServerProcess, image: Path, tmp_path: Path
) -> None:
    """Ctrl-C while waiting for a bulk submit's jobs: both ids are printed, with the
    commands that follow them and fetch their results; the jobs go on on the service."""
    url = cli_server.url
    files = [tmp_path / "ctrl-a.fits", tmp_path / "ctrl-b.fits"]
    for path in files:
        shutil.copy(image, path)
    run_id = f"ctrl-c-{time.time_ns()}"
    args = ["-m", "sleep", "-p", "DURATION=30", "--no-cache", "--run-id", run_id, "--wait"]
    proc = subprocess.Popen(
        [str(OTF), "submit", *map(str, files), *args],
        env=otf_env(url),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    ids: list[str] = []
    try:
        with OTFClient(url) as client:
            deadline = time.monotonic() + 30
            while len(ids) < 2 and time.monotonic() < deadline:
                time.sleep(0.1)
                ids = [j.job_id for j in client.jobs(run_id=run_id) if j.phase in ACTIVE]
            assert len(ids) == 2, "the two sleep jobs did not start"
            time.sleep(1.5)  # the command has read both jobs and is in its wait
            proc.send_signal(signal.SIGINT)
            stdout, stderr = proc.communicate(timeout=20)
            assert proc.returncode == 130, (stdout, stderr)
            assert "Traceback" not in stderr
            assert "2 jobs go on on the service" in stderr, stderr
            wait_line = next(ln for ln in stderr.splitlines() if "otf wait" in ln)
            results_line = next(ln for ln in stderr.splitlines() if "otf results" in ln)
            for job_id in ids:
                assert job_id in wait_line and job_id in results_line, stderr
                assert client.job(job_id).phase in ACTIVE  # interrupting left them running
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        # one command aborts both (otf abort takes many ids)
        aborted = otf(url, "abort", *ids) if ids else None
    assert aborted is not None and aborted.returncode == 0, aborted and aborted.stderr
    assert sorted(aborted.stdout.splitlines()) == sorted(f"job {j} ABORTED" for j in ids)


ACTIVE = {"PENDING", "QUEUED", "EXECUTING"}


def test_results_of_a_failed_job_print_its_error_and_exit_1(
    cli_server: ServerProcess, test_data: Path, tmp_path: Path
) -> None:
    done = otf(cli_server.url, "submit", str(test_data / "not_fits.txt"), "--wait")
    match = re.search(r"job (\S+) ERROR", done.stdout)
    assert match, (done.stdout, done.stderr)
    job_id = match.group(1)
    error = httpx.get(f"{cli_server.url}/jobs/{job_id}/error", timeout=10).text.strip()
    for args in (["results", job_id, "--out", str(tmp_path / "r")], ["result", job_id]):
        got = otf(cli_server.url, *args)
        assert got.returncode == 1, (args, got.stdout, got.stderr)
        assert f"job {job_id} ended ERROR" in got.stderr
        assert " ".join(error.split()) in got.stderr
        assert "has: none" not in got.stderr and "Traceback" not in got.stderr


def test_result_and_provenance_json_records(
    cli_server: ServerProcess, image: Path, tmp_path: Path
) -> None:
    done = otf(cli_server.url, "submit", str(image), "--wait", "--json", timeout=120)
    assert done.returncode == 0, done.stderr
    job_id = json.loads(done.stdout)["jobId"]
    out = tmp_path / "cat.vot"
    record = json.loads(otf(cli_server.url, "result", job_id, "-o", str(out), "--json").stdout)
    assert record == {
        "jobId": job_id,
        "resultId": "result",
        "path": str(out),
        "bytes": out.stat().st_size,
        "mediaType": "application/x-votable+xml",
    }
    prov_out = tmp_path / "prov.json"
    prov = otf(
        cli_server.url, "provenance", job_id, "--format", "json", "-o", str(prov_out), "--json"
    )
    assert prov.returncode == 0, prov.stderr
    doc = json.loads(prov.stdout)
    assert doc["mediaType"] == "application/json" and doc["bytes"] == prov_out.stat().st_size
    assert "activity" in json.loads(prov_out.read_text())


@pytest.mark.parametrize("suffix", ["/jobs", "/jobs/"])
def test_a_jobs_url_in_otf_url_works(cli_server: ServerProcess, suffix: str) -> None:
    done = otf(cli_server.url + suffix, "jobs", "--json")
    assert done.returncode == 0, done.stderr
    assert "jobs" in json.loads(done.stdout)


def test_a_missing_or_wrong_token_says_how_to_give_one(
    token_server: ServerProcess, tmp_path: Path
) -> None:
    no_config = {"XDG_CONFIG_HOME": str(tmp_path)}
    missing = otf(token_server.url, "jobs", env=no_config)
    assert missing.returncode == 4, missing.stderr
    assert "set OTF_TOKEN or use --token" in missing.stderr
    assert str(tmp_path / "astro-otf" / "client.toml") in missing.stderr
    assert "send the header" not in missing.stderr
    wrong = otf(token_server.url, "jobs", env={**no_config, "OTF_TOKEN": "nope"})
    assert wrong.returncode == 4 and "did not accept the token" in wrong.stderr, wrong.stderr
    right = otf(token_server.url, "--token", "tok-carol", "jobs", "--json", env=no_config)
    assert right.returncode == 0, right.stderr
