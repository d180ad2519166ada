r"""Who is asking: anonymous by default; in token mode a bearer token from config names the
owner, in OIDC mode a JWT of the identity provider does (:mod:`astro_otf.uws.oidc`), and a
job is visible only to its owner (operators aside).

A token reaches the service in one of two ways: the ``Authorization: Bearer`` header (API
clients), or the ``otf_token`` cookie the web page's login form sets (browsers). A cookie is
sent by the browser on its own, so a request it authenticates could have been forged by
another site; such a request with an unsafe method must also carry the page's CSRF token.

CSRF design (an HMAC of the session, checked statelessly): the token is
``base64url(HMAC-SHA256(server_secret, "otf-csrf\0" + session))`` where ``session`` is the
value of the ``otf_token`` cookie (token and OIDC modes) or, without one, of the random
``otf_csrf`` cookie the pages set in anonymous mode. The server secret is 32 random bytes
kept in the data folder (``web-secret``, mode 0600), so every replica and restart agrees on
it. Pages put the token in ``<meta name="csrf-token">`` and in a hidden ``csrf_token`` field
of their forms; the check accepts the ``X-CSRF-Token`` header or that form field (which is
removed from the body before the request goes on, so the job routes never see it). Cookies
are HttpOnly and SameSite=Strict, so another site can neither read the session nor make the
browser send it; requests without these cookies (curl, pyvo, the CLI, anything sending a
bearer header) are not checked at all.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from typing import Annotated
from urllib.parse import unquote_plus

from fastapi import Depends, FastAPI, Request
from python_multipart.multipart import parse_options_header
from starlette.datastructures import Headers
from starlette.requests import cookie_parser
from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from astro_otf.config import Settings
from astro_otf.domain.errors import InvalidToken, NotAuthenticated
from astro_otf.domain.job import Operator
from astro_otf.service.runtime import web_secret
from astro_otf.uws.oidc import OidcKeysMiddleware, OidcVerifier
from astro_otf.uws.state import app_settings, settings_of

__all__ = [
    "ANON_COOKIE",
    "CSRF_SCAN_BYTES",
    "TOKEN_COOKIE",
    "CsrfMiddleware",
    "Owner",
    "csrf_token",
    "install",
    "login_owner",
    "new_anonymous_session",
    "owner_from",
    "server_secret",
    "session_of",
]

#: The cookie that carries the bearer token of a browser logged in at /ui/login.
TOKEN_COOKIE = "otf_token"
#: The random cookie that binds the CSRF token of a browser in anonymous mode.
ANON_COOKIE = "otf_csrf"
#: The header and form field that carry the CSRF token.
CSRF_HEADER = "x-csrf-token"
CSRF_FIELD = "csrf_token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
#: How much of a form body is read to find the CSRF field; in a multipart body the field
#: must come before the file (the page's forms put it first).
CSRF_SCAN_BYTES = 256 * 1024


def owner_for_token(settings: Settings, token: str) -> str | None:
    """The owner a token names (an :class:`Operator` when listed in ``operators``), or None
    when it is not one of the configured tokens."""
    owner = None
    for known, name in settings.tokens.items():
        if hmac.compare_digest(known.get_secret_value().encode(), token.encode()):
            owner = name
    if owner is not None and owner in settings.operators:
        return Operator(owner)
    return owner


def owner_from(request: Request, settings: Settings) -> str | None:
    """The owner of a request: None in anonymous mode; in token and OIDC modes the one the
    bearer token in the Authorization header names or, without that header, the token in the
    login cookie. A refused token raises InvalidToken saying why."""
    if settings.auth_mode == "anonymous":
        return None
    header = request.headers.get("authorization")
    if header is None:
        cookie = request.cookies.get(TOKEN_COOKIE, "").strip()
        if cookie:
            try:
                return _owner_of(request, settings, cookie)
            except InvalidToken as exc:
                why = "" if settings.auth_mode == "token" else f" ({exc.message})"
                raise InvalidToken(
                    f"the login cookie's token is not valid for this service{why}: log in "
                    "again at /ui/login"
                ) from None
        header = ""
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise NotAuthenticated(
            "this service needs a bearer token: send the header 'Authorization: Bearer <token>' "
            "(in a browser, log in at /ui/login)"
        )
    return _owner_of(request, settings, token.strip())


# A coroutine: FastAPI would run a plain function dependency in a worker thread.
async def current_owner(request: Request) -> str | None:
    """The owner of a request (a route's ``Owner`` argument): see :func:`owner_from`."""
    return owner_from(request, settings_of(request))


Owner = Annotated[str | None, Depends(current_owner)]


def _owner_of(request: Request, settings: Settings, token: str) -> str:
    if settings.auth_mode == "oidc":
        return oidc_verifier(request).verify(token)
    owner = owner_for_token(settings, token)
    if owner is None:
        raise InvalidToken("the bearer token is not valid for this service")
    return owner


async def login_owner(request: Request, settings: Settings, token: str) -> str:
    """The owner a token pasted in the login form names; InvalidToken says why not."""
    if settings.auth_mode == "oidc":
        return await oidc_verifier(request).authenticate(token)
    owner = owner_for_token(settings, token)
    if owner is None:
        raise InvalidToken("that token is not valid for this service")
    return owner


def oidc_verifier(request: Request) -> OidcVerifier:
    """The OIDC mode's token verifier, made by :func:`install`."""
    verifier: OidcVerifier = request.app.state.oidc
    return verifier


def install(app: FastAPI, settings: Settings) -> None:
    """In OIDC mode, the token verifier (``app.state.oidc``, its JWKS file read now: a broken
    one stops the start) and the middleware that reads the provider's keys off the event loop
    before a route checks a token."""
    if settings.auth_mode != "oidc":
        return
    app.state.oidc = verifier = OidcVerifier.from_settings(settings)
    app.add_middleware(OidcKeysMiddleware, verifier=verifier, cookie=TOKEN_COOKIE)


# -- CSRF ------------------------------------------------------------------------------------


def server_secret(settings: Settings) -> bytes:
    """The CSRF key, kept in the data folder (see :func:`astro_otf.service.runtime.web_secret`)."""
    return web_secret(settings)


def session_of(cookies: dict[str, str], settings: Settings) -> str | None:
    """The browser session a request's cookies carry, which its CSRF token is bound to:
    the login cookie in token and OIDC modes, else the anonymous page cookie; None without
    either."""
    if settings.auth_mode != "anonymous":
        token = cookies.get(TOKEN_COOKIE, "").strip()
        if token:
            return token
    anon = cookies.get(ANON_COOKIE, "").strip()
    return anon or None


def csrf_token(settings: Settings, session: str) -> str:
    """The CSRF token of ``session`` (see the module's description)."""
    mac = hmac.new(
        server_secret(settings), b"otf-csrf\0" + session.encode(), hashlib.sha256
    ).digest()
    return base64.urlsafe_b64encode(mac).rstrip(b"=").decode()


def new_anonymous_session() -> str:
    """A fresh random session for a browser without one (the ``otf_csrf`` cookie)."""
    return secrets.token_urlsafe(24)


def _matches(settings: Settings, session: str, given: str | None) -> bool:
    if not given:
        return False
    return hmac.compare_digest(csrf_token(settings, session).encode(), given.strip().encode())


def _strip_urlencoded(body: bytes) -> tuple[str | None, bytes]:
    """The csrf_token field's value and the body without it (other fields byte for byte)."""
    found: str | None = None
    kept = []
    for piece in body.split(b"&"):
        name = unquote_plus(piece.partition(b"=")[0].decode("utf-8", "replace"))
        if name.strip().lower() == CSRF_FIELD and found is None:
            found = unquote_plus(piece.partition(b"=")[2].decode("utf-8", "replace"))
            continue
        kept.append(piece)
    return found, b"&".join(kept)


def _strip_multipart(body: bytes, boundary: bytes) -> tuple[str | None, bytes]:
    """The csrf_token part's value, if a whole one is in ``body`` (a prefix of the request
    body), and the prefix without that part."""
    delimiter = b"--" + boundary
    position = body.find(delimiter)
    while position != -1:
        start = position
        header_start = start + len(delimiter)
        if body[header_start : header_start + 2] != b"\r\n":
            return None, body  # the closing delimiter, or not a part
        header_end = body.find(b"\r\n\r\n", header_start)
        if header_end == -1:
            return None, body
        following = body.find(b"\r\n" + delimiter, header_end + 4)
        if following == -1:
            return None, body
        name = _part_name(body[header_start + 2 : header_end])
        if name == CSRF_FIELD:
            value = body[header_end + 4 : following].decode("utf-8", "replace")
            # drop this part: its delimiter line up to the next delimiter
            return value, body[:start] + body[following + 2 :]
        position = following + 2
    return None, body


_DISPOSITION = re.compile(rb"^content-disposition:(.*)$", re.IGNORECASE | re.MULTILINE)


def _part_name(headers: bytes) -> str | None:
    match = _DISPOSITION.search(headers.replace(b"\r\n", b"\n"))
    if match is None:
        return None
    _, options = parse_options_header(match.group(1).strip())
    name = options.get(b"name")
    return name.decode("utf-8", "replace").lower() if name is not None else None


class CsrfMiddleware:
    """Refuses (403) an unsafe request that a browser cookie authenticates when it carries
    no matching CSRF token; lets every other request through untouched. Pure ASGI, so an
    upload still streams: only the start of a form body is held to look for the field."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass the request on, its CSRF field removed, or refuse it (403)."""
        if scope["type"] != "http" or scope["method"] in SAFE_METHODS:
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        settings = app_settings(scope["app"])
        if settings is None or "authorization" in headers:
            await self.app(scope, receive, send)  # bearer requests need no CSRF token
            return
        session = session_of(cookie_parser(headers.get("cookie", "")), settings)
        if session is None:
            await self.app(scope, receive, send)  # no browser session: nothing to forge
            return
        if _matches(settings, session, headers.get(CSRF_HEADER)):
            await self.app(scope, receive, send)
            return
        ctype, options = parse_options_header(headers.get("content-type", ""))
        boundary = options.get(b"boundary")
        if ctype not in (b"application/x-www-form-urlencoded", b"multipart/form-data") or (
            ctype == b"multipart/form-data" and not boundary
        ):
            await _refuse(scope, send)
            return
        # Hold the start of the body: all of a urlencoded form (it is text, bounded), the
        # first CSRF_SCAN_BYTES of a multipart one.
        held = bytearray()
        more = True
        while more and len(held) < CSRF_SCAN_BYTES:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            held += message.get("body", b"")
            more = bool(message.get("more_body", False))
        if ctype == b"multipart/form-data":
            assert boundary is not None
            # the same answer however the body was cut into messages: only its start counts
            given, body = _strip_multipart(bytes(held[:CSRF_SCAN_BYTES]), boundary)
            body += held[CSRF_SCAN_BYTES:]
        else:
            if more:
                await _refuse(scope, send)  # a form this large carries no page's token
                return
            given, body = _strip_urlencoded(bytes(held))
        if not _matches(settings, session, given):
            await _refuse(scope, send)
            return
        removed = len(held) - len(body)
        scope = dict(scope)
        scope["headers"] = [
            (k, str(int(v) - removed).encode() if k == b"content-length" and v.isdigit() else v)
            for k, v in scope["headers"]
        ]
        first: list[Message] = [{"type": "http.request", "body": body, "more_body": more}]

        async def replay() -> Message:
            if first:
                return first.pop()
            return await receive()

        await self.app(scope, replay, send)


async def _refuse(scope: Scope, send: Send) -> None:
    response = PlainTextResponse(
        "this request is authenticated by a browser cookie and must carry the page's CSRF "
        f"token: send the header 'X-CSRF-Token' or the form field '{CSRF_FIELD}' (reload the "
        "page to get a fresh one); API clients send 'Authorization: Bearer <token>' instead",
        status_code=403,
    )

    async def nothing() -> Message:
        return {"type": "http.disconnect"}

    await response(scope, nothing, send)
