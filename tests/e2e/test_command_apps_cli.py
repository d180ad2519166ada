"""``otf submit --model aegean`` (and pybdsf) with the installed console script against a real
server: the command apps run in their own environments and come back as the same VOTable
as the other finders; ``otf models`` says which apps are available."""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
from astropy.io.votable import parse_single_table

from tests.conftest import REAL_DATA, REPO_ROOT, ServerProcess
from tests.e2e.test_cli_e2e import otf

APPS_DIR = REPO_ROOT / ".apps"

pytestmark = pytest.mark.skipif(
    not (APPS_DIR / "aegean" / "bin" / "aegean").exists()
    or not (APPS_DIR / "pybdsf" / "bin" / "python").exists(),
    reason="the command apps' environments are missing: run `make apps` (make test does)",
)


@pytest.fixture(scope="module")
def apps_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = ServerProcess(
        tmp_path_factory.mktemp("otf-cli-apps") / "data", None, apps_dir=str(APPS_DIR)
    )
    proc.start()
    yield proc
    proc.stop()


def fields(path: Path) -> list[tuple[str, str, str]]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        table = parse_single_table(str(path))
    return [(f.name, str(f.unit or ""), str(f.ucd or "")) for f in table.fields]


def rows(path: Path) -> int:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return len(parse_single_table(str(path)).array)


@pytest.mark.parametrize(
    ("model", "rel", "low", "high"),
    [
        ("aegean", "aegean/synthetic_test.fits", 102, 102),
        ("pybdsf", "pyse/GRB201006A_final_2min_srcs-t0002-image-pb_cutout.fits", 3, 6),
    ],
)
def test_otf_submit_model_app(
    apps_server: ServerProcess, tmp_path: Path, model: str, rel: str, low: int, high: int
) -> None:
    image = REAL_DATA / rel
    ours, reference = tmp_path / f"{model}.vot", tmp_path / "sep.vot"
    done = otf(
        apps_server.url,
        "submit",
        str(image),
        "--model",
        model,
        "--wait",
        "--out",
        str(ours),
        timeout=180,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(r"job \S+ COMPLETED", done.stdout), done.stdout
    assert low <= rows(ours) <= high
    sep = otf(
        apps_server.url, "submit", str(image), "--model", "sep", "--wait", "--out", str(reference)
    )
    assert sep.returncode == 0, sep.stdout + sep.stderr
    n = 16  # the standard columns (no class, no tile), then local_rms
    assert fields(ours)[:n] == fields(reference)[:n]


def test_otf_models_shows_the_apps(apps_server: ServerProcess) -> None:
    listing = otf(apps_server.url, "models")
    assert listing.returncode == 0, listing.stderr
    assert "aegean" in listing.stdout and "pybdsf" in listing.stdout
