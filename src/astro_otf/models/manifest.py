"""Model manifests: the data that makes a trained (or built) model servable without code.

"A model is data": each model version is a folder ``<model id>/<version>/`` holding a
``manifest.toml`` and the files it names. The manifest says everything the service needs to run
the model: its identity, the file per precision and that file's sha256, the input tile and
layout, the normalisation chain, the tiling, how to decode the output, postprocessing defaults,
its memory footprint (for the session cache and the batch former), and the job parameters it
takes (served to clients and checked at submission like any app's). Adding a model is adding
such a folder.

A manifest with ``kind = "command"`` in the same folders describes a command app instead (a
finder run as a program in its own environment: :mod:`astro_otf.models.command_app`);
:func:`load_manifests` leaves those to that module.

Loading a manifest checks its fields and that its files exist; the sha256 of a file is checked
when a session is created from it (:func:`read_verified`, used by the session cache), not at
every import, because hashing large weights on each start would be slow. Every error names the
manifest file and the field at fault.
"""

from __future__ import annotations

import hashlib
import re
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar, cast, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from astro_otf.domain.errors import ParameterError
from astro_otf.domain.parameters import NATIVE_BY_NAME, ParamSpec

_Schema = TypeVar("_Schema", bound=BaseModel)

__all__ = [
    "COMMAND_KIND",
    "MANIFEST_NAME",
    "PRECISIONS",
    "SHIPPED_MODELS",
    "FileEntry",
    "InputSpec",
    "LoadedModel",
    "ManifestError",
    "MeasureSpec",
    "ModelFileError",
    "ModelManifest",
    "OutputSpec",
    "ParameterEntry",
    "PostprocessSpec",
    "Precision",
    "TilingSpec",
    "load_manifest",
    "load_manifests",
    "read_verified",
    "sha256_of",
    "verify",
]

#: The models shipped with the package: ``zoo/<model id>/<version>/manifest.toml``.
SHIPPED_MODELS = Path(__file__).resolve().parent / "zoo"
MANIFEST_NAME = "manifest.toml"
Precision = Literal["fp32", "fp16", "int8"]
PRECISIONS: tuple[str, ...] = get_args(Precision)
TensorDType = Literal["float32", "float16", "uint8", "int8"]
_CHUNK = 1 << 20
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_MODEL_ID = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
_VERSION = re.compile(r"^[0-9A-Za-z][0-9A-Za-z._+-]*$")
_PARAM_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


class ManifestError(ValueError):
    """A manifest that cannot be used. The message names the file and each field at fault."""

    def __init__(self, path: Path, problems: Iterable[str]) -> None:
        self.path = path
        self.problems = list(problems)
        super().__init__(f"model manifest {path}: " + "; ".join(self.problems))


class ModelFileError(RuntimeError):
    """A model file is missing or is not the file its manifest describes (sha256 differs)."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FileEntry(_Strict):
    """One model file, relative to its manifest, and the sha256 it must have."""

    path: str = Field(min_length=1)
    sha256: str

    @field_validator("path")
    @classmethod
    def _relative(cls, v: str) -> str:
        if Path(v).is_absolute() or ".." in Path(v).parts:
            raise ValueError("must be a path inside the manifest's folder (no '..', not absolute)")
        return v

    @field_validator("sha256")
    @classmethod
    def _hex_digest(cls, v: str) -> str:
        digest = v.strip().lower()
        if not _SHA256.match(digest):
            raise ValueError("must be 64 hexadecimal digits (the file's sha256)")
        return digest


class InputSpec(_Strict):
    """The model's input tensor: its name, tile side (the largest it takes), channels, layout
    and dtypes."""

    name: str = Field(default="image", min_length=1)
    tile: int = Field(ge=8)
    channels: int = Field(ge=1)
    layout: Literal["NCHW"]
    #: Dtype the input tensor has in each precision's file.
    dtype: dict[Precision, TensorDType]
    #: Beam FWHM (pixels) the model was made for; the imaging step may resample to it.
    beam_fwhm_pix: float | None = Field(default=None, gt=0)
    #: Widest beam major axis (FWHM, pixels) the model was trained on. An image whose beam
    #: (BMAJ) is wider is block-averaged by the smallest integer factor that brings it within.
    max_beam_pix: float | None = Field(default=None, gt=0)
    #: Given when the graph takes any height and width that are multiples of this (its
    #: downsampling: 2^(levels - 1) for a network of stride-2 levels), up to ``tile``: tiles
    #: are then sized to the image (:func:`astro_otf.imaging.tiling.tile_grid`), so a small
    #: image is not padded to a full tile. None: the graph takes ``tile x tile`` only.
    size_multiple: int | None = Field(default=None, ge=1)


class TilingSpec(_Strict):
    """How an image is cut into tiles for this model."""

    tile: int = Field(ge=8)
    overlap: int = Field(ge=0)

    @model_validator(mode="after")
    def _overlap_fits(self) -> TilingSpec:
        if 2 * self.overlap >= self.tile:
            raise ValueError(f"overlap ({self.overlap}) must be less than half the tile")
        return self


class OutputSpec(_Strict):
    """How the decoder reads the outputs.

    ``kind="heatmap"``: ``score`` names an output of the input's layout whose channels mean
    ``channels``, at one value per ``stride`` input pixels; ``peak``, when given, names a 0/1
    local-maximum mask of the same shape. ``score_normalisation`` says whether the scores are
    already in S/N units (``none``) or the decoder must subtract the median of the job's score
    map and divide by its rms estimated as 1.4826 x MAD (``median_mad``).

    ``attributes``, when given, names an output of per-pixel source measurements read at the
    peaks, its channels named by ``attribute_channels`` (see the detector app for the names
    it decodes: sub-pixel offsets, fluxes, sizes and angle).
    """

    kind: Literal["heatmap"]
    layout: Literal["NCHW"]
    stride: int = Field(ge=1)
    score: str = Field(min_length=1)
    peak: str | None = Field(default=None, min_length=1)
    channels: list[str] = Field(min_length=1)
    score_normalisation: Literal["none", "median_mad"] = "none"
    attributes: str | None = Field(default=None, min_length=1)
    attribute_channels: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _attributes_named(self) -> OutputSpec:
        if (self.attributes is None) != (not self.attribute_channels):
            raise ValueError("attributes and attribute_channels are given together or not at all")
        return self


class PostprocessSpec(_Strict):
    """Defaults of the decoding step."""

    score_threshold: float
    nms_iou: float | None = Field(default=None, ge=0.0, le=1.0)
    #: Lowest peak S/N kept, for models whose attributes measure it (``log_peak_snr``).
    min_snr: float | None = Field(default=None, ge=0.0)


class MeasureSpec(_Strict):
    """How a detector's candidates become measured sources (``imaging/measure.py``): which
    candidates are one peak of the image (merged), and the Gaussian fit to the image pixels
    that gives positions, fluxes, sizes and their errors. Distances are in beam FWHM, dips
    and excesses in local rms. Without this table the network's own estimates are reported
    (radio-detector 1.0)."""

    method: Literal["gaussian"] = "gaussian"
    #: Half side of each source's fitting stamp.
    stamp_beams: float = Field(default=1.5, gt=0)
    #: Candidates farther apart than this are never merged.
    max_sep_beams: float = Field(default=2.0, ge=0)
    #: Within this, no saddle is enough to merge; beyond, the fainter must not stand out
    #: above the brighter's wing either.
    near_beams: float = Field(default=1.0, ge=0)
    dip_sigma: float = Field(default=2.0, ge=0)
    excess_sigma: float = Field(default=3.0, ge=0)
    #: Fits that end closer than this are one source.
    duplicate_beams: float = Field(default=0.5, ge=0)


class ParameterEntry(_Strict):
    """One job parameter the model takes, as written in the manifest."""

    name: str
    type: Literal["int", "float", "str", "bool"]
    description: str = Field(min_length=1)
    default: bool | int | float | str | None = None
    minimum: float | None = None
    maximum: float | None = None
    allowed: list[str] | None = None
    unit: str | None = None
    required: bool = False

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _PARAM_NAME.match(v):
            raise ValueError(
                f"{v!r} is not a parameter name: lower case letters, digits and '_', "
                "starting with a letter"
            )
        if v in NATIVE_BY_NAME:
            raise ValueError(f"{v!r} is a parameter every job takes; a model cannot redeclare it")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> ParameterEntry:
        numeric = self.type in ("int", "float")
        if not numeric and (self.minimum is not None or self.maximum is not None):
            raise ValueError(f"minimum and maximum apply to int and float, not {self.type}")
        if self.allowed is not None and self.type != "str":
            raise ValueError(f"allowed applies to str parameters, not {self.type}")
        if self.minimum is not None and self.maximum is not None and self.minimum > self.maximum:
            raise ValueError(f"minimum {self.minimum:g} is above maximum {self.maximum:g}")
        if self.default is not None:
            kinds = {"int": (int,), "float": (int, float), "str": (str,), "bool": (bool,)}
            wrong_bool = isinstance(self.default, bool) and self.type != "bool"
            if wrong_bool or not isinstance(self.default, kinds[self.type]):
                raise ValueError(f"default {self.default!r} is not of type {self.type}")
            text = str(self.default).lower() if self.type == "bool" else str(self.default)
            try:
                self.to_spec().parse(text)
            except ParameterError as exc:
                raise ValueError(f"default: {exc.message}") from None
        return self

    def to_spec(self) -> ParamSpec:
        """The service's parameter spec for this entry."""
        default = self.default
        if self.type == "float" and default is not None:
            default = float(default)
        return ParamSpec(
            self.name,
            self.type,
            self.description,
            default=default,
            minimum=self.minimum,
            maximum=self.maximum,
            allowed=tuple(self.allowed) if self.allowed is not None else None,
            unit=self.unit,
            required=self.required,
        )


class ModelManifest(_Strict):
    """One model version, as declared in its ``manifest.toml``."""

    #: What the manifest describes: an ONNX model here; ``kind = "command"`` manifests are
    #: command apps (:mod:`astro_otf.models.command_app`), which :func:`load_manifests` skips.
    kind: Literal["onnx"] = "onnx"
    id: str
    version: str
    description: str = Field(min_length=1)
    framework: Literal["onnx"]
    #: Precisions offered; the first is the default.
    precisions: list[Precision] = Field(min_length=1)
    files: dict[Precision, FileEntry]
    input: InputSpec
    #: Normalisation steps, in order, each a table with an ``op`` (interpreted by imaging).
    normalisation: list[dict[str, Any]] = Field(default_factory=list)
    tiling: TilingSpec
    output: OutputSpec
    postprocess: PostprocessSpec
    measure: MeasureSpec | None = None
    #: Resident size of one loaded session, in MB (the session cache's budget counts this).
    memory_mb: float = Field(gt=0)
    #: Working memory of one tile in a forward pass, in MB (for the batch former's budget).
    tile_memory_mb: float | None = Field(default=None, gt=0)
    parameters: list[ParameterEntry] = Field(default_factory=list)
    #: Free-form facts about how the files were made (builder, training run, ...).
    provenance: dict[str, str | int | float | bool] = Field(default_factory=dict)

    @field_validator("id")
    @classmethod
    def _id(cls, v: str) -> str:
        if not _MODEL_ID.match(v):
            raise ValueError(
                f"{v!r} is not a model id: lower case letters, digits, '.', '_' and '-'"
            )
        return v

    @field_validator("version")
    @classmethod
    def _version(cls, v: str) -> str:
        if not _VERSION.match(v):
            raise ValueError(f"{v!r} is not a version: letters, digits, '.', '_', '+' and '-'")
        return v

    @field_validator("precisions")
    @classmethod
    def _unique(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError("lists a precision twice")
        return v

    @field_validator("normalisation")
    @classmethod
    def _steps(cls, v: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for i, step in enumerate(v):
            op = step.get("op")
            if not isinstance(op, str) or not op.strip():
                raise ValueError(f"step {i} has no 'op' name (e.g. op = \"clip\")")
        return v

    @field_validator("parameters")
    @classmethod
    def _unique_names(cls, v: list[ParameterEntry]) -> list[ParameterEntry]:
        names = [p.name for p in v]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"declares {', '.join(twice)} more than once")
        return v

    @model_validator(mode="after")
    def _cross_checks(self) -> ModelManifest:
        problems = []
        for precision in self.precisions:
            if precision not in self.files:
                problems.append(f"files.{precision} is missing ({precision} is offered)")
            if precision not in self.input.dtype:
                problems.append(f"input.dtype.{precision} is missing ({precision} is offered)")
        problems += [
            f"files.{p} is given but {p} is not in precisions"
            for p in self.files
            if p not in self.precisions
        ]
        if self.tiling.tile != self.input.tile:
            problems.append(
                f"tiling.tile ({self.tiling.tile}) differs from input.tile ({self.input.tile})"
            )
        multiple = self.input.size_multiple
        if multiple is not None and self.input.tile % multiple:
            problems.append(
                f"input.tile ({self.input.tile}) must be a multiple of input.size_multiple "
                f"({multiple})"
            )
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def default_precision(self) -> str:
        """The precision a job gets when it names none (the first one listed)."""
        return self.precisions[0]

    def parameter_specs(self) -> tuple[ParamSpec, ...]:
        """The model's own job parameters, as the service declares and checks them."""
        return tuple(p.to_spec() for p in self.parameters)


@dataclass(frozen=True)
class LoadedModel:
    """A validated manifest and where its files are on disk."""

    manifest: ModelManifest
    #: The ``manifest.toml`` it was read from.
    path: Path
    #: Each precision's file, resolved relative to the manifest.
    files: dict[str, Path]

    @property
    def model_id(self) -> str:
        """The model's id, as its manifest declares it."""
        return self.manifest.id

    @property
    def version(self) -> str:
        """The model's version, as its manifest declares it."""
        return self.manifest.version

    def precision(self, precision: str | None) -> str:
        """``precision`` if offered, the default when None; else a ValueError naming the offer."""
        if precision is None:
            return self.manifest.default_precision
        if precision not in self.manifest.precisions:
            raise ValueError(
                f"model {self.model_id} {self.version} offers precisions "
                f"{', '.join(self.manifest.precisions)}, not {precision!r}"
            )
        return precision

    def file(self, precision: str | None = None) -> Path:
        """The model file of ``precision`` (the default when None), not checked."""
        return self.files[self.precision(precision)]

    def sha256(self, precision: str | None = None) -> str:
        """The sha256 the manifest declares for the file of ``precision``."""
        return self.manifest.files[cast(Precision, self.precision(precision))].sha256

    def verify(self, precision: str | None = None) -> Path:
        """Check the precision's file against its sha256; returns its path."""
        path = self.file(precision)
        verify(path, self.sha256(precision))
        return path


def _where(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part == "[key]":
            out += " (key)"
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


def _problems(exc: ValidationError) -> list[str]:
    out = []
    for err in exc.errors(include_url=False):
        message = err["msg"].removeprefix("Value error, ")
        given = err.get("input")
        if err["type"] != "value_error" and isinstance(given, str | int | float):
            message += f" (got {given!r})"
        out.append(f"{_where(err['loc'])}: {message}")
    return out


def parse_manifest(path: Path, schema: type[_Schema]) -> _Schema:
    """``path`` read as TOML and checked against ``schema`` (an ONNX or a command app's
    manifest); a ManifestError naming the file and each field at fault."""
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ManifestError(path, ["file does not exist"]) from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ManifestError(path, [f"not valid TOML: {exc}"]) from None
    try:
        return schema.model_validate(raw)
    except ValidationError as exc:
        raise ManifestError(path, _problems(exc)) from None


def load_manifest(path: Path) -> LoadedModel:
    """Read and check one ``manifest.toml``; its files must exist beside it."""
    manifest = parse_manifest(path, ModelManifest)
    folder = path.parent.resolve()
    files: dict[str, Path] = {}
    problems = []
    for precision, entry in manifest.files.items():
        file = (folder / entry.path).resolve()
        if not file.is_relative_to(folder):
            problems.append(f"files.{precision}.path: {entry.path!r} leaves the manifest's folder")
        elif not file.is_file():
            problems.append(f"files.{precision}.path: {file} does not exist")
        files[precision] = file
    if problems:
        raise ManifestError(path, problems)
    return LoadedModel(manifest=manifest, path=path, files=files)


def load_manifests(root: Path) -> list[LoadedModel]:
    """Every model version under ``root`` (``<model id>/<version>/manifest.toml``), sorted.

    The folder names must be the manifest's ``id`` and ``version``, so one model version has
    one place. Any bad manifest raises :class:`ManifestError`: a model never silently vanishes.
    """
    if not root.is_dir():
        raise FileNotFoundError(f"model folder {root} does not exist")
    models = []
    for path in sorted(root.glob(f"*/*/{MANIFEST_NAME}")):
        if declared_kind(path) == COMMAND_KIND:  # a command app: its own loader reads it
            continue
        model = load_manifest(path)
        check_place(path, model.model_id, model.version)
        models.append(model)
    return models


#: The ``kind`` of a command app's manifest (see :mod:`astro_otf.models.command_app`).
COMMAND_KIND = "command"


def check_place(path: Path, model_id: str, version: str) -> None:
    """A ManifestError unless the manifest at ``path`` lies in ``<model_id>/<version>/``, so
    that one model version has one place."""
    where = (path.parent.parent.name, path.parent.name)
    if where != (model_id, version):
        raise ManifestError(
            path,
            [
                f"id/version: the manifest declares {model_id}/{version} but lies in "
                f"{where[0]}/{where[1]}; the folders must be <id>/<version>"
            ],
        )


def declared_kind(path: Path) -> str | None:
    """The ``kind`` a manifest declares (None when it says none or cannot be read: then
    :func:`load_manifest` reports what is wrong with it)."""
    try:
        kind = tomllib.loads(path.read_text(encoding="utf-8")).get("kind")
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError):
        return None
    return kind if isinstance(kind, str) else None


def sha256_of(path: Path) -> str:
    """The file's sha256, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _check(path: Path, actual: str, expected: str) -> None:
    if actual != expected.lower():
        raise ModelFileError(
            f"model file {path}: sha256 is {actual} but its manifest says {expected}; the file "
            "is damaged or was replaced. Restore it (or rebuild it and update the manifest)."
        )


def verify(path: Path, sha256: str) -> None:
    """Raise :class:`ModelFileError` unless ``path`` exists and has this sha256."""
    if not path.is_file():
        raise ModelFileError(f"model file {path} does not exist")
    _check(path, sha256_of(path), sha256)


def read_verified(path: Path, sha256: str) -> bytes:
    """The file's bytes once they match ``sha256``: what is checked is what gets loaded."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ModelFileError(f"model file {path} does not exist") from None
    _check(path, hashlib.sha256(data).hexdigest(), sha256)
    return data
