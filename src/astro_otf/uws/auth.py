"""Who is asking: anonymous by default; in token mode a bearer token from config names the
owner, and a job is visible only to its owner."""

from __future__ import annotations

import hmac

from fastapi import Request

from astro_otf.config import Settings
from astro_otf.domain.errors import NotAuthenticated


def owner_from(request: Request, settings: Settings) -> str | None:
    if settings.auth_mode == "anonymous":
        return None
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise NotAuthenticated(
            "this service needs a bearer token: send the header 'Authorization: Bearer <token>'"
        )
    token = token.strip()
    owner = None
    for known, name in settings.tokens.items():
        if hmac.compare_digest(known.encode(), token.encode()):
            owner = name
    if owner is None:
        raise NotAuthenticated("the bearer token is not valid for this service")
    return owner
