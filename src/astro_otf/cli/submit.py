"""``otf submit``, ``otf rerun`` and ``otf upload``: the commands that create jobs or send
images.

It exists so that the path of one job (create it, print its id or wait for it, fetch its
catalogue, exit by how it ended) reads in one place; several images go to
:mod:`astro_otf.cli.bulk`, which shows a batch differently.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Annotated

import typer

from astro_otf.cli.bulk import submit_many
from astro_otf.cli.context import (
    EXIT_JOB_FAILED,
    EXIT_USAGE,
    EXIT_WAIT_TIMEOUT,
    error_message,
    fail,
    interrupted,
    parse_params,
    print_json,
    service_client,
)
from astro_otf.cli.follow import follow
from astro_otf.cli.inputs import dataset_refs, expand_images
from astro_otf.cli.roi import ROI_NAMES, roi_params
from astro_otf.client import Job, OTFClient


def submit(
    ctx: typer.Context,
    images: Annotated[
        list[str] | None,
        typer.Argument(
            metavar="IMAGE...",
            help="FITS images to search: files, folders (every .fits inside), glob "
            "patterns ('data/**/*.fits', quoted so that the shell leaves them alone), or "
            "files already on the service: upload:ID (see otf upload) or sha256:HEX.",
        ),
    ] = None,
    upload_id: Annotated[
        list[str] | None,
        typer.Option(
            "--upload-id",
            "-u",
            metavar="ID",
            help="Search a file stored with `otf upload` (no bytes sent); repeat for several.",
        ),
    ] = None,
    param: Annotated[
        list[str] | None,
        typer.Option(
            "--param", "-p", metavar="NAME=VALUE", help="Job parameter; repeat for several."
        ),
    ] = None,
    model: Annotated[
        str | None, typer.Option("--model", "-m", help="Source-finding model (MODEL).")
    ] = None,
    roi: Annotated[
        tuple[str, str, str, str] | None,
        typer.Option(
            "--roi",
            metavar="RA DEC W H",
            help="Region of interest: the centre in degrees (RA may be negative: -0.5 is "
            "359.5) or sexagesimal (17h09m38.4s -43d12m45s, 17:09:38.4 -43:12:45: RA in hours), "
            "width and height in pixels (100) or as angles (3arcmin, 5', 30\", 0.1deg).",
        ),
    ] = None,
    run: Annotated[
        bool, typer.Option("--run/--no-run", help="Queue the job at once, or leave it PENDING.")
    ] = True,
    run_id: Annotated[
        str | None,
        typer.Option(
            "--run-id",
            help="Your own label for the job (RUNID); several images get their file stems.",
        ),
    ] = None,
    no_cache: Annotated[
        bool,
        typer.Option(
            "--no-cache",
            help="Run even when a finished job of the same input, model and parameters "
            "could give its results (NOCACHE).",
        ),
    ] = False,
    wait: Annotated[
        bool, typer.Option("--wait", "-w", help="Wait until the job has ended.")
    ] = False,
    timeout: Annotated[
        float | None,
        typer.Option(min=0, help="With --wait: give up after this many seconds (exit 5)."),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            "-o",
            help="Write the VOTable catalogue here (implies --wait): a file for one image, a "
            "folder (made if missing) for several, or an existing folder.",
        ),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the job document(s) as JSON.")
    ] = False,
    dataset: Annotated[
        str | None,
        typer.Option(
            "--dataset",
            "-d",
            metavar="NAME",
            help="Search every image of a dataset on the service (see otf datasets), one job "
            "each, all with one run id (the dataset's name unless --run-id).",
        ),
    ] = None,
    glob_pattern: Annotated[
        str | None,
        typer.Option(
            "--glob",
            metavar="PATTERN",
            help="With --dataset: only its images whose path or file name matches "
            "('*.fits', 'sub/*_I.fits').",
        ),
    ] = None,
) -> None:
    """Create a job for each IMAGE; print the job ids, or with --wait the outcomes."""
    sources = expand_images(images or [])
    sources += [f"upload:{u}" for u in upload_id or []]
    if glob_pattern is not None and dataset is None:
        fail("--glob selects images of a --dataset; name one", EXIT_USAGE)
    if dataset is not None:
        with service_client(ctx) as client:
            sources += dataset_refs(client, dataset, glob_pattern)
        run_id = run_id if run_id is not None else dataset
    if not sources:
        fail("name an IMAGE (or --upload-id ID) to search", EXIT_USAGE)
    sources = list(dict.fromkeys(sources))
    bulk = len(sources) > 1 or (out is not None and (out.is_dir() or str(out).endswith("/")))
    if out is not None:
        folder = out if bulk else out.parent
        if bulk and not out.exists():
            if not out.parent.is_dir():
                fail(f"no such directory for --out: {out.parent}", EXIT_USAGE)
            out.mkdir()
        elif not folder.is_dir():
            fail(f"no such directory for --out: {folder}", EXIT_USAGE)
    wait = wait or out is not None
    if wait and not run:
        fail("--wait/--out need the job to run; drop --no-run", EXIT_USAGE)
    params = parse_params(param)
    if model is not None:
        params = {k: v for k, v in params.items() if k.upper() != "MODEL"}
        params["MODEL"] = model
    if roi is not None:
        params = {k: v for k, v in params.items() if k.upper() not in ROI_NAMES}
        params.update(roi_params(*roi))

    with service_client(ctx) as client:
        if bulk:
            submit_many(client, sources, params, run, run_id, no_cache, wait, timeout, out, as_json)
            return
        try:
            job_id = client.submit(sources[0], params, run=run, run_id=run_id, nocache=no_cache)
        except KeyboardInterrupt:
            interrupted(client, [], out, sending=str(sources[0]))
        follow_one(client, job_id, f"submitted job {job_id}", wait, timeout, out, as_json)


def follow_one(
    client: OTFClient,
    job_id: str,
    what: str,
    wait: bool,
    timeout: float | None,
    out: Path | None,
    as_json: bool,
) -> None:
    """After creating one job: print its id, or wait for it and report how it ended."""
    if not wait:
        if as_json:
            print_json(client.job(job_id).raw)
        else:
            typer.echo(job_id)
        return
    if not as_json:
        typer.echo(f"{what}; waiting for it to end", err=True)
    try:
        job = follow(client, [job_id], timeout=timeout, show=not as_json)[job_id]
    except KeyboardInterrupt:
        interrupted(client, [job_id], out.parent if out is not None else None)
    report_outcome(client, job, out, as_json)


def report_outcome(client: OTFClient, job: Job, out: Path | None, as_json: bool) -> None:
    """Print how a waited-for job ended, fetch its catalogue, and exit accordingly."""
    if job.is_active:
        if as_json:
            print_json(job.raw)
        fail(f"job {job.job_id} still {job.phase} when --timeout ran out", EXIT_WAIT_TIMEOUT)
    if job.phase != "COMPLETED":
        if as_json:
            print_json(job.raw)
        else:
            typer.echo(f"job {job.job_id} {job.phase}")
        if job.phase == "ERROR":
            fail(error_message(client, job), EXIT_JOB_FAILED)
        raise typer.Exit(EXIT_JOB_FAILED)

    sources: int | None = None
    if out is not None:
        client.download_result(job.job_id, "result", out)
        sources = count_sources(out)
    if as_json:
        print_json(job.raw)
        return
    line = f"job {job.job_id} COMPLETED"
    if sources is not None:
        line += f", {sources} source{'' if sources == 1 else 's'}"
    if out is not None:
        line += f", catalogue written to {out}"
    typer.echo(line)


def count_sources(path: Path) -> int | None:
    """Rows in the VOTable at ``path``, or None when it cannot be read as one."""
    try:
        from astropy.io.votable import parse_single_table

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            table = parse_single_table(str(path))
        return len(table.array)
    except Exception:
        return None


def rerun(
    ctx: typer.Context,
    job_id: Annotated[str, typer.Argument(metavar="ID", help="Id of a finished job.")],
    param: Annotated[
        list[str] | None,
        typer.Option(
            "--param",
            "-p",
            metavar="NAME=VALUE",
            help="Change this model parameter (e.g. threshold=0.6); repeat for several.",
        ),
    ] = None,
    run_id: Annotated[
        str | None, typer.Option("--run-id", help="Your own label for the new job (RUNID).")
    ] = None,
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
    """Run a finished job again on the same input (not sent again), with its model and
    parameters but for those given with -p."""
    if out is not None and not out.parent.is_dir():
        fail(f"no such directory for --out: {out.parent}", EXIT_USAGE)
    wait = wait or out is not None
    if wait and not run:
        fail("--wait/--out need the job to run; drop --no-run", EXIT_USAGE)
    overrides = parse_params(param)
    with service_client(ctx) as client:
        new_id = client.rerun(job_id, overrides, run=run, run_id=run_id)
        follow_one(
            client, new_id, f"job {new_id} replays job {job_id}", wait, timeout, out, as_json
        )


def upload(
    ctx: typer.Context,
    files: Annotated[
        list[Path], typer.Argument(metavar="FILE...", help="FITS images to store on the service.")
    ],
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the upload records as JSON.")
    ] = False,
) -> None:
    """Store FITS images on the service once; print each upload id, for
    `otf submit --upload-id ID` (or IMAGE upload:ID) as often as you like."""
    for path in files:
        if not path.is_file():
            fail(f"no such file: {path}", EXIT_USAGE)
    records = []
    with service_client(ctx) as client:
        for path in files:
            records.append(client.upload(path))
    if as_json:
        print_json(records[0] if len(records) == 1 else {"uploads": records})
        return
    for path, record in zip(files, records, strict=True):
        if len(files) == 1:
            typer.echo(record["upload_id"])
        else:
            typer.echo(f"{record['upload_id']}\t{path}")
