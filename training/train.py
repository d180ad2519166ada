"""Train the detector from a fixed seed: ``python -m training.train`` (``make train``).

Why a script of its own: the shipped model must be regenerable by anyone from this
repository alone: same seed, same simulated fields, same schedule. It renders the pool of
training fields (:mod:`training.dataset`, in parallel, each field from its own seed), then
trains on random crops of it; it writes a PyTorch checkpoint and a JSON log, and
:mod:`training.export` turns the checkpoint into the ONNX files, manifest and model card the
service ships.

Loss: CenterNet's penalty-reduced focal loss on the heatmap (alpha 2, beta 4), and L1 on
the eight attributes at source centres. AdamW with a one-cycle schedule.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from training import dataset
from training.model import WIDTHS, Detector

DEFAULT_OUT = Path("build/train")
SEED = 20261129
STEPS = 5000


def focal_loss(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    prob = torch.sigmoid(logits).clamp(1e-4, 1 - 1e-4)
    pos = target.eq(1.0).float()
    neg = (1.0 - pos) * weight
    pos_loss = torch.log(prob) * (1 - prob) ** 2 * pos
    neg_loss = torch.log(1 - prob) * prob**2 * (1 - target) ** 4 * neg
    n = pos.sum().clamp(min=1.0)
    return -(pos_loss.sum() + neg_loss.sum()) / n


#: Weights of the attribute losses: offsets, fluxes, sizes, angle.
ATTR_WEIGHTS = torch.tensor([1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.25, 0.25]).view(1, 8, 1, 1)


def attr_loss(pred: torch.Tensor, target: torch.Tensor, centre: torch.Tensor) -> torch.Tensor:
    n = centre.sum().clamp(min=1.0)
    return ((pred - target).abs() * ATTR_WEIGHTS * centre).sum() / n


def train(
    steps: int,
    batch: int,
    seed: int,
    out: Path,
    threads: int,
    widths: tuple[int, ...] = WIDTHS,
    pool_fields: int = dataset.POOL_FIELDS,
) -> dict[str, object]:
    torch.manual_seed(seed)
    # without this, two threads reduce gradients in varying order and runs drift apart
    torch.use_deterministic_algorithms(True)
    rng = np.random.default_rng(seed)
    t0 = time.time()
    pool = dataset.make_pool(seed, pool_fields, workers=threads)
    pool_seconds = time.time() - t0
    print(
        json.dumps({"pool_fields": len(pool), "pool_seconds": round(pool_seconds, 1)}), flush=True
    )
    torch.set_num_threads(threads)
    net = Detector(widths)
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps, pct_start=0.1)
    out.mkdir(parents=True, exist_ok=True)
    log: list[dict[str, float]] = []
    start = time.time()
    run = {"heat": 0.0, "attr": 0.0}
    for step in range(1, steps + 1):
        b = {k: torch.from_numpy(v) for k, v in dataset.batch(rng, pool, batch).items()}
        net.train()
        heat, attrs = net(b["image"])
        l_heat = focal_loss(heat, b["heat"], b["weight"])
        l_attr = attr_loss(attrs, b["attrs"], b["centre"])
        loss = l_heat + l_attr
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 5.0)
        opt.step()
        sched.step()
        run["heat"] += float(l_heat.detach())
        run["attr"] += float(l_attr.detach())
        if step % 100 == 0 or step == steps:
            k = 100 if step % 100 == 0 else step % 100
            entry = {
                "step": step,
                "heat": run["heat"] / k,
                "attr": run["attr"] / k,
                "lr": sched.get_last_lr()[0],
                "elapsed_s": time.time() - start,
            }
            log.append(entry)
            print(json.dumps(entry), flush=True)
            run = {"heat": 0.0, "attr": 0.0}
            torch.save(net.state_dict(), out / "detector.pt")
    elapsed = time.time() - start
    torch.save(net.state_dict(), out / "detector.pt")
    summary = {
        "steps": steps,
        "batch": batch,
        "patch": dataset.PATCH,
        "pool_fields": len(pool),
        "pool_seconds": round(pool_seconds, 1),
        "seed": seed,
        "threads": threads,
        "widths": list(widths),
        "train_seconds": round(elapsed, 1),
        "torch": torch.__version__,
        "log": log,
    }
    (out / "train.json").write_text(json.dumps(summary, indent=1))
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=STEPS)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--pool", type=int, default=dataset.POOL_FIELDS, help="fields rendered")
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument(
        "--widths",
        default=",".join(map(str, WIDTHS)),
        help="channels of the encoder levels, three or four (default %(default)s)",
    )
    args = parser.parse_args()
    widths = tuple(int(v) for v in args.widths.split(","))
    summary = train(args.steps, args.batch, args.seed, args.out, args.threads, widths, args.pool)
    print(f"trained {summary['steps']} steps in {summary['train_seconds']} s -> {args.out}")


if __name__ == "__main__":
    main()
