"""Normalisation chains (astro_otf.imaging.normalise): parsing, step values, fit-once, NaN."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from astro_otf.domain.errors import JobFailure
from astro_otf.imaging.normalise import Chain, NormStep, parse_chain
from astro_otf.imaging.tiling import iter_tiles, tile_grid


def run(steps: list[dict[str, Any]], data: Any) -> np.ndarray:
    return parse_chain(steps).apply(np.asarray(data, dtype=np.float64))


# --------------------------------------------------------------------------- step values


def test_clip_by_value() -> None:
    out = run([{"op": "clip", "min": -1, "max": 3}], [-2.0, 0.0, 5.0])
    np.testing.assert_array_equal(out, [-1.0, 0.0, 3.0])


def test_clip_one_sided() -> None:
    np.testing.assert_array_equal(run([{"op": "clip", "min": 0}], [-2.0, 7.0]), [0.0, 7.0])
    np.testing.assert_array_equal(run([{"op": "clip", "max": 1}], [-2.0, 7.0]), [-2.0, 1.0])


def test_clip_by_percentile_uses_finite_pixels_only() -> None:
    data = np.concatenate([np.arange(101.0), [np.nan, np.inf, -np.inf]])
    fitted = parse_chain([{"op": "clip", "lo_percentile": 10, "hi_percentile": 90}]).fit(data)
    assert fitted.steps[0].min == pytest.approx(10.0)
    assert fitted.steps[0].max == pytest.approx(90.0)
    out = fitted.apply(data)
    assert out[:101].min() == pytest.approx(10.0)
    assert out[:101].max() == pytest.approx(90.0)


def test_clip_by_sigma_is_median_plus_k_mad_rms() -> None:
    data = np.array([0.0, 1.0, 2.0, 3.0, 4.0])  # median 2, MAD 1
    fitted = parse_chain([{"op": "clip", "lo_sigma": -1, "hi_sigma": 1}]).fit(data)
    rms = 1.482602218505602
    assert fitted.steps[0].min == pytest.approx(2.0 - rms)
    assert fitted.steps[0].max == pytest.approx(2.0 + rms)


def test_linear_scale_and_offset() -> None:
    out = run([{"op": "linear", "scale": 2, "offset": 1}], [0.0, 1.5, -1.0])
    np.testing.assert_allclose(out, [1.0, 4.0, -1.0])


def test_linear_to_unit_with_bounds_and_from_data() -> None:
    out = run([{"op": "linear", "to_unit": True, "min": -2, "max": 2}], [-2.0, 0.0, 2.0])
    np.testing.assert_allclose(out, [0.0, 0.5, 1.0])
    out = run([{"op": "linear", "to_unit": True}], [3.0, 5.0, np.nan, 7.0])
    np.testing.assert_allclose(out, [0.0, 0.5, 0.0, 1.0])  # NaN -> 0 by the appended nan step


def test_sqrt_is_signed() -> None:
    np.testing.assert_allclose(run([{"op": "sqrt"}], [4.0, -9.0, 0.0]), [2.0, -3.0, 0.0])


def test_log_maps_unit_interval_onto_itself() -> None:
    out = run([{"op": "log", "a": 9}], [0.0, 1 / 9, 1.0, -1.0])
    np.testing.assert_allclose(out, [0.0, math.log10(2.0), 1.0, -1.0], rtol=1e-6)
    out = run([{"op": "log"}], [0.0, 1.0])  # default a = 1000
    np.testing.assert_allclose(out, [0.0, 1.0], rtol=1e-6)


def test_tanh_scale() -> None:
    out = run([{"op": "tanh", "scale": 2}], [2.0, -4.0, 0.0])
    np.testing.assert_allclose(out, [math.tanh(1.0), math.tanh(-2.0), 0.0], rtol=1e-6)


def test_nan_step_replaces_non_finite() -> None:
    out = run([{"op": "nan", "value": -1}], [np.nan, np.inf, -np.inf, 2.0])
    np.testing.assert_array_equal(out, [-1.0, -1.0, -1.0, 2.0])


def test_nan_step_is_appended_when_missing_and_not_twice() -> None:
    chain = parse_chain([{"op": "sqrt"}])
    assert [s.op for s in chain.steps] == ["sqrt", "nan"]
    assert chain.steps[-1].value == 0.0
    chain = parse_chain([{"op": "nan", "value": 5}, {"op": "sqrt"}])
    assert [s.op for s in chain.steps] == ["nan", "sqrt"]
    np.testing.assert_allclose(chain.apply(np.array([np.nan, 16.0])), [math.sqrt(5), 4.0])


def test_every_step_keeps_nan_until_the_nan_step() -> None:
    steps: list[dict[str, Any]] = [
        {"op": "clip", "min": -1, "max": 1},
        {"op": "linear", "scale": 3, "offset": 1},
        {"op": "sqrt"},
        {"op": "log", "a": 10},
        {"op": "tanh", "scale": 0.5},
    ]
    for step in steps:
        out = Chain((parse_chain([step]).steps[0],)).apply(np.array([np.nan, 0.5]))
        assert np.isnan(out[0]), step
        assert np.isfinite(out[1]), step
    out = parse_chain([*steps, {"op": "nan", "value": 7}]).apply(np.array([np.nan, 0.5]))
    assert out[0] == 7.0


def test_yolo_cianna_chain_matches_reference() -> None:
    rng = np.random.default_rng(3)
    image = rng.normal(0.0, 2e-5, size=(64, 64))
    lo, hi = 0.4e-6, 0.4e-4
    chain = parse_chain(
        [
            {"op": "clip", "min": lo, "max": hi},
            {"op": "linear", "to_unit": True, "min": lo, "max": hi},
            {"op": "tanh", "scale": 1 / 3},
        ]
    )
    expected = np.tanh(3.0 * (np.clip(image, lo, hi) - lo) / (hi - lo))
    np.testing.assert_allclose(chain.apply(image), expected, atol=1e-6)


def test_output_is_a_new_float32_array_from_any_input() -> None:
    data = np.arange(6, dtype=">f4").reshape(2, 3)  # FITS byte order
    out = parse_chain([{"op": "linear", "scale": 2}]).apply(data)
    assert out.dtype == np.float32 and out.dtype.isnative
    np.testing.assert_array_equal(out, 2 * np.arange(6).reshape(2, 3))
    np.testing.assert_array_equal(data, np.arange(6).reshape(2, 3))  # input untouched
    ints = parse_chain([{"op": "sqrt"}]).apply(np.array([[4, 9]], dtype=np.int16))
    assert ints.dtype == np.float32


# --------------------------------------------------------------------------- fit once


PERCENTILE_CHAIN: list[dict[str, Any]] = [
    {"op": "clip", "lo_percentile": 1, "hi_percentile": 99.5},
    {"op": "linear", "to_unit": True},
    {"op": "tanh", "scale": 0.5},
]


def test_percentile_clip_fitted_once_is_identical_across_tiles() -> None:
    rng = np.random.default_rng(7)
    image = rng.standard_exponential(size=(150, 170))
    image[40:60, 50:70] += 40.0  # a bright region: tiles differ a lot from each other
    image[5, 5] = np.nan
    fitted = parse_chain(PERCENTILE_CHAIN).fit(image)
    assert not parse_chain(fitted.to_dicts()).is_data_dependent
    whole = fitted.apply(image)
    tile, overlap = 64, 20
    seen = np.full(image.shape, np.nan, dtype=np.float32)
    for spec, data in iter_tiles(image, tile, overlap):
        out = fitted.apply(data)[: spec.height, : spec.width]
        np.testing.assert_array_equal(out, whole[spec.slices])
        # a pixel seen by an earlier tile got exactly the same value there
        before = seen[spec.slices]
        known = ~np.isnan(before)
        np.testing.assert_array_equal(out[known], before[known])
        seen[spec.slices] = out
    # fitting per tile would not: that is why fit() exists
    specs = tile_grid(image.shape, tile, overlap)
    per_tile = [parse_chain(PERCENTILE_CHAIN).apply(image[s.slices]) for s in specs[:2]]
    shared = (slice(0, specs[0].height), slice(specs[1].x0, specs[0].width))
    a = per_tile[0][shared]
    b = per_tile[1][:, : specs[0].width - specs[1].x0]
    assert not np.array_equal(a, b)


def test_resolved_steps_round_trip_through_parse() -> None:
    rng = np.random.default_rng(1)
    image = rng.normal(size=(80, 90))
    chain = parse_chain(
        [{"op": "clip", "lo_sigma": -3, "hi_percentile": 99}, *PERCENTILE_CHAIN[1:]]
    )
    fitted = chain.fit(image)
    assert fitted.chain is chain
    replay = parse_chain(fitted.to_dicts())
    np.testing.assert_array_equal(replay.apply(image), fitted.apply(image))
    assert chain.to_dicts()[0] == {"op": "clip", "lo_sigma": -3.0, "hi_percentile": 99.0}


def test_fit_samples_big_images_and_reads_memory_maps(tmp_path: Path) -> None:
    rng = np.random.default_rng(11)
    path = tmp_path / "image.npy"
    np.save(path, rng.normal(size=(1200, 1100)).astype(np.float32))
    image = np.load(path, mmap_mode="r")
    chain = parse_chain([{"op": "clip", "lo_percentile": 5, "hi_percentile": 95}])
    exact = chain.fit(image, max_samples=None).steps[0]
    sampled = chain.fit(image, max_samples=50_000).steps[0]
    assert exact.min == pytest.approx(np.percentile(image, 5))
    assert sampled.min == pytest.approx(exact.min, abs=0.03)
    assert sampled.max == pytest.approx(exact.max, abs=0.03)
    assert sampled.min != exact.min  # the sample was used


def test_data_independent_chain_fits_to_itself() -> None:
    chain = parse_chain([{"op": "clip", "min": 0, "max": 1}, {"op": "sqrt"}])
    assert not chain.is_data_dependent
    assert chain.fit(np.zeros((3, 3))).steps == chain.steps


def test_data_dependent_step_cannot_be_applied_unfitted() -> None:
    step = parse_chain([{"op": "clip", "hi_percentile": 99}]).steps[0]
    with pytest.raises(RuntimeError, match="fit the chain first"):
        step.apply_inplace(np.zeros(3, dtype=np.float32))


def test_all_blank_image_fails_the_job() -> None:
    chain = parse_chain([{"op": "clip", "lo_percentile": 1}])
    with pytest.raises(JobFailure, match=r"no finite pixels.*step 1 \(clip\)"):
        chain.fit(np.full((4, 4), np.nan))


def test_constant_image_cannot_be_mapped_to_unit() -> None:
    with pytest.raises(JobFailure, match="has the value 1"):
        parse_chain([{"op": "linear", "to_unit": True}]).fit(np.ones((4, 4)))


def test_inverted_fitted_bounds_fail_the_job() -> None:
    chain = parse_chain([{"op": "clip", "min": 0, "hi_percentile": 50}])
    with pytest.raises(JobFailure, match="inverted"):
        chain.fit(-np.arange(1.0, 10.0))


# --------------------------------------------------------------------------- bad specs


@pytest.mark.parametrize(
    ("step", "match"),
    [
        ({"min": 0}, r"step 2: no 'op' key"),
        ({"op": "gamma"}, r"step 2: unknown op 'gamma'"),
        ({"op": "clip"}, r"step 2 \(clip\): no bound"),
        ({"op": "clip", "mn": 0}, r"step 2 \(clip\): unknown key 'mn'"),
        ({"op": "clip", "min": "0"}, r"step 2 \(clip\): 'min' must be a number"),
        ({"op": "clip", "min": True}, r"step 2 \(clip\): 'min' must be a number"),
        ({"op": "clip", "max": math.inf}, r"step 2 \(clip\): 'max' must be finite"),
        ({"op": "clip", "min": 2, "max": 1}, r"step 2 \(clip\): 'min' \(2\) must not be above"),
        ({"op": "clip", "min": 0, "lo_percentile": 1}, r"\(clip\): 'min' and 'lo_percentile'"),
        ({"op": "clip", "hi_percentile": 101}, r"\(clip\): 'hi_percentile' must be between"),
        (
            {"op": "clip", "lo_percentile": 50, "hi_percentile": 50},
            r"\(clip\): 'lo_percentile' \(50\) must be below",
        ),
        ({"op": "clip", "lo_sigma": 3, "hi_sigma": -3}, r"\(clip\): 'lo_sigma' \(3\) must be"),
        ({"op": "linear", "scale": 0}, r"step 2 \(linear\): 'scale' must not be 0"),
        ({"op": "linear", "min": 0}, r"\(linear\): 'min' is only used with 'to_unit"),
        ({"op": "linear", "to_unit": 1}, r"\(linear\): 'to_unit' must be true or false"),
        ({"op": "linear", "to_unit": True, "scale": 2}, r"\(linear\): 'scale' cannot be"),
        ({"op": "linear", "to_unit": True, "min": 0}, r"\(linear\): 'to_unit' with one bound"),
        ({"op": "linear", "to_unit": True, "min": 1, "max": 1}, r"\(linear\): 'min' \(1\)"),
        ({"op": "sqrt", "a": 1}, r"step 2 \(sqrt\): unknown key 'a'; it takes no keys"),
        ({"op": "log", "a": 0}, r"step 2 \(log\): 'a' must be positive"),
        ({"op": "tanh", "scale": -1}, r"step 2 \(tanh\): 'scale' must be positive"),
        ({"op": "nan", "value": None}, r"step 2 \(nan\): 'value' must be a number"),
        ("clip", r"step 2: must be a table"),
    ],
)
def test_bad_step_raises_value_error_naming_step_and_key(step: Any, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        parse_chain([{"op": "sqrt"}, step])


@pytest.mark.parametrize("spec", [{"op": "clip"}, "clip", None])
def test_chain_must_be_a_list(spec: Any) -> None:
    with pytest.raises(ValueError, match="list of step tables"):
        parse_chain(spec)


def test_parse_accepts_numpy_and_int_numbers() -> None:
    step = parse_chain([{"op": "clip", "min": np.float32(0.5), "max": 2}]).steps[0]
    assert step == NormStep(op="clip", index=1, min=0.5, max=2.0)
    assert isinstance(step.max, float)


# --------------------------------------------------------------------------- monotone

finite = st.floats(-1e6, 1e6, allow_nan=False, width=32)


@settings(max_examples=60, deadline=None)
@given(
    values=hnp.arrays(np.float64, st.integers(2, 200), elements=finite),
    step=st.sampled_from(
        [
            {"op": "sqrt"},
            {"op": "log", "a": 1000},
            {"op": "log", "a": 0.5},
            {"op": "tanh", "scale": 1.0},
            {"op": "tanh", "scale": 1e3},
            {"op": "clip", "lo_percentile": 5, "hi_percentile": 95},
            {"op": "linear", "to_unit": True},
        ]
    ),
)
def test_stretches_are_monotone(values: np.ndarray, step: dict[str, Any]) -> None:
    if step.get("to_unit"):
        assume(values.min() < values.max())  # a constant image has no range to map
    ordered = np.sort(values)
    out = parse_chain([step]).apply(ordered)
    assert np.all(np.isfinite(out))
    assert np.all(np.diff(out) >= 0)


@settings(max_examples=40, deadline=None)
@given(
    values=hnp.arrays(
        np.float64,
        st.integers(2, 100),
        elements=st.floats(-1.0, 1.0, width=32),
        unique=True,
    ),
    step=st.sampled_from([{"op": "sqrt"}, {"op": "log", "a": 10}, {"op": "tanh", "scale": 1}]),
)
def test_stretches_are_strictly_increasing_on_the_unit_range(
    values: np.ndarray, step: dict[str, Any]
) -> None:
    ordered = np.sort(values)
    out = parse_chain([step]).apply(ordered)
    gaps = np.diff(ordered)
    # float32 output: only gaps well above its resolution must stay strictly ordered
    assert np.all(np.diff(out)[gaps > 1e-5] > 0)


# --------------------------------------------------------------------------- S/N units


def test_standardise_puts_pixels_in_units_of_the_robust_rms() -> None:
    rng = np.random.default_rng(1)
    data = rng.normal(5.0, 2.0, 200_000)
    data[:100] = 1e6  # a few bright sources barely move a median and a MAD
    fitted = parse_chain([{"op": "standardise"}]).fit(data)
    step = fitted.steps[0]
    assert step.median == pytest.approx(5.0, abs=0.02)
    assert step.rms == pytest.approx(2.0, rel=0.01)
    assert fitted.noise == (step.median, step.rms)
    out = fitted.apply(data)
    assert float(np.median(out[100:])) == pytest.approx(0.0, abs=0.02)
    assert float(np.std(out[100:])) == pytest.approx(1.0, rel=0.01)


def test_standardise_with_given_values_and_asinh() -> None:
    out = run(
        [{"op": "standardise", "median": 1.0, "rms": 2.0}, {"op": "asinh", "scale": 3.0}],
        [1.0, 7.0, -5.0],
    )
    np.testing.assert_allclose(out, np.arcsinh([0.0, 1.0, -1.0]), rtol=1e-6)


def test_noise_only_when_the_chain_opens_with_standardise() -> None:
    data = np.random.default_rng(2).normal(size=1000)
    assert parse_chain([{"op": "tanh"}, {"op": "standardise"}]).fit(data).noise is None
    assert parse_chain([{"op": "asinh"}]).fit(data).noise is None


def test_standardise_on_a_constant_image_fails_the_job() -> None:
    with pytest.raises(JobFailure, match="no noise to measure"):
        parse_chain([{"op": "standardise"}]).fit(np.zeros(1000))


@pytest.mark.parametrize(
    ("step", "match"),
    [
        ({"op": "standardise", "median": 1.0}, "give 'rms' too"),
        ({"op": "standardise", "median": 0.0, "rms": 0.0}, "'rms' must be positive"),
        ({"op": "asinh", "scale": -1}, "'scale' must be positive"),
        ({"op": "asinh", "a": 2}, "unknown key 'a'"),
    ],
)
def test_bad_snr_steps_name_the_key(step: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        parse_chain([step])
