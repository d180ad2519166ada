"""The terminal user interface of astro-otf: ``otf dashboard`` (Textual).

A package of its own, apart from the command line, so that only ``otf dashboard`` pays for
importing Textual. Like every client it speaks to the service through
:mod:`astro_otf.client` alone and never imports server code, so it watches any reachable
service. :mod:`~astro_otf.tui.dashboard` is the app; :mod:`~astro_otf.tui.batches` reads
the batch view from the metrics, :mod:`~astro_otf.tui.cells` formats what the tables show
and :mod:`~astro_otf.tui.confirm` asks before an action that cannot be undone.
"""
