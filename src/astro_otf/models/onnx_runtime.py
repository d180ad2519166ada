"""ONNX Runtime sessions for manifest-described models, cached per worker under a memory budget.

Why it exists: batching only pays if a model is loaded once and kept warm. Each worker process
holds one :class:`SessionCache`; a batch asks it for the session of its batch key's model,
version and precision, and gets the warm one when there is one. A session is created on first
use, only after its file's bytes match the manifest's sha256 (the bytes checked are the bytes
loaded), and its inputs and outputs are checked against the manifest so that a mismatch is an
error at load naming the manifest field rather than a failure in the middle of a batch. When
the manifests' declared ``memory_mb`` of the loaded sessions would exceed the budget, the least
recently used sessions are dropped.

Execution providers are chosen by short name ("cuda", "tensorrt", "cpu") or ONNX Runtime's own
names; one this build of ONNX Runtime lacks is skipped with a warning, and the CPU provider is
always last, so a GPU setting on a CPU node still runs (slowly) instead of failing.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

import numpy as np
import onnxruntime as ort

from astro_otf.models.manifest import LoadedModel, ManifestError, Precision, read_verified

__all__ = [
    "PROVIDER_NAMES",
    "CacheStats",
    "SessionBudgetError",
    "SessionCache",
    "SessionKey",
    "resolve_providers",
    "run",
]

log = logging.getLogger(__name__)

#: Short names accepted in the configuration, and ONNX Runtime's provider for each.
PROVIDER_NAMES = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}
_CPU = PROVIDER_NAMES["cpu"]
#: ONNX Runtime's tensor type names, by the dtype names manifests use.
_ORT_TYPES = {
    "float32": "tensor(float)",
    "float16": "tensor(float16)",
    "uint8": "tensor(uint8)",
    "int8": "tensor(int8)",
}
_NUMPY_TYPES: dict[str, type[np.generic]] = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(uint8)": np.uint8,
    "tensor(int8)": np.int8,
}

#: (model id, version, precision)
SessionKey = tuple[str, str, str]


class SessionBudgetError(RuntimeError):
    """A model's session alone needs more memory than the cache's whole budget."""


@dataclass(frozen=True)
class CacheStats:
    """A snapshot of the session cache, for the worker's metrics and logs."""

    hits: int
    misses: int
    evictions: int
    #: Keys of the loaded sessions, least recently used first.
    loaded: tuple[SessionKey, ...]
    used_mb: float
    budget_mb: float


@dataclass(frozen=True)
class _Entry:
    session: ort.InferenceSession
    memory_mb: float
    sha256: str


def resolve_providers(
    requested: Sequence[str] | None, available: Sequence[str] | None = None
) -> list[str]:
    """ONNX Runtime provider names to use, in order, always ending with the CPU provider.

    ``requested`` holds short names (see :data:`PROVIDER_NAMES`) or ONNX Runtime names; None
    means CPU only. ``available`` defaults to ``onnxruntime.get_available_providers()``.
    """
    have = list(ort.get_available_providers() if available is None else available)
    chosen: list[str] = []
    for name in requested or ["cpu"]:
        provider = PROVIDER_NAMES.get(name.strip().lower(), name.strip())
        if provider not in PROVIDER_NAMES.values() and provider not in have:
            known = ", ".join(PROVIDER_NAMES)
            raise ValueError(f"unknown execution provider {name!r}; use one of {known}")
        if provider not in have:
            log.warning(
                "%s was requested but this ONNX Runtime build offers only %s; "
                "falling back to the next provider (CPU last)",
                provider,
                ", ".join(have),
            )
            continue
        if provider not in chosen:
            chosen.append(provider)
    if _CPU in chosen:
        chosen.remove(_CPU)
    return [*chosen, _CPU]


class SessionCache:
    """One warm :class:`onnxruntime.InferenceSession` per (model id, version, precision).

    ``memory_budget_mb`` bounds the sum of the loaded models' manifest ``memory_mb``;
    ``intra_op_threads`` is ONNX Runtime's ``intra_op_num_threads`` (0: its default, one per
    core; with several worker processes per node, give each cores / workers). Thread-safe.
    """

    def __init__(
        self,
        memory_budget_mb: float,
        providers: Sequence[str] | None = None,
        intra_op_threads: int = 0,
    ) -> None:
        if memory_budget_mb <= 0:
            raise ValueError(f"memory_budget_mb must be positive, not {memory_budget_mb}")
        if intra_op_threads < 0:
            raise ValueError(
                f"intra_op_threads must be 0 (default) or more, not {intra_op_threads}"
            )
        self.memory_budget_mb = float(memory_budget_mb)
        self.intra_op_threads = intra_op_threads
        self.providers = resolve_providers(providers)
        self._entries: OrderedDict[SessionKey, _Entry] = OrderedDict()
        self._lock = threading.Lock()
        self._hits = 0
        self._misses = 0
        self._evictions = 0

    def get(self, model: LoadedModel, precision: str | None = None) -> ort.InferenceSession:
        """The session for ``model`` at ``precision`` (the manifest's default when None)."""
        precision = model.precision(precision)
        key: SessionKey = (model.model_id, model.version, precision)
        sha256 = model.sha256(precision)
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and entry.sha256 == sha256:
                self._entries.move_to_end(key)
                self._hits += 1
                return entry.session
            self._misses += 1
            if entry is not None:  # same id and version, other file: replace it
                del self._entries[key]
            need = model.manifest.memory_mb
            if need > self.memory_budget_mb:
                raise SessionBudgetError(
                    f"model {model.model_id} {model.version} needs {need:g} MB (memory_mb in "
                    f"{model.path}) but the session memory budget is {self.memory_budget_mb:g} MB"
                )
            while self._entries and self._used_mb() + need > self.memory_budget_mb:
                evicted, _ = self._entries.popitem(last=False)
                self._evictions += 1
                log.info("session cache: evicted %s to load %s", evicted, key)
            session = self._create(model, precision)
            self._entries[key] = _Entry(session, need, sha256)
            log.info("session cache: loaded %s on %s", key, ", ".join(session.get_providers()))
            return session

    def stats(self) -> CacheStats:
        """The cache's counters and loaded sessions now."""
        with self._lock:
            return CacheStats(
                hits=self._hits,
                misses=self._misses,
                evictions=self._evictions,
                loaded=tuple(self._entries),
                used_mb=self._used_mb(),
                budget_mb=self.memory_budget_mb,
            )

    def clear(self) -> None:
        """Drop every session (counters are kept)."""
        with self._lock:
            self._entries.clear()

    def _used_mb(self) -> float:
        return sum(e.memory_mb for e in self._entries.values())

    def _options(self) -> ort.SessionOptions:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = self.intra_op_threads
        return options

    def _create(self, model: LoadedModel, precision: str) -> ort.InferenceSession:
        data = read_verified(model.file(precision), model.sha256(precision))
        session = ort.InferenceSession(data, self._options(), providers=self.providers)
        _check_io(model, precision, session)
        return session


def _check_io(model: LoadedModel, precision: str, session: ort.InferenceSession) -> None:
    """The manifest must describe the graph: input name, dtype, channels, tile and outputs."""
    spec = model.manifest.input
    problems = []
    inputs = {i.name: i for i in session.get_inputs()}
    outputs = {o.name for o in session.get_outputs()}
    where = f"{model.file(precision).name}"
    meta = inputs.get(spec.name)
    if meta is None:
        problems.append(f"input.name: {spec.name!r} is not an input of {where} ({list(inputs)})")
    else:
        want = _ORT_TYPES[spec.dtype[cast(Precision, precision)]]
        if meta.type != want:
            problems.append(f"input.dtype.{precision}: {where} takes {meta.type}, not {want}")
        expected = [None, spec.channels, spec.tile, spec.tile]
        shape = list(meta.shape)
        fits = len(shape) == 4 and all(
            e is None or not isinstance(s, int) or s == e
            for s, e in zip(shape, expected, strict=True)
        )
        if not fits:
            problems.append(
                f"input: {where} takes shape {shape}, not [N, {spec.channels}, {spec.tile}, "
                f"{spec.tile}] (NCHW)"
            )
        elif spec.size_multiple is not None and any(isinstance(s, int) for s in shape[2:]):
            # tiles sized to the image need a graph whose height and width are free
            problems.append(
                f"input.size_multiple: {where} takes a fixed height and width {shape[2:]}; "
                "drop size_multiple or export the graph with dynamic height and width"
            )
    wanted = [("output.score", model.manifest.output.score)]
    if model.manifest.output.peak is not None:
        wanted.append(("output.peak", model.manifest.output.peak))
    problems += [
        f"{field}: {name!r} is not an output of {where} ({sorted(outputs)})"
        for field, name in wanted
        if name not in outputs
    ]
    if problems:
        raise ManifestError(model.path, problems)


def run(
    session: ort.InferenceSession, batch: np.ndarray, *, input_name: str | None = None
) -> dict[str, np.ndarray]:
    """One forward pass: every output of ``session`` by name, as ONNX Runtime returns them.

    ``batch`` is cast to the input's dtype; ``input_name`` is the manifest's ``input.name``
    (None: the session's only input). Shape errors are raised here, naming both shapes.
    """
    inputs = session.get_inputs()
    if input_name is None:
        if len(inputs) != 1:
            names = [i.name for i in inputs]
            raise ValueError(f"the model has inputs {names}: say which one gets the batch")
        meta = inputs[0]
    else:
        found = [i for i in inputs if i.name == input_name]
        if not found:
            raise ValueError(f"the model has no input {input_name!r} ({[i.name for i in inputs]})")
        meta = found[0]
    dtype = _NUMPY_TYPES.get(meta.type)
    if dtype is None:
        raise ValueError(f"input {meta.name!r} has type {meta.type}, which run() does not feed")
    shape = list(meta.shape)
    fits = batch.ndim == len(shape) and all(
        not isinstance(want, int) or got == want
        for got, want in zip(batch.shape, shape, strict=True)
    )
    if not fits:
        raise ValueError(
            f"batch of shape {list(batch.shape)} does not fit input {meta.name} {shape}"
        )
    if batch.shape[0] == 0:
        raise ValueError("empty batch: there is nothing to run")
    feed = np.ascontiguousarray(batch, dtype=dtype)
    names = [o.name for o in session.get_outputs()]
    arrays = session.run(names, {meta.name: feed})
    return dict(zip(names, (np.asarray(a) for a in arrays), strict=True))
