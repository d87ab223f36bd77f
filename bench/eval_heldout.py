"""Accuracy of a model on a held-out simulated set (builds seeded apart from every training seed).

    .venv/bin/python bench/eval_heldout.py [--count 64] [--size 512] [--engine onnx] [--json OUT]
    .venv/bin/python bench/eval_heldout.py --simulator-rev 80fa4bf   # the same seeds, an earlier simulator
    .venv/bin/python bench/eval_heldout.py --plate --reference 3  # as the monitor judges (plate, lighting)

Targets (data/models/MODEL_CARD.md): IoU part >= 0.95; porosity, spatter, warping >= 0.85 each; pore object
recall >= 0.90. The script prints the figures and whether each target is met; it never trains.
``--simulator-rev REV`` renders the held-out builds with ``segmentation/simulator.py`` as it was at that
git revision (a regression check on exactly the frames an earlier model was measured on).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import machine
from segmentation.evaluate import TEST_SEED_STREAM, evaluate_simulated, format_report
from segmentation.inference import DEFAULT_MODEL, Segmenter
from segmentation.metrics import Evaluation

TARGETS = {"part": 0.95, "porosity": 0.85, "spatter": 0.85, "warping": 0.85}
PORE_RECALL_TARGET = 0.90


def _old_simulator(rev: str) -> Any:
    """``segmentation/simulator.py`` of a git revision, imported as a module of its own."""
    import importlib.util
    import subprocess
    import tempfile

    repo = Path(__file__).resolve().parent.parent
    source = subprocess.run(
        ["git", "-C", str(repo), "show", f"{rev}:segmentation/simulator.py"], capture_output=True, text=True, check=True
    ).stdout
    path = Path(tempfile.mkdtemp()) / f"simulator_{rev}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=64)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--engine", default="onnx")
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    ap.add_argument("--seed", type=int, default=TEST_SEED_STREAM, help="seed stream of the held-out builds")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--simulator-rev", default=None, help="render with the simulator of this git revision")
    ap.add_argument(
        "--plate",
        action="store_true",
        help="judge only the build plate proposed from each build's first layer, as the monitor does",
    )
    ap.add_argument(
        "--reference",
        type=int,
        default=0,
        metavar="N",
        help="divide layers N on by the lighting of the first N layers' powder, as the monitor does (3)",
    )
    args = ap.parse_args()
    if not args.model.is_file():
        print(f"error: --model {args.model}: no such file (the shipped model is {DEFAULT_MODEL})", file=sys.stderr)
        return 2
    if (args.plate or args.reference) and args.simulator_rev:
        ap.error("--plate and --reference do not go with --simulator-rev (the earlier simulator had no chamber)")
    t = time.perf_counter()
    with Segmenter(args.model, engine=args.engine) as seg:
        if args.simulator_rev:
            ev = Evaluation.empty()
            for layer in _old_simulator(args.simulator_rev).simulate_dataset(
                args.seed, args.count, args.size, args.size
            ):
                ev.add(layer.mask, seg.segment(layer.image).mask)
        else:
            ev = evaluate_simulated(
                seg, args.count, args.size, args.seed, plate=args.plate, reference_layers=args.reference
            )
    report = ev.to_dict()
    print(f"machine: {machine()}")
    print(
        f"held-out set: {args.count} layers at {args.size}x{args.size}, seed stream {args.seed}, engine {args.engine}"
        + (", judged on the plate proposed from each build's first layer" if args.plate else ", the whole frame")
        + (f", lighting of the first {args.reference} layers removed" if args.reference else "")
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
