"""The default policy on simulated builds: does it pause every warped build, when, and never a clean one?

For each seed, two builds that differ only in the defect (``scenario_spec``): warping that starts at
``--warp-start`` and grows, and the same build without it. Every layer goes through the shipped model,
the metrics and the default policy (``data/config/policy.toml``), as in the monitor. Prints, per rule,
on how many warped builds it fired and at which layer (detection delay after the warp starts), and
on how many clean builds it fired (false alarms). Seeds 1000+ are in no training stream.

    .venv/bin/python bench/eval_policy.py [--builds 8] [--layers 24] [--size 512]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import machine
from monitor.metrics import MetricsComputer
from monitor.policy import DEFAULT_POLICY, PolicyEngine, load_policy
from segmentation.inference import Segmenter
from segmentation.simulator import SimBuild, scenario_spec


def first_hits(seg: Segmenter, seed: int, size: int, layers: int, warp: int | None) -> dict[str, int]:
    spec = scenario_spec(seed, size, layers, warp_start=warp)
    build = SimBuild(seed, size, size, layers, spec=spec)
    mc = MetricsComputer(spec.mm_per_px)
    engine = PolicyEngine(load_policy(DEFAULT_POLICY))
    fired: dict[str, int] = {}
    for k in range(layers):
        m = mc.compute(seg.segment(build.layer(k).image).mask)
        for hit in engine.evaluate(k, m.values, m.parts):
            fired.setdefault(hit.rule.name, k)
    return fired


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--builds", type=int, default=8)
    ap.add_argument("--layers", type=int, default=24)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--warp-start", type=int, default=8)
    args = ap.parse_args()
    print(f"machine: {machine()}")
    rules = [r.name for r in load_policy(DEFAULT_POLICY).rules]
    warped: dict[str, list[int]] = {r: [] for r in rules}
    clean: dict[str, int] = dict.fromkeys(rules, 0)
    with Segmenter() as seg:
        for seed in range(1000, 1000 + args.builds):
            w = first_hits(seg, seed, args.size, args.layers, args.warp_start)
            c = first_hits(seg, seed, args.size, args.layers, None)
            print(f"seed {seed}: warped {w}  clean {c}", flush=True)
            for r in rules:
                if r in w:
                    warped[r].append(w[r] - args.warp_start)
                clean[r] += r in c
    print(f"{args.builds} builds of {args.layers} layers at {args.size}x{args.size}, warp from layer {args.warp_start}")
    for r in rules:
        delays = warped[r]
        delay = (
            f"delay median {statistics.median(delays):g} layers (min {min(delays)}, max {max(delays)})"
            if delays
            else "-"
        )
        n = args.builds
        print(f"  {r:20s} fired on {len(delays)}/{n} warped builds, {delay}; on {clean[r]}/{n} clean builds")
    return 0


if __name__ == "__main__":
    sys.exit(main())
