"""``layerwatch finetune``: teach the model a user's own camera from a few labelled frames, in minutes.

Labels are PNG masks of class ids (0 powder, 1 part, 2 porosity, 3 spatter, 4 warping) with two more
values: 254 "no defect here" (powder or part, which one not said) and 255 "not labelled" (ignored). A
frame marked clean is all 254; a brushed pore is 2 inside 255. Fine-tuning starts from the shipped (or
given) model, mixes simulated layers so that what the simulator taught is kept, stops within the time
given, and writes ``OUT/model.pt`` (and its ONNX twin) with ``OUT/MODEL_CARD.md``: the base model, a hash
of the data, the label counts and held-out simulator figures before and after.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from segmentation.classes import CLASS_NAMES, NO_DEFECT, NUM_CLASSES, UNLABELLED
from segmentation.errors import SegmentationError

__all__ = ["FinetuneError", "FinetuneOptions", "check_labels", "finetune"]

_STEP_MARGIN = 1.4  # a training step also prepares its batch (lighting, input channels): more than the network
_VALUE_NAMES = {**dict(enumerate(CLASS_NAMES)), NO_DEFECT: "no defect here", UNLABELLED: "not labelled"}


class FinetuneError(SegmentationError):
    """The labels or the options cannot give a model; the message says which file or value."""


@dataclass(frozen=True)
class FinetuneOptions:
    images: Path
    masks: Path
    out: Path
    minutes: float = 15.0
    base: Path | None = None  # None: the shipped model
    sim_share: float = 0.7  # share of each batch from simulated layers: keeps what the simulator taught
    sim_layers: int = 200
    seed: int = 0
    # smaller than a real run only in tests
    frame: int = 512
    crop: int = 256
    batch: int = 12
    heldout_layers: int = 16
    steps: int | None = None  # a fixed number of steps (reproducible anywhere); None: as many as the minutes allow


def check_labels(images: Path, masks: Path) -> tuple[list[tuple[Path, Path]], Counter[int]]:
    """Pairs (image, mask) with the same name, every mask checked; pixel counts per label value."""
    from segmentation.imageio import iter_image_paths, read_image

    if not images.is_dir():
        raise FinetuneError(f"--images {images}: not a folder of images")
    if not masks.is_dir():
        raise FinetuneError(f"--masks {masks}: not a folder of PNG masks")
    allowed = set(range(NUM_CLASSES)) | {NO_DEFECT, UNLABELLED}
    pairs: list[tuple[Path, Path]] = []
    counts: Counter[int] = Counter()
    for item in iter_image_paths([images]):
        if isinstance(item, Exception):
            raise FinetuneError(str(item))
        mask_path = masks / f"{item.stem}.png"
        if not mask_path.is_file():
            raise FinetuneError(f"{item}: no mask {mask_path} (masks are PNGs named like their image)")
        m = cv2.imread(str(mask_path), cv2.IMREAD_UNCHANGED)
        if m is None or m.ndim != 2:
            raise FinetuneError(f"{mask_path}: not a one-channel PNG of label values")
        shape = read_image(item).shape[:2]
        if m.shape != shape:
            raise FinetuneError(f"{mask_path}: {m.shape[1]}x{m.shape[0]} px, its image {shape[1]}x{shape[0]} px")
        values, n = np.unique(m, return_counts=True)
        bad = sorted(int(v) for v in values if int(v) not in allowed)
        if bad:
            raise FinetuneError(
                f"{mask_path}: label value(s) {bad[:5]}; use 0-{NUM_CLASSES - 1} (classes), "
                f"{NO_DEFECT} (no defect here) or {UNLABELLED} (not labelled)"
            )
        counts.update({int(v): int(c) for v, c in zip(values, n, strict=True)})
        pairs.append((item, mask_path))
    if not pairs:
        raise FinetuneError(f"--images {images}: no image with a mask in {masks}")
    if sum(c for v, c in counts.items() if v != UNLABELLED) == 0:
        raise FinetuneError(f"--masks {masks}: every pixel is {UNLABELLED} (not labelled); nothing to learn")
    return pairs, counts


def _data_hash(pairs: list[tuple[Path, Path]]) -> str:
    h = hashlib.sha256()
    for image, mask in sorted(pairs):
        for p in (image, mask):
            h.update(p.name.encode())
            h.update(hashlib.sha256(p.read_bytes()).digest())
    return h.hexdigest()


def _stage(pairs: list[tuple[Path, Path]], folder: Path) -> Path:
    """The labelled folder layout training reads (images/ + masks/), as links to the user's files."""
    for sub in ("images", "masks"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    for image, mask in pairs:
        for src, dst in (
            (image, folder / "images" / f"user-{image.name}"),
            (mask, folder / "masks" / f"user-{mask.name}"),
        ):
            if dst.is_symlink() or dst.exists():
                dst.unlink()
            dst.symlink_to(src.resolve())
    return folder


def _step_seconds(model: Any, in_channels: int, batch: int, crop: int) -> float:
    """Seconds one training step of the network takes here (the learning-rate schedule is sized by it)."""
    import torch

    model.train()
    x = torch.randn(batch, in_channels, crop, crop)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    times = []
    for _ in range(3):
        t = time.perf_counter()
        opt.zero_grad()
        model(x).mean().backward()
        opt.step()
        times.append(time.perf_counter() - t)
    return float(np.median(times[1:])) * _STEP_MARGIN


def _heldout(model: Path, layers: int, size: int, features: frozenset[str]) -> dict[str, float]:
    from segmentation.evaluate import evaluate_simulated
    from segmentation.inference import Segmenter
    from segmentation.metrics import scores

    with Segmenter(model, engine="torch") as seg:
        ev = evaluate_simulated(seg, layers, size, features=features)
    return {s.name: round(s.iou, 3) for s in scores(ev.cm)}


def finetune(opts: FinetuneOptions, echo: Callable[[str], None] = print) -> Path:
    """Fine-tune; returns the path of the new model."""
    import shutil

    from segmentation.inference import DEFAULT_MODEL, export_onnx
    from segmentation.model import ARCHITECTURES, file_sha256, load_checkpoint
    from segmentation.train import TrainConfig, train

    if not opts.minutes > 0:
        raise FinetuneError(f"--minutes {opts.minutes}: give a time budget above 0")
    if not 0 <= opts.sim_share < 1:
        raise FinetuneError(f"--sim-share {opts.sim_share}: give a share from 0 up to (not including) 1")
    base = opts.base or DEFAULT_MODEL
    network, meta = load_checkpoint(base)
    pairs, counts = check_labels(opts.images, opts.masks)
    labels = ", ".join(f"{_VALUE_NAMES[v]} {c}" for v, c in sorted(counts.items()))
    echo(f"finetune: {len(pairs)} labelled frame(s) ({labels} px) from {base}")
    opts.out.mkdir(parents=True, exist_ok=True)
    staged = _stage(pairs, opts.out / "labels")
    # most of the budget for steps, counted from a measured step; data, validation and the
    # unfamiliar-frame calibration take the rest (the time limit also stops it, after an epoch)
    step_s = _step_seconds(network, ARCHITECTURES[str(meta["arch"])].in_channels, opts.batch, opts.crop)
    del network
    steps = max(2, math.floor(opts.minutes * 60 * 0.7 / step_s))
    if opts.steps is not None:
        steps = opts.steps  # the minutes still end it, after an epoch
    per_epoch = min(20, steps)
    echo(f"finetune: {step_s:.2f} s a step here: {steps} steps (at most {opts.minutes:g} min)")
    from segmentation.evaluate import trained_features

    looks = trained_features(meta)  # the simulated layers its base learnt from, so that they are kept
    cfg = TrainConfig(
        out=opts.out / "run",
        features=tuple(sorted(looks)),
        arch=str(meta["arch"]),
        seed=opts.seed,
        train_layers=opts.sim_layers,
        val_layers=8,
        frame=opts.frame,
        crop=opts.crop,
        batch=opts.batch,
        epochs=max(1, math.ceil(steps / per_epoch)),
        steps_per_epoch=per_epoch,
        lr=5e-4,
        max_minutes=opts.minutes * 0.8,
        scenario_layers=0,
        composite_layers=0,
        real_dir=staged,
        real_share=1 - opts.sim_share,
        composite_share=0.0,
        init=base,
    )
    t0 = time.monotonic()
    result = train(cfg, echo=echo)
    model = opts.out / "model.pt"
    shutil.copyfile(cfg.out / "final.pt", model)
    export_onnx(model, model.with_suffix(".onnx"))
    before = _heldout(base, opts.heldout_layers, opts.frame, looks)
    after = _heldout(model, opts.heldout_layers, opts.frame, looks)
    minutes = (time.monotonic() - t0) / 60
    rows = "\n".join(f"| {name} | {before[name]:.3f} | {after[name]:.3f} |" for name in CLASS_NAMES)
    (opts.out / "MODEL_CARD.md").write_text(
        f"""# Model card: fine-tuned `{model.name}`

- base model: `{base}` (sha256 {file_sha256(base)})
- this model: sha256 {file_sha256(model)}; architecture `{meta["arch"]}`
- data: {len(pairs)} labelled frame(s) from `{opts.images}` and `{opts.masks}`, sha256 {_data_hash(pairs)}
- labels (pixels): {labels}
- training: {len(result["history"])} epoch(s) of {per_epoch} steps, batch {opts.batch}, {opts.sim_share:.0%} of
  each batch simulated layers ({opts.sim_layers}); {minutes:.1f} min in all on this machine

Held-out simulated layers ({opts.heldout_layers} at {opts.frame} px, builds no training saw), IoU:

| class | base | fine-tuned |
|---|---|---|
{rows}

Score it on your own frames before it reaches a printer (`layerwatch evaluate --model {model}`).
"""
    )
    echo(
        f"finetune: wrote {model} ({minutes:.1f} min); held-out IoU before -> after: "
        + ", ".join(f"{n} {before[n]:.2f}->{after[n]:.2f}" for n in CLASS_NAMES)
    )
    return model
