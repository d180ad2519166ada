"""The datasets an operator offers (``GET /datasets``, ``GET /datasets/{name}``): their
images with what their headers say, for a client to name one as
``IMAGE=dataset:<name>/<path>``. The handlers parse and render only: listing, header facts
and the checks of a reference live in :mod:`astro_otf.service.datasets`."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from astro_otf.service.datasets import Dataset, Datasets
from astro_otf.service.threads import in_thread
from astro_otf.uws.auth import Owner
from astro_otf.uws.state import settings_of, state_of

__all__ = ["router"]

router = APIRouter()


async def get_datasets(request: Request) -> Datasets:
    """The datasets the operator configured (a route's ``DatasetsDep`` argument)."""
    return state_of(request).jobs.holds.datasets


DatasetsDep = Annotated[Datasets, Depends(get_datasets)]


def _href(request: Request, name: str) -> str:
    settings = settings_of(request)
    return f"{(settings.base_url or str(request.base_url)).rstrip('/')}/datasets/{name}"


def _summary(request: Request, dataset: Dataset) -> dict[str, Any]:
    return {
        "name": dataset.name,
        "description": dataset.description,
        # what the dataset's files are (a glob under its folder); the folder is the
        # server's business
        "pattern": dataset.pattern or "**/*.fits (and .fit, .fts, .fits.gz)",
        "href": _href(request, dataset.name),
    }


@router.get("/datasets")
async def list_datasets(request: Request, datasets: DatasetsDep, owner: Owner) -> JSONResponse:
    """The datasets on offer: each one's name, description, file pattern and URL."""
    return JSONResponse(
        {"datasets": [_summary(request, d) for _, d in sorted(datasets.by_name.items())]}
    )


@router.get(
    "/datasets/{name}",
    responses={404: {"description": "No dataset of that name."}},
)
async def get_dataset(
    name: str, request: Request, datasets: DatasetsDep, owner: Owner
) -> JSONResponse:
    """The dataset's images (path, IMAGE reference, bytes, whether complete; shape, beam,
    frequency, object and telescope from each header)."""
    dataset = datasets.get(name)
    images, truncated = await in_thread(datasets.images, name)
    return JSONResponse({**_summary(request, dataset), "images": images, "truncated": truncated})
