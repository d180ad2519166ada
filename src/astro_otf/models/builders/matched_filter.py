r"""Build the ``matched-filter`` detector: a real ONNX model made in code, with no training.

Why it exists: the service needs a first ONNX model that is correct by construction, so that
the whole path (manifest, sha256 check, session cache, batching, one forward pass over many
jobs' tiles, decoding) is exercised on a model whose answer is known. A matched filter is the
optimal linear detector of a point source of known shape in white noise, so it is also the
baseline a trained detector has to beat.

The graph, for an input ``image`` of shape [N, 1, T, T] (dynamic batch N):

1. Convolution with a fixed Gaussian kernel of the beam's sigma, 2*ceil(3 sigma)+1 pixels on
   a side, normalised to unit L2 norm, with "same" zero padding. The kernel is separable, so the
   graph holds it as two 1-D ``Conv`` nodes (k x 1, then 1 x k, each of unit L2 norm, whose
   outer product is the 2-D kernel): half the CPU time of one k x k ``Conv``. When the input
   is in units of the noise rms and the noise is white, the output at a pixel is the S/N of a
   point source centred there (a source of peak A, in rms units, scores A * sqrt(sum g^2), about
   A * sqrt(pi) * sigma, and the noise of the output has rms 1). This output is ``score``.
2. Peak finding: ``MaxPool`` 3x3, stride 1, same padding, then ``Equal(score, pooled)``: a pixel
   is a peak when no neighbour exceeds it. A plateau (the whole 3x3 neighbourhood equal, as in
   a blanked region set to 0) would pass that test at every pixel, so pixels that are also the
   minimum of their neighbourhood (``MaxPool`` of the negated score) are not peaks. Cast to
   float, this is ``peak`` (0/1).

What the decoder must do (it is declared in the manifest too): the service's normalisation
chain for this model only replaces NaN (blanked) pixels by 0, so the input is in image units
(e.g. Jy/beam), not in units of the noise rms; and real radio noise is correlated on the beam
scale, not white. The decoder therefore estimates the rms of the ``score`` map per job, as
1.4826 x the median absolute deviation about the median of the filtered image (over pixels that
were valid in the input), subtracts the median and divides by that rms before comparing with
THRESHOLD. Scores of a white-noise input already in rms units come out unchanged (rms 1).

Precisions: ``fp32`` is the graph above. ``fp16`` keeps float32 inputs and outputs and inserts
``Cast`` nodes around a float16 core (Conv with float16 weights, peak finding); before the
cast each tile is divided by its own max |value| (and the score multiplied back after), because
image units such as 4e-7 Jy/beam are below float16's normal range (6e-5) and would lose their
precision. Dividing by the tile's maximum bounds the float16 core's values by the kernel's L1
norm (about 7 for sigma 2), far from float16's overflow at 65504. No ``int8`` variant is
offered: ONNX Runtime's dynamic quantisation (``quantize_dynamic``) turns Conv into ConvInteger
with one uint8 scale per input tensor, i.e. per batch; a bright source in one job would then set
the quantisation step for every other job in the same batch (faint sources and the noise round
to zero), so a job's catalogue would depend on its batch neighbours. Measured with ONNX Runtime
1.31: an 18.2 sigma source scored 18.2 alone and 13.0 once another tile of its batch held a
2000 sigma source, and the score map's noise rms fell from 1 to 0.12.

The files are deterministic: weights are computed with Python's ``math`` (float64, exactly
summed with ``fsum``) and rounded once to the stored type, the ONNX IR version, opset, producer
and node names are fixed, and nothing records a time or a library version. Building twice gives
the same bytes; ``tests/unit/test_matched_filter_build.py`` checks that and that the shipped
files equal a fresh build. Regenerate the shipped model with::

    python -m astro_otf.models.builders.matched_filter \
        --out src/astro_otf/models/zoo/matched-filter/1.0
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = [
    "DEFAULT_BEAM_SIGMA_PIX",
    "DEFAULT_OVERLAP",
    "DEFAULT_TILE",
    "MODEL_ID",
    "MODEL_VERSION",
    "build",
    "gaussian_kernel",
    "gaussian_profile",
    "kernel_radius",
    "main",
]

MODEL_ID = "matched-filter"
MODEL_VERSION = "1.0"
#: A beam of FWHM 4.7 px: the Scorpio ATCA images (6.5" at 1.5"/px = 4.3 px), FIRST (3 px) and
#: SDC1 (2.5 px) are within a factor two of it.
DEFAULT_BEAM_SIGMA_PIX = 2.0
DEFAULT_TILE = 256
DEFAULT_OVERLAP = 32
OPSET = 17
#: IR version 8 goes with opset 17; fixed so that a newer ``onnx`` writes the same bytes.
IR_VERSION = 8
PRODUCER = "astro-otf matched-filter builder"
#: Bumped when the builder's output changes for the same arguments.
BUILDER_REVISION = "1"
INPUT_NAME = "image"
SCORE_NAME = "score"
PEAK_NAME = "peak"
FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))
#: Floor of the per-tile scale of the fp16 variant, so an all-zero tile divides by a number.
_FP16_SCALE_FLOOR = 1e-30


def kernel_radius(beam_sigma_pix: float) -> int:
    """Half-width of the kernel: ceil(3 sigma), so the kernel is about 6 sigma on a side."""
    return max(1, math.ceil(3.0 * beam_sigma_pix))


def gaussian_profile(beam_sigma_pix: float) -> np.ndarray:
    """One axis of the matched filter, float64 [k]: a sampled Gaussian of unit L2 norm.

    Computed with ``math`` and an exact sum, so that the stored weights are the same bytes on
    every platform (numpy's vectorised ``exp`` may differ in the last bit between CPUs).
    """
    if not math.isfinite(beam_sigma_pix) or beam_sigma_pix <= 0:
        raise ValueError(f"beam_sigma_pix must be a positive number, not {beam_sigma_pix!r}")
    radius = kernel_radius(beam_sigma_pix)
    two_var = 2.0 * beam_sigma_pix * beam_sigma_pix
    values = [math.exp(-((i - radius) ** 2) / two_var) for i in range(2 * radius + 1)]
    norm = math.sqrt(math.fsum(v * v for v in values))
    return np.array([v / norm for v in values], dtype=np.float64)


def gaussian_kernel(beam_sigma_pix: float) -> np.ndarray:
    """The 2-D matched filter, float64 [k, k]: the outer product of two unit-L2 profiles, so a
    circular Gaussian of unit L2 norm. The graph applies it as two 1-D convolutions."""
    profile = gaussian_profile(beam_sigma_pix)
    return np.outer(profile, profile)


def _filter_nodes(source: str, target: str, radius: int) -> list[onnx.NodeProto]:
    """Along y then along x, each with "same" zero padding: the separable form costs 2k instead
    of k^2 multiply-adds per pixel (measured on CPU, 64 tiles of 256^2 on 2 cores: 2.2 against
    4.3 ms per tile for the filter alone)."""
    size = 2 * radius + 1
    return [
        helper.make_node(
            "Conv",
            [source, "kernel_y"],
            ["filtered_y"],
            "filter_y",
            kernel_shape=[size, 1],
            pads=[radius, 0, radius, 0],
            strides=[1, 1],
        ),
        helper.make_node(
            "Conv",
            ["filtered_y", "kernel_x"],
            [target],
            "filter_x",
            kernel_shape=[1, size],
            pads=[0, radius, 0, radius],
            strides=[1, 1],
        ),
    ]


def _weights(profile: np.ndarray, dtype: type[np.floating[Any]]) -> list[onnx.TensorProto]:
    size = profile.shape[0]
    values = profile.astype(dtype)
    return [
        numpy_helper.from_array(values.reshape(1, 1, size, 1), "kernel_y"),
        numpy_helper.from_array(values.reshape(1, 1, 1, size), "kernel_x"),
    ]


def _peak_nodes(filtered: str) -> list[onnx.NodeProto]:
    """``peak``: 1 where no 3x3 neighbour exceeds the pixel, unless the whole neighbourhood is
    equal (a plateau, such as a blanked region set to 0 or the zero padding), else 0."""
    pool: dict[str, Any] = {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1], "strides": [1, 1]}
    return [
        helper.make_node("MaxPool", [filtered], ["pooled"], "neighbourhood_max", **pool),
        helper.make_node("Equal", [filtered, "pooled"], ["is_max"], "local_max"),
        helper.make_node("Neg", [filtered], ["negated"], "negate"),
        helper.make_node("MaxPool", ["negated"], ["neg_pooled"], "neighbourhood_min", **pool),
        helper.make_node("Equal", ["negated", "neg_pooled"], ["is_min"], "local_min"),
        helper.make_node("Not", ["is_min"], ["not_flat"], "not_flat"),
        helper.make_node("And", ["is_max", "not_flat"], ["is_peak"], "peak"),
        helper.make_node("Cast", ["is_peak"], [PEAK_NAME], "peak_to_float", to=TensorProto.FLOAT),
    ]


def _graph(profile: np.ndarray, tile: int, precision: str) -> onnx.GraphProto:
    radius = profile.shape[0] // 2
    dims: list[str | int] = ["N", 1, tile, tile]
    image = helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, dims)
    score = helper.make_tensor_value_info(SCORE_NAME, TensorProto.FLOAT, dims)
    peak = helper.make_tensor_value_info(PEAK_NAME, TensorProto.FLOAT, dims)
    if precision == "fp32":
        initializers = _weights(profile, np.float32)
        nodes = [
            *_filter_nodes(INPUT_NAME, SCORE_NAME, radius),
            *_peak_nodes(SCORE_NAME),
        ]
    elif precision == "fp16":
        floor = numpy_helper.from_array(np.array(_FP16_SCALE_FLOOR, dtype=np.float32), "floor")
        initializers = [*_weights(profile, np.float16), floor]
        nodes = [
            helper.make_node("Abs", [INPUT_NAME], ["magnitude"], "magnitude"),
            helper.make_node(
                "ReduceMax", ["magnitude"], ["tile_max"], "tile_max", axes=[1, 2, 3], keepdims=1
            ),
            helper.make_node("Max", ["tile_max", "floor"], ["scale"], "scale"),
            helper.make_node("Div", [INPUT_NAME, "scale"], ["scaled"], "to_unit_range"),
            helper.make_node("Cast", ["scaled"], ["scaled16"], "to_fp16", to=TensorProto.FLOAT16),
            *_filter_nodes("scaled16", "filtered16", radius),
            *_peak_nodes("filtered16"),
            helper.make_node("Cast", ["filtered16"], ["filtered"], "to_fp32", to=TensorProto.FLOAT),
            helper.make_node("Mul", ["filtered", "scale"], [SCORE_NAME], "to_image_scale"),
        ]
    else:
        raise ValueError(f"no {precision!r} variant of the matched filter; use fp32 or fp16")
    return helper.make_graph(
        nodes,
        f"matched_filter_{precision}",
        [image],
        [score, peak],
        initializer=initializers,
        doc_string="Gaussian matched filter (unit L2 norm) and 3x3 local-maximum mask.",
    )


def _model(beam_sigma_pix: float, tile: int, precision: str) -> onnx.ModelProto:
    profile = gaussian_profile(beam_sigma_pix)
    model = helper.make_model(
        _graph(profile, tile, precision),
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name=PRODUCER,
        producer_version=BUILDER_REVISION,
        model_version=1,
        doc_string=f"{MODEL_ID}: matched-filter point-source detector ({precision}).",
    )
    model.ir_version = IR_VERSION
    helper.set_model_props(
        model,
        {
            "beam_sigma_pix": repr(float(beam_sigma_pix)),
            "kernel_size": str(profile.shape[0]),
            "tile": str(tile),
            "precision": precision,
        },
    )
    onnx.checker.check_model(model, full_check=True)
    return model


def _toml_str(text: str) -> str:
    """A TOML basic string (JSON's escapes are a subset of TOML's)."""
    return json.dumps(text, ensure_ascii=True)


def _manifest_text(
    *,
    model_id: str,
    version: str,
    beam_sigma_pix: float,
    tile: int,
    overlap: int,
    kernel_size: int,
    files: dict[str, tuple[str, str]],
) -> str:
    fwhm = beam_sigma_pix * FWHM_PER_SIGMA
    description = (
        f"Matched-filter point-source detector: convolves each tile with a Gaussian of sigma "
        f"{beam_sigma_pix:g} px (beam FWHM {fwhm:.2f} px) normalised to unit L2 norm, and flags "
        "local maxima (3x3). With white noise and an input in units of the noise rms, the score "
        "is the S/N of a point source at that pixel. The normalisation only replaces NaN by 0, "
        "so the input stays in image units: the decoder estimates the rms of the score map per "
        "job (median and 1.4826 x MAD of the filtered image over valid pixels), subtracts the "
        "median and divides by it before applying THRESHOLD; that also calibrates noise "
        "correlated on the beam scale. No training: the baseline a trained detector must beat."
    )
    lines = [
        "# Generated by python -m astro_otf.models.builders.matched_filter; do not edit by hand:",
        "# the sha256s below are of the files built next to this manifest.",
        f"id = {_toml_str(model_id)}",
        f"version = {_toml_str(version)}",
        f"description = {_toml_str(description)}",
        'framework = "onnx"',
        'precisions = ["fp32", "fp16"]',
        "# Resident size of one loaded session (weights, arena, runtime overhead), rounded up.",
        "memory_mb = 16",
        "# Working memory of one tile in a forward pass (measured on CPU: about 4 MB per tile).",
        "tile_memory_mb = 5",
        "",
    ]
    for precision, (name, digest) in files.items():
        lines += [
            f"[files.{precision}]",
            f"path = {_toml_str(name)}",
            f"sha256 = {_toml_str(digest)}",
            "",
        ]
    lines += [
        "[input]",
        f"name = {_toml_str(INPUT_NAME)}",
        f"tile = {tile}",
        "channels = 1",
        'layout = "NCHW"',
        f"beam_fwhm_pix = {round(fwhm, 4)!r}",
        "# fp16 keeps float32 inputs and outputs: Cast nodes inside the graph, see the builder.",
        'dtype = { fp32 = "float32", fp16 = "float32" }',
        "",
        "# Inputs are not noise-normalised here (see output.score_normalisation).",
        "[[normalisation]]",
        'op = "nan"',
        "value = 0.0",
        "",
        "[tiling]",
        f"tile = {tile}",
        f"overlap = {overlap}",
        "",
        "[output]",
        'kind = "heatmap"',
        'layout = "NCHW"',
        "stride = 1",
        f"score = {_toml_str(SCORE_NAME)}",
        f"peak = {_toml_str(PEAK_NAME)}",
        'channels = ["snr"]',
        "# The decoder must estimate the score map's rms per job: (score - median) / (1.4826 MAD).",
        'score_normalisation = "median_mad"',
        "",
        "[postprocess]",
        "score_threshold = 5.0",
        "",
        "[[parameters]]",
        'name = "threshold"',
        'type = "float"',
        "default = 5.0",
        "minimum = 1.0",
        "maximum = 1000.0",
        'unit = "sigma"',
        'description = "Detection threshold: a peak of the matched-filtered image is kept when '
        'its S/N (score over the rms of the score map) reaches this."',
        "",
        "[provenance]",
        'builder = "astro_otf.models.builders.matched_filter"',
        f"builder_revision = {_toml_str(BUILDER_REVISION)}",
        f"beam_sigma_pix = {float(beam_sigma_pix)!r}",
        f"kernel_size = {kernel_size}",
        f"opset = {OPSET}",
        "",
    ]
    return "\n".join(lines)


def build(
    beam_sigma_pix: float,
    tile: int,
    out_dir: Path,
    *,
    overlap: int = DEFAULT_OVERLAP,
    model_id: str = MODEL_ID,
    version: str = MODEL_VERSION,
) -> list[Path]:
    """Write the fp32 and fp16 ONNX files and their ``manifest.toml`` into ``out_dir``.

    Returns the written paths (fp32 model, fp16 model, manifest). A different beam is a
    different model: give it its own ``version`` (or ``model_id``) and folder.
    """
    if tile < 8:
        raise ValueError(f"tile must be at least 8 pixels, not {tile}")
    if not 0 <= overlap < tile // 2:
        raise ValueError(f"overlap must be in [0, {tile // 2}) pixels for a {tile} px tile")
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    files: dict[str, tuple[str, str]] = {}
    for precision in ("fp32", "fp16"):
        data = _model(beam_sigma_pix, tile, precision).SerializeToString()
        name = f"matched_filter.{precision}.onnx"
        path = out_dir / name
        path.write_bytes(data)
        files[precision] = (name, hashlib.sha256(data).hexdigest())
        written.append(path)
    manifest = out_dir / "manifest.toml"
    manifest.write_text(
        _manifest_text(
            model_id=model_id,
            version=version,
            beam_sigma_pix=beam_sigma_pix,
            tile=tile,
            overlap=overlap,
            kernel_size=2 * kernel_radius(beam_sigma_pix) + 1,
            files=files,
        ),
        encoding="utf-8",
        newline="\n",
    )
    written.append(manifest)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    """Write the detector's ONNX files and manifest into ``--out``; the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m astro_otf.models.builders.matched_filter",
        description="Build the matched-filter ONNX detector and its manifest (deterministic).",
    )
    parser.add_argument("--out", type=Path, required=True, help="folder to write into")
    parser.add_argument(
        "--sigma", type=float, default=DEFAULT_BEAM_SIGMA_PIX, help="beam sigma in pixels"
    )
    parser.add_argument("--tile", type=int, default=DEFAULT_TILE, help="tile side in pixels")
    parser.add_argument("--overlap", type=int, default=DEFAULT_OVERLAP, help="tile overlap")
    parser.add_argument("--id", default=MODEL_ID, help="model id written in the manifest")
    parser.add_argument("--version", default=MODEL_VERSION, help="model version")
    args = parser.parse_args(argv)
    for path in build(
        args.sigma,
        args.tile,
        args.out,
        overlap=args.overlap,
        model_id=args.id,
        version=args.version,
    ):
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        print(f"{digest}  {path} ({path.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
