"""The served OpenAPI document describes what every route really takes, and a fuzzer driven
by it (schemathesis) finds no request that the service answers with a 5xx.

The server is a real process (SQLite) with a short WAIT cap, so that generated WAITs do not
hold the run; every operation gets a bounded number of generated requests.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

from tests.conftest import ServerProcess

EXAMPLES_PER_OPERATION = 20
EXAMPLES_ON_A_JOB = 10
FINAL = {"COMPLETED", "ERROR", "ABORTED"}


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = ServerProcess(
        tmp_path_factory.mktemp("otf-fuzz") / "data",
        None,
        max_wait="1",
        max_upload_bytes=str(4 * 1024 * 1024),
    )
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def openapi_doc(fuzz_server: ServerProcess) -> dict[str, Any]:
    r = httpx.get(f"{fuzz_server.url}/openapi.json", timeout=10)
    assert r.status_code == 200
    doc: dict[str, Any] = r.json()
    return doc


def params(doc: dict[str, Any], method: str, path: str) -> set[str]:
    return {p["name"] for p in doc["paths"][path][method].get("parameters", [])}


def body_fields(doc: dict[str, Any], method: str, path: str, ctype: str) -> dict[str, Any]:
    schema = doc["paths"][path][method]["requestBody"]["content"][ctype]["schema"]
    fields: dict[str, Any] = schema["properties"]
    return fields


def test_the_document_lists_the_query_parameters(openapi_doc: dict[str, Any]) -> None:
    assert {"PHASE", "AFTER", "LAST"} <= params(openapi_doc, "get", "/jobs")
    assert {"job_id", "WAIT", "PHASE"} <= params(openapi_doc, "get", "/jobs/{job_id}")
    assert "FORMAT" in params(openapi_doc, "get", "/jobs/{job_id}/error")
    assert "FORMAT" in params(openapi_doc, "get", "/jobs/{job_id}/provenance")
    assert "version" in params(openapi_doc, "get", "/models/{model_id}")
    last = next(
        p for p in openapi_doc["paths"]["/jobs"]["get"]["parameters"] if p["name"] == "LAST"
    )
    assert last["schema"]["type"] == "integer" and last["schema"]["minimum"] == 1


def test_the_document_lists_the_form_bodies(openapi_doc: dict[str, Any]) -> None:
    create = body_fields(openapi_doc, "post", "/jobs", "multipart/form-data")
    assert {"PHASE", "RUNID", "MODEL", "RA", "DEC", "WIDTH", "HEIGHT", "IMAGE"} <= set(create)
    assert create["IMAGE"]["format"] == "binary"
    assert create["RUNID"]["maxLength"] == 255
    schema = openapi_doc["paths"]["/jobs"]["post"]["requestBody"]["content"]["multipart/form-data"][
        "schema"
    ]
    assert schema["additionalProperties"] == {"type": "string", "maxLength": 1024}
    form = body_fields(openapi_doc, "post", "/jobs", "application/x-www-form-urlencoded")
    assert "IMAGE" not in form and "RUNID" in form
    for path, field in (
        ("/jobs/{job_id}/phase", "PHASE"),
        ("/jobs/{job_id}/executionduration", "EXECUTIONDURATION"),
        ("/jobs/{job_id}/destruction", "DESTRUCTION"),
        ("/jobs/{job_id}", "ACTION"),
    ):
        body = openapi_doc["paths"][path]["post"]["requestBody"]
        assert body["required"] is True
        assert field in body_fields(openapi_doc, "post", path, "application/x-www-form-urlencoded")
    assert "IMAGE" in body_fields(
        openapi_doc, "post", "/jobs/{job_id}/parameters", "multipart/form-data"
    )
    # every POST route says what it takes
    for path, ops in openapi_doc["paths"].items():
        if "post" in ops:
            assert "requestBody" in ops["post"], path


@pytest.fixture(scope="module")
def fuzz_schema(fuzz_server: ServerProcess) -> Any:
    return schemathesis.openapi.from_url(f"{fuzz_server.url}/openapi.json")


def run_fuzz(operation: Any, mode: GenerationMode, examples: int, **fixed: Any) -> str | None:
    """Generated requests of one operation in one mode; the first failure, or None."""

    @settings(
        max_examples=examples,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        database=None,
    )
    @given(case=operation.as_strategy(generation_mode=mode, **fixed))
    def call(case: Any) -> None:
        response = case.call(timeout=30)
        case.validate_response(response, checks=[not_a_server_error])

    try:
        call()
    except Unsatisfiable:  # nothing of it can be broken: no negative request exists
        return None
    except Exception as exc:
        return f"{operation.label} ({mode.value}, {fixed or 'generated ids'}): {exc}"
    return None


@pytest.fixture(scope="module")
def finished_job(fuzz_server: ServerProcess, test_data: Path) -> str:
    """A COMPLETED sep job, so that results, provenance and the rest have something real."""
    with httpx.Client(base_url=fuzz_server.url, timeout=60) as c:
        image = (test_data / "image2d.fits").read_bytes()
        r = c.post("/jobs", data={"PHASE": "RUN"}, files={"IMAGE": ("i.fits", image)})
        assert r.status_code == 303, r.text
        job_id = r.headers["location"].rsplit("/", 1)[-1]
        deadline = time.monotonic() + 60
        while c.get(f"/jobs/{job_id}/phase").text not in FINAL:
            assert time.monotonic() < deadline
            c.get(f"/jobs/{job_id}", params={"WAIT": 1})
    return job_id


def test_no_generated_request_is_a_server_error(
    fuzz_schema: Any, fuzz_server: ServerProcess, finished_job: str
) -> None:
    """Every operation, with requests that follow the document (positive) and requests that
    break it on purpose (negative): never a 5xx. Operations on one job run with generated
    ids, then on a real job: a PENDING one for the changes, the finished one for reads."""
    failures: list[str | None] = []
    operations = 0
    for result in fuzz_schema.get_all_operations():
        operation = result.ok()
        operations += 1
        if operation.path == "/jobs/events":
            continue  # a stream that never ends: test_job_identity reads it, bad input too
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            failures.append(run_fuzz(operation, mode, EXAMPLES_PER_OPERATION))
            if "{job_id}" not in operation.path:
                continue
            if operation.method.upper() == "GET":
                job_id = finished_job
            else:
                made = httpx.post(
                    f"{fuzz_server.url}/jobs", data={"MODEL": "sleep", "DURATION": "0.05"}
                )
                assert made.status_code == 303, made.text
                job_id = made.headers["location"].rsplit("/", 1)[-1]
            failures.append(
                run_fuzz(
                    operation,
                    mode,
                    EXAMPLES_ON_A_JOB,
                    path_parameters={"job_id": job_id},
                )
            )
    assert operations >= 25
    found = [f for f in failures if f is not None]
    assert not found, "\n\n".join(found)
