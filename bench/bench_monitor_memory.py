"""A monitor's memory and each layer's latency over a long build: 2,000 layers (``--layers``) of a simulated
camera at 256 px through the whole monitor (in-process bus, virtual printer, default policy, record written),
this tree's code against a baseline commit's in the same run (``--baseline REF``, checked out in a temporary
git worktree and run in a process of its own, alternating is not needed: each run is one process).

Prints, for each: resident memory after the first 100 layers and at the end (and the growth per 1,000 layers),
and the layer's latency (layer event published -> result received) median and p95, with the ratio against the
baseline.

    .venv/bin/python bench/bench_monitor_memory.py [--layers 2000] [--baseline HEAD~1]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def _rss_mb() -> float:
    with open("/proc/self/status") as f:  # noqa: PTH123 - Linux only, as the benchmarks
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def run(layers: int, size: int) -> dict[str, Any]:
    """This process's monitor over ``layers`` layers; returns the figures (memory samples, latencies)."""
    import numpy as np

    from monitor.config import Config, MonitorSection, PrinterSection
    from monitor.service import MonitorService
    from printer_io.bus import MessageBus
    from printer_io.frames import encode_image
    from printer_io.messages import FrameMeta, LayerEvent, ResultMessage, encode_frame
    from printer_io.topics import Topics
    from printer_io.virtual import VirtualPrinter
    from segmentation.simulator import SimBuild, scenario_spec

    pid, job = "p1", "long-build"
    spec = scenario_spec(5, size, 24, warp_start=None)
    build = SimBuild(5, size, size, 24, spec=spec)
    frames = [encode_image(build.layer(k).image) for k in range(24)]
    with tempfile.TemporaryDirectory() as tmp:
        config = Config(
            monitor=MonitorSection(
                out_dir=Path(tmp) / "records", models_dir=Path(tmp) / "models", mm_per_px=spec.mm_per_px,
                layer_thickness_mm=spec.layer_thickness, build_idle_close_s=3600,
            ),
            printers={pid: PrinterSection(backend="virtual")},
        )  # fmt: skip
        bus = MessageBus()
        topics = Topics("layerwatch", pid)
        printer = VirtualPrinter(pid, layers=layers, realtime=False).start()
        printer.start_job(job, layers=layers)
        monitor = MonitorService(config, printers={pid: printer}, bus=bus).start()
        bridge, watch = bus.link(service="bridge", topics=topics), bus.link(service="watch", topics=topics)
        got: dict[int, float] = {}
        cond = threading.Condition()

        def on_result(topic: str, payload: bytes) -> None:
            r = ResultMessage.from_json(payload, topic)
            with cond:
                got[r.layer] = time.perf_counter()
                cond.notify_all()

        watch.subscribe(topics.result, on_result)
        watch.start()
        bridge.start()
        latencies: list[float] = []
        rss: list[tuple[int, float]] = []
        try:
            for k in range(layers):
                z = 0.04 * (k + 1)
                meta = FrameMeta(
                    printer=pid, job_id=job, layer=k, z_mm=z, captured_at=time.time(), encoding="png",
                    width=size, height=size, channels=1, bit_depth=8,
                )  # fmt: skip
                sent = time.perf_counter()
                bridge.publish(topics.layer, LayerEvent(printer=pid, job_id=job, layer=k, z_mm=z).to_json())
                bridge.publish(topics.image, encode_frame(meta, frames[k % len(frames)]))
                with cond:
                    if not cond.wait_for(lambda k=k: k in got, 120):  # type: ignore[misc]
                        raise SystemExit(f"no result for layer {k}")
                    latencies.append(got.pop(k) - sent)
                if (k + 1) % 100 == 0:
                    rss.append((k + 1, _rss_mb()))
        finally:
            for closer in (bridge, watch, monitor, printer):
                closer.close()
    lat = np.asarray(latencies) * 1000
    return {
        "rss": rss,
        "median_ms": float(np.median(lat)),
        "p95_ms": float(np.percentile(lat, 95)),
        "module": __import__("monitor.service").service.__file__,
    }


def _child(tree: Path, layers: int, size: int) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    out = subprocess.run(
        [sys.executable, str(tree / "bench" / "bench_monitor_memory.py"), "--child", "--layers", str(layers),
         "--size", str(size)],
        cwd=tree, env=env, capture_output=True, text=True, check=False,
    )  # fmt: skip
    if out.returncode != 0:
        raise SystemExit(f"the run in {tree} failed:\n{out.stderr[-3000:]}")
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def _say(name: str, r: dict[str, Any], base: dict[str, Any] | None) -> None:
    rss = r["rss"]
    assert isinstance(rss, list)
    first, last = rss[0], rss[-1]
    per_k = (last[1] - first[1]) / max(1, last[0] - first[0]) * 1000
    ratio = ""
    if base is not None:
        ratio = f" (x{float(r['median_ms']) / float(base['median_ms']):.2f} median, " + (
            f"x{float(r['p95_ms']) / float(base['p95_ms']):.2f} p95 of the baseline)"
        )
    print(
        f"{name:9s} memory {first[1]:7.1f} MB after {first[0]} layers, {last[1]:7.1f} MB after {last[0]} "
        f"({per_k:+.2f} MB per 1,000 layers); latency median {float(r['median_ms']):.1f} ms, "
        f"p95 {float(r['p95_ms']):.1f} ms{ratio}"
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=2000)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--baseline", default=None, help="a git ref to measure as the baseline, e.g. HEAD~1")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(run(args.layers, args.size)))
        return 0
    sys.path.insert(0, str(ROOT))
    from bench._common import machine

    print(f"machine: {machine()}; {args.layers} layers at {args.size} px")
    base = None
    if args.baseline:
        with tempfile.TemporaryDirectory() as tmp:
            tree = Path(tmp) / "baseline"
            subprocess.run(["git", "worktree", "add", "--detach", "-q", str(tree), args.baseline], cwd=ROOT, check=True)
            try:
                (tree / "bench" / "bench_monitor_memory.py").write_text(Path(__file__).read_text())
                base = _child(tree, args.layers, args.size)
            finally:
                subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT, check=False)
        _say(f"baseline {args.baseline}", base, None)
    _say("this tree", _child(ROOT, args.layers, args.size), base)
    return 0


if __name__ == "__main__":
    sys.exit(main())
