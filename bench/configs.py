"""Held-out images of the telescope-like configurations (``training.synthesis``), for
``bench/science.py``: rendered once into a work folder and reused while nothing they are
made from has changed.

Why: the configurations' images take seconds each to render, and the peers' cached
catalogues are keyed by the image's sha256, so re-rendering the same pixels costs nothing
but time; re-rendering after the simulator changed is what keeps truth and image in step.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
#: The code the images and their truth are made from: a change to any of them re-renders.
SOURCES = (
    ROOT / "training" / "synthesis.py",
    ROOT / "training" / "interferometer.py",
    ROOT / "training" / "simulate.py",
    ROOT / "src" / "astro_otf" / "imaging" / "background.py",  # the truth's local rms
)


def names() -> list[str]:
    """The configurations the simulator defines, in its order."""
    from training import synthesis

    return list(synthesis.CONFIGS)


def config(name: str) -> Any:
    """The simulator's ``Config`` of ``name`` (``.description``, ``.seeds``, ``.size``,
    ``.pixel_arcsec``)."""
    from training import synthesis

    return synthesis.CONFIGS[name]


def stamp(name: str) -> str:
    """What the images of ``name`` are made from: the configuration and the code's bytes."""
    digest = hashlib.sha256(repr(config(name)).encode())
    for path in SOURCES:
        digest.update(path.read_bytes() if path.exists() else b"")
    return digest.hexdigest()


def expected(name: str, folder: Path) -> list[tuple[Path, Path]]:
    """The (FITS, truth CSV) pairs ``write_heldout_config`` writes for ``name``."""
    return [
        (folder / f"{name}_{seed}.fits", folder / f"{name}_{seed}_truth.csv")
        for seed in config(name).seeds
    ]


def images(name: str, folder: Path) -> tuple[list[tuple[Path, Path]], bool]:
    """The held-out (FITS, truth CSV) pairs of configuration ``name`` in ``folder``, and
    whether they were rendered now (False: all files were there, from the same stamp)."""
    from training import synthesis

    pairs = expected(name, folder)
    key = folder / f"{name}.stamp"
    current = stamp(name)
    present = all(f.exists() and t.exists() for f, t in pairs)
    if present and key.exists() and key.read_text().strip() == current:
        return pairs, False
    folder.mkdir(parents=True, exist_ok=True)
    key.unlink(missing_ok=True)
    pairs = synthesis.write_heldout_config(name, folder)
    key.write_text(current + "\n")
    return pairs, True
