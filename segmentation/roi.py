"""The region of interest of a camera: the build plate, as a polygon in frame pixels.

Nothing outside the plate is judged: chamber walls, rails, screws and the recoater's parking place
must never become part, warping or spatter. A printer's polygon comes from its configuration, or is
proposed from its first frames by :func:`propose_roi` and confirmed by an operator.

How the proposal works: chamber walls, rails and the plate's own edge are long straight structures
parallel to the frame's borders. Their edges show up as peaks in the column (row) profile of the
horizontal (vertical) gradient, averaged along the other axis. The strongest such edge in the outer
quarter of each side, where it stands well above the profile's typical level, bounds the plate on
that side; a side without one keeps the frame's border. It must also stand above every edge in the
frame's central half, where a plate has no hardware: recoater streaks and the borders of unevenly
spread bands are long straight lines across the whole plate too, and one of them in the outer quarter
would otherwise cut that quarter off (nothing there judged until an operator corrects the outline).
Left and right are found separately in the upper and lower third (walls lean under perspective), so
the polygon is a trapezoid, pulled in by a small margin.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from segmentation.preprocess import to_gray_float

__all__ = ["Roi", "polygon_mask", "propose_roi"]

Point = tuple[float, float]

# An edge bounds the plate when its profile peak is this many times the profile's median.
_EDGE_RATIO = 3.0
# ... and this many times the strongest edge in the profile's central half (streaks and bands cross it).
_CENTRAL_RATIO = 1.1
# Only the outer part of each side is searched (a share of the frame's width or height).
_SEARCH = 0.25
# The polygon is pulled in by this share of the frame beyond the found edge.
_MARGIN = 0.015
_WORK_SIZE = 512


@dataclass(frozen=True)
class Roi:
    """A polygon ``points`` ((x, y) px, in the frame's pixel coordinates) and where it came from:
    ``config``, ``confirmed`` (an operator accepted it) or ``proposed`` (found from the frames)."""

    points: tuple[Point, ...]
    source: str = "proposed"

    def mask(self, shape: tuple[int, int]) -> np.ndarray:
        """(H, W) bool, True inside the polygon."""
        return polygon_mask(shape, self.points)

    def to_json(self) -> dict[str, object]:
        return {"points": [[round(x, 1), round(y, 1)] for x, y in self.points], "source": self.source}

    @classmethod
    def from_points(cls, points: Sequence[Sequence[float]], source: str) -> Roi:
        pts = tuple((float(p[0]), float(p[1])) for p in points)
        if len(pts) < 3:
            raise ValueError(f"a region of interest needs at least 3 points, got {len(pts)}")
        if not all(np.isfinite(c) for p in pts for c in p):
            raise ValueError("region of interest points must be finite numbers")
        return cls(pts, source)


def polygon_mask(shape: tuple[int, int], points: Sequence[Point]) -> np.ndarray:
    """(H, W) bool mask of a polygon given in pixel coordinates: pixel (i, j) covers
    [j, j + 1) x [i, i + 1) and is inside when its centre is (even-odd rule, scanline by scanline)."""
    h, w = shape
    mask = np.zeros((h, w), bool)
    pts = np.asarray(points, dtype=np.float64)
    x0, y0 = pts[:, 0], pts[:, 1]
    x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
    cols = np.arange(w) + 0.5
    for i in range(h):
        yc = i + 0.5
        cross = (y0 <= yc) != (y1 <= yc)  # edges that this row's centre line crosses
        if not cross.any():
            continue
        xs = np.sort(x0[cross] + (yc - y0[cross]) * (x1[cross] - x0[cross]) / (y1[cross] - y0[cross]))
        for a, b in zip(xs[0::2], xs[1::2], strict=False):
            mask[i] |= (cols >= a) & (cols < b)
    return mask


def _edges(profile: np.ndarray, lo: int, hi: int) -> int | None:
    """Index of the strongest edge in ``profile[lo:hi]`` that stands out, or None."""
    seg = profile[lo:hi]
    if seg.size == 0:
        return None
    i = int(np.argmax(seg))
    typical = float(np.median(profile)) + 1e-6
    n = profile.size
    central = float(profile[n // 4 : n - n // 4].max(initial=0.0))
    return lo + i if seg[i] > _EDGE_RATIO * typical and seg[i] > _CENTRAL_RATIO * central else None


def propose_roi(frames: Sequence[np.ndarray]) -> Roi:
    """The build plate in one or more frames of the same camera: (H, W) or (H, W, C) arrays.

    Returns a rectangle-shaped :class:`Roi` in the frames' pixel coordinates (source ``proposed``).
    """
    if not frames:
        raise ValueError("propose_roi needs at least one frame")
    h, w = np.asarray(frames[0]).shape[:2]
    scale = min(1.0, _WORK_SIZE / max(h, w))
    sh, sw = max(8, round(h * scale)), max(8, round(w * scale))
    # columns profiles of the upper and lower third (walls seen in perspective lean), one row profile
    gx_top = np.zeros(sw, np.float64)
    gx_bottom = np.zeros(sw, np.float64)
    gy_sum = np.zeros(sh, np.float64)
    for frame in frames:
        g = to_gray_float(np.asarray(frame))
        if g.shape != (h, w):
            raise ValueError(f"frames differ in size: {g.shape} and {(h, w)}")
        small = cv2.resize(g, (sw, sh), interpolation=cv2.INTER_AREA)
        small = cv2.GaussianBlur(small, (0, 0), 1.0)
        # relative gradients: an edge in a dark corner counts as much as one in the light
        level = cv2.GaussianBlur(small, (0, 0), 8.0) + 0.02
        gx = np.abs(cv2.Sobel(small, cv2.CV_32F, 1, 0, ksize=3)) / level
        gy = np.abs(cv2.Sobel(small, cv2.CV_32F, 0, 1, ksize=3)) / level
        # medians along the other axis: long edges count, a part's outline or a speck does not
        gx_top += np.median(gx[: sh // 3], axis=0)
        gx_bottom += np.median(gx[2 * sh // 3 :], axis=0)
        gy_sum += np.median(gy[:, sw // 4 : 3 * sw // 4], axis=1)
    ow, oh = max(2, int(_SEARCH * sw)), max(2, int(_SEARCH * sh))
    mx, my = _MARGIN * sw, _MARGIN * sh

    def low(profile: np.ndarray, n: int, margin: float) -> float:
        edge = _edges(profile, 1, n)
        return edge + margin if edge is not None else 0.0

    def high(profile: np.ndarray, n: int, margin: float) -> float:
        edge = _edges(profile, profile.size - n, profile.size - 1)
        return edge - margin if edge is not None else float(profile.size)

    y0, y1 = low(gy_sum, oh, my), high(gy_sum, oh, my)
    # the upper third's edges at the top, the lower third's at the bottom: a trapezoid under perspective
    xt0, xt1 = low(gx_top, ow, mx), high(gx_top, ow, mx)
    xb0, xb1 = low(gx_bottom, ow, mx), high(gx_bottom, ow, mx)
    fx, fy = w / sw, h / sh
    pts = ((xt0 * fx, y0 * fy), (xt1 * fx, y0 * fy), (xb1 * fx, y1 * fy), (xb0 * fx, y1 * fy))
    return Roi(tuple((round(x, 1), round(y, 1)) for x, y in pts), "proposed")
