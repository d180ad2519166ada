"""Tests of the ``otf`` command line: argument parsing, output, and exit codes.

Commands run in-process through Typer's ``CliRunner``. Those that need a service talk over
loopback HTTP to the shared stand-in of tests/fake_uws.py, set so that every job ends at its
first WAIT, so the tests check what the command does with the answers, not the service itself.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from astro_otf import __version__
from astro_otf.cli.main import app
from astro_otf.cli.roi import roi_params
from astro_otf.client import OTFClient
from tests.fake_uws import SILENT, VOTABLE, Answer, FakeUWS, Request

UNREACHABLE = "http://127.0.0.1:9"
COMMANDS = ["serve", "submit", "jobs", "job", "result", "abort", "delete", "health"]

#: The installed versions of the one model the stand-in offers, newest (the default) first.
MODEL_VERSIONS = ["2.0", "1.0"]


def _model(version: str) -> dict[str, Any]:
    """The description of one version of the stand-in's model (``/models/radio-detector``)."""
    return {
        "id": "radio-detector",
        "version": version,
        "versions": MODEL_VERSIONS,
        "description": f"detector {version}",
        "precisions": ["fp32"],
        "parameters": [{"name": "threshold", "type": "float", "default": 0.4}],
    }


def _describe_model(request: Request) -> Answer:
    """``/models/radio-detector?version=V``: that version, 400 when it is not installed."""
    version = request.query.get("version", [MODEL_VERSIONS[0]])[0]
    if version not in MODEL_VERSIONS:
        return Answer(400, f"VERSION: {version!r} is not installed")
    return Answer.json(200, _model(version))


def _interrupt_at(upload: int) -> Callable[[Request], Answer | None]:
    """A script for ``POST /jobs``: the ``upload``-th one sends this process SIGINT (Ctrl-C,
    while the CLI waits for the answer) and is never answered; the others create jobs."""
    count = itertools.count(1)

    def script(request: Request) -> Answer | None:
        if next(count) != upload:
            return None
        os.kill(os.getpid(), signal.SIGINT)
        return SILENT

    return script


def _forms(fake: FakeUWS) -> list[dict[str, str]]:
    """The form fields of every job creation the stand-in received, in order."""
    return [r.form for r in fake.sent("POST", "/jobs")]


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OTF_URL", raising=False)
    monkeypatch.delenv("OTF_TOKEN", raising=False)


@pytest.fixture
def fake() -> Iterator[FakeUWS]:
    """The stand-in service as these tests want it: a job ends at its first WAIT, in ERROR
    with "model crashed" when its MODEL is "broken"; there is no event stream (so a command
    that waits polls with WAIT) and the service is never ready (``/health/ready`` is 503);
    one model, ``radio-detector``, has two versions."""
    with FakeUWS() as fake:
        fake.life = ("QUEUED", "COMPLETED")
        fake.failing = {"broken": "model crashed"}
        fake.answer("GET", "/jobs/events", Answer(404, "no event stream here"), times=None)
        not_ready = {"status": "fail", "checks": {"db": "down"}}
        fake.answer("GET", "/health/ready", Answer.json(503, not_ready), times=None)
        models = {"default": "radio-detector", "models": [_model(MODEL_VERSIONS[0])]}
        fake.answer("GET", "/models", Answer.json(200, models), times=None)
        fake.answer("GET", "/models/radio-detector", _describe_model, times=None)
        yield fake


@pytest.fixture
def runner() -> CliRunner:
    """Runs ``otf`` commands in this process, capturing stdout and stderr apart."""
    return CliRunner()


@pytest.fixture
def image(tmp_path: Path) -> Path:
    """A small file with a FITS header start: the CLI sends it without reading it as FITS."""
    path = tmp_path / "field.fits"
    path.write_bytes(b"SIMPLE  =                    T" + b" " * 2850)
    return path


def _submit(runner: CliRunner, fake: FakeUWS, image: Path, *options: str) -> None:
    """Create a job of ``image`` with ``otf submit``, as the setup of a test of another
    command."""
    result = runner.invoke(app, ["--url", fake.url, "submit", str(image), *options])
    assert result.exit_code == 0, result.output


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
    runner: CliRunner, fake: FakeUWS, image: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTF_TOKEN", "tok")
    args = ["--url", fake.url, "submit", str(image), "-p", "thresh=5", "--param", "MODEL=x"]
    result = runner.invoke(app, [*args, "--model", "sep", "--run-id", "r7"])
    assert result.exit_code == 0, result.output
    assert result.stdout == "job1\n"
    assert _forms(fake) == [{"thresh": "5", "MODEL": "sep", "PHASE": "RUN", "RUNID": "r7"}]
    assert [r.header("Authorization") for r in fake.requests] == ["Bearer tok"]


def test_submit_no_run_json(runner: CliRunner, fake: FakeUWS, image: Path) -> None:
    result = runner.invoke(app, ["--url", fake.url, "submit", str(image), "--no-run", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["phase"] == "PENDING"
    assert "PHASE" not in _forms(fake)[0]


def test_submit_wait_out_writes_the_catalogue_and_counts_sources(
    runner: CliRunner, fake: FakeUWS, image: Path, tmp_path: Path
) -> None:
    out = tmp_path / "cat.xml"
    result = runner.invoke(
        app, ["--url", fake.url, "--token", "t", "submit", str(image), "--wait", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert out.read_bytes() == VOTABLE
    assert result.stdout == f"job job1 COMPLETED, 3 sources, catalogue written to {out}\n"
    assert {r.header("Authorization") for r in fake.requests} == {"Bearer t"}


def test_submit_wait_on_a_failing_job_exits_1_with_its_message(
    runner: CliRunner, fake: FakeUWS, image: Path
) -> None:
    result = runner.invoke(app, ["--url", fake.url, "submit", str(image), "-m", "broken", "-w"])
    assert result.exit_code == 1
    assert result.stdout == "job job1 ERROR\n"
    assert result.stderr.endswith("error: model crashed\n")


def test_unknown_job_exits_4_with_the_servers_message(runner: CliRunner, fake: FakeUWS) -> None:
    result = runner.invoke(app, ["--url", fake.url, "job", "nope"])
    assert result.exit_code == 4
    assert result.stderr == "error: no job with id 'nope'\n"


def test_jobs_table_and_json(runner: CliRunner, fake: FakeUWS, image: Path) -> None:
    assert runner.invoke(app, ["--url", fake.url, "jobs"]).stdout == "no jobs\n"
    _submit(runner, fake, image)

    table = runner.invoke(app, ["--url", fake.url, "jobs", "--phase", "QUEUED", "--last", "5"])
    assert table.exit_code == 0, table.output
    assert "job1" in table.stdout and "QUEUED" in table.stdout
    listed = json.loads(runner.invoke(app, ["--url", fake.url, "jobs", "--json"]).stdout)
    created = fake.jobs["job1"]["creationTime"]
    assert listed == {
        "jobs": [
            {
                "jobId": "job1",
                "phase": "QUEUED",
                "runId": None,
                "ownerId": "anonymous",
                "creationTime": created,
                "href": f"{fake.url}/jobs/job1",
            }
        ]
    }


def test_job_shows_details(runner: CliRunner, fake: FakeUWS, image: Path) -> None:
    _submit(runner, fake, image, "-p", "thresh=4")
    fake.jobs["job1"]["creationTime"] = "2024-05-01T12:00:00Z"

    shown = runner.invoke(app, ["--url", fake.url, "job", "job1"])
    assert shown.exit_code == 0, shown.output
    assert "QUEUED" in shown.stdout and "thresh" in shown.stdout and "2024-05-01" in shown.stdout
    doc = json.loads(runner.invoke(app, ["--url", fake.url, "job", "job1", "--json"]).stdout)
    assert doc["parameters"] == {"thresh": "4"}


def test_result_to_stdout_and_to_a_file(
    runner: CliRunner, fake: FakeUWS, image: Path, tmp_path: Path
) -> None:
    _submit(runner, fake, image)
    fake.finish("job1")

    to_stdout = runner.invoke(app, ["--url", fake.url, "result", "job1"])
    assert to_stdout.exit_code == 0
    assert to_stdout.stdout_bytes == VOTABLE

    out = tmp_path / "r.xml"
    to_file = runner.invoke(
        app, ["--url", fake.url, "result", "job1", "--id", "result", "-o", str(out)]
    )
    assert to_file.exit_code == 0
    assert out.read_bytes() == VOTABLE
    assert to_file.stdout == ""


def test_abort_and_delete(runner: CliRunner, fake: FakeUWS, image: Path) -> None:
    _submit(runner, fake, image)

    aborted = runner.invoke(app, ["--url", fake.url, "abort", "job1"])
    assert (aborted.exit_code, aborted.stdout) == (0, "job job1 ABORTED\n")
    deleted = runner.invoke(app, ["--url", fake.url, "delete", "job1"])
    assert (deleted.exit_code, deleted.stdout) == (0, "deleted job job1\n")
    assert runner.invoke(app, ["--url", fake.url, "delete", "job1"]).exit_code == 4


def test_health_exits_1_when_not_ready(runner: CliRunner, fake: FakeUWS) -> None:
    result = runner.invoke(app, ["--url", fake.url, "health", "--json"])
    assert result.exit_code == 1
    doc = json.loads(result.stdout)
    assert doc["health"]["status"] == "ok"
    assert doc["ready"]["ready"] is False


def test_models_show_the_installed_versions(runner: CliRunner, fake: FakeUWS) -> None:
    listed = runner.invoke(app, ["--url", fake.url, "models"])
    assert listed.exit_code == 0, listed.output
    assert "2.0 (default), 1.0" in listed.stdout
    described = runner.invoke(app, ["--url", fake.url, "models", "describe", "radio-detector"])
    assert described.exit_code == 0, described.output
    assert described.stdout.startswith("radio-detector 2.0: detector 2.0\n")
    assert "installed versions: 2.0 (default), 1.0" in described.stdout
    old = runner.invoke(
        app,
        ["--url", fake.url, "models", "describe", "radio-detector", "--version", "1.0", "--json"],
    )
    assert old.exit_code == 0, old.output
    assert json.loads(old.stdout)["version"] == "1.0"
    unknown = runner.invoke(
        app, ["--url", fake.url, "models", "describe", "radio-detector", "--version", "3.0"]
    )
    assert unknown.exit_code != 0 and "VERSION" in unknown.stderr


# ------------------------------------------------------------------------ issue 18 (items 5-11)


def test_ctrl_c_while_sending_names_the_jobs_already_created(
    runner: CliRunner, fake: FakeUWS, tmp_path: Path
) -> None:
    """Ctrl-C during the uploads of a bulk submit: the job created so far (it runs on) is
    named with the commands that pick it up, and so is the image being sent."""
    folder = tmp_path / "deep" / "folder"
    folder.mkdir(parents=True)
    for name in ("a.fits", "b.fits", "c.fits"):
        (folder / name).write_bytes(b"SIMPLE  =                    T" + b" " * 2850)
    fake.answer("POST", "/jobs", _interrupt_at(2), times=None)
    result = runner.invoke(app, ["--url", fake.url, "submit", str(folder), "--wait"])
    assert result.exit_code == 130, result.output
    assert "Traceback" not in result.output and "Aborted" not in result.output
    assert "interrupted; job job1 goes on on the service" in result.stderr
    assert f"otf --url {fake.url} wait job1" in result.stderr
    assert f"otf --url {fake.url} results job1 --out DIR" in result.stderr
    assert "b.fits was being sent" in result.stderr
    assert len(_forms(fake)) == 2  # c.fits was not sent


def test_bulk_summary_shows_file_names_not_paths(
    runner: CliRunner, fake: FakeUWS, tmp_path: Path
) -> None:
    folder = tmp_path / "a-rather-long-folder-name" / "and-another-one-below-it"
    folder.mkdir(parents=True)
    for name in ("field-a.fits", "field-b.fits"):
        (folder / name).write_bytes(b"SIMPLE  =                    T" + b" " * 2850)
    result = runner.invoke(
        app, ["--url", fake.url, "submit", str(folder), "--wait"], env={"COLUMNS": "80"}
    )
    assert result.exit_code == 0, result.output
    rows = [line for line in result.stdout.splitlines() if "COMPLETED" in line]
    assert len(rows) == 2, result.stdout
    for row, name, job_id in zip(
        rows, ("field-a.fits", "field-b.fits"), ("job1", "job2"), strict=True
    ):
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
    runner: CliRunner, fake: FakeUWS, image: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _submit(runner, fake, image)
    fake.finish("job1")
    out = tmp_path / "cat.xml"
    named = runner.invoke(app, ["--url", fake.url, "result", "job1", "-o", str(out), "--json"])
    assert named.exit_code == 0, named.output
    assert json.loads(named.stdout) == {
        "jobId": "job1",
        "resultId": "result",
        "path": str(out),
        "bytes": len(VOTABLE),
        "mediaType": "application/x-votable+xml",
    }
    assert out.read_bytes() == VOTABLE
    monkeypatch.chdir(tmp_path)
    default = runner.invoke(app, ["--url", fake.url, "result", "job1", "--json"])
    assert default.exit_code == 0, default.output
    record = json.loads(default.stdout)
    assert record["path"] == "job1-catalogue.xml"
    assert (tmp_path / "job1-catalogue.xml").read_bytes() == VOTABLE


def test_abort_and_delete_take_many_ids(runner: CliRunner, fake: FakeUWS, image: Path) -> None:
    for _ in range(2):
        _submit(runner, fake, image)
    aborted = runner.invoke(app, ["--url", fake.url, "abort", "job1", "nope", "job2"])
    assert aborted.exit_code == 4
    assert aborted.stdout == "job job1 ABORTED\njob job2 ABORTED\n"
    assert aborted.stderr == "error: job nope: no job with id 'nope'\n"
    deleted = runner.invoke(app, ["--url", fake.url, "delete", "job1", "job2", "--json"])
    assert deleted.exit_code == 0, deleted.output
    assert json.loads(deleted.stdout) == {
        "jobs": [{"jobId": "job1", "deleted": True}, {"jobId": "job2", "deleted": True}]
    }
    assert fake.jobs == {}


@pytest.mark.parametrize("path", ["/jobs", "/jobs/", "//", "/jobs//"])
def test_a_url_to_the_job_list_means_the_service(
    runner: CliRunner, fake: FakeUWS, image: Path, path: str
) -> None:
    _submit(runner, fake, image)
    shown = runner.invoke(app, ["--url", fake.url + path, "job", "job1", "--json"])
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.stdout)["jobId"] == "job1"


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


def test_roi_is_sent_in_degrees_and_angles(runner: CliRunner, fake: FakeUWS, image: Path) -> None:
    args = ["--url", fake.url, "submit", str(image), "--roi", "-0.5", "-30:00:00", "5'", '30"']
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    form = _forms(fake)[0]
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
