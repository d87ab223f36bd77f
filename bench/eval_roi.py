"""How well the proposed build plate (:func:`segmentation.roi.propose_roi`) bounds simulated builds.

The monitor proposes the plate from a build's first frame and judges nothing outside it until an
operator confirms or corrects it, so a proposal that cuts into the plate hides every defect there.
For held-out simulated builds (seed stream 7000001 unless ``--seed``), with the simulator's chamber
hardware (walls, rails, screws, the plate's edge) and distractors (recoater streaks, uneven bands), the
plate is proposed from layer 0 as the monitor does, and every ``--every``-th layer is scored:

- *lost*: pixels of part, porosity or warping outside the proposal (share of all of them), and the
  builds that lose more than 1 % of theirs (spatter is left out: it also lands beyond the plate);
- *hardware judged*: chamber hardware inside the proposal (share of all hardware pixels); screws sit on
  the plate's corners and a four-sided polygon cannot leave them out.

    .venv/bin/python bench/eval_roi.py [--builds 64] [--size 512] [--every 5] [--seed S] [--json F]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import machine
from segmentation.evaluate import TEST_SEED_STREAM
from segmentation.roi import propose_roi
from segmentation.simulator import SimBuild

N_LAYERS = 40


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--builds", type=int, default=64)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--every", type=int, default=5, help="score every n-th layer")
    ap.add_argument("--seed", type=int, default=TEST_SEED_STREAM)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    started = time.monotonic()
    lost = content = hw_in = hw_all = 0
    bad: list[tuple[int, float]] = []
    for b in range(args.builds):
        build_seed = args.seed * 100_003 + b
        build = SimBuild(build_seed, args.size, args.size, N_LAYERS)
        roi = propose_roi([build.layer(0).image]).mask((args.size, args.size))
        b_lost = b_content = 0
        for k in range(0, N_LAYERS, args.every):
            m = build.layer(k).mask
            fused = (m == 1) | (m == 2) | (m == 4)
            b_lost += int((fused & ~roi).sum())
            b_content += int(fused.sum())
        lost += b_lost
        content += b_content
        hw_in += int((build._hardware & roi).sum())
        hw_all += int(build._hardware.sum())
        if b_content and b_lost / b_content > 0.01:
            bad.append((build_seed, b_lost / b_content))
    result = {
        "builds": args.builds,
        "size": args.size,
        "lost_share": lost / max(1, content),
        "builds_losing_over_1pct": len(bad),
        "worst": sorted(bad, key=lambda x: -x[1])[:5],
        "hardware_judged_share": hw_in / max(1, hw_all),
    }
    print(f"machine: {machine()}")
    print(f"{args.builds} held-out builds at {args.size}x{args.size} px, seed stream {args.seed}, plate from layer 0")
    print(f"lost (fused pixels outside the proposal): {result['lost_share']:.2%}")
    print(f"builds losing over 1 % of theirs: {len(bad)} of {args.builds}")
    for seed, share in sorted(bad, key=lambda x: -x[1])[:5]:
        print(f"  build {seed}: {share:.1%}")
    print(f"hardware judged (inside the proposal): {result['hardware_judged_share']:.1%}")
    print(f"({time.monotonic() - started:.0f} s)")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
