"""The interactive front ends: ``otf dashboard`` (terminal) and ``otf gui`` (desktop).

It exists so that each front end is started the same way, with a client built from the
root options, while its code (Textual, Qt) is imported only when its command runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from astro_otf.cli.context import EXIT_USAGE, fail, service_client


def dashboard(
    ctx: typer.Context,
    refresh: Annotated[
        float, typer.Option(min=0.5, help="Seconds between refreshes of the job table.")
    ] = 2.0,
    download_dir: Annotated[
        Path, typer.Option("--download-dir", help="Where `s` saves a job's results.")
    ] = Path("."),
) -> None:
    """A live terminal dashboard: jobs, queues and batches, job details, abort/delete/save."""
    from astro_otf.tui.dashboard import run_dashboard

    with service_client(ctx) as client:
        run_dashboard(client, refresh, download_dir)


def gui(
    ctx: typer.Context,
    image: Annotated[Path | None, typer.Argument(help="A FITS image to open at start.")] = None,
) -> None:
    r"""The desktop GUI: view a FITS image, draw the region, submit, see the sources (needs
    astro-otf\[gui])."""
    if image is not None and not image.is_file():
        fail(f"no such file: {image}", EXIT_USAGE)
    try:
        from astro_otf.gui import run_gui
    except ImportError as exc:
        fail(f"otf gui needs astro-otf[gui] (PySide6): {exc}", EXIT_USAGE)
    with service_client(ctx) as client:
        code = run_gui(client, image)
    raise typer.Exit(code)
