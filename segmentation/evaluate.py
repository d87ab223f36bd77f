"""Evaluation of a segmenter against ground-truth masks: folders on disk or a held-out simulated set."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from segmentation.classes import CLASS_NAMES, NUM_CLASSES
from segmentation.errors import ImageError
from segmentation.imageio import DEFAULT_MAX_PIXELS, iter_image_paths, read_image
from segmentation.inference import Segmenter
from segmentation.metrics import Evaluation
from segmentation.preprocess import powder_lighting, to_gray_float
from segmentation.roi import propose_roi
from segmentation.simulator import SimBuild, dataset_layers

__all__ = [
    "TEST_SEED_STREAM",
    "as_the_monitor",
    "evaluate_dirs",
    "evaluate_simulated",
    "format_report",
    "read_mask",
    "trained_features",
]

#: Seed stream of the held-out test set; training uses streams 1 (train) and 2 (validation) with
#: chunk offsets below 1000, so these builds were never seen in training.
TEST_SEED_STREAM = 7_000_001


def read_mask(path: Path) -> np.ndarray:
    """(H, W) uint8 class ids from a one-channel PNG; raises ImageError if it is not one."""
    m = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if m is None:
        raise ImageError(f"{path}: cannot read mask")
    if m.ndim != 2 or m.dtype != np.uint8:
        raise ImageError(f"{path}: mask must be one-channel 8-bit class ids, got shape {m.shape} {m.dtype}")
    if int(m.max()) >= NUM_CLASSES:
        raise ImageError(f"{path}: mask has class id {int(m.max())}; valid ids are 0..{NUM_CLASSES - 1}")
    return m


def evaluate_dirs(
    images: Path, masks: Path, seg: Segmenter, max_pixels: int = DEFAULT_MAX_PIXELS
) -> tuple[Evaluation, list[str]]:
    """Score every image that has ``masks/NAME.png``; returns the evaluation and problems met."""
    ev = Evaluation.empty()
    problems: list[str] = []
    if not masks.is_dir():
        raise ImageError(f"{masks}: masks folder not found")
    for item in iter_image_paths([images]):
        if isinstance(item, Exception):
            problems.append(str(item))
            continue
        mask_path = masks / f"{item.stem}.png"
        if not mask_path.is_file():
            problems.append(f"{item}: no mask {mask_path}; skipped")
            continue
        try:
            truth = read_mask(mask_path)
            pred = seg.segment(read_image(item, max_pixels=max_pixels)).mask
            if truth.shape != pred.shape:
                raise ImageError(f"{mask_path}: mask is {truth.shape[::-1]}, image is {pred.shape[::-1]}")
        except ImageError as err:
            problems.append(str(err))
            continue
        ev.add(truth, pred)
    return ev, problems


def evaluate_simulated(
    seg: Segmenter,
    count: int = 64,
    size: int = 512,
    seed: int = TEST_SEED_STREAM,
    plate: bool = False,
    reference_layers: int = 0,
    features: frozenset[str] | None = None,
) -> Evaluation:
    """Score on ``count`` freshly simulated layers of held-out builds.

    ``features``: the simulator's looks drawn (segmentation.simulator.FEATURES); None: those the segmenter's model
    was trained with (its checkpoint's ``simulator_features``), so a model is scored on the simulator it knows.

    ``plate``: judge only the build plate proposed from each build's first layer, as the monitor does
    when no outline is configured (outside it the mask is powder); the truth is the whole frame's.
    ``reference_layers``: divide the later layers by the lighting of the plain powder of the build's first
    that many layers showing it, as the monitor does (``[monitor] reference_layers``).
    """
    ev = Evaluation.empty()
    builds: dict[int, tuple[np.ndarray | None, np.ndarray | None, int]] = {}
    if features is None:
        features = trained_features(seg.model_meta)
    for build, k in dataset_layers(seed, count, size, size, features=features):
        if build.seed not in builds:
            builds[build.seed] = as_the_monitor(seg, _frames(build), build.n_layers, plate, reference_layers)
        roi, illum, first = builds[build.seed]
        layer = build.layer(k)
        ev.add(layer.mask, seg.segment(layer.image, roi=roi, illumination=illum if k >= first else None).mask)
    return ev


def _frames(build: SimBuild) -> Callable[[int], np.ndarray]:
    """Layer k of ``build`` as an (H, W) float32 frame, each rendered once (the first layers serve twice)."""

    @functools.cache
    def frame(k: int) -> np.ndarray:
        return to_gray_float(build.layer(k).image)

    return frame


def as_the_monitor(
    seg: Segmenter, frame: Callable[[int], np.ndarray], n_layers: int, plate: bool = False, reference_layers: int = 0
) -> tuple[np.ndarray | None, np.ndarray | None, int]:
    """What the monitor (``monitor.service``) takes from a build's first layers, ``frame(k)`` being layer k as an
    (H, W) float32 frame: the plate proposed from layer 0 if ``plate`` (else None), the reference lighting (the
    mean of the first ``reference_layers`` layers that show it on their plain powder; None if the build never
    gives it) and the layer it is used from (the next; 0 without one)."""
    roi = None
    if plate:
        first = frame(0)
        roi = propose_roi([first]).mask(first.shape[:2])
    frames = []
    for k in range(n_layers if reference_layers else 0):
        gray = frame(k)
        lighting = powder_lighting(gray, seg.segment(gray, roi=roi).mask, roi)
        if lighting is not None:
            frames.append(lighting)
        if len(frames) == reference_layers:
            return roi, np.mean(frames, axis=0).astype(np.float32), k + 1
    return roi, None, 0


def _f(v: float) -> str:
    return "   n/a" if math.isnan(v) else f"{v:6.3f}"


def format_report(report: dict[str, Any]) -> str:
    """Plain-text table of an :meth:`Evaluation.to_dict` report."""
    lines = [f"frames: {report['frames']}", "class       IoU    prec  recall      F1   pixels"]
    for name, s in report["classes"].items():
        lines.append(
            f"{name:9s} {_f(s['iou'])}  {_f(s['precision'])}  {_f(s['recall'])}  {_f(s['f1'])}  {s['support']:8d}"
        )
    lines.append(
        f"pore object recall (>=50% covered): {_f(report['pore_object_recall']).strip()}"
        f" ({report['pores_found']}/{report['pores_total']})"
    )
    lines.append("confusion (rows true, columns predicted):")
    lines.append("          " + " ".join(f"{n[:8]:>10s}" for n in CLASS_NAMES))
    for name, row in zip(CLASS_NAMES, report["confusion"], strict=True):
        lines.append(f"{name[:9]:9s} " + " ".join(f"{v:10d}" for v in row))
    return "\n".join(lines)


def trained_features(meta: dict[str, object]) -> frozenset[str]:
    """The simulator looks a model was trained with (its checkpoint's ``simulator_features``); a model older
    than them was trained without any."""
    from segmentation.simulator import FEATURES

    given = meta.get("simulator_features")
    if not isinstance(given, (list, tuple)):
        return frozenset()
    return frozenset(str(f) for f in given) & FEATURES
