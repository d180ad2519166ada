"""Every result a finished job offers, written in one place from the catalogue an app returned.

Apps only find sources; this module turns their :class:`Catalogue` into the files a job lists:
the VOTable (the UWS result ``result``, what pyvo's ``fetch_result`` reads), CSV, JSON, a DS9
region file, the PNG preview's plan (the PNG itself is drawn by the service on the first
request: see :mod:`astro_otf.results.preview`), and last the provenance, which carries the
sha256 of all the others (and names the preview as drawn on demand, without a hash). Writing
them together keeps the formats in agreement, and every file is written under a temporary
name and renamed, so a half-written result is never listed.
"""

from __future__ import annotations

import functools
import importlib.metadata
import json
import platform
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from astro_otf.imaging.fits import SkyImage
from astro_otf.results.catalogue import Catalogue
from astro_otf.results.entities import file_entity
from astro_otf.results.formats import write_csv, write_ds9, write_json
from astro_otf.results.preview import PLAN_SUFFIX, write_plan
from astro_otf.results.provenance import (
    DerivedFile,
    ProvenanceRecord,
    write_provenance,
)
from astro_otf.results.votable import write_catalogue

__all__ = [
    "PREVIEW",
    "PREVIEW_PNG",
    "PRODUCTS",
    "JobContext",
    "Product",
    "service_version",
    "write_products",
]

SERVICE_NAME = "astro-otf"

#: Header cards worth recording about an input image (those present are kept).
KEY_CARDS = (
    "TELESCOP",
    "INSTRUME",
    "OBJECT",
    "ORIGIN",
    "DATE-OBS",
    "BUNIT",
    "BMAJ",
    "BMIN",
    "BPA",
    "NAXIS1",
    "NAXIS2",
    "CTYPE1",
    "CTYPE2",
    "CRVAL1",
    "CRVAL2",
    "CDELT1",
    "CDELT2",
    "RADESYS",
    "EQUINOX",
    "RESTFRQ",
    "RESTFREQ",
    "CRVAL3",
    "CTYPE3",
)


@dataclass(frozen=True)
class Product:
    """One result file: its UWS result id, file name and media type."""

    result_id: str
    filename: str
    mime_type: str


VOTABLE = Product("result", "catalogue.xml", "application/x-votable+xml")
CSV = Product("csv", "catalogue.csv", "text/csv")
JSON = Product("json", "catalogue.json", "application/json")
DS9 = Product("ds9", "catalogue.reg", "text/x-ds9-region")
#: Listed with its plan's file name; the PNG (``PREVIEW_PNG``) is drawn on the first GET.
PREVIEW = Product("preview", f"preview{PLAN_SUFFIX}", "image/png")
PREVIEW_PNG = "preview.png"
PROVENANCE = Product("provenance", "provenance.json", "application/json")
#: In the order they are written and listed.
PRODUCTS = (VOTABLE, CSV, JSON, DS9, PREVIEW, PROVENANCE)


@dataclass(frozen=True)
class JobContext:
    """What the worker knows about the job whose results are written."""

    job_id: str
    owner: str | None
    model_id: str
    model_version: str
    batch_id: str
    batch_jobs: int
    host: str
    pid: int
    started: datetime
    parameters: Mapping[str, object]
    image_path: Path | None
    #: The batch-system job the worker ran in (``slurm_job_id``, ...), when there is one.
    batch_system: Mapping[str, str] = field(default_factory=dict)


@functools.cache
def service_version() -> str:
    """The installed astro-otf version, "unknown" when running from a source tree."""
    try:
        return importlib.metadata.version(SERVICE_NAME)
    except importlib.metadata.PackageNotFoundError:  # running from a source tree
        return "unknown"


def software_versions() -> dict[str, str]:
    """Versions of what ran: the service, Python and the libraries that touched the data."""
    return dict(_versions(tuple(n for n in ("sep", "onnxruntime") if n in sys.modules)))


@functools.cache
def _versions(loaded: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    """Looked up once per process (they cannot change while it runs)."""
    versions = {SERVICE_NAME: service_version(), "python": platform.python_version()}
    for name in ("numpy", "astropy", *loaded):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return tuple(versions.items())


#: What the service recorded about a job's input image, beside it (service.jobs writes it).
IDENTITY_FILE = "identity.json"
#: Of that record, what the catalogue carries as INFOs (``input_<key>``).
IDENTITY_INFOS = ("filename", "sha256", "object", "telescope", "frequency_hz", "shape")


def input_identity(image_path: Path | None) -> dict[str, object]:
    """The input's file name, sha256, object, telescope, frequency and shape as the service
    recorded them when the job was created; empty when there is no record (an image on the
    server's disk, a job from before records were kept)."""
    if image_path is None:
        return {}
    try:
        recorded = json.loads((image_path.parent / IDENTITY_FILE).read_text("utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(recorded, dict):
        return {}
    out: dict[str, object] = {}
    for key in (*IDENTITY_INFOS, "upload_id"):
        value = recorded.get(key)
        if isinstance(value, list):
            value = " x ".join(str(v) for v in value)
        if value is not None:
            out[key] = value
    return out


def key_cards(image: SkyImage) -> dict[str, str]:
    header = image.header
    return {card: str(header[card]) for card in KEY_CARDS if card in header}


def write_products(
    catalogue: Catalogue,
    image: SkyImage | None,
    staging: Path,
    job: JobContext,
) -> list[Product]:
    """Write every result of ``job`` into ``staging``; the list of products written."""
    identity = input_identity(job.image_path)
    infos = {
        "job_id": job.job_id,
        "owner": job.owner or "anonymous",
        "model_id": job.model_id,
        "model_version": job.model_version,
        **{f"input_{k}": str(v) for k, v in identity.items() if v is not None},
        **catalogue.infos,
        "software_version": f"{SERVICE_NAME} {service_version()}",
        "batch_id": job.batch_id,
        "batch_jobs": str(job.batch_jobs),
        **{f"executor_{k}": v for k, v in job.batch_system.items()},
    }
    params = {k: v for k, v in sorted(job.parameters.items()) if v is not None}
    written = [VOTABLE, CSV, JSON, DS9]
    write_catalogue(
        catalogue.table,
        staging / VOTABLE.filename,
        infos=infos,
        params=params,
        facts=catalogue.facts,
        description=catalogue.description or None,
    )
    write_csv(catalogue, staging / CSV.filename)
    write_json(
        catalogue,
        staging / JSON.filename,
        infos={**infos, **{f"param:{k}": str(v) for k, v in params.items()}},
    )
    write_ds9(catalogue, staging / DS9.filename)
    derived = []
    if image is not None and job.parameters.get("preview", True) is not False:
        write_plan(image, staging / PREVIEW.filename, catalogue=JSON.filename)
        written.append(PREVIEW)
        derived.append(
            DerivedFile(
                "preview",
                PREVIEW_PNG,
                PREVIEW.mime_type,
                derived_from=(JSON.filename,),
                note=(
                    "drawn by the service on the first request, from the catalogue and the "
                    "searched region of the input image; not hashed, as its bytes did not "
                    "exist when the job ended"
                ),
            )
        )
    inputs = []
    if job.image_path is not None and job.image_path.is_file():
        cards = key_cards(image) if image is not None else {}
        described = {
            k: str(v)
            for k, v in identity.items()
            if k in ("filename", "upload_id") and v is not None
        }
        inputs.append(
            file_entity("image", job.image_path, "application/fits", {**described, **cards})
        )
    outputs = [
        file_entity("result", staging / p.filename, p.mime_type) for p in written if p != PREVIEW
    ]
    record = ProvenanceRecord(
        job_id=job.job_id,
        owner=job.owner,
        model_id=job.model_id,
        model_version=job.model_version,
        started=job.started,
        ended=datetime.now(UTC),
        batch_id=job.batch_id,
        batch_jobs=job.batch_jobs,
        host=job.host,
        pid=job.pid,
        batch_system=dict(job.batch_system),
        service_name=SERVICE_NAME,
        service_version=service_version(),
        parameters={k: str(v) for k, v in params.items()},
        inputs=inputs,
        model_files=list(catalogue.model_files),
        software=software_versions(),
        outputs=outputs,
        derived=derived,
    )
    write_provenance(record, staging / PROVENANCE.filename)
    written.append(PROVENANCE)
    return written
