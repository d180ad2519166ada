"""The catalogue in the formats other than VOTable: CSV, JSON and DS9 regions.

VOTable is the service's reference format, but a catalogue is also looked at in a spreadsheet
(CSV), drawn by a web page (JSON, with each column's unit and UCD so the page can label it)
and overlaid on the image in DS9 or Aladin (a DS9 region file). Every writer here takes the
same :class:`~astro_otf.results.catalogue.Catalogue` and writes under a temporary name in the
target folder before renaming into place, so a crash never leaves a half-written file where a
result is expected (see DESIGN.md, "results are written to a temporary name").
"""

from __future__ import annotations

import functools
import io
import json
import math
import os
import uuid
from collections.abc import Callable, Mapping
from json.encoder import encode_basestring
from pathlib import Path
from typing import Any

import astropy.units as u
import numpy as np
from astropy.coordinates import Longitude
from astropy.table import Column, MaskedColumn, Table

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

    The text is what astropy's ``ascii.csv`` writer gives for the same table (floats in their
    shortest round-trip form, text stripped and quoted only where it must be), built a column
    at a time rather than a cell at a time; a table with a multidimensional column is left
    to astropy.
    """
    table = catalogue.table
    if len(table.colnames) < 2 or any(np.asarray(table[c]).ndim != 1 for c in table.colnames):
        text = _csv_by_astropy(table)
    else:
        header = ",".join(_csv_quote(str(name).strip()) for name in table.colnames)
        cells = [_csv_cells(table[name]) for name in table.colnames]
        text = "\n".join([header, *map(",".join, zip(*cells, strict=True))]) + "\n"

    def write(tmp: Path) -> None:
        tmp.write_text(text, encoding="utf-8", newline="")

    return write_atomically(Path(path), write)


def _csv_cells(column: Column) -> list[str]:
    """One CSV cell per row of a 1-D column: blank where masked or NaN."""
    values = np.asarray(column)
    blank = _row_mask(column)
    kind = values.dtype.kind
    if kind == "f":
        blank = blank | np.isnan(values)
        # each value's shortest round-trip text as a float64 (as astropy writes a float32)
        cells = list(map(float.__repr__, values.astype(np.float64).tolist()))
    elif kind in "iu":
        cells = list(map(str, values.tolist()))
    elif kind == "b":
        cells = ["True" if v else "False" for v in values.tolist()]
    else:
        if kind == "S":
            texts = [v.decode("utf-8", errors="replace") for v in values.tolist()]
        else:
            texts = [str(v) for v in values.tolist()]
        cells = [_csv_quote(v.strip()) for v in texts]
    if blank.any():
        for i in np.flatnonzero(blank).tolist():
            cells[i] = ""
    return cells


def _csv_quote(text: str) -> str:
    """``text`` as a CSV field, quoted as the ``csv`` module's QUOTE_MINIMAL does."""
    if any(c in text for c in ',"\r\n'):
        return '"' + text.replace('"', '""') + '"'
    return text


def _csv_by_astropy(table: Table) -> str:
    """The CSV text astropy writes, NaN cells masked (for tables with array columns)."""
    columns: list[Column] = []
    for name in table.colnames:
        column = table[name]
        values = np.asarray(column)
        mask = np.asarray(getattr(column, "mask", False), dtype=bool)
        mask = np.broadcast_to(mask, values.shape).copy()
        if values.dtype.kind == "f":
            mask = mask | np.isnan(values)
        columns.append(MaskedColumn(values, name=name, mask=mask))
    out = io.StringIO()
    Table(columns).write(out, format="ascii.csv")  # no meta: comments would add "#" lines
    return out.getvalue()


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
    cells: list[list[str]] = []
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
        cells.append(_json_cells(column, datatype))
    head: dict[str, Any] = {"infos": merged_infos, "facts": facts, "columns": columns}
    # The rows are written a column at a time (each value's JSON text, then joined by row),
    # which is what ``json.dumps`` of the row lists would give, at a fraction of its cost.
    rows = ",".join(f"[{','.join(row)}]" for row in zip(*cells, strict=True)) if cells else ""
    text = _dumps(head)[:-1] + f',"rows":[{rows}]'
    if catalogue.description:
        text += f',"description":{_dumps(catalogue.description)}'
    text += "}"

    def write(tmp: Path) -> None:
        tmp.write_text(text + "\n", encoding="utf-8")

    return write_atomically(Path(path), write)


def _dumps(value: Any) -> str:
    return json.dumps(value, allow_nan=False, ensure_ascii=False, separators=(",", ":"))


def _datatype(dtype: np.dtype[Any]) -> str:
    if dtype.kind in "iub":
        return "int"
    if dtype.kind == "f":
        return "float"
    return "string"


def _json_cells(column: Column, datatype: str) -> list[str]:
    """The JSON text of each of the column's values: ``null`` where masked or not finite."""
    values = np.asarray(column)
    mask = _row_mask(column)
    if values.ndim != 1:
        out = [_dumps(_json_value(v)) for v in values]
    elif datatype == "int":
        out = list(map(str, values.astype(np.int64).tolist()))
    elif datatype == "float":
        as_float = values.astype(np.float64)
        out = list(map(float.__repr__, as_float.tolist()))  # what json.dumps writes
        mask = mask | ~np.isfinite(as_float)
    elif values.dtype.kind == "U":
        out = list(map(encode_basestring, values.tolist()))  # json.dumps's own quoting
    else:
        out = [_dumps(_json_value(v)) for v in values.tolist()]
    if mask.any():
        for i in np.flatnonzero(mask).tolist():
            out[i] = "null"
    return out


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
    try:
        return _vounit_cached(unit)
    except TypeError:  # unhashable
        return _vounit_uncached(unit)


@functools.lru_cache(maxsize=256)
def _vounit_cached(unit: Any) -> str:
    """A catalogue has the same dozen units every time: each is converted once."""
    return _vounit_uncached(unit)


def _vounit_uncached(unit: Any) -> str:
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
    labelled with the source's ``id``. Sources without a finite ra/dec (or with a dec beyond
    the poles) are left out. Zero sources give a file with the header and frame lines only,
    which DS9 loads as empty.

    The lines are those ``regions`` writes (ICRS degrees with 10 decimals, sizes in degrees,
    each line with its own ``text={id}``; ``regions`` reads them back), formatted a column at
    a time: no coordinate or region object is made per source.
    """
    table = catalogue.table
    n = len(table)
    ra = float_column(table, "ra")
    dec = float_column(table, "dec")
    with np.errstate(invalid="ignore"):
        good = np.isfinite(ra) & np.isfinite(dec) & (np.abs(dec) <= 90.0)
    index = np.flatnonzero(good)
    lines = [DS9_HEADER, "icrs"]
    if index.size:
        ids = _labels(table, n)
        ra_deg = Longitude(ra[index] * u.deg).deg  # wrapped into [0, 360) as SkyCoord does
        dec_deg = dec[index]
        a = float_column(table, "maj")[index]
        b = float_column(table, "min")[index]
        theta = float_column(table, "pa")[index]
        with np.errstate(invalid="ignore"):
            pos_a = np.isfinite(a) & (a > 0.0)
            pos_b = np.isfinite(b) & (b > 0.0)
        ellipse = pos_a & pos_b & np.isfinite(theta)
        circle = ~ellipse & (pos_a | pos_b)
        # regions (like DS9) measures a sky ellipse's angle anticlockwise from the longitude
        # axis to the *width* axis; PA is from north through east, so the major axis (the
        # width) is at PA + 90 deg from the longitude axis.
        angle = np.where(ellipse, (np.nan_to_num(theta) + 90.0) % 360.0, 0.0)
        width = (np.where(pos_a, a, 0.0) / 2.0 * u.arcsec).to_value(u.deg)  # semi-axes
        height = (np.where(pos_b, b, 0.0) / 2.0 * u.arcsec).to_value(u.deg)
        larger = np.maximum(np.where(pos_a, a, 0.0), np.where(pos_b, b, 0.0))
        radius = (larger / 2.0 * u.arcsec).to_value(u.deg)
        for i, x, y, w, h, r, t, is_e, is_c in zip(
            index.tolist(),
            ra_deg.tolist(),
            dec_deg.tolist(),
            width.tolist(),
            height.tolist(),
            radius.tolist(),
            angle.tolist(),
            ellipse.tolist(),
            circle.tolist(),
            strict=True,
        ):
            if is_e:
                shape = f"ellipse({x:.10f},{y:.10f},{w:.10f},{h:.10f},{t:.10f})"
            elif is_c:
                shape = f"circle({x:.10f},{y:.10f},{r:.10f})"
            else:
                shape = f"point({x:.10f},{y:.10f})"
            lines.append(f"{shape} # text={{{ids[i]}}}")
    text = "\n".join(lines) + "\n"

    def write(tmp: Path) -> None:
        tmp.write_text(text, encoding="utf-8")

    return write_atomically(Path(path), write)


def _labels(table: Table, n: int) -> list[str]:
    if "id" not in table.colnames:
        return [str(i + 1) for i in range(n)]
    column = table["id"]
    mask = _row_mask(column)
    return [
        "" if m else str(v) for v, m in zip(np.asarray(column).tolist(), mask.tolist(), strict=True)
    ]


# -- shared ------------------------------------------------------------------------------------


def write_atomically(path: Path, write: Callable[[Path], None] | bytes) -> Path:
    """Run ``write`` (or write those bytes) on a temporary name beside ``path``, then rename
    it to ``path``: a reader never sees a half-written result file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        if isinstance(write, bytes):
            tmp.write_bytes(write)
        else:
            write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
