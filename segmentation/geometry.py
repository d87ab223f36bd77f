"""Warping is geometry: what the network calls warping must be where a part can lift.

A lifted edge or corner belongs to a part: warping pixels that touch no part (or pore) are not the
edge of anything, and a part the network paints warping from edge to edge is a part that is brighter
or darker than it expected, not a part that lifted everywhere at once. :func:`warping_geometry`
applies both rules to a class-id mask; the Segmenter applies it to every frame (``geometry=False``
turns it off, e.g. to study the network alone).
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


def warping_geometry(mask: np.ndarray) -> np.ndarray:
    """(H, W) uint8 class ids -> the same mask with impossible warping reassigned (a copy).

    - a warping component that does not come within 3 px of a part or pore pixel becomes powder;
    - an object (8-connected part, pore and warping pixels) that is 85 % or more warping becomes part
      (its warping pixels; its pores stay pores).
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
    return out
