"""Command apps: finders that run as a program in a Python environment of their own.

PyBDSF and Aegean are the finders radio astronomers trust most, but they do not fit the
service's environment (AegeanTools 2.3.5 breaks on numpy >= 2.4; PyBDSF is heavy). A command
app is data, like an ONNX model: a ``manifest.toml`` with ``kind = "command"`` in a model
folder (``<id>/<version>/``) declares the command line, the virtual environment it runs in
(a folder under ``apps_dir``, built by ``make apps`` from the requirements file beside the
manifest), its job parameters, and how the columns of the table it writes become the
service's standard catalogue columns. An operator adds a finder by writing such a folder.

The service hands the command a clean 2-D FITS image it writes itself (one plane, BLANK as
NaN, BMAJ/BMIN/BPA present, the region of interest with a margin), runs it in the job's
staging folder with its output in the job log, reads its table back, converts units with
astropy, turns positions into pixels of the uploaded image (pixel columns as given, sky
columns through the image's WCS in the image's own frame) and then into ICRS with the code
every finder uses. The child dies with its worker (``PR_SET_PDEATHSIG``), so ABORT, the
execution-duration limit and a dead server stop the finder too.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import ctypes.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import astropy.units as u
import numpy as np
from astropy.io import fits
from astropy.table import Column, Table
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from astro_otf.domain.errors import JobFailure
from astro_otf.domain.parameters import ParamSpec
from astro_otf.imaging.facts import image_facts
from astro_otf.imaging.fits import Region, SkyImage, cut, load_image, region_of
from astro_otf.imaging.stitch import position_angles
from astro_otf.models.base import AppOutput, AppRequest, ResultFile
from astro_otf.models.manifest import (
    COMMAND_KIND,
    MANIFEST_NAME,
    ManifestError,
    ParameterEntry,
    check_place,
    declared_kind,
    parse_manifest,
)
from astro_otf.results.catalogue import CATALOGUE_COLUMNS, Catalogue, conform
from astro_otf.results.entities import FileEntity, file_entity

__all__ = [
    "SHIPPED_APPS",
    "CommandApp",
    "CommandManifest",
    "LoadedCommand",
    "load_command_manifest",
    "load_command_manifests",
]

#: The command apps shipped with the package: ``apps/<id>/<version>/manifest.toml``.
SHIPPED_APPS = Path(__file__).resolve().parent / "apps"
#: The name of the clean image the command gets, in its work folder.
INPUT_NAME = "input.fits"
#: Last lines of the command's output quoted when it fails.
TAIL_LINES = 12
#: Seconds between looks at whether the run was cancelled (a Dask task) while the child runs.
POLL_S = 0.5
#: Margin around a region of interest, in beams (major axis), at least MIN_MARGIN_PIX pixels.
MARGIN_BEAMS = 10
MIN_MARGIN_PIX = 16
_PR_SET_PDEATHSIG = 1
_PLACEHOLDER = re.compile(r"\{([a-z_][a-z0-9_]*)\}")
_BUILTIN = ("python", "env", "image", "workdir", "app_dir")
#: Units that mean "the image's own brightness unit" (peak) or that unit times a beam (int).
IMAGE_UNIT = "image"
IMAGE_BEAM_UNIT = "image*beam"
_STANDARD = {spec.name: spec for spec in CATALOGUE_COLUMNS}
#: Standard columns a manifest may map, and the unit each is converted to.
_TARGET_UNITS = {
    "ra": "deg",
    "dec": "deg",
    "ra_err": "arcsec",
    "dec_err": "arcsec",
    "maj": "arcsec",
    "min": "arcsec",
    "pa": "deg",
    "x": "pix",
    "y": "pix",
    "score": "",
    "class": "",
    "peak_flux": IMAGE_UNIT,
    "peak_flux_err": IMAGE_UNIT,
    "int_flux": IMAGE_BEAM_UNIT,
    "int_flux_err": IMAGE_BEAM_UNIT,
    "local_rms": IMAGE_UNIT,
}
_JY_PER_BEAM = u.Jy / u.beam


# --------------------------------------------------------------------------- the manifest


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class ColumnMap(_Strict):
    """One standard column taken from a column of the command's output table (``from``:
    its name, or a list of names of which the first present is used: Aegean writes ``ra``
    on an equatorial image and ``lon`` on a Galactic one)."""

    source: str | list[str] = Field(alias="from", min_length=1)

    def column(self, table: Table) -> str | None:
        """The name of this column in ``table`` (None when none of its names is there)."""
        names = [self.source] if isinstance(self.source, str) else self.source
        return next((n for n in names if n in table.colnames), None)

    #: The unit of the output column: an astropy unit ("deg", "arcsec", "Jy/beam"), or
    #: "image" (the image's brightness unit, for peak fluxes and rms) or "image*beam" (that
    #: unit times a beam: integrated fluxes of a Jy/beam image in Jy).
    unit: str = ""
    #: Values that mean "not measured" (Aegean writes -1 for an error it could not fit).
    null_values: list[float] = Field(default_factory=list)
    #: For x/y: 0 when the finder's pixels are 0-based, 1 for FITS (1-based) pixels.
    origin: Literal[0, 1] = 0
    #: For pa: "north" (east of north in the image's own frame, as PyBDSF and Aegean give
    #: it: Galactic north on a GLON/GLAT image) or "x_axis" (pixel angle from +x to +y).
    reference: Literal["north", "x_axis"] = "north"


class ExtraColumn(_Strict):
    """A column of the finder's own, written after the standard ones."""

    source: str = Field(alias="from", min_length=1)
    #: The unit of the output column...
    unit: str = ""
    #: ... and the unit written (converted with astropy); the same when not given.
    to: str | None = None
    ucd: str = Field(min_length=1)
    description: str = Field(min_length=1)
    null_values: list[float] = Field(default_factory=list)

    @model_validator(mode="after")
    def _convertible(self) -> ExtraColumn:
        try:
            given = u.Unit(self.unit)
            wanted = u.Unit(self.to) if self.to is not None else given
        except ValueError as exc:
            raise ValueError(f"not a unit astropy reads: {exc}") from None
        if not given.is_equivalent(wanted):
            raise ValueError(f"unit {self.unit!r} cannot be converted to {self.to!r}")
        return self


class OutputFile(_Strict):
    """The table the command writes, relative to its work folder."""

    path: str = Field(min_length=1)
    format: Literal["fits", "csv", "votable", "ascii"] = "fits"
    #: With no source found, some finders write no table: then the catalogue is empty.
    missing_means_empty: bool = True

    @field_validator("path")
    @classmethod
    def _inside(cls, v: str) -> str:
        if Path(v).is_absolute() or ".." in Path(v).parts:
            raise ValueError("must be a path inside the work folder (no '..', not absolute)")
        return v


class CommandManifest(_Strict):
    """One command app version, as declared in its ``manifest.toml``."""

    kind: Literal["command"]
    id: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]*$")
    version: str = Field(pattern=r"^[0-9A-Za-z][0-9A-Za-z._+-]*$")
    description: str = Field(min_length=1)
    #: A folder name under ``apps_dir`` (``make apps`` builds it), or an absolute path.
    environment: str = Field(min_length=1)
    #: The pinned requirements the environment is built from, beside the manifest.
    requirements: str | None = None
    #: The package whose version is the finder's version (shown in the provenance).
    package: str | None = None
    #: The argv; a nested list is a group dropped when a parameter in it is unset/false.
    command: list[str | list[str]] = Field(min_length=1)
    output: OutputFile
    #: The command needs BMAJ/BMIN in the image header (PyBDSF and Aegean do).
    needs_beam: bool = True
    parameters: list[ParameterEntry] = Field(default_factory=list)
    columns: dict[str, ColumnMap]
    extra_columns: dict[str, ExtraColumn] = Field(default_factory=dict)
    #: What each standard column means for this finder (the catalogue's descriptions).
    descriptions: dict[str, str] = Field(default_factory=dict)
    provenance: dict[str, str | int | float | bool] = Field(default_factory=dict)

    @field_validator("command")
    @classmethod
    def _argv(cls, v: list[str | list[str]]) -> list[str | list[str]]:
        if not isinstance(v[0], str) or not v[0].strip():
            raise ValueError('the first element is the program (e.g. "{python}"), not a group')
        return v

    @field_validator("parameters")
    @classmethod
    def _unique(cls, v: list[ParameterEntry]) -> list[ParameterEntry]:
        names = [p.name for p in v]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"declares {', '.join(twice)} more than once")
        clash = sorted(set(names) & set(_BUILTIN))
        if clash:
            raise ValueError(f"{', '.join(clash)} is a placeholder the service fills")
        return v

    @field_validator("columns")
    @classmethod
    def _standard(cls, v: dict[str, ColumnMap]) -> dict[str, ColumnMap]:
        problems = [
            f"{name!r} is not a standard column a finder can give "
            f"(one of {', '.join(_TARGET_UNITS)})"
            for name in v
            if name not in _TARGET_UNITS
        ]
        for name, entry in v.items():
            if name in _TARGET_UNITS:
                unit_problem = _unit_problem(name, entry.unit)
                if unit_problem:
                    problems.append(f"{name}.unit: {unit_problem}")
        if problems:
            raise ValueError("; ".join(problems))
        has_pixels = "x" in v and "y" in v
        has_sky = "ra" in v and "dec" in v
        if not (has_pixels or has_sky):
            raise ValueError("must map the positions: x and y (pixels), or ra and dec (sky)")
        return v

    @field_validator("extra_columns")
    @classmethod
    def _extra(cls, v: dict[str, ExtraColumn]) -> dict[str, ExtraColumn]:
        problems = []
        for name in v:
            if name in _STANDARD or name in _TARGET_UNITS:
                problems.append(f"{name!r} is a standard column: map it under [columns]")
            elif not re.match(r"^[a-z][a-z0-9_]*$", name):
                problems.append(f"{name!r}: lower case letters, digits and '_'")
        if problems:
            raise ValueError("; ".join(problems))
        return v

    @model_validator(mode="after")
    def _placeholders(self) -> CommandManifest:
        known = set(_BUILTIN) | {p.name for p in self.parameters}
        used: set[str] = set()
        for element in self.command:
            for text in [element] if isinstance(element, str) else element:
                used |= set(_PLACEHOLDER.findall(text))
        unknown = sorted(used - known)
        if unknown:
            raise ValueError(
                f"command uses {', '.join('{' + n + '}' for n in unknown)}, which is neither "
                f"a parameter nor one of {', '.join('{' + n + '}' for n in _BUILTIN)}"
            )
        if "{image}" not in json.dumps(self.command):
            raise ValueError("command never names {image}, the image it must search")
        return self

    def parameter_specs(self) -> tuple[ParamSpec, ...]:
        """The command's own job parameters, as the service declares and checks them."""
        return tuple(p.to_spec() for p in self.parameters)


def _unit_problem(name: str, unit: str) -> str:
    """Why ``unit`` cannot be converted to column ``name``'s unit ('' when it can)."""
    target = _TARGET_UNITS[name]
    if target in (IMAGE_UNIT, IMAGE_BEAM_UNIT):
        if unit in (IMAGE_UNIT, IMAGE_BEAM_UNIT):
            return "" if unit == target else f"use {target!r}"
        try:
            given = u.Unit(unit)
        except ValueError:
            return f"{unit!r} is not a unit astropy reads, nor {target!r}"
        wanted = _JY_PER_BEAM if target == IMAGE_UNIT else u.Jy
        return "" if given.is_equivalent(wanted) else f"{unit!r} is not convertible to {wanted}"
    if name == "class":
        return ""
    try:
        given = u.Unit(unit) if unit else u.dimensionless_unscaled
    except ValueError:
        return f"{unit!r} is not a unit astropy reads"
    if not given.is_equivalent(u.Unit(target) if target else u.dimensionless_unscaled):
        return f"{unit or 'no unit'} is not convertible to {target or 'a number'}"
    return ""


@dataclass(frozen=True)
class LoadedCommand:
    """A validated command manifest and where it lies."""

    manifest: CommandManifest
    path: Path

    @property
    def folder(self) -> Path:
        """The app's version folder (``<id>/<version>/``), which the manifest's paths are
        relative to."""
        return self.path.parent

    @property
    def requirements(self) -> Path | None:
        """The requirements file ``make apps`` builds the environment from, if declared."""
        name = self.manifest.requirements
        return None if name is None else self.folder / name


def load_command_manifest(path: Path) -> LoadedCommand:
    """Read and check one command ``manifest.toml``; every error names the file and field."""
    manifest = parse_manifest(path, CommandManifest)
    loaded = LoadedCommand(manifest, path)
    requirements = loaded.requirements
    if requirements is not None:
        if (
            Path(manifest.requirements or "").is_absolute()
            or ".." in Path(manifest.requirements or "").parts
        ):
            raise ManifestError(path, ["requirements: must name a file beside the manifest"])
        if not requirements.is_file():
            raise ManifestError(path, [f"requirements: {requirements} does not exist"])
    return loaded


def load_command_manifests(root: Path) -> list[LoadedCommand]:
    """Every command app under ``root`` (``<id>/<version>/manifest.toml`` with ``kind =
    "command"``), sorted; the folders must be the manifest's id and version."""
    if not root.is_dir():
        raise FileNotFoundError(f"model folder {root} does not exist")
    found = []
    for path in sorted(root.glob(f"*/*/{MANIFEST_NAME}")):
        if declared_kind(path) != COMMAND_KIND:
            continue  # an ONNX model's (its loader reports an unreadable one)
        loaded = load_command_manifest(path)
        check_place(path, loaded.manifest.id, loaded.manifest.version)
        found.append(loaded)
    return found


# --------------------------------------------------------------------------- environments


@dataclass(frozen=True)
class EnvironmentFacts:
    """What an app environment holds: its python version and every package's version."""

    python: str
    packages: dict[str, str]


_ENV_FACTS: dict[tuple[str, int], EnvironmentFacts] = {}
_FACTS_SCRIPT = (
    "import importlib.metadata as m, json, platform; "
    "print(json.dumps({'python': platform.python_version(), 'packages': "
    "{d.metadata['Name']: d.version for d in m.distributions() if d.metadata['Name']}}))"
)


def _env_stamp(env: Path) -> int:
    """Changes whenever packages are installed or removed in ``env``."""
    stamps = [env.stat().st_mtime_ns]
    for site in env.glob("lib/python*/site-packages"):
        stamps.append(site.stat().st_mtime_ns)
    return max(stamps)


def environment_facts(env: Path, python: Path) -> EnvironmentFacts:
    """The environment's package versions, asked of its own python once per change of the
    environment (cached by its mtime)."""
    key = (str(env), _env_stamp(env))
    facts = _ENV_FACTS.get(key)
    if facts is None:
        done = subprocess.run(
            [str(python), "-c", _FACTS_SCRIPT],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if done.returncode != 0:
            raise JobFailure(
                f"the app environment {env} is broken: its python cannot list its packages "
                f"({done.stderr.strip().splitlines()[-1:] or 'no message'}); an operator "
                "rebuilds it with `make apps`"
            )
        data = json.loads(done.stdout)
        facts = EnvironmentFacts(
            str(data["python"]), {str(k).lower(): str(v) for k, v in data["packages"].items()}
        )
        _ENV_FACTS[key] = facts
    return facts


# --------------------------------------------------------------------------- the app


class CommandApp:
    """The App for a command manifest: a finder run as a child process."""

    precisions: tuple[str, ...] = ()
    needs_image = True
    kind = "command"

    def __init__(self, loaded: LoadedCommand, apps_dir: Path | str = ".apps") -> None:
        self.loaded = loaded
        manifest = loaded.manifest
        self.model_id = manifest.id
        self.version = manifest.version
        self.description = manifest.description
        self.parameters: tuple[ParamSpec, ...] = manifest.parameter_specs()
        env = Path(manifest.environment)
        self.env = env if env.is_absolute() else Path(apps_dir).resolve() / env
        self.python = self.env / "bin" / "python"

    # -- availability ------------------------------------------------------------------

    @property
    def program(self) -> Path:
        """The program the command starts (its first element with the placeholders filled)."""
        first = self.loaded.manifest.command[0]
        assert isinstance(first, str)
        text = first.replace("{python}", str(self.python)).replace("{env}", str(self.env))
        return Path(text.replace("{app_dir}", str(self.loaded.folder)))

    def unavailable(self) -> str | None:
        """Why this app cannot run now (its environment or program is missing), or None.
        Two stats: cheap enough for every listing and every job."""
        where = self._shown(self.env)
        if not self.env.is_dir():
            return (
                f"its environment {where} is missing: an operator runs `make apps`"
                + self._how_to_build()
            )
        program = self.program
        if not (program.is_file() and os.access(program, os.X_OK)):
            return (
                f"its environment {where} has no program {self._shown(program)}: an operator "
                "rebuilds it with `make apps`" + self._how_to_build()
            )
        return None

    def _how_to_build(self) -> str:
        requirements = self.loaded.requirements
        if requirements is None or self.loaded.folder.is_relative_to(SHIPPED_APPS):
            return ""
        return f" (or builds that virtual environment from {requirements})"

    @staticmethod
    def _shown(path: Path) -> str:
        with contextlib.suppress(ValueError):
            return str(path.relative_to(Path.cwd()))
        return str(path)

    # -- running -----------------------------------------------------------------------

    def run(self, request: AppRequest) -> AppOutput:
        """Hand the command a clean image of the job's region, run it in its environment and
        read its table back as the standard catalogue."""
        log = request.log
        manifest = self.loaded.manifest
        reason = self.unavailable()
        if reason is not None:
            raise JobFailure(f"model {self.model_id} cannot run on this server: {reason}")
        if request.image_path is None:
            raise JobFailure("no image was given: upload the FITS image as the IMAGE file part")
        started = time.perf_counter()
        request.progress("reading")
        image = load_image(request.image_path)
        full_shape = image.shape
        region: Region | None = None
        searched = image
        region_image = image
        if request.roi is not None:
            region = region_of(image, request.roi)
            region_image = cut(image, region.box)
            if region.clipped:
                log.warning("%s", region.describe_clipping())
            beam_pix = image.beam_major_pix or 3.0
            margin = max(MIN_MARGIN_PIX, round(MARGIN_BEAMS * beam_pix))
            searched = cut(image, region.padded(margin, image.shape))
            log.info(
                "region of interest: %d x %d pixels from pixel x=%d, y=%d; the finder searches "
                "%d x %d pixels from pixel x=%d, y=%d (a margin of %d pixels)",
                region.width,
                region.height,
                *region.box[:2],
                searched.shape[1],
                searched.shape[0],
                *searched.origin,
                margin,
            )
        workdir = request.staging_dir / "work"
        workdir.mkdir(parents=True, exist_ok=True)
        image_file = workdir / INPUT_NAME
        self._write_input(searched, image_file, log)
        facts = environment_facts(self.env, self.python)
        argv = self.argv(request.values, image_file, workdir)
        request.progress("inference")
        log.info("running %s", " ".join(_quote(a) for a in argv))
        self._execute(argv, workdir, log)
        request.progress("fitting")
        output = workdir / manifest.output.path
        raw = self._read_output(output, log)
        table = self._catalogue(raw, searched, region)
        rms = _rms(region_image.data)
        flux = _flux_units(region_image)
        elapsed = time.perf_counter() - started
        log.info("%s found %d source(s) in %.2f s", self.model_id, len(table), elapsed)
        finder_version = facts.packages.get((manifest.package or "").lower(), "")
        requirement_names = _requirement_names(self.loaded.requirements)
        env_versions = {
            name: facts.packages[name] for name in requirement_names if name in facts.packages
        }
        command_line = " ".join(_quote(a) for a in argv)
        infos = {
            "app_command": command_line,
            "app_environment": str(self.env),
            "app_python": facts.python,
            "app_packages": ", ".join(f"{k} {v}" for k, v in sorted(env_versions.items())),
            **(
                {"finder_version": f"{manifest.package} {finder_version}"}
                if manifest.package
                else {}
            ),
            "image_hdu": str(image.hdu_index),
            **({"flux_note": flux.note} if flux.note else {}),
        }
        results = self._keep_log(workdir, request.staging_dir)
        return AppOutput(
            results=results,
            catalogue=Catalogue(
                table,
                facts=image_facts(
                    region_image,
                    full_shape=full_shape,
                    rms=None if rms is None else rms * flux.factor,
                    rms_unit=flux.peak_unit,
                    region=region,
                ),
                infos=infos,
                description=(
                    f"Sources found by {self.model_id} {self.version}"
                    + (f" ({manifest.package} {finder_version})" if finder_version else "")
                    + f" in job {request.job_id}."
                ),
                model_files=self._model_files(facts, command_line),
            ),
            image=region_image,
            info={
                "n_sources": len(table),
                "finder_seconds": round(elapsed, 3),
                "app_command": command_line,
                "app_packages": env_versions,
                **(
                    {"rms": rms * flux.factor, "rms_unit": flux.peak_unit}
                    if rms is not None
                    else {}
                ),
                **(region.info() if region is not None else {}),
            },
        )

    def argv(self, values: Mapping[str, Any], image: Path, workdir: Path) -> list[str]:
        """The command line for these parameter values (see ``CommandManifest.command``)."""
        fixed = {
            "python": str(self.python),
            "env": str(self.env),
            "image": str(image),
            "workdir": str(workdir),
            "app_dir": str(self.loaded.folder),
        }
        out: list[str] = []
        for element in self.loaded.manifest.command:
            group = [element] if isinstance(element, str) else list(element)
            is_group = not isinstance(element, str)
            rendered: list[str] = []
            dropped = False
            for text in group:
                for name in _PLACEHOLDER.findall(text):
                    if name in fixed:
                        continue
                    value = values.get(name)
                    if value is None or (is_group and value is False):
                        dropped = True
                if dropped:
                    break
                piece = _fill(text, fixed, values, in_group=is_group)
                if piece or not is_group:
                    rendered.append(piece)
            if not dropped:
                out.extend(rendered)
        return out

    def _write_input(self, image: SkyImage, path: Path, log: Any) -> None:
        """The clean 2-D FITS the command searches: float32 pixels, NaN where blank, the
        celestial WCS of these pixels, BUNIT, the beam (BPA 0 when the header has none) and
        the frequency when the header gives one."""
        header = image.wcs.to_header()
        source = image.header
        beam = image.beam
        if beam is None and self.loaded.manifest.needs_beam:
            raise JobFailure(
                f"the image header has no beam (BMAJ and BMIN): {self.model_id} needs the "
                "restoring beam to fit sources. Add BMAJ, BMIN (degrees) and BPA to the header"
            )
        if beam is not None:
            header["BMAJ"] = (beam.major_deg, "[deg] beam major axis FWHM")
            header["BMIN"] = (beam.minor_deg, "[deg] beam minor axis FWHM")
            header["BPA"] = (beam.pa_deg, "[deg] beam position angle")
            if "BPA" not in source:
                log.info("the header has no BPA: the finder is given BPA = 0")
        if source.get("BUNIT"):
            header["BUNIT"] = str(source["BUNIT"])
        frequency = _frequency(source)
        if frequency is not None:
            header["RESTFRQ"] = (frequency, "[Hz] frequency of the image")
        header["ORIGIN"] = "astro-otf"
        data = np.asarray(image.data, dtype=np.float32)
        if not np.isfinite(data).any():
            raise JobFailure("every pixel of the searched image is blank (NaN or BLANK)")
        fits.PrimaryHDU(data=data, header=header).writeto(path, overwrite=True)

    def _execute(self, argv: list[str], workdir: Path, log: Any) -> None:
        """Run the command in ``workdir``; its output lines go to the job log. A non-zero
        exit is a JobFailure quoting its last lines."""
        tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("OTF_", "PYTHON"))}
        env.update(
            VIRTUAL_ENV=str(self.env),
            PATH=f"{self.env / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
            MPLBACKEND="Agg",
            OMP_NUM_THREADS="1",
            OPENBLAS_NUM_THREADS="1",
            MKL_NUM_THREADS="1",
        )
        try:
            child = subprocess.Popen(
                argv,
                cwd=workdir,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                env=env,
                preexec_fn=_DIE_WITH_PARENT,
                start_new_session=True,
            )
        except OSError as exc:
            raise JobFailure(
                f"model {self.model_id}: its command {argv[0]} could not be started "
                f"({exc.strerror}); an operator rebuilds its environment with `make apps`"
            ) from None
        log.info("%s runs as pid %d", self.model_id, child.pid)
        pid_file = workdir / "child.pid"
        pid_file.write_text(f"{child.pid}\n")

        def pump() -> None:
            assert child.stdout is not None
            for raw in child.stdout:
                line = _ANSI.sub("", raw.decode("utf-8", "replace")).rstrip()
                if line:
                    tail.append(line)
                    log.info("[%s] %s", self.model_id, line)

        reader = threading.Thread(target=pump, name=f"otf-{self.model_id}-output", daemon=True)
        reader.start()
        cancelled = _dask_cancellation()
        try:
            while True:
                try:
                    code = child.wait(timeout=POLL_S)
                    break
                except subprocess.TimeoutExpired:
                    if cancelled is not None and cancelled():
                        log.warning("the job was cancelled: stopping %s", self.model_id)
                        _kill(child)
                        raise JobFailure(
                            f"{self.model_id} was stopped: the job was cancelled"
                        ) from None
        except BaseException:
            _kill(child)
            raise
        finally:
            reader.join(timeout=5)
        if code != 0:
            quoted = "\n".join(tail) or "(no output)"
            why = f"was killed by signal {-code}" if code < 0 else f"exited with status {code}"
            raise JobFailure(
                f"{self.model_id} {why}. Its last lines:\n{quoted}\nThe job log has its whole "
                "output. Check that the image is a sensible radio image; if the finder itself "
                "crashed, try other parameters or report the job to the service operators."
            )

    def _read_output(self, path: Path, log: Any) -> Table:
        spec = self.loaded.manifest.output
        if not path.is_file():
            if spec.missing_means_empty:
                log.info("%s wrote no table (%s): no source found", self.model_id, path.name)
                return Table()
            raise JobFailure(
                f"{self.model_id} ended without writing its table {spec.path}; the job log "
                "has its output"
            )
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return Table.read(
                    path,
                    format={"fits": "fits", "votable": "votable"}.get(
                        spec.format, "ascii.csv" if spec.format == "csv" else "ascii"
                    ),
                )
        except Exception as exc:
            raise JobFailure(
                f"the table {spec.path} that {self.model_id} wrote cannot be read as "
                f"{spec.format}: {exc}"
            ) from None

    def _catalogue(self, raw: Table, image: SkyImage, region: Region | None) -> Table:
        """The standard catalogue of ``raw`` (the finder's table), for ``image`` (the
        pixels it searched), keeping only the sources inside ``region``."""
        manifest = self.loaded.manifest
        columns = manifest.columns
        n = len(raw)
        if n and (missing := [str(c.source) for c in columns.values() if c.column(raw) is None]):
            raise JobFailure(
                f"the table {self.model_id} wrote lacks the column(s) {', '.join(missing)} "
                f"its manifest maps ({self.loaded.path}); it has {', '.join(raw.colnames)}"
            )
        flux = _flux_units(image)
        flux_unit, int_unit, flux_factor = flux.peak_unit, flux.int_unit, flux.factor

        def values(name: str) -> np.ndarray:
            entry = columns.get(name)
            if entry is None or n == 0:
                return np.full(n, np.nan)
            return convert(raw, entry, _TARGET_UNITS[name], flux_factor)

        x, y = values("x"), values("y")
        if "x" in columns and "y" in columns:
            x, y = x - columns["x"].origin, y - columns["y"].origin
        elif n:  # sky positions in the image's own frame (a finder's "ra/dec" on GLON/GLAT)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                x, y = image.wcs.all_world2pix(values("ra"), values("dec"), 0)
            x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
        ra = np.full(n, np.nan)
        dec = np.full(n, np.nan)
        pa = values("pa")
        if n:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                centre = image.wcs.pixel_to_world(x, y).icrs
            ra = np.asarray(centre.ra.deg, dtype=np.float64).reshape(n)
            dec = np.asarray(centre.dec.deg, dtype=np.float64).reshape(n)
            if "pa" in columns:
                pa = icrs_position_angles(image, x, y, pa, columns["pa"].reference)
        out = Table()
        out["ra"], out["dec"] = ra, dec
        for name in ("ra_err", "dec_err", "peak_flux", "peak_flux_err", "int_flux"):
            out[name] = values(name)
        out["int_flux_err"] = values("int_flux_err")
        out["maj"], out["min"], out["pa"] = values("maj"), values("min"), pa
        local_rms = values("local_rms")
        score = values("score")
        if "score" not in columns and "local_rms" in columns:
            with np.errstate(divide="ignore", invalid="ignore"):
                score = out["peak_flux"] / local_rms
        out["score"] = score
        if "class" in columns and n:
            out["class"] = np.asarray(raw[columns["class"].column(raw)]).astype(str)
        ox, oy = image.origin
        out["x"], out["y"] = x + ox, y + oy
        if "local_rms" in columns:
            out["local_rms"] = Column(
                local_rms,
                unit=flux_unit,
                description="Background rms at the source, as the finder measured it.",
                meta={"ucd": "stat.stdev;phot.flux.density"},
            )
        for name, extra in manifest.extra_columns.items():
            data = (
                np.asarray(raw[extra.source])
                if n and extra.source in raw.colnames
                else np.full(n, np.nan)
            )
            unit = extra.unit if extra.to is None else extra.to
            if data.dtype.kind == "f" or extra.null_values or extra.to is not None:
                data = _nulled(np.asarray(data, dtype=np.float64), extra.null_values)
                data = data * float(u.Unit(extra.unit).to(u.Unit(unit)))
            out[name] = Column(
                data, unit=unit, description=extra.description, meta={"ucd": extra.ucd}
            )
        if region is not None and n:
            out = out[region.contains(np.asarray(out["x"]), np.asarray(out["y"]))]
        order = np.argsort(
            -np.nan_to_num(np.asarray(out["peak_flux"], dtype=np.float64), nan=-np.inf),
            kind="stable",
        )
        out = out[order]
        out.add_column(np.arange(1, len(out) + 1, dtype=np.int32), name="id", index=0)
        descriptions = {
            "id": "Source number, in order of decreasing peak flux.",
            "ra": "Right ascension (ICRS) of the fitted centre.",
            "dec": "Declination (ICRS) of the fitted centre.",
            "pa": "Position angle of the major axis, degrees East of North (ICRS), 0 to 180.",
            "score": "Signal-to-noise ratio: peak_flux / local_rms.",
            **manifest.descriptions,
        }
        return conform(out, peak_unit=flux_unit, int_unit=int_unit, descriptions=descriptions)

    def _keep_log(self, workdir: Path, staging: Path) -> list[ResultFile]:
        """The finder's own log (PyBDSF writes ``input.fits.pybdsf.log``) as a result; the
        work folder (the clean image, the finder's tables) is not kept."""
        results = []
        logs = sorted(workdir.glob("*.log"))
        if logs:
            target = staging / "finder.log"
            with target.open("wb") as out:
                for path in logs:
                    out.write(path.read_bytes())
            results.append(ResultFile("finder_log", target.name, "text/plain"))
        shutil.rmtree(workdir, ignore_errors=True)
        return results

    def _model_files(self, facts: EnvironmentFacts, command_line: str) -> list[FileEntity]:
        """The manifest, the requirements (with the environment's package versions) and
        the app's own files the command names, for the provenance."""
        manifest = self.loaded.manifest
        attributes = {
            "model_id": self.model_id,
            "model_version": self.version,
            "kind": "command",
            "command": command_line,
            "environment": str(self.env),
        }
        files = [file_entity("manifest", self.loaded.path, "application/toml", attributes)]
        requirements = self.loaded.requirements
        if requirements is not None:
            files.append(
                file_entity(
                    "requirements",
                    requirements,
                    "text/plain",
                    {
                        "python": facts.python,
                        **{f"package.{k}": v for k, v in sorted(facts.packages.items())},
                    },
                )
            )
        folder = self.loaded.folder
        named = {
            part
            for element in manifest.command
            for part in ([element] if isinstance(element, str) else element)
            if part.startswith("{app_dir}/")
        }
        for part in sorted(named):
            path = folder / part.removeprefix("{app_dir}/")
            if path.is_file():
                files.append(file_entity("program", path, "text/x-python"))
        return files


# --------------------------------------------------------------------------- helpers

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def _fill(text: str, fixed: Mapping[str, str], values: Mapping[str, Any], *, in_group: bool) -> str:
    """``text`` with its placeholders filled. A true bool fills as nothing inside a group
    (``["--negative", "{negative}"]`` gives ``--negative``), else as true/false."""

    def one(match: re.Match[str]) -> str:
        name = match.group(1)
        if name in fixed:
            return fixed[name]
        value = values.get(name)
        if isinstance(value, bool):
            return "" if in_group else str(value).lower()
        if isinstance(value, float):
            return repr(value)
        if value is not None and hasattr(value, "value") and hasattr(value, "is_pixels"):
            return str(value.value)  # an Extent given in pixels
        return str(value)

    return _PLACEHOLDER.sub(one, text)


def _quote(arg: str) -> str:
    return arg if arg and re.match(r"^[\w@%+=:,./-]+$", arg) else json.dumps(arg)


def _parent_death_hook() -> Callable[[], None] | None:
    """What the child runs between fork and exec: ``prctl(PR_SET_PDEATHSIG, SIGKILL)``, so
    the kernel kills it when the thread that started it (the worker's) dies. The C function
    is looked up here, in the parent: between fork and exec only that call is made (no
    library search, which would start a process)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True).prctl
    except (OSError, AttributeError):
        return None

    def hook() -> None:  # pragma: no cover - runs in the child
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)

    return hook


_DIE_WITH_PARENT = _parent_death_hook()


def _kill(child: subprocess.Popen[bytes]) -> None:
    """Kill the child and its process group; wait for it."""
    if child.poll() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(child.pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            child.kill()
    with contextlib.suppress(subprocess.TimeoutExpired):
        child.wait(timeout=10)


def _dask_cancellation() -> Callable[[], bool] | None:
    """In a Dask task: a check that says whether the task was cancelled (the scheduler
    released its key); None elsewhere. A Dask task cannot be interrupted, but the child it
    waits on can be killed."""
    if "distributed" not in sys.modules:
        return None
    try:
        from distributed import get_worker

        worker = get_worker()
        key = worker.get_current_task()
    except (ImportError, ValueError, AttributeError, KeyError):
        return None

    def cancelled() -> bool:
        task = worker.state.tasks.get(key)
        return task is None or task.state in ("cancelled", "released", "forgotten")

    return cancelled


def convert(raw: Table, entry: ColumnMap, target: str, flux_factor: float) -> np.ndarray:
    """Column ``entry.source`` of ``raw`` in the ``target`` unit, NaN where not measured."""
    name = entry.column(raw)
    assert name is not None
    data = _nulled(np.asarray(_plain(raw[name]), dtype=np.float64), entry.null_values)
    if target in (IMAGE_UNIT, IMAGE_BEAM_UNIT):
        if entry.unit in (IMAGE_UNIT, IMAGE_BEAM_UNIT):
            return data * flux_factor
        wanted = _JY_PER_BEAM if target == IMAGE_UNIT else u.Jy
        return data * float(u.Unit(entry.unit).to(wanted))
    given = u.Unit(entry.unit) if entry.unit else u.dimensionless_unscaled
    if target in ("", "pix"):
        return data
    return data * float(given.to(u.Unit(target)))


def _plain(column: Any) -> np.ndarray:
    values = np.array(column, dtype=np.float64)
    mask = getattr(column, "mask", None)
    if mask is not None:
        values[np.asarray(mask, dtype=bool)] = np.nan
    return values


def _nulled(values: np.ndarray, nulls: Iterable[float]) -> np.ndarray:
    out = values.copy()
    for null in nulls:
        out[out == null] = np.nan
    return out


def icrs_position_angles(
    image: SkyImage, x: np.ndarray, y: np.ndarray, pa: np.ndarray, reference: str
) -> np.ndarray:
    """ICRS position angles (east of north, 0 to 180) of axes a finder gave as ``pa``
    degrees: east of north in the image's own frame (``north``), or from +x towards +y
    (``x_axis``). A "north" angle becomes a pixel direction through the WCS at the source
    (a point a pixel away along it, in the image's frame), so a rotated, flipped or Galactic
    image gives the right ICRS angle; that pixel direction goes through the same code as
    every finder's (``imaging.stitch.position_angles``)."""
    pa = np.asarray(pa, dtype=np.float64)
    good = np.isfinite(pa) & np.isfinite(x) & np.isfinite(y)
    out = np.full(len(pa), np.nan)
    if not good.any():
        return out
    xs, ys, angles = x[good], y[good], pa[good]
    if reference == "x_axis":
        theta = np.deg2rad(angles)
    else:
        step = image.pixel_scale_arcsec * u.arcsec
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            centre = image.wcs.pixel_to_world(xs, ys)
            along = centre.directional_offset_by(angles * u.deg, step)
            ax, ay = image.wcs.world_to_pixel(along)
        theta = np.arctan2(np.asarray(ay) - ys, np.asarray(ax) - xs)
    out[good] = position_angles(image.wcs, xs, ys, theta)
    return out


@dataclass(frozen=True)
class _Flux:
    """The catalogue's flux units for an image, and the factor from its pixel values."""

    peak_unit: str
    int_unit: str
    note: str
    factor: float


def _flux_units(image: SkyImage) -> _Flux:
    """The flux units from the image's BUNIT, as the sep finder reads it (an image without
    BUNIT is taken to be Jy/beam; mJy/beam becomes Jy/beam with a factor 0.001)."""
    from astro_otf.models.sep_finder import _flux_scale

    scale = _flux_scale(image)
    int_unit = "Jy" if scale.peak_unit == "Jy/beam" else f"{scale.peak_unit}.beam"
    return _Flux(scale.peak_unit, int_unit, scale.note, scale.peak_factor)


def _rms(pixels: np.ndarray) -> float | None:
    """1.4826 x the median absolute deviation of the finite pixels (the image's noise)."""
    data = np.asarray(pixels, dtype=np.float64)
    data = data[np.isfinite(data)]
    if data.size < 16:
        return None
    mad = float(np.median(np.abs(data - np.median(data))))
    return 1.4826 * mad if mad > 0 else None


def _frequency(header: fits.Header) -> float | None:
    """The image's frequency in Hz: a FREQ axis's CRVAL, else RESTFRQ/RESTFREQ/FREQ."""
    for axis in range(1, 6):
        if str(header.get(f"CTYPE{axis}", "")).upper().startswith("FREQ"):
            value = header.get(f"CRVAL{axis}")
            if isinstance(value, int | float) and value > 0:
                return float(value)
    for key in ("RESTFRQ", "RESTFREQ", "FREQ"):
        value = header.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
            return float(value)
    return None


def _requirement_names(path: Path | None) -> list[str]:
    """The package names a requirements file pins, lower case."""
    if path is None or not path.is_file():
        return []
    names = []
    for line in path.read_text(encoding="utf-8").splitlines():
        text = line.split("#", 1)[0].strip()
        if not text or text.startswith("-"):
            continue
        match = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)", text)
        if match:
            names.append(match.group(1).lower())
    return names


def load_command_apps(roots: Iterable[Path], apps_dir: Path | str) -> list[CommandApp]:
    """A CommandApp for every command manifest under ``roots`` (folders that do not exist
    are skipped here: the ONNX loader reports them)."""
    apps: list[CommandApp] = []
    for root in roots:
        if root.is_dir():
            apps.extend(CommandApp(m, apps_dir) for m in load_command_manifests(root))
    return apps
