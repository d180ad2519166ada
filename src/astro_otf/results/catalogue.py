"""The one catalogue schema every app returns, whatever found the sources.

Astronomers compare catalogues from different finders and models, and TOPCAT, Aladin, DS9
and STILTS read them by column meaning (UCD) and unit. So every app hands back a table with
the same standard columns, in the same order, each with its unit and UCD; what an app cannot
measure is left blank (NaN) rather than left out. Two columns are there only where they
apply: ``class`` for finders that classify, ``tile`` for models that search tile by tile (an
all-blank text column is questionable VOTable, and a column that can never hold a value only
misleads). An app may add columns of its own after the standard ones, each with a unit and a
UCD.

The product an app returns (:class:`Catalogue`) also carries the image-level facts (beam,
rms, image size, region) that the result writers put in every format.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from astropy.table import Column, MaskedColumn, Table

from astro_otf.imaging.facts import ImageFact
from astro_otf.results.entities import FileEntity

__all__ = [
    "CATALOGUE_COLUMNS",
    "Catalogue",
    "ColumnSpec",
    "conform",
]

#: Unit placeholders, replaced by the image's flux units in :func:`conform`.
PEAK_UNIT = "<peak>"
INT_UNIT = "<int>"


@dataclass(frozen=True)
class ColumnSpec:
    """One standard catalogue column: its name, kind, unit, UCD and description."""

    name: str
    kind: str  # numpy kind: "f" float64, "i" int32, "U" text
    unit: str
    ucd: str
    description: str


#: The standard columns, in catalogue order.
CATALOGUE_COLUMNS: tuple[ColumnSpec, ...] = (
    ColumnSpec("id", "i", "", "meta.id;meta.main", "Source number in this catalogue."),
    ColumnSpec("ra", "f", "deg", "pos.eq.ra;meta.main", "Right ascension (ICRS) of the centre."),
    ColumnSpec("dec", "f", "deg", "pos.eq.dec;meta.main", "Declination (ICRS) of the centre."),
    ColumnSpec("ra_err", "f", "arcsec", "stat.error;pos.eq.ra", "1-sigma error of ra."),
    ColumnSpec("dec_err", "f", "arcsec", "stat.error;pos.eq.dec", "1-sigma error of dec."),
    ColumnSpec(
        "peak_flux", "f", PEAK_UNIT, "phot.flux.density;stat.max", "Peak surface brightness."
    ),
    ColumnSpec(
        "peak_flux_err",
        "f",
        PEAK_UNIT,
        "stat.error;phot.flux.density;stat.max",
        "1-sigma error of peak_flux.",
    ),
    ColumnSpec("int_flux", "f", INT_UNIT, "phot.flux.density", "Integrated flux density."),
    ColumnSpec(
        "int_flux_err", "f", INT_UNIT, "stat.error;phot.flux.density", "1-sigma error of int_flux."
    ),
    ColumnSpec("maj", "f", "arcsec", "phys.angSize.smajAxis", "Major axis (FWHM) of the source."),
    ColumnSpec("min", "f", "arcsec", "phys.angSize.sminAxis", "Minor axis (FWHM) of the source."),
    ColumnSpec("pa", "f", "deg", "pos.posAng", "Position angle of the major axis, east of north."),
    ColumnSpec("score", "f", "", "stat.snr", "Detection score (signal-to-noise)."),
    ColumnSpec("class", "U", "", "src.class", "Source class, where the finder gives one."),
    ColumnSpec(
        "x",
        "f",
        "pix",
        "pos.cartesian.x;instr.pixel",
        "0-based pixel column of the centre in the uploaded image (FITS pixel = x + 1).",
    ),
    ColumnSpec(
        "y",
        "f",
        "pix",
        "pos.cartesian.y;instr.pixel",
        "0-based pixel row of the centre in the uploaded image (FITS pixel = y + 1).",
    ),
    ColumnSpec(
        "tile",
        "i",
        "",
        "meta.id;obs.field",
        "Index of the tile the detection was kept from (tiled models only).",
    ),
)

STANDARD_NAMES = tuple(spec.name for spec in CATALOGUE_COLUMNS)
#: Standard columns written only when the app gives them.
OPTIONAL_NAMES = frozenset({"class", "tile"})


@dataclass
class Catalogue:
    """What an app returns: the conformed table and the facts about the image it searched.

    ``infos`` are app-specific lines (model sha256, precision, background
    statistics, ...) that become VOTable INFO elements after the service's own.
    """

    table: Table
    facts: list[ImageFact] = field(default_factory=list)
    infos: dict[str, str] = field(default_factory=dict)
    description: str = ""
    #: The model files that ran (ONNX file, manifest), for the provenance.
    model_files: list[FileEntity] = field(default_factory=list)


def conform(
    table: Table,
    *,
    peak_unit: str = "",
    int_unit: str = "",
    descriptions: dict[str, str] | None = None,
    score_ucd: str | None = None,
) -> Table:
    """``table`` as a standard catalogue: standard columns first, in order, with their
    units, UCDs and descriptions; blank where ``table`` lacks one (left out for the optional
    ``class`` and ``tile``); the app's own columns after. ``peak_unit``/``int_unit`` are
    the flux units (from the image's BUNIT).
    ``descriptions`` override the standard descriptions (say what this finder measures);
    ``score_ucd`` overrides the score's UCD (``stat.probability`` for a classifier score).

    Raises ValueError for an extra column without a unit or a UCD (a bug in the app).
    """
    n = len(table)
    wording = descriptions or {}
    columns: list[Column] = []
    for spec in CATALOGUE_COLUMNS:
        unit = {PEAK_UNIT: peak_unit, INT_UNIT: int_unit}.get(spec.unit, spec.unit)
        ucd = score_ucd if spec.name == "score" and score_ucd else spec.ucd
        description = wording.get(spec.name, spec.description)
        if spec.name in table.colnames:
            data: Any = table[spec.name]
            mask = getattr(data, "mask", None)
            values = np.asarray(data)
        elif spec.name == "id":
            values, mask = np.arange(1, n + 1), None
        elif spec.name in OPTIONAL_NAMES:
            continue
        else:
            values, mask = _blank(spec.kind, n), np.ones(n, dtype=bool)
            if spec.kind == "f":  # NaN says "not measured" in every format
                mask = None
        values = _as_kind(values, spec.kind)
        column_type = MaskedColumn if mask is not None and np.any(mask) else Column
        extra = {"mask": mask} if column_type is MaskedColumn else {}
        columns.append(
            column_type(
                values,
                name=spec.name,
                unit=unit,
                description=description,
                meta={"ucd": ucd},
                **extra,
            )
        )
    for name in table.colnames:
        if name in STANDARD_NAMES:
            continue
        column = table[name]
        if column.unit is None or not column.meta.get("ucd"):
            raise ValueError(f"the app's extra column {name!r} needs a unit and a UCD")
        columns.append(column)
    return Table(columns, meta=dict(table.meta))


def _blank(kind: str, n: int) -> np.ndarray:
    if kind == "f":
        return np.full(n, np.nan)
    if kind == "i":
        return np.zeros(n, dtype=np.int32)
    return np.full(n, "", dtype="U1")


def _as_kind(values: np.ndarray, kind: str) -> np.ndarray:
    if kind == "f":
        return values.astype(np.float64, copy=False)
    if kind == "i":
        return values.astype(np.int32, copy=False)
    return values.astype(str)


def float_column(table: Table, name: str) -> np.ndarray:
    """Column ``name`` as float64, NaN where masked or where the table lacks it."""
    n = len(table)
    if name not in table.colnames:
        return np.full(n, np.nan)
    column = table[name]
    values = np.array(column, dtype=np.float64)
    mask = getattr(column, "mask", None)
    if mask is not None:
        values[np.asarray(mask, dtype=bool)] = np.nan
    return values


def column_names(specs: Iterable[ColumnSpec] = CATALOGUE_COLUMNS) -> list[str]:
    return [spec.name for spec in specs]
