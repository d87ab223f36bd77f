"""Back-testing throughput: builds per minute replayed as Dask tasks with 1 and 2 local workers, against the
same builds replayed one after the other in one process (the baseline, same run).

    .venv/bin/python bench/bench_backtest.py [--builds 8] [--layers 12] [--size 512]
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import machine


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--builds", type=int, default=8)
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--size", type=int, default=512)
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)
    for name in ("monitor", "printer_io", "distributed"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    from monitor.backtest import backtest
    from monitor.record import write_truth_build
    from monitor.replay import ReplayOptions, run_replay
    from segmentation.classes import CLASS_NAMES
    from segmentation.simulator import SimBuild, scenario_spec

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        builds = []
        for i in range(args.builds):
            spec = scenario_spec(10 + i, args.size, args.layers, warp_start=3 if i % 2 == 0 else None)
            sim = SimBuild(10 + i, args.size, args.size, args.layers, spec=spec)
            layers = [sim.layer(k) for k in range(args.layers)]
            path = root / "builds" / f"b{i:02d}.h5"
            path.parent.mkdir(exist_ok=True)
            write_truth_build(path, [s.image for s in layers], [s.mask for s in layers], mm_per_px=spec.mm_per_px,
                              layer_thickness_mm=spec.layer_thickness, class_names=list(CLASS_NAMES))  # fmt: skip
            builds.append(path)
        models = root / "models"
        t = time.monotonic()
        for b in builds:
            run_replay(ReplayOptions(source=b, out=root / "seq" / f"{b.stem}.h5", progress=False, models_dir=models))
        sequential = time.monotonic() - t
        timings = {}
        for workers in (1, 2):
            t = time.monotonic()
            backtest(builds, root / f"w{workers}", workers=workers, models_dir=models, progress=False,
                     echo=lambda _: None)  # fmt: skip
            timings[workers] = time.monotonic() - t
    per_min = {k: args.builds / (v / 60) for k, v in timings.items()}
    base = args.builds / (sequential / 60)
    print(f"machine: {machine()}")
    print(f"{args.builds} builds of {args.layers} layers at {args.size} px")
    print(f"sequential replays in one process: {sequential:.0f} s, {base:.1f} builds/min (baseline)")
    for k in (1, 2):
        print(f"backtest, {k} worker(s): {timings[k]:.0f} s, {per_min[k]:.1f} builds/min "
              f"({per_min[k] / base:.2f}x the baseline)")  # fmt: skip
    print(f"2 workers / 1 worker: {per_min[2] / per_min[1]:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
