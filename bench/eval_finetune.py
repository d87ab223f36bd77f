"""Fine-tuning on a real camera's frames: a third of them labelled, at most ``--minutes`` on these cores,
scored on the other two thirds, before and after (held-out rows of the fixed split only).

- pblm (L-PBF powder-bed camera): every third clean held-out layer becomes a frame-level "no defect here"
  label (all 254); the other clean layers are scored: share of layers alarming (defects over 0.5 % of the
  proposed plate), per category.
- fdm_pores (pixel labels): the left third of each held-out image is labelled (pores 2, the rest 254);
  pores are scored on the right two thirds: object recall and precision as in ``eval_realdata.py``.

    .venv/bin/python bench/eval_finetune.py [--minutes 15] [--root ../shared/realdata] [--json F]

Exits 0 with a note when the data are absent (a user's clone has no ../shared).
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

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import machine
from bench.eval_realdata import CLEAN, DEFAULT_ROOT, fdm, heldout, pblm
from segmentation.classes import NO_DEFECT, LayerClass
from segmentation.finetune import FinetuneOptions, finetune
from segmentation.imageio import read_image
from segmentation.inference import DEFAULT_MODEL, Segmenter


def _split(root: Path, rows: list[str], tune: Path, score: Path) -> tuple[dict[str, list[str]], list[str]]:
    """Write the labelled third to ``tune`` (images/ + masks/) and the scored FDM crops under ``score``;
    returns the clean pblm layers to score (by category) and the FDM crops (relative to ``score``)."""
    for sub in ("images", "masks"):
        (tune / sub).mkdir(parents=True, exist_ok=True)
    scored: dict[str, list[str]] = {}
    for cat in CLEAN:
        layers = sorted(r for r in rows if r.startswith(f"pblm/{cat}/"))
        for i, rel in enumerate(layers):
            if i % 3 == 0:
                img = read_image(root / rel)
                name = f"pblm-{cat}-{Path(rel).stem}"
                cv2.imwrite(str(tune / "images" / f"{name}.png"), img)
                cv2.imwrite(str(tune / "masks" / f"{name}.png"), np.full(img.shape[:2], NO_DEFECT, np.uint8))
            else:
                scored.setdefault(cat, []).append(rel)
    crops = []
    (score / "fdm_pores" / "derived_masks").mkdir(parents=True, exist_ok=True)
    for rel in (r for r in rows if r.startswith("fdm_pores/")):
        raw = root / rel
        truth = cv2.imread(str(raw.parent / "derived_masks" / raw.name.replace("_raw.jpg", "_pore_mask.png")), 0)
        if truth is None:
            continue
        img = read_image(raw)
        cut = img.shape[1] // 3
        label = np.where(truth[:, :cut] > 0, int(LayerClass.POROSITY), NO_DEFECT).astype(np.uint8)
        cv2.imwrite(str(tune / "images" / f"fdm-{raw.stem}.png"), img[:, :cut])
        cv2.imwrite(str(tune / "masks" / f"fdm-{raw.stem}.png"), label)
        cv2.imwrite(str(score / "fdm_pores" / raw.name), img[:, cut:], [cv2.IMWRITE_JPEG_QUALITY, 100])
        cv2.imwrite(str(score / "fdm_pores" / "derived_masks" / raw.name.replace("_raw.jpg", "_pore_mask.png")),
                    truth[:, cut:])  # fmt: skip
        crops.append(f"fdm_pores/{raw.name}")
    return scored, crops


def _score(model: Path, root: Path, scored: dict[str, list[str]], score: Path, crops: list[str]) -> dict[str, Any]:
    with Segmenter(model) as seg:
        out: dict[str, Any] = {f"pblm/{cat}": pblm(seg, root, paths, 0.005, None) for cat, paths in scored.items()}
        out["fdm_pores"] = fdm(seg, score, crops, None)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", type=Path, default=DEFAULT_ROOT)
    ap.add_argument("--minutes", type=float, default=15.0)
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    ap.add_argument("--steps", type=int, default=None, help="a fixed number of steps (an ablation's same work)")
    ap.add_argument("--anchor", type=float, default=None, help="pull towards the base weights (default: finetune's)")
    ap.add_argument("--distill", type=float, default=None, help="pull to the base's outputs (default: finetune's)")
    ap.add_argument("--lr", type=float, default=None, help="peak learning rate (default: finetune's)")
    ap.add_argument("--keep", type=Path, default=None, help="keep the labels and the fine-tuned model here")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    if not (args.root / "split.tsv").is_file():
        print(f"no real data at {args.root} (a user's clone has none): nothing measured")
        return 0
    rows = heldout(args.root)
    with tempfile.TemporaryDirectory() as tmp:
        work = args.keep or Path(tmp)
        scored, crops = _split(args.root, rows, work / "tune", work / "score")
        n_tune = len(list((work / "tune" / "images").glob("*.png")))
        before = _score(args.model, args.root, scored, work / "score", crops)
        t0 = time.monotonic()
        tuned = finetune(
            FinetuneOptions(
                images=work / "tune" / "images",
                masks=work / "tune" / "masks",
                out=work / "model",
                minutes=args.minutes,
                base=args.model,
                steps=args.steps,
                **({} if args.anchor is None else {"anchor": args.anchor}),
                **({} if args.distill is None else {"distill": args.distill}),
                **({} if args.lr is None else {"lr": args.lr}),
            ),
            echo=lambda line: print(line, flush=True),
        )
        took = (time.monotonic() - t0) / 60
        after = _score(tuned, args.root, scored, work / "score", crops)
    print(f"machine: {machine()}")
    print(f"fine-tuned from {args.model} in {took:.1f} min (budget {args.minutes:g}); {n_tune} labelled frames")
    print(f"{'set':36s} {'before':>22s} {'after':>22s}")
    for key in before:
        if key.startswith("pblm/"):
            b, a = before[key], after[key]
            print(
                f"{key:36s} {b['alarm_share']:>8.1%} of {b['layers']:3d} alarm"
                f" {a['alarm_share']:>8.1%} of {a['layers']:3d} alarm"
            )
    b, a = before["fdm_pores"], after["fdm_pores"]
    print(
        f"{'fdm_pores (right two thirds)':36s} recall {b['object_recall']:.3f} precision {b['object_precision']:.3f}"
        f"  ->  recall {a['object_recall']:.3f} precision {a['object_precision']:.3f}"
        f" ({b['pores_found']} -> {a['pores_found']} pores; {b['predicted_right']} -> {a['predicted_right']} right)"
    )
    if args.json:
        args.json.write_text(
            json.dumps({"machine": machine(), "minutes": took, "before": before, "after": after}, indent=1)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
