"""Which apps a job can run, by ``model_id`` and version, and which one a job without MODEL
(or without MODEL_VERSION) gets."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from astro_otf.config import DEFAULT_MODEL, Settings
from astro_otf.domain.errors import ParameterError
from astro_otf.models.base import App
from astro_otf.models.onnx_detector import RuntimeConfig

_NUMBER = re.compile(r"(\d+)")


def version_key(version: str) -> tuple[tuple[tuple[int, int, str], ...], str]:
    """Natural order of versions: numbers compare as numbers, the rest as text, so that
    "2.0" > "1.10" > "1.9" > "1.0" (a number sorts before text at the same place)."""
    parts = tuple(
        (0, int(part), "") if part.isdigit() else (1, 0, part)
        for part in _NUMBER.split(version)
        if part
    )
    return parts, version


class Registry:
    """The apps by id and version. A job naming no MODEL runs ``default`` (the first app's
    id when None); one naming no MODEL_VERSION runs the model's highest installed version."""

    def __init__(self, apps: list[App], default: str | None = None) -> None:
        if not apps:
            raise ValueError("a registry needs at least one app")
        versions: dict[str, dict[str, App]] = {}
        for app in apps:
            same_id = versions.setdefault(app.model_id, {})
            if app.version in same_id:
                raise ValueError(
                    f"two models share the id {app.model_id!r} and version {app.version!r}"
                )
            same_id[app.version] = app
        #: model id -> version -> app, the versions newest first
        self._apps: dict[str, dict[str, App]] = {
            model_id: {v: by_version[v] for v in sorted(by_version, key=version_key, reverse=True)}
            for model_id, by_version in versions.items()
        }
        if default is not None and default not in self._apps:
            raise ValueError(
                f"the default model {default!r} is not installed; available: "
                f"{', '.join(self._apps)}"
            )
        self.default_model_id = default if default is not None else apps[0].model_id

    def __iter__(self) -> Iterator[App]:
        """Every app: each version of each model."""
        for by_version in self._apps.values():
            yield from by_version.values()

    def defaults(self) -> Iterator[App]:
        """One app per model id: its default (highest) version."""
        for by_version in self._apps.values():
            yield next(iter(by_version.values()))

    def _versions_of(self, model_id: str | None) -> dict[str, App]:
        key = self.default_model_id if model_id is None else model_id.strip()
        found = self._apps.get(key)
        if found is None:
            found = {k.lower(): a for k, a in self._apps.items()}.get(key.lower())
        if found is None:
            raise ParameterError(
                "model", f"{key!r} is not a registered model; available: {', '.join(self._apps)}"
            )
        return found

    def versions(self, model_id: str | None) -> list[str]:
        """The installed versions of ``model_id`` (the default model when None), newest
        first; a 400 naming MODEL when it is not installed."""
        return list(self._versions_of(model_id))

    def get(self, model_id: str | None, version: str | None = None) -> App:
        """The app for ``model_id`` (the default model when None) at ``version`` (its highest
        installed version when None); a 400 naming MODEL or MODEL_VERSION."""
        by_version = self._versions_of(model_id)
        if version is None:
            return next(iter(by_version.values()))
        wanted = version.strip()
        app = by_version.get(wanted)
        if app is None:
            app = {v.lower(): a for v, a in by_version.items()}.get(wanted.lower())
        if app is None:
            some = next(iter(by_version.values()))
            raise ParameterError(
                "model_version",
                f"{wanted!r} is not an installed version of model {some.model_id!r}; "
                f"installed: {', '.join(by_version)}",
            )
        return app

    @staticmethod
    def unavailable(app: App) -> str | None:
        """Why ``app`` cannot run on this server now (a command app whose environment is
        missing), or None. Cheap: a couple of stats."""
        check = getattr(app, "unavailable", None)
        return check() if callable(check) else None

    def check_runnable(self, app: App) -> None:
        """A 400 naming MODEL when ``app`` is installed but cannot run now, with the reason."""
        reason = self.unavailable(app)
        if reason is not None:
            raise ParameterError(
                "model", f"{app.model_id!r} {app.version} is not available on this server: {reason}"
            )

    def describe(self, app: App) -> dict[str, Any]:
        """``app`` as GET /models lists it: its versions, precisions, every parameter a job
        may give (the native ones first), and whether it can run here now."""
        from astro_otf.domain.parameters import NATIVE_PARAMETERS

        versions = self.versions(app.model_id)
        reason = self.unavailable(app)
        native = []
        for p in NATIVE_PARAMETERS:
            if p.name == "image" and not app.needs_image:
                continue
            entry = p.describe()
            if p.name == "model_version":
                entry.update(default=versions[0], allowed=versions)
            native.append(entry)
        return {
            "id": app.model_id,
            "version": app.version,
            "versions": versions,
            "description": app.description,
            "default": app.model_id == self.default_model_id,
            "precisions": list(app.precisions),
            "parameters": native + [p.describe() for p in app.parameters],
            **({"kind": kind} if isinstance(kind := getattr(app, "kind", None), str) else {}),
            "available": reason is None,
            **({"reason": reason} if reason is not None else {}),
        }


@dataclass(frozen=True)
class RegistryConfig:
    """What decides the registry's content; plain and hashable, so workers get it too."""

    diagnostic_apps: bool = False
    models_dirs: tuple[str, ...] = ()
    default_model: str | None = DEFAULT_MODEL
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    #: Where command apps' environments are (``make apps`` builds them there).
    apps_dir: str = ".apps"

    @classmethod
    def from_settings(cls, settings: Settings) -> RegistryConfig:
        """The part of the server's settings that decides which apps exist and how they run."""
        return cls(
            diagnostic_apps=settings.diagnostic_apps,
            default_model=settings.default_model,
            models_dirs=tuple(str(p) for p in settings.models_dirs),
            # absolute: a Dask worker started elsewhere finds the same (shared) folder
            apps_dir=str(Path(settings.apps_dir).absolute()),
            runtime=RuntimeConfig(
                providers=tuple(settings.inference_providers),
                intra_op_threads=settings.intra_op_threads,
                session_memory_mb=settings.session_memory_mb,
                max_batch_tiles=settings.max_batch_tiles,
                workers=settings.workers,
            ),
        )


def build_registry(config: RegistryConfig | None = None) -> Registry:
    """The apps of this installation: sep, then every version of every ONNX model found in
    the shipped zoo and in ``models_dirs``, then the command apps (PyBDSF, Aegean, and any
    an operator wrote in ``models_dirs``; listed even when their environment is missing,
    as unavailable), then the diagnostic app if enabled. The default is
    ``config.default_model`` (the trained detector unless configured otherwise)."""
    from astro_otf.models.command_app import SHIPPED_APPS, load_command_apps
    from astro_otf.models.manifest import SHIPPED_MODELS, load_manifests
    from astro_otf.models.onnx_detector import OnnxDetector
    from astro_otf.models.sep_finder import SepFinder

    config = config or RegistryConfig()
    apps: list[App] = [SepFinder()]
    for root in (SHIPPED_MODELS, *map(Path, config.models_dirs)):
        apps.extend(OnnxDetector(m, config.runtime) for m in load_manifests(root))
    apps.extend(load_command_apps((SHIPPED_APPS, *map(Path, config.models_dirs)), config.apps_dir))
    if config.diagnostic_apps:
        from astro_otf.models.diagnostic import SleepApp

        apps.append(SleepApp())
    return Registry(apps, default=config.default_model)
