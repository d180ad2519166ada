"""Tests of the ``otf`` command line: argument parsing, output, and exit codes.

Commands run in-process through Typer's ``CliRunner``. Those that need a service talk
over loopback HTTP to a tiny stand-in (every job ends at the first WAIT), so the tests
check what the command does with the answers, not the service itself.
"""

from __future__ import annotations

import email.parser
import email.policy
import json
import os
import signal
import subprocess
import sys
import threading
import types
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from typer.testing import CliRunner

from astro_otf import __version__
from astro_otf.cli.main import app, roi_params
from astro_otf.client import OTFClient

VOTABLE = b"""<?xml version="1.0" encoding="utf-8"?>
<VOTABLE version="1.4" xmlns="http://www.ivoa.net/xml/VOTable/v1.3">
 <RESOURCE type="results"><TABLE name="sources">
  <FIELD name="ra" datatype="double" unit="deg"/>
  <FIELD name="dec" datatype="double" unit="deg"/>
  <DATA><TABLEDATA>
   <TR><TD>10.0</TD><TD>-30.0</TD></TR>
   <TR><TD>10.1</TD><TD>-30.1</TD></TR>
  </TABLEDATA></DATA>
 </TABLE></RESOURCE>
</VOTABLE>
"""

UNREACHABLE = "http://127.0.0.1:9"
COMMANDS = ["serve", "submit", "jobs", "job", "result", "abort", "delete", "health"]


@dataclass
class Service:
    """State of the stand-in service."""

    url: str = ""
    jobs: dict[str, dict[str, Any]] = field(default_factory=dict)
    forms: list[dict[str, str]] = field(default_factory=list)
    auth: list[str | None] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    #: Send this process SIGINT (Ctrl-C) on receiving the n-th job (before answering it).
    interrupt_at: int | None = None


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    wbufsize = 1 << 16
    disable_nagle_algorithm = True
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _send(self, status: int, body: bytes = b"", ctype: str = "text/plain", **hdr: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for name, value in hdr.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def _job(self, job_id: str) -> dict[str, Any] | None:
        job = self.server.svc.jobs.get(job_id)
        if job is None:
            self._send(404, f"no job with id '{job_id}'".encode())
        return job

    def do_GET(self) -> None:
        svc = self.server.svc
        split = urlsplit(self.path)
        parts = [p for p in split.path.split("/") if p]
        with svc.lock:
            svc.auth.append(self.headers.get("Authorization"))
            if parts == ["jobs"]:
                doc = {"jobs": [{k: j[k] for k in ("jobId", "phase")} for j in svc.jobs.values()]}
                self._send(200, json.dumps(doc).encode(), "application/json")
            elif parts == ["health"]:
                self._send(200, b'{"status": "ok", "version": "t"}', "application/json")
            elif parts == ["health", "ready"]:
                self._send(503, b'{"status": "fail", "checks": {"db": "down"}}', "application/json")
            elif parts[:1] == ["models"]:
                self._models(parts[1:], parse_qs(split.query))
            elif len(parts) == 2 and (job := self._job(parts[1])) is not None:
                if "WAIT" in parse_qs(split.query) and job["phase"] == "QUEUED":
                    failing = job["parameters"].get("MODEL") == "broken"
                    job["phase"] = "ERROR" if failing else "COMPLETED"
                    if failing:
                        job["errorSummary"] = {"type": "fatal", "message": "model crashed"}
                self._send(200, json.dumps(job).encode(), "application/json")
            elif parts[2:] == ["results", "result"] and self._job(parts[1]) is not None:
                self._send(200, VOTABLE, "application/x-votable+xml")
            elif parts[2:] == ["error"] and self._job(parts[1]) is not None:
                self._send(200, b"model crashed")

    def _models(self, rest: list[str], query: dict[str, list[str]]) -> None:
        """/models: one detector with two versions; /models/ID?version=V one of them."""
        versions = ["2.0", "1.0"]

        def describe(version: str) -> dict[str, Any]:
            return {
                "id": "radio-detector",
                "version": version,
                "versions": versions,
                "description": f"detector {version}",
                "precisions": ["fp32"],
                "parameters": [{"name": "threshold", "type": "float", "default": 0.4}],
            }

        version = query.get("version", [versions[0]])[0]
        if not rest:
            doc = {"default": "radio-detector", "models": [describe(versions[0])]}
            self._send(200, json.dumps(doc).encode(), "application/json")
        elif rest != ["radio-detector"]:
            self._send(404, b"no such model")
        elif version not in versions:
            self._send(400, f"VERSION: {version!r} is not installed".encode())
        else:
            self._send(200, json.dumps(describe(version)).encode(), "application/json")

    def do_POST(self) -> None:
        svc = self.server.svc
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        parts = [p for p in self.path.split("/") if p]
        with svc.lock:
            svc.auth.append(self.headers.get("Authorization"))
            if parts == ["jobs"]:
                message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
                    f"Content-Type: {self.headers['Content-Type']}\r\n\r\n".encode() + body
                )
                form = {
                    str(p.get_param("name", header="content-disposition")): p.get_content()
                    for p in message.iter_parts()
                    if p.get_filename() is None
                }
                svc.forms.append(form)
                if len(svc.forms) == svc.interrupt_at:
                    os.kill(os.getpid(), signal.SIGINT)  # the CLI is waiting for this answer
                    return
                job_id = f"j{len(svc.jobs) + 1}"
                svc.jobs[job_id] = {
                    "jobId": job_id,
                    "phase": "QUEUED" if form.get("PHASE") == "RUN" else "PENDING",
                    "creationTime": "2024-05-01T12:00:00Z",
                    "parameters": {k: v for k, v in form.items() if k != "PHASE"},
                    "results": [
                        {"id": "result", "href": f"{svc.url}/jobs/{job_id}/results/result"}
                    ],
                    "errorSummary": None,
                }
                self._send(303, Location=f"{svc.url}/jobs/{job_id}")
            elif parts[2:] == ["phase"] and (job := self._job(parts[1])) is not None:
                job["phase"] = "ABORTED"
                self._send(303, Location=f"{svc.url}/jobs/{parts[1]}")

    def do_DELETE(self) -> None:
        svc = self.server.svc
        parts = [p for p in self.path.split("/") if p]
        with svc.lock:
            if self._job(parts[1]) is not None:
                del svc.jobs[parts[1]]
                self._send(303, Location=f"{svc.url}/jobs")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    svc: Service


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OTF_URL", raising=False)
    monkeypatch.delenv("OTF_TOKEN", raising=False)


@pytest.fixture
def svc() -> Iterator[Service]:
    server = _Server(("127.0.0.1", 0), _Handler)
    server.svc = Service(url=f"http://127.0.0.1:{server.server_address[1]}")
    thread = threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    try:
        yield server.svc
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture
def image(tmp_path: Path) -> Path:
    path = tmp_path / "field.fits"
    path.write_bytes(b"SIMPLE  =                    T" + b" " * 2850)
    return path


# ------------------------------------------------------------------------ parsing


@pytest.mark.parametrize("command", [[], *([c] for c in COMMANDS)])
def test_every_command_has_help(runner: CliRunner, command: list[str]) -> None:
    result = runner.invoke(app, [*command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.stdout


def test_no_arguments_shows_the_commands(runner: CliRunner) -> None:
    result = runner.invoke(app, [])
    assert all(c in result.output for c in COMMANDS)


def test_version(runner: CliRunner) -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.stdout.strip() == f"otf {__version__}"


@pytest.mark.parametrize(
    "args",
    [
        ["submit"],
        ["submit", "IMAGE", "--param", "novalue"],
        ["submit", "IMAGE", "--param", "=5"],
        ["submit", "IMAGE", "--wait", "--no-run"],
        ["submit", "IMAGE", "--timeout", "-1"],
        ["jobs", "--last", "0"],
        ["job"],
        ["serve", "--port", "70000"],
        ["frobnicate"],
        ["jobs", "--bogus"],
    ],
)
def test_usage_errors_exit_2(runner: CliRunner, image: Path, args: list[str]) -> None:
    args = [str(image) if a == "IMAGE" else a for a in args]
    result = runner.invoke(app, ["--url", UNREACHABLE, *args])
    assert result.exit_code == 2, result.output


def test_missing_image_is_one_line_and_exit_2(runner: CliRunner, tmp_path: Path) -> None:
    missing = tmp_path / "absent.fits"
    result = runner.invoke(app, ["--url", UNREACHABLE, "submit", str(missing)])
    assert result.exit_code == 2
    assert result.stderr == f"error: no such file: {missing}\n"
    assert result.stdout == ""


def test_out_into_a_missing_directory_is_exit_2(
    runner: CliRunner, image: Path, tmp_path: Path
) -> None:
    out = tmp_path / "no" / "cat.xml"
    result = runner.invoke(app, ["--url", UNREACHABLE, "submit", str(image), "--out", str(out)])
    assert result.exit_code == 2
    assert result.stderr.startswith("error: no such directory")


def test_a_malformed_url_is_a_usage_error(runner: CliRunner) -> None:
    result = runner.invoke(app, ["--url", "localhost:8000", "jobs"])
    assert result.exit_code == 2
    assert result.stderr.startswith("error: service URL must be")


def test_serve_imports_the_server_lazily_and_passes_host_and_port(
    runner: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[str, int]] = []
    server = types.ModuleType("astro_otf.app")

    def run_server(host: str, port: int) -> None:
        calls.append((host, port))

    server.run_server = run_server  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "astro_otf.app", server)

    assert runner.invoke(app, ["serve"]).exit_code == 0
    assert runner.invoke(app, ["serve", "--host", "0.0.0.0", "--port", "9000"]).exit_code == 0
    assert calls == [("127.0.0.1", 8000), ("0.0.0.0", 9000)]


# ------------------------------------------------------------------------ unreachable


@pytest.mark.parametrize(
    "args",
    [
        ["jobs"],
        ["job", "x"],
        ["submit", "IMAGE"],
        ["result", "x"],
        ["abort", "x"],
        ["delete", "x"],
        ["health"],
    ],
)
def test_unreachable_service_exits_3_with_one_line(
    runner: CliRunner, image: Path, args: list[str]
) -> None:
    args = [str(image) if a == "IMAGE" else a for a in args]
    result = runner.invoke(app, ["--url", UNREACHABLE, *args])
    assert result.exit_code == 3, result.output
    assert result.stderr.startswith(f"error: cannot reach the service at {UNREACHABLE}")
    assert result.stderr.count("\n") == 1
    assert "Traceback" not in result.output


def test_url_from_the_environment(runner: CliRunner, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTF_URL", UNREACHABLE)
    result = runner.invoke(app, ["jobs"])
    assert result.exit_code == 3
    assert UNREACHABLE in result.stderr


# ------------------------------------------------------------------------ against a service


def test_submit_prints_just_the_job_id(
    runner: CliRunner, svc: Service, image: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTF_TOKEN", "tok")
    args = ["--url", svc.url, "submit", str(image), "-p", "thresh=5", "--param", "MODEL=x"]
    result = runner.invoke(app, [*args, "--model", "sep", "--run-id", "r7"])
    assert result.exit_code == 0, result.output
    assert result.stdout == "j1\n"
    assert svc.forms == [{"thresh": "5", "MODEL": "sep", "PHASE": "RUN", "RUNID": "r7"}]
    assert svc.auth == ["Bearer tok"]


def test_submit_no_run_json(runner: CliRunner, svc: Service, image: Path) -> None:
    result = runner.invoke(app, ["--url", svc.url, "submit", str(image), "--no-run", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["phase"] == "PENDING"
    assert "PHASE" not in svc.forms[0]


def test_submit_wait_out_writes_the_catalogue_and_counts_sources(
    runner: CliRunner, svc: Service, image: Path, tmp_path: Path
) -> None:
    out = tmp_path / "cat.xml"
    result = runner.invoke(
        app, ["--url", svc.url, "--token", "t", "submit", str(image), "--wait", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert out.read_bytes() == VOTABLE
    assert result.stdout == f"job j1 COMPLETED, 2 sources, catalogue written to {out}\n"
    assert set(svc.auth) == {"Bearer t"}


def test_submit_wait_on_a_failing_job_exits_1_with_its_message(
    runner: CliRunner, svc: Service, image: Path
) -> None:
    result = runner.invoke(app, ["--url", svc.url, "submit", str(image), "-m", "broken", "-w"])
    assert result.exit_code == 1
    assert result.stdout == "job j1 ERROR\n"
    assert result.stderr.endswith("error: model crashed\n")


def test_unknown_job_exits_4_with_the_servers_message(runner: CliRunner, svc: Service) -> None:
    result = runner.invoke(app, ["--url", svc.url, "job", "nope"])
    assert result.exit_code == 4
    assert result.stderr == "error: no job with id 'nope'\n"


def test_jobs_table_and_json(runner: CliRunner, svc: Service, image: Path) -> None:
    assert runner.invoke(app, ["--url", svc.url, "jobs"]).stdout == "no jobs\n"
    runner.invoke(app, ["--url", svc.url, "submit", str(image)])

    table = runner.invoke(app, ["--url", svc.url, "jobs", "--phase", "QUEUED", "--last", "5"])
    assert table.exit_code == 0, table.output
    assert "j1" in table.stdout and "QUEUED" in table.stdout
    listed = json.loads(runner.invoke(app, ["--url", svc.url, "jobs", "--json"]).stdout)
    assert listed == {"jobs": [{"jobId": "j1", "phase": "QUEUED"}]}


def test_job_shows_details(runner: CliRunner, svc: Service, image: Path) -> None:
    runner.invoke(app, ["--url", svc.url, "submit", str(image), "-p", "thresh=4"])

    shown = runner.invoke(app, ["--url", svc.url, "job", "j1"])
    assert shown.exit_code == 0, shown.output
    assert "QUEUED" in shown.stdout and "thresh" in shown.stdout and "2024-05-01" in shown.stdout
    doc = json.loads(runner.invoke(app, ["--url", svc.url, "job", "j1", "--json"]).stdout)
    assert doc["parameters"] == {"thresh": "4"}


def test_result_to_stdout_and_to_a_file(
    runner: CliRunner, svc: Service, image: Path, tmp_path: Path
) -> None:
    runner.invoke(app, ["--url", svc.url, "submit", str(image)])

    to_stdout = runner.invoke(app, ["--url", svc.url, "result", "j1"])
    assert to_stdout.exit_code == 0
    assert to_stdout.stdout_bytes == VOTABLE

    out = tmp_path / "r.xml"
    to_file = runner.invoke(
        app, ["--url", svc.url, "result", "j1", "--id", "result", "-o", str(out)]
    )
    assert to_file.exit_code == 0
    assert out.read_bytes() == VOTABLE
    assert to_file.stdout == ""


def test_abort_and_delete(runner: CliRunner, svc: Service, image: Path) -> None:
    runner.invoke(app, ["--url", svc.url, "submit", str(image)])

    aborted = runner.invoke(app, ["--url", svc.url, "abort", "j1"])
    assert (aborted.exit_code, aborted.stdout) == (0, "job j1 ABORTED\n")
    deleted = runner.invoke(app, ["--url", svc.url, "delete", "j1"])
    assert (deleted.exit_code, deleted.stdout) == (0, "deleted job j1\n")
    assert runner.invoke(app, ["--url", svc.url, "delete", "j1"]).exit_code == 4


def test_health_exits_1_when_not_ready(runner: CliRunner, svc: Service) -> None:
    result = runner.invoke(app, ["--url", svc.url, "health", "--json"])
    assert result.exit_code == 1
    doc = json.loads(result.stdout)
    assert doc["health"]["status"] == "ok"
    assert doc["ready"]["ready"] is False


def test_models_show_the_installed_versions(runner: CliRunner, svc: Service) -> None:
    listed = runner.invoke(app, ["--url", svc.url, "models"])
    assert listed.exit_code == 0, listed.output
    assert "2.0 (default), 1.0" in listed.stdout
    described = runner.invoke(app, ["--url", svc.url, "models", "describe", "radio-detector"])
    assert described.exit_code == 0, described.output
    assert described.stdout.startswith("radio-detector 2.0: detector 2.0\n")
    assert "installed versions: 2.0 (default), 1.0" in described.stdout
    old = runner.invoke(
        app,
        ["--url", svc.url, "models", "describe", "radio-detector", "--version", "1.0", "--json"],
    )
    assert old.exit_code == 0, old.output
    assert json.loads(old.stdout)["version"] == "1.0"
    unknown = runner.invoke(
        app, ["--url", svc.url, "models", "describe", "radio-detector", "--version", "3.0"]
    )
    assert unknown.exit_code != 0 and "VERSION" in unknown.stderr


# ------------------------------------------------------------------------ issue 18 (items 5-11)


def test_ctrl_c_while_sending_names_the_jobs_already_created(
    runner: CliRunner, svc: Service, tmp_path: Path
) -> None:
    """Ctrl-C during the uploads of a bulk submit: the job created so far (it runs on) is
    named with the commands that pick it up, and so is the image being sent."""
    folder = tmp_path / "deep" / "folder"
    folder.mkdir(parents=True)
    for name in ("a.fits", "b.fits", "c.fits"):
        (folder / name).write_bytes(b"SIMPLE  =                    T" + b" " * 2850)
    svc.interrupt_at = 2
    result = runner.invoke(app, ["--url", svc.url, "submit", str(folder), "--wait"])
    assert result.exit_code == 130, result.output
    assert "Traceback" not in result.output and "Aborted" not in result.output
    assert "interrupted; job j1 goes on on the service" in result.stderr
    assert f"otf --url {svc.url} wait j1" in result.stderr
    assert f"otf --url {svc.url} results j1 --out DIR" in result.stderr
    assert "b.fits was being sent" in result.stderr
    assert len(svc.forms) == 2  # c.fits was not sent


def test_bulk_summary_shows_file_names_not_paths(
    runner: CliRunner, svc: Service, tmp_path: Path
) -> None:
    folder = tmp_path / "a-rather-long-folder-name" / "and-another-one-below-it"
    folder.mkdir(parents=True)
    for name in ("field-a.fits", "field-b.fits"):
        (folder / name).write_bytes(b"SIMPLE  =                    T" + b" " * 2850)
    result = runner.invoke(
        app, ["--url", svc.url, "submit", str(folder), "--wait"], env={"COLUMNS": "80"}
    )
    assert result.exit_code == 0, result.output
    rows = [line for line in result.stdout.splitlines() if "COMPLETED" in line]
    assert len(rows) == 2, result.stdout
    for row, name, job_id in zip(rows, ("field-a.fits", "field-b.fits"), ("j1", "j2"), strict=True):
        assert name in row and job_id in row, result.stdout
    assert "a-rather-long" not in result.stdout


@pytest.mark.parametrize(
    ("args", "extra"), [(["--help"], "astro-otf[dask]"), (["gui", "--help"], "astro-otf[gui]")]
)
def test_help_shows_the_extras_in_brackets(runner: CliRunner, args: list[str], extra: str) -> None:
    result = runner.invoke(app, args, env={"COLUMNS": "200"})
    assert result.exit_code == 0
    assert extra in result.stdout, result.stdout
    assert "(needs astro-otf)" not in result.stdout


def test_make_run_prints_a_submit_hint_for_its_port() -> None:
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        ["make", "-n", "-s", "run", "PORT=8123", "HOST=127.0.0.1"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    submit = [line for line in done.stdout.splitlines() if "otf" in line and " submit " in line]
    assert submit and all("--url http://127.0.0.1:8123" in line for line in submit), done.stdout


def test_result_and_provenance_json_say_what_was_written(
    runner: CliRunner, svc: Service, image: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runner.invoke(app, ["--url", svc.url, "submit", str(image)])
    out = tmp_path / "cat.xml"
    named = runner.invoke(app, ["--url", svc.url, "result", "j1", "-o", str(out), "--json"])
    assert named.exit_code == 0, named.output
    assert json.loads(named.stdout) == {
        "jobId": "j1",
        "resultId": "result",
        "path": str(out),
        "bytes": len(VOTABLE),
        "mediaType": "application/x-votable+xml",
    }
    assert out.read_bytes() == VOTABLE
    monkeypatch.chdir(tmp_path)
    default = runner.invoke(app, ["--url", svc.url, "result", "j1", "--json"])
    assert default.exit_code == 0, default.output
    record = json.loads(default.stdout)
    assert record["path"] == "j1-catalogue.xml"
    assert (tmp_path / "j1-catalogue.xml").read_bytes() == VOTABLE


def test_abort_and_delete_take_many_ids(runner: CliRunner, svc: Service, image: Path) -> None:
    for _ in range(2):
        runner.invoke(app, ["--url", svc.url, "submit", str(image)])
    aborted = runner.invoke(app, ["--url", svc.url, "abort", "j1", "nope", "j2"])
    assert aborted.exit_code == 4
    assert aborted.stdout == "job j1 ABORTED\njob j2 ABORTED\n"
    assert aborted.stderr == "error: job nope: no job with id 'nope'\n"
    deleted = runner.invoke(app, ["--url", svc.url, "delete", "j1", "j2", "--json"])
    assert deleted.exit_code == 0, deleted.output
    assert json.loads(deleted.stdout) == {
        "jobs": [{"jobId": "j1", "deleted": True}, {"jobId": "j2", "deleted": True}]
    }
    assert svc.jobs == {}


@pytest.mark.parametrize("path", ["/jobs", "/jobs/", "//", "/jobs//"])
def test_a_url_to_the_job_list_means_the_service(
    runner: CliRunner, svc: Service, image: Path, path: str
) -> None:
    runner.invoke(app, ["--url", svc.url, "submit", str(image)])
    shown = runner.invoke(app, ["--url", svc.url + path, "job", "j1", "--json"])
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.stdout)["jobId"] == "j1"


@pytest.mark.parametrize(
    ("given", "base"),
    [
        ("http://host:8000/jobs", "http://host:8000"),
        ("http://host:8000/jobs/", "http://host:8000"),
        ("https://host/otf/jobs//", "https://host/otf"),
        ("https://host/otf/", "https://host/otf"),
        ("http://host:8000/jobsite", "http://host:8000/jobsite"),
    ],
)
def test_the_client_takes_the_base_of_a_jobs_url(given: str, base: str) -> None:
    with OTFClient(given) as client:
        assert client.url == base


@pytest.mark.parametrize(
    ("roi", "expected"),
    [
        (("29.9", "-15.5", "10arcmin", "100"), ("29.9", "-15.5", "10 arcmin", "100")),
        (("-0.5", "-30", "5'", '30"'), ("359.5", "-30", "5 arcmin", "30 arcsec")),
        (
            ("17h09m38.4s", "-43d12m45s", "0.1deg", "64 pix"),
            ("257.41", "-43.2125", "0.1 deg", "64 pix"),
        ),
        (
            ("17:09:38.4", "-43:12:45", "1d30m", "2 arcmin"),
            ("257.41", "-43.2125", "1.5 deg", "2 arcmin"),
        ),
        (("360", "+90", "5\u2032", "128"), ("0", "90", "5 arcmin", "128")),
        (("-370.25", "0", "1arcsec", "1"), ("349.75", "0", "1 arcsec", "1")),
    ],
)
def test_roi_reads_angles_sexagesimal_and_negative_ra(
    roi: tuple[str, str, str, str], expected: tuple[str, str, str, str]
) -> None:
    assert roi_params(*roi) == dict(zip(("RA", "DEC", "WIDTH", "HEIGHT"), expected, strict=True))


def test_roi_is_sent_in_degrees_and_angles(runner: CliRunner, svc: Service, image: Path) -> None:
    args = ["--url", svc.url, "submit", str(image), "--roi", "-0.5", "-30:00:00", "5'", '30"']
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    form = svc.forms[0]
    assert (form["RA"], form["DEC"], form["WIDTH"], form["HEIGHT"]) == (
        "359.5",
        "-30",
        "5 arcmin",
        "30 arcsec",
    )


@pytest.mark.parametrize(
    ("roi", "word"),
    [
        (["10", "95", "1", "1"], "DEC"),
        (["ten", "0", "1", "1"], "RA"),
        (["10", "0", "-5'", "1"], "width"),
        (["10", "0", "1", "3 kg"], "height"),
        (["nan", "0", "1", "1"], "RA"),
    ],
)
def test_a_bad_roi_is_a_usage_error_naming_it(
    runner: CliRunner, image: Path, roi: list[str], word: str
) -> None:
    result = runner.invoke(app, ["--url", UNREACHABLE, "submit", str(image), "--roi", *roi])
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: --roi:") and word in result.stderr, result.stderr
