"""Service-level resources beside /jobs: health checks and the model list."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from astro_otf import __version__
from astro_otf.domain.errors import NotFound, ParameterError
from astro_otf.service.metrics import CONTENT_TYPE
from astro_otf.service.threads import in_thread
from astro_otf.uws import openapi
from astro_otf.uws.state import state_of

__all__ = ["router"]

router = APIRouter()


@router.get("/health")
async def health() -> dict[str, Any]:
    """Liveness: the process answers."""
    return {"status": "ok", "version": __version__}


@router.get("/health/ready")
async def ready(request: Request) -> JSONResponse:
    """Readiness: the database answers and the executor and its helpers run."""
    checks = await state_of(request).readiness()
    ok = all(c["ok"] for c in checks.values())
    return JSONResponse(
        {"status": "ready" if ok else "not ready", "checks": checks}, status_code=200 if ok else 503
    )


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    """Prometheus exposition: jobs by phase, queue depth per model, waits and run times."""
    body = await in_thread(state_of(request).metrics.render)
    return Response(body, media_type=CONTENT_TYPE)


@router.get("/models")
async def models(request: Request) -> dict[str, Any]:
    """One entry per model id: its default (newest) version, with every installed version
    in ``versions``."""
    registry = state_of(request).jobs.registry
    return {
        "default": registry.default_model_id,
        "models": [registry.describe(app) for app in registry.defaults()],
    }


@router.get("/models/{model_id}", openapi_extra=openapi.GET_MODEL)
async def model(model_id: str, request: Request) -> dict[str, Any]:
    """One model: its default version, or the one named by ``?version=``."""
    registry = state_of(request).jobs.registry
    asked = [v for k, v in request.query_params.multi_items() if k.lower() == "version"]
    if len(asked) > 1:
        raise ParameterError("version", "is given more than once")
    try:
        registry.versions(model_id)
    except ParameterError as exc:
        raise NotFound(exc.message.removeprefix("MODEL: ")) from None
    try:
        app = registry.get(model_id, asked[0] if asked else None)
    except ParameterError as exc:
        raise ParameterError("version", exc.message.removeprefix("MODEL_VERSION: ")) from None
    return dict(registry.describe(app))
