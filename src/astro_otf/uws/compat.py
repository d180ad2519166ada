"""CIANNA On-The-Fly compatibility: read the ``uws:job`` document those clients upload.

The reader is tolerant, as that family of clients sends phases outside UWS (``QUEUING``),
``+00:00`` offsets and placeholder error summaries: it takes the parameters it knows, maps
them onto ours, and ignores the rest. ``FITS_Path`` is a client-side path and is never opened.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lxml import etree

from astro_otf.domain.errors import ParameterError, RequestError

__all__ = ["parse_cianna_job"]

#: CIANNA parameter id (lower case) -> our parameter name.
FIELD_MAP = {
    "modelid": "model",
    "modelname": "model",
    "quantization": "precision",
    "ra": "ra",
    "dec": "dec",
    "roi_width": "width",
    "roi_height": "height",
}
#: Known CIANNA fields that carry nothing for the job (FITS_Path is never opened).
IGNORED = {"fits_path", "clientversion", "timestamp"}
#: CIANNA quantization compute types -> our precision names.
QUANTIZATION = {"FP32": "fp32", "FP16": "fp16", "BF16": "bf16", "INT8": "int8", "FP64": "fp64"}


@dataclass
class CiannaRequest:
    """A CIANNA On-The-Fly job description read into this service's parameters."""

    fields: dict[str, str] = field(default_factory=dict)
    #: our parameter name -> the CIANNA field it came from, to name it in error messages
    origin: dict[str, str] = field(default_factory=dict)
    run_id: str | None = None
    client_version: str | None = None


def _local(tag: object) -> str:
    return etree.QName(tag).localname if isinstance(tag, str) else ""


def quantization_to_precision(value: str) -> str:
    """``FP32C_FP32A`` (compute type, then accumulation type) -> ``fp32``."""
    compute = value.strip().upper().split("_")[0].removesuffix("C")
    precision = QUANTIZATION.get(compute)
    if precision is None:
        raise ParameterError(
            "precision",
            f"CIANNA Quantization {value!r} is not understood; expected forms like "
            "FP32C_FP32A or FP16C_FP32A",
        )
    return precision


def parse_cianna_job(document: bytes | str) -> CiannaRequest:
    """Read the ``xml`` field of a CIANNA client's submission (a uws:job document) into
    this service's parameters; RequestError or ParameterError names what is wrong."""
    parser = etree.XMLParser(
        resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False
    )
    raw = document.encode() if isinstance(document, str) else document
    try:
        root = etree.fromstring(raw, parser)
    except etree.XMLSyntaxError as exc:
        raise RequestError(f"xml: the job description is not well-formed XML: {exc}") from None
    if _local(root.tag) != "job":
        raise RequestError(f"xml: expected a uws:job document, got <{_local(root.tag)}>")
    out = CiannaRequest()
    models: dict[str, str] = {}
    for el in root.iter():
        name = _local(el.tag)
        if name == "runId" and el.text and el.text.strip():
            out.run_id = el.text.strip()
        if name != "parameter":
            continue
        pid = (el.get("id") or "").strip()
        value = (el.text or "").strip()
        key = pid.lower()
        if key in IGNORED:
            if key == "clientversion":
                out.client_version = value
            continue
        ours = FIELD_MAP.get(key)
        if ours is None:  # a parameter of the model itself, passed through
            ours = key
        if ours == "model":
            models[key] = value
            continue
        if ours == "precision":
            value = quantization_to_precision(value)
        out.fields[ours] = value
        out.origin[ours] = pid
    model = models.get("modelid") or models.get("modelname")
    if model:
        out.fields["model"] = model
        out.origin["model"] = "ModelId" if "modelid" in models else "ModelName"
    return out
