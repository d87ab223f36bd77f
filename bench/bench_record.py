"""Build-record append throughput and file size per layer, by frame size and gzip level.

Appends 40 simulated layers (image, class mask, part ids, metrics) to a fresh record per setting, the
way the monitor does (SWMR, flush after every layer, no fsync unless --fsync), and prints the
median and p95 time per layer, layers per second and bytes per layer. Baseline in the same run: the
uncompressed record (gzip level 0).

    .venv/bin/python bench/bench_record.py [--layers 40] [--fsync]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


from bench._common import machine, median_p95
from monitor.metrics import METRIC_NAMES, PART_METRIC_NAMES, MetricsComputer
from monitor.record import BuildRecord, RecordSpec
from segmentation.classes import CLASS_NAMES
from segmentation.simulator import SimBuild, scenario_spec


def run(size: int, level: int, layers: int, fsync: bool, tmp: Path) -> tuple[list[float], int]:
    spec = scenario_spec(3, size, layers, warp_start=layers // 3)
    build = SimBuild(3, size, size, layers, spec=spec)
    frames = [build.layer(k) for k in range(layers)]
    mc = MetricsComputer(spec.mm_per_px)
    computed = [mc.compute(f.mask) for f in frames]
    path = tmp / f"r{size}-{level}.h5"
    rspec = RecordSpec(
        printer="bench",
        job_id="bench",
        height=size,
        width=size,
        dtype=str(frames[0].image.dtype),
        mm_per_px=spec.mm_per_px,
        layer_thickness_mm=0.04,
        class_names=tuple(CLASS_NAMES),
        metric_names=METRIC_NAMES,
        part_metric_names=PART_METRIC_NAMES,
        config={},
        policy={},
        model={"id": "bench", "sha256": ""},
        software_version="bench",
        compression_level=level,
    )
    times = []
    with BuildRecord.create(path, rspec, fsync=fsync) as rec:
        for k, (f, m) in enumerate(zip(frames, computed, strict=True)):
            image = f.image if f.image.ndim == 2 else f.image.mean(axis=2).astype(f.image.dtype)
            t = time.perf_counter()
            rec.append_layer(
                k,
                z_mm=0.04 * (k + 1),
                image=image,
                mask=f.mask,
                part_ids=m.part_ids,
                metrics=m.values,
                part_metrics=[{"layer": k, **p} for p in m.parts],
            )
            times.append(time.perf_counter() - t)
    return times, path.stat().st_size


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=40)
    ap.add_argument("--fsync", action="store_true")
    args = ap.parse_args()
    print(f"machine: {machine()}; fsync {'on' if args.fsync else 'off'}")
    with tempfile.TemporaryDirectory() as d:
        for size in (512, 1024):
            base = None
            for level in (0, 1, 4):
                times, nbytes = run(size, level, args.layers, args.fsync, Path(d))
                med, p95 = median_p95(times)
                base = base or med
                print(
                    f"{size}x{size} gzip {level}: median {med * 1e3:6.1f} ms p95 {p95 * 1e3:6.1f} ms per layer, "
                    f"{1 / med:6.1f} layers/s, {nbytes / args.layers / 1e3:8.1f} kB per layer "
                    f"({med / base:.2f}x the uncompressed time)"
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
