"""Desktop GUI for an astro-otf service (``otf gui``).

This package exists so that an astronomer can look at a FITS image, draw a region of
interest, pick a model and its parameters, run a job on a remote astro-otf service and
inspect, export or SAMP-broadcast the catalogue without writing code. It talks to the
service only through :mod:`astro_otf.client`, never through the server internals, so it
works against any deployment the client can reach.

Importing this package imports PySide6 and matplotlib; the rest of ``astro_otf`` never
imports it.
"""

from astro_otf.gui.app import MainWindow, run_gui

__all__ = ["MainWindow", "run_gui"]
