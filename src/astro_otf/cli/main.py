"""The ``otf`` command line: submit images, follow jobs, fetch catalogues, run a server.

It exists so that people and shell scripts can use an astro-otf service without writing
HTTP code. This module is the root: the Typer app (the console script
``astro_otf.cli.main:app``), the root options (``--url``, ``--token``, ``--version``, the
client config file) and the list of commands, each written in a module of its own:

- :mod:`~astro_otf.cli.submit` (``submit``, ``rerun``, ``upload``; several images go
  through :mod:`~astro_otf.cli.bulk`),
- :mod:`~astro_otf.cli.jobs` (``jobs``, ``job``, ``show``, ``wait``, ``log``, ``result``,
  ``results``, ``provenance``, ``abort``, ``delete``),
- :mod:`~astro_otf.cli.info` (``models``, ``datasets``, ``health``, ``accounting``),
- :mod:`~astro_otf.cli.ui` (``dashboard``, ``gui``),
- :mod:`~astro_otf.cli.server` (``serve``, ``cluster``).

Every command but those of :mod:`~astro_otf.cli.server` goes through
:mod:`astro_otf.client` and nothing else of the server; those import the server lazily, so
the other commands start fast and work on a client-only install
(``tests/unit/test_cli_imports.py`` checks it). To add a command, write it in the module
where it belongs and register it below, where the order is the order of ``otf --help``.

Exit codes (:mod:`astro_otf.cli.context` defines them): 0 success; 1 the job ended ERROR or
ABORTED (or the service is not ready); 2 usage error, missing local file; 3 service
unreachable; 4 any other refusal by the service (the message it gave is printed);
5 ``--timeout`` passed while waiting; 130 interrupted.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from astro_otf import __version__
from astro_otf.cli import info, jobs, server, submit, ui
from astro_otf.cli.context import (
    EXIT_HTTP,
    EXIT_INTERRUPTED,
    EXIT_JOB_FAILED,
    EXIT_OK,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    EXIT_WAIT_TIMEOUT,
    Settings,
    client_config,
)

__all__ = [
    "EXIT_HTTP",
    "EXIT_INTERRUPTED",
    "EXIT_JOB_FAILED",
    "EXIT_OK",
    "EXIT_UNREACHABLE",
    "EXIT_USAGE",
    "EXIT_WAIT_TIMEOUT",
    "app",
    "main",
]

app = typer.Typer(
    name="otf",
    help="Source finding in FITS radio images, as jobs on an astro-otf (IVOA UWS) service.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    """``--version``: print it and stop before any command runs."""
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
    saved = client_config()
    ctx.obj = Settings(url=url or saved.get("url"), token=token or saved.get("token") or None)


# The commands, in the order `otf --help` lists them (the groups come after the commands).
app.command()(server.serve)
app.command()(submit.submit)
app.command()(submit.rerun)
app.command("jobs")(jobs.list_jobs)
app.command("job")(jobs.show_job)
app.command()(jobs.result)
app.command()(jobs.provenance)
app.command()(jobs.abort)
app.command()(jobs.delete)
app.command("show")(jobs.show)
app.command("wait")(jobs.wait_jobs)
app.command("log")(jobs.job_log)
app.command("upload")(submit.upload)
app.command("datasets")(info.datasets)
app.command("results")(jobs.results)
app.command()(info.health)
app.command("accounting")(info.accounting)
app.command()(ui.dashboard)
app.command()(ui.gui)
app.add_typer(info.models_app, name="models")
app.add_typer(server.cluster_app, name="cluster")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
