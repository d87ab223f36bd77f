"""Replay throughput with ``--speed max``, and where the time goes.

Writes simulated builds with ground truth (20 layers, warping from layer 6) at 512x512 and 1024x1024,
replays each through the whole pipeline (local Mosquitto, monitor with ONNX Runtime, default policy,
record with gzip 1, virtual printer) as fast as the monitor keeps up, and prints layers per second
and the median time per layer in each stage: frame decode, inference, metrics, record, and the rest
(MQTT transport, encoding on the replay side, result publishing). Baseline in the same run: the
inference alone, as layers per second.

    .venv/bin/python bench/bench_replay.py [--layers 20]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import machine
from monitor.record import write_truth_build
from monitor.replay import ReplayOptions, run_replay
from segmentation.classes import CLASS_NAMES
from segmentation.simulator import SimBuild, scenario_spec


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=20)
    args = ap.parse_args()
    logging.getLogger("monitor").setLevel(logging.CRITICAL)
    logging.getLogger("printer_io").setLevel(logging.CRITICAL)
    print(f"machine: {machine()}")
    with tempfile.TemporaryDirectory() as tmp:
        for size in (512, 1024):
            spec = scenario_spec(11, size, args.layers, warp_start=6)
            build = SimBuild(11, size, size, args.layers, spec=spec)
            layers = [build.layer(k) for k in range(args.layers)]
            src = Path(tmp) / f"build{size}.h5"
            write_truth_build(
                src,
                [x.image for x in layers],
                [x.mask for x in layers],
                mm_per_px=spec.mm_per_px,
                layer_thickness_mm=0.04,
                class_names=CLASS_NAMES,
            )
            result = run_replay(ReplayOptions(source=src, out=Path(tmp) / f"out{size}.h5", progress=False))
            stages = ("decode", "segment", "metrics", "record")
            med = {s: statistics.median(r.timings_ms.get(s, 0.0) for r in result.results) for s in stages}
            per_layer = result.seconds / result.layers * 1000
            rest = per_layer - sum(med.values())
            rate = result.layers / result.seconds
            print(
                f"{size}x{size}: {rate:.1f} layers/s ({per_layer:.0f} ms a layer) with --speed max; "
                f"inference alone {1000 / med['segment']:.1f} layers/s (baseline; replay is "
                f"{rate / (1000 / med['segment']):.2f}x of it)"
            )
            shown = ", ".join(f"{s} {med[s]:.0f} ms" for s in stages)
            print(f"{size}x{size}: median per layer: {shown}, MQTT and the rest {rest:.0f} ms")
            pause = result.first_pause
            print(f"{size}x{size}: first pause at layer {pause.layer if pause else None} (warping from layer 6)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
