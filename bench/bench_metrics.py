"""Per-layer metrics time (``MetricsComputer.compute``), by frame size, on simulated builds.

The monitor computes the metrics of every layer after the network, before the policy: this is part of
frame-to-decision time. Each build is a scenario build (a box and a cylinder, a warp from a third of the
way up) whose ground-truth class masks are fed layer by layer, in order, as the monitor does (the
warping geometry keeps state across layers). Prints median and p95 per layer; baseline in the same run:
the same metrics without the warping geometry (persistence, footprint, confirmed warping).

    .venv/bin/python bench/bench_metrics.py [--sizes 512 1024] [--layers 30] [--builds 3]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

from bench._common import machine, median_p95
from monitor.metrics import MetricsComputer
from segmentation.simulator import SimBuild, scenario_spec


class WithoutGeometry(MetricsComputer):
    """The baseline: every metric but the warping geometry's (those read 0)."""

    def _geometry(self, v: dict[str, float], *args: object) -> None:
        for name in ("warping_persistent_area_mm2", "warping_outside_area_mm2", "warping_confirmed_area_mm2"):
            v[name] = 0.0
        v["warping_confirmed_growth_mm2"] = 0.0


def masks(seed: int, size: int, layers: int) -> tuple[list[np.ndarray], float]:
    spec = scenario_spec(seed, size, layers, warp_start=layers // 3)
    build = SimBuild(seed, size, size, layers, spec=spec)
    return [build.layer(k).mask for k in range(layers)], spec.mm_per_px


def per_layer_ms(kind: type[MetricsComputer], builds: list[tuple[list[np.ndarray], float]]) -> list[float]:
    out = []
    for layers, mm_per_px in builds:
        mc = kind(mm_per_px)
        mc.compute(layers[0])  # warm-up (first call allocates); state restarts below
        mc = kind(mm_per_px)
        for mask in layers:
            t = time.perf_counter()
            mc.compute(mask)
            out.append((time.perf_counter() - t) * 1000)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[512, 1024])
    ap.add_argument("--layers", type=int, default=30)
    ap.add_argument("--builds", type=int, default=3)
    args = ap.parse_args()
    print(f"machine: {machine()}")
    print("| frame | metrics median / p95 | without the warping geometry (baseline) | ratio |")
    print("|---|---|---|---|")
    for size in args.sizes:
        builds = [masks(seed, size, args.layers) for seed in range(3, 3 + args.builds)]
        full = median_p95(per_layer_ms(MetricsComputer, builds))
        base = median_p95(per_layer_ms(WithoutGeometry, builds))
        print(
            f"| {size}x{size} | {full[0]:.1f} / {full[1]:.1f} ms | {base[0]:.1f} / {base[1]:.1f} ms "
            f"| {full[0] / base[0]:.2f}x |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
