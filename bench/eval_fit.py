"""Does the model fall short of its targets because it does not generalise, or because it does not fit?

Scores the shipped model (the whole ``Segmenter`` pipeline, as ``eval_heldout.py``) on simulated layers it
was *trained on* (the first layers of the training set's seed streams, rendered again: stream 1 at 512 px, stream 5 at
1024 px, chunk by chunk as ``segmentation.train.build_set`` draws them: ``set_chunks``)
and, in the same run, on as many held-out layers of the same size (``eval_heldout.py``'s stream). A model that
scores its own training layers about as low as held-out ones underfits: more data or regularisation would not
reach the targets, a larger network or a much longer training would. These training-layer figures are a
diagnosis, never a figure of the model (docs/benchmarks.md reports held-out data only).

``--memorise MINUTES`` also fine-tunes a copy of the network in memory (never saved) on 32 of those training
layers at 512 px, whole frames without augmentation, for that long on this machine's CPU, and scores it on
them and on 32 held-out layers: how far this network can fit a handful of frames.

    .venv/bin/python bench/eval_fit.py [--count 64] [--large-count 32] [--memorise 25] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import machine
from segmentation.evaluate import TEST_SEED_STREAM, evaluate_simulated
from segmentation.inference import DEFAULT_MODEL, Segmenter
from segmentation.metrics import Evaluation, scores
from segmentation.train import LARGE_SEED_STREAM, TRAIN_SEED_STREAM, set_chunks


def trained_layers(seg: Segmenter, stream: int, count: int, size: int) -> np.ndarray:
    """The confusion matrix of the first ``count`` layers of a training stream, scored like held-out ones."""
    cm = Evaluation.empty().cm
    for seed, n in set_chunks(stream, count):
        cm += evaluate_simulated(seg, n, size, seed).cm
    return cm


def ious(cm: np.ndarray) -> dict[str, float]:
    return {s.name: round(s.iou, 3) for s in scores(cm)}


def memorise(model_path: Path, minutes: float, threads: int) -> dict[str, Any]:
    """Fine-tune a copy of the network on 32 training layers (512 px) for ``minutes``; its IoUs on them and on
    32 held-out layers, before and after."""
    import torch

    from segmentation.model import load_checkpoint
    from segmentation.preprocess import model_input, to_gray_float
    from segmentation.simulator import simulate_dataset
    from segmentation.train import CLASS_LOSS_WEIGHTS, evaluate_arrays, partial_label_loss

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    fit = [la for seed, n in set_chunks(TRAIN_SEED_STREAM, 32) for la in simulate_dataset(seed, n, 512, 512)]
    held = simulate_dataset(TEST_SEED_STREAM, 32, 512, 512)
    model, _ = load_checkpoint(model_path)
    model = model.float()
    spec = model.spec
    gx = np.stack([to_gray_float(la.image) for la in fit])
    gy = np.stack([la.mask for la in fit])
    hx = np.stack([to_gray_float(la.image) for la in held])
    hy = np.stack([la.mask for la in held])
    x = np.stack([model_input(g, spec.in_channels, spec.input_norm) for g in gx])

    def score() -> dict[str, dict[str, float]]:
        return {
            "fit_layers": ious(evaluate_arrays(model, gx, gy, spec).cm),
            "held_out": ious(evaluate_arrays(model, hx, hy, spec).cm),
        }

    out: dict[str, Any] = {"minutes": minutes, "before": score()}
    print(f"memorise, before: {out['before']}", flush=True)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
    weights = torch.tensor(CLASS_LOSS_WEIGHTS, dtype=torch.float32)
    rng = np.random.default_rng(0)
    t0, steps = time.monotonic(), 0
    while time.monotonic() - t0 < minutes * 60:
        model.train()
        picks = rng.choice(len(x), 4, replace=False)
        corners = rng.integers(0, 2, (4, 2)) * 256  # one of the four 256 px quarters of each frame
        xb = np.stack([x[i, :, r : r + 256, c : c + 256] for i, (r, c) in zip(picks, corners, strict=True)])
        yb = np.stack([gy[i, r : r + 256, c : c + 256] for i, (r, c) in zip(picks, corners, strict=True)])
        loss = partial_label_loss(model(torch.from_numpy(xb)), torch.from_numpy(yb.astype(np.int64)), weights)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        steps += 1
    out["steps"] = steps
    out["after"] = score()
    print(f"memorise, after {steps} steps ({minutes:g} min): {out['after']}", flush=True)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=64, help="layers at 512 px, each set")
    ap.add_argument("--large-count", type=int, default=32, help="layers at 1024 px, each set")
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    ap.add_argument("--memorise", type=float, default=0.0, metavar="MINUTES")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    if not args.model.is_file():
        print(f"error: --model {args.model}: no such file (the shipped model is {DEFAULT_MODEL})", file=sys.stderr)
        return 2
    print(f"machine: {machine()}; model {args.model}")
    rows: list[dict[str, Any]] = []
    with Segmenter(args.model, threads=args.threads) as seg:
        for size, count, stream in ((512, args.count, TRAIN_SEED_STREAM), (1024, args.large_count, LARGE_SEED_STREAM)):
            if count <= 0:
                continue
            trained = ious(trained_layers(seg, stream, count, size))
            held = ious(evaluate_simulated(seg, count, size, TEST_SEED_STREAM).cm)
            rows.append({"size": size, "count": count, "trained_on": trained, "held_out": held})
            for name, figures in ((f"trained on (stream {stream})", trained), ("held out", held)):
                print(f"{size} px, {count} layers {name}: " + ", ".join(f"{k} {v:.3f}" for k, v in figures.items()))
    report: dict[str, Any] = {"machine": machine(), "rows": rows}
    if args.memorise > 0:
        report["memorise"] = memorise(args.model, args.memorise, args.threads)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
