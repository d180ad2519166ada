"""The ``otf`` command line (entry point ``astro_otf.cli.main:app``).

Kept as a package apart from the server so the command starts quickly and needs only
the client library; see :mod:`astro_otf.cli.main`.
"""
