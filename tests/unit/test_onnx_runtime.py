"""The ONNX Runtime session cache and the shipped matched filter's forward pass, on the CPU.

The cache is tested on real copies of the shipped model under other ids; the forward pass on a
synthetic tile whose answer is known: a Gaussian point source of given matched-filter S/N in
white noise of unit rms.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

from astro_otf.models.builders.matched_filter import gaussian_kernel
from astro_otf.models.manifest import (
    SHIPPED_MODELS,
    LoadedModel,
    ManifestError,
    ModelFileError,
    load_manifest,
    load_manifests,
)
from astro_otf.models.onnx_runtime import (
    SessionBudgetError,
    SessionCache,
    resolve_providers,
    run,
)

SHIPPED = SHIPPED_MODELS / "matched-filter" / "1.0"
CPU = "CPUExecutionProvider"
TILE = 256
SIGMA = 2.0
SOURCE = (100, 120)  # (y, x)


@pytest.fixture(scope="module")
def shipped() -> LoadedModel:
    return load_manifest(SHIPPED / "manifest.toml")


@pytest.fixture
def zoo(tmp_path: Path) -> list[LoadedModel]:
    """Three copies of the shipped model under ids mf-a, mf-b, mf-c (16 MB each)."""
    root = tmp_path / "zoo"
    for name in ("mf-a", "mf-b", "mf-c"):
        folder = root / name / "1.0"
        shutil.copytree(SHIPPED, folder)
        manifest = folder / "manifest.toml"
        manifest.write_text(
            manifest.read_text().replace('id = "matched-filter"', f'id = "{name}"', 1)
        )
    models = load_manifests(root)
    assert [m.manifest.memory_mb for m in models] == [16, 16, 16]
    return models


def _source_tile(snr: float, seed: int = 7, noise: bool = True) -> tuple[np.ndarray, float]:
    """A [1, 1, T, T] tile: white noise of rms 1 plus a point source (beam sigma 2 px) at
    SOURCE whose peak is chosen to give the matched-filter S/N ``snr``. Returns the tile and the
    expected noiseless score at the source."""
    yy, xx = np.mgrid[:TILE, :TILE]
    beam = np.exp(-((yy - SOURCE[0]) ** 2 + (xx - SOURCE[1]) ** 2) / (2 * SIGMA**2))
    kernel = gaussian_kernel(SIGMA)
    r = kernel.shape[0] // 2
    y, x = SOURCE
    score_per_unit_peak = float((beam[y - r : y + r + 1, x - r : x + r + 1] * kernel).sum())
    peak = snr / score_per_unit_peak
    tile = peak * beam
    if noise:
        tile = tile + np.random.default_rng(seed).normal(size=(TILE, TILE))
    return tile.astype(np.float32)[None, None], peak * score_per_unit_peak


def test_hits_and_misses(zoo: list[LoadedModel]) -> None:
    cache = SessionCache(memory_budget_mb=100)
    a = zoo[0]
    first = cache.get(a)
    assert cache.get(a) is first
    assert cache.get(a, "fp32") is first
    fp16 = cache.get(a, "fp16")
    assert fp16 is not first
    stats = cache.stats()
    assert (stats.hits, stats.misses, stats.evictions) == (2, 2, 0)
    assert stats.loaded == (("mf-a", "1.0", "fp32"), ("mf-a", "1.0", "fp16"))
    assert (stats.used_mb, stats.budget_mb) == (32.0, 100.0)


def test_lru_eviction_under_a_small_budget(zoo: list[LoadedModel]) -> None:
    a, b, c = zoo
    cache = SessionCache(memory_budget_mb=40)  # room for two 16 MB sessions
    cache.get(a)
    cache.get(b)
    cache.get(a)  # a is now the most recently used
    cache.get(c)  # evicts b
    stats = cache.stats()
    assert stats.loaded == (("mf-a", "1.0", "fp32"), ("mf-c", "1.0", "fp32"))
    assert (stats.hits, stats.misses, stats.evictions) == (1, 3, 1)
    cache.get(b)  # a miss again; evicts a
    cache.get(c, "fp16")  # evicts c fp32
    stats = cache.stats()
    assert stats.loaded == (("mf-b", "1.0", "fp32"), ("mf-c", "1.0", "fp16"))
    assert (stats.hits, stats.misses, stats.evictions) == (1, 5, 3)
    assert stats.used_mb <= 40
    cache.clear()
    assert cache.stats().loaded == ()


def test_model_larger_than_budget_is_refused(zoo: list[LoadedModel]) -> None:
    cache = SessionCache(memory_budget_mb=10)
    with pytest.raises(SessionBudgetError, match=r"needs 16 MB .* budget is 10 MB"):
        cache.get(zoo[0])
    with pytest.raises(ValueError, match="memory_budget_mb"):
        SessionCache(memory_budget_mb=0)


def test_tampered_file_is_not_loaded(zoo: list[LoadedModel]) -> None:
    target = zoo[0].file("fp16")
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF
    target.write_bytes(bytes(data))
    cache = SessionCache(memory_budget_mb=100)
    with pytest.raises(ModelFileError, match="sha256"):
        cache.get(zoo[0], "fp16")
    assert cache.stats().loaded == ()
    cache.get(zoo[0], "fp32")  # the untouched file still loads


def test_manifest_that_does_not_describe_the_graph(tmp_path: Path) -> None:
    folder = tmp_path / "matched-filter" / "1.0"
    shutil.copytree(SHIPPED, folder)
    manifest = folder / "manifest.toml"
    manifest.write_text(
        manifest.read_text()
        .replace('score = "score"', 'score = "snr"')
        .replace('name = "image"', 'name = "tile"')
    )
    with pytest.raises(ManifestError) as caught:
        SessionCache(memory_budget_mb=100).get(load_manifest(manifest))
    message = str(caught.value)
    assert str(manifest) in message
    assert "input.name: 'tile' is not an input" in message
    assert "output.score: 'snr' is not an output" in message


def test_sized_tiles_need_a_graph_of_free_height_and_width(tmp_path: Path) -> None:
    """size_multiple promises tiles of any multiple of it: the matched filter's graph takes
    256 x 256 only, so a manifest that says so is refused at load, naming the field."""
    folder = tmp_path / "matched-filter" / "1.0"
    shutil.copytree(SHIPPED, folder)
    manifest = folder / "manifest.toml"
    text = manifest.read_text().replace("beam_fwhm_pix", "size_multiple = 8\nbeam_fwhm_pix", 1)
    manifest.write_text(text)
    with pytest.raises(ManifestError, match=r"input.size_multiple: .* fixed height and width"):
        SessionCache(memory_budget_mb=100).get(load_manifest(manifest))


def test_shipped_detectors_take_any_multiple_of_their_size_multiple() -> None:
    """What size_multiple claims of the shipped radio-detector graphs: any multiple runs (and
    keeps its shape), a side off the multiple does not."""
    cache = SessionCache(memory_budget_mb=200, intra_op_threads=1)
    for version in ("1.0", "2.0"):
        model = load_manifest(SHIPPED_MODELS / "radio-detector" / version / "manifest.toml")
        multiple = model.manifest.input.size_multiple
        assert multiple is not None
        assert multiple == 2 ** (len(str(model.manifest.provenance["widths"]).split(",")) - 1)
        session = cache.get(model)
        for shape in ((multiple * 3, multiple * 5), (64, 128)):
            out = run(session, np.zeros((2, 1, *shape), np.float32), input_name="image")
            assert out["score"].shape == (2, 1, *shape)
        with pytest.raises(Exception, match="broadcast"):
            run(session, np.zeros((1, 1, multiple * 4 + multiple // 2, 64), np.float32))


def test_cpu_provider_by_default(shipped: LoadedModel) -> None:
    cache = SessionCache(memory_budget_mb=100, intra_op_threads=1)
    assert cache.providers == [CPU]
    assert cache.get(shipped).get_providers() == [CPU]


def test_provider_choice(caplog: pytest.LogCaptureFixture) -> None:
    with_gpu = ["TensorrtExecutionProvider", "CUDAExecutionProvider", CPU]
    assert resolve_providers(["cuda"], with_gpu) == ["CUDAExecutionProvider", CPU]
    assert resolve_providers(["tensorrt", "cuda"], with_gpu) == with_gpu
    assert resolve_providers(["CUDAExecutionProvider", "cpu"], with_gpu) == [
        "CUDAExecutionProvider",
        CPU,
    ]
    assert resolve_providers(None, with_gpu) == [CPU]
    with caplog.at_level(logging.WARNING, logger="astro_otf.models.onnx_runtime"):
        assert resolve_providers(["cuda"], [CPU]) == [CPU]
    assert "CUDAExecutionProvider was requested" in caplog.text
    with pytest.raises(ValueError, match="unknown execution provider 'gpu'"):
        resolve_providers(["gpu"], with_gpu)


def test_point_source_snr_and_position(shipped: LoadedModel) -> None:
    tile, expected = _source_tile(snr=30.0)
    session = SessionCache(memory_budget_mb=100).get(shipped, "fp32")
    out = run(session, tile, input_name=shipped.manifest.input.name)
    score, peak = out["score"][0, 0], out["peak"][0, 0]
    assert out["score"].shape == out["peak"].shape == (1, 1, TILE, TILE)
    assert out["score"].dtype == np.float32
    assert np.unravel_index(int(np.argmax(score)), score.shape) == SOURCE
    assert peak[SOURCE] == 1.0
    assert set(np.unique(peak)) <= {0.0, 1.0}
    assert score[SOURCE] == pytest.approx(expected, rel=0.15)
    # Away from the source the score is filtered white noise of unit rms (unit L2 kernel).
    far = score[160:, :]
    assert float(far.std()) == pytest.approx(1.0, rel=0.05)
    # A noiseless source scores exactly what the matched filter predicts.
    clean, _ = _source_tile(snr=30.0, noise=False)
    noiseless = run(session, clean)["score"][0, 0]
    assert noiseless[SOURCE] == pytest.approx(30.0, rel=1e-4)


def test_fp16_agrees_with_fp32(shipped: LoadedModel) -> None:
    cache = SessionCache(memory_budget_mb=100)
    tile, _ = _source_tile(snr=30.0)
    # In rms units and in image units (Jy/beam, where float16 alone would underflow).
    for scale in (1.0, 3.8e-7):
        batch = tile * np.float32(scale)
        s32 = run(cache.get(shipped, "fp32"), batch)["score"]
        out16 = run(cache.get(shipped, "fp16"), batch)
        s16 = out16["score"]
        assert s16.dtype == np.float32
        assert float(np.max(np.abs(s16 - s32))) <= 1e-2 * float(np.max(np.abs(s32)))
        assert out16["peak"][0, 0][SOURCE] == 1.0
    blank = run(cache.get(shipped, "fp16"), np.zeros((1, 1, TILE, TILE), np.float32))
    assert not np.any(blank["score"])  # an all-zero tile gives zeros, not NaN


def test_batch_equals_single_runs(shipped: LoadedModel) -> None:
    rng = np.random.default_rng(11)
    batch = rng.normal(size=(5, 1, TILE, TILE)).astype(np.float32)
    batch[2], _ = _source_tile(snr=12.0)
    cache = SessionCache(memory_budget_mb=100)
    for precision in ("fp32", "fp16"):
        session = cache.get(shipped, precision)
        together = run(session, batch)
        for i in range(len(batch)):
            alone = run(session, batch[i : i + 1])
            np.testing.assert_allclose(together["score"][i], alone["score"][0], atol=1e-5)
            np.testing.assert_array_equal(together["peak"][i], alone["peak"][0])


def test_run_checks_its_batch(shipped: LoadedModel) -> None:
    session = SessionCache(memory_budget_mb=100).get(shipped)
    as_float64 = np.zeros((2, 1, TILE, TILE), dtype=np.float64)
    assert run(session, as_float64)["score"].dtype == np.float32
    with pytest.raises(ValueError, match=r"batch of shape \[1, 1, 128, 128\] does not fit"):
        run(session, np.zeros((1, 1, 128, 128), np.float32))
    with pytest.raises(ValueError, match="does not fit"):
        run(session, np.zeros((TILE, TILE), np.float32))
    with pytest.raises(ValueError, match="no input 'tile'"):
        run(session, as_float64, input_name="tile")
    with pytest.raises(ValueError, match="empty batch"):
        run(session, np.zeros((0, 1, TILE, TILE), np.float32))
