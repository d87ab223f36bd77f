"""Training throughput of the shipped architecture: steps per second and seconds per epoch, before and after.

Each configuration runs the same training steps (the shipped recipe's batch of 12 crops of 256 px from
simulated 512 px layers, the real loss and optimiser) in the same run, alternating in rounds so that a
machine that slows down during the run slows every configuration alike:

- ``before``: fp32, contiguous tensors, batches made inline (the training loop until 2026-12-07);
- ``channels-last``, ``bf16``: one change each;
- ``after``: what ``layerwatch train`` does now on this CPU: ``precision=auto`` (bf16 only where the CPU
  computes it natively), channels-last, batches made by a thread ahead of the optimiser.

Prints the median and p95 seconds a step, steps/s, seconds per 80-step epoch and the ratio against
``before``, with the CPU and its flags.

    .venv/bin/python bench/bench_train.py [--steps N] [--rounds R] [--layers L] [--json F]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import machine, median_p95
from segmentation.hardware import cpu_info
from segmentation.model import ARCHITECTURES, DEFAULT_ARCH, create_model
from segmentation.train import (
    TRAIN_SEED_STREAM,
    BatchStream,
    TrainConfig,
    _Sources,
    build_set,
    load_labelled,
    resolve_precision,
    train_step,
)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=12, help="timed steps per configuration and round")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--layers", type=int, default=48, help="simulated 512 px layers to draw batches from")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    if args.steps < 2 or args.rounds < 1 or args.layers < 1:
        print("error: --steps must be at least 2, --rounds and --layers at least 1", file=sys.stderr)
        return 2
    import torch

    from segmentation.classes import CLASS_LOSS_WEIGHTS
    from segmentation.train import DEFAULT_REAL_DIR

    torch.set_num_threads(2)
    auto = resolve_precision("auto")
    capability = torch.backends.cpu.get_cpu_capability()
    print(f"machine: {machine()}; {cpu_info().describe()}; torch {torch.__version__} ({capability})")
    with tempfile.TemporaryDirectory() as tmp:
        base = TrainConfig(out=Path(tmp), precision="fp32", loader="inline", epochs=10_000)
        sim = build_set(TRAIN_SEED_STREAM, args.layers, base.frame, 2, None)
        real = load_labelled(DEFAULT_REAL_DIR) if DEFAULT_REAL_DIR.is_dir() else load_labelled(Path(tmp))
        empty = (np.zeros((0, 512, 512), np.float16), np.zeros((0, 512, 512), np.uint8))
        src = _Sources(sim, empty, real)
        configs: dict[str, tuple[TrainConfig, bool]] = {
            "before": (base, False),
            "channels-last": (base, True),
            "bf16": (replace(base, precision="bf16"), False),
            "after": (replace(base, precision="auto", loader="thread"), True),
        }
        if not cpu_info().bf16:
            del configs["bf16"]  # emulated bf16 is ~30x slower: minutes of nothing
        spec = ARCHITECTURES[DEFAULT_ARCH]
        weights = torch.tensor(CLASS_LOSS_WEIGHTS, dtype=torch.float32)
        samples: dict[str, list[float]] = {name: [] for name in configs}
        for r in range(args.rounds):
            for name, (cfg, channels_last) in configs.items():
                model = create_model(DEFAULT_ARCH)
                model.train()
                if not channels_last:
                    model = _Contiguous(model)
                else:
                    model = model.to(memory_format=torch.channels_last)
                opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
                precision = resolve_precision(cfg.precision)
                with BatchStream(src, replace(cfg, seed=r), spec) as batches:
                    for _ in range(2):  # warm-up: allocator, the child's first batches
                        xb, yb, _ = batches.next()
                        train_step(model, opt, xb, yb, weights, cfg, precision)
                    for _ in range(args.steps):
                        xb, yb, _ = batches.next()
                        t = time.perf_counter()
                        train_step(model, opt, xb, yb, weights, cfg, precision)
                        samples[name].append(time.perf_counter() - t)
        rows: list[dict[str, Any]] = []
        base_med = median_p95(samples["before"])[0]
        print(
            f"\n{'configuration':14s} {'median s':>9s} {'p95 s':>7s} {'steps/s':>8s} {'s/epoch':>8s} {'vs before':>9s}"
        )
        for name, s in samples.items():
            med, p95 = median_p95(s)
            row = {
                "configuration": name,
                "precision": resolve_precision(configs[name][0].precision),
                "median_s": round(med, 3),
                "p95_s": round(p95, 3),
                "steps_per_s": round(1 / med, 3),
                "epoch_s": round(80 * med, 1),
                "speedup": round(base_med / med, 2),
            }
            rows.append(row)
            print(
                f"{name:14s} {med:9.3f} {p95:7.3f} {1 / med:8.2f} {80 * med:8.1f} {base_med / med:8.2f}x"
                + (f"  ({row['precision']})" if name == "after" else "")
            )
        print(f"\n'after' is what `layerwatch train` does here: precision auto -> {auto}")
        if args.json:
            args.json.write_text(
                json.dumps({"machine": machine(), "cpu": cpu_info().describe(), "rows": rows}, indent=1)
            )
    return 0


class _Contiguous:
    """The model fed contiguous (NCHW) tensors, as the training loop did before channels-last."""

    def __init__(self, model: Any) -> None:
        self._model = model
        self.spec = model.spec

    def __call__(self, x: Any) -> Any:
        return self._model(x.contiguous())

    def parameters(self) -> Any:
        return self._model.parameters()


if __name__ == "__main__":
    sys.exit(main())
