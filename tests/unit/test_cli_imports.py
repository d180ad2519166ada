"""The ``otf`` command line loads no server code unless a server command runs.

The client commands must start fast and work on an install that talks to a remote
service, so :mod:`astro_otf.cli` imports the server (the FastAPI app, the service, the
store, the UWS layer, the executors, the web page) only inside ``otf serve`` and
``otf cluster``. Each case runs in a fresh interpreter, since this test session has long
imported the server for other tests, and lists the server modules present afterwards.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

#: Server packages and modules of astro-otf, and the server libraries, that no client
#: command may load: each name and everything under it.
SERVER_MODULES = (
    "astro_otf.app",
    "astro_otf.service",
    "astro_otf.store",
    "astro_otf.uws",
    "astro_otf.execution",
    "astro_otf.web",
    "fastapi",
    "starlette",
    "uvicorn",
    "sqlalchemy",
    "alembic",
)

#: Run in the child: the ``otf`` invocations given as JSON in argv[1] (each a list of
#: arguments; none means only the import), then print the server modules loaded, as JSON,
#: on the last line.
_CHILD = """
import json, sys
from astro_otf.cli.main import app
for args in json.loads(sys.argv[1]):
    try:
        app(args, prog_name="otf")
    except SystemExit as exc:
        assert exc.code in (0, None), (args, exc.code)
names = json.loads(sys.argv[2])
loaded = sorted(m for m in sys.modules if any(m == n or m.startswith(n + ".") for n in names))
print()
print(json.dumps(loaded))
"""

#: Every command and group of ``otf``, for the case that asks each for its help.
_ALL_COMMANDS = [
    "serve", "submit", "rerun", "jobs", "job", "result", "provenance", "abort", "delete",
    "show", "wait", "log", "upload", "datasets", "results", "health", "accounting",
    "dashboard", "gui", "models", "cluster",
]  # fmt: skip


def _server_modules_after(
    invocations: list[list[str]], tmp_path: Path, prelude: str = ""
) -> list[str]:
    """The server modules a fresh interpreter holds after running ``prelude`` (Python)
    and then ``invocations`` of ``otf``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTF_")}
    env["XDG_CONFIG_HOME"] = str(tmp_path)  # no client config of this machine's user
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            prelude + _CHILD,
            json.dumps(invocations),
            json.dumps(SERVER_MODULES),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    loaded: list[str] = json.loads(done.stdout.splitlines()[-1])
    return loaded


@pytest.mark.parametrize(
    "invocations",
    [
        pytest.param([], id="import"),
        pytest.param([["--help"]], id="otf --help"),
        pytest.param([["submit", "--help"]], id="otf submit --help"),
        pytest.param([["jobs", "--help"]], id="otf jobs --help"),
        pytest.param([[c, "--help"] for c in _ALL_COMMANDS], id="every command --help"),
    ],
)
def test_client_paths_load_no_server_module(invocations: list[list[str]], tmp_path: Path) -> None:
    """Importing the command line and asking it for help load nothing of the server."""
    assert _server_modules_after(invocations, tmp_path) == []


def test_the_check_sees_a_server_import(tmp_path: Path) -> None:
    """The check itself works: a server import before the command is seen."""
    loaded = _server_modules_after([["--version"]], tmp_path, prelude="import astro_otf.app\n")
    assert "astro_otf.app" in loaded
    assert "fastapi" in loaded
