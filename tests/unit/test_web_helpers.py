"""The web page's helpers on their own: the CSRF check (token, body scanning, the ASGI
middleware in front of a small echoing app), the streamed results zip, and the model
card's Markdown rendering (HTML in a card is escaped, unsafe links refused)."""

from __future__ import annotations

import asyncio
import io
import os
import stat
import zipfile
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from astro_otf.config import Settings
from astro_otf.uws.auth import (
    CSRF_SCAN_BYTES,
    CsrfMiddleware,
    _strip_multipart,
    _strip_urlencoded,
    csrf_token,
    server_secret,
    session_of,
)
from astro_otf.web.archive import zip_stream
from astro_otf.web.cards import render_markdown
from astro_otf.web.openapi30 import downgrade

# -- CSRF token and body scanning ----------------------------------------------------------


def test_csrf_token_is_bound_to_session_and_secret(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "a")
    one = csrf_token(settings, "session-1")
    assert one == csrf_token(settings, "session-1")
    assert one != csrf_token(settings, "session-2")
    secret = tmp_path / "a" / "web-secret"
    assert stat.S_IMODE(os.stat(secret).st_mode) == 0o600
    assert len(server_secret(settings)) == 32
    # Another data folder, another secret: the same session gets another token.
    assert csrf_token(Settings(data_dir=tmp_path / "b"), "session-1") != one


def test_session_of_prefers_the_login_cookie(tmp_path: Path) -> None:
    token_mode = Settings(data_dir=tmp_path, auth_mode="token", tokens={SecretStr("t"): "alice"})
    anon = Settings(data_dir=tmp_path)
    cookies = {"otf_token": "t", "otf_csrf": "nonce"}
    assert session_of(cookies, token_mode) == "t"
    assert session_of(cookies, anon) == "nonce"  # no login cookie outside token mode
    assert session_of({}, token_mode) is None


def test_strip_urlencoded_keeps_other_fields_byte_for_byte() -> None:
    value, body = _strip_urlencoded(b"MODEL=sep&csrf_token=a%2Bb%3D&THRESH=3+4&x=")
    assert value == "a+b="
    assert body == b"MODEL=sep&THRESH=3+4&x="
    assert _strip_urlencoded(b"MODEL=sep") == (None, b"MODEL=sep")


def multipart(parts: list[tuple[str, bytes, str | None]], boundary: str = "XyZ") -> bytes:
    out = b""
    for name, data, filename in parts:
        disposition = f'form-data; name="{name}"'
        if filename:
            disposition += f'; filename="{filename}"'
        out += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode()
        out += data + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


def test_strip_multipart_removes_the_field_part() -> None:
    body = multipart(
        [("csrf_token", b"tok", None), ("RUNID", b"r1", None), ("IMAGE", b"\0" * 10, "a.fits")]
    )
    value, rest = _strip_multipart(body, b"XyZ")
    assert value == "tok"
    assert rest == multipart([("RUNID", b"r1", None), ("IMAGE", b"\0" * 10, "a.fits")])
    # A cut-off prefix (the part's end not there yet) finds nothing.
    assert _strip_multipart(body[:40], b"XyZ") == (None, body[:40])


# -- the middleware, in front of an app that echoes the form it receives ---------------------


@pytest.fixture
def echo(tmp_path: Path) -> tuple[Starlette, str]:
    async def form(request: Request) -> JSONResponse:
        data = await request.form()
        return JSONResponse(
            {
                k: (v if isinstance(v, str) else f"file:{len(await v.read())}")
                for k, v in data.multi_items()
            }
        )

    app = Starlette(routes=[Route("/echo", form, methods=["POST", "GET"])])
    app.state.settings = Settings(data_dir=tmp_path)
    app.add_middleware(CsrfMiddleware)
    return app, csrf_token(app.state.settings, "nonce")


def post(app: Starlette, **kwargs: object) -> httpx.Response:
    """POST to the app in-process (its middleware included)."""

    async def send() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.post("/echo", **kwargs)  # type: ignore[arg-type]

    return asyncio.run(send())


def test_middleware_checks_only_cookie_requests(echo: tuple[Starlette, str]) -> None:
    app, token = echo
    cookie = {"cookie": "otf_csrf=nonce"}
    # no cookie: untouched, even with a field called csrf_token
    plain = post(app, data={"a": "1", "csrf_token": "whatever"})
    assert plain.status_code == 200 and plain.json() == {"a": "1", "csrf_token": "whatever"}
    assert (post(app, data={"a": "1"}, headers=cookie)).status_code == 403
    by_header = post(app, data={"a": "1"}, headers={**cookie, "X-CSRF-Token": token})
    assert by_header.json() == {"a": "1"}
    by_field = post(app, data={"a": "1", "csrf_token": token}, headers=cookie)
    assert by_field.status_code == 200 and by_field.json() == {"a": "1"}
    bearer = post(app, data={"a": "1"}, headers={**cookie, "Authorization": "Bearer x"})
    assert bearer.status_code == 200
    # JSON bodies are not scanned: only the header counts
    assert (post(app, json={"csrf_token": token}, headers=cookie)).status_code == 403


def test_middleware_multipart_field_before_the_file(echo: tuple[Starlette, str]) -> None:
    app, token = echo
    big = os.urandom(CSRF_SCAN_BYTES + 50_000)
    headers = {"cookie": "otf_csrf=nonce", "content-type": "multipart/form-data; boundary=XyZ"}
    first = multipart([("csrf_token", token.encode(), None), ("IMAGE", big, "a.fits")])
    ok = post(app, content=first, headers=headers)
    assert ok.status_code == 200, ok.text
    assert ok.json() == {"IMAGE": f"file:{len(big)}"}
    # After a large file, the field is beyond what is scanned: refused, with the reason.
    last = multipart([("IMAGE", big, "a.fits"), ("csrf_token", token.encode(), None)])
    refused = post(app, content=last, headers=headers)
    assert refused.status_code == 403
    assert "X-CSRF-Token" in refused.text


# -- the results zip --------------------------------------------------------------------------


def test_zip_stream_round_trip(tmp_path: Path) -> None:
    table = tmp_path / "catalogue.xml"
    table.write_bytes(b"<VOTABLE>" + b"<TR><TD>1</TD></TR>" * 100_000 + b"</VOTABLE>")
    png = tmp_path / "preview.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(3 * 1024 * 1024))
    pieces = list(zip_stream([("catalogue.xml", table), ("preview.png", png)]))
    assert len(pieces) > 3  # written as it goes, not in one piece
    with zipfile.ZipFile(io.BytesIO(b"".join(pieces))) as archive:
        assert archive.testzip() is None
        assert archive.read("catalogue.xml") == table.read_bytes()
        assert archive.read("preview.png") == png.read_bytes()
        assert archive.getinfo("catalogue.xml").compress_type == zipfile.ZIP_DEFLATED
        assert archive.getinfo("preview.png").compress_type == zipfile.ZIP_STORED
        assert archive.getinfo("catalogue.xml").compress_size < table.stat().st_size / 10


# -- model cards ------------------------------------------------------------------------------


def test_markdown_is_rendered_safely() -> None:
    html = render_markdown(
        "# Card\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\n- item\n\n```\ncode <x>\n```\n\n"
        "<script>alert(1)</script>\n\n[bad](javascript:alert(1)) [good](https://example.org)"
    )
    assert "<h1>Card</h1>" in html
    assert "<table>" in html and "<td>1</td>" in html
    assert "<li>item</li>" in html
    assert "code &lt;x&gt;" in html
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert 'href="javascript:' not in html
    assert 'href="https://example.org"' in html


# -- the OpenAPI 3.0 copy for Swagger UI 4 ------------------------------------------------------


def test_openapi_downgrade_rewrites_31_forms() -> None:
    spec = {
        "openapi": "3.1.0",
        "jsonSchemaDialect": "https://spec.openapis.org/oas/3.1/dialect/base",
        "paths": {
            "/x": {
                "get": {
                    "parameters": [
                        {
                            "name": "q",
                            "in": "query",
                            "examples": {"one": {"value": 1}},
                            "schema": {
                                "anyOf": [{"type": "integer"}, {"type": "null"}],
                                "title": "Q",
                            },
                        }
                    ]
                }
            }
        },
        "components": {
            "schemas": {
                "S": {
                    "type": "object",
                    "properties": {
                        "a": {"type": ["string", "null"], "examples": ["x", "y"]},
                        "b": {"const": "fixed"},
                        "c": {"type": "number", "exclusiveMinimum": 0},
                        "f": {"type": "string", "contentMediaType": "application/octet-stream"},
                        "u": {"anyOf": [{"type": "integer"}, {"type": "string"}]},
                    },
                }
            }
        },
    }
    before = repr(spec)
    out = downgrade(spec)
    assert repr(spec) == before  # the 3.1 document is left as it was
    assert out["openapi"] == "3.0.3" and "jsonSchemaDialect" not in out
    param = out["paths"]["/x"]["get"]["parameters"][0]
    assert param["schema"] == {"type": "integer", "nullable": True, "title": "Q"}
    assert param["examples"] == {"one": {"value": 1}}  # a 3.0 examples map stays
    props = out["components"]["schemas"]["S"]["properties"]
    assert props["a"] == {"type": "string", "nullable": True, "example": "x"}
    assert props["b"] == {"enum": ["fixed"]}
    assert props["c"] == {"type": "number", "minimum": 0, "exclusiveMinimum": True}
    assert props["f"] == {"type": "string", "format": "binary"}
    assert props["u"] == {"anyOf": [{"type": "integer"}, {"type": "string"}]}
