"""``GET /accounting``: what an owner used over a period, and its quotas. The handler parses
the query and renders JSON; the figures come from :mod:`astro_otf.service.accounting`."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from astro_otf.domain.errors import ParameterError
from astro_otf.service.accounting import EVERY_OWNER
from astro_otf.uws import openapi
from astro_otf.uws.auth import owner_from
from astro_otf.uws.routes import parse_time, query
from astro_otf.uws.state import settings_of, state_of

__all__ = ["router"]

router = APIRouter()

_TIME = {"type": "string", "format": "date-time"}

ACCOUNTING_DOC = openapi.extra(
    openapi.query(
        "SINCE",
        "Start of the period (ISO 8601, UTC when no zone is given); default: 30 days before "
        "UNTIL. A job counts in the period in which it ended.",
        _TIME,
    ),
    openapi.query("UNTIL", "End of the period (excluded); default: now.", _TIME),
    openapi.query(
        "OWNER",
        "Only this owner (an operator's choice; anyone else may name only itself).",
        {"type": "string", "maxLength": 255},
    ),
    responses={
        400: "SINCE or UNTIL is not an ISO 8601 time, or SINCE is not before UNTIL.",
        403: "OWNER names another owner and the caller is not an operator.",
    },
)


@router.get("/accounting", openapi_extra=ACCOUNTING_DOC)
async def accounting(request: Request) -> JSONResponse:
    """Jobs by phase and model, CPU and wall seconds, bytes computed over a period (from the
    ledger, which keeps deleted jobs), bytes stored and active jobs now, and each quota's
    use: the caller's own, or every owner's for an operator."""
    state = state_of(request)
    service, report = state.jobs, state.accounting
    owner = owner_from(request, settings_of(request))
    q = query(request)
    for name in ("since", "until", "owner"):
        if len(q.get(name, [])) > 1:
            raise ParameterError(name, "is given more than once")
    since = parse_time("since", q["since"][0]) if "since" in q else None
    until = parse_time("until", q["until"][0]) if "until" in q else None
    wanted: object = EVERY_OWNER
    if "owner" in q:
        wanted = q["owner"][0].strip()
        if not wanted or len(str(wanted)) > 255:
            raise ParameterError("owner", "give an owner's name (1-255 characters)")
    document = await report.report(
        owner, sees_all=not service.checks(owner), since=since, until=until, owner=wanted
    )
    return JSONResponse(document)
