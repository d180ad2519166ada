"""The check ``otf gui`` makes before Qt loads its platform plugin (gui/platform.py): which
platform Qt will use, which system libraries of the xcb plugin are missing, and the message
that names the Debian packages to install; and the SAMP name of a job's catalogue."""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from astro_otf.gui.platform import (
    XCB_LIBRARIES,
    library_loadable,
    missing_xcb_libraries,
    platform_problem,
    qt_platform,
)
from astro_otf.gui.samp import catalogue_name
from tests.conftest import REPO_ROOT

#: The xcb plugin's libraries most often absent from a desktop, by Debian package.
OFTEN_MISSING = {
    "libxcb-cursor0": "libxcb-cursor.so.0",
    "libxcb-icccm4": "libxcb-icccm.so.4",
    "libxcb-keysyms1": "libxcb-keysyms.so.1",
}
X11 = {"DISPLAY": ":0"}


def all_but(*missing: str) -> Callable[[str], bool]:
    """A loader that finds every library but ``missing``."""
    return lambda soname: soname not in missing


@pytest.mark.parametrize(
    ("environ", "system", "expected"),
    [
        ({}, "linux", "xcb"),
        (X11, "linux", "xcb"),
        ({"QT_QPA_PLATFORM": "offscreen"}, "linux", "offscreen"),
        ({"QT_QPA_PLATFORM": "XCB:dpi=96"}, "linux", "xcb"),
        ({"QT_QPA_PLATFORM": "wayland;xcb"}, "linux", "wayland"),
        ({"QT_QPA_PLATFORM": " xcb ; wayland"}, "linux", "xcb"),
        ({"WAYLAND_DISPLAY": "wayland-0", **X11}, "linux", "wayland"),
        ({"XDG_SESSION_TYPE": "wayland"}, "linux", "wayland"),
        ({"XDG_SESSION_TYPE": "x11", **X11}, "linux", "xcb"),
        ({"QT_QPA_PLATFORM": "xcb", "WAYLAND_DISPLAY": "wayland-0"}, "linux", "xcb"),
        ({}, "darwin", ""),
        ({}, "win32", ""),
    ],
)
def test_the_platform_qt_tries_first(environ: dict[str, str], system: str, expected: str) -> None:
    assert qt_platform(environ, system) == expected


def test_missing_libraries_are_named_with_their_debian_packages() -> None:
    loadable = all_but("libxcb-cursor.so.0", "libxcb-keysyms.so.1")
    assert missing_xcb_libraries(loadable) == {
        "libxcb-cursor.so.0": "libxcb-cursor0",
        "libxcb-keysyms.so.1": "libxcb-keysyms1",
    }
    message = platform_problem(X11, "linux", loadable)
    assert message is not None
    assert "libxcb-cursor.so.0, libxcb-keysyms.so.1" in message
    assert "sudo apt-get install libxcb-cursor0 libxcb-keysyms1 " in message
    assert "icccm" not in message  # only what is missing
    assert "QT_QPA_PLATFORM=offscreen" in message and "without a screen" in message


def test_each_often_missing_library_is_checked() -> None:
    for package, soname in OFTEN_MISSING.items():
        assert XCB_LIBRARIES[soname] == package
        message = platform_problem(X11, "linux", all_but(soname))
        assert message is not None and f"apt-get install {package} " in message
    # the default platform (no QT_QPA_PLATFORM) is xcb on Linux: it is checked too
    assert platform_problem({}, "linux", all_but("libxcb-icccm.so.4")) is not None


def test_nothing_missing_is_no_problem_and_no_display_is_one() -> None:
    assert platform_problem(X11, "linux", all_but()) is None
    message = platform_problem({}, "linux", all_but())
    assert message is not None
    assert "DISPLAY is not set" in message and "QT_QPA_PLATFORM=offscreen" in message


@pytest.mark.parametrize(
    ("environ", "system"),
    [
        ({"QT_QPA_PLATFORM": "offscreen"}, "linux"),
        ({"QT_QPA_PLATFORM": "wayland"}, "linux"),
        ({"WAYLAND_DISPLAY": "wayland-0"}, "linux"),
        ({}, "darwin"),
    ],
)
def test_other_platforms_are_not_checked(environ: dict[str, str], system: str) -> None:
    def loadable(soname: str) -> bool:
        raise AssertionError(f"{soname} looked up for a platform that does not need it")

    assert platform_problem(environ, system, loadable) is None


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="ELF shared libraries")
def test_the_loader_is_asked_for_real(tmp_path: Path) -> None:
    assert library_loadable("libc.so.6")
    assert not library_loadable("libastro-otf-no-such-library.so.7")
    (tmp_path / "libastro-otf-bundled.so.1").write_bytes(b"")
    assert library_loadable("libastro-otf-bundled.so.1", [tmp_path])  # Qt's own lib folder
    missing = missing_xcb_libraries()  # the default loader, on this machine
    assert missing.items() <= XCB_LIBRARIES.items()


def test_the_test_machines_and_the_readme_name_the_packages() -> None:
    makefile = (REPO_ROOT / "Makefile").read_text()
    line = re.search(r"^DEB_TEST_PACKAGES\s*:?=(.*)$", makefile, re.MULTILINE)
    assert line is not None
    assert set(OFTEN_MISSING) <= set(line.group(1).split())
    readme = (REPO_ROOT / "README.md").read_text()
    assert all(package in readme for package in OFTEN_MISSING)


def test_the_samp_name_of_a_catalogue() -> None:
    assert catalogue_name("m31.fits", "8f2a", "sep") == "m31.fits — job 8f2a (sep)"
    assert catalogue_name("m31.fits", "8f2a") == "m31.fits — job 8f2a"
    assert catalogue_name(None, "8f2a", "sep") == "astro-otf job 8f2a (sep)"
