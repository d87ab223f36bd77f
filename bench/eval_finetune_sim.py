"""Fine-tuning on a simulated "new camera": a look the base model never saw, 25 frames labelled as an operator
labels them, at most ``--minutes`` on these cores, scored on 25 frames of other builds, before and after.

Sets (``--set``), each drawn from the simulator's looks the shipped model was not trained with:

- ``holes``: holes in the fresh powder (small dark pits and faint dark rings, porosity): a defect look it never saw;
- ``exposed``: parts right after exposure (a bright contour line around bright scan tracks): a camera setting it
  never saw, where the contour is read as spatter.

The labels are an operator's: defects (porosity, spatter, warping) as their class where the simulator drew them,
"no defect here" (254) on powder and parts at least 3 px from any defect, the rest not labelled (255). Scored on
the held-out builds' frames: defect objects found (recall) and right (precision) per class, as
``bench/eval_realdata.py`` counts pores (a component of at least 4 px is right when it touches a labelled one),
the share of clean pixels called a defect, and the own simulator's held-out IoU (the base model's looks)
before and after: it may not fall by more than 0.02.

    .venv/bin/python bench/eval_finetune_sim.py [--set holes|exposed] [--minutes 15] [--json F]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import machine
from segmentation.classes import CLASS_NAMES, NO_DEFECT, UNLABELLED
from segmentation.evaluate import evaluate_simulated, trained_features
from segmentation.finetune import FinetuneOptions, finetune
from segmentation.inference import DEFAULT_MODEL, Segmenter
from segmentation.metrics import scores
from segmentation.preprocess import to_gray
from segmentation.simulator import SimBuild, random_spec

STREAMS = {"holes": 8_100_001, "exposed": 8_200_001}  # seeds no training or evaluation set uses


def _frames(kind: str, first: int, count: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """``count`` layers of builds showing the set's look (every build drawn with it until enough show it)."""
    out: list[tuple[np.ndarray, np.ndarray]] = []
    seed = first
    while len(out) < count:
        build = SimBuild(seed, 512, 512, 40, spec=random_spec(seed, 512, 512, 40, frozenset({kind})))
        seed += 1
        shows = build.look.holes > 0 if kind == "holes" else build.look.part_mode == "exposed"
        if not shows:
            continue
        for k in (12, 24, 36):
            layer = build.layer(k)
            image = layer.image if layer.image.ndim == 2 else to_gray(layer.image)
            out.append((image, layer.mask))
    return out[:count]


def operator_label(truth: np.ndarray) -> np.ndarray:
    """Defects as their class, "no defect here" at least 3 px from any defect, the rest not labelled."""
    defect = truth >= 2
    label = np.full(truth.shape, UNLABELLED, np.uint8)
    label[~ndimage.binary_dilation(defect, iterations=3)] = NO_DEFECT
    label[defect] = truth[defect]
    return label


def _score(model: Path, frames: list[tuple[np.ndarray, np.ndarray]]) -> dict[str, Any]:
    found = {c: 0 for c in (2, 3, 4)}
    total = dict(found)
    right = dict(found)
    predicted = dict(found)
    clean = clean_called = 0
    with Segmenter(model, engine="onnx") as seg:
        for image, truth in frames:
            pred = seg.segment(image).mask
            for c in (2, 3, 4):
                t, n = ndimage.label(truth == c)
                total[c] += n
                found[c] += len(set(np.unique(t[pred == c])) - {0})
                p, m = ndimage.label(pred == c)
                sizes = np.bincount(p.ravel())
                for i in range(1, m + 1):
                    if sizes[i] >= 4:
                        predicted[c] += 1
                        right[c] += bool((truth[p == i] == c).any())
            ok = truth < 2
            clean += int(ok.sum())
            clean_called += int((ok & (pred >= 2)).sum())
    return {
        CLASS_NAMES[c]: {
            "objects": total[c],
            "recall": round(found[c] / total[c], 3) if total[c] else None,
            "precision": round(right[c] / predicted[c], 3) if predicted[c] else None,
        }
        for c in (2, 3, 4)
    } | {"clean_called_defect": round(clean_called / max(clean, 1), 5)}


def _sim(model: Path, features: frozenset[str]) -> dict[str, float]:
    """Held-out simulated layers with the base model's looks (``features``), both models alike."""
    with Segmenter(model, engine="onnx") as seg:
        return {s.name: round(s.iou, 3) for s in scores(evaluate_simulated(seg, 32, 512, features=features).cm)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--set", choices=sorted(STREAMS), default="holes")
    ap.add_argument("--minutes", type=float, default=15.0)
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    ap.add_argument("--labelled", type=int, default=25)
    ap.add_argument("--anchor", type=float, default=None, help="pull towards the base weights (default: finetune's)")
    ap.add_argument("--distill", type=float, default=None, help="pull to the base's outputs (default: finetune's)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    stream = STREAMS[args.set]
    tune = _frames(args.set, stream, args.labelled)
    scored = _frames(args.set, stream + 10_000, 25)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for sub in ("images", "masks"):
            (root / sub).mkdir()
        for i, (image, truth) in enumerate(tune):
            name = f"{args.set}{i // 3:03d}-{i % 3:05d}"  # three layers of a build: the hold-out is by build
            cv2.imwrite(str(root / "images" / f"{name}.png"), image)
            cv2.imwrite(str(root / "masks" / f"{name}.png"), operator_label(truth))
        with Segmenter(args.model, engine="onnx") as seg:
            looks = trained_features(seg.model_meta)
        before, sim_before = _score(args.model, scored), _sim(args.model, looks)
        t0 = time.monotonic()
        tuned = finetune(
            FinetuneOptions(
                images=root / "images", masks=root / "masks", out=root / "model", minutes=args.minutes,
                base=args.model, **({} if args.anchor is None else {"anchor": args.anchor}),
                **({} if args.distill is None else {"distill": args.distill}),
            ),
            echo=lambda line: print(line, flush=True),
        )  # fmt: skip
        took = (time.monotonic() - t0) / 60
        after, sim_after = _score(tuned, scored), _sim(tuned, looks)
        held = (
            json.loads((root / "model" / "holdout.json").read_text())
            if (root / "model" / "holdout.json").exists()
            else {}
        )
    print(f"machine: {machine()}")
    print(f"set {args.set}: {len(tune)} labelled frames, fine-tuned in {took:.1f} min (budget {args.minutes:g});")
    print(f"scored on {len(scored)} frames of other builds (before -> after):")
    for cls in ("porosity", "spatter", "warping"):
        b, a = before[cls], after[cls]
        if b["objects"]:
            print(f"  {cls:9s} {b['objects']:4d} objects: recall {b['recall']} -> {a['recall']}, "
                  f"precision {b['precision']} -> {a['precision']}")  # fmt: skip
    print(f"  clean pixels called a defect: {before['clean_called_defect']} -> {after['clean_called_defect']}")
    print("own simulator held-out (the base's looks), IoU: " + ", ".join(
        f"{k} {sim_before[k]:.3f} -> {sim_after[k]:.3f}" for k in sim_before))  # fmt: skip
    if args.json:
        out = {"machine": machine(), "set": args.set, "minutes": took, "before": before, "after": after,
               "simulated_before": sim_before, "simulated_after": sim_after, "holdout": held}  # fmt: skip
        args.json.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
