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
* ``manifest.toml``: normalisation (the local background and rms map, then asinh, exactly as
  :mod:`training.dataset` fed the network), tiling, decoding, the Gaussian measurement of
  the candidates, the score threshold chosen here on validation fields (never the held-out
  ones), and the training facts.

The threshold is chosen by running the service's own app on validation images written as
FITS (restored images of random arrays and skies, and SDC1-like fields, from a seed of their
own) and matching its catalogue to the truth (units of local S/N >= ``TRUTH_SNR``) within one
beam FWHM, as ``../shared/data/real/crossmatch.py`` matches: the objectness that maximises the
mean F1 over the fields.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from training import dataset
from training import simulate as sim
from training import synthesis as syn
from training.card import cpu_model, replace_section
from training.model import ATTRIBUTES, WIDTHS

MODEL_ID = "radio-detector"
VERSION = "2.0"
DEFAULT_OUT = Path("src/astro_otf/models/zoo") / MODEL_ID / VERSION
TILE = 576
OVERLAP = 64
VALIDATION_SEED = 777
VALIDATION_FIELDS = 32
VALIDATION_SIZE = 256
#: Truth units at least this bright (local S/N) count in the validation F1.
TRUTH_SNR = 3.0
#: Peaks below this S/N are dropped, like the peers' 5-sigma seed (see bench/science.py).
MIN_SNR = 5.0
MIN_SNR_DOC = (
    "Lowest S/N kept: the brightest image pixel next to the detected peak, less the local "
    "background, over the local rms, like the 5-sigma seed threshold of PyBDSF and Aegean."
)
THRESHOLDS = np.round(np.arange(0.10, 0.91, 0.05), 2)
DESCRIPTION = (
    "Trained radio source detector (CenterNet-style CNN, {params} parameters) for continuum "
    "images from any radio telescope: the network finds the sources, a Gaussian fit to the "
    "image pixels on the local background measures them (position, peak and integrated flux, "
    "size, position angle, deconvolved size, with Condon 1997 errors). Trained on restored "
    "interferometric images of MeerKAT-, ASKAP-, LOFAR- and VLA-like arrays (dirty-beam "
    "sidelobes, correlated noise, deconvolution and calibration errors, primary-beam "
    "correction, mosaic borders; point-dominated, T-RECS and radio-galaxy skies) and SDC1 "
    "fields. Images whose beam is wider than 7 px are block-averaged first. MODEL_CARD.md "
    "beside this manifest has its evaluation against PyBDSF, Aegean, sep and photutils."
)
THRESHOLD_DOC = (
    "Objectness a peak must reach to be kept (0-1). The default maximises F1 on simulated "
    "validation fields; lower it for completeness, raise it for purity."
)
LOG = logging.getLogger("training.export")


def export_onnx(
    checkpoint: Path, out: Path, widths: tuple[int, ...] = WIDTHS
) -> tuple[dict[str, Path], int]:
    """Write the three ONNX files; returns their paths and the network's parameter count."""
    import onnx
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.transformers.float16 import convert_float_to_float16

    from training.model import Detector, Exported

    net = Detector(widths)
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


def validation_images(folder: Path) -> list[tuple[Path, dict[str, np.ndarray], float]]:
    """Validation fields written as FITS: (path, truth in pixels, beam FWHM in pixels).
    Three in four are restored images of random arrays, skies and beams (2-25 px: the wide
    ones are block-averaged by the app, as in service); one in four SDC1-like."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(VALIDATION_FIELDS):
        rng = np.random.default_rng([VALIDATION_SEED, i])
        size = VALIDATION_SIZE
        if i % 4 == 3:
            image, truth, spec = dataset.sdc1_field(rng, size)
            beam = (spec.beam_maj, spec.beam_min, spec.beam_theta)
            snr = (
                truth["peak"]
                / syn.local_rms(image, math.sqrt(spec.beam_maj * spec.beam_min))[
                    np.clip(np.rint(truth["y"]).astype(int), 0, size - 1),
                    np.clip(np.rint(truth["x"]).astype(int), 0, size - 1),
                ]
            )
            field = syn.Field(
                image,
                np.full(image.shape, spec.rms, np.float32),
                beam,
                {"x": truth["x"], "y": truth["y"], "snr": snr},
                syn.Observation(),
            )
        else:
            beam_pix = dataset.draw_beam(rng)
            size *= dataset.beam_factor(beam_pix)
            obs = syn.random_observation(rng, beam_pix)
            field = syn.render_field(obs, syn.random_population(rng), (size, size), rng)
        path = folder / f"validation_{i:02d}.fits"
        syn.write_fits(field, path, 1.0, 1.4e9, f"validation field {i}")
        out.append((path, field.truth, math.sqrt(field.beam[0] * field.beam[1])))
    return out


def f1_score(
    found: tuple[np.ndarray, np.ndarray], truth: tuple[np.ndarray, np.ndarray], radius: float
) -> float:
    """F1 of a greedy one-to-one match by increasing separation (crossmatch.py's rule)."""
    fx, fy = found
    tx, ty = truth
    if len(fx) == 0 or len(tx) == 0:
        return 1.0 if len(fx) == len(tx) else 0.0
    d = np.hypot(fx[:, None] - tx[None, :], fy[:, None] - ty[None, :])
    i, j = np.nonzero(d <= radius)
    order = np.argsort(d[i, j], kind="stable")
    used_f: set[int] = set()
    used_t: set[int] = set()
    for k in order.tolist():
        a, b = int(i[k]), int(j[k])
        if a not in used_f and b not in used_t:
            used_f.add(a)
            used_t.add(b)
    matched = len(used_f)
    if matched == 0:
        return 0.0
    completeness, purity = matched / len(tx), matched / len(fx)
    return 2 * completeness * purity / (completeness + purity)


def choose_threshold(model_dir: Path) -> tuple[float, dict[float, float]]:
    """The objectness threshold that maximises the mean validation F1, running the
    service's app (tiling, local noise, merging, fitting, MIN_SNR) at each threshold."""
    from astro_otf.models.base import AppRequest
    from astro_otf.models.manifest import load_manifest
    from astro_otf.models.onnx_detector import OnnxDetector, RuntimeConfig

    app = OnnxDetector(load_manifest(model_dir / "manifest.toml"), RuntimeConfig())
    per_threshold: dict[float, list[float]] = {float(t): [] for t in THRESHOLDS}
    with tempfile.TemporaryDirectory(prefix="validation-") as tmp:
        for path, truth, beam in validation_images(Path(tmp) / "fields"):
            keep = truth["snr"] >= TRUTH_SNR
            true_xy = (truth["x"][keep], truth["y"][keep])
            for t in per_threshold:
                request = AppRequest(
                    job_id="validation",
                    image_path=path,
                    values={"threshold": t},
                    roi=None,
                    staging_dir=Path(tmp),
                    log=LOG,
                )
                out = app.run(request)
                assert out.catalogue is not None
                table = out.catalogue.table
                found = (np.asarray(table["x"], float), np.asarray(table["y"], float))
                per_threshold[t].append(f1_score(found, true_xy, beam))
    means = {t: float(np.mean(v)) for t, v in per_threshold.items()}
    best = max(means, key=lambda t: (means[t], -abs(t - 0.5)))
    return best, means


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def manifest(
    paths: dict[str, Path], threshold: float, facts: dict[str, object], tile_memory_mb: float
) -> str:
    files = "\n".join(
        f'[files.{p}]\npath = "{path.name}"\nsha256 = "{sha256(path)}"\n'
        for p, path in paths.items()
    )
    channels = ", ".join(f'"{c}"' for c in ATTRIBUTES)
    # each level after the first halves the resolution: sides must divide by 2^(levels - 1)
    multiple = 2 ** (len(str(facts["widths"]).split(",")) - 1)
    provenance = "\n".join(f"{k} = {json.dumps(v)}" for k, v in facts.items())
    steps = "\n".join(
        "[[normalisation]]\n" + "\n".join(f"{k} = {json.dumps(v)}" for k, v in step.items()) + "\n"
        for step in dataset.NORMALISATION
    )
    return f"""# Written by python -m training.export (make train); do not edit by hand: the sha256s
# below are of the files exported next to this manifest. See MODEL_CARD.md.
id = "{MODEL_ID}"
version = "{VERSION}"
description = "{DESCRIPTION.format(params=facts["parameters"])}"
framework = "onnx"
precisions = ["fp32", "fp16", "int8"]
# Resident size of one loaded session (weights, arena, runtime overhead), rounded up.
memory_mb = 16
# Working memory of one {TILE} px tile in a forward pass (peak RSS of a one-tile pass above
# the loaded session, measured on CPU by the exporter); the app caps its passes by it.
tile_memory_mb = {tile_memory_mb:.0f}

{files}
[input]
name = "image"
tile = {TILE}
channels = 1
layout = "NCHW"
beam_fwhm_pix = {sim.SDC1_BEAM_ARCSEC / sim.SDC1_PIXEL_ARCSEC}
max_beam_pix = {dataset.MAX_BEAM_PIX}
dtype = {{ fp32 = "float32", fp16 = "float32", int8 = "float32" }}
# The graph takes any height and width that are multiples of this (its downsampling), up to
# the tile: tiles are sized to the image, so a small image is not padded to a full tile.
size_multiple = {multiple}

# Pixels less the local background, over the local rms (a map of robust statistics in boxes
# of box_beams beams), then a soft stretch: as training/dataset.py fed the network.
{steps}
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

# The network proposes, the image measures: candidates that are one peak are merged, then
# each source's Gaussian is fitted to the image on its local background.
[measure]
method = "gaussian"

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


def tile_memory(path: Path) -> float:
    """Peak RSS (MB) a one-tile forward pass adds above the loaded session, measured in a
    child process so that nothing else counts."""
    import subprocess
    import sys

    # VmHWM, not ru_maxrss: a child's ru_maxrss starts at its parent's (torch is loaded here)
    code = (
        "import numpy as np, onnxruntime as ort\n"
        "def hwm():\n"
        "    status = open('/proc/self/status').read()\n"
        "    return int(status.split('VmHWM:')[1].split()[0])\n"
        "o = ort.SessionOptions(); o.intra_op_num_threads = 1\n"
        f"s = ort.InferenceSession({str(path)!r}, o, providers=['CPUExecutionProvider'])\n"
        "before = hwm()\n"
        f"s.run(None, {{'image': np.zeros((1, 1, {TILE}, {TILE}), np.float32)}})\n"
        "print((hwm() - before) / 1024)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(done.stdout.strip())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=Path("build/train/detector.pt"))
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    run = json.loads((args.checkpoint.parent / "train.json").read_text())
    widths = tuple(run.get("widths", WIDTHS))
    paths, parameters = export_onnx(args.checkpoint, args.out, widths)
    facts: dict[str, object] = {
        "trainer": "training.train",
        "exporter": "training.export",
        "seed": run["seed"],
        "steps": run["steps"],
        "batch": run["batch"],
        "patch_pix": run["patch"],
        "pool_fields": run["pool_fields"],
        "train_seconds": run["train_seconds"],
        "widths": ",".join(map(str, widths)),
        "parameters": parameters,
        "torch": run["torch"],
        "data": "training.dataset: restored images of MeerKAT-, ASKAP-, LOFAR- and VLA-like "
        "arrays (training.synthesis) and SDC1 fields (training.simulate)",
        "catalogue": "SDC1 TrainingSet_B1_v2_ML (ICRAR/skasdc1), held-out box excluded",
        "heldout_box_pix": ",".join(str(v) for v in sim.HELDOUT_BOX),
        "heldout_configurations": ",".join(syn.CONFIGS),
        "opset": 17,
    }
    memory = math.ceil(tile_memory(paths["fp32"]))
    # a provisional manifest lets the service's app run the validation fields
    (args.out / "manifest.toml").write_text(manifest(paths, 0.5, facts, memory))
    threshold, curve = choose_threshold(args.out)
    print("validation F1 by threshold:", json.dumps(curve))
    facts["validation_f1"] = round(curve[threshold], 4)
    (args.out / "manifest.toml").write_text(manifest(paths, threshold, facts, memory))
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
        f"heatmap {last['heat']:.3f}, attributes {last['attr']:.3f}; the pool of "
        f"{run['pool_fields']} fields took {run['pool_seconds'] / 60:.0f} min of that. "
        f"Files: {sizes}.\n\n"
        f"Threshold {threshold} (objectness), chosen on the validation fields, where it gives "
        f"a mean F1 of {curve[threshold]:.3f} (0.3: {curve.get(0.3, float('nan')):.3f}, 0.5: "
        f"{curve.get(0.5, float('nan')):.3f}, 0.7: {curve.get(0.7, float('nan')):.3f})."
    )


if __name__ == "__main__":
    main()
