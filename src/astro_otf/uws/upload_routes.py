"""Uploads a client stores once and names in many jobs (``IMAGE=upload:<id>``).

The handlers parse the request, ask the UploadService and render JSON: the policy (content
addressing, checks, quota, expiry, owners) lives in :mod:`astro_otf.service.uploads`.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from starlette.responses import Response

from astro_otf.config import Settings
from astro_otf.service.uploads import StoredUpload, UploadService
from astro_otf.uws.auth import owner_from
from astro_otf.uws.render import isotime
from astro_otf.uws.uploads import Form, Sink, read_form

router = APIRouter()


async def get_uploads(request: Request) -> UploadService:
    uploads: UploadService = request.app.state.uploads
    return uploads


async def get_owner(request: Request) -> str | None:
    return owner_from(request, request.app.state.settings)


Uploads = Annotated[UploadService, Depends(get_uploads)]
Owner = Annotated[str | None, Depends(get_owner)]


def base_url(request: Request) -> str:
    settings: Settings = request.app.state.settings
    return (settings.base_url or str(request.base_url)).rstrip("/")


def upload_href(request: Request, upload_id: str) -> str:
    return f"{base_url(request)}/uploads/{upload_id}"


def upload_json(request: Request, upload: StoredUpload) -> dict[str, Any]:
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
    settings: Settings = request.app.state.settings

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
    found = await uploads.list(owner)
    return JSONResponse({"uploads": [upload_json(request, u) for u in found]})


@router.get("/uploads/{upload_id}")
async def get_upload(
    upload_id: str, request: Request, uploads: Uploads, owner: Owner
) -> JSONResponse:
    return JSONResponse(upload_json(request, await uploads.get(owner, upload_id)))


@router.delete("/uploads/{upload_id}", status_code=204)
async def delete_upload(upload_id: str, uploads: Uploads, owner: Owner) -> Response:
    await uploads.delete(owner, upload_id)
    return Response(status_code=204)
