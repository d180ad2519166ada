"""Export the trained detector as the service's model: ``python -m training.export``.

Why: the service runs models as data (ONNX files plus a manifest), never PyTorch. This
writes, into the package's model zoo:

* ``detector.fp32.onnx``: the graph of :class:`training.model.Exported` (opset 17, any
  batch and tile size);
* ``detector.fp16.onnx``: weights and activations in float16, float32 inputs and outputs
  (ONNX Runtime's float16 converter, ``keep_io_types``);
* ``detector.int8.onnx``: dynamic quantisation (uint8 weights, activations quantised per
  batch at run time) of every Conv but the first and the last, whose precision the S/N and
  flux outputs need most;
* ``manifest.toml``: normalisation, tiling, decoding, the score threshold chosen here on
  validation fields (never the held-out ones), and the training facts.

The threshold is the one that maximises the mean F1 over validation fields: fresh draws and
real-layout cuts rendered from a seed of their own, matched to their truth within one beam
FWHM, as ``../shared/data/real/crossmatch.py`` matches.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from training import dataset
from training import simulate as sim
from training.card import cpu_model, replace_section
from training.model import ATTRIBUTES, WIDTHS

MODEL_ID = "radio-detector"
VERSION = "1.0"
DEFAULT_OUT = Path("src/astro_otf/models/zoo") / MODEL_ID / VERSION
TILE = 528
OVERLAP = 32
MAX_BEAM_PIX = 7.0
VALIDATION_SEED = 777
#: Peaks below this S/N are dropped, like the peers' 5-sigma seed (see bench/science.py).
MIN_SNR = 5.0
MIN_SNR_DOC = (
    "Lowest S/N kept: the brightest image pixel next to the detected peak over the image rms, "
    "like the 5-sigma seed threshold of PyBDSF and Aegean."
)
THRESHOLDS = np.round(np.arange(0.10, 0.91, 0.05), 2)
DESCRIPTION = (
    "Trained radio source detector (CenterNet-style CNN, {params} parameters) for continuum "
    "images: finds compact and moderately extended sources and measures position, peak and "
    "integrated flux, observed FWHM axes and position angle. Trained on simulated SKA Data "
    "Challenge 1 fields (real T-RECS sources from the SDC1 B1 training catalogue and fresh "
    "draws from it, beams of 2.2-7 px, correlated noise). Images whose beam is wider than "
    "7 px are block-averaged first. MODEL_CARD.md beside this manifest has its evaluation "
    "against PyBDSF, Aegean, sep and photutils."
)
THRESHOLD_DOC = (
    "Objectness a peak must reach to be kept (0-1). The default maximises F1 on simulated "
    "validation fields; lower it for completeness, raise it for purity."
)


def export_onnx(
    checkpoint: Path, out: Path, widths: tuple[int, int, int] = WIDTHS
) -> tuple[dict[str, Path], int]:
    """Write the three ONNX files; returns their paths and the network's parameter count."""
    import onnx
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.transformers.float16 import convert_float_to_float16

    from training.model import Detector, Exported

    net = Detector(*widths)
    net.load_state_dict(torch.load(checkpoint, map_location="cpu"))
    graph = Exported(net).eval()
    out.mkdir(parents=True, exist_ok=True)
    paths = {p: out / f"detector.{p}.onnx" for p in ("fp32", "fp16", "int8")}
    axes = {0: "batch", 2: "height", 3: "width"}
    torch.onnx.export(
        graph,
        (torch.zeros(1, 1, TILE, TILE),),
        str(paths["fp32"]),
        input_names=["image"],
        output_names=["score", "peak", "attrs"],
        dynamic_axes={name: axes for name in ("image", "score", "peak", "attrs")},
        opset_version=17,
        dynamo=False,
    )
    fp32 = onnx.load(str(paths["fp32"]))
    onnx.save(convert_float_to_float16(fp32, keep_io_types=True), str(paths["fp16"]))
    convs = [n.name for n in fp32.graph.node if n.op_type == "Conv"]
    quantize_dynamic(
        str(paths["fp32"]),
        str(paths["int8"]),
        weight_type=QuantType.QUInt8,
        op_types_to_quantize=["Conv"],
        nodes_to_exclude=[convs[0], convs[-1]],
    )
    return paths, sum(p.numel() for p in net.parameters())


def validation_fields(n: int = 24, size: int = 256) -> list[tuple[np.ndarray, dict, sim.FieldSpec]]:
    """Fields for choosing the threshold: half real-layout cuts, half fresh draws."""
    rng = np.random.default_rng(VALIDATION_SEED)
    fields = []
    for i in range(n):
        share = 1.0 if i % 2 == 0 else 0.0
        fields.append(dataset.draw_field(rng, size, real_share=share))
    return fields


def detect(session, image: np.ndarray) -> dict[str, np.ndarray]:  # type: ignore[no-untyped-def]
    """Peaks of one whole (small) field: position, score and the S/N of the image's
    brightest pixel in the 3x3 around each (what the service's MIN_SNR applies to)."""
    from scipy.ndimage import maximum_filter

    norm, rms = dataset.normalise(image)
    median = float(np.median(image[np.isfinite(image)]))
    ny, nx = norm.shape
    py, px = -ny % 4, -nx % 4
    padded = np.pad(norm, ((0, py), (0, px)))
    score, peak, attrs = session.run(None, {"image": padded[None, None]})
    score, peak, attrs = score[0, 0, :ny, :nx], peak[0, 0, :ny, :nx], attrs[0][:, :ny, :nx]
    ys, xs = np.nonzero(peak > 0.5)
    brightest = maximum_filter(np.nan_to_num(image, nan=-np.inf), size=3, mode="constant",
                               cval=-np.inf)  # fmt: skip
    return {
        "x": xs + attrs[0, ys, xs],
        "y": ys + attrs[1, ys, xs],
        "score": score[ys, xs],
        "snr": (brightest[ys, xs] - median) / rms,
    }


def f1_score(found: dict[str, np.ndarray], truth: dict[str, np.ndarray], radius: float) -> float:
    from scipy.optimize import linear_sum_assignment
    from scipy.spatial import cKDTree

    n_found, n_true = len(found["x"]), len(truth["x"])
    if n_found == 0 or n_true == 0:
        return 1.0 if n_found == n_true else 0.0
    tree = cKDTree(np.c_[truth["x"], truth["y"]])
    pairs = tree.query_ball_point(np.c_[found["x"], found["y"]], radius)
    cost = np.full((n_found, n_true), 1e6)
    for i, js in enumerate(pairs):
        for j in js:
            cost[i, j] = math.hypot(found["x"][i] - truth["x"][j], found["y"][i] - truth["y"][j])
    rows, cols = linear_sum_assignment(cost)
    matched = int((cost[rows, cols] <= radius).sum())
    completeness, purity = matched / n_true, matched / n_found
    return 0.0 if matched == 0 else 2 * completeness * purity / (completeness + purity)


def choose_threshold(fp32: Path) -> tuple[float, dict[str, float]]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(fp32), providers=["CPUExecutionProvider"])
    per_threshold: dict[float, list[float]] = {float(t): [] for t in THRESHOLDS}
    for image, truth, spec in validation_fields():
        found = detect(session, image)
        for t in per_threshold:
            keep = (found["score"] >= t) & (found["snr"] >= MIN_SNR)
            per_threshold[t].append(
                f1_score({k: v[keep] for k, v in found.items()}, truth, spec.beam_maj)
            )
    means = {t: float(np.mean(v)) for t, v in per_threshold.items()}
    best = max(means, key=lambda t: (means[t], -abs(t - 0.5)))
    return best, means


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def manifest(paths: dict[str, Path], threshold: float, facts: dict[str, object]) -> str:
    files = "\n".join(
        f'[files.{p}]\npath = "{path.name}"\nsha256 = "{sha256(path)}"\n'
        for p, path in paths.items()
    )
    channels = ", ".join(f'"{c}"' for c in ATTRIBUTES)
    provenance = "\n".join(f"{k} = {json.dumps(v)}" for k, v in facts.items())
    return f"""# Written by python -m training.export (make train); do not edit by hand: the sha256s
# below are of the files exported next to this manifest. See MODEL_CARD.md.
id = "{MODEL_ID}"
version = "{VERSION}"
description = "{DESCRIPTION.format(params=facts["parameters"])}"
framework = "onnx"
precisions = ["fp32", "fp16", "int8"]
# Resident size of one loaded session (weights, arena, runtime overhead), rounded up.
memory_mb = 16
# Working memory of one 528 px tile in a forward pass (peak RSS of a one-tile pass above the
# loaded session, measured on CPU: 64.5 MB); the app caps its passes by it.
tile_memory_mb = 65

{files}
[input]
name = "image"
tile = {TILE}
channels = 1
layout = "NCHW"
beam_fwhm_pix = {sim.SDC1_BEAM_ARCSEC / sim.SDC1_PIXEL_ARCSEC}
max_beam_pix = {MAX_BEAM_PIX}
dtype = {{ fp32 = "float32", fp16 = "float32", int8 = "float32" }}

# Pixels in units of the image's noise, then a soft stretch (as in training/dataset.py).
[[normalisation]]
op = "standardise"

[[normalisation]]
op = "asinh"
scale = {dataset.ASINH_SCALE}

[[normalisation]]
op = "nan"
value = 0.0

[tiling]
tile = {TILE}
overlap = {OVERLAP}

[output]
kind = "heatmap"
layout = "NCHW"
stride = 1
score = "score"
peak = "peak"
channels = ["objectness"]
attributes = "attrs"
attribute_channels = [{channels}]

[postprocess]
score_threshold = {threshold}
min_snr = {MIN_SNR}

[[parameters]]
name = "threshold"
type = "float"
default = {threshold}
minimum = 0.01
maximum = 0.99
description = "{THRESHOLD_DOC}"

[[parameters]]
name = "min_snr"
type = "float"
default = {MIN_SNR}
minimum = 0.0
maximum = 10000.0
unit = "sigma"
description = "{MIN_SNR_DOC}"

[provenance]
{provenance}
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=Path("build/train/detector.pt"))
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    run = json.loads((args.checkpoint.parent / "train.json").read_text())
    widths = tuple(run.get("widths", WIDTHS))
    paths, parameters = export_onnx(args.checkpoint, args.out, widths)  # type: ignore[arg-type]
    threshold, curve = choose_threshold(paths["fp32"])
    print("validation F1 by threshold:", json.dumps(curve))
    facts: dict[str, object] = {
        "trainer": "training.train",
        "exporter": "training.export",
        "seed": run["seed"],
        "steps": run["steps"],
        "batch": run["batch"],
        "patch_pix": run["patch"],
        "train_seconds": run["train_seconds"],
        "widths": ",".join(map(str, widths)),
        "parameters": parameters,
        "torch": run["torch"],
        "catalogue": "SDC1 TrainingSet_B1_v2_ML (ICRAR/skasdc1), held-out box excluded",
        "heldout_box_pix": ",".join(str(v) for v in sim.HELDOUT_BOX),
        "validation_f1": round(curve[threshold], 4),
        "opset": 17,
    }
    (args.out / "manifest.toml").write_text(manifest(paths, threshold, facts))
    card = args.out / "MODEL_CARD.md"
    if card.exists():
        card.write_text(
            replace_section(card.read_text(), "train", training_facts(run, paths, threshold, curve))
        )
    print(f"threshold {threshold} (validation F1 {curve[threshold]:.4f}); wrote {args.out}")


def training_facts(
    run: dict[str, Any], paths: dict[str, Path], threshold: float, curve: dict[float, float]
) -> str:
    import onnxruntime
    import torch

    last = run["log"][-1]
    sizes = ", ".join(f"{p} {path.stat().st_size / 1024:.0f} KiB" for p, path in paths.items())
    return (
        f"Measured by the run that made the shipped files: {run['steps']} steps in "
        f"**{run['train_seconds'] / 60:.0f} min** on {run['threads']} CPU threads ({cpu_model()}), "
        f"torch {torch.__version__}, onnxruntime {onnxruntime.__version__}; final losses "
        f"heatmap {last['heat']:.3f}, attributes {last['attr']:.3f}. Files: {sizes}.\n\n"
        f"Threshold {threshold} (objectness), chosen on the validation fields, where it gives "
        f"a mean F1 of {curve[threshold]:.3f} (0.3: {curve.get(0.3, float('nan')):.3f}, 0.5: "
        f"{curve.get(0.5, float('nan')):.3f}, 0.7: {curve.get(0.7, float('nan')):.3f})."
    )


if __name__ == "__main__":
    main()
