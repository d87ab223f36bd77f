"""Training of the layer U-Net on simulated layers.

The data set is simulated once (in worker processes), cached under the run directory, and
sampled as random crops with flips, rotations and intensity jitter. Validation runs on whole
frames from builds seeded apart from the training builds; per-class IoU is printed every epoch.
Checkpoints: ``last.pt`` (resumable: model, optimiser, scheduler, epoch) and ``best.pt``
(best mean defect IoU, fp16, the file that ships).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from segmentation.classes import CLASS_NAMES, DEFECT_CLASSES, NUM_CLASSES
from segmentation.metrics import Evaluation, scores
from segmentation.model import ARCHITECTURES, DEFAULT_ARCH, create_model, save_checkpoint
from segmentation.preprocess import model_input, to_gray_float
from segmentation.simulator import simulate_dataset

__all__ = ["TRAIN_SEED_STREAM", "VAL_SEED_STREAM", "TrainConfig", "train"]

log = logging.getLogger(__name__)

#: Seed streams of :func:`segmentation.simulator.simulate_dataset`. Evaluation sets use other
#: streams (see segmentation.evaluate.TEST_SEED_STREAM), so no evaluated build was ever trained on.
TRAIN_SEED_STREAM = 1
VAL_SEED_STREAM = 2

# Class weights of the cross-entropy: defects are a few percent of the pixels.
_CLASS_WEIGHTS = (0.5, 1.0, 3.0, 3.0, 2.0)


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a training run (written into the checkpoint)."""

    out: Path
    arch: str = DEFAULT_ARCH
    seed: int = 0
    train_layers: int = 1200
    val_layers: int = 48
    frame: int = 512
    crop: int = 256
    batch: int = 12
    epochs: int = 40
    steps_per_epoch: int = 80
    lr: float = 3e-3
    max_minutes: float = 0.0  # 0: no limit; otherwise stop (after an epoch) when exceeded
    threads: int = 2
    workers: int = 2
    precision: str = "bf16"  # bf16 autocast (2x faster on CPUs with AMX/AVX-512 BF16) or fp32

    def __post_init__(self) -> None:
        if self.arch not in ARCHITECTURES:
            raise ValueError(f"arch={self.arch!r}: valid names are {', '.join(sorted(ARCHITECTURES))}")
        if self.precision not in ("bf16", "fp32"):
            raise ValueError(f"precision={self.precision!r}: valid values are bf16, fp32")
        if self.crop > self.frame:
            raise ValueError(f"crop={self.crop} is larger than frame={self.frame}")
        for name in ("train_layers", "val_layers", "batch", "epochs", "steps_per_epoch"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)}: must be at least 1")


def _simulate_chunk(args: tuple[int, int, int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    stream, start, count, frame, channels = args
    # chunks are whole builds (4 layers each) so that the set does not depend on the chunking
    layers = simulate_dataset(stream * 1000 + start, count, frame, frame)
    x = np.stack([model_input(to_gray_float(la.image), channels).astype(np.float16) for la in layers])
    y = np.stack([la.mask for la in layers])
    return x, y


def build_set(
    stream: int, count: int, frame: int, workers: int, cache: Path | None, channels: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """Simulate ``count`` frames as model input: (N, channels, H, W) float16 and (N, H, W) uint8 masks."""
    if cache is not None and cache.is_file():
        with np.load(cache) as z:
            if z["x"].shape == (count, channels, frame, frame):
                return z["x"], z["y"]
    chunk = 16
    jobs = [(stream, i // chunk, min(chunk, count - i), frame, channels) for i in range(0, count, chunk)]
    from tqdm import tqdm

    xs, ys = [], []
    with ProcessPoolExecutor(max_workers=workers) as pool:
        for x, y in tqdm(pool.map(_simulate_chunk, jobs), total=len(jobs), desc=f"simulate s{stream}", unit="chunk"):
            xs.append(x)
            ys.append(y)
    x, y = np.concatenate(xs), np.concatenate(ys)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(cache.stem + ".tmp.npz")
        np.savez(tmp, x=x, y=y)
        tmp.replace(cache)
    return x, y


def _batch(rng: np.random.Generator, x: np.ndarray, y: np.ndarray, n: int, crop: int) -> tuple[np.ndarray, np.ndarray]:
    idx = rng.integers(0, x.shape[0], n)
    xb = np.empty((n, x.shape[1], crop, crop), np.float32)
    yb = np.empty((n, crop, crop), np.int64)
    h, w = x.shape[2:]
    for j, i in enumerate(idx):
        r0, c0 = rng.integers(0, h - crop + 1), rng.integers(0, w - crop + 1)
        xi = x[i, :, r0 : r0 + crop, c0 : c0 + crop].astype(np.float32)
        yi = y[i, r0 : r0 + crop, c0 : c0 + crop]
        k = int(rng.integers(4))
        xi, yi = np.rot90(xi, k, axes=(1, 2)), np.rot90(yi, k)
        if rng.random() < 0.5:
            xi, yi = xi[:, :, ::-1], yi[:, ::-1]
        # intensity jitter on the global channel: the model must not rely on exact normalised levels
        xi[0] = xi[0] * float(rng.uniform(0.8, 1.25)) + float(rng.uniform(-0.25, 0.25))
        xb[j] = xi
        yb[j] = yi
    return xb, yb


def evaluate_arrays(model: Any, x: np.ndarray, y: np.ndarray, batch: int = 4) -> Evaluation:
    """Whole-frame evaluation of a torch model on normalised frames and their masks."""
    import torch

    ev = Evaluation.empty()
    model.eval()
    with torch.inference_mode():
        for i in range(0, x.shape[0], batch):
            xb = torch.from_numpy(x[i : i + batch].astype(np.float32))
            pred = model(xb).argmax(1).numpy().astype(np.uint8)
            for t, p in zip(y[i : i + batch], pred, strict=True):
                ev.add(t, p)
    return ev


def train(cfg: TrainConfig, resume: bool = False, echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Run (or resume) training; returns the best validation summary."""
    import torch
    import torch.nn.functional as F
    from tqdm import tqdm

    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    cfg.out.mkdir(parents=True, exist_ok=True)
    t_start = time.monotonic()

    channels = ARCHITECTURES[cfg.arch].in_channels
    x_tr, y_tr = build_set(
        TRAIN_SEED_STREAM, cfg.train_layers, cfg.frame, cfg.workers, cfg.out / "train_set.npz", channels
    )
    x_va, y_va = build_set(VAL_SEED_STREAM, cfg.val_layers, cfg.frame, cfg.workers, cfg.out / "val_set.npz", channels)
    freq = np.bincount(y_tr.ravel(), minlength=NUM_CLASSES) / y_tr.size
    echo("train pixel share: " + ", ".join(f"{n} {f:.4f}" for n, f in zip(CLASS_NAMES, freq, strict=True)))

    model = create_model(cfg.arch)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=1e-4)
    total = cfg.epochs * cfg.steps_per_epoch
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=total, pct_start=0.1)
    weights = torch.tensor(_CLASS_WEIGHTS, dtype=torch.float32)
    epoch0, best, history = 0, -1.0, []
    last = cfg.out / "last.pt"
    if resume and last.is_file():
        state = torch.load(last, map_location="cpu", weights_only=False)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        epoch0, best, history = state["epoch"], state["best"], state["history"]
        echo(f"resumed from {last} at epoch {epoch0}")
    elapsed0 = history[-1]["minutes"] if history else 0.0

    for epoch in range(epoch0, cfg.epochs):
        rng = np.random.default_rng([cfg.seed, epoch])
        model.train()
        bar = tqdm(range(cfg.steps_per_epoch), desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="step")
        loss_sum = 0.0
        for _ in bar:
            xb, yb = _batch(rng, x_tr, y_tr, cfg.batch, cfg.crop)
            xt, yt = torch.from_numpy(xb), torch.from_numpy(yb)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.precision == "bf16"):
                logits = model(xt).float()
            ce = F.cross_entropy(logits, yt, weight=weights)
            prob = logits.softmax(1)
            onehot = F.one_hot(yt, NUM_CLASSES).permute(0, 3, 1, 2).float()
            inter = (prob * onehot).sum((0, 2, 3))
            denom = prob.sum((0, 2, 3)) + onehot.sum((0, 2, 3))
            dice = 1 - (2 * inter + 1) / (denom + 1)
            loss = ce + dice[1:].mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += loss.item()
            bar.set_postfix(loss=f"{loss_sum / (bar.n + 1):.3f}")
        ev = evaluate_arrays(model, x_va, y_va)
        cls = scores(ev.cm)
        defect_iou = float(np.mean([cls[c].iou for c in DEFECT_CLASSES]))
        minutes = elapsed0 + (time.monotonic() - t_start) / 60
        row = {
            "epoch": epoch + 1,
            "loss": loss_sum / cfg.steps_per_epoch,
            "iou": {s.name: round(s.iou, 4) for s in cls},
            "pore_recall": round(ev.pore_recall, 4),
            "minutes": round(minutes, 2),
        }
        history.append(row)
        echo(
            f"epoch {epoch + 1}: loss {row['loss']:.3f} IoU "
            + " ".join(f"{s.name} {s.iou:.3f}" for s in cls)
            + f" pore-recall {ev.pore_recall:.3f} ({minutes:.1f} min)"
        )
        extra = {"train_config": {k: str(v) for k, v in asdict(cfg).items()}, "val": row}
        if defect_iou > best:
            best = defect_iou
            save_checkpoint(cfg.out / "best.pt", model, cfg.arch, extra)
        torch.save(
            {
                "model": model.state_dict(),
                "opt": opt.state_dict(),
                "sched": sched.state_dict(),
                "epoch": epoch + 1,
                "best": best,
                "history": history,
            },
            cfg.out / "last.tmp",
        )
        (cfg.out / "last.tmp").replace(last)
        (cfg.out / "history.json").write_text(json.dumps(history, indent=1))
        if cfg.max_minutes and minutes > cfg.max_minutes:
            echo(f"stopping after epoch {epoch + 1}: {minutes:.1f} min exceeds --max-minutes {cfg.max_minutes}")
            break
    return {"best_defect_iou": best, "history": history, "minutes": (time.monotonic() - t_start) / 60}
