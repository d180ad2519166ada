"""Job parameters: their declared schema and how raw client strings become typed values.

Parameter names are case-insensitive on input, as UWS services usually accept; the canonical
name is lower case. Values are kept as the normalised strings that were validated, and turned
into typed values again by the same spec when a job runs.
"""

from __future__ import annotations

import math
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from astro_otf.domain.errors import ParameterError

ParamType = Literal["int", "float", "str", "bool", "file", "angle-or-pixels"]

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}
#: Units accepted in a WIDTH/HEIGHT value, with their size in arcseconds.
ANGLE_UNITS = {"arcsec": 1.0, "arcmin": 60.0, "deg": 3600.0}

#: The longest text value of a parameter, in characters (after surrounding white space).
MAX_TEXT_CHARS = 1024
#: The longest RUNID, in characters (the job store keeps at most 255, on every database).
MAX_RUN_ID_CHARS = 255
#: The longest parameter name, in characters.
MAX_NAME_CHARS = 64
#: Unicode categories refused in text values: control characters (C0, DEL, C1: XML 1.0
#: refuses most, PostgreSQL refuses NUL), surrogates, and line or paragraph separators.
_REFUSED_CATEGORIES = {
    "Cc": "a control character",
    "Cs": "a surrogate",
    "Zl": "a line separator",
    "Zp": "a paragraph separator",
}


def _refused(ch: str) -> str | None:
    """What is wrong with one character of a text value, or None when it is fine."""
    kind = _REFUSED_CATEGORIES.get(unicodedata.category(ch))
    if kind is not None:
        return kind
    code = ord(ch)
    if 0xFDD0 <= code <= 0xFDEF or code & 0xFFFE == 0xFFFE:  # XML refuses U+FFFE, U+FFFF
        return "a Unicode non-character"
    return None


def text_problem(text: str, limit: int) -> str | None:
    """Why ``text`` cannot be stored as a text value of at most ``limit`` characters (it
    must be printable, so that every job document and list can be written, the same on every
    database), or None when it can."""
    if len(text) > limit:
        return f"is {len(text)} characters long; at most {limit} are allowed"
    for position, ch in enumerate(text, start=1):
        kind = _refused(ch)
        if kind is not None:
            return (
                f"contains U+{ord(ch):04X}, {kind}, at character {position}; only printable "
                "characters are allowed"
            )
    return None


def _check_text(name: str, text: str, limit: int = MAX_TEXT_CHARS) -> None:
    """Raise :class:`ParameterError` naming ``name`` unless ``text`` is printable and at
    most ``limit`` characters long."""
    problem = text_problem(text, limit)
    if problem is not None:
        raise ParameterError(name, problem)


def check_run_id(run_id: str) -> None:
    """RUNID, the client's label: printable (no tab or newline either), at most
    :data:`MAX_RUN_ID_CHARS` characters."""
    _check_text("runid", run_id, MAX_RUN_ID_CHARS)


def check_texts(raw: Mapping[str, str]) -> None:
    """Every name and value of a raw parameter set is printable text of a bounded length.
    Values are judged as they are stored: without their surrounding white space."""
    for name, text in raw.items():
        if text_problem(name, MAX_NAME_CHARS) is not None:
            shown = repr(name[:MAX_NAME_CHARS])
            raise ParameterError(
                shown,
                f"is not a parameter name: names are at most {MAX_NAME_CHARS} printable characters",
            )
        _check_text(name, text.strip())


@dataclass(frozen=True)
class ParamSpec:
    """One declared parameter, like caesar-rest's ``describe``: what it is and what it takes."""

    name: str
    type: ParamType
    description: str
    default: Any = None
    minimum: float | None = None
    maximum: float | None = None
    allowed: tuple[str, ...] | None = None
    unit: str | None = None
    required: bool = False

    def __post_init__(self) -> None:
        if self.name != self.name.lower():
            raise ValueError(f"parameter names are lower case: {self.name}")

    def parse(self, raw: str) -> Any:
        """Turn a client string into a typed value, or raise ParameterError naming the problem."""
        text = raw.strip()
        if self.type == "file":
            raise ParameterError(self.name, "must be uploaded as a file part of a multipart POST")
        if self.type == "str":
            value: Any = text
            if not text:
                raise ParameterError(self.name, "must not be empty")
            if self.allowed is not None:
                match = {a.lower(): a for a in self.allowed}.get(text.lower())
                if match is None:
                    raise ParameterError(
                        self.name, f"{text!r} is not one of {', '.join(self.allowed)}"
                    )
                value = match
            return value
        if self.type == "bool":
            low = text.lower()
            if low in _TRUE:
                return True
            if low in _FALSE:
                return False
            raise ParameterError(self.name, f"{text!r} is not a boolean (use true or false)")
        if self.type == "angle-or-pixels":
            return self._parse_extent(text)
        number = self._parse_number(text)
        self._check_range(number)
        return number

    def _parse_number(self, text: str) -> int | float:
        try:
            if self.type == "int":
                as_float = float(text)
                if not as_float.is_integer():
                    raise ValueError
                return int(as_float)
            value = float(text)
        except ValueError:
            kind = "an integer" if self.type == "int" else "a number"
            raise ParameterError(self.name, f"{text!r} is not {kind}") from None
        if not math.isfinite(value):
            raise ParameterError(self.name, f"{text!r} is not a finite number")
        return value

    def _check_range(self, number: float) -> None:
        unit = f" {self.unit}" if self.unit else ""
        if self.minimum is not None and number < self.minimum:
            raise ParameterError(
                self.name, f"{number:g} is below the minimum {self.minimum:g}{unit}"
            )
        if self.maximum is not None and number > self.maximum:
            raise ParameterError(
                self.name, f"{number:g} is above the maximum {self.maximum:g}{unit}"
            )

    def _parse_extent(self, text: str) -> Extent:
        """A size: a number of pixels ("128", "128 pix") or an angle ("2 arcmin", "30arcsec")."""
        low = text.lower().replace(" ", "")
        unit = "pix"
        for candidate in (*ANGLE_UNITS, "pixels", "pix", "px"):
            if low.endswith(candidate):
                unit = candidate if candidate in ANGLE_UNITS else "pix"
                low = low[: -len(candidate)]
                break
        try:
            value = float(low)
        except ValueError:
            raise ParameterError(
                self.name,
                f"{text!r} is not a size: give pixels (128) or an angle "
                "(2 arcmin, 30 arcsec, 0.1 deg)",
            ) from None
        if not math.isfinite(value) or value <= 0:
            raise ParameterError(self.name, f"{text!r} must be a positive size")
        if unit == "pix" and not value.is_integer():
            raise ParameterError(self.name, f"{text!r}: a size in pixels must be a whole number")
        return Extent(value, unit)

    def describe(self) -> dict[str, Any]:
        """The schema entry served to clients."""
        out: dict[str, Any] = {
            "name": self.name,
            "type": self.type,
            "description": self.description,
        }
        for key in ("default", "minimum", "maximum", "unit"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        if self.allowed is not None:
            out["allowed"] = list(self.allowed)
        if self.required:
            out["required"] = True
        return out


@dataclass(frozen=True)
class Extent:
    """A width or height: pixels, or an angle in arcsec/arcmin/deg."""

    value: float
    unit: str  # "pix" or a key of ANGLE_UNITS

    @property
    def is_pixels(self) -> bool:
        """True when the size is a pixel count rather than an angle."""
        return self.unit == "pix"

    @property
    def arcsec(self) -> float:
        """The angle in arcseconds (only for an angle: a pixel size raises KeyError)."""
        return self.value * ANGLE_UNITS[self.unit]

    def __str__(self) -> str:
        return f"{int(self.value)}" if self.is_pixels else f"{self.value:g} {self.unit}"


@dataclass(frozen=True)
class Roi:
    """A region of interest: centre in ICRS degrees (whatever the image's frame), and its size."""

    ra: float
    dec: float
    width: Extent | None
    height: Extent | None


#: Parameters every job takes, whatever the model. ``model``, ``model_version`` and
#: ``precision`` are checked against the registry and the chosen app; the ROI ones are
#: checked together by :func:`roi_from`.
NATIVE_PARAMETERS: tuple[ParamSpec, ...] = (
    ParamSpec(
        "image",
        "file",
        "The FITS image to search: a multipart file part, or a reference to an image the "
        "server has: upload:<id> or sha256:<hex> (POST /uploads), dataset:<name>/<path> "
        "(GET /datasets), or pending:<name> for an image sent later with POST "
        "/jobs/{id}/parameters (the job waits for it in HELD). With HOLD=<seconds or "
        "ISO-8601 time>, a dataset file not there yet is waited for until then.",
        required=True,
    ),
    ParamSpec("model", "str", "Which registered model or app runs (see /models)."),
    ParamSpec(
        "model_version",
        "str",
        "Which installed version of the model runs. Default: its newest version; the job "
        "keeps the version it was created with.",
    ),
    ParamSpec("precision", "str", "Numeric precision of the run; the model lists what it offers."),
    ParamSpec(
        "ra",
        "float",
        "Right ascension (ICRS, whatever the image's frame: the service converts it to the "
        "image's frame, e.g. Galactic) of the centre of the region of interest; the centre "
        "must fall on the image's pixels.",
        minimum=0.0,
        maximum=360.0,
        unit="deg",
    ),
    ParamSpec(
        "dec",
        "float",
        "Declination (ICRS, whatever the image's frame) of the centre of the region of interest.",
        minimum=-90.0,
        maximum=90.0,
        unit="deg",
    ),
    ParamSpec(
        "width",
        "angle-or-pixels",
        "Width of the region of interest along the image's x axis: pixels, or an angle such as "
        "'3 arcmin'. Default: the whole image width. A region reaching past the image edge "
        "is clipped to it; the job's info, log and catalogue PARAMs say so.",
    ),
    ParamSpec(
        "height",
        "angle-or-pixels",
        "Height of the region of interest along the image's y axis: pixels, or an angle such "
        "as '3 arcmin'. Default: the whole image height; clipped at the image edge as WIDTH.",
    ),
    ParamSpec(
        "priority", "int", "Queue priority; higher runs first.", default=0, minimum=-10, maximum=10
    ),
    ParamSpec(
        "preview",
        "bool",
        "List the PNG preview result (the image with the sources overlaid). It costs the job "
        "nothing: the service draws it on its first request (25-90 ms) and keeps it.",
        default=True,
    ),
    ParamSpec(
        "nocache",
        "bool",
        "Run the job even if a completed job of the same owner already computed the same "
        "thing (same input bytes, model, version, precision and parameters); by default such "
        "a job is COMPLETED at once with that job's results.",
        default=False,
    ),
    ParamSpec(
        "notify",
        "str",
        "A URL the service POSTs a JSON note to when the job ends (phase, run id, address). "
        "Only hosts the operator allows (webhook_hosts) are called.",
    ),
)
NATIVE_BY_NAME = {p.name: p for p in NATIVE_PARAMETERS}


@dataclass
class ValidatedParameters:
    """Parameters that passed validation: normalised strings to store, typed values to run."""

    stored: dict[str, str] = field(default_factory=dict)
    values: dict[str, Any] = field(default_factory=dict)


def validate(
    raw: Mapping[str, str],
    files: Iterable[str],
    app_parameters: Iterable[ParamSpec],
    *,
    precisions: tuple[str, ...],
    model_id: str,
    image_required: bool = True,
) -> ValidatedParameters:
    """Check a whole parameter set (native plus the app's own) and fill the app's defaults.

    ``raw`` holds lower-case names to client strings; ``files`` the names of uploaded files.
    """
    check_texts(raw)
    app_specs = {p.name: p for p in app_parameters}
    out = ValidatedParameters()
    file_names = set(files)
    for name in file_names:
        if name != "image":
            raise ParameterError(name, "is not a file parameter; only IMAGE is uploaded")
    for name, text in raw.items():
        spec = NATIVE_BY_NAME.get(name) or app_specs.get(name)
        if spec is None:
            known = sorted({*NATIVE_BY_NAME, *app_specs})
            raise ParameterError(
                name, f"unknown parameter for model {model_id!r}; known: {', '.join(known)}"
            )
        if name == "precision":
            spec = ParamSpec("precision", "str", spec.description, allowed=precisions)
            if not precisions:
                raise ParameterError(name, f"model {model_id!r} offers no precision choice")
        value = spec.parse(text)
        out.values[name] = value
        out.stored[name] = str(value) if spec.type == "angle-or-pixels" else text.strip()
        if spec.type == "str":
            out.stored[name] = str(value)
    if image_required and "image" not in file_names:
        raise ParameterError(
            "image",
            "is required: upload the FITS image as a multipart file part, or name an image "
            "the server has: IMAGE=upload:<id> (POST /uploads) or IMAGE=dataset:<name>/<path> "
            "(GET /datasets)",
        )
    for spec in app_specs.values():
        if spec.name not in out.values and spec.default is not None:
            out.values[spec.name] = spec.default
    if precisions and "precision" not in out.values:
        out.values["precision"] = precisions[0]
    out.values.setdefault("priority", 0)
    roi_from(out.values)  # raises on an incomplete region
    return out


def roi_from(values: Mapping[str, Any]) -> Roi | None:
    """The region of interest of a parameter set, or None for the whole image."""
    has = {k for k in ("ra", "dec", "width", "height") if k in values}
    if not has:
        return None
    if not {"ra", "dec"} <= has:
        missing = "DEC" if "ra" in has else "RA"
        raise ParameterError(
            missing.lower(), "is required with the region of interest (give both RA and DEC)"
        )
    return Roi(values["ra"], values["dec"], values.get("width"), values.get("height"))
