"""Lighting and camera transforms of a gray frame, for training and for the robustness benchmark.

A model that sees defects, not lighting, must give the same mask for the same layer under another
gain, gamma, contrast, gradient, vignetting or light spot. Training applies :func:`random_lighting`
to every frame before its input channels are computed; ``bench/eval_lighting.py`` applies the ten
fixed :data:`LIGHTING_TRANSFORMS` and compares the masks with the untransformed frame's.
"""

from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np

__all__ = ["LIGHTING_TRANSFORMS", "random_lighting", "random_tone"]


def _grid(shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    h, w = shape[:2]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    return xx / w - 0.5, yy / h - 0.5


def _gain(g: np.ndarray, f: float) -> np.ndarray:
    return g * f


def _gamma(g: np.ndarray, gamma: float) -> np.ndarray:
    return np.clip(g, 0, 1) ** gamma


def _contrast(g: np.ndarray, c: float) -> np.ndarray:
    m = float(g.mean())
    return m + (g - m) * c


def _gradient(g: np.ndarray, gx: float, gy: float) -> np.ndarray:
    xn, yn = _grid(g.shape)
    return g * (1.0 + gx * xn + gy * yn)


def _vignette(g: np.ndarray, v: float) -> np.ndarray:
    xn, yn = _grid(g.shape)
    return g * (1.0 - v * 2.0 * (xn * xn + yn * yn))


def _spot(g: np.ndarray, cx: float, cy: float, r: float, a: float) -> np.ndarray:
    xn, yn = _grid(g.shape)
    return g * (1.0 + a * np.exp(-((xn - cx) ** 2 + (yn - cy) ** 2) / (2 * r * r)))


def _falloff(g: np.ndarray, angle: float, f: float) -> np.ndarray:
    xn, yn = _grid(g.shape)
    t = np.cos(angle) * xn + np.sin(angle) * yn
    return g * (1.0 - f * np.clip((t + 0.1) / 0.6, 0, 1))


#: Ten fixed lighting changes (name, function of a (H, W) float32 frame in [0, 1]): what another
#: exposure, lamp or lens would do to the same layer. Results are clipped to [0, 1].
LIGHTING_TRANSFORMS: tuple[tuple[str, Callable[[np.ndarray], np.ndarray]], ...] = (
    ("darker x0.6", lambda g: _gain(g, 0.6)),
    ("brighter x1.4", lambda g: _gain(g, 1.4)),
    ("gamma 0.6", lambda g: _gamma(g, 0.6)),
    ("gamma 1.6", lambda g: _gamma(g, 1.6)),
    ("contrast x0.6", lambda g: _contrast(g, 0.6)),
    ("gradient left-right 40%", lambda g: _gradient(g, 0.4, 0.0)),
    ("gradient top-bottom 40%", lambda g: _gradient(g, 0.0, -0.4)),
    ("vignetting 40%", lambda g: _vignette(g, 0.4)),
    ("light spot +30%", lambda g: _spot(g, -0.15, 0.1, 0.25, 0.3)),
    ("falloff band 50%", lambda g: _falloff(g, 1.2, 0.5)),
)


def apply(g: np.ndarray, fn: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    return np.clip(fn(g.astype(np.float32)), 0, 1).astype(np.float32)


def random_lighting(g: np.ndarray, rng: np.random.Generator, strength: float = 1.0) -> np.ndarray:
    """A random mix of lighting and camera changes: (H, W) float32 in [0, 1] -> same shape.

    Each change is drawn independently (gain, gamma, contrast, offset, gradient, vignetting, spot,
    falloff, blur, noise); ``strength`` scales how far each may go.
    """
    s = strength
    out = g.astype(np.float32)
    if rng.random() < 0.6:
        out = _gradient(out, *(rng.normal(0, 0.3 * s, 2)))
    if rng.random() < 0.3:
        out = _vignette(out, float(rng.uniform(0, 0.5 * s)))
    if rng.random() < 0.25:
        cx, cy = (float(c) for c in rng.uniform(-0.5, 0.5, 2))
        out = _spot(out, cx, cy, float(rng.uniform(0.1, 0.4)), float(rng.uniform(-0.3, 0.4) * s))
    if rng.random() < 0.2:
        out = _falloff(out, float(rng.uniform(0, 2 * np.pi)), float(rng.uniform(0.2, 0.6) * s))
    if rng.random() < 0.5:
        out = _contrast(out, float(np.exp(rng.uniform(-0.7, 0.35) * s)))
    if rng.random() < 0.6:
        out = _gain(out, float(np.exp(rng.uniform(-0.6, 0.45) * s)))
    if rng.random() < 0.2:
        out = out + float(rng.uniform(-0.1, 0.1) * s)
    out = np.clip(out, 0, 1)
    if rng.random() < 0.5:
        out = _gamma(out, float(np.exp(rng.uniform(-0.6, 0.6) * s)))
    if rng.random() < 0.2:
        out = np.asarray(cv2.GaussianBlur(out, (0, 0), float(rng.uniform(0.4, 1.2))), dtype=np.float32)
    if rng.random() < 0.3:
        out = out + rng.normal(0, float(rng.uniform(0.002, 0.02)), out.shape).astype(np.float32)
    return np.clip(out, 0, 1).astype(np.float32)


def random_tone(g: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Another camera's tone curve on the same frame: a gamma (0.55 to 1.8) and, each half of the time, a
    contrast and a gain change; nothing moves in space. (H, W) float32 in [0, 1] -> same shape."""
    out = g.astype(np.float32)
    if rng.random() < 0.5:
        out = _contrast(out, float(np.exp(rng.uniform(-0.5, 0.3))))
    if rng.random() < 0.5:
        out = _gain(out, float(np.exp(rng.uniform(-0.5, 0.35))))
    out = _gamma(np.clip(out, 0, 1), float(np.exp(rng.uniform(-0.6, 0.6))))
    return np.clip(out, 0, 1).astype(np.float32)
