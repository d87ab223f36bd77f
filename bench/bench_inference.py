"""Inference latency of the shipped model: ONNX Runtime against torch eager, measured in one run.

Prints, per frame size, the median and p95 latency of a whole ``Segmenter.segment`` call
(normalisation, tiling, network, softmax, argmax) for each engine and the ratio torch/ONNX.
2048x2048 frames are tiled (1024 px tiles, 128 px overlap).

    .venv/bin/python bench/bench_inference.py [--repeat N] [--threads T] [--sizes 512,1024,2048]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import machine, median_p95, timeit
from segmentation.inference import DEFAULT_MODEL, Segmenter
from segmentation.preprocess import illumination, to_gray_float
from segmentation.roi import propose_roi
from segmentation.simulator import SimBuild


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=15)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--sizes", default="512,1024,2048")
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    print(f"machine: {machine()}; threads {args.threads}; model {args.model.name}")
    rows = []
    segs = {e: Segmenter(args.model, engine=e, threads=args.threads).start() for e in ("onnx", "torch")}
    for size in sizes:
        frame = SimBuild(99, size, size, 12).layer(10).image
        result: dict[str, Any] = {"size": size}
        for name, seg in segs.items():
            rep = args.repeat if size <= 1024 else max(3, args.repeat // 3)

            def call(s: Segmenter = seg, f: np.ndarray = frame) -> None:
                s.segment(f)

            med, p95 = median_p95(timeit(call, rep))
            result[name] = {"median_ms": med * 1000, "p95_ms": p95 * 1000, "n": rep}
        result["torch_over_onnx"] = result["torch"]["median_ms"] / result["onnx"]["median_ms"]
        if size <= 1024:
            # what the monitor runs: the plate's mask and the build's reference lighting as well
            roi = propose_roi([frame]).mask(frame.shape[:2])
            illum = illumination(to_gray_float(frame), roi)
            onnx = segs["onnx"]

            def monitor_call(
                f: np.ndarray = frame, s: Segmenter = onnx, r: np.ndarray = roi, i: np.ndarray = illum
            ) -> None:
                s.segment(f, roi=r, illumination=i)

            med, p95 = median_p95(timeit(monitor_call, args.repeat))
            result["onnx_monitor"] = {"median_ms": med * 1000, "p95_ms": p95 * 1000, "n": args.repeat}
        rows.append(result)
        tiled = " (tiled)" if size > 1024 else ""
        print(
            f"{size}x{size}{tiled}: onnx median {result['onnx']['median_ms']:.0f} ms"
            f" p95 {result['onnx']['p95_ms']:.0f} ms"
            f" | torch median {result['torch']['median_ms']:.0f} ms p95 {result['torch']['p95_ms']:.0f} ms"
            f" | torch/onnx {result['torch_over_onnx']:.2f}x"
            + (
                f" | onnx with plate + reference median {result['onnx_monitor']['median_ms']:.0f} ms"
                f" p95 {result['onnx_monitor']['p95_ms']:.0f} ms"
                if "onnx_monitor" in result
                else ""
            ),
            flush=True,
        )
    for seg in segs.values():
        seg.close()
    if args.json:
        args.json.write_text(json.dumps({"machine": machine(), "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
