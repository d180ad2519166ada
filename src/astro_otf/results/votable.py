"""The catalogue writer: an astropy Table to an IVOA VOTable 1.4 document.

A catalogue is only useful to VO tools when each column says what it is (a UCD) and in what
unit, and when the file says which job, model and parameters produced it. This module puts
both on every catalogue the service returns and refuses a table that lacks them, so that no
app can ship an undescribed column. The file is written under a temporary name in the target
folder and renamed into place, so a crash never leaves a half-written catalogue where a
result is expected (see DESIGN.md, "results are written to a temporary name").
"""

from __future__ import annotations

import io
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import astropy.units as u
from astropy.io.votable import ucd as ucd_module
from astropy.io.votable.tree import CooSys, Info, Param, Resource, VOTableFile
from astropy.table import Table

from astro_otf.imaging.facts import ImageFact
from astro_otf.results.formats import write_atomically

__all__ = ["VOTABLE_VERSION", "error_votable", "write_catalogue"]

VOTABLE_VERSION = "1.4"


def write_catalogue(
    table: Table,
    path: Path,
    *,
    infos: Mapping[str, str],
    params: Mapping[str, object] | None = None,
    facts: Sequence[ImageFact] = (),
    description: str | None = None,
    frame: str = "ICRS",
) -> Path:
    """Write ``table`` as a VOTable 1.4 catalogue at ``path`` and return ``path``.

    Every column must carry a unit (``""``, i.e. dimensionless or unitless, is allowed for
    ids, counts and ratios) and a UCD in ``column.meta["ucd"]`` that is valid against the
    UCD1+ controlled vocabulary; a column's ``description`` becomes its FIELD DESCRIPTION.
    ``infos`` (job id, model id, version, ...) and ``params`` (the job's parameters, each
    written as an INFO named ``param:<name>``) go into the ``results`` RESOURCE, after the
    DALI ``QUERY_STATUS`` INFO; ``facts`` about the image (beam, rms, size, region) become
    PARAMs of the table, with their units and UCDs. Columns with a ``pos.eq`` UCD refer to
    a COOSYS of ``frame``.
    A table of zero rows gives a valid, empty catalogue.

    Raises ValueError when a column has no unit or no valid UCD: that is a bug in the app.
    """
    _check_columns(table)
    path = Path(path)
    votable = VOTableFile.from_table(table, table_id="catalogue")
    votable.version = VOTABLE_VERSION
    resource = votable.resources[0]
    resource.type = "results"
    if description:
        resource.description = description

    resource.infos.append(Info(ID="query_status", name="QUERY_STATUS", value="OK"))
    for name, value in infos.items():
        resource.infos.append(Info(ID=_xml_id("info", name), name=name, value=str(value)))
    for param, param_value in (params or {}).items():
        resource.infos.append(
            Info(ID=_xml_id("param", param), name=f"param:{param}", value=str(param_value))
        )

    vo_table = resource.tables[0]
    vo_table.name = "catalogue"
    for fact in facts:
        vo_table.params.append(_param(votable, fact))
    for field in vo_table.fields:  # text of any length (arraysize="1" is deprecated)
        if field.datatype in ("char", "unicodeChar"):
            field.arraysize = "*"
    position_fields = [f for f in vo_table.fields if (f.ucd or "").startswith("pos.eq.")]
    if position_fields:
        coosys = CooSys(ID="sky_frame", system=frame)
        resource.coordinate_systems.append(coosys)
        for field in position_fields:
            field.ref = "sky_frame"
    votable.set_all_tables_format("tabledata")

    # astropy's C TABLEDATA writer (astropy 8.0.2) writes a NUL one byte past its 256-byte
    # row buffer when a row's text fills it exactly: heap corruption that later crashed
    # processes (seen with PYTHONMALLOC=debug). Its Python writer gives the same XML.
    return write_atomically(
        path, lambda tmp: votable.to_xml(str(tmp), _debug_python_based_parser=True)
    )


def error_votable(message: str) -> bytes:
    """A DALI error document: a ``results`` RESOURCE whose ``QUERY_STATUS`` INFO is ERROR,
    with the message as its content (what VO clients show for a failed query or job)."""
    votable = VOTableFile(version=VOTABLE_VERSION)
    resource = Resource(type="results")
    votable.resources.append(resource)
    status = Info(name="QUERY_STATUS", value="ERROR")
    status.content = message
    resource.infos.append(status)
    out = io.BytesIO()
    votable.to_xml(out, _debug_python_based_parser=True)
    return out.getvalue()


def _param(votable: VOTableFile, fact: ImageFact) -> Param:
    if isinstance(fact.value, bool | str):
        kind: dict[str, object] = {"datatype": "char", "arraysize": "*"}
        value: object = str(fact.value)
    elif isinstance(fact.value, int):
        kind, value = {"datatype": "long"}, fact.value
    else:
        kind, value = {"datatype": "double"}, float(fact.value)
    param = Param(
        votable,
        ID=_xml_id("fact", fact.name),
        name=fact.name,
        value=value,
        unit=u.Unit(fact.unit).to_string("vounit") if fact.unit else None,
        ucd=fact.ucd,
        **kind,
    )
    param.description = fact.description
    return param


def _xml_id(prefix: str, name: str) -> str:
    """An XML ID for an INFO: ``prefix_name`` with characters an ID cannot hold replaced."""
    cleaned = re.sub(r"[^A-Za-z0-9_.-]", "_", name)
    return f"{prefix}_{cleaned}"


def _check_columns(table: Table) -> None:
    problems: list[str] = []
    for name in table.colnames:
        column = table[name]
        if column.unit is None:
            problems.append(f"{name}: no unit (use '' for a dimensionless column)")
        else:
            try:
                u.Unit(column.unit).to_string("vounit")
            except (ValueError, TypeError) as exc:
                problems.append(f"{name}: unit {column.unit!s} is not a VOUnit ({exc})")
        ucd = column.meta.get("ucd")
        if not ucd:
            problems.append(f"{name}: no UCD in column.meta['ucd']")
            continue
        try:
            ucd_module.parse_ucd(ucd, check_controlled_vocabulary=True, has_colon=False)
        except ValueError as exc:
            problems.append(f"{name}: UCD {ucd!r} is not valid ({exc})")
    if problems:
        raise ValueError("catalogue columns are not fully described: " + "; ".join(problems))
