"""Knowing when the model does not know: an out-of-distribution score per frame.

Two signs, each compared with what the model shows on frames of the kind it was trained on
(simulated layers, simulated defects over real frames, the real training frames):

- *features*: the encoder's deepest features, averaged over the frame, summarise what kind of image it
  sees; their mean and spread over the calibration frames are stored in the network (buffers
  ``ood_mean``, ``ood_inv_std``, so the ONNX graph computes the score too), and a frame scores the mean
  squared z-score of its features;
- *hesitation*: the mean entropy of the class probabilities over the frame (sampled every 4th pixel);
  a frame that makes the network hesitate between classes everywhere is one it does not understand.

Each threshold is the ``quantile`` of the calibration frames' values times ``margin``. The Segmenter
reports the larger of the two ratios (:attr:`segmentation.inference.Segmentation.ood`): above 1, the
frame is unlike what the model was trained on, and the monitor asks a person to look instead of
trusting the mask.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from segmentation.preprocess import model_input

__all__ = ["calibrate", "hesitation", "pooled_features"]

# Channels whose spread is tiny would turn rounding noise into a huge z-score.
_MIN_STD_SHARE = 0.05


def pooled_features(model: Any, frames: Iterable[np.ndarray]) -> np.ndarray:
    """(N, C) float64: the deepest encoder features of each (H, W) float32 gray frame, averaged."""
    import torch

    out = []
    model.eval()
    with torch.inference_mode():
        for gray in frames:
            x = model_input(gray.astype(np.float32), model.spec.in_channels, model.spec.input_norm)
            h, w = x.shape[1:]
            s = model.spec.stride
            x = np.pad(x, ((0, 0), (0, -h % s), (0, -w % s)), mode="reflect")
            feats = model.unet.encoder(torch.from_numpy(np.ascontiguousarray(x[None])))
            out.append(model.pooled(feats)[0].double().numpy())
    return np.stack(out)


def hesitation(probs: np.ndarray, step: int = 4) -> float:
    """Mean entropy (nats) of (C, H, W) class probabilities, on every ``step``-th pixel."""
    p = np.clip(probs[:, ::step, ::step], 1e-6, 1.0)
    return float(-(p * np.log(p)).sum(axis=0).mean())


def calibrate(
    model_path: Path,
    frames: Iterable[np.ndarray],
    out: Path | None = None,
    *,
    quantile: float = 0.99,
    margin: float = 2.0,
) -> dict[str, float]:
    """Fill a checkpoint's out-of-distribution statistics from ``frames`` (the training kind).

    Writes the checkpoint to ``out`` (default: in place) and returns the calibration summary that
    is also stored in its metadata under ``ood``.
    """
    import torch

    from segmentation.model import load_checkpoint, save_checkpoint

    model, meta = load_checkpoint(model_path)
    frames_list = list(frames)
    feats = pooled_features(model, frames_list)
    if feats.shape[0] < 8:
        raise ValueError(f"calibration needs at least 8 frames, got {feats.shape[0]}")
    mean = feats.mean(axis=0)
    std = feats.std(axis=0)
    std = np.maximum(std, _MIN_STD_SHARE * float(np.median(std)) + 1e-9)
    with torch.no_grad():
        model.ood_mean.copy_(torch.from_numpy(mean).float())
        model.ood_inv_std.copy_(torch.from_numpy(1.0 / std).float())
    scores = (((feats - mean) / std) ** 2).mean(axis=1)
    threshold = float(np.quantile(scores, quantile)) * margin
    entropies = np.array([_entropy_of(model, f) for f in frames_list])
    summary = {
        "frames": int(feats.shape[0]),
        "quantile": quantile,
        "margin": margin,
        "threshold": threshold,
        "median_score": float(np.median(scores)),
        "max_score": float(scores.max()),
        "entropy_threshold": float(np.quantile(entropies, quantile)) * margin,
        "median_entropy": float(np.median(entropies)),
    }
    meta = {k: v for k, v in meta.items() if k not in ("sha256", "spec")}
    arch = meta.pop("arch")
    meta["ood"] = summary
    save_checkpoint(out or model_path, model, arch, meta)
    return summary


def _entropy_of(model: Any, gray: np.ndarray) -> float:
    import torch

    x = model_input(gray.astype(np.float32), model.spec.in_channels, model.spec.input_norm)
    h, w = x.shape[1:]
    s = model.spec.stride
    x = np.pad(x, ((0, 0), (0, -h % s), (0, -w % s)), mode="reflect")
    with torch.inference_mode():
        probs = model(torch.from_numpy(np.ascontiguousarray(x[None])))[0].softmax(0).numpy()
    return hesitation(probs[:, :h, :w])
