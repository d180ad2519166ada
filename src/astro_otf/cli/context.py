"""What every ``otf`` command shares: the exit codes, the root options, the client built
from them, and how a failure or a Ctrl-C is reported.

It exists so that the command modules (:mod:`~astro_otf.cli.jobs`, :mod:`~astro_otf.cli.submit`,
...) report errors and exit the same way without importing :mod:`astro_otf.cli.main`, which
imports them to register their commands.

Exit codes: 0 success; 1 the job ended ERROR or ABORTED (or the service is not ready);
2 usage error, missing local file; 3 service unreachable; 4 any other refusal by the
service (the message it gave is printed); 5 ``--timeout`` passed while waiting;
130 interrupted.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn

import typer
from rich.console import Console

from astro_otf.cli.common import PHASE_STYLES
from astro_otf.client import (
    DEFAULT_URL,
    URL_ENV,
    Job,
    OTFClient,
    OTFClientError,
    ProtocolError,
    ServerUnreachable,
    service_url,
)

EXIT_OK = 0
EXIT_JOB_FAILED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
EXIT_HTTP = 4
EXIT_WAIT_TIMEOUT = 5
EXIT_INTERRUPTED = 130


@dataclass(frozen=True, slots=True)
class Settings:
    """The root options (``--url``, ``--token``, the client config), kept in Typer's
    context object for the commands."""

    url: str | None
    token: str | None


def fail(message: str, code: int) -> NoReturn:
    """Print one ``error:`` line to stderr and exit with ``code``."""
    one_line = " ".join(message.split()) or "unknown error"
    typer.echo(f"error: {one_line}", err=True)
    raise typer.Exit(code)


def print_json(doc: Any) -> None:
    """Print ``doc`` as indented JSON (what ``--json`` gives)."""
    typer.echo(json.dumps(doc, indent=2, sort_keys=False, default=str))


def stdout() -> Console:
    """A console on stdout for tables, without Rich's guessing of colours in plain text."""
    return Console(highlight=False, soft_wrap=True)


def utc_time(value: datetime | None) -> str:
    """A time as the tables show it: UTC, to the second ("" when unknown)."""
    return "" if value is None else value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def phase_markup(phase: str) -> str:
    """A UWS phase in its colour, as Rich markup."""
    style = PHASE_STYLES.get(phase)
    return f"[{style}]{phase}[/{style}]" if style else phase


def settings(ctx: typer.Context) -> Settings:
    """The root options of this command line (none when a command runs on its own)."""
    return ctx.find_object(Settings) or Settings(None, None)


def config_path() -> Path:
    """The client config file: ``OTF_CLIENT_CONFIG``, else
    ``$XDG_CONFIG_HOME/astro-otf/client.toml`` (``~/.config/astro-otf/client.toml``)."""
    return Path(
        os.environ.get("OTF_CLIENT_CONFIG")
        or Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
        / "astro-otf"
        / "client.toml"
    )


def client_config() -> dict[str, str]:
    """``url`` and ``token`` from the client config file (:func:`config_path`). Options
    and OTF_URL/OTF_TOKEN win over it."""
    import tomllib

    path = config_path()
    if not path.is_file():
        if os.environ.get("OTF_CLIENT_CONFIG"):
            fail(f"no such client config file: {path}", EXIT_USAGE)
        return {}
    try:
        doc = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        fail(f"cannot read the client config {path}: {exc}", EXIT_USAGE)
    unknown = sorted(set(doc) - {"url", "token"})
    if unknown:
        fail(f"{path}: unknown key(s) {', '.join(unknown)} (only url and token)", EXIT_USAGE)
    return {k: str(v) for k, v in doc.items()}


def refusal(ctx: typer.Context, exc: OTFClientError) -> str:
    """What to tell a CLI user about a refusal: the service's message, but for a 401,
    whose text speaks of HTTP headers, how to give this command a token."""
    if exc.status_code != 401:
        return exc.message
    where = f"--token, OTF_TOKEN or token = in {config_path()}"
    if settings(ctx).token:
        return f"the service did not accept the token ({exc.message}); check {where}"
    return (
        f"the service needs a token: set OTF_TOKEN or use --token (or token = in {config_path()})"
    )


@contextmanager
def service_client(ctx: typer.Context) -> Iterator[OTFClient]:
    """An :class:`OTFClient` from the root options; client errors become exit codes."""
    options = settings(ctx)
    try:
        client = OTFClient(options.url, options.token)
    except ValueError as exc:
        fail(str(exc), EXIT_USAGE)
    try:
        with client:
            yield client
    except ServerUnreachable as exc:
        fail(str(exc), EXIT_UNREACHABLE)
    except OTFClientError as exc:
        fail(refusal(ctx, exc), EXIT_HTTP)
    except ProtocolError as exc:
        fail(f"unexpected answer from the service: {exc}", EXIT_HTTP)


def otf_prefix(client: OTFClient) -> str:
    """``otf``, with ``--url`` when this command's service is not the one a bare ``otf``
    would talk to: the start of a command line to paste."""
    implied = os.environ.get(URL_ENV) or DEFAULT_URL
    with suppress(ValueError):
        implied = service_url(implied)
    return "otf" if client.url == implied else f"otf --url {client.url}"


def interrupted(
    client: OTFClient, job_ids: list[str], out: Path | None, sending: str | None = None
) -> NoReturn:
    """After Ctrl-C: name every job created so far (they go on on the service) and the
    commands that follow them and fetch their results; exit 130."""
    ids = " ".join(dict.fromkeys(job_ids))
    if job_ids:
        count = len(set(job_ids))
        jobs = f"job {ids} goes" if count == 1 else f"{count} jobs go"
        typer.echo(f"interrupted; {jobs} on on the service" + ("" if count == 1 else ":"), err=True)
        if count > 1:
            typer.echo(ids, err=True)
        otf, them = otf_prefix(client), "it" if count == 1 else "them"
        typer.echo(f"follow {them}:  {otf} wait {ids}", err=True)
        typer.echo(f"fetch results: {otf} results {ids} --out {out or 'DIR'}", err=True)
    else:
        typer.echo("interrupted; no job was created", err=True)
    if sending:
        typer.echo(
            f"{sending} was being sent: it may have a job too "
            f"(see {otf_prefix(client)} jobs --last 5)",
            err=True,
        )
    raise typer.Exit(EXIT_INTERRUPTED)


def parse_params(pairs: list[str] | None) -> dict[str, str]:
    """``-p NAME=VALUE`` options as a dict (a malformed one is a usage error)."""
    params: dict[str, str] = {}
    for pair in pairs or []:
        name, sep, value = pair.partition("=")
        if not sep or not name.strip():
            raise typer.BadParameter(f"expected NAME=VALUE, got {pair!r}", param_hint="--param")
        params[name.strip()] = value
    return params


def error_message(client: OTFClient, job: Job) -> str:
    """Why a job ended ERROR: its error summary, else its error document."""
    if job.error_summary is not None and job.error_summary.message:
        return job.error_summary.message
    try:
        return client.error(job.job_id).strip() or "no error message"
    except OTFClientError:
        return "no error message"
