"""Builds the configured executor. Apart from :mod:`astro_otf.execution.base` (the contract),
so that the contract does not import the executors that implement it."""

from __future__ import annotations

from astro_otf.config import Settings
from astro_otf.execution.base import Executor
from astro_otf.models.registry import RegistryConfig

__all__ = ["make_executor"]


def make_executor(settings: Settings, registry: RegistryConfig) -> Executor:
    """The executor ``settings.executor`` names: local worker processes or a Dask cluster."""
    if settings.executor == "local":
        from astro_otf.execution.local import LocalExecutor

        return LocalExecutor(settings.workers, registry)
    if settings.executor == "dask":
        from astro_otf.execution.dask_executor import DaskExecutor

        assert settings.dask_address is not None  # checked by Settings
        return DaskExecutor(
            settings.dask_address,
            settings.workers,
            registry,
            resources=settings.dask_resources,
        )
    raise ValueError(f"unknown executor {settings.executor!r}")
