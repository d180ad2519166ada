"""The web page's routes. Each handler reads what it shows through the JobService and the
model registry (:func:`astro_otf.uws.state.state_of`), renders a Jinja2 template and sends
it; everything a page changes it changes through the UWS API itself (/jobs, /uploads), from
its script."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, RedirectResponse, StreamingResponse
from fastapi.templating import Jinja2Templates
from starlette.responses import Response

from astro_otf.domain.errors import (
    InvalidToken,
    JobNotFound,
    NotAuthenticated,
    NotFound,
    ParameterError,
    ServiceBusy,
)
from astro_otf.domain.job import Job
from astro_otf.domain.parameters import NATIVE_BY_NAME
from astro_otf.domain.phases import Phase
from astro_otf.service.jobs import JobService
from astro_otf.service.threads import in_thread
from astro_otf.uws import render
from astro_otf.uws.auth import (
    ANON_COOKIE,
    TOKEN_COOKIE,
    csrf_token,
    login_owner,
    new_anonymous_session,
    owner_from,
    session_of,
)
from astro_otf.uws.routes import check_filter, links_for, parse_phase
from astro_otf.uws.state import settings_of, state_of
from astro_otf.uws.uploads import read_form
from astro_otf.web.archive import zip_stream
from astro_otf.web.cards import read_card
from astro_otf.web.openapi30 import downgrade

router = APIRouter(include_in_schema=False)

HERE = Path(__file__).parent
TEMPLATES = Jinja2Templates(directory=HERE / "templates")

#: The job list shows this many jobs, newest first (the filters narrow it).
PAGE_JOBS = 200
#: Pages load scripts, styles and images from this service only, and are never framed.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; connect-src 'self'; object-src 'none'; base-uri 'self'; "
    "form-action 'self'; frame-ancestors 'none'"
)
PHASES = [p.value for p in Phase]
#: Phases after which a job does not change on its own.
FINAL_PHASES = {"COMPLETED", "ERROR", "ABORTED", "ARCHIVED"}


class LoginNeeded(Exception):
    """A page asked for in token mode without a valid token: the browser goes to the login
    form, which comes back to ``next_url``."""

    def __init__(self, next_url: str, message: str) -> None:
        super().__init__(message)
        self.next_url = next_url
        self.message = message


# -- helpers ---------------------------------------------------------------------------------


def _when(value: str | datetime | None) -> str:
    """An ISO time as ``YYYY-MM-DD HH:MM:SS`` (UTC), or an empty string."""
    if value is None:
        return ""
    text = value if isinstance(value, str) else (render.isotime(value) or "")
    return text.replace("T", " ")[:19]


def _size(value: int | None) -> str:
    if value is None:
        return ""
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{value} B"


def _percent(progress: Any) -> int | None:
    if not isinstance(progress, dict):
        return None
    fraction = progress.get("fraction")
    if not isinstance(fraction, int | float):
        return None
    return max(0, min(100, round(100 * float(fraction))))


TEMPLATES.env.filters["when"] = _when
TEMPLATES.env.filters["size"] = _size
TEMPLATES.env.filters["percent"] = _percent


def service_of(request: Request) -> JobService:
    """The JobService the pages read jobs and models from."""
    return state_of(request).jobs


def page_owner(request: Request) -> str | None:
    """The owner a page shows the jobs of; in token mode without a valid token, the login
    form (LoginNeeded)."""
    try:
        return owner_from(request, settings_of(request))
    except NotAuthenticated as exc:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        raise LoginNeeded(target, exc.message) from None


def safe_next(value: str | None) -> str:
    """A local path to go back to after logging in (never another site)."""
    if not value or not value.startswith("/") or value.startswith(("//", "/\\")):
        return "/"
    return value


def set_cookie(response: Response, request: Request, name: str, value: str) -> None:
    """Set one of the page's cookies: HttpOnly, SameSite=Strict, Secure over https."""
    response.set_cookie(
        name,
        value,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        path="/",
    )


def page(
    request: Request,
    template: str,
    context: dict[str, Any],
    *,
    status_code: int = 200,
    owner: str | None = None,
) -> Response:
    """A rendered page, with its CSRF token (and, for a browser without a session yet, the
    anonymous session cookie the token is bound to)."""
    settings = settings_of(request)
    session = session_of(request.cookies, settings)
    fresh = None
    if session is None:
        session = fresh = new_anonymous_session()
    context = {
        "csrf": csrf_token(settings, session),
        "auth_mode": settings.auth_mode,
        "owner": owner,
        "logged_in": settings.auth_mode != "anonymous" and bool(request.cookies.get(TOKEN_COOKIE)),
        **context,
    }
    response = TEMPLATES.TemplateResponse(request, template, context, status_code=status_code)
    response.headers["Content-Security-Policy"] = CSP
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "same-origin"
    if fresh is not None:
        set_cookie(response, request, ANON_COOKIE, fresh)
    return response


def error_page(request: Request, status_code: int, message: str, owner: str | None) -> Response:
    """A page saying what went wrong, with its HTTP status."""
    return page(
        request,
        "error.html",
        {"title": f"Error {status_code}", "message": message, "status": status_code},
        status_code=status_code,
        owner=owner,
    )


async def listing(
    request: Request, service: JobService, owner: str | None
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The filters the query asks for (ParameterError when one is malformed) and the
    owner's newest jobs so filtered, as GET /jobs lists them in JSON (image, model,
    sources, progress, preview)."""
    filters, phases = list_filters(request)
    jobs = await service.list(
        owner,
        phases or None,
        None,
        PAGE_JOBS,
        run_ids=[filters["runid"]] if filters["runid"] else [],
        image_names=[filters["image"]] if filters["image"] else [],
        details=True,
    )
    entries: list[dict[str, Any]] = render.job_list_json(
        jobs, links_for(request), service.queue_place
    )["jobs"]
    return filters, entries


def list_filters(request: Request) -> tuple[dict[str, Any], list[Phase]]:
    """The job list's filters from the query (phase, runid, image), as the form shows them."""
    q = request.query_params
    phases = [parse_phase("phase", p) for p in q.getlist("phase") if p.strip()]
    run_id, image = (q.get(name, "").strip() for name in ("runid", "image"))
    run_id = check_filter("runid", run_id) if run_id else ""
    image = check_filter("image", image) if image else ""
    shown = {"phase": [p.value for p in phases], "runid": run_id, "image": image}
    return shown, phases


def model_parameters(service: JobService, job: Job) -> list[dict[str, Any]]:
    """The parameters of a job's model a rerun may change (its own, not the native ones),
    each with the job's value."""
    try:
        app = service.registry.get(job.model_id, job.model_version)
    except (ParameterError, AttributeError):
        return []
    values = job.parameter_values()
    out = []
    for entry in service.registry.describe(app)["parameters"]:
        if entry["name"] in NATIVE_BY_NAME or entry.get("type") == "file":
            continue
        current = values.get(entry["name"])
        if current is None and "default" in entry:
            default = entry["default"]
            current = str(default).lower() if isinstance(default, bool) else str(default)
        out.append({**entry, "value": current if current is not None else ""})
    return out


# -- the job list -----------------------------------------------------------------------------


@router.get("/")
async def jobs_page(request: Request) -> Response:
    """The job list: the owner's newest jobs, filtered by phase, run id and image."""
    owner = page_owner(request)
    service = service_of(request)
    try:
        filters, entries = await listing(request, service, owner)
    except ParameterError as exc:
        return error_page(request, 400, exc.message, owner)
    return page(
        request,
        "jobs.html",
        {
            "title": "Jobs",
            "nav": "jobs",
            "jobs": entries,
            "filters": filters,
            "phases": PHASES,
            "limit": PAGE_JOBS,
        },
        owner=owner,
    )


@router.get("/ui/job-rows")
async def job_rows(request: Request) -> Response:
    """The job list's rows alone, for the page's live refresh (a script's request: 401
    without a valid token, not the login form)."""
    owner = owner_from(request, settings_of(request))
    service = service_of(request)
    try:
        _, entries = await listing(request, service, owner)
    except ParameterError as exc:
        return error_page(request, 400, exc.message, owner)
    response = TEMPLATES.TemplateResponse(request, "_rows.html", {"jobs": entries})
    response.headers["Cache-Control"] = "no-store"
    return response


# -- one job ------------------------------------------------------------------------------------


@router.get("/ui/jobs/{job_id}")
async def job_page(job_id: str, request: Request) -> Response:
    """One job: its phase and progress, input, results and preview, and a rerun form."""
    owner = page_owner(request)
    service = service_of(request)
    try:
        job = await service.get(job_id, owner)
    except JobNotFound as exc:
        return error_page(request, 404, exc.message, owner)
    doc = render.job_json(job, links_for(request))
    results = doc.get("results") or []
    by_id = {r["id"]: r for r in results}
    info = doc.get("jobInfo") or {}
    return page(
        request,
        "job.html",
        {
            "title": f"Job {job.job_id}",
            "nav": "jobs",
            "job": doc,
            "info": info,
            "input": info.get("input") if isinstance(info.get("input"), dict) else None,
            "progress": info.get("progress") if isinstance(info.get("progress"), dict) else None,
            "other_info": {
                k: v
                for k, v in info.items()
                if k not in ("input", "progress") and not isinstance(v, dict | list)
            },
            "results": results,
            "preview": by_id.get("preview"),
            "has_provenance": "provenance" in by_id,
            "final": doc["phase"] in FINAL_PHASES,
            "rerun_parameters": model_parameters(service, job),
            "model_id": job.model_id,
        },
        owner=owner,
    )


@router.get("/ui/jobs/{job_id}/results.zip")
async def results_zip(job_id: str, request: Request) -> Response:
    """Every result file of a job in one zip, streamed as it is written."""
    owner = owner_from(request, settings_of(request))  # API-like: 401, not the login form
    service = service_of(request)
    job = await service.get(job_id, owner)
    members: list[tuple[str, Path]] = []
    names: set[str] = set()
    for result in job.results:
        try:
            path, _ = await service.result_download(job, result.result_id)
        except NotFound:
            continue  # a preview that cannot be drawn: the rest is still worth having
        if not await in_thread(path.is_file):
            continue
        name = path.name if path.name not in names else f"{result.result_id}-{path.name}"
        names.add(name)
        members.append((name, path))
    if not members:
        raise NotFound(f"job {job_id} has no result files yet (phase {job.phase.value})")
    return StreamingResponse(
        zip_stream(members),
        media_type="application/zip",
        headers={"Content-Disposition": f'attachment; filename="{job_id}-results.zip"'},
    )


# -- submission ---------------------------------------------------------------------------------


@router.get("/ui/submit")
async def submit_page(request: Request) -> Response:
    """The submission form: a model (``?model=``), its parameters and an image."""
    owner = page_owner(request)
    registry = service_of(request).registry
    models = [registry.describe(app) for app in registry.defaults()]
    chosen = request.query_params.get("model") or registry.default_model_id
    return page(
        request,
        "submit.html",
        {
            "title": "Submit a job",
            "nav": "submit",
            "models": models,
            "chosen": chosen,
            "max_upload_bytes": settings_of(request).max_upload_bytes,
            "native": sorted(NATIVE_BY_NAME),
        },
        owner=owner,
    )


# -- models -------------------------------------------------------------------------------------


@router.get("/ui/models")
async def models_page(request: Request) -> Response:
    """The models on offer, each with its default version."""
    registry = service_of(request).registry
    models = [registry.describe(app) for app in registry.defaults()]
    return page(request, "models.html", {"title": "Models", "nav": "models", "models": models})


@router.get("/ui/models/{model_id}")
async def model_page(model_id: str, request: Request) -> Response:
    """One model (its default version, or ``?version=``): its card and parameters."""
    registry = service_of(request).registry
    version = request.query_params.get("version") or None
    try:
        app = registry.get(model_id, version)
    except ParameterError as exc:
        return error_page(request, 404, exc.message.split(": ", 1)[-1], None)
    described = registry.describe(app)
    card = await in_thread(read_card, app)
    own = [p for p in described["parameters"] if p["name"] not in NATIVE_BY_NAME]
    native = [p for p in described["parameters"] if p["name"] in NATIVE_BY_NAME]
    return page(
        request,
        "model.html",
        {
            "title": f"Model {app.model_id} {app.version}",
            "nav": "models",
            "model": described,
            "card": card,
            "own_parameters": own,
            "native_parameters": native,
        },
    )


# -- login ----------------------------------------------------------------------------------------


@router.get("/ui/login")
async def login_page(request: Request) -> Response:
    """The login form (token and OIDC modes; in anonymous mode, straight back)."""
    settings = settings_of(request)
    next_url = safe_next(request.query_params.get("next"))
    if settings.auth_mode == "anonymous":
        return RedirectResponse(next_url, status_code=303)
    return page(
        request,
        "login.html",
        {
            "title": "Log in",
            "nav": "login",
            "next": next_url,
            "error": None,
            "issuer": settings.oidc_issuer,
        },
    )


@router.post("/ui/login")
async def login(request: Request) -> Response:
    """Check the pasted token and keep it in the login cookie, then back to ``next``; a
    refused token shows the form again, saying why."""
    settings = settings_of(request)
    form = await read_form(request, max_form_bytes=settings.max_form_bytes)
    next_url = safe_next(form.fields.get("next"))
    if settings.auth_mode == "anonymous":
        return RedirectResponse(next_url, status_code=303)
    token = (form.fields.get("token") or "").strip()
    error, status = None, 401
    if not token:
        error = "Enter your access token."
    else:
        try:
            await login_owner(request, settings, token)
        except InvalidToken as exc:
            error = "That token is not valid for this service."
            if settings.auth_mode == "oidc":
                error = f"That token is not valid for this service: {exc.message}."
        except ServiceBusy as exc:
            error, status = exc.message[:1].upper() + exc.message[1:] + ".", 503
    if error is not None:
        return page(
            request,
            "login.html",
            {
                "title": "Log in",
                "nav": "login",
                "next": next_url,
                "error": error,
                "issuer": settings.oidc_issuer,
            },
            status_code=status,
        )
    response = RedirectResponse(next_url, status_code=303)
    set_cookie(response, request, TOKEN_COOKIE, token)
    return response


@router.post("/ui/logout")
async def logout(request: Request) -> Response:
    """Forget the login cookie; back to the login form."""
    response = RedirectResponse("/ui/login", status_code=303)
    response.delete_cookie(
        TOKEN_COOKIE,
        path="/",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return response


# -- API docs, offline -----------------------------------------------------------------------------


@router.get("/docs")
async def docs_page(request: Request) -> Response:
    """Swagger UI for this service's OpenAPI document, its files served by this service."""
    settings = settings_of(request)
    session = session_of(request.cookies, settings)
    response = TEMPLATES.TemplateResponse(
        request,
        "docs.html",
        {
            "openapi_url": "/ui/openapi-3.0.json",
            "csrf": csrf_token(settings, session) if session else "",
            "title": f"{request.app.title} — API",
        },
    )
    response.headers["Cache-Control"] = "no-store"
    return response


@router.get("/ui/openapi-3.0.json")
async def openapi_30(request: Request) -> Response:
    """This service's OpenAPI document in the 3.0 form the shipped Swagger UI reads."""
    state = request.app.state
    document = getattr(state, "openapi_30", None)
    if document is None:
        document = state.openapi_30 = downgrade(request.app.openapi())
    return JSONResponse(document)


def login_redirect(request: Request, exc: Exception) -> Response:
    """The answer to LoginNeeded: the login form, then back to the page."""
    assert isinstance(exc, LoginNeeded)
    return RedirectResponse(f"/ui/login?next={quote(exc.next_url, safe='/')}", status_code=303)
