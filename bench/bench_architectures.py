"""Speed/accuracy trade-off of the U-Net presets on this CPU.

For every preset in ``segmentation.model.ARCHITECTURES``: parameters, and the latency of one
1024x1024 forward pass with ONNX Runtime and with torch eager (median, p95, measured in the same
run). For presets given with ``--trained ARCH=RUN_DIR`` (a ``layerwatch train`` run folder with the
same short budget for each), the held-out IoU of that run's ``best.pt`` is added.

    .venv/bin/python bench/bench_architectures.py [--size 1024] [--repeat 7] \
        [--trained unet-mnv3s-d5=runs/arch-mnv3s ...] [--count 32]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import machine, median_p95, timeit
from segmentation.evaluate import evaluate_simulated
from segmentation.inference import Segmenter
from segmentation.metrics import scores
from segmentation.model import ARCHITECTURES, create_model


def latency(arch: str, size: int, repeat: int, threads: int) -> dict[str, Any]:
    import onnxruntime as ort
    import torch

    torch.set_num_threads(threads)
    model = create_model(arch).eval()
    x = torch.randn(1, ARCHITECTURES[arch].in_channels, size, size)
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = str(Path(tmp) / "m.onnx")
        torch.onnx.export(model, (x,), path, input_names=["image"], opset_version=17, dynamo=False)
        sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    xn = x.numpy()
    onnx_med, onnx_p95 = median_p95(timeit(lambda: sess.run(None, {"image": xn}), repeat))
    with torch.inference_mode():
        torch_med, torch_p95 = median_p95(timeit(lambda: model(x), max(3, repeat // 2)))
    return {
        "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
        "onnx_ms": onnx_med * 1000,
        "onnx_p95_ms": onnx_p95 * 1000,
        "torch_ms": torch_med * 1000,
        "torch_p95_ms": torch_p95 * 1000,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--trained", nargs="*", default=[], metavar="ARCH=RUN_DIR")
    ap.add_argument("--count", type=int, default=32, help="held-out layers for the accuracy columns")
    ap.add_argument("--only", default="", help="comma-separated presets (default: all)")
    args = ap.parse_args()
    runs = dict(t.split("=", 1) for t in args.trained)
    names = args.only.split(",") if args.only else sorted(ARCHITECTURES)
    print(f"machine: {machine()}; {args.size}x{args.size}; threads {args.threads}")
    print(
        "preset               encoder                    params  onnx med/p95 ms  torch med/p95 ms  torch/onnx"
        "  IoU part  por   spat  warp  (short run)"
    )
    for name in names:
        spec = ARCHITECTURES[name]
        r = latency(name, args.size, args.repeat, args.threads)
        acc = ""
        if name in runs:
            with Segmenter(Path(runs[name]) / "best.pt", engine="onnx", threads=args.threads) as seg:
                cls = scores(evaluate_simulated(seg, args.count).cm)
            acc = "  ".join(f"{cls[c].iou:.3f}" for c in (1, 2, 3, 4))
        print(
            f"{name:20s} {spec.encoder:26s} {r['params_m']:5.2f}M  {r['onnx_ms']:6.0f} / {r['onnx_p95_ms']:4.0f}"
            f"    {r['torch_ms']:6.0f} / {r['torch_p95_ms']:4.0f}     {r['torch_ms'] / r['onnx_ms']:5.2f}x"
            f"   {acc}",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
