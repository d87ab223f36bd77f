"""The report on predicted masks: are the injected pores of a simulated build found, where, how big?

Replays the shipped sample build (``data/samples/builds/warp-512.h5``, ground truth known from
``scenario_spec(5, 512, 12, warp_start=4)``) through the monitor with the shipped model, runs the report
on the new record (the model's masks) and on the ground truth, and compares both with the injected
pores: found / injected, centre error (mm), volume ratio to the injected ellipsoid, false pores.

    .venv/bin/python bench/eval_report.py
"""

from __future__ import annotations

import logging
import math
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import machine
from dashboards.report import Report, analyze
from monitor.replay import ReplayOptions, run_replay
from segmentation.simulator import scenario_spec

SAMPLE = Path(__file__).resolve().parent.parent / "data" / "samples" / "builds" / "warp-512.h5"


def score(report: Report, label: str) -> None:
    spec = scenario_spec(5, 512, 12, warp_start=4)
    injected = [p for p in spec.pores if 0 <= p.cz < 12]
    pores = [d for d in report.defects if d.cls == "porosity"]
    used: set[int] = set()
    errors, ratios = [], []
    for p in injected:
        near = [d for d in pores if d.id not in used]
        if not near:
            continue
        best = min(near, key=lambda d: math.hypot(d.centroid_mm[0] - p.cx, d.centroid_mm[1] - p.cy))
        err = math.hypot(best.centroid_mm[0] - p.cx, best.centroid_mm[1] - p.cy)
        if err > 1.0:
            continue
        used.add(best.id)
        errors.append(err)
        ratios.append(best.volume_mm3 / (4 / 3 * math.pi * p.rx * p.ry * p.rz * spec.layer_thickness))
    false = len(pores) - len(used)
    med_err = f"{statistics.median(errors):.2f} mm" if errors else "-"
    med_ratio = f"{statistics.median(ratios):.2f}" if ratios else "-"
    print(
        f"{label}: found {len(used)}/{len(injected)} injected pores; median centre error {med_err}; "
        f"median volume / injected ellipsoid {med_ratio}; {false} pore(s) not injected"
    )


def main() -> int:
    logging.getLogger("monitor").setLevel(logging.CRITICAL)
    print(f"machine: {machine()}")
    score(analyze(SAMPLE), "ground-truth masks")
    with tempfile.TemporaryDirectory() as tmp:
        result = run_replay(ReplayOptions(source=SAMPLE, out=Path(tmp) / "pred.h5", progress=False))
        score(analyze(result.record), "predicted masks (shipped model)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
