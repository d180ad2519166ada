"""The commands about jobs that exist: list, show, wait for, read the log of, fetch the
results and provenance of, abort and delete them.

It exists so that everything ``otf`` does to a job after it was created is in one module;
each command is one client call or a few, and its output (a Rich table, or ``--json``).
Commands that take several job ids report each job and go on past a refused one.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.columns import Columns
from rich.progress_bar import ProgressBar
from rich.table import Table

from astro_otf.cli.common import (
    RESULT_FILES,
    format_duration,
    progress_fraction,
    progress_text,
    result_filename,
    safe_name,
)
from astro_otf.cli.context import (
    EXIT_HTTP,
    EXIT_JOB_FAILED,
    EXIT_USAGE,
    EXIT_WAIT_TIMEOUT,
    error_message,
    fail,
    interrupted,
    phase_markup,
    print_json,
    refusal,
    service_client,
    stdout,
    utc_time,
)
from astro_otf.cli.follow import follow
from astro_otf.client import Job, OTFClient, OTFClientError


def list_jobs(
    ctx: typer.Context,
    phase: Annotated[
        list[str] | None,
        typer.Option("--phase", help="Only jobs in this phase; repeat for several."),
    ] = None,
    after: Annotated[
        str | None, typer.Option(help="Only jobs created after this ISO-8601 time.")
    ] = None,
    last: Annotated[int | None, typer.Option(min=1, help="Only the N most recent jobs.")] = None,
    run_id: Annotated[
        list[str] | None,
        typer.Option("--run-id", help="Only jobs with this run id; repeat for several."),
    ] = None,
    image: Annotated[
        list[str] | None,
        typer.Option(
            "--image", help="Only jobs on this input file name ('*' matches anything); repeat."
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the list as JSON.")] = False,
) -> None:
    """List your jobs."""
    with service_client(ctx) as client:
        jobs = client.jobs(phases=phase, after=after, last=last, run_id=run_id, image=image)
    if as_json:
        print_json({"jobs": [j.raw for j in jobs]})
        return
    if not jobs:
        typer.echo("no jobs")
        return
    now = datetime.now(UTC)
    table = Table(
        "Job ID", "Phase", "Run ID", "Image", "Model", "Sources", "Progress", "Owner",
        "Created (UTC)",
    )  # fmt: skip
    for j in jobs:
        table.add_row(
            j.job_id,
            phase_markup(j.phase),
            j.run_id or "",
            j.image or "",
            j.model_id or "",
            "" if j.sources is None else str(j.sources),
            progress_text(j.phase, j.progress, now) if j.progress is not None else "",
            j.owner_id or "",
            utc_time(j.creation_time),
        )
    stdout().print(table)


def show_job(
    ctx: typer.Context,
    job_id: Annotated[str, typer.Argument(metavar="ID", help="Job id.")],
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the job document as JSON.")
    ] = False,
) -> None:
    """Show one job: phase, times, parameters, results, error."""
    with service_client(ctx) as client:
        job = client.job(job_id)
    if as_json:
        print_json(job.raw)
        return
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    grid.add_row("Job ID", job.job_id)
    grid.add_row("Phase", phase_markup(job.phase))
    if job.is_active:
        progress = job.progress
        bar = ProgressBar(total=1.0, completed=progress_fraction(job.phase, progress), width=30)
        grid.add_row("Progress", Columns([bar, progress_text(job.phase, progress)]))
        if job.quote_time is not None:
            left = format_duration((job.quote_time - datetime.now(UTC)).total_seconds())
            grid.add_row("Quote", f"{utc_time(job.quote_time)} (in {left})")
    for label, value in (
        ("Image", job.image),
        ("Cached from", job.cached_from),
        ("Run ID", job.run_id),
        ("Owner", job.owner_id),
        ("Created (UTC)", utc_time(job.creation_time)),
        ("Started", utc_time(job.start_time)),
        ("Ended", utc_time(job.end_time)),
        ("Destruction", utc_time(job.destruction)),
        ("Max duration", f"{job.execution_duration} s" if job.execution_duration else None),
    ):
        if value:
            grid.add_row(label, value)
    if job.parameters:
        grid.add_row("Parameters", "")
    for name, value in job.parameters.items():
        grid.add_row(f"  {name}", value)
    for ref in job.results:
        size = f" ({ref.size} bytes)" if ref.size is not None else ""
        grid.add_row(f"Result {ref.id}", f"{ref.href}{size}")
    if job.error_summary is not None:
        grid.add_row("Error", f"[red]{job.error_summary.type}: {job.error_summary.message}[/red]")
    stdout().print(grid)


def show(
    ctx: typer.Context,
    job_id: Annotated[str, typer.Argument(metavar="ID", help="Job id.")],
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the job document as JSON.")
    ] = False,
) -> None:
    """Show one job (the same as ``otf job``)."""
    show_job(ctx, job_id, as_json)


def wait_jobs(
    ctx: typer.Context,
    job_ids: Annotated[list[str], typer.Argument(metavar="ID...", help="Job ids.")],
    timeout: Annotated[
        float | None, typer.Option(min=0, help="Give up after this many seconds (exit 5).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the jobs as JSON.")] = False,
) -> None:
    """Wait until every job has ended, with a progress bar each (the service's event
    stream; polling where there is none); exit 1 if one did not complete."""
    with service_client(ctx) as client:
        try:
            found = follow(client, job_ids, timeout=timeout, show=not as_json)
        except KeyboardInterrupt:
            interrupted(client, job_ids, None)
    jobs = [found[j] for j in dict.fromkeys(job_ids)]
    if as_json:
        print_json({"jobs": [j.raw for j in jobs]})
    else:
        for job in jobs:
            typer.echo(f"job {job.job_id} {job.phase}")
    if any(j.is_active for j in jobs):
        raise typer.Exit(EXIT_WAIT_TIMEOUT)
    if any(j.phase != "COMPLETED" for j in jobs):
        raise typer.Exit(EXIT_JOB_FAILED)


def job_log(
    ctx: typer.Context,
    job_id: Annotated[str, typer.Argument(metavar="ID", help="Job id.")],
    tail: Annotated[
        int | None, typer.Option("--tail", "-n", min=1, max=10000, help="Only the last N lines.")
    ] = None,
) -> None:
    """Print a job's log (what the service did with it, stage by stage)."""
    with service_client(ctx) as client:
        text = client.log(job_id, tail)
    typer.echo(text, nl=not text.endswith("\n"))


def result(
    ctx: typer.Context,
    job_id: Annotated[str, typer.Argument(metavar="ID", help="Job id.")],
    result_id: Annotated[str, typer.Option("--id", help="Which result.")] = "result",
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Write here instead of to stdout.")
    ] = None,
    as_json: Annotated[
        bool,
        typer.Option(
            "--json",
            help="Write the result to --out (default ./ID-<name>, as otf results names it) "
            "and print what was written as JSON: jobId, resultId, path, bytes, mediaType.",
        ),
    ] = False,
) -> None:
    """Fetch a result of a job (by default the VOTable catalogue)."""
    if as_json and out is None:
        out = Path(safe_name(f"{job_id}-{RESULT_FILES.get(result_id, result_id)}", "result"))
    if out is not None and not out.parent.is_dir():
        fail(f"no such directory for --out: {out.parent}", EXIT_USAGE)
    with service_client(ctx) as client:
        try:
            if out is not None:
                saved = client.save_result(job_id, result_id, out)
            else:
                sys.stdout.flush()
                client.copy_result(job_id, sys.stdout.buffer, result_id)
                sys.stdout.buffer.flush()
                return
        except OTFClientError as exc:
            if exc.status_code != 404:
                raise
            _no_results(client, client.job(job_id), exc.message)
    if as_json:
        print_json(saved.to_json())
    else:
        typer.echo(f"wrote {saved.size} bytes to {out}", err=True)


def _no_results(client: OTFClient, job: Job, message: str | None = None) -> NoReturn:
    """Exit for a job that has no (such) result: 1 with its phase and error when it ended
    ERROR or ABORTED, 2 while it is still going, else the service's ``message``."""
    if job.phase == "ERROR":
        summary = error_message(client, job)
        fail(f"job {job.job_id} ended ERROR: {summary}", EXIT_JOB_FAILED)
    if job.phase == "ABORTED":
        fail(f"job {job.job_id} was ABORTED: it has no results", EXIT_JOB_FAILED)
    if job.is_active:
        fail(
            f"job {job.job_id} is still {job.phase}: no results yet (otf wait {job.job_id})",
            EXIT_USAGE,
        )
    fail(message or f"job {job.job_id} ({job.phase}) has no results", EXIT_HTTP)


def results(
    ctx: typer.Context,
    job_ids: Annotated[list[str], typer.Argument(metavar="ID...", help="Job ids.")],
    out: Annotated[
        Path,
        typer.Option("--out", "-o", help="Folder to write the results into (made if missing)."),
    ] = Path("."),
    result_id: Annotated[
        str | None, typer.Option("--id", help="Only this result (default: all of them).")
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print what was written as JSON.")
    ] = False,
) -> None:
    """Download jobs' results (all, or one with --id) into a folder, as ID-<name>. A job
    that ended ERROR or ABORTED is reported with its error (exit 1)."""
    if not out.exists():
        if not out.parent.is_dir():
            fail(f"no such directory for --out: {out.parent}", EXIT_USAGE)
        out.mkdir()
    elif not out.is_dir():
        fail(f"--out must be a folder: {out}", EXIT_USAGE)
    ids = list(dict.fromkeys(job_ids))
    records: list[dict[str, Any]] = []
    codes: list[int] = []
    with service_client(ctx) as client:
        for job_id in ids:
            try:
                records.append(_save_results(client, job_id, out, result_id, as_json))
            except typer.Exit as exc:  # this job's failure, already reported
                codes.append(exc.exit_code)
                records.append({"jobId": job_id, "written": [], "exitCode": exc.exit_code})
            except OTFClientError as exc:  # e.g. no such job: say so, go on with the others
                message = " ".join(refusal(ctx, exc).split())
                typer.echo(f"error: job {job_id}: {message}", err=True)
                codes.append(EXIT_HTTP)
                records.append({"jobId": job_id, "written": [], "exitCode": EXIT_HTTP})
    if as_json:
        print_json(records[0] if len(ids) == 1 else {"jobs": records})
    if codes:
        raise typer.Exit(EXIT_JOB_FAILED if EXIT_JOB_FAILED in codes else codes[0])


def _save_results(
    client: OTFClient, job_id: str, out: Path, result_id: str | None, quiet: bool
) -> dict[str, Any]:
    """Write one job's results into ``out``; a JSON record of what was written."""
    job = client.job(job_id)
    refs = [r for r in job.results if result_id is None or r.id == result_id]
    if not refs:
        if job.phase != "COMPLETED":
            _no_results(client, job)
        have = ", ".join(r.id for r in job.results) or "none"
        fail(f"job {job_id} ({job.phase}) has no result {result_id} (has: {have})", EXIT_USAGE)
    written = []
    for ref in refs:
        saved = client.save_result(job_id, ref.id, out / f"{job_id}-{result_filename(ref)}")
        written.append({"id": ref.id, "size": saved.size, **saved.to_json()})
        if not quiet:
            typer.echo(f"{ref.id}: {saved.path} ({saved.size} bytes)")
    return {"jobId": job_id, "written": written}


def provenance(
    ctx: typer.Context,
    job_id: Annotated[str, typer.Argument(metavar="ID", help="Job id.")],
    fmt: Annotated[
        str,
        typer.Option(
            "--format", "-f", help="json (PROV-JSON), xml (PROV-XML), provn (PROV-N) or svg."
        ),
    ] = "provn",
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Write here instead of to stdout.")
    ] = None,
    as_json: Annotated[
        bool,
        typer.Option(
            "--json",
            help="Write the document to --out (default ./ID-provenance.FORMAT) and print "
            "what was written as JSON: jobId, format, path, bytes, mediaType.",
        ),
    ] = False,
) -> None:
    """Print the IVOA provenance of a finished job: what ran, on which inputs, by whom."""
    if fmt not in ("json", "xml", "provn", "svg"):
        fail(f"--format must be json, xml, provn or svg, not {fmt!r}", EXIT_USAGE)
    if as_json and out is None:
        out = Path(safe_name(f"{job_id}-provenance.{fmt}", "provenance"))
    if out is not None and not out.parent.is_dir():
        fail(f"no such directory for --out: {out.parent}", EXIT_USAGE)
    with service_client(ctx) as client:
        body, media_type = client.provenance_document(job_id, fmt)
    if out is not None:
        out.write_bytes(body)
        if as_json:
            print_json(
                {
                    "jobId": job_id,
                    "format": fmt,
                    "path": str(out),
                    "bytes": len(body),
                    "mediaType": media_type,
                }
            )
        else:
            typer.echo(f"wrote {len(body)} bytes to {out}", err=True)
    else:
        sys.stdout.buffer.write(body)
        sys.stdout.buffer.flush()


def _each_job(
    ctx: typer.Context,
    job_ids: list[str],
    act: Any,
    as_json: bool,
) -> None:
    """Do ``act(client, job_id)`` (which returns ``(line, record)``) to each job; print each
    line (or, with ``as_json``, the record: one, or ``{"jobs": [...]}`` for several); a
    refused job is reported on stderr and the others go on; exit 4 if any was refused."""
    ids = list(dict.fromkeys(job_ids))
    records: list[dict[str, Any]] = []
    failed = False
    with service_client(ctx) as client:
        for job_id in ids:
            try:
                line, record = act(client, job_id)
            except OTFClientError as exc:
                failed = True
                message = refusal(ctx, exc)
                typer.echo(f"error: job {job_id}: {' '.join(message.split())}", err=True)
                records.append({"jobId": job_id, "error": message, "status": exc.status_code})
                continue
            records.append(record)
            if not as_json:
                typer.echo(line)
    if as_json and (len(ids) > 1 or not failed):
        print_json(records[0] if len(ids) == 1 else {"jobs": records})
    if failed:
        raise typer.Exit(EXIT_HTTP)


def abort(
    ctx: typer.Context,
    job_ids: Annotated[list[str], typer.Argument(metavar="ID...", help="Job ids.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the jobs as JSON.")] = False,
) -> None:
    """Abort jobs (each is reported; exit 4 if any was refused)."""

    def act(client: OTFClient, job_id: str) -> tuple[str, dict[str, Any]]:
        job = client.abort(job_id)
        return f"job {job.job_id} {job.phase}", job.raw

    _each_job(ctx, job_ids, act, as_json)


def delete(
    ctx: typer.Context,
    job_ids: Annotated[list[str], typer.Argument(metavar="ID...", help="Job ids.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the outcomes as JSON.")] = False,
) -> None:
    """Delete jobs and their results (each is reported; exit 4 if any was refused)."""

    def act(client: OTFClient, job_id: str) -> tuple[str, dict[str, Any]]:
        client.delete(job_id)
        return f"deleted job {job_id}", {"jobId": job_id, "deleted": True}

    _each_job(ctx, job_ids, act, as_json)
