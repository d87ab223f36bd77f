"""Helpers shared by the benchmark scripts: timing statistics and the machine description."""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any


def machine() -> str:
    """One line describing the CPU this ran on."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:  # noqa: PTH123 - Linux only, best effort
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} logical CPUs, Python {platform.python_version()}, {platform.system()}"


def timeit(fn: Callable[[], object], repeat: int, warmup: int = 1) -> list[float]:
    """Wall-clock seconds of ``repeat`` calls after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def median_p95(samples: list[float]) -> tuple[float, float]:
    s = sorted(samples)
    p95 = s[min(len(s) - 1, round(0.95 * (len(s) - 1)))]
    return statistics.median(s), p95


def percentile(samples: list[float], q: float) -> float:
    """Nearest-rank percentile, ``q`` in 0..1."""
    s = sorted(samples)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))]


def open_simulated_record(path: object, size: int) -> tuple[Any, Callable[[int], None]]:
    """A new build record and ``append(layer)`` that stores a simulated layer (10 distinct ones, repeated)
    the way the monitor does (SWMR, gzip 1). Close the record when done."""
    from pathlib import Path

    from monitor.metrics import METRIC_NAMES, PART_METRIC_NAMES, MetricsComputer
    from monitor.record import BuildRecord, RecordSpec
    from segmentation.classes import CLASS_NAMES
    from segmentation.simulator import SimBuild, scenario_spec

    spec = scenario_spec(3, size, 40, warp_start=10)
    build = SimBuild(3, size, size, 40, spec=spec)
    frames = [build.layer(k) for k in range(0, 40, 4)]
    mc = MetricsComputer(spec.mm_per_px)
    computed = [mc.compute(f.mask) for f in frames]
    rspec = RecordSpec(
        printer="bench",
        job_id="big",
        height=size,
        width=size,
        dtype="uint8",
        mm_per_px=spec.mm_per_px,
        layer_thickness_mm=0.04,
        class_names=tuple(CLASS_NAMES),
        metric_names=METRIC_NAMES,
        part_metric_names=PART_METRIC_NAMES,
        config={},
        policy={"rules": []},
        model={"id": "bench"},
        software_version="bench",
    )
    rec = BuildRecord.create(Path(str(path)), rspec)

    def append(k: int) -> None:
        f, m = frames[k % len(frames)], computed[k % len(computed)]
        rec.append_layer(
            k,
            z_mm=0.04 * (k + 1),
            image=f.image,
            mask=f.mask,
            part_ids=m.part_ids,
            metrics=m.values,
            part_metrics=[{"layer": k, **p} for p in m.parts],
        )

    return rec, append


def write_simulated_record(path: object, layers: int, size: int) -> float:
    """A closed record of ``layers`` simulated layers; returns the seconds the appends took."""
    rec, append = open_simulated_record(path, size)
    t0 = time.monotonic()
    for k in range(layers):
        append(k)
    seconds = time.monotonic() - t0
    rec.close()
    return seconds
