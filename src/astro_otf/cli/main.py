"""The ``otf`` command line: submit images, follow jobs, fetch catalogues, run a server.

It exists so that people and shell scripts can use an astro-otf service without writing
HTTP code. Every command but ``serve`` goes through :mod:`astro_otf.client` and nothing
else of the server; ``serve`` imports the server lazily so the other commands start fast
and work on a client-only install.

Exit codes: 0 success; 1 the job ended ERROR or ABORTED (or the service is not ready);
2 usage error, missing local file; 3 service unreachable; 4 any other refusal by the
service (the message it gave is printed); 5 ``--timeout`` passed while waiting;
130 interrupted.
"""

from __future__ import annotations

import json
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.table import Table

from astro_otf import __version__
from astro_otf.client import (
    Job,
    OTFClient,
    OTFClientError,
    ProtocolError,
    ServerUnreachable,
)

EXIT_OK = 0
EXIT_JOB_FAILED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
EXIT_HTTP = 4
EXIT_WAIT_TIMEOUT = 5
EXIT_INTERRUPTED = 130

_PHASE_STYLES = {
    "PENDING": "yellow",
    "QUEUED": "cyan",
    "EXECUTING": "blue",
    "COMPLETED": "green",
    "ERROR": "red",
    "ABORTED": "magenta",
}

app = typer.Typer(
    name="otf",
    help="Source finding in FITS radio images, as jobs on an astro-otf (IVOA UWS) service.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@dataclass(frozen=True, slots=True)
class _Settings:
    url: str | None
    token: str | None


# --------------------------------------------------------------------------- helpers


def _fail(message: str, code: int) -> NoReturn:
    """Print one ``error:`` line to stderr and exit with ``code``."""
    one_line = " ".join(message.split()) or "unknown error"
    typer.echo(f"error: {one_line}", err=True)
    raise typer.Exit(code)


def _print_json(doc: Any) -> None:
    typer.echo(json.dumps(doc, indent=2, sort_keys=False, default=str))


def _stdout() -> Console:
    return Console(highlight=False, soft_wrap=True)


def _time(value: datetime | None) -> str:
    return "" if value is None else value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def _phase(phase: str) -> str:
    style = _PHASE_STYLES.get(phase)
    return f"[{style}]{phase}[/{style}]" if style else phase


@contextmanager
def _client(ctx: typer.Context) -> Iterator[OTFClient]:
    """An :class:`OTFClient` from the global options; client errors become exit codes."""
    settings = ctx.find_object(_Settings) or _Settings(None, None)
    try:
        client = OTFClient(settings.url, settings.token)
    except ValueError as exc:
        _fail(str(exc), EXIT_USAGE)
    try:
        with client:
            yield client
    except ServerUnreachable as exc:
        _fail(str(exc), EXIT_UNREACHABLE)
    except OTFClientError as exc:
        _fail(exc.message, EXIT_HTTP)
    except ProtocolError as exc:
        _fail(f"unexpected answer from the service: {exc}", EXIT_HTTP)


def _parse_params(pairs: list[str] | None) -> dict[str, str]:
    params: dict[str, str] = {}
    for pair in pairs or []:
        name, sep, value = pair.partition("=")
        if not sep or not name.strip():
            raise typer.BadParameter(f"expected NAME=VALUE, got {pair!r}", param_hint="--param")
        params[name.strip()] = value
    return params


def _count_sources(path: Path) -> int | None:
    """Rows in the VOTable at ``path``, or None when it cannot be read as one."""
    try:
        from astropy.io.votable import parse_single_table

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            table = parse_single_table(str(path))
        return len(table.array)
    except Exception:
        return None


def _error_message(client: OTFClient, job: Job) -> str:
    if job.error_summary is not None and job.error_summary.message:
        return job.error_summary.message
    try:
        return client.error(job.job_id).strip() or "no error message"
    except OTFClientError:
        return "no error message"


# --------------------------------------------------------------------------- commands


def _version(value: bool) -> None:
    if value:
        typer.echo(f"otf {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    ctx: typer.Context,
    url: Annotated[
        str | None,
        typer.Option(
            "--url", envvar="OTF_URL", help="Service base URL (default http://127.0.0.1:8000)."
        ),
    ] = None,
    token: Annotated[
        str | None,
        typer.Option("--token", envvar="OTF_TOKEN", help="Bearer token sent to the service."),
    ] = None,
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    """Talk to an astro-otf service (or run one with ``otf serve``)."""
    ctx.obj = _Settings(url=url, token=token or None)


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="TCP port to listen on.")] = 8000,
) -> None:
    """Run the astro-otf service in the foreground (until interrupted)."""
    from astro_otf.app import run_server

    run_server(host=host, port=port)


@app.command()
def submit(
    ctx: typer.Context,
    image: Annotated[Path, typer.Argument(help="FITS image to search for sources.")],
    param: Annotated[
        list[str] | None,
        typer.Option(
            "--param", "-p", metavar="NAME=VALUE", help="Job parameter; repeat for several."
        ),
    ] = None,
    model: Annotated[
        str | None, typer.Option("--model", "-m", help="Source-finding model (MODEL).")
    ] = None,
    run: Annotated[
        bool, typer.Option("--run/--no-run", help="Queue the job at once, or leave it PENDING.")
    ] = True,
    run_id: Annotated[
        str | None, typer.Option("--run-id", help="Your own label for the job (RUNID).")
    ] = None,
    wait: Annotated[
        bool, typer.Option("--wait", "-w", help="Wait until the job has ended.")
    ] = False,
    timeout: Annotated[
        float | None,
        typer.Option(min=0, help="With --wait: give up after this many seconds (exit 5)."),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="Write the VOTable catalogue here (implies --wait)."),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the job document as JSON.")
    ] = False,
) -> None:
    """Upload IMAGE as a new job; print its id, or with --wait its outcome."""
    if not image.is_file():
        _fail(f"no such file: {image}", EXIT_USAGE)
    if out is not None and not out.parent.is_dir():
        _fail(f"no such directory for --out: {out.parent}", EXIT_USAGE)
    wait = wait or out is not None
    if wait and not run:
        _fail("--wait/--out need the job to run; drop --no-run", EXIT_USAGE)
    params = _parse_params(param)
    if model is not None:
        params = {k: v for k, v in params.items() if k.upper() != "MODEL"}
        params["MODEL"] = model

    with _client(ctx) as client:
        job_id = client.submit(image, params, run=run, run_id=run_id)
        if not wait:
            if as_json:
                _print_json(client.job(job_id).raw)
            else:
                typer.echo(job_id)
            return
        if not as_json:
            typer.echo(f"submitted job {job_id}; waiting for it to end", err=True)
        try:
            job = client.wait(job_id, timeout=timeout)
        except KeyboardInterrupt:
            typer.echo(f"interrupted; job {job_id} goes on on the service", err=True)
            raise typer.Exit(EXIT_INTERRUPTED) from None
        _report_outcome(client, job, out, as_json)


def _report_outcome(client: OTFClient, job: Job, out: Path | None, as_json: bool) -> None:
    """Print how a waited-for job ended, fetch its catalogue, and exit accordingly."""
    if job.is_active:
        if as_json:
            _print_json(job.raw)
        _fail(f"job {job.job_id} still {job.phase} when --timeout ran out", EXIT_WAIT_TIMEOUT)
    if job.phase != "COMPLETED":
        if as_json:
            _print_json(job.raw)
        else:
            typer.echo(f"job {job.job_id} {job.phase}")
        if job.phase == "ERROR":
            _fail(_error_message(client, job), EXIT_JOB_FAILED)
        raise typer.Exit(EXIT_JOB_FAILED)

    sources: int | None = None
    if out is not None:
        client.download_result(job.job_id, "result", out)
        sources = _count_sources(out)
    if as_json:
        _print_json(job.raw)
        return
    line = f"job {job.job_id} COMPLETED"
    if sources is not None:
        line += f", {sources} source{'' if sources == 1 else 's'}"
    if out is not None:
        line += f", catalogue written to {out}"
    typer.echo(line)


@app.command()
def rerun(
    ctx: typer.Context,
    job_id: Annotated[str, typer.Argument(metavar="ID", help="Id of a finished job.")],
    run: Annotated[
        bool, typer.Option("--run/--no-run", help="Queue the new job at once, or leave it PENDING.")
    ] = True,
    wait: Annotated[
        bool, typer.Option("--wait", "-w", help="Wait until the new job has ended.")
    ] = False,
    timeout: Annotated[
        float | None,
        typer.Option(min=0, help="With --wait: give up after this many seconds (exit 5)."),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="Write the new VOTable catalogue here (implies --wait)."),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the job document as JSON.")
    ] = False,
) -> None:
    """Run a finished job again with its recorded inputs, model and parameters."""
    if out is not None and not out.parent.is_dir():
        _fail(f"no such directory for --out: {out.parent}", EXIT_USAGE)
    wait = wait or out is not None
    if wait and not run:
        _fail("--wait/--out need the job to run; drop --no-run", EXIT_USAGE)
    with _client(ctx) as client:
        new_id = client.rerun(job_id, run=run)
        if not wait:
            if as_json:
                _print_json(client.job(new_id).raw)
            else:
                typer.echo(new_id)
            return
        if not as_json:
            typer.echo(f"job {new_id} replays job {job_id}; waiting for it to end", err=True)
        try:
            job = client.wait(new_id, timeout=timeout)
        except KeyboardInterrupt:
            typer.echo(f"interrupted; job {new_id} goes on on the service", err=True)
            raise typer.Exit(EXIT_INTERRUPTED) from None
        _report_outcome(client, job, out, as_json)


@app.command("jobs")
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
    as_json: Annotated[bool, typer.Option("--json", help="Print the list as JSON.")] = False,
) -> None:
    """List your jobs."""
    with _client(ctx) as client:
        jobs = client.jobs(phases=phase, after=after, last=last)
    if as_json:
        _print_json({"jobs": [j.raw for j in jobs]})
        return
    if not jobs:
        typer.echo("no jobs")
        return
    table = Table("Job ID", "Phase", "Run ID", "Owner", "Created (UTC)")
    for j in jobs:
        table.add_row(
            j.job_id, _phase(j.phase), j.run_id or "", j.owner_id or "", _time(j.creation_time)
        )
    _stdout().print(table)


@app.command("job")
def show_job(
    ctx: typer.Context,
    job_id: Annotated[str, typer.Argument(metavar="ID", help="Job id.")],
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the job document as JSON.")
    ] = False,
) -> None:
    """Show one job: phase, times, parameters, results, error."""
    with _client(ctx) as client:
        job = client.job(job_id)
    if as_json:
        _print_json(job.raw)
        return
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    grid.add_row("Job ID", job.job_id)
    grid.add_row("Phase", _phase(job.phase))
    for label, value in (
        ("Run ID", job.run_id),
        ("Owner", job.owner_id),
        ("Created (UTC)", _time(job.creation_time)),
        ("Started", _time(job.start_time)),
        ("Ended", _time(job.end_time)),
        ("Destruction", _time(job.destruction)),
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
    _stdout().print(grid)


@app.command()
def result(
    ctx: typer.Context,
    job_id: Annotated[str, typer.Argument(metavar="ID", help="Job id.")],
    result_id: Annotated[str, typer.Option("--id", help="Which result.")] = "result",
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Write here instead of to stdout.")
    ] = None,
) -> None:
    """Fetch a result of a job (by default the VOTable catalogue)."""
    if out is not None and not out.parent.is_dir():
        _fail(f"no such directory for --out: {out.parent}", EXIT_USAGE)
    with _client(ctx) as client:
        if out is not None:
            size = client.download_result(job_id, result_id, out)
            typer.echo(f"wrote {size} bytes to {out}", err=True)
        else:
            sys.stdout.flush()
            client.copy_result(job_id, sys.stdout.buffer, result_id)
            sys.stdout.buffer.flush()


@app.command()
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
) -> None:
    """Print the IVOA provenance of a finished job: what ran, on which inputs, by whom."""
    if fmt not in ("json", "xml", "provn", "svg"):
        _fail(f"--format must be json, xml, provn or svg, not {fmt!r}", EXIT_USAGE)
    if out is not None and not out.parent.is_dir():
        _fail(f"no such directory for --out: {out.parent}", EXIT_USAGE)
    with _client(ctx) as client:
        body = client.provenance(job_id, fmt)
    if out is not None:
        out.write_bytes(body)
        typer.echo(f"wrote {len(body)} bytes to {out}", err=True)
    else:
        sys.stdout.buffer.write(body)
        sys.stdout.buffer.flush()


@app.command()
def abort(
    ctx: typer.Context,
    job_id: Annotated[str, typer.Argument(metavar="ID", help="Job id.")],
) -> None:
    """Abort a job."""
    with _client(ctx) as client:
        job = client.abort(job_id)
    typer.echo(f"job {job.job_id} {job.phase}")


@app.command()
def delete(
    ctx: typer.Context,
    job_id: Annotated[str, typer.Argument(metavar="ID", help="Job id.")],
) -> None:
    """Delete a job and its results."""
    with _client(ctx) as client:
        client.delete(job_id)
    typer.echo(f"deleted job {job_id}")


@app.command()
def health(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print the answers as JSON.")] = False,
) -> None:
    """Check that the service is up and ready (exit 1 when not ready)."""
    with _client(ctx) as client:
        alive = client.health()
        ready = client.ready()
    if as_json:
        _print_json({"health": alive, "ready": ready})
    else:
        typer.echo(f"service {client.url}: {alive.get('status')} (version {alive.get('version')})")
        typer.echo(f"ready: {ready.get('status')}")
        checks = ready.get("checks")
        for name, check in checks.items() if isinstance(checks, dict) else ():
            typer.echo(f"  {name}: {check}")
    if ready.get("ready") is not True:
        raise typer.Exit(EXIT_JOB_FAILED)


cluster_app = typer.Typer(
    help="Start a Dask cluster on a batch system for executor = dask (needs astro-otf[dask]).",
    no_args_is_help=True,
)
app.add_typer(cluster_app, name="cluster")


def _resources(values: list[str] | None) -> dict[str, float]:
    out: dict[str, float] = {}
    for item in values or []:
        name, sep, amount = item.partition("=")
        try:
            out[name.strip()] = float(amount)
        except ValueError:
            _fail(f"--resource must be NAME=AMOUNT (e.g. GPU=1), not {item!r}", EXIT_USAGE)
        if not sep or not name.strip():
            _fail(f"--resource must be NAME=AMOUNT (e.g. GPU=1), not {item!r}", EXIT_USAGE)
    return out


@cluster_app.command("slurm")
def cluster_slurm(
    jobs: Annotated[int, typer.Option(min=1, help="Slurm jobs of Dask workers.")] = 1,
    processes: Annotated[
        int, typer.Option(min=1, help="Worker processes per Slurm job (one batch each).")
    ] = 1,
    memory: Annotated[str, typer.Option(help="Memory per Slurm job.")] = "4GiB",
    walltime: Annotated[str, typer.Option(help="Walltime per Slurm job.")] = "01:00:00",
    queue: Annotated[str | None, typer.Option(help="Slurm partition.")] = None,
    account: Annotated[str | None, typer.Option(help="Slurm account.")] = None,
    resource: Annotated[
        list[str] | None,
        typer.Option(help="Dask worker resource NAME=AMOUNT (e.g. GPU=1); repeat for several."),
    ] = None,
    gres: Annotated[
        str | None, typer.Option(help="Generic resources for sbatch --gres (e.g. gpu:1).")
    ] = None,
    host: Annotated[
        str, typer.Option(help="Interface the scheduler listens on (reachable from the nodes).")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Scheduler port.")] = 8786,
    log_directory: Annotated[
        Path | None, typer.Option(help="Where the Slurm jobs write their logs.")
    ] = None,
    address_file: Annotated[
        Path | None, typer.Option(help="Also write the scheduler address to this file.")
    ] = None,
) -> None:
    """Run a Dask scheduler here and Dask workers as Slurm jobs, until interrupted."""
    import signal
    import threading

    try:
        from astro_otf.execution.clusters import (
            SlurmOptions,
            SlurmUnavailable,
            check_slurm,
            slurm_cluster,
        )
    except ImportError as exc:  # pragma: no cover - depends on the install
        _fail(f"otf cluster needs astro-otf[dask] ({exc})", EXIT_USAGE)
    try:
        check_slurm()
    except SlurmUnavailable as exc:
        _fail(f"cannot start Dask workers on Slurm: {exc}", EXIT_JOB_FAILED)
    options = SlurmOptions(
        jobs=jobs,
        processes=processes,
        memory=memory,
        walltime=walltime,
        queue=queue,
        account=account,
        resources=_resources(resource),
        gres=gres,
        host=host,
        port=port,
        log_directory=str(log_directory) if log_directory else None,
    )
    try:
        cluster = slurm_cluster(options)
    except Exception as exc:
        _fail(f"could not start the Slurm cluster: {type(exc).__name__}: {exc}", EXIT_USAGE)
    address = cluster.scheduler_address
    if address_file is not None:
        address_file.write_text(address + "\n")
    typer.echo(
        f"Dask scheduler at {address} with {jobs} Slurm job(s) of workers; run the service "
        f"with executor = dask and dask_address = {address}",
        err=True,
    )
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        stop.wait()
    finally:
        cluster.close()
        typer.echo("cluster closed; its Slurm jobs are cancelled", err=True)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
