"""What the service offers and reports, apart from any one job: ``otf models``,
``otf datasets``, ``otf health`` and ``otf accounting``.

It exists so that the commands a person runs before submitting (which models, which
datasets, is the service up) and the usage report are found together, apart from the job
commands of :mod:`astro_otf.cli.jobs`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from astro_otf.cli.context import EXIT_JOB_FAILED, print_json, service_client, stdout

#: ``otf models`` (the list) and ``otf models describe ID``.
models_app = typer.Typer(help="The models the service offers.", invoke_without_command=True)


@models_app.callback()
def models_list(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print the list as JSON.")] = False,
) -> None:
    """List the models (``otf models describe ID`` for one model's parameters)."""
    if ctx.invoked_subcommand is not None:
        return
    with service_client(ctx) as client:
        doc = client.models()
    if as_json:
        print_json(doc)
        return
    table = Table("Model", "Versions", "Precisions", "Description")
    for m in doc.get("models", []):
        name = m.get("id", "")
        if name == doc.get("default"):
            name += " (default)"
        description = str(m.get("description", ""))
        if m.get("available") is False:  # a command app whose environment is missing
            description = f"UNAVAILABLE: {m.get('reason', '')} | {description}"
        table.add_row(
            name,
            _versions_text(m),
            ", ".join(m.get("precisions", [])),
            description,
        )
    stdout().print(table)


def _versions_text(model: dict[str, Any]) -> str:
    """The installed versions, newest (the default) first: "2.0 (default), 1.0"."""
    versions = [str(v) for v in model.get("versions") or []]
    if len(versions) < 2:
        return str(model.get("version", ""))
    return ", ".join([f"{versions[0]} (default)", *versions[1:]])


@models_app.command("describe")
def models_describe(
    ctx: typer.Context,
    model_id: Annotated[str, typer.Argument(metavar="ID", help="Model id.")],
    version: Annotated[
        str | None,
        typer.Option("--version", help="Describe this installed version (default: the newest)."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the schema as JSON.")] = False,
) -> None:
    """One model's parameters: type, default, limits, allowed values, description."""
    with service_client(ctx) as client:
        doc = client.model(model_id, version)
    if as_json:
        print_json(doc)
        return
    typer.echo(f"{doc.get('id')} {doc.get('version')}: {doc.get('description', '')}")
    if len(doc.get("versions") or []) > 1:
        typer.echo(f"installed versions: {_versions_text(doc)}")
    table = Table("Parameter", "Type", "Default", "Range / values", "Unit", "Description")
    for p in doc.get("parameters", []):
        limits = ", ".join(str(v) for v in p.get("allowed") or []) or (
            f"{p.get('minimum', '')} .. {p.get('maximum', '')}"
            if p.get("minimum") is not None or p.get("maximum") is not None
            else ""
        )
        table.add_row(
            str(p.get("name")),
            str(p.get("type")),
            str(p.get("default", "")),
            limits,
            str(p.get("unit") or ""),
            str(p.get("description", "")),
        )
    stdout().print(table)


def datasets(
    ctx: typer.Context,
    name: Annotated[
        str | None, typer.Argument(metavar="[NAME]", help="A dataset: list its images.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the listing as JSON.")] = False,
) -> None:
    """The datasets the service offers, or one dataset's images with their shape, beam and
    frequency (search them with `otf submit --dataset NAME`)."""
    with service_client(ctx) as client:
        if name is None:
            found = client.datasets()
            if as_json:
                print_json({"datasets": found})
                return
            if not found:
                typer.echo("no datasets")
                return
            table = Table("Name", "Files", "Description")
            for d in found:
                table.add_row(
                    escape(str(d.get("name"))),
                    escape(str(d.get("pattern", ""))),
                    escape(str(d.get("description", ""))),
                )
            stdout().print(table)
            return
        doc = client.dataset(name)
    if as_json:
        print_json(doc)
        return
    table = Table("Path", "Shape", "Beam (arcsec)", "Frequency (MHz)", "Object", "Bytes")
    for image in doc["images"]:
        shape = image.get("shape")
        beam = image.get("beam")
        freq = image.get("frequency_hz")
        table.add_row(
            escape(str(image.get("path"))),
            " x ".join(str(n) for n in shape) if isinstance(shape, list) else "",
            f"{beam['major_arcsec']:.1f} x {beam['minor_arcsec']:.1f}"
            if isinstance(beam, dict)
            else "",
            f"{freq / 1e6:.3f}" if isinstance(freq, int | float) else "",
            escape(str(image.get("object") or "")),
            str(image.get("bytes", "")) + ("" if image.get("complete", True) else " (incomplete)"),
        )
    stdout().print(table)


def health(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print the answers as JSON.")] = False,
) -> None:
    """Check that the service is up and ready (exit 1 when not ready)."""
    with service_client(ctx) as client:
        alive = client.health()
        ready = client.ready()
    if as_json:
        print_json({"health": alive, "ready": ready})
    else:
        typer.echo(f"service {client.url}: {alive.get('status')} (version {alive.get('version')})")
        typer.echo(f"ready: {ready.get('status')}")
        checks = ready.get("checks")
        for name, check in checks.items() if isinstance(checks, dict) else ():
            typer.echo(f"  {name}: {check}")
    if ready.get("ready") is not True:
        raise typer.Exit(EXIT_JOB_FAILED)


def _bytes_text(size: Any) -> str:
    """A byte count in decimal units, to one decimal ("12.3 MB"; "" when not a number)."""
    if not isinstance(size, int | float):
        return ""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(size) < 1000 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return ""  # pragma: no cover


def _limit_text(used: Any, limit: Any, shown: Callable[[Any], str] = str) -> str:
    """A quota's use, ``used / limit`` when there is a limit."""
    return shown(used) if limit is None else f"{shown(used)} / {shown(limit)}"


def accounting(
    ctx: typer.Context,
    since: Annotated[
        str | None,
        typer.Option(help="Start of the period (ISO 8601, e.g. 2026-11-01); default 30 days ago."),
    ] = None,
    until: Annotated[
        str | None, typer.Option(help="End of the period (ISO 8601); default now.")
    ] = None,
    owner: Annotated[
        str | None, typer.Option(help="Only this owner (operators; others see only their own).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the document as JSON.")] = False,
) -> None:
    """What you used over a period (an operator: every owner): jobs by phase and model, CPU
    and wall seconds, bytes, and each quota's use."""
    with service_client(ctx) as client:
        doc = client.accounting(since, until, owner)
    if as_json:
        print_json(doc)
        return
    period = doc.get("period") or {}
    table = Table(
        "Owner",
        "Jobs",
        "By phase",
        "By model",
        "CPU s",
        "Wall s",
        "Computed",
        "Stored",
        "Active",
        title=f"{period.get('since')} to {period.get('until')}",
    )
    rows = list(doc["owners"])
    if len(rows) > 1:
        rows.append({**doc.get("totals", {}), "owner": "total", "quota": None})
    for o in rows:
        jobs = o.get("jobs") or {}
        quota = o.get("quota") or {}
        active = quota.get("active_jobs") or {"used": o.get("active_jobs"), "limit": None}
        stored = quota.get("stored_bytes") or {"used": o.get("bytes_stored"), "limit": None}
        table.add_row(
            escape(str(o.get("owner") or "anonymous")),
            str(jobs.get("total", "")),
            escape(", ".join(f"{k} {v}" for k, v in (jobs.get("by_phase") or {}).items())),
            escape(", ".join(f"{k} {v}" for k, v in (jobs.get("by_model") or {}).items())),
            f"{o.get('cpu_seconds', 0):.1f}",
            f"{o.get('wall_seconds', 0):.1f}",
            _bytes_text(o.get("bytes_computed")),
            _limit_text(stored["used"], stored["limit"], _bytes_text),
            _limit_text(active["used"], active["limit"]),
        )
    stdout().print(table)
