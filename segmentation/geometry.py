"""Warping is geometry: what the network calls warping must be where a part can lift.

A lifted edge or corner belongs to a part: warping pixels that touch no part (or pore) are not the
edge of anything, and a part the network paints warping from edge to edge is a part that is brighter
or darker than it expected, not a part that lifted everywhere at once. A lifted edge also looks unlike
the part it rises from (it catches the light or casts a shadow): a patch of "warping" whose pixels are
those of the part around it is a uniformly lit part, not warping by itself. :func:`warping_geometry`
applies these rules to a class-id mask (the last one with the frame); the Segmenter applies it to every
frame (``geometry=False`` turns it off, e.g. to study the network alone).
"""

from __future__ import annotations

import cv2
import numpy as np

from segmentation.classes import LayerClass

__all__ = ["warping_geometry"]

# warping within this many pixels of a part counts as touching it
_TOUCH_PX = 3
# a part object (part, pores and warping together) that is at least this share warping is a part
_WHOLE_PART_SHARE = 0.85
# a warping component whose median brightness lies within this many interquartile ranges of the median of
# the part pixels around it (within _RING_PX) looks like its part; judged when at least _MIN_RING_PX of them
_LIKE_PART_SPREAD = 1.0
_RING_PX = 8
_MIN_RING_PX = 20
_SPREAD_FLOOR = 1.0 / 255  # of the [0, 1] gray: an 8-bit step (a saturated part has no spread at all)
_MAX_COMPONENTS = 256  # the largest ones are judged: a frame of countless specks costs no more than this


def warping_geometry(mask: np.ndarray, gray: np.ndarray | None = None) -> np.ndarray:
    """(H, W) uint8 class ids -> the same mask with impossible warping reassigned (a copy).

    - a warping component that does not come within 3 px of a part or pore pixel becomes powder;
    - an object (8-connected part, pore and warping pixels) that is 85 % or more warping becomes part
      (its warping pixels; its pores stay pores);
    - with ``gray`` (the (H, W) frame the network saw, float in [0, 1]): a warping component whose median
      brightness is within one interquartile range of the part pixels around it becomes part.
    """
    warp = mask == LayerClass.WARPING
    if not warp.any():
        return mask
    out = mask.copy()
    solid = (mask == LayerClass.PART) | (mask == LayerClass.POROSITY)
    near_solid = cv2.dilate(solid.view(np.uint8), np.ones((2 * _TOUCH_PX + 1,) * 2, np.uint8)) > 0
    n, labels = cv2.connectedComponents(warp.view(np.uint8), connectivity=8)
    if n > 1:
        touching = np.bincount(labels[near_solid & warp], minlength=n) > 0
        alone = ~touching
        alone[0] = False
        out[alone[labels] & warp] = LayerClass.POWDER
    warp = out == LayerClass.WARPING
    if not warp.any():
        return out
    objects = warp | solid
    n, labels = cv2.connectedComponents(objects.view(np.uint8), connectivity=8)
    total = np.bincount(labels.ravel(), minlength=n)
    warped = np.bincount(labels[warp], minlength=n)
    whole = warped >= _WHOLE_PART_SHARE * np.maximum(total, 1)
    whole[0] = False
    out[whole[labels] & warp] = LayerClass.PART
    if gray is not None:
        _like_part_to_part(out, gray)
    return out


def _like_part_to_part(out: np.ndarray, gray: np.ndarray) -> None:
    """Warping components of ``out`` that look like the part pixels around them become part (in place)."""
    warp = out == LayerClass.WARPING
    if not warp.any():
        return
    if gray.shape != out.shape:
        raise ValueError(f"gray is {gray.shape}, the mask {out.shape}")
    part = out == LayerClass.PART
    _, labels, stats, _ = cv2.connectedComponentsWithStats(warp.view(np.uint8), connectivity=8)
    h, w = out.shape
    kernel = np.ones((2 * _RING_PX + 1,) * 2, np.uint8)
    for i in np.argsort(-stats[1:, cv2.CC_STAT_AREA], kind="stable")[:_MAX_COMPONENTS] + 1:
        x, y, bw, bh = (int(v) for v in stats[i, :4])
        r0, r1, c0, c1 = (
            max(y - _RING_PX, 0),
            min(y + bh + _RING_PX, h),
            max(x - _RING_PX, 0),
            min(x + bw + _RING_PX, w),
        )
        comp = labels[r0:r1, c0:c1] == i
        ring = (cv2.dilate(comp.view(np.uint8), kernel) > 0) & part[r0:r1, c0:c1]
        if np.count_nonzero(ring) < _MIN_RING_PX:
            continue
        g = gray[r0:r1, c0:c1]
        q25, q50, q75 = np.percentile(g[ring], (25, 50, 75))
        if abs(float(np.median(g[comp])) - q50) < _LIKE_PART_SPREAD * max(q75 - q25, _SPREAD_FLOOR):
            out[r0:r1, c0:c1][comp] = LayerClass.PART
