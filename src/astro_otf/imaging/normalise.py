"""Pixel normalisation for the detectors, described by data.

A trained network only works on inputs scaled the way its training images were: the same
clipping, the same stretch, the same stand-in for blank pixels. That recipe belongs to the
model, not to the code, so a model manifest carries it as a list of steps (TOML
``[[normalisation]]`` tables) and this module turns that list into a :class:`Chain`::

    [[normalisation]]
    op = "clip"
    lo_percentile = 0.5
    hi_percentile = 99.9

    [[normalisation]]
    op = "linear"
    to_unit = true

    [[normalisation]]
    op = "tanh"
    scale = 0.3333

Steps (``op``) and their keys:

``clip``
    Clamp pixel values to ``[lower, upper]``. Each bound is given at most one way: a value
    (``min`` / ``max``), a percentile of the image (``lo_percentile`` / ``hi_percentile``,
    0-100), or a robust noise level (``lo_sigma`` / ``hi_sigma``: median + k x MAD rms, k
    signed, so ``lo_sigma = -3`` is three sigma below the median). At least one bound.
``linear``
    ``x * scale + offset`` (defaults 1 and 0), or ``to_unit = true`` to map ``[min, max]``
    onto ``[0, 1]``; ``min`` and ``max`` are optional with ``to_unit`` and are taken from
    the image (its finite extremes as they reach this step) when left out.
``sqrt``
    ``sign(x) sqrt(|x|)``: the square root for ``x >= 0``, mirrored below zero so that
    negative noise keeps its sign instead of becoming NaN.
``log``
    ``sign(x) log10(1 + a|x|) / log10(1 + a)`` with ``a > 0`` (default 1000, as astropy's
    ``LogStretch``): maps ``[0, 1]`` onto ``[0, 1]``, mirrored below zero.
``tanh``
    ``tanh(x / scale)`` with ``scale > 0`` (default 1): the YOLO-CIANNA stretch.
``standardise``
    ``(x - median) / rms`` with the image's median and robust rms (1.4826 x MAD), fitted
    once per image (or given as ``median`` and ``rms``): pixels in units of the noise, so a
    trained network sees the same S/N whatever the survey's flux scale.
``local_standardise``
    ``(x - background) / rms`` with a background and rms *map* of the image
    (:mod:`.background`: robust statistics in boxes of ``box_beams`` beam widths,
    interpolated), so that noise rising towards a primary-beam edge or around a bright
    source is divided out; the step must come first. Fitting it needs the 2-D image and its
    beam in pixels (:meth:`Chain.fit`'s ``beam_pix``); applying it needs each tile's place in
    the image (:meth:`FittedChain.apply`'s ``origin``).
``asinh``
    ``asinh(x / scale)`` (default scale 1): linear near zero, logarithmic for bright
    sources, so noise and a 1000-sigma source both stay in a trainable range.
``nan``
    Replace non-finite pixels (NaN, +-inf) by ``value`` (default 0). A chain without a
    ``nan`` step gets one (value 0) appended, so a network never sees NaN.

**Fit once per image, apply per tile.** Percentile, sigma and data-range values depend on
the pixels. Computed per tile they would differ from tile to tile, and the same sky pixel
would be scaled differently in two overlapping tiles. So :meth:`Chain.fit` computes them once
on the whole image (on a regular subsample of at most ``max_samples`` pixels for big images,
which reads a memory-mapped image without loading it) and returns a :class:`FittedChain`
whose steps are all plain numbers; :meth:`FittedChain.apply` is then applied to every tile.
:meth:`Chain.apply` is ``fit`` followed by ``apply`` on one array, for whole images and for
chains that do not depend on the data. :meth:`FittedChain.to_dicts` gives the resolved steps
for the provenance record; they parse back into the same chain.

Malformed specs raise :class:`ValueError` naming the step (1-based) and the key. An image on
which data-dependent values cannot be computed (no finite pixels, a constant image, inverted
fitted bounds) raises :class:`~astro_otf.domain.errors.JobFailure`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any, Literal, cast, get_args

import numpy as np
from astropy.stats import mad_std

from astro_otf.domain.errors import JobFailure
from astro_otf.imaging.background import NoiseMap, box_size, noise_map

__all__ = [
    "DEFAULT_MAX_SAMPLES",
    "Chain",
    "FittedChain",
    "NormStep",
    "Op",
    "parse_chain",
]

Op = Literal[
    "clip", "linear", "sqrt", "log", "tanh", "standardise", "local_standardise", "asinh", "nan"
]

#: Most pixels :meth:`Chain.fit` reads from an image to compute data-dependent values.
DEFAULT_MAX_SAMPLES = 1 << 20

_OPS: tuple[str, ...] = get_args(Op)

#: Keys each op accepts besides ``op``.
_KEYS: dict[str, tuple[str, ...]] = {
    "clip": ("min", "max", "lo_percentile", "hi_percentile", "lo_sigma", "hi_sigma"),
    "linear": ("scale", "offset", "to_unit", "min", "max"),
    "sqrt": (),
    "log": ("a",),
    "tanh": ("scale",),
    "standardise": ("median", "rms"),
    "local_standardise": ("box_beams",),
    "asinh": ("scale",),
    "nan": ("value",),
}

_DEFAULT_LOG_A = 1000.0
#: Box side of ``local_standardise`` in beam widths when the manifest gives none (sep's and
#: the peers' ~10 beams).
DEFAULT_BOX_BEAMS = 10.0


@dataclass(frozen=True)
class NormStep:
    """One normalisation step, as parsed and checked by :func:`parse_chain`.

    ``index`` is the step's 1-based position in the manifest, used in messages. Only the
    fields of the step's ``op`` are set (see the module docstring); the others are None.
    """

    op: Op
    index: int = 1
    min: float | None = None
    max: float | None = None
    lo_percentile: float | None = None
    hi_percentile: float | None = None
    lo_sigma: float | None = None
    hi_sigma: float | None = None
    scale: float | None = None
    offset: float | None = None
    to_unit: bool | None = None
    a: float | None = None
    median: float | None = None
    rms: float | None = None
    value: float | None = None
    box_beams: float | None = None
    #: The fitted map of ``local_standardise`` (None until fitted).
    noise: NoiseMap | None = None

    @property
    def is_data_dependent(self) -> bool:
        """Whether a value of this step has to be computed from the image."""
        if self.op == "clip":
            return any(
                v is not None
                for v in (self.lo_percentile, self.hi_percentile, self.lo_sigma, self.hi_sigma)
            )
        if self.op == "linear":
            return bool(self.to_unit) and self.min is None
        if self.op == "standardise":
            return self.median is None
        if self.op == "local_standardise":
            return self.noise is None
        return False

    @property
    def label(self) -> str:
        """How error messages name the step: its place in the chain and its op."""
        return f"normalisation step {self.index} ({self.op})"

    def to_dict(self) -> dict[str, Any]:
        """The step as a manifest table: ``op`` and the keys that are set."""
        out: dict[str, Any] = {"op": self.op}
        for f in fields(self):
            if f.name in ("op", "index", "noise"):
                continue
            if self.op == "local_standardise" and f.name in ("median", "rms"):
                continue  # the map's medians, for the log; the map itself is refitted
            value = getattr(self, f.name)
            if value is not None:
                out[f.name] = value
        return out

    # ------------------------------------------------------------------ fitting

    def resolve(self, finite: np.ndarray) -> NormStep:
        """This step with its data-dependent values computed from ``finite`` (the finite
        pixels as they reach this step). Steps that do not depend on data return themselves."""
        if not self.is_data_dependent:
            return self
        if finite.size == 0:
            raise JobFailure(
                f"the image has no finite pixels, so {self.label} cannot be computed: every "
                "pixel is blank (NaN)"
            )
        if self.op == "clip":
            return self._resolve_clip(finite)
        if self.op == "standardise":
            median = float(np.median(finite))
            rms = float(mad_std(finite))
            if not rms > 0:
                raise JobFailure(
                    f"{self.label}: the image has no noise to measure (more than half its "
                    "pixels have the same value), so it cannot be put in units of its rms"
                )
            return replace(self, median=median, rms=rms)
        lo, hi = float(finite.min()), float(finite.max())
        if not lo < hi:
            raise JobFailure(
                f"every pixel of the image has the value {lo:g}, so {self.label} cannot map "
                "the image's range onto [0, 1]"
            )
        return replace(self, min=lo, max=hi)

    def _resolve_clip(self, finite: np.ndarray) -> NormStep:
        percentiles = [p for p in (self.lo_percentile, self.hi_percentile) if p is not None]
        pvalues = iter(np.percentile(finite, percentiles).tolist()) if percentiles else iter(())
        median = rms = 0.0
        if self.lo_sigma is not None or self.hi_sigma is not None:
            median = float(np.median(finite))
            rms = float(mad_std(finite))
        lo = self.min
        if self.lo_percentile is not None:
            lo = float(next(pvalues))
        elif self.lo_sigma is not None:
            lo = median + self.lo_sigma * rms
        hi = self.max
        if self.hi_percentile is not None:
            hi = float(next(pvalues))
        elif self.hi_sigma is not None:
            hi = median + self.hi_sigma * rms
        if lo is not None and hi is not None and lo > hi:
            raise JobFailure(
                f"{self.label}: the bounds computed on this image are inverted (lower {lo:g} > "
                f"upper {hi:g}); the image's pixel values do not suit this model's normalisation"
            )
        return NormStep(op="clip", index=self.index, min=lo, max=hi)

    # ------------------------------------------------------------------ applying

    def fit_local(self, image: np.ndarray, beam_pix: float | None) -> NormStep:
        """``local_standardise`` with its noise map measured on the 2-D ``image``."""
        box = box_size(image.shape, beam_pix, float(self.box_beams or DEFAULT_BOX_BEAMS))
        try:
            noise = noise_map(image, box)
        except ValueError as exc:
            raise JobFailure(f"{self.label}: {exc}") from None
        if not float(np.min(noise.rms)) > 0:
            raise JobFailure(
                f"{self.label}: the image has no noise to measure (more than half its pixels "
                "have the same value), so it cannot be put in units of its rms"
            )
        return replace(self, noise=noise, median=noise.global_bg, rms=noise.global_rms)

    def apply_inplace(self, out: np.ndarray, origin: tuple[int, int] | None = None) -> None:
        """Apply this (data-independent) step to the float32 array ``out`` in place;
        ``origin`` is the image (row, column) of ``out[0, 0]``, for a local step."""
        if self.is_data_dependent:
            raise RuntimeError(f"{self.label} depends on the image: fit the chain first")
        if self.op == "local_standardise":
            if origin is None or out.ndim != 2:
                raise RuntimeError(f"{self.label} applies to 2-D tiles with their origin")
            assert self.noise is not None
            y0, x0 = origin
            bg, rms = self.noise.window(y0, y0 + out.shape[0], x0, x0 + out.shape[1])
            out -= bg
            out /= rms
        elif self.op == "clip":
            np.clip(out, self.min, self.max, out=out)
        elif self.op == "linear":
            if self.to_unit:
                lo, hi = cast(float, self.min), cast(float, self.max)
                out -= lo
                out /= hi - lo
            else:
                scale = 1.0 if self.scale is None else self.scale
                offset = 0.0 if self.offset is None else self.offset
                if scale != 1.0:
                    out *= scale
                if offset != 0.0:
                    out += offset
        elif self.op == "sqrt":
            sign = np.sign(out)
            np.abs(out, out=out)
            np.sqrt(out, out=out)
            out *= sign
        elif self.op == "log":
            a = _DEFAULT_LOG_A if self.a is None else self.a
            sign = np.sign(out)
            np.abs(out, out=out)
            out *= a
            np.log1p(out, out=out)
            out /= math.log1p(a)
            out *= sign
        elif self.op == "tanh":
            scale = 1.0 if self.scale is None else self.scale
            if scale != 1.0:
                out /= scale
            np.tanh(out, out=out)
        elif self.op == "standardise":
            out -= cast(float, self.median)
            out /= cast(float, self.rms)
        elif self.op == "asinh":
            scale = 1.0 if self.scale is None else self.scale
            if scale != 1.0:
                out /= scale
            np.arcsinh(out, out=out)
        else:  # nan
            value = 0.0 if self.value is None else self.value
            # one pass to find them (nan_to_num makes three over every pixel of every tile)
            blank = ~np.isfinite(out)
            if blank.any():
                out[blank] = value


@dataclass(frozen=True)
class FittedChain:
    """A chain whose data-dependent values are frozen: apply it to every tile of the image it
    was fitted on. ``chain`` is the chain as specified; ``steps`` are its resolved steps."""

    chain: Chain
    steps: tuple[NormStep, ...]

    def apply(self, array: np.ndarray, origin: tuple[int, int] | None = None) -> np.ndarray:
        """The normalised pixels of ``array`` (any shape) as a new float32 array; ``origin``
        is the image (row, column) of a tile's ``[0, 0]`` (needed by ``local_standardise``)."""
        out = np.array(array, dtype=np.float32, copy=True)
        for step in self.steps:
            step.apply_inplace(out, origin)
        return out

    @property
    def noise_map(self) -> NoiseMap | None:
        """The background and rms map of a chain with ``local_standardise``."""
        return next((s.noise for s in self.steps if s.op == "local_standardise"), None)

    @property
    def noise(self) -> tuple[float, float] | None:
        """The image's median and rms in image units, when the chain opens with
        ``standardise`` or ``local_standardise`` (only ``nan`` or ``clip`` steps before it;
        for a map, its medians): what turns a model's S/N outputs back into fluxes. None
        otherwise."""
        for step in self.steps:
            if step.op in ("standardise", "local_standardise"):
                return cast(float, step.median), cast(float, step.rms)
            if step.op not in ("nan", "clip"):
                return None
        return None

    def to_dicts(self) -> list[dict[str, Any]]:
        """The resolved steps as manifest tables (plain numbers), for provenance."""
        return [step.to_dict() for step in self.steps]


@dataclass(frozen=True)
class Chain:
    """A normalisation chain as specified (see the module docstring)."""

    steps: tuple[NormStep, ...]

    @property
    def is_data_dependent(self) -> bool:
        """Whether any step has a value to compute from the image (see :meth:`fit`)."""
        return any(step.is_data_dependent for step in self.steps)

    def fit(
        self,
        image: np.ndarray,
        *,
        max_samples: int | None = DEFAULT_MAX_SAMPLES,
        beam_pix: float | None = None,
    ) -> FittedChain:
        """Compute the data-dependent values of the chain on ``image``, once.

        Values are computed on the finite pixels of the image as they reach each step (after
        the steps before it). An image of more than ``max_samples`` pixels is sampled on a
        regular grid (every k-th pixel of every k-th row); ``None`` uses every pixel. A
        ``local_standardise`` step (always first) measures its map on the whole 2-D image,
        with boxes sized by ``beam_pix`` (the beam's FWHM in pixels; None: 64 px boxes).
        """
        if not self.is_data_dependent:
            return FittedChain(self, self.steps)
        steps = list(self.steps)
        if steps[0].op == "local_standardise":
            steps[0] = steps[0].fit_local(np.asanyarray(image), beam_pix)
            if not any(step.is_data_dependent for step in steps):
                return FittedChain(self, tuple(steps))
            raise ValueError("local_standardise cannot be combined with other fitted steps")
        last = max(i for i, step in enumerate(self.steps) if step.is_data_dependent)
        sample = _sample(np.asanyarray(image), max_samples)
        resolved: list[NormStep] = []
        for i, step in enumerate(self.steps):
            if step.is_data_dependent:
                step = step.resolve(sample[np.isfinite(sample)])
            resolved.append(step)
            if i < last:
                step.apply_inplace(sample)
        return FittedChain(self, tuple(resolved))

    def apply(self, array: np.ndarray) -> np.ndarray:
        """Fit on ``array`` and normalise it: for a whole image, not for its tiles one by one
        (see :meth:`fit`). Returns a new float32 array."""
        return self.fit(array).apply(array, (0, 0))

    def to_dicts(self) -> list[dict[str, Any]]:
        """The steps as specified, as manifest tables (the inverse of ``parse_chain``)."""
        return [step.to_dict() for step in self.steps]


def _sample(image: np.ndarray, max_samples: int | None) -> np.ndarray:
    """A float32 copy (1-D) of the image's pixels, or of a regular subsample of them."""
    if max_samples is not None and max_samples < 1:
        raise ValueError(f"max_samples must be at least 1, got {max_samples}")
    view = image
    if max_samples is not None and image.size > max_samples:
        if image.ndim == 2:
            step = math.ceil(math.sqrt(image.size / max_samples))
            view = image[::step, ::step]
        else:
            step = math.ceil(image.size / max_samples)
            view = np.ravel(image)[::step]
    return np.array(view, dtype=np.float32, copy=True).reshape(-1)


# --------------------------------------------------------------------------- parsing


def parse_chain(spec: Sequence[Mapping[str, Any]]) -> Chain:
    """Check a list of step tables (as read from a manifest) and build the :class:`Chain`.

    Raises :class:`ValueError` naming the step (1-based) and the key at fault.
    """
    if isinstance(spec, Mapping | str | bytes) or not isinstance(spec, Sequence):
        raise ValueError(
            f"the normalisation must be a list of step tables, got {type(spec).__name__}"
        )
    steps = [_parse_step(index, item) for index, item in enumerate(spec, start=1)]
    for step in steps[1:]:
        if step.op == "local_standardise":
            raise ValueError(f"{step.label}: must be the first step (it reads the raw image)")
    if steps and steps[0].op == "local_standardise":
        for step in steps[1:]:
            if step.is_data_dependent:
                raise ValueError(
                    f"{step.label}: no other step may be fitted on the image after "
                    "local_standardise"
                )
    if not any(step.op == "nan" for step in steps):
        steps.append(NormStep(op="nan", index=len(steps) + 1, value=0.0))
    return Chain(tuple(steps))


def _parse_step(index: int, item: Any) -> NormStep:
    where = f"normalisation step {index}"
    if not isinstance(item, Mapping):
        raise ValueError(f"{where}: must be a table of keys, got {type(item).__name__}")
    if "op" not in item:
        raise ValueError(f"{where}: no 'op' key; give one of {', '.join(_OPS)}")
    op = item["op"]
    if op not in _OPS:
        raise ValueError(f"{where}: unknown op {op!r}; expected one of {', '.join(_OPS)}")
    where = f"{where} ({op})"
    allowed = _KEYS[op]
    for key in item:
        if key != "op" and key not in allowed:
            hint = f"allowed keys: {', '.join(allowed)}" if allowed else "it takes no keys"
            raise ValueError(f"{where}: unknown key {key!r}; {hint}")
    values: dict[str, Any] = {}
    for key in allowed:
        if key not in item:
            continue
        raw = item[key]
        if key == "to_unit":
            if not isinstance(raw, bool):
                raise ValueError(f"{where}: 'to_unit' must be true or false, got {raw!r}")
            values[key] = raw
        else:
            values[key] = _number(where, key, raw)
    step = NormStep(op=cast(Op, op), index=index, **values)
    _check(where, step)
    return step


def _number(where: str, key: str, raw: Any) -> float:
    if isinstance(raw, bool) or not isinstance(raw, int | float | np.integer | np.floating):
        raise ValueError(f"{where}: {key!r} must be a number, got {raw!r}")
    value = float(raw)
    if not math.isfinite(value):
        raise ValueError(f"{where}: {key!r} must be finite, got {raw!r}")
    return value


def _check(where: str, s: NormStep) -> None:
    if s.op == "clip":
        _check_clip(where, s)
    elif s.op == "linear":
        if s.to_unit:
            if s.scale is not None or s.offset is not None:
                key = "scale" if s.scale is not None else "offset"
                raise ValueError(f"{where}: {key!r} cannot be combined with 'to_unit'")
            if (s.min is None) != (s.max is None):
                missing = "max" if s.max is None else "min"
                raise ValueError(
                    f"{where}: 'to_unit' with one bound: give {missing!r} too, or neither to "
                    "take the range from the image"
                )
            if s.min is not None and s.max is not None and not s.min < s.max:
                raise ValueError(f"{where}: 'min' ({s.min:g}) must be below 'max' ({s.max:g})")
        else:
            for key in ("min", "max"):
                if getattr(s, key) is not None:
                    raise ValueError(f"{where}: {key!r} is only used with 'to_unit = true'")
            if s.scale == 0.0:
                raise ValueError(f"{where}: 'scale' must not be 0 (every pixel would be equal)")
    elif s.op == "log":
        if s.a is not None and s.a <= 0:
            raise ValueError(f"{where}: 'a' must be positive, got {s.a:g}")
    elif s.op in ("tanh", "asinh") and s.scale is not None and s.scale <= 0:
        raise ValueError(f"{where}: 'scale' must be positive, got {s.scale:g}")
    elif s.op == "local_standardise":
        if s.box_beams is not None and not s.box_beams >= 1:
            raise ValueError(f"{where}: 'box_beams' must be at least 1, got {s.box_beams:g}")
    elif s.op == "standardise":
        if (s.median is None) != (s.rms is None):
            missing = "rms" if s.rms is None else "median"
            raise ValueError(
                f"{where}: give {missing!r} too, or neither to measure both on the image"
            )
        if s.rms is not None and s.rms <= 0:
            raise ValueError(f"{where}: 'rms' must be positive, got {s.rms:g}")


def _check_clip(where: str, s: NormStep) -> None:
    lower = [k for k in ("min", "lo_percentile", "lo_sigma") if getattr(s, k) is not None]
    upper = [k for k in ("max", "hi_percentile", "hi_sigma") if getattr(s, k) is not None]
    for side in (lower, upper):
        if len(side) > 1:
            raise ValueError(
                f"{where}: {side[0]!r} and {side[1]!r} both give the same bound; keep one"
            )
    if not lower and not upper:
        raise ValueError(
            f"{where}: no bound given; set 'min'/'max', 'lo_percentile'/'hi_percentile' or "
            "'lo_sigma'/'hi_sigma'"
        )
    for key in ("lo_percentile", "hi_percentile"):
        value = getattr(s, key)
        if value is not None and not 0.0 <= value <= 100.0:
            raise ValueError(f"{where}: {key!r} must be between 0 and 100, got {value:g}")
    if s.min is not None and s.max is not None and s.min > s.max:
        raise ValueError(f"{where}: 'min' ({s.min:g}) must not be above 'max' ({s.max:g})")
    for lo_key, hi_key in (("lo_percentile", "hi_percentile"), ("lo_sigma", "hi_sigma")):
        lo, hi = getattr(s, lo_key), getattr(s, hi_key)
        if lo is not None and hi is not None and not lo < hi:
            raise ValueError(f"{where}: {lo_key!r} ({lo:g}) must be below {hi_key!r} ({hi:g})")
