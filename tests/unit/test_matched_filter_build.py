"""The matched-filter builder: deterministic bytes, a valid ONNX graph, and shipped files that
are exactly what the builder makes today (so the zoo can always be regenerated and checked)."""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np
import onnx
import pytest

from astro_otf.models.builders import matched_filter
from astro_otf.models.builders.matched_filter import (
    DEFAULT_BEAM_SIGMA_PIX,
    DEFAULT_TILE,
    build,
    gaussian_kernel,
    gaussian_profile,
    kernel_radius,
)
from astro_otf.models.manifest import SHIPPED_MODELS, load_manifest, sha256_of
from astro_otf.models.onnx_runtime import SessionCache, run

SHIPPED = SHIPPED_MODELS / "matched-filter" / "1.0"
NAMES = ["matched_filter.fp32.onnx", "matched_filter.fp16.onnx", "manifest.toml"]


def _contents(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_building_twice_gives_identical_bytes(tmp_path: Path) -> None:
    first = build(DEFAULT_BEAM_SIGMA_PIX, DEFAULT_TILE, tmp_path / "a")
    second = build(DEFAULT_BEAM_SIGMA_PIX, DEFAULT_TILE, tmp_path / "b")
    assert [p.name for p in first] == [p.name for p in second] == NAMES
    assert _contents(tmp_path / "a") == _contents(tmp_path / "b")


def test_shipped_files_match_a_fresh_build(tmp_path: Path) -> None:
    build(DEFAULT_BEAM_SIGMA_PIX, DEFAULT_TILE, tmp_path)
    assert _contents(SHIPPED) == _contents(tmp_path), (
        "the shipped model differs from a fresh build: run python -m "
        "astro_otf.models.builders.matched_filter --out src/astro_otf/models/zoo/matched-filter/1.0"
    )
    model = load_manifest(SHIPPED / "manifest.toml")
    for precision in ("fp32", "fp16"):
        assert sha256_of(model.file(precision)) == model.sha256(precision)


def test_cli_writes_the_same_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert matched_filter.main(["--out", str(tmp_path)]) == 0
    assert _contents(tmp_path) == _contents(SHIPPED)
    printed = capsys.readouterr().out
    digest = hashlib.sha256((tmp_path / "manifest.toml").read_bytes()).hexdigest()
    assert f"{digest}  {tmp_path / 'manifest.toml'}" in printed


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_graph_is_valid_with_a_dynamic_batch(precision: str) -> None:
    model = onnx.load(str(SHIPPED / f"matched_filter.{precision}.onnx"))
    onnx.checker.check_model(model, full_check=True)
    assert [(o.domain, o.version) for o in model.opset_import] == [("", 17)]
    assert model.ir_version == 8
    (image,) = model.graph.input
    assert image.name == "image"
    assert image.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    dims = image.type.tensor_type.shape.dim
    assert dims[0].dim_param == "N"
    assert [d.dim_value for d in dims[1:]] == [1, DEFAULT_TILE, DEFAULT_TILE]
    assert [o.name for o in model.graph.output] == ["score", "peak"]
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("Conv") == 2
    assert {"MaxPool", "Equal"} <= set(ops)
    if precision == "fp16":
        weights = {t.name: t.data_type for t in model.graph.initializer}
        assert weights["kernel_y"] == weights["kernel_x"] == onnx.TensorProto.FLOAT16
    props = {p.key: p.value for p in model.metadata_props}
    assert props == {
        "beam_sigma_pix": "2.0",
        "kernel_size": "13",
        "tile": "256",
        "precision": precision,
    }


def test_kernel_is_a_unit_norm_gaussian_about_six_sigma_wide() -> None:
    for sigma in (0.7, 1.3, 2.0, 3.5):
        kernel = gaussian_kernel(sigma)
        size = 2 * kernel_radius(sigma) + 1
        assert kernel.shape == (size, size)
        assert size % 2 == 1
        assert 6 * sigma <= size <= 6 * sigma + 3
        assert math.isclose(float(np.sqrt((kernel**2).sum())), 1.0, rel_tol=1e-12)
        assert np.unravel_index(int(np.argmax(kernel)), kernel.shape) == (size // 2, size // 2)
        np.testing.assert_allclose(kernel, kernel.T)
        assert math.isclose(float(np.sum(gaussian_profile(sigma) ** 2)), 1.0, rel_tol=1e-12)
    with pytest.raises(ValueError, match="positive"):
        gaussian_kernel(0.0)


def test_other_beam_and_tile_build_and_run(tmp_path: Path) -> None:
    folder = tmp_path / "matched-filter" / "3.0"
    build(3.0, 64, folder, overlap=8, version="3.0")
    model = load_manifest(folder / "manifest.toml")
    assert (model.version, model.manifest.input.tile, model.manifest.tiling.overlap) == (
        "3.0",
        64,
        8,
    )
    assert model.manifest.provenance["kernel_size"] == 19
    session = SessionCache(memory_budget_mb=100).get(model)
    tile = np.zeros((3, 1, 64, 64), np.float32)
    tile[:, 0, 30, 40] = 1.0
    out = run(session, tile)
    assert out["score"].shape == (3, 1, 64, 64)
    assert np.argwhere(out["peak"][0, 0] == 1.0).tolist() == [[30, 40]]
    with pytest.raises(ValueError, match="overlap"):
        build(2.0, 64, tmp_path / "bad", overlap=32)
