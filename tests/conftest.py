"""Fixtures shared by every test layer."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from lxml import etree

REPO_ROOT = Path(__file__).resolve().parents[1]
TEST_DATA = REPO_ROOT / "tests" / "data"


def _shared_dir() -> Path:
    env = os.environ.get("OTF_SHARED_DIR")
    return Path(env) if env else REPO_ROOT.parent / "shared"


SHARED = _shared_dir()
REAL_DATA = SHARED / "data" / "real"
IVOA_DIR = SHARED / "ivoa"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The shared folder beside the checkout (real images, IVOA schemas); fails without it."""
    if not SHARED.is_dir():
        pytest.fail(f"../shared not found at {SHARED}; set OTF_SHARED_DIR")
    return SHARED


@pytest.fixture(scope="session")
def real_data(shared_dir: Path) -> Path:
    """The real radio images of the shared folder."""
    return shared_dir / "data" / "real"


@pytest.fixture(scope="session")
def test_data() -> Path:
    """The small files checked in under tests/data."""
    return TEST_DATA


# -- model versions --------------------------------------------------------------------------


def install_model_version(root: Path, version: str, model_id: str = "radio-detector") -> Path:
    """Copy the shipped version 1.0 of ``model_id`` into ``root/<model_id>/<version>`` with
    its manifest saying ``version``: a folder for ``models_dirs`` (same weights, another
    version). A version the zoo already ships is not copied (a second copy would be
    refused): its shipped folder is returned."""
    from astro_otf.models.manifest import SHIPPED_MODELS

    root.mkdir(parents=True, exist_ok=True)  # a models_dirs entry must exist, even if empty
    shipped = SHIPPED_MODELS / model_id / version
    if (shipped / "manifest.toml").is_file():
        return shipped
    folder = root / model_id / version
    shutil.copytree(SHIPPED_MODELS / model_id / "1.0", folder)
    manifest = folder / "manifest.toml"
    text = manifest.read_text()
    assert 'version = "1.0"' in text
    manifest.write_text(text.replace('version = "1.0"', f"version = {json.dumps(version)}", 1))
    return folder


# -- XML schemas -----------------------------------------------------------------------------


class _XlinkResolver(etree.Resolver):
    """Maps the UWS schema's network import of xlink.xsd to the offline stub."""

    def resolve(self, system_url: str, public_id: str, context: object) -> Any:
        if system_url and system_url.endswith("xlink.xsd"):
            return self.resolve_filename(str(IVOA_DIR / "xlink-minimal.xsd"), context)
        return None


@pytest.fixture(scope="session")
def uws_schema(shared_dir: Path) -> etree.XMLSchema:
    """The IVOA UWS 1.1 schema, read offline (its xlink import mapped to a local stub)."""
    parser = etree.XMLParser(no_network=True)
    parser.resolvers.add(_XlinkResolver())
    return etree.XMLSchema(etree.parse(str(IVOA_DIR / "UWS-v1.1.xsd"), parser))


@pytest.fixture(scope="session")
def votable_schema(shared_dir: Path) -> etree.XMLSchema:
    """The IVOA VOTable 1.4 schema."""
    return etree.XMLSchema(etree.parse(str(IVOA_DIR / "VOTable-v1.4.xsd")))


# -- PostgreSQL: a throw-away database per use -------------------------------------------------

PG_ADMIN_URL = os.environ.get("OTF_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")


class PostgresDatabases:
    """Creates uniquely named databases on the local server and drops them at the end."""

    def __init__(self, admin_url: str) -> None:
        self.admin_url = admin_url
        self.created: list[str] = []

    def _admin(self) -> psycopg.Connection:
        return psycopg.connect(self.admin_url, autocommit=True, connect_timeout=5)

    def available(self) -> bool:
        """Whether the server answers (within 5 s)."""
        try:
            with self._admin():
                return True
        except psycopg.OperationalError:
            return False

    def create(self) -> str:
        """A new, empty database; its URL."""
        name = f"otf_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
        with self._admin() as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        self.created.append(name)
        base = self.admin_url.rsplit("/", 1)[0]
        return f"{base}/{name}"

    def drop_all(self) -> None:
        """Drop every database made here (connections to them are ended)."""
        with self._admin() as conn:
            for name in self.created:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        self.created.clear()


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test that asks for ``pg_databases`` (itself or through its fixtures) needs PostgreSQL:
    it gets the ``postgres`` marker even where its file forgot it, so that
    ``pytest -m "not postgres"`` never selects it. A fixture that asks for the databases only
    at run time (``request.getfixturevalue``) is not seen here: its ``postgres`` parameter is
    marked with ``pytest.param(..., marks=pytest.mark.postgres)`` instead."""
    for item in items:
        if "pg_databases" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.postgres)


@pytest.fixture(scope="session")
def pg_databases() -> Iterator[PostgresDatabases]:
    """Throw-away databases on the local PostgreSQL server, dropped at the end of the run;
    fails when the server cannot be reached (a test that uses it carries ``postgres``)."""
    dbs = PostgresDatabases(PG_ADMIN_URL)
    if not dbs.available():
        pytest.fail(f"PostgreSQL is not reachable at {PG_ADMIN_URL} (set OTF_TEST_PG_URL)")
    yield dbs
    dbs.drop_all()


# -- a real server on a free port ------------------------------------------------------------


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerProcess:
    """``otf serve`` in a subprocess with its own data folder and database.

    Its jobs default to the ``sep`` finder: most tests exercise the job machinery (phases,
    parameters such as sep's THRESH, results) with the classical finder. ``default_model=None``
    leaves the service's own default, the trained detector (tests/e2e/test_cli_e2e.py).
    """

    def __init__(
        self,
        data_dir: Path,
        database_url: str | None,
        *,
        default_model: str | None = "sep",
        **settings: str,
    ) -> None:
        self.data_dir = data_dir
        self.database_url = database_url
        self.settings = settings
        if default_model is not None:
            self.settings.setdefault("default_model", default_model)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = data_dir.parent / f"{data_dir.name}-server.log"

    @property
    def env(self) -> dict[str, str]:
        """The server's environment: this one without any OTF_ setting, then the test's."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("OTF_")}
        env.update(
            OTF_DATA_DIR=str(self.data_dir),
            OTF_DIAGNOSTIC_APPS="true",
            OTF_WORKERS="2",
            OTF_LOG_LEVEL="warning",
        )
        if self.database_url:
            env["OTF_DATABASE_URL"] = self.database_url
        env.update({f"OTF_{k.upper()}": v for k, v in self.settings.items()})
        return env

    def start(self, timeout: float = 60.0, *, ready: bool = True) -> None:
        """Start the server; wait until it is ready (or, with ``ready=False``, only alive:
        a server whose cluster is not there yet is never ready)."""
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-c",
                f"from astro_otf.app import run_server; run_server('127.0.0.1', {self.port})",
            ],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.log_path.read_text()[-3000:]}")
            try:
                path = "/health/ready" if ready else "/health"
                if httpx.get(f"{self.url}{path}", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"server not ready in {timeout} s: {self.log_path.read_text()[-3000:]}")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Send ``sig`` and wait for the server to end (killed after 20 s)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def worker_pids(self) -> list[int]:
        """The server's worker processes (children started by multiprocessing spawn)."""
        assert self.proc is not None
        pids = []
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        for pid in children.read_text().split():
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except FileNotFoundError:
                continue
            if b"spawn_main" in cmdline:
                pids.append(int(pid))
        return pids


#: The job stores a server test runs on; the PostgreSQL one carries the ``postgres`` marker,
#: so ``pytest -m "not postgres"`` runs the rest where no PostgreSQL server is.
BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


@pytest.fixture(scope="module", params=BACKENDS)
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """A running service, once on SQLite and once on PostgreSQL."""
    data_dir = tmp_path_factory.mktemp(f"otf-{request.param}")
    url = None
    if request.param == "postgres":
        url = request.getfixturevalue("pg_databases").create()
    proc = ServerProcess(data_dir, url)
    proc.start()
    yield proc
    proc.stop()
