"""The UWS 1.1 job resources. Handlers parse the request, ask the JobService, and render:
no policy, SQL or file layout lives here."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import IO, Any, cast

from fastapi import APIRouter, Request
from fastapi.responses import (
    FileResponse,
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    StreamingResponse,
)
from starlette.responses import Response

from astro_otf.domain.errors import (
    NotAcceptable,
    NotFound,
    ParameterError,
    RequestError,
    ServiceBusy,
)
from astro_otf.domain.forms import Form
from astro_otf.domain.job import Job
from astro_otf.domain.phases import Phase
from astro_otf.results.provenance import PROV_FORMATS, negotiate
from astro_otf.results.votable import error_votable
from astro_otf.service.jobs import HashingWriter, JobService
from astro_otf.service.threads import in_thread
from astro_otf.uws import openapi, render
from astro_otf.uws.auth import Owner
from astro_otf.uws.compat import parse_cianna_job
from astro_otf.uws.state import Service, settings_of
from astro_otf.uws.uploads import read_form

__all__ = [
    "check_filter",
    "links_for",
    "parse_count",
    "parse_phase",
    "parse_time",
    "query",
    "router",
]

router = APIRouter()

#: Event streams (GET /jobs/events) open at once, at most.
MAX_EVENT_STREAMS = 256
#: The most lines GET /jobs/{id}/log?TAIL= returns.
MAX_LOG_TAIL = 10_000

XML = "application/xml"
VOTABLE = "application/x-votable+xml"


# -- dependencies and helpers ------------------------------------------------------------


# The routes' arguments ``service: Service`` and ``owner: Owner`` are dependencies (see
# astro_otf.uws.state and astro_otf.uws.auth).


def links_for(request: Request) -> render.Links:
    """The URLs of the service's resources, from ``base_url`` or else the request's."""
    settings = settings_of(request)
    return render.Links(settings.base_url or str(request.base_url))


def wants_json(request: Request) -> bool:
    """Whether the client asks for JSON rather than the UWS XML (its Accept header)."""
    accept = request.headers.get("accept", "").lower()
    return "application/json" in accept and "xml" not in accept


def query(request: Request) -> dict[str, list[str]]:
    """Query parameters with case-insensitive names."""
    out: dict[str, list[str]] = {}
    for key, value in request.query_params.multi_items():
        out.setdefault(key.lower(), []).append(value)
    return out


def see_other(url: str) -> RedirectResponse:
    """UWS's answer to a change: 303 to the resource to read next."""
    return RedirectResponse(url, status_code=303)


def parse_time(name: str, text: str) -> datetime:
    """An ISO 8601 time in UTC (a time without a zone is UTC); ParameterError names
    ``name``."""
    value = text.strip()
    if value.endswith(("Z", "z")):
        value = value[:-1] + "+00:00"
    try:
        when = datetime.fromisoformat(value)
        return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)
    except ValueError:
        raise ParameterError(
            name, f"{text[:64]!r} is not an ISO 8601 time (e.g. 2026-11-22T10:00:00Z)"
        ) from None
    except OverflowError:  # 0001-01-01T00:00:00+01:00 is before year 1 in UTC
        raise ParameterError(name, f"{text[:64]!r} is out of the range of times in UTC") from None


def parse_phase(name: str, text: str) -> Phase:
    """A UWS phase, in any case; ParameterError names ``name`` and lists the phases."""
    try:
        return Phase(text.strip().upper())
    except ValueError:
        raise ParameterError(
            name, f"{text[:64]!r} is not a UWS phase ({', '.join(p.value for p in Phase)})"
        ) from None


def parse_count(name: str, text: str) -> int:
    """A whole number written in ASCII digits (no sign, no exponent); its range is the
    service's to judge."""
    digits = text.strip()
    if not (digits.isascii() and digits.isdigit()):
        raise ParameterError(name, f"{text[:64]!r} is not a positive integer")
    digits = digits.lstrip("0") or "0"
    if len(digits) > 30:  # int() of thousands of digits is slow, then refused
        raise ParameterError(name, f"a number of {len(digits)} digits is out of range")
    return int(digits)


def check_filter(name: str, text: str) -> str:
    """A job-list filter value (RUNID, IMAGE): a short text without control characters."""
    value = text.strip()
    if not value or len(value) > 255 or any(ord(c) < 32 for c in value):
        raise ParameterError(
            name, f"{text[:64]!r} is not a filter value (1-255 printable characters)"
        )
    return value


def form_limit(request: Request) -> int:
    """The most bytes of text fields a request's form may hold (``max_form_bytes``)."""
    return settings_of(request).max_form_bytes


def single(form: Form, name: str) -> str | None:
    """The value of text field ``name`` (lower case), or None."""
    return form.fields.get(name)


def xml_or_json(request: Request, xml: bytes, data: Any) -> Response:
    """The XML document, or its JSON twin when the client asks for JSON."""
    if wants_json(request):
        return JSONResponse(data)
    return Response(xml, media_type=XML)


def job_document(
    request: Request,
    service: JobService,
    job: Job,
    xml: Callable[[Job, render.Links], bytes],
    data: Callable[[Job, render.Links], Any],
) -> Response:
    """A job's XML or JSON document, rendered only in the form asked for, and once per
    cached job record (the key holds the renderer and the base URL the links are made of)."""
    links = links_for(request)
    if wants_json(request):
        body = service.document(
            job, f"json {data.__name__} {links.base}", lambda: _json_bytes(data(job, links))
        )
        return Response(body, media_type="application/json")
    body = service.document(job, f"xml {xml.__name__} {links.base}", lambda: xml(job, links))
    return Response(body, media_type=XML)


def _json_bytes(data: Any) -> bytes:
    return bytes(JSONResponse(data).body)


# -- job list ------------------------------------------------------------------------------


@router.get("/jobs", openapi_extra=openapi.JOB_LIST)
async def list_jobs(request: Request, service: Service, owner: Owner) -> Response:
    """The caller's jobs (uws:jobs, or JSON with each job's details), newest first,
    filtered by PHASE, AFTER, LAST, RUNID and IMAGE."""
    q = query(request)
    phases = [parse_phase("phase", p) for p in q.get("phase", [])]
    after = parse_time("after", q["after"][-1]) if "after" in q else None
    last = parse_count("last", q["last"][-1]) if "last" in q else None
    run_ids = [check_filter("runid", v) for v in q.get("runid", [])]
    images = [check_filter("image", v) for v in q.get("image", [])]
    as_json = wants_json(request)
    jobs = await service.list(
        owner, phases or None, after, last, run_ids=run_ids, image_names=images, details=as_json
    )
    links = links_for(request)
    if as_json:
        return JSONResponse(render.job_list_json(jobs, links, service.queue_place))
    return Response(render.job_list_xml(jobs, links), media_type=XML)


@router.get("/jobs/events", openapi_extra=openapi.JOB_EVENTS)
async def job_events(request: Request, service: Service, owner: Owner) -> Response:
    """Server-Sent Events: the phase and progress changes of the caller's jobs, as they
    happen. Resumable: a client that reconnects with ``Last-Event-ID`` (or
    ``LAST_EVENT_ID``) gets what it missed, or a ``reset`` event when that is gone. ``JOB``
    (repeatable) keeps only those jobs."""
    q = query(request)
    last_id = request.headers.get("last-event-id")
    if last_id is None and "last_event_id" in q:
        last_id = q["last_event_id"][-1]
    jobs = q.get("job", [])
    for job_id in jobs:
        if len(job_id) > 64:
            raise ParameterError("job", f"{job_id[:64]!r}... is not a job id")
    feed = service.feed
    if feed.subscribers >= MAX_EVENT_STREAMS:
        raise ServiceBusy(
            f"{feed.subscribers} event streams are open, the most this service serves; "
            "try again later or poll /jobs",
            retry_after=10,
        )
    if last_id is None:
        # from now, not from when the body starts streaming: the headers (and the client's
        # "open") come first, and a change in between would be missed by a client that
        # reads the job once its stream is open
        last_id = feed.cursor()

    async def stream() -> AsyncIterator[bytes]:
        feed.subscribers += 1
        try:
            yield b"retry: 2000\n\n"
            async for event in feed.follow(
                owner,
                check_owner=service.checks(owner),
                last_event_id=last_id,
                jobs=jobs,
            ):
                if event is None:
                    yield b": keep-alive\n\n"
                    continue
                data = json.dumps(event.data, separators=(",", ":"))
                yield (
                    f"id: {feed.event_id(event)}\nevent: {event.kind}\ndata: {data}\n\n"
                ).encode()
        finally:
            feed.subscribers -= 1

    return StreamingResponse(
        stream(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


@router.post("/jobs", openapi_extra=openapi.CREATE_JOB)
@router.post("/jobs/", include_in_schema=False)
async def create_job(request: Request, service: Service, owner: Owner) -> Response:
    """Create a job from its parameters (form-encoded, or multipart with the IMAGE file; a
    CIANNA On-The-Fly client's ``xml`` field is read too); ``PHASE=RUN`` queues it at once.
    Answers 303 to the new job."""
    settings = settings_of(request)
    await service.admit(owner)  # an owner over its quotas is refused before its upload
    job_id = service.new_job_id()
    if request.headers.get("content-type", "").lower().startswith("multipart/"):
        # an upload may stream in: the folder first (a plain form's job gets its folder
        # in the same thread hop as its row: JobService.create)
        await in_thread(service.prepare, job_id)

    uploaded: dict[str, HashingWriter] = {}
    names: dict[str, str] = {}

    def sink(name: str, filename: str) -> IO[bytes] | None:
        if name in ("image", "fits"):  # "fits": the CIANNA On-The-Fly field
            writer = uploaded["image"] = service.open_upload(job_id, "image")
            if filename:
                names["image"] = filename
            return cast(IO[bytes], writer)
        return None

    try:
        form = await read_form(
            request,
            max_form_bytes=settings.max_form_bytes,
            max_upload_bytes=settings.max_upload_bytes,
            sink=sink,
        )
        if "fits" in form.files:
            form.files["image"] = form.files.pop("fits")
        if "xml" in form.fields:
            job = await _create_cianna(
                service,
                job_id,
                owner,
                form,
                names.get("image"),
                {k: w.digest.hexdigest() for k, w in uploaded.items()},
            )
        else:
            fields = dict(form.fields)
            phase = fields.pop("phase", None)
            run_id = fields.pop("runid", None)
            if phase is not None and phase.strip().upper() != "RUN":
                raise ParameterError("phase", f"{phase!r} at creation: only PHASE=RUN is allowed")
            job = await service.create(
                job_id,
                owner,
                fields,
                list(form.files),
                run_id=run_id,
                start=phase is not None,
                image_name=names.get("image"),
                digests={k: w.digest.hexdigest() for k, w in uploaded.items()},
            )
    except BaseException:
        await service.discard(job_id)
        raise
    return see_other(links_for(request).job(job.job_id))


async def _create_cianna(
    service: JobService,
    job_id: str,
    owner: str | None,
    form: Form,
    image_name: str | None,
    digests: dict[str, str],
) -> Any:
    request = parse_cianna_job(form.fields.pop("xml"))
    extra = {k: v for k, v in form.fields.items() if k not in ("phase", "runid")}
    fields = {**request.fields, **extra}
    try:
        # CIANNA clients never send PHASE=RUN: their submission is queued at once.
        return await service.create(
            job_id,
            owner,
            fields,
            list(form.files),
            run_id=request.run_id,
            start=True,
            image_name=image_name,
            digests=digests,
        )
    except ParameterError as exc:
        origin = request.origin.get(exc.name)
        if origin is None:
            raise
        raise ParameterError(
            exc.name, f"{exc.message.split(': ', 1)[-1]} (from the CIANNA parameter {origin})"
        ) from None


# -- one job -------------------------------------------------------------------------------


@router.get("/jobs/{job_id}", openapi_extra=openapi.GET_JOB)
async def get_job(job_id: str, request: Request, service: Service, owner: Owner) -> Response:
    """The job document (uws:job, or JSON). ``WAIT=N`` blocks up to N seconds (-1: the
    longest allowed) until the job leaves its current active phase (or ``PHASE``)."""
    q = query(request)
    if "wait" in q:
        text = q["wait"][-1].strip()
        try:
            wait = int(text)
        except ValueError:
            raise ParameterError("wait", f"{text!r} is not an integer number of seconds") from None
        if wait < -1:
            raise ParameterError("wait", f"{wait} is not allowed: use -1 or a number >= 0")
        settings = settings_of(request)
        timeout = settings.max_wait if wait == -1 else min(wait, settings.max_wait)
        phase = parse_phase("phase", q["phase"][-1]) if "phase" in q else None
        job = await service.wait(job_id, owner, timeout, phase)
    else:
        job = await service.get(job_id, owner)
    return job_document(request, service, job, render.job_xml, render.job_json)


@router.delete("/jobs/{job_id}")
async def delete_job(job_id: str, request: Request, service: Service, owner: Owner) -> Response:
    """Delete the job (aborted first if it runs) and its files; answers 303 to the job
    list."""
    await service.delete(job_id, owner)
    return see_other(links_for(request).jobs())


@router.post("/jobs/{job_id}", openapi_extra=openapi.POST_JOB)
async def post_job(job_id: str, request: Request, service: Service, owner: Owner) -> Response:
    """``ACTION=DELETE``: delete the job, as DELETE does (for clients that only POST)."""
    form = await read_form(request, max_form_bytes=form_limit(request))
    action = single(form, "action")
    if action is None or action.strip().upper() != "DELETE":
        raise ParameterError(
            "action",
            "POST to a job takes ACTION=DELETE; parameters go to "
            f"/jobs/{job_id}/parameters and phase changes to /jobs/{job_id}/phase",
        )
    await service.delete(job_id, owner)
    return see_other(links_for(request).jobs())


@router.get("/jobs/{job_id}/phase")
async def get_phase(job_id: str, service: Service, owner: Owner) -> Response:
    """The job's phase, as plain text."""
    job = await service.get(job_id, owner)
    return PlainTextResponse(job.phase.value)


@router.post("/jobs/{job_id}/phase", openapi_extra=openapi.POST_PHASE)
async def post_phase(job_id: str, request: Request, service: Service, owner: Owner) -> Response:
    """``PHASE=RUN`` queues the job; ``PHASE=ABORT`` stops it. Answers 303 to the job."""
    form = await read_form(request, max_form_bytes=form_limit(request))
    phase = single(form, "phase")
    if phase is None:
        raise ParameterError("phase", "is required: PHASE=RUN or PHASE=ABORT")
    value = phase.strip().upper()
    if value == "RUN":
        await service.run(job_id, owner)
    elif value == "ABORT":
        await service.abort(job_id, owner)
    else:
        raise ParameterError("phase", f"{phase!r} is not accepted: use RUN or ABORT")
    return see_other(links_for(request).job(job_id))


@router.get("/jobs/{job_id}/executionduration")
async def get_execution_duration(job_id: str, service: Service, owner: Owner) -> Response:
    """The seconds the job may run, as plain text."""
    job = await service.get(job_id, owner)
    return PlainTextResponse(str(job.execution_duration))


@router.post("/jobs/{job_id}/executionduration", openapi_extra=openapi.POST_EXECUTION_DURATION)
async def post_execution_duration(
    job_id: str, request: Request, service: Service, owner: Owner
) -> Response:
    """Set the seconds a PENDING job may run (``EXECUTIONDURATION``; 0 and values over the
    service's cap become the cap)."""
    form = await read_form(request, max_form_bytes=form_limit(request))
    text = single(form, "executionduration")
    if text is None:
        raise ParameterError("executionduration", "is required (seconds, an integer)")
    try:
        seconds = int(text.strip())
    except ValueError:
        raise ParameterError(
            "executionduration", f"{text!r} is not an integer number of seconds"
        ) from None
    await service.set_execution_duration(job_id, owner, seconds)
    return see_other(links_for(request).job(job_id))


@router.get("/jobs/{job_id}/destruction")
async def get_destruction(job_id: str, service: Service, owner: Owner) -> Response:
    """When the job and its files will be removed (ISO 8601, UTC), as plain text."""
    job = await service.get(job_id, owner)
    return PlainTextResponse(render.isotime(job.destruction_time) or "")


@router.post("/jobs/{job_id}/destruction", openapi_extra=openapi.POST_DESTRUCTION)
async def post_destruction(
    job_id: str, request: Request, service: Service, owner: Owner
) -> Response:
    """Set when the job is removed (``DESTRUCTION``, an ISO 8601 time, kept between now and
    the service's longest)."""
    form = await read_form(request, max_form_bytes=form_limit(request))
    text = single(form, "destruction")
    if text is None:
        raise ParameterError("destruction", "is required (an ISO 8601 time)")
    await service.set_destruction(job_id, owner, parse_time("destruction", text))
    return see_other(links_for(request).job(job_id))


@router.get("/jobs/{job_id}/quote")
async def get_quote(job_id: str, service: Service, owner: Owner) -> Response:
    """When the job is expected to end (ISO 8601, UTC; empty when unknown), as plain
    text."""
    job = await service.get(job_id, owner)
    return PlainTextResponse(render.isotime(job.quote) or "")


@router.get("/jobs/{job_id}/error", openapi_extra=openapi.GET_ERROR)
async def get_error(job_id: str, request: Request, service: Service, owner: Owner) -> Response:
    """The errorSummary's message: plain text, or a DALI error VOTable (QUERY_STATUS=ERROR)
    when the client asks for one (``Accept: application/x-votable+xml`` or
    ``FORMAT=votable``)."""
    job = await service.get(job_id, owner)
    if job.error is None:
        raise NotFound(f"job {job_id} has no error (phase {job.phase.value})")
    fmt = (query(request).get("format") or [""])[-1].strip().lower()
    accept = request.headers.get("accept", "").lower()
    if fmt in ("votable", VOTABLE) or (not fmt and "votable" in accept):
        return Response(error_votable(job.error.message), media_type=VOTABLE)
    if fmt not in ("", "text", "text/plain"):
        raise ParameterError("FORMAT", f"{fmt!r} is not offered for /error: use text or votable")
    return PlainTextResponse(job.error.message)


@router.get("/jobs/{job_id}/log", openapi_extra=openapi.GET_LOG)
async def get_log(job_id: str, request: Request, service: Service, owner: Owner) -> Response:
    """The job's log as plain text: what each run of it wrote (``TAIL=N``: the last N
    lines)."""
    q = query(request)
    tail = None
    if "tail" in q:
        tail = parse_count("tail", q["tail"][-1])
        if not 1 <= tail <= MAX_LOG_TAIL:
            raise ParameterError("tail", f"{tail} is out of range: give 1 to {MAX_LOG_TAIL} lines")
    return PlainTextResponse(await service.log_text(job_id, owner, tail))


@router.post("/jobs/{job_id}/rerun", openapi_extra=openapi.POST_RERUN)
async def post_rerun(job_id: str, request: Request, service: Service, owner: Owner) -> Response:
    """Replay a finished job: a new job with its recorded inputs, model and parameters,
    changed by any parameters given (``THRESHOLD=0.6``); the input is not sent again.
    ``PHASE=RUN`` queues it at once; answers 303 to the new job."""
    form = await read_form(request, max_form_bytes=form_limit(request))
    phase = form.fields.get("phase")
    if phase is not None and phase.strip().upper() != "RUN":
        raise ParameterError("phase", f"{phase!r}: only PHASE=RUN is allowed for a rerun")
    overrides = {k: v for k, v in form.fields.items() if k not in ("phase", "runid")}
    job = await service.rerun(
        job_id,
        owner,
        service.new_job_id(),
        start=phase is not None,
        run_id=form.fields.get("runid"),
        overrides=overrides,
    )
    return see_other(links_for(request).job(job.job_id))


@router.get("/jobs/{job_id}/provenance", openapi_extra=openapi.GET_PROVENANCE)
async def get_provenance(job_id: str, request: Request, service: Service, owner: Owner) -> Response:
    """The job's IVOA provenance (W3C PROV): PROV-JSON, PROV-XML, PROV-N or SVG, chosen by
    ``FORMAT`` (json, xml, provn, svg) or else by the Accept header."""
    fmt_values = query(request).get("format")
    try:
        fmt = negotiate(request.headers.get("accept"), fmt_values[-1] if fmt_values else None)
    except ValueError as exc:
        raise ParameterError("FORMAT", str(exc)) from None
    if fmt is None:
        raise NotAcceptable("the provenance is offered as " + ", ".join(PROV_FORMATS.values()))
    body = await service.provenance(job_id, owner, fmt)
    return Response(body, media_type=PROV_FORMATS[fmt])


@router.get("/jobs/{job_id}/owner")
async def get_owner_resource(job_id: str, service: Service, owner: Owner) -> Response:
    """The job's owner, as plain text (empty in anonymous mode)."""
    job = await service.get(job_id, owner)
    return PlainTextResponse(job.owner or "")


@router.get("/jobs/{job_id}/parameters", openapi_extra=openapi.XML_OR_JSON)
async def get_parameters(job_id: str, request: Request, service: Service, owner: Owner) -> Response:
    """The job's parameters (uws:parameters, or JSON)."""
    job = await service.get(job_id, owner)
    return job_document(request, service, job, render.parameters_xml, render.parameters_json)


@router.post("/jobs/{job_id}/parameters", openapi_extra=openapi.POST_PARAMETERS)
async def post_parameters(
    job_id: str, request: Request, service: Service, owner: Owner
) -> Response:
    """Change a PENDING job's parameters, or give a HELD job what it waits for
    (form-encoded, or multipart with a new IMAGE). Answers 303 to the job."""
    settings = settings_of(request)
    await service.get(job_id, owner)  # 404 before reading any upload

    names: dict[str, str] = {}

    def sink(name: str, filename: str) -> IO[bytes] | None:
        if name != "image":
            return None
        if filename:
            names["image"] = filename
        return service.open_staged_upload(job_id)

    try:
        form = await read_form(
            request,
            max_form_bytes=settings.max_form_bytes,
            max_upload_bytes=settings.max_upload_bytes,
            sink=sink,
        )
        if not form.fields and not form.files:
            raise RequestError("no parameters given")
        await service.update_parameters(
            job_id, owner, form.fields, list(form.files), image_name=names.get("image")
        )
        if "image" in form.files:
            await in_thread(service.commit_staged_upload, job_id)
    finally:
        await in_thread(service.drop_staged_upload, job_id)
    return see_other(links_for(request).job(job_id))


@router.get("/jobs/{job_id}/parameters/{name}")
async def get_parameter(job_id: str, name: str, service: Service, owner: Owner) -> Response:
    """One parameter's value as plain text, or the uploaded FITS file."""
    job = await service.get(job_id, owner)
    for p in job.parameters:
        if p.name == name.lower() and not p.is_file:
            return PlainTextResponse(p.value)
    path = service.parameter_file(job, name)
    if not await in_thread(os.path.isfile, path):
        raise NotFound(f"the uploaded file of parameter {name!r} is no longer on the server")
    return FileResponse(
        path, media_type="application/fits", filename=f"{job_id}-{name.lower()}.fits"
    )


@router.get("/jobs/{job_id}/results", openapi_extra=openapi.XML_OR_JSON)
async def get_results(job_id: str, request: Request, service: Service, owner: Owner) -> Response:
    """The job's results (uws:results, or JSON): each one's id, link, type and size."""
    job = await service.get(job_id, owner)
    links = links_for(request)
    return xml_or_json(request, render.results_xml(job, links), render.results_json(job, links))


@router.get("/jobs/{job_id}/results/{result_id}")
async def get_result(job_id: str, result_id: str, service: Service, owner: Owner) -> Response:
    """One result file (the catalogue as VOTable, CSV, JSON or DS9 regions, the preview
    ...)."""
    job = await service.get(job_id, owner)
    path, mime = await service.result_download(job, result_id)
    if not await in_thread(os.path.isfile, path):
        raise NotFound(f"the file of result {result_id!r} of job {job_id} is missing")
    return FileResponse(path, media_type=mime, filename=f"{job_id}-{path.name}")
