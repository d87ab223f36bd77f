"""Lighting robustness: the same layers under ten lighting changes must give the same masks.

Held-out simulated layers (seed stream 7000001, never trained on) are segmented as they are and under
each of :data:`segmentation.augment.LIGHTING_TRANSFORMS` (darker, brighter, gamma both ways, lower
contrast, gradients across and along, vignetting, a light spot, a falloff band). For each change, the
IoU between the mask of the changed frame and the mask of the unchanged frame is computed per class
over all layers (pixels summed), and their mean over the five classes. Target (data/models/MODEL_CARD.md): mean IoU
>= 0.9 for every change.

``--plate --reference 3`` judges as the monitor does: a camera's lighting is the same on every layer of a
build, so each change goes through the build's first layers too, the plate is proposed from its first
(changed) frame and the later layers are divided by the lighting of the first three (``[monitor]
reference_layers``); the unchanged frames are judged the same way. The model alone is the default.
``--seed`` renders another stream (the held-out one by default; a second stream shows how much a set of
layers moves the figures; 64 by default, as eval_heldout.py, since 24 moved the worst figure by several
hundredths).

    .venv/bin/python bench/eval_lighting.py [--layers 64] [--size 512] [--model M] [--json F]
    .venv/bin/python bench/eval_lighting.py --plate --reference 3 [--seed 4242001]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import machine
from segmentation.augment import LIGHTING_TRANSFORMS, apply
from segmentation.classes import CLASS_NAMES, NUM_CLASSES
from segmentation.evaluate import TEST_SEED_STREAM, as_the_monitor
from segmentation.inference import DEFAULT_MODEL, Segmenter
from segmentation.preprocess import to_gray_float
from segmentation.simulator import SimBuild, dataset_layers

Change = Callable[[np.ndarray], np.ndarray]
Rendered = dict[tuple[int, int], np.ndarray]


def _masks(seg: Segmenter, args: argparse.Namespace, change: Change | None, rendered: Rendered) -> list[np.ndarray]:
    """Masks of the evaluated layers, every frame of each build (its first layers too) through ``change``;
    ``rendered`` keeps the frames rendered so far, for the next change."""
    out = []
    builds: dict[int, tuple[np.ndarray | None, np.ndarray | None, int]] = {}
    for build, k in dataset_layers(args.seed, args.layers, args.size, args.size):

        def frame(j: int, build: SimBuild = build) -> np.ndarray:
            key = (build.seed, j)
            if key not in rendered:
                rendered[key] = to_gray_float(build.layer(j).image)
            return rendered[key] if change is None else change(rendered[key])

        if build.seed not in builds:
            builds[build.seed] = as_the_monitor(seg, frame, build.n_layers, args.plate, args.reference)
        roi, illum, first = builds[build.seed]
        out.append(seg.segment(frame(k), roi=roi, illumination=illum if k >= first else None).mask)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=64)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--seed", type=int, default=TEST_SEED_STREAM, help="seed stream of the builds")
    ap.add_argument("--plate", action="store_true", help="judge only the plate proposed from the first frame")
    ap.add_argument(
        "--reference", type=int, default=0, metavar="N", help="divide by the lighting of the first N layers"
    )
    args = ap.parse_args()
    if args.reference < 0 or args.layers < 1:
        print(
            f"eval_lighting: --reference {args.reference} --layers {args.layers}: "
            "expected --reference >= 0 and --layers >= 1",
            file=sys.stderr,
        )
        return 2
    inter = np.zeros((len(LIGHTING_TRANSFORMS), NUM_CLASSES))
    union = np.zeros((len(LIGHTING_TRANSFORMS), NUM_CLASSES))
    with Segmenter(args.model) as seg:
        rendered: Rendered = {}
        base = _masks(seg, args, None, rendered)
        for t, (_, fn) in enumerate(LIGHTING_TRANSFORMS):
            changed = _masks(seg, args, partial(apply, fn=fn), rendered)
            for m0, m1 in zip(base, changed, strict=True):
                for c in range(NUM_CLASSES):
                    a, b = m0 == c, m1 == c
                    inter[t, c] += float((a & b).sum())
                    union[t, c] += float((a | b).sum())
    iou = np.where(union > 0, inter / np.maximum(union, 1), np.nan)
    print(f"machine: {machine()}")
    judged = ["plate proposed from the first frame"] if args.plate else []
    judged += [f"lighting of the first {args.reference} layers removed"] if args.reference else []
    how = f" as the monitor judges ({', '.join(judged)})" if judged else " (the model alone)"
    print(f"model {args.model}: {args.layers} simulated layers at {args.size}x{args.size} of stream {args.seed}{how}")
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
        args.json.write_text(
            json.dumps(
                {
                    "machine": machine(),
                    "layers": args.layers,
                    "seed": args.seed,
                    "plate": args.plate,
                    "reference": args.reference,
                    "changes": rows,
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
