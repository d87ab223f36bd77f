"""Lighting robustness: the same layers under ten lighting changes must give the same masks.

Held-out simulated layers (seed stream 7000001, never trained on) are segmented as they are and under
each of :data:`segmentation.augment.LIGHTING_TRANSFORMS` (darker, brighter, gamma both ways, lower
contrast, gradients across and along, vignetting, a light spot, a falloff band). For each change, the
IoU between the mask of the changed frame and the mask of the unchanged frame is computed per class
over all layers (pixels summed), and their mean over the five classes. Target (data/models/MODEL_CARD.md): mean IoU
>= 0.9 for every change.

    .venv/bin/python bench/eval_lighting.py [--layers 24] [--size 512] [--model M] [--json F]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import machine
from segmentation.augment import LIGHTING_TRANSFORMS, apply
from segmentation.classes import CLASS_NAMES, NUM_CLASSES
from segmentation.evaluate import TEST_SEED_STREAM
from segmentation.inference import DEFAULT_MODEL, Segmenter
from segmentation.preprocess import to_gray_float
from segmentation.simulator import simulate_dataset


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=24)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    layers = simulate_dataset(TEST_SEED_STREAM, args.layers, args.size, args.size)
    grays = [to_gray_float(la.image) for la in layers]
    inter = np.zeros((len(LIGHTING_TRANSFORMS), NUM_CLASSES))
    union = np.zeros((len(LIGHTING_TRANSFORMS), NUM_CLASSES))
    with Segmenter(args.model) as seg:
        base = [seg.segment(g).mask for g in grays]
        for t, (_, fn) in enumerate(LIGHTING_TRANSFORMS):
            for g, m0 in zip(grays, base, strict=True):
                m1 = seg.segment(apply(g, fn)).mask
                for c in range(NUM_CLASSES):
                    a, b = m0 == c, m1 == c
                    inter[t, c] += float((a & b).sum())
                    union[t, c] += float((a | b).sum())
    iou = np.where(union > 0, inter / np.maximum(union, 1), np.nan)
    print(f"machine: {machine()}")
    print(f"model {args.model}: {args.layers} held-out simulated layers at {args.size}x{args.size}")
    print(f"{'change':26s} " + " ".join(f"{n:>9s}" for n in CLASS_NAMES) + "      mean")
    rows: dict[str, dict[str, Any]] = {}
    means: list[float] = []
    for t, (name, _) in enumerate(LIGHTING_TRANSFORMS):
        mean = float(np.nanmean(iou[t]))
        rows[name] = {"iou": dict(zip(CLASS_NAMES, iou[t].tolist(), strict=True)), "mean": mean}
        means.append(mean)
        print(f"{name:26s} " + " ".join(f"{v:9.3f}" for v in iou[t]) + f" {mean:9.3f}")
    worst = min(means)
    print(f"worst mean IoU {worst:.3f} (target >= 0.9: {'met' if worst >= 0.9 else 'not met'})")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"machine": machine(), "layers": args.layers, "changes": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
