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

import glob
import json
import math
import os
import re
import sys
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.columns import Columns
from rich.console import Console
from rich.markup import escape
from rich.progress_bar import ProgressBar
from rich.table import Table

from astro_otf import __version__
from astro_otf.cli.common import (
    PHASE_STYLES,
    RESULT_FILES,
    format_duration,
    progress_fraction,
    progress_text,
    result_filename,
    safe_name,
)
from astro_otf.cli.follow import follow
from astro_otf.client import (
    DEFAULT_URL,
    URL_ENV,
    Job,
    OTFClient,
    OTFClientError,
    ProtocolError,
    ServerUnreachable,
    image_reference,
    service_url,
)

EXIT_OK = 0
EXIT_JOB_FAILED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
EXIT_HTTP = 4
EXIT_WAIT_TIMEOUT = 5
EXIT_INTERRUPTED = 130


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
    style = PHASE_STYLES.get(phase)
    return f"[{style}]{phase}[/{style}]" if style else phase


def _settings(ctx: typer.Context) -> _Settings:
    return ctx.find_object(_Settings) or _Settings(None, None)


def _refusal(ctx: typer.Context, exc: OTFClientError) -> str:
    """What to tell a CLI user about a refusal: the service's message, but for a 401,
    whose text speaks of HTTP headers, how to give this command a token."""
    if exc.status_code != 401:
        return exc.message
    where = f"--token, OTF_TOKEN or token = in {_config_path()}"
    if _settings(ctx).token:
        return f"the service did not accept the token ({exc.message}); check {where}"
    return (
        f"the service needs a token: set OTF_TOKEN or use --token (or token = in {_config_path()})"
    )


@contextmanager
def _client(ctx: typer.Context) -> Iterator[OTFClient]:
    """An :class:`OTFClient` from the global options; client errors become exit codes."""
    settings = _settings(ctx)
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
        _fail(_refusal(ctx, exc), EXIT_HTTP)
    except ProtocolError as exc:
        _fail(f"unexpected answer from the service: {exc}", EXIT_HTTP)


def _otf(client: OTFClient) -> str:
    """``otf``, with ``--url`` when this command's service is not the one a bare ``otf``
    would talk to: the start of a command line to paste."""
    implied = os.environ.get(URL_ENV) or DEFAULT_URL
    with suppress(ValueError):
        implied = service_url(implied)
    return "otf" if client.url == implied else f"otf --url {client.url}"


def _interrupted(
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
        otf, them = _otf(client), "it" if count == 1 else "them"
        typer.echo(f"follow {them}:  {otf} wait {ids}", err=True)
        typer.echo(f"fetch results: {otf} results {ids} --out {out or 'DIR'}", err=True)
    else:
        typer.echo("interrupted; no job was created", err=True)
    if sending:
        typer.echo(
            f"{sending} was being sent: it may have a job too (see {_otf(client)} jobs --last 5)",
            err=True,
        )
    raise typer.Exit(EXIT_INTERRUPTED)


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
    saved = _client_config()
    ctx.obj = _Settings(url=url or saved.get("url"), token=token or saved.get("token") or None)


def _config_path() -> Path:
    """The client config file: ``OTF_CLIENT_CONFIG``, else
    ``$XDG_CONFIG_HOME/astro-otf/client.toml`` (``~/.config/astro-otf/client.toml``)."""
    return Path(
        os.environ.get("OTF_CLIENT_CONFIG")
        or Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
        / "astro-otf"
        / "client.toml"
    )


def _client_config() -> dict[str, str]:
    """``url`` and ``token`` from the client config file (:func:`_config_path`). Options
    and OTF_URL/OTF_TOKEN win over it."""
    import tomllib

    path = _config_path()
    if not path.is_file():
        if os.environ.get("OTF_CLIENT_CONFIG"):
            _fail(f"no such client config file: {path}", EXIT_USAGE)
        return {}
    try:
        doc = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        _fail(f"cannot read the client config {path}: {exc}", EXIT_USAGE)
    unknown = sorted(set(doc) - {"url", "token"})
    if unknown:
        _fail(f"{path}: unknown key(s) {', '.join(unknown)} (only url and token)", EXIT_USAGE)
    return {k: str(v) for k, v in doc.items()}


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
    sources = _expand_images(images or [])
    sources += [f"upload:{u}" for u in upload_id or []]
    if glob_pattern is not None and dataset is None:
        _fail("--glob selects images of a --dataset; name one", EXIT_USAGE)
    if dataset is not None:
        with _client(ctx) as client:
            sources += _dataset_refs(client, dataset, glob_pattern)
        run_id = run_id if run_id is not None else dataset
    if not sources:
        _fail("name an IMAGE (or --upload-id ID) to search", EXIT_USAGE)
    sources = list(dict.fromkeys(sources))
    bulk = len(sources) > 1 or (out is not None and (out.is_dir() or str(out).endswith("/")))
    if out is not None:
        folder = out if bulk else out.parent
        if bulk and not out.exists():
            if not out.parent.is_dir():
                _fail(f"no such directory for --out: {out.parent}", EXIT_USAGE)
            out.mkdir()
        elif not folder.is_dir():
            _fail(f"no such directory for --out: {folder}", EXIT_USAGE)
    wait = wait or out is not None
    if wait and not run:
        _fail("--wait/--out need the job to run; drop --no-run", EXIT_USAGE)
    params = _parse_params(param)
    if model is not None:
        params = {k: v for k, v in params.items() if k.upper() != "MODEL"}
        params["MODEL"] = model
    if roi is not None:
        params = {k: v for k, v in params.items() if k.upper() not in _ROI_NAMES}
        params.update(roi_params(*roi))

    with _client(ctx) as client:
        if bulk:
            _submit_many(
                client, sources, params, run, run_id, no_cache, wait, timeout, out, as_json
            )
            return
        try:
            job_id = client.submit(sources[0], params, run=run, run_id=run_id, nocache=no_cache)
        except KeyboardInterrupt:
            _interrupted(client, [], out, sending=str(sources[0]))
        _follow(client, job_id, f"submitted job {job_id}", wait, timeout, out, as_json)


def _follow(
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
            _print_json(client.job(job_id).raw)
        else:
            typer.echo(job_id)
        return
    if not as_json:
        typer.echo(f"{what}; waiting for it to end", err=True)
    try:
        job = follow(client, [job_id], timeout=timeout, show=not as_json)[job_id]
    except KeyboardInterrupt:
        _interrupted(client, [job_id], out.parent if out is not None else None)
    _report_outcome(client, job, out, as_json)


_ROI_NAMES = ("RA", "DEC", "WIDTH", "HEIGHT")
#: Sexagesimal without unit letters: ``17:09:38.4``, ``-43 12 45``.
_SEXAGESIMAL = re.compile(r"[+-]?\d{1,3}(?:[: ]\d{1,2}){1,2}(?:\.\d*)?")
#: A size in pixels: ``100``, ``100pix``, ``100 px``.
_PIXELS = re.compile(r"\d+(?:\.\d*)?(?:pix|pixels|px)?")


def _roi_angle(text: str, sexagesimal_unit: str, what: str) -> Any:
    """An :class:`astropy.coordinates.Angle` from a number of degrees, a sexagesimal
    string (in ``sexagesimal_unit``) or anything with its units (``17h09m38.4s``, ``5'``)."""
    from astropy import units as u
    from astropy.coordinates import Angle

    value = text.strip()
    try:
        number = float(value)
    except ValueError:
        pass
    else:
        if not math.isfinite(number):
            _fail(f"--roi: {what} {text!r} is not a finite angle", EXIT_USAGE)
        return Angle(number, unit=u.deg)
    try:
        if _SEXAGESIMAL.fullmatch(value):
            return Angle(value, unit=sexagesimal_unit)
        angle = Angle(value)
    except (ValueError, TypeError, u.UnitsError) as exc:
        _fail(f"--roi: {what} {text!r} is not an angle ({exc})", EXIT_USAGE)
    if not angle.unit.is_equivalent(u.deg) or not math.isfinite(float(angle.degree)):
        _fail(f"--roi: {what} {text!r} is not an angle", EXIT_USAGE)
    return angle


def _number(value: float) -> str:
    return f"{value:.12g}"


def _roi_extent(text: str, what: str) -> str:
    """A width or height as the service's parameter syntax: pixels as given, an angle as
    ``<number> arcsec|arcmin|deg``."""
    from astropy import units as u

    if _PIXELS.fullmatch(text.strip().lower().replace(" ", "")):
        return text.strip()
    angle = _roi_angle(text, "deg", what)
    names = {u.deg: "deg", u.arcmin: "arcmin", u.arcsec: "arcsec"}
    unit = angle.unit if angle.unit in names else u.deg
    value = float(angle.to_value(unit))
    if value <= 0:
        _fail(f"--roi: {what} {text!r} must be a positive size", EXIT_USAGE)
    return f"{_number(value)} {names[unit]}"


def roi_params(ra: str, dec: str, width: str, height: str) -> dict[str, str]:
    """The RA, DEC, WIDTH and HEIGHT parameters of ``--roi``: the centre in degrees (RA
    in 0..360, so that -0.5 is 359.5; sexagesimal RA is in hours, DEC in degrees), sizes in
    pixels or as angles the service reads (``5'`` -> ``5 arcmin``)."""
    from astropy import units as u

    ra_angle = _roi_angle(ra, "hourangle", "RA")
    dec_angle = _roi_angle(dec, "deg", "DEC")
    ra_deg = float(ra_angle.wrap_at(360 * u.deg).degree) % 360.0
    dec_deg = float(dec_angle.degree)
    if not -90.0 <= dec_deg <= 90.0:
        _fail(f"--roi: DEC {dec!r} is outside -90..90 degrees", EXIT_USAGE)
    return {
        "RA": _number(ra_deg),
        "DEC": _number(dec_deg),
        "WIDTH": _roi_extent(width, "width"),
        "HEIGHT": _roi_extent(height, "height"),
    }


_FITS_SUFFIXES = (".fits", ".fit", ".fts", ".fits.gz", ".fit.gz")


def _stem(path: Path) -> str:
    """The file name without its FITS suffix (``magpis_G10.5+0.0.fits`` -> ``magpis_G10.5+0.0``)."""
    name = path.name
    for suffix in sorted(_FITS_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def _expand_images(args: list[str]) -> list[Path | str]:
    """Files as given, every FITS file under a folder, the matches of glob patterns, and
    references to files on the service (``upload:ID``, ``sha256:HEX``) as strings."""
    found: list[Path | str] = []
    for arg in args:
        path = Path(arg)
        if image_reference(arg) is not None and not path.exists():
            found.append(arg)
        elif path.is_dir():
            inside = sorted(
                p
                for p in path.rglob("*")
                if p.is_file() and p.name.lower().endswith(_FITS_SUFFIXES)
            )
            if not inside:
                _fail(f"no FITS files (.fits, .fit, .fts) in folder {arg}", EXIT_USAGE)
            found += inside
        elif path.is_file():
            found.append(path)
        elif glob.has_magic(arg):
            matches = sorted(Path(m) for m in glob.glob(arg, recursive=True) if Path(m).is_file())
            if not matches:
                _fail(f"no file matches {arg}", EXIT_USAGE)
            found += matches
        else:
            _fail(f"no such file: {arg}", EXIT_USAGE)
    unique = list(dict.fromkeys(found))
    return unique


def _dataset_refs(client: OTFClient, name: str, pattern: str | None) -> list[Path | str]:
    """The references (``dataset:<name>/<path>``) of a dataset's complete images, those
    whose path or file name matches ``pattern`` when one is given."""
    import fnmatch

    try:
        images = client.dataset(name)["images"]
    except OTFClientError as exc:
        _fail(exc.message, EXIT_HTTP if exc.status_code != 404 else EXIT_USAGE)
    refs: list[Path | str] = []
    for image in images:
        path = str(image.get("path", ""))
        if not image.get("complete") or not path:
            continue
        if pattern is None or any(
            fnmatch.fnmatchcase(p, pattern) for p in (path, path.rsplit("/", 1)[-1])
        ):
            refs.append(str(image.get("ref") or f"dataset:{name}/{path}"))
    if not refs:
        what = f" matching {pattern!r}" if pattern else ""
        _fail(f"dataset {name} has no complete image{what}", EXIT_USAGE)
    return refs


def _label_of(client: OTFClient, source: Path | str) -> str:
    """The file name a source goes by: a local file's, a dataset image's, or an upload's
    as stored."""
    if isinstance(source, Path):
        return source.name
    if source.startswith(("dataset:", "pending:")):
        return source.rsplit("/", 1)[-1].split(":", 1)[-1]
    if source.startswith("upload:"):
        try:
            return str(client.upload_info(source.removeprefix("upload:")).get("filename") or "")
        except OTFClientError:
            return ""
    return ""


def _submit_many(
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
    """Bulk submission: a progress bar for the uploads, one per job while they run (the
    event stream), then a summary. Each job's RUNID is its file's stem unless --run-id."""
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    err = Console(stderr=True, highlight=False)
    names = {str(s): _label_of(client, s) for s in sources}
    total = sum(s.stat().st_size for s in sources if isinstance(s, Path))
    submitted: list[tuple[Path | str, str]] = []
    refused: list[tuple[Path | str, str]] = []
    sending: str | None = None
    jobs: dict[str, Job] = {}
    try:
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TimeElapsedColumn(),
            console=err,
            disable=as_json,
        ) as bar:
            task = bar.add_task(f"uploading {len(sources)} images", total=total)
            for source in sources:
                name = names[str(source)]
                label = run_id if run_id is not None else (_stem(Path(name)) if name else None)
                sending = name or str(source)
                try:
                    job_id = client.submit(
                        source,
                        params,
                        run=run,
                        run_id=label,
                        progress=lambda n: bar.advance(task, n),
                        nocache=nocache,
                    )
                    submitted.append((source, job_id))
                except OTFClientError as exc:  # this image refused (e.g. a bad parameter)
                    refused.append((source, exc.message))
                sending = None
        if wait and submitted:
            labels = {job_id: names[str(s)] or str(s) for s, job_id in submitted}
            jobs = follow(
                client,
                [job_id for _, job_id in submitted],
                labels,
                timeout=timeout,
                show=not as_json,
                console=err,
            )
    except KeyboardInterrupt:
        _interrupted(client, [job_id for _, job_id in submitted], out, sending)
    if not (wait and submitted):
        jobs = {job_id: client.job(job_id) for _, job_id in submitted}
    written: dict[str, Path] = {}
    if out is not None:
        taken: set[str] = set()
        for source, job_id in submitted:
            if jobs[job_id].phase != "COMPLETED":
                continue
            stem = _stem(Path(names[str(source)] or job_id))
            name = stem + ".xml"
            if name in taken:
                name = f"{stem}-{job_id}.xml"
            taken.add(name)
            written[job_id] = out / name
            client.download_result(job_id, "result", written[job_id])
    if as_json:
        _print_json(
            {
                "jobs": [jobs[job_id].raw for _, job_id in submitted],
                "refused": [{"image": str(p), "message": m} for p, m in refused],
            }
        )
    else:
        table = Table("Image", "Job ID", "Run ID", "Phase", "Sources", "Catalogue / error")
        for source, job_id in submitted:
            job = jobs[job_id]
            sources_found = job.job_info.get("n_sources") if job.phase == "COMPLETED" else None
            detail = escape(str(written.get(job_id, ""))) if job.phase == "COMPLETED" else ""
            if job.cached_from:
                detail = f"{detail} (cached from {job.cached_from})".strip()
            if job.phase == "ERROR":
                detail = f"[red]{escape(_error_message(client, job))}[/red]"
            table.add_row(
                escape(names[str(source)] or str(source)),
                job_id,
                escape(job.run_id or ""),
                _phase(job.phase),
                "" if sources_found is None else str(sources_found),
                detail,
            )
        for source, message in refused:
            table.add_row(
                escape(names[str(source)] or str(source)),
                "",
                "",
                "[red]refused[/red]",
                "",
                f"[red]{escape(message)}[/red]",
            )
        _stdout().print(table)
    if refused or any(j.phase in ("ERROR", "ABORTED") for j in jobs.values()):
        raise typer.Exit(EXIT_JOB_FAILED)
    if wait and any(j.is_active for j in jobs.values()):
        raise typer.Exit(EXIT_WAIT_TIMEOUT)


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
        _fail(f"no such directory for --out: {out.parent}", EXIT_USAGE)
    wait = wait or out is not None
    if wait and not run:
        _fail("--wait/--out need the job to run; drop --no-run", EXIT_USAGE)
    overrides = _parse_params(param)
    with _client(ctx) as client:
        new_id = client.rerun(job_id, overrides, run=run, run_id=run_id)
        _follow(client, new_id, f"job {new_id} replays job {job_id}", wait, timeout, out, as_json)


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
    with _client(ctx) as client:
        jobs = client.jobs(phases=phase, after=after, last=last, run_id=run_id, image=image)
    if as_json:
        _print_json({"jobs": [j.raw for j in jobs]})
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
            _phase(j.phase),
            j.run_id or "",
            j.image or "",
            j.model_id or "",
            "" if j.sources is None else str(j.sources),
            progress_text(j.phase, j.progress, now) if j.progress is not None else "",
            j.owner_id or "",
            _time(j.creation_time),
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
    if job.is_active:
        progress = job.progress
        bar = ProgressBar(total=1.0, completed=progress_fraction(job.phase, progress), width=30)
        grid.add_row("Progress", Columns([bar, progress_text(job.phase, progress)]))
        if job.quote_time is not None:
            left = format_duration((job.quote_time - datetime.now(UTC)).total_seconds())
            grid.add_row("Quote", f"{_time(job.quote_time)} (in {left})")
    for label, value in (
        ("Image", job.image),
        ("Cached from", job.cached_from),
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
        _fail(f"no such directory for --out: {out.parent}", EXIT_USAGE)
    with _client(ctx) as client:
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
        _print_json(saved.to_json())
    else:
        typer.echo(f"wrote {saved.size} bytes to {out}", err=True)


def _no_results(client: OTFClient, job: Job, message: str | None = None) -> NoReturn:
    """Exit for a job that has no (such) result: 1 with its phase and error when it ended
    ERROR or ABORTED, 2 while it is still going, else the service's ``message``."""
    if job.phase == "ERROR":
        summary = _error_message(client, job)
        _fail(f"job {job.job_id} ended ERROR: {summary}", EXIT_JOB_FAILED)
    if job.phase == "ABORTED":
        _fail(f"job {job.job_id} was ABORTED: it has no results", EXIT_JOB_FAILED)
    if job.is_active:
        _fail(
            f"job {job.job_id} is still {job.phase}: no results yet (otf wait {job.job_id})",
            EXIT_USAGE,
        )
    _fail(message or f"job {job.job_id} ({job.phase}) has no results", EXIT_HTTP)


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
        _fail(f"--format must be json, xml, provn or svg, not {fmt!r}", EXIT_USAGE)
    if as_json and out is None:
        out = Path(safe_name(f"{job_id}-provenance.{fmt}", "provenance"))
    if out is not None and not out.parent.is_dir():
        _fail(f"no such directory for --out: {out.parent}", EXIT_USAGE)
    with _client(ctx) as client:
        body, media_type = client.provenance_document(job_id, fmt)
    if out is not None:
        out.write_bytes(body)
        if as_json:
            _print_json(
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
    with _client(ctx) as client:
        for job_id in ids:
            try:
                line, record = act(client, job_id)
            except OTFClientError as exc:
                failed = True
                message = _refusal(ctx, exc)
                typer.echo(f"error: job {job_id}: {' '.join(message.split())}", err=True)
                records.append({"jobId": job_id, "error": message, "status": exc.status_code})
                continue
            records.append(record)
            if not as_json:
                typer.echo(line)
    if as_json and (len(ids) > 1 or not failed):
        _print_json(records[0] if len(ids) == 1 else {"jobs": records})
    if failed:
        raise typer.Exit(EXIT_HTTP)


@app.command()
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


@app.command()
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


@app.command("show")
def show(
    ctx: typer.Context,
    job_id: Annotated[str, typer.Argument(metavar="ID", help="Job id.")],
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the job document as JSON.")
    ] = False,
) -> None:
    """Show one job (the same as ``otf job``)."""
    show_job(ctx, job_id, as_json)


@app.command("wait")
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
    with _client(ctx) as client:
        try:
            found = follow(client, job_ids, timeout=timeout, show=not as_json)
        except KeyboardInterrupt:
            _interrupted(client, job_ids, None)
    jobs = [found[j] for j in dict.fromkeys(job_ids)]
    if as_json:
        _print_json({"jobs": [j.raw for j in jobs]})
    else:
        for job in jobs:
            typer.echo(f"job {job.job_id} {job.phase}")
    if any(j.is_active for j in jobs):
        raise typer.Exit(EXIT_WAIT_TIMEOUT)
    if any(j.phase != "COMPLETED" for j in jobs):
        raise typer.Exit(EXIT_JOB_FAILED)


@app.command("log")
def job_log(
    ctx: typer.Context,
    job_id: Annotated[str, typer.Argument(metavar="ID", help="Job id.")],
    tail: Annotated[
        int | None, typer.Option("--tail", "-n", min=1, max=10000, help="Only the last N lines.")
    ] = None,
) -> None:
    """Print a job's log (what the service did with it, stage by stage)."""
    with _client(ctx) as client:
        text = client.log(job_id, tail)
    typer.echo(text, nl=not text.endswith("\n"))


@app.command("upload")
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
            _fail(f"no such file: {path}", EXIT_USAGE)
    records = []
    with _client(ctx) as client:
        for path in files:
            records.append(client.upload(path))
    if as_json:
        _print_json(records[0] if len(records) == 1 else {"uploads": records})
        return
    for path, record in zip(files, records, strict=True):
        if len(files) == 1:
            typer.echo(record["upload_id"])
        else:
            typer.echo(f"{record['upload_id']}\t{path}")


@app.command("datasets")
def datasets(
    ctx: typer.Context,
    name: Annotated[
        str | None, typer.Argument(metavar="[NAME]", help="A dataset: list its images.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the listing as JSON.")] = False,
) -> None:
    """The datasets the service offers, or one dataset's images with their shape, beam and
    frequency (search them with `otf submit --dataset NAME`)."""
    with _client(ctx) as client:
        if name is None:
            found = client.datasets()
            if as_json:
                _print_json({"datasets": found})
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
            _stdout().print(table)
            return
        doc = client.dataset(name)
    if as_json:
        _print_json(doc)
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
    _stdout().print(table)


@app.command("results")
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
            _fail(f"no such directory for --out: {out.parent}", EXIT_USAGE)
        out.mkdir()
    elif not out.is_dir():
        _fail(f"--out must be a folder: {out}", EXIT_USAGE)
    ids = list(dict.fromkeys(job_ids))
    records: list[dict[str, Any]] = []
    codes: list[int] = []
    with _client(ctx) as client:
        for job_id in ids:
            try:
                records.append(_save_results(client, job_id, out, result_id, as_json))
            except typer.Exit as exc:  # this job's failure, already reported
                codes.append(exc.exit_code)
                records.append({"jobId": job_id, "written": [], "exitCode": exc.exit_code})
            except OTFClientError as exc:  # e.g. no such job: say so, go on with the others
                message = " ".join(_refusal(ctx, exc).split())
                typer.echo(f"error: job {job_id}: {message}", err=True)
                codes.append(EXIT_HTTP)
                records.append({"jobId": job_id, "written": [], "exitCode": EXIT_HTTP})
    if as_json:
        _print_json(records[0] if len(ids) == 1 else {"jobs": records})
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
        _fail(f"job {job_id} ({job.phase}) has no result {result_id} (has: {have})", EXIT_USAGE)
    written = []
    for ref in refs:
        saved = client.save_result(job_id, ref.id, out / f"{job_id}-{result_filename(ref)}")
        written.append({"id": ref.id, "size": saved.size, **saved.to_json()})
        if not quiet:
            typer.echo(f"{ref.id}: {saved.path} ({saved.size} bytes)")
    return {"jobId": job_id, "written": written}


models_app = typer.Typer(help="The models the service offers.", invoke_without_command=True)
app.add_typer(models_app, name="models")


@models_app.callback()
def models_list(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print the list as JSON.")] = False,
) -> None:
    """List the models (``otf models describe ID`` for one model's parameters)."""
    if ctx.invoked_subcommand is not None:
        return
    with _client(ctx) as client:
        doc = client.models()
    if as_json:
        _print_json(doc)
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
    _stdout().print(table)


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
    with _client(ctx) as client:
        doc = client.model(model_id, version)
    if as_json:
        _print_json(doc)
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
    _stdout().print(table)


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


def _bytes_text(size: Any) -> str:
    if not isinstance(size, int | float):
        return ""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(size) < 1000 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return ""  # pragma: no cover


def _limit_text(used: Any, limit: Any, shown: Callable[[Any], str] = str) -> str:
    return shown(used) if limit is None else f"{shown(used)} / {shown(limit)}"


@app.command("accounting")
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
    with _client(ctx) as client:
        doc = client.accounting(since, until, owner)
    if as_json:
        _print_json(doc)
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
    _stdout().print(table)


@app.command()
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
    from astro_otf.cli.dashboard import run_dashboard

    with _client(ctx) as client:
        run_dashboard(client, refresh, download_dir)


@app.command()
def gui(
    ctx: typer.Context,
    image: Annotated[Path | None, typer.Argument(help="A FITS image to open at start.")] = None,
) -> None:
    """The desktop GUI: view a FITS image, draw the region, submit, see the sources (needs
    astro-otf\\[gui])."""
    if image is not None and not image.is_file():
        _fail(f"no such file: {image}", EXIT_USAGE)
    try:
        from astro_otf.gui import run_gui
    except ImportError as exc:
        _fail(f"otf gui needs astro-otf[gui] (PySide6): {exc}", EXIT_USAGE)
    with _client(ctx) as client:
        code = run_gui(client, image)
    raise typer.Exit(code)


cluster_app = typer.Typer(
    help="Start a Dask cluster on a batch system for executor = dask (needs astro-otf\\[dask]).",
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
