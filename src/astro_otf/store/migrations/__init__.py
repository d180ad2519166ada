"""Alembic migrations of the job store's schema (``env.py`` runs them on the store's
connection: see :func:`astro_otf.store.database.migrate`)."""
