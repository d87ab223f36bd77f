"""Accuracy of a model on a held-out simulated set (builds seeded apart from every training seed).

    .venv/bin/python bench/eval_heldout.py [--count 64] [--size 512] [--engine onnx] [--json OUT]

Targets (issue 2): IoU part >= 0.95; porosity, spatter, warping >= 0.80 each; pore object
recall >= 0.90. The script prints the figures and whether each target is met; it never trains.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import machine
from segmentation.evaluate import TEST_SEED_STREAM, evaluate_simulated, format_report
from segmentation.inference import DEFAULT_MODEL, Segmenter

TARGETS = {"part": 0.95, "porosity": 0.80, "spatter": 0.80, "warping": 0.80}
PORE_RECALL_TARGET = 0.90


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=64)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--engine", default="onnx")
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    ap.add_argument("--seed", type=int, default=TEST_SEED_STREAM, help="seed stream of the held-out builds")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    t = time.perf_counter()
    with Segmenter(args.model, engine=args.engine) as seg:
        ev = evaluate_simulated(seg, args.count, args.size, args.seed)
    report = ev.to_dict()
    print(f"machine: {machine()}")
    print(
        f"held-out set: {args.count} layers at {args.size}x{args.size}, seed stream {args.seed}, engine {args.engine}"
    )
    print(format_report(report))
    ok = True
    for name, target in TARGETS.items():
        iou = report["classes"][name]["iou"]  # type: ignore[index]
        met = iou >= target
        ok &= met
        print(f"target IoU {name} >= {target:.2f}: {iou:.3f} {'met' if met else 'NOT met'}")
    rec = ev.pore_recall
    met = rec >= PORE_RECALL_TARGET
    ok &= met
    print(f"target pore object recall >= {PORE_RECALL_TARGET:.2f}: {rec:.3f} {'met' if met else 'NOT met'}")
    print(f"({time.perf_counter() - t:.0f} s)")
    if args.json:
        args.json.write_text(
            json.dumps(
                {"machine": machine(), "args": vars(args) | {"model": str(args.model), "json": None}, "report": report},
                indent=1,
            )
        )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
