"""``otf submit`` of several images: send them all, follow the jobs, fetch the catalogues,
print a summary.

It exists apart from the one-image path (:mod:`astro_otf.cli.submit`) because a batch
shows other things: one progress bar for all the bytes sent, one bar per job while they run
(the event stream), a table of every image at the end, and an image the service refuses
does not stop the others. Each step is a function of its own over a :class:`Batch`, which
also tells a Ctrl-C at any step which jobs exist already.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from astro_otf.cli.context import (
    EXIT_JOB_FAILED,
    EXIT_WAIT_TIMEOUT,
    error_message,
    interrupted,
    phase_markup,
    print_json,
    stdout,
)
from astro_otf.cli.follow import follow
from astro_otf.cli.inputs import label_of, stem
from astro_otf.client import Job, OTFClient, OTFClientError


@dataclass(slots=True)
class Batch:
    """What a bulk submission has done so far, step by step."""

    #: The name each source goes by (``str(source)`` -> file name, "" when unknown).
    names: dict[str, str]
    #: The sources that have a job, with its id, in the order they were sent.
    submitted: list[tuple[Path | str, str]] = field(default_factory=list)
    #: The sources the service refused, with its message.
    refused: list[tuple[Path | str, str]] = field(default_factory=list)
    #: The source being sent right now (a Ctrl-C then may or may not leave a job).
    sending: str | None = None
    #: Each job as last read.
    jobs: dict[str, Job] = field(default_factory=dict)
    #: Where each completed job's catalogue was written.
    written: dict[str, Path] = field(default_factory=dict)

    def label(self, source: Path | str) -> str:
        """The name a source is shown by: its file name, else the argument as given."""
        return self.names[str(source)] or str(source)

    @property
    def job_ids(self) -> list[str]:
        """The ids of the jobs created so far, in order."""
        return [job_id for _, job_id in self.submitted]


def upload_images(
    client: OTFClient,
    batch: Batch,
    sources: list[Path | str],
    params: dict[str, str],
    *,
    run: bool,
    run_id: str | None,
    nocache: bool,
    console: Console,
    quiet: bool,
) -> None:
    """Create a job for each source, with a progress bar for the bytes sent; each job's
    RUNID is its file's stem unless ``run_id``. A refused image is noted and skipped."""
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    total = sum(s.stat().st_size for s in sources if isinstance(s, Path))
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TimeElapsedColumn(),
        console=console,
        disable=quiet,
    ) as bar:
        task = bar.add_task(f"uploading {len(sources)} images", total=total)
        for source in sources:
            name = batch.names[str(source)]
            label = run_id if run_id is not None else (stem(Path(name)) if name else None)
            batch.sending = name or str(source)
            try:
                job_id = client.submit(
                    source,
                    params,
                    run=run,
                    run_id=label,
                    progress=lambda n: bar.advance(task, n),
                    nocache=nocache,
                )
                batch.submitted.append((source, job_id))
            except OTFClientError as exc:  # this image refused (e.g. a bad parameter)
                batch.refused.append((source, exc.message))
            batch.sending = None


def wait_for_jobs(
    client: OTFClient, batch: Batch, timeout: float | None, console: Console, quiet: bool
) -> None:
    """Follow the batch's jobs until they end (or ``timeout``), a bar each."""
    labels = {job_id: batch.label(source) for source, job_id in batch.submitted}
    batch.jobs = follow(
        client, batch.job_ids, labels, timeout=timeout, show=not quiet, console=console
    )


def download_catalogues(client: OTFClient, batch: Batch, out: Path) -> None:
    """Write the VOTable of each completed job into the folder ``out`` as ``<stem>.xml``
    (``<stem>-<job id>.xml`` when two images share a stem)."""
    taken: set[str] = set()
    for source, job_id in batch.submitted:
        if batch.jobs[job_id].phase != "COMPLETED":
            continue
        name_stem = stem(Path(batch.names[str(source)] or job_id))
        name = name_stem + ".xml"
        if name in taken:
            name = f"{name_stem}-{job_id}.xml"
        taken.add(name)
        batch.written[job_id] = out / name
        client.download_result(job_id, "result", batch.written[job_id])


def print_report(client: OTFClient, batch: Batch, as_json: bool) -> None:
    """Print every image's outcome: a table (job, phase, sources found, catalogue or
    error), or with ``as_json`` the job documents and the refusals."""
    if as_json:
        print_json(
            {
                "jobs": [batch.jobs[job_id].raw for job_id in batch.job_ids],
                "refused": [{"image": str(p), "message": m} for p, m in batch.refused],
            }
        )
        return
    table = Table("Image", "Job ID", "Run ID", "Phase", "Sources", "Catalogue / error")
    for source, job_id in batch.submitted:
        job = batch.jobs[job_id]
        sources_found = job.job_info.get("n_sources") if job.phase == "COMPLETED" else None
        detail = escape(str(batch.written.get(job_id, ""))) if job.phase == "COMPLETED" else ""
        if job.cached_from:
            detail = f"{detail} (cached from {job.cached_from})".strip()
        if job.phase == "ERROR":
            detail = f"[red]{escape(error_message(client, job))}[/red]"
        table.add_row(
            escape(batch.label(source)),
            job_id,
            escape(job.run_id or ""),
            phase_markup(job.phase),
            "" if sources_found is None else str(sources_found),
            detail,
        )
    for source, message in batch.refused:
        table.add_row(
            escape(batch.label(source)),
            "",
            "",
            "[red]refused[/red]",
            "",
            f"[red]{escape(message)}[/red]",
        )
    stdout().print(table)


def submit_many(
    client: OTFClient,
    sources: list[Path | str],
    params: dict[str, str],
    run: bool,
    run_id: str | None,
    nocache: bool,
    wait: bool,
    timeout: float | None,
    out: Path | None,
    as_json: bool,
) -> None:
    """Bulk submission: send the images, wait for the jobs when ``wait``, fetch the
    catalogues into ``out``, print the summary; exit 1 when an image was refused or a job
    failed, 5 when one was still running at ``timeout``."""
    err = Console(stderr=True, highlight=False)
    batch = Batch(names={str(s): label_of(client, s) for s in sources})
    try:
        upload_images(
            client,
            batch,
            sources,
            params,
            run=run,
            run_id=run_id,
            nocache=nocache,
            console=err,
            quiet=as_json,
        )
        if wait and batch.submitted:
            wait_for_jobs(client, batch, timeout, err, as_json)
    except KeyboardInterrupt:
        interrupted(client, batch.job_ids, out, batch.sending)
    if not (wait and batch.submitted):
        batch.jobs = {job_id: client.job(job_id) for job_id in batch.job_ids}
    if out is not None:
        download_catalogues(client, batch, out)
    print_report(client, batch, as_json)
    if batch.refused or any(j.phase in ("ERROR", "ABORTED") for j in batch.jobs.values()):
        raise typer.Exit(EXIT_JOB_FAILED)
    if wait and any(j.is_active for j in batch.jobs.values()):
        raise typer.Exit(EXIT_WAIT_TIMEOUT)
