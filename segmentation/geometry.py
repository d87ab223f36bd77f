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


def _lut(*classes: int) -> np.ndarray:
    table = np.zeros(256, np.uint8)
    table[list(classes)] = 1
    return table


_WARP_LUT = _lut(LayerClass.WARPING)
_SOLID_LUT = _lut(LayerClass.PART, LayerClass.POROSITY)
_OBJECT_LUT = _lut(LayerClass.PART, LayerClass.POROSITY, LayerClass.WARPING)


def warping_geometry(mask: np.ndarray) -> np.ndarray:
    """(H, W) uint8 class ids -> the same mask with impossible warping reassigned (a copy).

    - a warping component that does not come within 3 px of a part or pore pixel becomes powder;
    - an object (8-connected part, pore and warping pixels) that is 85 % or more warping becomes part
      (its warping pixels; its pores stay pores).

    Only the rectangle around the warping pixels is read pixel by pixel (warping is a few percent of a
    frame at most); the objects' sizes come from one labelling of the whole frame.
    """
    m = np.ascontiguousarray(mask, dtype=np.uint8)
    warp_u8 = cv2.LUT(m, _WARP_LUT)
    x, y, w, h = cv2.boundingRect(warp_u8)
    if w == 0:
        return mask
    out = m.copy()
    rows, cols = m.shape
    # the box of warping plus the touching distance: every pixel that step 1 reads
    r0, r1 = max(y - _TOUCH_PX, 0), min(y + h + _TOUCH_PX, rows)
    c0, c1 = max(x - _TOUCH_PX, 0), min(x + w + _TOUCH_PX, cols)
    box = out[r0:r1, c0:c1]
    warp = warp_u8[r0:r1, c0:c1]
    solid = cv2.LUT(box, _SOLID_LUT)
    near_solid = cv2.dilate(solid, np.ones((2 * _TOUCH_PX + 1,) * 2, np.uint8))
    n, labels = cv2.connectedComponents(warp, connectivity=8)
    if n > 1:
        touching = np.bincount(labels[(near_solid > 0) & (warp > 0)], minlength=n) > 0
        alone = ~touching
        alone[0] = False
        box[alone[labels]] = LayerClass.POWDER  # label 0 (not warping) is never alone
    warp_left = box == LayerClass.WARPING
    if not warp_left.any():
        return out
    objects = cv2.LUT(out, _OBJECT_LUT)
    n, obj_labels, stats, _ = cv2.connectedComponentsWithStats(objects, connectivity=8)
    in_box = obj_labels[r0:r1, c0:c1]
    warped = np.bincount(in_box[warp_left], minlength=n)
    whole = warped >= _WHOLE_PART_SHARE * np.maximum(stats[:, cv2.CC_STAT_AREA], 1)
    whole[0] = False
    box[whole[in_box] & warp_left] = LayerClass.PART
    return out
