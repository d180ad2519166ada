"""Uploads a client stores once and names in many jobs (``IMAGE=upload:<id>``).

The handlers parse the request, ask the UploadService and render JSON: the policy (content
addressing, checks, quota, expiry, owners) lives in :mod:`astro_otf.service.uploads`.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.responses import Response

from astro_otf.domain.forms import Form, Sink
from astro_otf.service.uploads import StoredUpload
from astro_otf.uws.auth import Owner
from astro_otf.uws.render import isotime
from astro_otf.uws.state import Uploads, settings_of
from astro_otf.uws.uploads import read_form

__all__ = ["router"]

router = APIRouter()


def base_url(request: Request) -> str:
    """The service's public URL (``base_url``, else the request's), without a final slash."""
    settings = settings_of(request)
    return (settings.base_url or str(request.base_url)).rstrip("/")


def upload_href(request: Request, upload_id: str) -> str:
    """The URL of an upload's record."""
    return f"{base_url(request)}/uploads/{upload_id}"


def upload_json(request: Request, upload: StoredUpload) -> dict[str, Any]:
    """An upload's record as JSON (what ``GET /uploads/{id}`` answers)."""
    return {
        "upload_id": upload.upload_id,
        "sha256": upload.sha256,
        "filename": upload.filename,
        "bytes": upload.bytes,
        "created": isotime(upload.created),
        "expires": isotime(upload.expires),
        "owner": upload.owner,
        "header": upload.header,
        "href": upload_href(request, upload.upload_id),
    }


UPLOAD_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {
                            "type": "string",
                            "format": "binary",
                            "description": "The FITS image (also accepted as field 'image'); "
                            "gzip, bzip2 or xz compression is undone at upload.",
                        }
                    },
                }
            }
        },
    }
}


@router.post(
    "/uploads",
    status_code=201,
    openapi_extra=UPLOAD_BODY,
    responses={
        200: {"description": "This owner had uploaded the same content: its record."},
        201: {"description": "Stored; Location names the upload."},
        400: {"description": "Not a FITS image (names the field)."},
        413: {"description": "Over the upload limit or the owner's quota."},
    },
)
async def post_upload(request: Request, uploads: Uploads, owner: Owner) -> Response:
    """Store a FITS image once, to name in jobs as ``IMAGE=upload:<id>``; the same content
    uploaded again by the same owner answers its existing record."""
    settings = settings_of(request)

    async def read(sink: Sink) -> Form:
        return await read_form(
            request,
            max_form_bytes=settings.max_form_bytes,
            max_upload_bytes=uploads.body_limit,
            sink=sink,
        )

    upload, created = await uploads.receive(
        owner, read, content_length=request.headers.get("content-length")
    )
    href = upload_href(request, upload.upload_id)
    return JSONResponse(
        upload_json(request, upload),
        status_code=201 if created else 200,
        headers={"Location": href} if created else {"Content-Location": href},
    )


@router.get("/uploads")
async def list_uploads(request: Request, uploads: Uploads, owner: Owner) -> JSONResponse:
    """The caller's stored uploads."""
    found = await uploads.list(owner)
    return JSONResponse({"uploads": [upload_json(request, u) for u in found]})


@router.get("/uploads/{upload_id}")
async def get_upload(
    upload_id: str, request: Request, uploads: Uploads, owner: Owner
) -> JSONResponse:
    """One upload's record: its digest, size, file name, expiry and FITS header facts."""
    return JSONResponse(upload_json(request, await uploads.get(owner, upload_id)))


@router.delete("/uploads/{upload_id}", status_code=204)
async def delete_upload(upload_id: str, uploads: Uploads, owner: Owner) -> Response:
    """Remove an upload (jobs already made from it keep their copy)."""
    await uploads.delete(owner, upload_id)
    return Response(status_code=204)
