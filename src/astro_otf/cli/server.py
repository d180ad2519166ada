"""The commands that run server code on this machine: ``otf serve`` and
``otf cluster slurm``.

It exists so that the server stays out of every other command: each command here imports
the server (:mod:`astro_otf.app`, :mod:`astro_otf.execution`) inside its function, so that
``otf`` starts fast and the client commands work on an install without the server's
dependencies being loaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from astro_otf.cli.context import EXIT_JOB_FAILED, EXIT_USAGE, fail

#: ``otf cluster``: one command per batch system.
cluster_app = typer.Typer(
    help="Start a Dask cluster on a batch system for executor = dask (needs astro-otf\\[dask]).",
    no_args_is_help=True,
)


def serve(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="TCP port to listen on.")] = 8000,
) -> None:
    """Run the astro-otf service in the foreground (until interrupted)."""
    from astro_otf.app import run_server

    run_server(host=host, port=port)


def _resources(values: list[str] | None) -> dict[str, float]:
    """``--resource NAME=AMOUNT`` options as Dask worker resources."""
    out: dict[str, float] = {}
    for item in values or []:
        name, sep, amount = item.partition("=")
        try:
            out[name.strip()] = float(amount)
        except ValueError:
            fail(f"--resource must be NAME=AMOUNT (e.g. GPU=1), not {item!r}", EXIT_USAGE)
        if not sep or not name.strip():
            fail(f"--resource must be NAME=AMOUNT (e.g. GPU=1), not {item!r}", EXIT_USAGE)
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
        fail(f"otf cluster needs astro-otf[dask] ({exc})", EXIT_USAGE)
    try:
        check_slurm()
    except SlurmUnavailable as exc:
        fail(f"cannot start Dask workers on Slurm: {exc}", EXIT_JOB_FAILED)
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
        fail(f"could not start the Slurm cluster: {type(exc).__name__}: {exc}", EXIT_USAGE)
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
