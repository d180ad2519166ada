"""How an error becomes an HTTP answer: a plain-text message with the error's status and
headers. The errors say what they are (:mod:`astro_otf.domain.errors`); this module only
renders them, and gives FastAPI's own refusals (validation, unknown path, wrong method) the
same plain form."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import PlainTextResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from astro_otf.domain.errors import OTFError

__all__ = ["install"]


async def otf_error(request: Request, exc: OTFError) -> PlainTextResponse:
    """An error of the service: its message, status and headers as it says them."""
    return PlainTextResponse(exc.message, status_code=exc.status_code, headers=exc.headers)


async def validation_error(request: Request, exc: RequestValidationError) -> PlainTextResponse:
    """A request FastAPI could not read into a handler's arguments: 400 naming each field."""
    parts = [f"{'.'.join(str(x) for x in e['loc'])}: {e['msg']}" for e in exc.errors()]
    return PlainTextResponse("; ".join(parts), status_code=400)


async def http_error(request: Request, exc: StarletteHTTPException) -> PlainTextResponse:
    """Starlette's own refusals, in words: no such path (404), method not allowed (405)."""
    message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
    if exc.status_code == 404:
        message = f"no resource at {request.url.path}"
    elif exc.status_code == 405:
        message = f"{request.method} is not allowed on {request.url.path}"
    return PlainTextResponse(
        message, status_code=exc.status_code, headers=getattr(exc, "headers", None)
    )


def install(app: FastAPI) -> None:
    """Answer errors in ``app`` with the handlers above."""
    app.exception_handler(OTFError)(otf_error)
    app.exception_handler(RequestValidationError)(validation_error)
    app.exception_handler(StarletteHTTPException)(http_error)
