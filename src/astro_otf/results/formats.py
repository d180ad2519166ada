"""The catalogue in the formats other than VOTable: CSV, JSON and DS9 regions.

VOTable is the service's reference format, but a catalogue is also looked at in a spreadsheet
(CSV), drawn by a web page (JSON, with each column's unit and UCD so the page can label it)
and overlaid on the image in DS9 or Aladin (a DS9 region file). Every writer here takes the
same :class:`~astro_otf.results.catalogue.Catalogue` and writes under a temporary name in the
target folder before renaming into place, so a crash never leaves a half-written file where a
result is expected (see DESIGN.md, "results are written to a temporary name").
"""

from __future__ import annotations

import json
import math
import os
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import astropy.units as u
import numpy as np
from astropy.coordinates import SkyCoord
from astropy.table import Column, MaskedColumn, Table
from regions import (
    CircleSkyRegion,
    EllipseSkyRegion,
    PointSkyRegion,
    Regions,
    SkyRegion,
)

from astro_otf.results.catalogue import Catalogue, float_column

__all__ = ["DS9_HEADER", "write_csv", "write_ds9", "write_json"]

#: First line of every DS9 region file (what DS9 and ``regions`` write and look for).
DS9_HEADER = "# Region file format: DS9 astropy/regions"


# -- CSV ---------------------------------------------------------------------------------------


def write_csv(catalogue: Catalogue, path: Path) -> Path:
    """Write the catalogue table as plain CSV at ``path`` and return ``path``.

    One header row of column names, then one row per source. Values that were not measured
    (NaN, or masked) are left blank, which spreadsheets, TOPCAT
    and astropy all read as missing. Units and UCDs are not in a CSV: use the VOTable or
    JSON for those. Zero rows give a header-only file.
    """
    table = catalogue.table
    columns: list[Column] = []
    for name in table.colnames:
        column = table[name]
        values = np.asarray(column)
        mask = np.asarray(getattr(column, "mask", False), dtype=bool)
        mask = np.broadcast_to(mask, values.shape).copy()
        if values.dtype.kind == "f":
            mask = mask | np.isnan(values)
        columns.append(MaskedColumn(values, name=name, mask=mask))
    plain = Table(columns)  # no meta: table.meta["comments"] would add "#" lines

    def write(tmp: Path) -> None:
        plain.write(tmp, format="ascii.csv", overwrite=True)

    return _write_atomically(Path(path), write)


# -- JSON --------------------------------------------------------------------------------------


def write_json(catalogue: Catalogue, path: Path, *, infos: Mapping[str, str]) -> Path:
    """Write the catalogue as a JSON document for web clients at ``path`` and return ``path``.

    The document is ``{"infos": {...}, "facts": [...], "columns": [...], "rows": [...]}``:
    ``infos`` are the service's provenance lines followed by the app's own
    (``catalogue.infos``, which cannot replace a service line of the same name); each fact
    has ``name``, ``value``, ``unit``, ``ucd`` and ``description``; each column has
    ``name``, ``unit`` (a VOUnit string, ``""`` when dimensionless), ``ucd``,
    ``description`` and ``datatype`` (``"int"``, ``"float"`` or ``"string"``); ``rows``
    holds one list of values per source, in column order. NaN, infinities and masked values
    are ``null``, so the file is strict JSON. A catalogue description is added as
    ``"description"``.
    """
    table = catalogue.table
    merged_infos = {str(k): str(v) for k, v in infos.items()}
    for key, value in catalogue.infos.items():  # the service's lines win a name clash
        merged_infos.setdefault(str(key), str(value))
    facts = [
        {
            "name": f.name,
            "value": _json_value(f.value),
            "unit": _vounit(f.unit),
            "ucd": f.ucd,
            "description": f.description,
        }
        for f in catalogue.facts
    ]
    columns: list[dict[str, str]] = []
    cells: list[list[Any]] = []
    for name in table.colnames:
        column = table[name]
        datatype = _datatype(column.dtype)
        columns.append(
            {
                "name": name,
                "unit": _vounit(column.unit),
                "ucd": str(column.meta.get("ucd") or ""),
                "description": str(column.description or ""),
                "datatype": datatype,
            }
        )
        cells.append(_column_values(column, datatype))
    rows = [list(row) for row in zip(*cells, strict=True)] if cells else []
    document: dict[str, Any] = {
        "infos": merged_infos,
        "facts": facts,
        "columns": columns,
        "rows": rows,
    }
    if catalogue.description:
        document["description"] = catalogue.description
    text = json.dumps(document, allow_nan=False, ensure_ascii=False, separators=(",", ":"))

    def write(tmp: Path) -> None:
        tmp.write_text(text + "\n", encoding="utf-8")

    return _write_atomically(Path(path), write)


def _datatype(dtype: np.dtype[Any]) -> str:
    if dtype.kind in "iub":
        return "int"
    if dtype.kind == "f":
        return "float"
    return "string"


def _column_values(column: Column, datatype: str) -> list[Any]:
    """The column's values as JSON-ready Python objects, None where masked or not finite."""
    values = np.asarray(column)
    mask = _row_mask(column)
    if datatype == "int" and values.ndim == 1:
        out: list[Any] = values.astype(np.int64).tolist()
    elif datatype == "float" and values.ndim == 1:
        out = [v if math.isfinite(v) else None for v in values.astype(np.float64).tolist()]
    else:
        out = [_json_value(v) for v in values]
    return [None if m else v for v, m in zip(out, mask.tolist(), strict=True)]


def _row_mask(column: Column) -> np.ndarray:
    """One flag per row: True where the row's cell is masked (whole, for array cells)."""
    n = len(column)
    mask = np.asarray(getattr(column, "mask", False), dtype=bool)
    if mask.ndim == 0:  # no mask, or numpy's scalar "nomask"
        return np.full(n, bool(mask))
    if mask.ndim == 1 or n == 0:
        return mask.reshape(n)
    return np.asarray(mask.reshape(n, -1).all(axis=1))


def _json_value(value: Any) -> Any:
    """``value`` (a numpy or Python scalar, or an array cell) as a strict-JSON value."""
    if isinstance(value, np.ndarray):
        return [_json_value(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, bool | int | str) or value is None:
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, list | tuple):
        return [_json_value(v) for v in value]
    return str(value)


def _vounit(unit: Any) -> str:
    """``unit`` as a VOUnit string; ``""`` for none or dimensionless; as written when astropy
    cannot parse it (an unusual BUNIT is passed on rather than dropped)."""
    if unit is None:
        return ""
    text = unit if isinstance(unit, str) else None
    if text is not None and not text.strip():
        return ""
    try:
        parsed = u.Unit(unit, parse_strict="raise")
        if parsed == u.dimensionless_unscaled:
            return ""
        return str(parsed.to_string("vounit"))
    except (ValueError, TypeError):
        return str(unit)


# -- DS9 regions -------------------------------------------------------------------------------


def write_ds9(catalogue: Catalogue, path: Path) -> Path:
    """Write the sources as a DS9 region file in ICRS at ``path`` and return ``path``.

    A source with finite ``maj``, ``min`` and ``pa`` (and positive axes) is an ellipse of
    full axes ``maj`` x ``min`` at position angle ``pa`` east of north; one with only a size
    is a circle of radius max(maj, min)/2; one with no size is a point. Each region is
    labelled with the source's ``id``. Sources without a finite ra/dec are left out. Zero
    sources give a file with the header and frame lines only, which DS9 loads as empty.
    """
    table = catalogue.table
    n = len(table)
    ra = float_column(table, "ra")
    dec = float_column(table, "dec")
    maj = float_column(table, "maj")
    minor = float_column(table, "min")
    pa = float_column(table, "pa")
    ids = _labels(table, n)

    shapes: list[SkyRegion] = []
    good = np.isfinite(ra) & np.isfinite(dec)
    if np.any(good):
        centres = SkyCoord(ra[good] * u.deg, dec[good] * u.deg, frame="icrs")
        for centre, i in zip(centres, np.flatnonzero(good).tolist(), strict=True):
            meta = {"text": ids[i]}
            a, b, theta = float(maj[i]), float(minor[i]), float(pa[i])
            if _positive(a) and _positive(b) and math.isfinite(theta):
                # regions (like DS9) measures a sky ellipse's angle anticlockwise from the
                # longitude axis to the *width* axis; PA is from north through east, so the
                # major axis (the width) is at PA + 90 deg from the longitude axis.
                shapes.append(
                    EllipseSkyRegion(
                        centre,
                        width=a * u.arcsec,
                        height=b * u.arcsec,
                        angle=((theta + 90.0) % 360.0) * u.deg,
                        meta=meta,
                    )
                )
            elif _positive(a) or _positive(b):
                radius = max(v for v in (a, b) if _positive(v)) / 2.0
                shapes.append(CircleSkyRegion(centre, radius * u.arcsec, meta=meta))
            else:
                shapes.append(PointSkyRegion(centre, meta=meta))
    text = _serialize_ds9(shapes)

    def write(tmp: Path) -> None:
        tmp.write_text(text, encoding="utf-8")

    return _write_atomically(Path(path), write)


def _serialize_ds9(shapes: list[SkyRegion]) -> str:
    """The DS9 text of ``shapes``, each line carrying its own label.

    ``regions`` moves metadata that every region shares into a ``global`` line, so a file of
    one source would carry its label only as ``global text={1}``; such properties are put
    back on each shape line, where every reader takes them as the shape's own. An empty list
    gives the header and the frame line (``regions`` would give an empty file).
    """
    if not shapes:
        return f"{DS9_HEADER}\nicrs\n"
    lines = Regions(shapes).serialize(format="ds9", precision=10).splitlines()
    shared = ""
    out: list[str] = []
    for line in lines:
        if line.startswith("global "):
            shared = line[len("global ") :].strip()
            continue
        if not shared or line.startswith("#") or "(" not in line:
            out.append(line)
        elif " # " in line:
            out.append(f"{line} {shared}")
        else:
            out.append(f"{line} # {shared}")
    return "\n".join(out) + "\n"


def _labels(table: Table, n: int) -> list[str]:
    if "id" not in table.colnames:
        return [str(i + 1) for i in range(n)]
    column = table["id"]
    mask = _row_mask(column)
    return [
        "" if m else str(v) for v, m in zip(np.asarray(column).tolist(), mask.tolist(), strict=True)
    ]


def _positive(value: float) -> bool:
    return math.isfinite(value) and value > 0.0


# -- shared ------------------------------------------------------------------------------------


def _write_atomically(path: Path, write: Callable[[Path], None]) -> Path:
    """Run ``write`` on a temporary name beside ``path``, then rename it to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
