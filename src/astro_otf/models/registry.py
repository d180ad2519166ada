"""Which apps a job can run, by ``model_id``, and which one a job without MODEL gets."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from astro_otf.config import DEFAULT_MODEL, Settings
from astro_otf.domain.errors import ParameterError
from astro_otf.models.base import App
from astro_otf.models.onnx_detector import RuntimeConfig


class Registry:
    """The apps by id; ``default`` (the first app when None) runs jobs that name no MODEL."""

    def __init__(self, apps: list[App], default: str | None = None) -> None:
        if not apps:
            raise ValueError("a registry needs at least one app")
        self._apps: dict[str, App] = {}
        for app in apps:
            if app.model_id in self._apps:
                raise ValueError(f"two models share the id {app.model_id!r}")
            self._apps[app.model_id] = app
        if default is not None and default not in self._apps:
            raise ValueError(
                f"the default model {default!r} is not installed; available: "
                f"{', '.join(self._apps)}"
            )
        self.default_model_id = default if default is not None else apps[0].model_id

    def __iter__(self) -> Iterator[App]:
        return iter(self._apps.values())

    def get(self, model_id: str | None) -> App:
        """The app for ``model_id`` (the default when None), or a 400 naming MODEL."""
        key = self.default_model_id if model_id is None else model_id.strip()
        app = self._apps.get(key) or {k.lower(): a for k, a in self._apps.items()}.get(key.lower())
        if app is None:
            raise ParameterError(
                "model", f"{key!r} is not a registered model; available: {', '.join(self._apps)}"
            )
        return app

    def describe(self, app: App) -> dict[str, Any]:
        from astro_otf.domain.parameters import NATIVE_PARAMETERS

        native = [p.describe() for p in NATIVE_PARAMETERS if app.needs_image or p.name != "image"]
        return {
            "id": app.model_id,
            "version": app.version,
            "description": app.description,
            "default": app.model_id == self.default_model_id,
            "precisions": list(app.precisions),
            "parameters": native + [p.describe() for p in app.parameters],
        }


@dataclass(frozen=True)
class RegistryConfig:
    """What decides the registry's content; plain and hashable, so workers get it too."""

    diagnostic_apps: bool = False
    models_dirs: tuple[str, ...] = ()
    default_model: str | None = DEFAULT_MODEL
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)

    @classmethod
    def from_settings(cls, settings: Settings) -> RegistryConfig:
        return cls(
            diagnostic_apps=settings.diagnostic_apps,
            default_model=settings.default_model,
            models_dirs=tuple(str(p) for p in settings.models_dirs),
            runtime=RuntimeConfig(
                providers=tuple(settings.inference_providers),
                intra_op_threads=settings.intra_op_threads,
                session_memory_mb=settings.session_memory_mb,
                max_batch_tiles=settings.max_batch_tiles,
                workers=settings.workers,
            ),
        )


def build_registry(config: RegistryConfig | None = None) -> Registry:
    """The apps of this installation: sep, then every ONNX model found in the shipped zoo
    and in ``models_dirs``, then the diagnostic app if enabled. The default is
    ``config.default_model`` (the trained detector unless configured otherwise)."""
    from astro_otf.models.manifest import SHIPPED_MODELS, load_manifests
    from astro_otf.models.onnx_detector import OnnxDetector
    from astro_otf.models.sep_finder import SepFinder

    config = config or RegistryConfig()
    apps: list[App] = [SepFinder()]
    for root in (SHIPPED_MODELS, *map(Path, config.models_dirs)):
        apps.extend(OnnxDetector(m, config.runtime) for m in load_manifests(root))
    if config.diagnostic_apps:
        from astro_otf.models.diagnostic import SleepApp

        apps.append(SleepApp())
    return Registry(apps, default=config.default_model)
