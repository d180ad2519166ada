"""Whether Qt can open a window here, asked before Qt is asked.

This module exists because Qt's xcb platform plugin (the one that draws on an X11 screen)
links against system libraries that a pip-installed PySide6 does not bring and that many
desktops lack (``libxcb-cursor0``, ``libxcb-icccm4``, ``libxcb-keysyms1`` ...). Without
them, or without a screen, Qt prints a paragraph about plugins and aborts the process.
``otf gui`` calls :func:`platform_problem` first and, when it finds one, exits with a
message that names the Debian packages to install and the way to run without a screen.

It imports nothing from Qt at module level, so that the check itself cannot abort.
"""

from __future__ import annotations

import ctypes
import functools
import os
import sys
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

#: The shared libraries Qt's xcb platform plugin (``libqxcb.so`` and ``libQt6XcbQpa``)
#: needs from the system, each with the Debian/Ubuntu package that provides it. The
#: first three are the ones most often missing.
XCB_LIBRARIES: dict[str, str] = {
    "libxcb-cursor.so.0": "libxcb-cursor0",
    "libxcb-icccm.so.4": "libxcb-icccm4",
    "libxcb-keysyms.so.1": "libxcb-keysyms1",
    "libxcb-image.so.0": "libxcb-image0",
    "libxcb-render-util.so.0": "libxcb-render-util0",
    "libxcb-util.so.1": "libxcb-util1",
    "libxcb-randr.so.0": "libxcb-randr0",
    "libxcb-shape.so.0": "libxcb-shape0",
    "libxcb-shm.so.0": "libxcb-shm0",
    "libxcb-sync.so.1": "libxcb-sync1",
    "libxcb-xfixes.so.0": "libxcb-xfixes0",
    "libxcb-render.so.0": "libxcb-render0",
    "libxcb-xkb.so.1": "libxcb-xkb1",
    "libxcb.so.1": "libxcb1",
    "libX11-xcb.so.1": "libx11-xcb1",
    "libX11.so.6": "libx11-6",
    "libxkbcommon.so.0": "libxkbcommon0",
    "libxkbcommon-x11.so.0": "libxkbcommon-x11-0",
}

#: How to run without a screen, said with every problem.
OFFSCREEN_HINT = "set QT_QPA_PLATFORM=offscreen to run without a screen"


def qt_platform(environ: Mapping[str, str] | None = None, system: str | None = None) -> str:
    """The platform plugin Qt will try first: ``QT_QPA_PLATFORM`` when set (the first of
    a ``;``-separated list, without its ``:options``), else ``wayland`` in a Wayland
    session, else ``xcb`` on Linux and the system's own plugin elsewhere ("" there)."""
    env = os.environ if environ is None else environ
    system = sys.platform if system is None else system
    chosen = env.get("QT_QPA_PLATFORM", "").strip()
    if chosen:
        return chosen.split(";")[0].split(":")[0].strip().lower()
    if not system.startswith("linux"):
        return ""
    if env.get("WAYLAND_DISPLAY") or env.get("XDG_SESSION_TYPE", "").lower() == "wayland":
        return "wayland"
    return "xcb"


def _qt_library_dirs() -> list[Path]:
    """Where this PySide6 keeps Qt's own libraries (a build that bundles the xcb
    libraries finds them there through its RUNPATH, not through the system's paths)."""
    try:
        from PySide6.QtCore import QLibraryInfo
    except ImportError:  # pragma: no cover - the GUI needs PySide6 anyway
        return []
    return [Path(QLibraryInfo.path(QLibraryInfo.LibraryPath.LibrariesPath))]


def library_loadable(soname: str, extra_dirs: Iterable[Path] = ()) -> bool:
    """Whether the dynamic loader finds ``soname`` (``libxcb-cursor.so.0``) the way it
    will when Qt loads its plugin: through ``LD_LIBRARY_PATH``, the loader's cache and
    the default paths, or in one of ``extra_dirs``."""
    if any((Path(d) / soname).is_file() for d in extra_dirs):
        return True
    try:
        ctypes.CDLL(soname)
    except OSError:
        return False
    return True


def missing_xcb_libraries(loadable: Callable[[str], bool] | None = None) -> dict[str, str]:
    """The libraries of :data:`XCB_LIBRARIES` that cannot be loaded, each with its
    Debian package; ``loadable`` answers for one library (:func:`library_loadable`)."""
    if loadable is not None:
        found = loadable
    else:
        dirs = _qt_library_dirs()
        found = functools.partial(library_loadable, extra_dirs=dirs)
    return {lib: pkg for lib, pkg in XCB_LIBRARIES.items() if not found(lib)}


def platform_problem(
    environ: Mapping[str, str] | None = None,
    system: str | None = None,
    loadable: Callable[[str], bool] | None = None,
) -> str | None:
    """Why Qt would abort instead of opening a window, or None when it should not: on
    the xcb platform, the system libraries it lacks (and the packages to install), or a
    missing X display. Other platforms (offscreen, wayland, macOS, Windows) are Qt's."""
    env = os.environ if environ is None else environ
    if qt_platform(env, system) != "xcb":
        return None
    missing = missing_xcb_libraries(loadable)
    if missing:
        packages = " ".join(dict.fromkeys(missing.values()))
        return (
            "otf gui cannot open a window: Qt's xcb platform plugin needs the system "
            f"libraries {', '.join(missing)}, which are not installed. On Debian or Ubuntu: "
            f"sudo apt-get install {packages} (other systems: the packages that provide "
            f"them). Or {OFFSCREEN_HINT}."
        )
    if not env.get("DISPLAY"):
        return (
            "otf gui cannot open a window: no X display (DISPLAY is not set) for Qt's xcb "
            f"platform plugin. Run it in a desktop session, or {OFFSCREEN_HINT}."
        )
    return None
