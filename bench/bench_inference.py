"""Inference latency of the shipped model: each engine and precision against ONNX Runtime f32, in one run.

Prints, per frame size, the median and p95 latency of the monitor's whole ``Segmenter.segment`` call (the
plate's mask and the build's reference lighting, input channels, network, mask, warping geometry,
out-of-distribution score) for ONNX Runtime (f32, the baseline), OpenVINO f32 and OpenVINO in the precision
``auto`` chooses on this CPU (bf16 where the CPU computes it and its classes agree with f32's), calls alternating
so that the machine's drift hits each alike, and the ratio against the baseline. 2048x2048 frames are tiled
(1024 px tiles, 128 px overlap); ``--torch`` adds torch eager.

``--stages`` also times each stage of the monitor's 1024x1024 call (gray and reference lighting, input
channels, network, mask, warping geometry, out-of-distribution score), each call's stages one after
the other as the Segmenter runs them: where the time beside the network goes.

``--onnx-baseline OLD.onnx`` also times the network alone (one ONNX Runtime call on a 1024x1024
input) in that graph and in the shipped one, alternating in rounds, and prints the ratio: how a change
of the exported graph (e.g. an earlier ``export-onnx``, kept aside) moved the latency on this machine.

    .venv/bin/python bench/bench_inference.py [--repeat N] [--threads T] [--sizes 512,1024,2048]
        [--onnx-baseline OLD.onnx] [--stages]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import machine, median_p95, timeit
from segmentation.hardware import cpu_info
from segmentation.inference import DEFAULT_MODEL, Segmenter, onnx_session
from segmentation.preprocess import illumination, to_gray_float
from segmentation.roi import propose_roi
from segmentation.simulator import SimBuild

#: (label, engine, precision): the baseline (ONNX Runtime, f32) first
CONFIGS = (("onnx f32", "onnx", "auto"), ("openvino f32", "openvino", "f32"), ("openvino auto", "openvino", "auto"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=15)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--sizes", default="512,1024,2048")
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--torch", action="store_true", help="also time torch eager (slow)")
    ap.add_argument("--onnx-baseline", type=Path, default=None, help="another export of the network to compare")
    ap.add_argument("--stages", action="store_true", help="also time each stage of the 1024x1024 monitor call")
    args = ap.parse_args()
    if args.onnx_baseline is not None and not args.onnx_baseline.is_file():
        print(f"error: --onnx-baseline {args.onnx_baseline}: no such file", file=sys.stderr)
        return 2
    sizes = [int(s) for s in args.sizes.split(",")]
    configs = [*CONFIGS, *((("torch", "torch", "auto"),) if args.torch else ())]
    segs = {
        label: Segmenter(args.model, engine=engine, threads=args.threads, precision=precision).start()
        for label, engine, precision in configs
    }
    print(f"machine: {machine()}; {cpu_info().describe()}; threads {args.threads}; model {args.model.name}")
    for label, seg in segs.items():
        print(f"  {label}: {seg.describe()}")
    rows = []
    for size in sizes:
        frame = SimBuild(99, size, size, 12).layer(10).image
        result: dict[str, Any] = {"size": size}
        rep = args.repeat if size <= 1024 else max(3, args.repeat // 3)
        # what the monitor runs: the plate's mask and the build's reference lighting as well (up to 1024 px)
        roi = propose_roi([frame]).mask(frame.shape[:2]) if size <= 1024 else None
        illum = illumination(to_gray_float(frame), roi) if roi is not None else None
        samples: dict[str, list[float]] = {label: [] for label in segs}
        for seg in segs.values():  # warm-up: each engine compiles for this size
            seg.segment(frame, roi=roi, illumination=illum)
        for _ in range(rep):  # alternating: a machine that slows down slows every engine alike
            for label, seg in segs.items():

                def call(
                    s: Segmenter = seg, f: np.ndarray = frame, r: np.ndarray | None = roi, i: np.ndarray | None = illum
                ) -> None:
                    s.segment(f, roi=r, illumination=i)

                samples[label] += timeit(call, 1, warmup=0)
        base = median_p95(samples["onnx f32"])[0]
        line = [f"{size}x{size}{' (tiled)' if size > 1024 else ''}:"]
        for label, t in samples.items():
            med, p95 = median_p95(t)
            result[label] = {"median_ms": med * 1000, "p95_ms": p95 * 1000, "n": rep, "speedup": base / med}
            line.append(f"{label} median {med * 1000:.0f} p95 {p95 * 1000:.0f} ms ({base / med:.2f}x)")
        rows.append(result)
        print(" | ".join(line), flush=True)
    descriptions = {label: seg.describe() for label, seg in segs.items()}
    for seg in segs.values():
        seg.close()
    report: dict[str, Any] = {"machine": machine(), "cpu": cpu_info().describe(), "engines": descriptions, "rows": rows}
    if args.stages:
        report["stages"] = {
            label: time_stages(args.model, args.threads, args.repeat, engine=engine, precision=precision, label=label)
            for label, engine, precision in CONFIGS
        }
    if args.onnx_baseline is not None:
        report["graphs"] = compare_graphs(args.onnx_baseline, args.model.with_suffix(".onnx"), args.threads)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return 0


def time_stages(
    model: Path,
    threads: int,
    repeat: int,
    size: int = 1024,
    engine: str = "onnx",
    precision: str = "auto",
    label: str = "onnx f32",
) -> dict[str, Any]:
    """Median and p95 of each stage of ``Segmenter.segment`` with plate and reference lighting (the
    monitor's call), run in the Segmenter's order on one simulated frame; prints and returns them."""
    import segmentation.inference as inference
    from segmentation.geometry import warping_geometry
    from segmentation.preprocess import flat_field, model_input

    frame = SimBuild(99, size, size, 12).layer(10).image
    roi = propose_roi([frame]).mask(frame.shape[:2])
    illum = illumination(to_gray_float(frame), roi)
    seg = Segmenter(model, engine=engine, threads=threads, precision=precision).start()
    runner = seg._engine
    assert runner is not None
    times: dict[str, list[float]] = {}
    for i in range(repeat + 1):  # the first call warms up
        t = [time.perf_counter()]
        x = model_input(flat_field(to_gray_float(frame), illum), runner.in_channels, runner.input_norm)
        t.append(time.perf_counter())
        probs, score = seg._probs(runner, x)
        t.append(time.perf_counter())
        mask = inference._argmax(probs)
        mask[~roi] = 0
        t.append(time.perf_counter())
        mask = warping_geometry(mask)
        t.append(time.perf_counter())
        seg._ood(runner, score, probs)
        t.append(time.perf_counter())
        if i:
            for name, a, b in zip(("input", "network", "mask", "geometry", "ood"), t, t[1:], strict=False):
                times.setdefault(name, []).append(b - a)
    seg.close()
    out: dict[str, Any] = {}
    for name, samples in times.items():
        med, p95 = median_p95(samples)
        out[name] = {"median_ms": med * 1000, "p95_ms": p95 * 1000}
    print(
        f"stages of the {size}x{size} monitor call, {label} (median / p95 ms): "
        + ", ".join(f"{k} {v['median_ms']:.1f} / {v['p95_ms']:.1f}" for k, v in out.items()),
        flush=True,
    )
    return out


def compare_graphs(baseline: Path, current: Path, threads: int, rounds: int = 8, per_round: int = 5) -> dict[str, Any]:
    """Network-only latency of two ONNX files on one 1024x1024 input, alternating in rounds (the machine's
    drift hits both alike); prints and returns median, p95 and baseline/current."""
    sessions = {"baseline": onnx_session(baseline, threads), "current": onnx_session(current, threads)}
    name = sessions["current"].get_inputs()[0].name
    x = np.random.default_rng(0).standard_normal((1, 2, 1024, 1024)).astype(np.float32)
    times: dict[str, list[float]] = {k: [] for k in sessions}
    for s in sessions.values():
        s.run(None, {name: x})  # warm-up
    for _ in range(rounds):
        for k, s in sessions.items():

            def call(s: Any = s) -> None:
                s.run(None, {name: x})

            times[k] += timeit(call, per_round, warmup=0)
    out: dict[str, Any] = {}
    for k, t in times.items():
        med, p95 = median_p95(t)
        out[k] = {"file": str(baseline if k == "baseline" else current), "median_ms": med * 1000, "p95_ms": p95 * 1000}
        print(f"network alone, {k} graph ({out[k]['file']}): median {med * 1000:.0f} ms p95 {p95 * 1000:.0f} ms")
    out["baseline_over_current"] = out["baseline"]["median_ms"] / out["current"]["median_ms"]
    print(f"baseline/current {out['baseline_over_current']:.2f}x")
    return out


if __name__ == "__main__":
    sys.exit(main())
