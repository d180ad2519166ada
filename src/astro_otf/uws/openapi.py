"""What the handlers of uws/ read, told to OpenAPI.

The UWS handlers read the raw request (case-insensitive names, repeated PHASE, streamed
multipart uploads), so FastAPI cannot see their parameters; each route passes one of these
as ``openapi_extra`` so that ``/openapi.json`` describes the query parameters and form bodies
it really takes. They describe, they do not validate: the handlers' own checks answer.
Names are written in the UWS spelling (upper case); the service takes any case.
"""

from __future__ import annotations

from typing import Any

from astro_otf.domain.parameters import MAX_RUN_ID_CHARS, MAX_TEXT_CHARS
from astro_otf.domain.phases import Phase
from astro_otf.results.provenance import PROV_FORMATS
from astro_otf.service.jobs import MAX_LIST_LAST

__all__ = [
    "CREATE_JOB",
    "GET_ERROR",
    "GET_JOB",
    "GET_LOG",
    "GET_MODEL",
    "GET_PROVENANCE",
    "JOB_EVENTS",
    "JOB_LIST",
    "POST_DESTRUCTION",
    "POST_EXECUTION_DURATION",
    "POST_JOB",
    "POST_PARAMETERS",
    "POST_PHASE",
    "POST_RERUN",
    "XML_OR_JSON",
    "extra",
    "query",
]

Schema = dict[str, Any]

_TEXT: Schema = {"type": "string", "maxLength": MAX_TEXT_CHARS}
_TIME: Schema = {"type": "string", "format": "date-time"}


def query(name: str, description: str, schema: Schema, *, required: bool = False) -> Schema:
    """An OpenAPI query parameter."""
    return {
        "name": name,
        "in": "query",
        "required": required,
        "description": description,
        "schema": schema,
    }


def header(name: str, description: str, schema: Schema) -> Schema:
    """An optional OpenAPI header parameter."""
    return {
        "name": name,
        "in": "header",
        "required": False,
        "description": description,
        "schema": schema,
    }


#: the documents offered as XML (the default) or JSON
ACCEPT = header(
    "Accept",
    "application/json for the JSON twin of the UWS XML document.",
    {"type": "string", "enum": ["application/xml", "application/json"]},
)


def form(
    fields: dict[str, Schema],
    *,
    required: tuple[str, ...] = (),
    free: bool = False,
    image: bool = False,
    description: str = "",
) -> Schema:
    """A request body sent form-encoded or as multipart/form-data. ``free``: other text
    fields (a model's own parameters) are taken too; ``image``: the multipart form may carry
    the IMAGE file part."""

    def schema(with_image: bool) -> Schema:
        properties = dict(fields)
        if with_image:
            properties["IMAGE"] = {
                "type": "string",
                "format": "binary",
                "description": "The FITS image (uncompressed, or gzip, bzip2 or xz; FITS tile "
                "compression is read).",
            }
        out: Schema = {"type": "object", "properties": properties}
        if required:
            out["required"] = list(required)
        out["additionalProperties"] = _TEXT if free else False
        return out

    content = {
        "application/x-www-form-urlencoded": {"schema": schema(False)},
        "multipart/form-data": {"schema": schema(image)},
    }
    body: Schema = {"required": bool(required), "content": content}
    if description:
        body["description"] = description
    return {"requestBody": body}


def extra(*parts: Schema, responses: dict[int, str] | None = None) -> Schema:
    """One ``openapi_extra``: query parameters (dicts with ``in``) and at most one body."""
    out: Schema = {}
    params = [p for p in parts if "in" in p]
    if params:
        out["parameters"] = params
    for p in parts:
        if "requestBody" in p:
            out["requestBody"] = p["requestBody"]
    if responses:
        out["responses"] = {str(code): {"description": text} for code, text in responses.items()}
    return out


_PHASES = [p.value for p in Phase]

JOB_LIST = extra(
    ACCEPT,
    query(
        "PHASE",
        "Only jobs in these phases (repeat for several). Without it, ARCHIVED jobs are left out.",
        {"type": "array", "items": {"type": "string", "enum": _PHASES}},
    ),
    query("AFTER", "Only jobs created after this time (ISO 8601, UTC).", _TIME),
    query(
        "LAST",
        "Only the most recent LAST jobs.",
        {"type": "integer", "minimum": 1, "maximum": MAX_LIST_LAST},
    ),
    query(
        "RUNID",
        "Only jobs with this run id (repeat for several).",
        {"type": "array", "items": {"type": "string", "maxLength": 255}},
    ),
    query(
        "IMAGE",
        "Only jobs whose uploaded image had this file name; * matches any characters "
        "(repeat for several).",
        {"type": "array", "items": {"type": "string", "maxLength": 255}},
    ),
    responses={400: "A filter is malformed or out of range (the text names it)."},
)

JOB_EVENTS = extra(
    query(
        "JOB",
        "Only these jobs (repeat for several).",
        {"type": "array", "items": {"type": "string", "maxLength": 64}},
    ),
    query(
        "LAST_EVENT_ID",
        "Resume after this event (as the Last-Event-ID header does).",
        {"type": "string", "maxLength": 64},
    ),
    header(
        "Last-Event-ID",
        "Resume after this event; a reset event answers one whose successors are gone.",
        {"type": "string", "maxLength": 64},
    ),
    responses={
        200: "text/event-stream: events phase, progress, deleted and reset; each data line "
        "is a JSON object with job_id, phase, run_id, progress and time.",
        503: "Too many event streams are open; see Retry-After.",
    },
)

GET_LOG = extra(
    query(
        "TAIL",
        "Only the last TAIL lines.",
        {"type": "integer", "minimum": 1, "maximum": 10_000},
    ),
    responses={404: "No such job (or not yours).", 400: "TAIL is out of range."},
)

_RUNID: Schema = {
    "type": "string",
    "maxLength": MAX_RUN_ID_CHARS,
    "description": "A label of the client's choosing (printable characters).",
}

#: The parameters every job takes; a model's own ones are further free text fields.
_JOB_FIELDS: dict[str, Schema] = {
    "MODEL": {**_TEXT, "description": "Which model or app runs (GET /models)."},
    "MODEL_VERSION": {**_TEXT, "description": "Which installed version of the model runs."},
    "PRECISION": {**_TEXT, "description": "Numeric precision the model offers."},
    "RA": {"type": "number", "minimum": 0, "maximum": 360, "description": "ICRS deg."},
    "DEC": {"type": "number", "minimum": -90, "maximum": 90, "description": "ICRS deg."},
    "WIDTH": {**_TEXT, "description": "Region width: pixels (128) or an angle (3 arcmin)."},
    "HEIGHT": {**_TEXT, "description": "Region height: pixels (128) or an angle (3 arcmin)."},
    "PRIORITY": {"type": "integer", "minimum": -10, "maximum": 10},
    "PREVIEW": {"type": "boolean", "description": "List the PNG preview (drawn on request)."},
    "NOCACHE": {
        "type": "boolean",
        "description": "Run even if a completed job computed the same thing already.",
    },
    "HOLD": {
        **_TEXT,
        "description": "With IMAGE=dataset:<name>/<path> or IMAGE=pending:<name>: how long "
        "the job may wait (HELD) for its image, in seconds or as an ISO-8601 time; capped at "
        "its destruction time.",
    },
}

CREATE_JOB = extra(
    form(
        {
            "PHASE": {"type": "string", "enum": ["RUN"], "description": "Queue the job at once."},
            "RUNID": _RUNID,
            **_JOB_FIELDS,
            "XML": {
                **_TEXT,
                "maxLength": 1024 * 1024,
                "description": "A CIANNA On-The-Fly uws:job document (its image as FITS).",
            },
        },
        free=True,
        image=True,
        description="The job's parameters; other fields are the model's own parameters "
        "(GET /models/{model_id}).",
    ),
    responses={
        303: "The job was created: Location names it.",
        400: "A parameter is missing, unknown or wrong (the text names it).",
        413: "The body, its text fields or the image is over a limit, or the owner's jobs "
        "hold max_stored_bytes already.",
        415: "The body is neither form-encoded nor multipart.",
        429: "The owner is over max_active_jobs or job_creation_rate; see Retry-After.",
        503: "The queue is full (PHASE=RUN); see Retry-After.",
    },
)

GET_JOB = extra(
    ACCEPT,
    query(
        "WAIT",
        "Block until the job leaves its phase, at most this many seconds (-1: the "
        "service's maximum).",
        {"type": "integer", "minimum": -1},
    ),
    query("PHASE", "With WAIT: the phase to wait out.", {"type": "string", "enum": _PHASES}),
    responses={404: "No such job (or not yours)."},
)

POST_JOB = extra(
    form({"ACTION": {"type": "string", "enum": ["DELETE"]}}, required=("ACTION",)),
    responses={303: "Deleted: Location is the job list.", 404: "No such job."},
)

POST_PHASE = extra(
    form({"PHASE": {"type": "string", "enum": ["RUN", "ABORT"]}}, required=("PHASE",)),
    responses={
        303: "Done.",
        409: "Not allowed in the job's phase.",
        429: "RUN: the owner has max_active_jobs active already; see Retry-After.",
        503: "The queue is full.",
    },
)

POST_EXECUTION_DURATION = extra(
    form(
        {"EXECUTIONDURATION": {"type": "integer", "minimum": 0, "description": "Seconds."}},
        required=("EXECUTIONDURATION",),
    ),
    responses={303: "Set (clamped to the service's maximum).", 409: "The job is not PENDING."},
)

POST_DESTRUCTION = extra(
    form({"DESTRUCTION": _TIME}, required=("DESTRUCTION",)),
    responses={303: "Set (clamped to the service's maximum)."},
)

GET_ERROR = extra(
    query(
        "FORMAT",
        "text (default) or votable (a DALI error VOTable).",
        {"type": "string", "enum": ["text", "votable"]},
    ),
    responses={404: "No such job, or the job has no error."},
)

POST_RERUN = extra(
    form(
        {"PHASE": {"type": "string", "enum": ["RUN"]}, "RUNID": _RUNID},
        free=True,
        description="Other fields change the recorded parameters (THRESHOLD=0.6, say).",
    ),
    responses={303: "The new job.", 409: "The job has not finished, or cannot be replayed."},
)

GET_PROVENANCE = extra(
    query(
        "FORMAT",
        "The provenance serialisation (else chosen by Accept).",
        {"type": "string", "enum": sorted(PROV_FORMATS)},
    ),
    responses={404: "No such job, or no provenance yet.", 406: "No acceptable format."},
)

POST_PARAMETERS = extra(
    form(
        _JOB_FIELDS,
        free=True,
        image=True,
        description="New values for parameters of a PENDING job (a new IMAGE too).",
    ),
    responses={303: "Changed.", 400: "A parameter is wrong.", 409: "The job is not PENDING."},
)

XML_OR_JSON = extra(ACCEPT, responses={404: "No such job (or not yours)."})

GET_MODEL = extra(
    query("version", "Describe this installed version.", {"type": "string"}),
    responses={404: "No such model."},
)
