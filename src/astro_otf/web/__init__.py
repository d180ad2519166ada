"""The service's own web page: the job list, a page per job, submission and the model cards,
rendered on the server with assets shipped in the package (nothing from a CDN)."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

#: Where the page's scripts and styles are, and the URL they are served under.
STATIC_DIR = Path(__file__).parent / "static"
STATIC_URL = "/ui/static"
#: Swagger UI's files (from the swagger-ui-bundle package), for /docs.
SWAGGER_URL = "/ui/swagger"


def install(app: FastAPI) -> None:
    """Add the web page's routes, static files and the offline API docs to ``app``, and the
    CSRF check that guards the requests a browser's cookie authenticates."""
    import swagger_ui_bundle

    from astro_otf.uws.auth import CsrfMiddleware
    from astro_otf.web.routes import LoginNeeded, login_redirect, router

    app.include_router(router)
    app.mount(STATIC_URL, StaticFiles(directory=STATIC_DIR), name="web-static")
    app.mount(
        SWAGGER_URL, StaticFiles(directory=swagger_ui_bundle.swagger_ui_path), name="swagger-ui"
    )
    app.add_exception_handler(LoginNeeded, login_redirect)
    app.add_middleware(CsrfMiddleware)
