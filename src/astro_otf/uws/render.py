"""UWS 1.1 documents (XML, valid against the official schema) and their JSON twins.

Times are UTC and end in ``Z`` (pyvo rejects ``+00:00``); the nillable elements the schema
requires (startTime, endTime, destruction, ownerId) are written with ``xsi:nil`` when empty.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from xml.sax.saxutils import escape, quoteattr

from lxml import etree

from astro_otf.domain.job import Job, JobSummary
from astro_otf.results.preview import is_plan

__all__ = [
    "Links",
    "isotime",
    "job_json",
    "job_list_json",
    "job_list_xml",
    "job_xml",
    "parameters_json",
    "parameters_xml",
    "results_json",
    "results_xml",
]

UWS_NS = "http://www.ivoa.net/xml/UWS/v1.0"
XLINK_NS = "http://www.w3.org/1999/xlink"
XSI_NS = "http://www.w3.org/2001/XMLSchema-instance"
NSMAP = {"uws": UWS_NS, "xlink": XLINK_NS, "xsi": XSI_NS}
UWS_VERSION = "1.1"


def isotime(value: datetime | None) -> str | None:
    """ISO 8601 in UTC with millisecond precision and a ``Z``."""
    if value is None:
        return None
    if value.tzinfo is not UTC:
        value = value.astimezone(UTC)
    # isoformat truncates to milliseconds (as strftime did) at a third of its cost
    return value.replace(tzinfo=None).isoformat(timespec="milliseconds") + "Z"


def _el(
    parent: etree._Element, name: str, text: str | None = None, *, nillable: bool = False
) -> etree._Element:
    child = etree.SubElement(parent, f"{{{UWS_NS}}}{name}")
    if text is None:
        if nillable:
            child.set(f"{{{XSI_NS}}}nil", "true")
    else:
        child.text = text
    return child


def _to_bytes(root: etree._Element) -> bytes:
    return bytes(etree.tostring(root, xml_declaration=True, encoding="UTF-8", pretty_print=True))


class Links:
    """Absolute URLs of a job's resources, from the service's base URL."""

    def __init__(self, base_url: str) -> None:
        self.base = base_url.rstrip("/")

    def jobs(self) -> str:
        """The job list."""
        return f"{self.base}/jobs"

    def job(self, job_id: str) -> str:
        """A job."""
        return f"{self.base}/jobs/{job_id}"

    def result(self, job_id: str, result_id: str) -> str:
        """A job's result file."""
        return f"{self.job(job_id)}/results/{result_id}"

    def parameter(self, job_id: str, name: str) -> str:
        """A job's parameter (an uploaded file's link)."""
        return f"{self.job(job_id)}/parameters/{name}"


def _parameters(parent: etree._Element, job: Job, links: Links) -> None:
    params = _el(parent, "parameters")
    for p in job.parameters:
        el = _el(params, "parameter", links.parameter(job.job_id, p.name) if p.is_file else p.value)
        el.set("id", p.name)
        if p.is_file:
            el.set("byReference", "true")


def _results(parent: etree._Element, job: Job, links: Links) -> None:
    results = _el(parent, "results")
    for r in job.results:
        el = _el(results, "result")
        el.set("id", r.result_id)
        el.set(f"{{{XLINK_NS}}}type", "simple")
        el.set(f"{{{XLINK_NS}}}href", links.result(job.job_id, r.result_id))
        if not is_plan(r.filename):  # a preview drawn on demand: size unknown until drawn
            el.set("size", str(r.size))
        el.set("mime-type", r.mime_type)


def _info_xml(parent: etree._Element, info: dict[str, Any]) -> None:
    """jobInfo allows any XML. Each entry is one element named after its key (nested keys
    joined with ``_``), which is the shape pyvo's ``jobinfo`` reads."""
    box = _el(parent, "jobInfo")
    for key, value in _flatten(info):
        item = etree.SubElement(box, _XML_NAME.sub("_", key))
        item.text = str(value)


_XML_NAME = re.compile(r"[^A-Za-z0-9_.-]")


def _flatten(info: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for key, value in info.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.extend(_flatten(value, f"{name}_"))
        else:
            out.append((name if name[:1].isalpha() or name[:1] == "_" else f"_{name}", value))
    return out


def job_xml(job: Job, links: Links) -> bytes:
    """The UWS 1.1 job document (uws:job)."""
    root = etree.Element(f"{{{UWS_NS}}}job", nsmap=NSMAP)
    root.set("version", UWS_VERSION)
    _el(root, "jobId", job.job_id)
    if job.run_id is not None:
        _el(root, "runId", job.run_id)
    _el(root, "ownerId", job.owner, nillable=True)
    _el(root, "phase", job.phase.value)
    _el(root, "quote", isotime(job.quote), nillable=True)
    _el(root, "creationTime", isotime(job.creation_time))
    _el(root, "startTime", isotime(job.start_time), nillable=True)
    _el(root, "endTime", isotime(job.end_time), nillable=True)
    _el(root, "executionDuration", str(job.execution_duration))
    _el(root, "destruction", isotime(job.destruction_time), nillable=True)
    _parameters(root, job, links)
    _results(root, job, links)
    if job.error is not None:
        err = _el(root, "errorSummary")
        err.set("type", job.error.error_type)
        err.set("hasDetail", "true")
        _el(err, "message", job.error.message)
    if job.info:
        _info_xml(root, job.info)
    return _to_bytes(root)


_LIST_HEAD = (
    "<?xml version='1.0' encoding='UTF-8'?>\n"
    f'<uws:jobs xmlns:uws="{UWS_NS}" xmlns:xlink="{XLINK_NS}" xmlns:xsi="{XSI_NS}" '
    f'version="{UWS_VERSION}">\n'
)


def job_list_xml(jobs: list[JobSummary], links: Links) -> bytes:
    """The job list, written as text: one jobref per job (a list of a thousand jobs is
    rendered several times faster than through an element tree). Every value is escaped;
    a text that XML cannot carry (a control character) takes the element tree's path,
    which refuses it as it does in every other document."""
    parts = [_LIST_HEAD]
    for j in jobs:
        run_id = "" if j.run_id is None else f"    <uws:runId>{_text(j.run_id)}</uws:runId>\n"
        owner = (
            '    <uws:ownerId xsi:nil="true"/>\n'
            if j.owner is None
            else f"    <uws:ownerId>{_text(j.owner)}</uws:ownerId>\n"
        )
        parts.append(
            f'  <uws:jobref id={quoteattr(j.job_id)} xlink:type="simple" '
            f"xlink:href={quoteattr(links.job(j.job_id))}>\n"
            f"    <uws:phase>{j.phase.value}</uws:phase>\n{run_id}{owner}"
            f"    <uws:creationTime>{isotime(j.creation_time)}</uws:creationTime>\n"
            "  </uws:jobref>\n"
        )
    parts.append("</uws:jobs>\n")
    text = "".join(parts)
    if _NOT_XML.search(text):
        return _job_list_tree(jobs, links)
    return text.encode()


#: Characters XML 1.0 cannot carry (lxml refuses them in text and attributes).
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff\ud800-\udfff]")


def _text(value: str) -> str:
    return escape(value, {"\r": "&#13;"})  # a raw CR would be read back as a LF


def _job_list_tree(jobs: list[JobSummary], links: Links) -> bytes:
    root = etree.Element(f"{{{UWS_NS}}}jobs", nsmap=NSMAP)
    root.set("version", UWS_VERSION)
    for j in jobs:
        ref = _el(root, "jobref")
        ref.set("id", j.job_id)
        ref.set(f"{{{XLINK_NS}}}type", "simple")
        ref.set(f"{{{XLINK_NS}}}href", links.job(j.job_id))
        _el(ref, "phase", j.phase.value)
        if j.run_id is not None:
            _el(ref, "runId", j.run_id)
        _el(ref, "ownerId", j.owner, nillable=True)
        _el(ref, "creationTime", isotime(j.creation_time))
    return _to_bytes(root)


def _standalone(
    build: Callable[[etree._Element, Job, Links], None], job: Job, links: Links
) -> bytes:
    """One of a job's sub-elements as a document of its own (/results, /parameters)."""
    holder = etree.Element("holder", nsmap=NSMAP)
    build(holder, job, links)
    root = holder[0]
    holder.remove(root)
    return _to_bytes(root)


def results_xml(job: Job, links: Links) -> bytes:
    """The job's uws:results document."""
    return _standalone(_results, job, links)


def parameters_xml(job: Job, links: Links) -> bytes:
    """The job's uws:parameters document."""
    return _standalone(_parameters, job, links)


# -- JSON --------------------------------------------------------------------------------


def job_json(job: Job, links: Links) -> dict[str, Any]:
    """The job document in JSON, with the UWS element names."""
    return {
        "jobId": job.job_id,
        "runId": job.run_id,
        "ownerId": job.owner,
        "phase": job.phase.value,
        "quote": isotime(job.quote),
        "creationTime": isotime(job.creation_time),
        "startTime": isotime(job.start_time),
        "endTime": isotime(job.end_time),
        "executionDuration": job.execution_duration,
        "destruction": isotime(job.destruction_time),
        "parameters": parameters_json(job, links),
        "results": results_json(job, links),
        "errorSummary": None
        if job.error is None
        else {"type": job.error.error_type, "message": job.error.message, "hasDetail": True},
        "jobInfo": job.info,
        "href": links.job(job.job_id),
    }


def parameters_json(job: Job, links: Links) -> dict[str, str]:
    """Parameter name -> value (an uploaded file: its link)."""
    return {
        p.name: links.parameter(job.job_id, p.name) if p.is_file else p.value
        for p in job.parameters
    }


def results_json(job: Job, links: Links) -> list[dict[str, Any]]:
    """One entry per result: id, link, MIME type and size (none for a tile plan)."""
    return [
        {
            "id": r.result_id,
            "href": links.result(job.job_id, r.result_id),
            "mimeType": r.mime_type,
            "size": None if is_plan(r.filename) else r.size,
        }
        for r in job.results
    ]


def job_list_json(
    jobs: list[JobSummary],
    links: Links,
    progress: Callable[[JobSummary], dict[str, Any] | None] | None = None,
) -> dict[str, Any]:
    """The job list as JSON: UWS's jobref fields, and what a person looks for in a list
    (the image's name, the model, the sources found, the end time, the progress of an
    active job, the preview's address). ``progress`` gives a listed job's progress (a
    QUEUED job's place in the queue is not in the store)."""
    return {
        "jobs": [
            {
                "jobId": j.job_id,
                "phase": j.phase.value,
                "runId": j.run_id,
                "ownerId": j.owner,
                "creationTime": isotime(j.creation_time),
                "endTime": isotime(j.end_time),
                "image": j.image_name,
                "modelId": j.model_id,
                "sources": j.sources,
                "progress": progress(j) if progress is not None else j.progress,
                "preview": links.result(j.job_id, "preview") if j.has_preview else None,
                "href": links.job(j.job_id),
            }
            for j in jobs
        ]
    }
