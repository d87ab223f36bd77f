"""Image normalisation shared by training and inference, so both see the same numbers."""

from __future__ import annotations

import numpy as np

__all__ = [
    "flat_field",
    "illumination",
    "local_contrast",
    "log_gray",
    "model_input",
    "normalize",
    "powder_lighting",
    "to_gray",
    "to_gray_float",
]

# Floor for the per-frame standard deviation: an almost uniform frame (empty plate) must not have
# its sensor noise amplified into structure.
_MIN_STD = 0.02
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def to_gray(image: np.ndarray, order: str = "rgb") -> np.ndarray:
    """(H, W) or (H, W, C) uint8/uint16 frame -> (H, W) gray of the same dtype.

    Colour is reduced to luminance (0.299 R + 0.587 G + 0.114 B) and rounded to the frame's own
    levels, so a colour frame, the gray frame a build record stores of it, and a replay of that
    record give the model exactly the same numbers. ``order``: ``rgb`` (files, read by
    :func:`segmentation.imageio.read_image`) or ``bgr`` (OpenCV's order: cameras, decoded MQTT frames).
    """
    img = np.asarray(image)
    if img.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"unsupported pixel type {img.dtype}: expected uint8 or uint16")
    if order not in ("rgb", "bgr"):
        raise ValueError(f"order={order!r}: expected 'rgb' or 'bgr'")
    if img.ndim == 2:
        return img
    if img.ndim != 3:
        raise ValueError(f"unsupported image shape {img.shape}: expected (H, W) or (H, W, C)")
    if img.shape[2] == 1:
        return np.ascontiguousarray(img[..., 0])
    if img.shape[2] not in (3, 4):
        raise ValueError(f"unsupported channel count {img.shape[2]}: expected 1, 3 or 4")
    rgb = img[..., :3] if order == "rgb" else img[..., 2::-1]
    luma = rgb.astype(np.float32) @ _LUMA
    top = 255 if img.dtype == np.uint8 else 65535
    return np.clip(np.rint(luma), 0, top).astype(img.dtype)


def to_gray_float(image: np.ndarray) -> np.ndarray:
    """(H, W), (H, W, 1), (H, W, 3) RGB or (H, W, 4) RGBA, uint8/uint16/float -> (H, W) float32 in [0, 1].

    Colour frames are reduced to luminance (:func:`to_gray`): the model is trained on gray so that a
    camera's tint or white balance cannot change its answer.
    """
    img = np.asarray(image)
    if img.dtype in (np.uint8, np.uint16):
        g = to_gray(img)
        return np.ascontiguousarray(g.astype(np.float32) / (255.0 if img.dtype == np.uint8 else 65535.0))
    if not np.issubdtype(img.dtype, np.floating):
        raise ValueError(f"unsupported pixel type {img.dtype}: expected uint8, uint16 or float")
    f = img.astype(np.float32)
    if f.ndim == 3:
        if f.shape[2] == 1:
            f = f[..., 0]
        elif f.shape[2] in (3, 4):
            f = f[..., :3] @ _LUMA
        else:
            raise ValueError(f"unsupported channel count {f.shape[2]}: expected 1, 3 or 4")
    elif f.ndim != 2:
        raise ValueError(f"unsupported image shape {img.shape}: expected (H, W) or (H, W, C)")
    return np.ascontiguousarray(f, dtype=np.float32)


def normalize(gray: np.ndarray) -> np.ndarray:
    """(H, W) float32 in [0, 1] -> zero-mean, unit-std (H, W) float32, statistics of the whole frame.

    Computed once per frame (never per tile) so that a tiled prediction sees the same input as a
    whole-frame one.
    """
    mean = float(gray.mean())
    std = max(float(gray.std()), _MIN_STD)
    return ((gray - mean) / std).astype(np.float32)


# Offset of the log input: about 2.5 levels of an 8-bit frame, so that the sensor noise of the darkest
# pixels is not stretched without end; above it, gain and gamma are exact shifts and scales.
_LOG_EPS = 0.01
# The log input's floors (it is relative: 0.05 is 5 % of the brightness): a flat frame's noise of 1 %
# stays small, in the whole frame and in the local contrast.
_LOG_MIN_STD = 0.05
_LOG_LOCAL_MIN_STD = 0.025
# Black walls and shadows sit at log(0.01) whatever the gamma: far outside the frame's spread, where
# their exact distance would only change with the camera, they are cut at 8 spreads (a dark pit in
# powder is about 7).
_LOG_CLIP = 8.0


def log_gray(gray: np.ndarray) -> np.ndarray:
    """(H, W) float32 in [0, 1] -> log(gray + 0.01): a camera's gain becomes a shift and its gamma a
    scale, which the per-frame normalisation removes exactly (:func:`model_input` with ``norm="log"``)."""
    return np.log(np.maximum(gray, 0.0) + _LOG_EPS).astype(np.float32)


def _robust_centre_spread(image: np.ndarray) -> tuple[float, float]:
    """Median and spread (interquartile range / 1.349, the standard deviation of a normal distribution)
    of a frame, from every 4th pixel of every 4th row. Black borders and saturated glints, which no gamma
    or gain moves in the log domain, must not set the scale as they would a standard deviation."""
    sample = image[::4, ::4]
    p25, p50, p75 = np.percentile(sample, (25, 50, 75))
    return float(p50), float(p75 - p25) / 1.349


# Scale of the local-contrast channel: a few scan-track periods, far below a part's size, so the
# channel keeps texture and outlines and drops broad lighting.
_LOCAL_SIGMA = 6.0
# Floor of the neighbourhood spread: a share of the frame's own spread, so that a darker exposure or
# a flatter contrast gives the same channel, and never below an absolute floor, so that the sensor
# noise of a near-uniform frame is not blown up into structure.
_LOCAL_MIN_SHARE = 0.3
_LOCAL_MIN_STD = 0.01


def local_contrast(gray: np.ndarray, min_std: float = _LOCAL_MIN_STD, spread: float | None = None) -> np.ndarray:
    """(H, W) float32 in [0, 1] -> (H, W) float32: each pixel against its neighbourhood's mean and
    spread (Gaussian window of sigma 6 px, spread floored at 0.3 of the frame's, at least 0.01),
    clipped to +-5. Illumination gradients vanish here; gain and contrast changes too."""
    floor = max(_LOCAL_MIN_SHARE * (float(gray.std()) if spread is None else spread), min_std)
    return _local_contrast_into(gray, floor, np.empty(gray.shape, np.float32))


def _local_contrast_into(gray: np.ndarray, floor: float, out: np.ndarray) -> np.ndarray:
    """:func:`local_contrast` with the spread's floor given, written into ``out`` (H, W) float32: two
    frame-sized buffers instead of six (a few ms less on a 1024x1024 frame, the same values)."""
    import cv2

    buf = cv2.GaussianBlur(gray, (0, 0), _LOCAL_SIGMA, borderType=cv2.BORDER_REFLECT)
    diff = np.subtract(gray, buf, out=out)
    np.multiply(diff, diff, out=buf)
    var = cv2.GaussianBlur(buf, (0, 0), _LOCAL_SIGMA, dst=buf, borderType=cv2.BORDER_REFLECT)
    np.maximum(var, floor * floor, out=var)
    np.sqrt(var, out=var)
    np.divide(diff, var, out=diff)
    return np.clip(diff, -5.0, 5.0, out=diff)


def model_input(gray: np.ndarray, channels: int, norm: str = "linear") -> np.ndarray:
    """(H, W) float32 in [0, 1] -> (channels, H, W) float32 network input for the whole frame.

    Channel 0 is :func:`normalize`; a second channel, where the model has one, is
    :func:`local_contrast`. Computed on the whole frame before any tiling. ``norm="log"`` computes
    both on :func:`log_gray`: the input no longer changes with the camera's gain, exposure or gamma
    (``linear``, the first models' input, is invariant to gain and contrast only).
    """
    if channels not in (1, 2):
        raise ValueError(f"models with {channels} input channels are not supported (1 or 2)")
    if norm == "linear":
        base, centre, spread = gray, float(gray.mean()), float(gray.std())
        scale, clip, local_min = max(spread, _MIN_STD), None, _LOCAL_MIN_STD
    elif norm == "log":
        base = log_gray(gray)
        centre, spread = _robust_centre_spread(base)
        scale, clip, local_min = max(spread, _LOG_MIN_STD), _LOG_CLIP, _LOG_LOCAL_MIN_STD
    else:
        raise ValueError(f"input normalisation {norm!r} is not supported ('linear' or 'log')")
    # written in place: one output array instead of a copy per step (a few ms on a 1024x1024 frame)
    out = np.empty((channels, *gray.shape), np.float32)
    first = np.subtract(base, centre, out=out[0])
    first /= scale
    if clip is not None:
        np.clip(first, -clip, clip, out=first)
    if channels == 2:
        _local_contrast_into(base, max(_LOCAL_MIN_SHARE * spread, local_min), out[1])
    return out


# The reference illumination is estimated on a coarse grid: lighting varies over a frame's width,
# not over a few pixels, and a part's own outline must not leak into it.
_ILLUM_GRID = 64
_ILLUM_SIGMA = 3.0  # grid cells


def illumination(gray: np.ndarray, weight: np.ndarray | None = None) -> np.ndarray:
    """(H, W) float32 in [0, 1] -> (H, W) float32: the frame's broad lighting, from the pixels where
    ``weight`` (H, W) is set (e.g. plain powder inside the plate), filled in smoothly elsewhere
    (normalised convolution on a coarse grid)."""
    import cv2

    h, w = gray.shape
    gw, gh = _ILLUM_GRID, max(4, round(_ILLUM_GRID * h / w))
    wt = np.ones((h, w), np.float32) if weight is None else weight.astype(np.float32)
    num = cv2.resize(gray * wt, (gw, gh), interpolation=cv2.INTER_AREA)
    den = cv2.resize(wt, (gw, gh), interpolation=cv2.INTER_AREA)
    num = cv2.GaussianBlur(num, (0, 0), _ILLUM_SIGMA, borderType=cv2.BORDER_REFLECT)
    den = cv2.GaussianBlur(den, (0, 0), _ILLUM_SIGMA, borderType=cv2.BORDER_REFLECT)
    fallback = float((gray * wt).sum() / max(float(wt.sum()), 1.0))
    coarse = np.where(den > 1e-3, num / np.maximum(den, 1e-6), fallback).astype(np.float32)
    return np.asarray(cv2.resize(coarse, (w, h), interpolation=cv2.INTER_LINEAR), dtype=np.float32)


# A frame shows its lighting when at least this share of it is plain powder (inside the plate).
_MIN_POWDER_SHARE = 0.2


def powder_lighting(gray: np.ndarray, mask: np.ndarray, roi: np.ndarray | None = None) -> np.ndarray | None:
    """The lighting one layer shows on its plain powder: ``gray`` (H, W) float32 in [0, 1], ``mask`` its class
    ids, ``roi`` the build plate (or None). None where too little of the frame is plain powder to see it by.
    A build's reference lighting is the mean of its first layers' (the monitor's ``reference_layers``)."""
    from segmentation.classes import LayerClass

    weight = mask == LayerClass.POWDER
    if roi is not None:
        weight &= roi
    if weight.mean() < _MIN_POWDER_SHARE:
        return None
    return illumination(gray, weight)


def flat_field(gray: np.ndarray, illum: np.ndarray) -> np.ndarray:
    """(H, W) float32 frame divided by the reference lighting ``illum`` and brought back to its mean
    level: fixed lighting gradients, falloff and vignetting of the camera are gone."""
    ref = np.maximum(illum.astype(np.float32), 0.02)
    out = gray * (float(ref.mean()) / ref)
    return np.clip(out, 0.0, 1.0).astype(np.float32)
