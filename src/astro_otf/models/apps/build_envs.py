"""Build the Python environment of every shipped command app (``make apps``).

Runs with the system ``python3`` and the standard library only (the service's own venv is
not needed). For each ``<id>/<version>/manifest.toml`` beside this script with ``kind =
"command"``, it makes ``<apps dir>/<environment>`` a virtual environment holding the pinned
``requirements`` — only when the environment is missing or the requirements changed since
it was built (a stamp file in the environment holds their sha256). A failed build leaves no
environment behind, so the app stays listed as unavailable rather than half-installed.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

HERE = Path(__file__).resolve().parent
STAMP = ".otf-requirements.sha256"


def build(manifest: Path, apps_dir: Path, python: str) -> bool:
    """Build one app's environment if needed; True when it was (re)built."""
    raw = tomllib.loads(manifest.read_text(encoding="utf-8"))
    if raw.get("kind") != "command" or not raw.get("requirements"):
        return False
    requirements = manifest.parent / str(raw["requirements"])
    env_name = Path(str(raw["environment"]))
    env = env_name if env_name.is_absolute() else apps_dir / env_name
    digest = hashlib.sha256(requirements.read_bytes()).hexdigest()
    stamp = env / STAMP
    if stamp.is_file() and stamp.read_text().strip() == digest:
        print(f"{raw['id']} {raw['version']}: {env} is up to date")
        return False
    print(f"{raw['id']} {raw['version']}: building {env} from {requirements}", flush=True)
    if env.is_symlink() or env.is_file():
        env.unlink()
    elif env.exists():
        shutil.rmtree(env)
    try:
        subprocess.run([python, "-m", "venv", str(env)], check=True)
        pip = [str(env / "bin" / "python"), "-m", "pip", "install", "--quiet"]
        subprocess.run([*pip, "--upgrade", "pip"], check=True)
        subprocess.run([*pip, "-r", str(requirements)], check=True)
    except BaseException:
        shutil.rmtree(env, ignore_errors=True)
        raise
    stamp.write_text(digest + "\n")
    return True


def main() -> int:
    """Build (or leave, when up to date) the environment of every shipped command app; the
    exit status for ``make apps``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--apps-dir", default=".apps", help="where the environments go")
    parser.add_argument("--python", default=sys.executable, help="python that makes the venvs")
    args = parser.parse_args()
    apps_dir = Path(args.apps_dir).resolve()
    apps_dir.mkdir(parents=True, exist_ok=True)
    for manifest in sorted(HERE.glob("*/*/manifest.toml")):
        build(manifest, apps_dir, args.python)
    return 0


if __name__ == "__main__":
    sys.exit(main())
