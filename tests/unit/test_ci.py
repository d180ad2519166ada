"""CI runs exactly the README's test command, and the README leads with the two commands."""

from __future__ import annotations

import re

from tests.conftest import REPO_ROOT


def test_ci_runs_the_readme_test_command() -> None:
    readme = (REPO_ROOT / "README.md").read_text()
    blocks = re.findall(r"```(?:sh|bash|console)?\n(.*?)```", readme, re.S)
    commands = [line.strip() for block in blocks for line in block.splitlines() if line.strip()]
    assert commands[:2] == ["make run", "make test"]
    ci = (REPO_ROOT / ".ci" / "run").read_text()
    steps = [
        line.strip()
        for line in ci.splitlines()
        if line.strip() and not line.startswith("#") and not line.startswith(("set ", "cd "))
    ]
    assert steps == ["make test"]


def test_make_test_runs_pytest_on_the_whole_suite() -> None:
    makefile = (REPO_ROOT / "Makefile").read_text()
    recipe = makefile.split("\ntest:", 1)[1].split("\n\n", 1)[0]
    assert "pytest" in recipe
    assert "deb-test" in recipe.splitlines()[0]  # Debian packages installed first
