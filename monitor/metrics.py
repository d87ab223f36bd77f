"""Per-layer metrics from a class-id mask, in physical units (mm, mm²), and part tracking across layers.

The *part region* of a layer is the filled union of part, porosity and warping pixels (a pore or a
lifted corner belongs to the part it is in); connected regions of at least ``min_part_mm2`` (2 mm², and 30 px) are
parts, given stable ids across layers by overlap with the previous layer's parts.

Metrics (``METRIC_NAMES``), per layer:

- ``part_count``, ``part_area_mm2``;
- ``<class>_fraction`` (share of the frame) and ``<class>_fraction_part`` (share of the part region)
  for porosity, spatter and warping;
- pores (connected porosity components): ``pore_count``, ``pore_area_mm2``, ``pore_mean_diameter_mm``,
  ``pore_p90_diameter_mm``, ``pore_max_diameter_mm`` (equivalent circle diameters);
- spatter particles: ``spatter_count``, ``spatter_area_mm2``;
- warping: ``warping_area_mm2``, ``warping_edge_mm`` (length of part outline next to warping),
  ``warping_growth_mm`` (edge length gained since the previous layer), ``warping_growth_area_mm2``,
  ``warping_stable_area_mm2`` (warping also present, within 2 px, on the previous layer: a real lifted
  edge persists from layer to layer, a misreading flickers) and ``warping_stable_growth_mm2``;
- warping as geometry (a lifted edge stands out of the part's outline or stays at the same place; a
  uniformly bright part is never warping by itself): ``warping_persistent_area_mm2`` (warping of this
  layer also seen, within 2 px, on at least one of the two layers before, and not where the build's first
  3 layers already showed "warping": fixtures and the plate do not lift), ``warping_outside_area_mm2``
  (warping outside the footprint the parts had 3 to 8 layers earlier, next to a part),
  ``warping_confirmed_area_mm2`` (persistent warping components that
  stand outside that footprint, or lie at a part's outline, cover less than half of that part and, where the
  frame is given, look unlike the rest of that part there (shaded or rough: paint on a uniform part is no lift);
  and persistent porosity standing outside that footprint: a lifted corner seen dark, since pores lie inside a
  part; never on a part that was not there 3 to 8 layers earlier: it has no earlier outline to stand out of)
  and ``warping_confirmed_growth_mm2`` (its change since the previous layer).

Per part (``PART_METRIC_NAMES``): ``area_mm2``, ``porosity_fraction``, ``pore_count``, ``spatter_count``
(particles within ``spatter_reach_px`` of the part), ``warping_area_mm2``, ``warping_edge_mm``.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import cv2
import numpy as np
from scipy import ndimage

from segmentation.classes import DEFECT_CLASSES, LayerClass

__all__ = ["METRIC_NAMES", "PART_METRIC_NAMES", "SPATTER_REACH_PX", "LayerMetrics", "MetricsComputer", "PartTracker"]

#: every defect class has its share of the plate and of the parts; the named ones below have more
DEFECTS = DEFECT_CLASSES
METRIC_NAMES: tuple[str, ...] = (
    "part_count",
    "part_area_mm2",
    *(f"{c.name.lower()}_fraction" for c in DEFECTS),
    *(f"{c.name.lower()}_fraction_part" for c in DEFECTS),
    "pore_count",
    "pore_area_mm2",
    "pore_mean_diameter_mm",
    "pore_p90_diameter_mm",
    "pore_max_diameter_mm",
    "spatter_count",
    "spatter_area_mm2",
    "warping_area_mm2",
    "warping_edge_mm",
    "warping_growth_mm",
    "warping_growth_area_mm2",
    "warping_stable_area_mm2",
    "warping_stable_growth_mm2",
    "warping_persistent_area_mm2",
    "warping_outside_area_mm2",
    "warping_confirmed_area_mm2",
    "warping_confirmed_growth_mm2",
)
PART_METRIC_NAMES: tuple[str, ...] = (
    "area_mm2",
    "porosity_fraction",
    "pore_count",
    "spatter_count",
    "warping_area_mm2",
    "warping_edge_mm",
)
_K3 = np.ones((3, 3), dtype=np.uint8)
_PERSIST_LAYERS = 3  # warping on _PERSIST_MIN of this many layers (this one included) is persistent
_PERSIST_MIN = 2
_INITIAL_LAYERS = 3  # warping in a build's first layers is never confirmed (fixtures, the plate)
_FOOTPRINT_LAYERS = 8  # the parts' footprint is taken from 3 to this many layers back
_OUTSIDE_MIN_PX = 4  # pixels outside the earlier footprint that make a warping component stand out
SPATTER_REACH_PX = 12  # a spatter particle this close to a part counts for that part
# paint at a part's outline is a lift only where the frame under it differs from the part around it: its median
# this many robust spreads away, or its texture this many times as rough
_UNLIKE_SHIFT = 0.3
_UNLIKE_ROUGH = 1.2


def _ids_present(ids: np.ndarray) -> list[int]:
    """The non-zero ids in ``ids``, ascending (a count per id where they are small, as a frame's usually are)."""
    top = int(ids.max()) if ids.size else 0
    if top < 1 << 16:
        return [int(p) for p in np.flatnonzero(np.bincount(ids.ravel(), minlength=1)) if p]
    return [int(p) for p in np.unique(ids) if p]


def _label(mask: np.ndarray) -> tuple[np.ndarray, int, np.ndarray, np.ndarray]:
    """8-connected components: (labels int32, count, areas px per label from 1, centroids (x, y) from 1)."""
    n, labels, stats, centroids = cv2.connectedComponentsWithStats(mask.view(np.uint8), connectivity=8)
    return labels, n - 1, stats[1:, cv2.CC_STAT_AREA].astype(np.float64), centroids[1:]


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    """Pixels of ``mask`` plus every background region that does not touch the border."""
    h, w = mask.shape
    outside = np.zeros((h + 2, w + 2), np.uint8)
    outside[1:-1, 1:-1] = mask.view(np.uint8)
    flood_mask = np.zeros((h + 4, w + 4), np.uint8)
    cv2.floodFill(outside, flood_mask, (0, 0), 2)
    return np.asarray(outside[1:-1, 1:-1] != 2)


def _erode(mask: np.ndarray) -> np.ndarray:
    return np.asarray(cv2.erode(mask.view(np.uint8), _K3, borderType=cv2.BORDER_REPLICATE) > 0)


def _dilate(mask: np.ndarray, iterations: int = 1) -> np.ndarray:
    return np.asarray(cv2.dilate(mask.view(np.uint8), _K3, iterations=iterations) > 0)


@dataclass(frozen=True)
class LayerMetrics:
    values: dict[str, float]
    parts: list[dict[str, float]]  # one dict per part: part_id plus PART_METRIC_NAMES
    part_ids: np.ndarray  # (H, W) uint32, 0 where no part
    # (H, W) bool: the pixels of ``warping_confirmed_area_mm2`` (whatever class the model gave them: a lifted
    # corner seen dark is porosity in the mask), None when there are none
    confirmed: np.ndarray | None = None


@dataclass
class PartTracker:
    """Stable part ids across layers: a region takes the id of the previous layer's part it overlaps most."""

    min_part_px: int = 30
    _previous: np.ndarray | None = None
    _next_id: int = 1
    seen: set[int] = field(default_factory=set)
    last_ids: list[int] = field(default_factory=list)  # the ids of the last labelled layer, ascending

    def label(self, region: np.ndarray) -> np.ndarray:
        labels, n, areas, _ = _label(region)
        out = np.zeros(region.shape, dtype=np.uint32)
        self.last_ids = []
        if n == 0:
            self._previous = out
            return out
        sizes = np.concatenate([[0.0], areas])
        used: set[int] = set()
        prev = self._previous if self._previous is not None and self._previous.shape == region.shape else None
        for lab in np.argsort(-sizes[1:]) + 1:  # biggest first: they claim the ids they overlap
            if sizes[lab] < self.min_part_px:
                continue
            pixels = labels == lab
            pid = 0
            if prev is not None:
                overlap = np.bincount(prev[pixels].astype(np.int64))
                overlap[0] = 0
                for candidate in np.argsort(-overlap):
                    if overlap[candidate] == 0:
                        break
                    if int(candidate) not in used:
                        pid = int(candidate)
                        break
            if pid == 0:
                pid = self._next_id
                self._next_id += 1
            used.add(pid)
            self.seen.add(pid)
            out[pixels] = pid
        self._previous = out
        self.last_ids = sorted(used)
        return out


class MetricsComputer:
    """Stateful per build: remembers the previous layer for growth figures and part ids."""

    def __init__(
        self, mm_per_px: float, *, min_part_mm2: float = 2.0, spatter_reach_px: int = SPATTER_REACH_PX
    ) -> None:
        if mm_per_px <= 0:
            raise ValueError(f"mm_per_px must be > 0, got {mm_per_px}")
        self.mm_per_px = mm_per_px
        self.px_mm2 = mm_per_px * mm_per_px
        # a part is at least min_part_mm2 (and 30 px): smaller regions are misread powder, not parts
        self.tracker = PartTracker(max(30, round(min_part_mm2 / self.px_mm2)))
        self.spatter_reach_px = spatter_reach_px
        self._prev_edge_mm: float | None = None
        self._prev_warp_mm2: float | None = None
        self._prev_warp: np.ndarray | None = None
        self._prev_stable_mm2 = 0.0
        self._warps: deque[np.ndarray] = deque(maxlen=_PERSIST_LAYERS - 1)  # the previous layers' warping
        self._pores: deque[np.ndarray] = deque(maxlen=_PERSIST_LAYERS - 1)  # and porosity
        self._regions: deque[np.ndarray] = deque(maxlen=_FOOTPRINT_LAYERS)  # the previous layers' part regions
        self._prev_confirmed_mm2 = 0.0
        self._initial_warp: np.ndarray | None = None  # warping seen in the build's first layers
        self._initial_pores: np.ndarray | None = None  # and porosity
        self._layers_seen = 0

    def compute(
        self, mask: np.ndarray, part_ids: np.ndarray | None = None, gray: np.ndarray | None = None
    ) -> LayerMetrics:
        """``mask``: (H, W) uint8 class ids. ``part_ids``: (H, W) part ids supplied with the frame, if any.
        ``gray``: (H, W) the frame the mask was made of (any dtype): warping at a part's outline is confirmed
        only where the frame shows something there unlike the rest of the part (without it, it is not asked)."""
        total = float(mask.size)
        of_class = {c: mask == c for c in DEFECTS}
        is_part = mask == LayerClass.PART
        pores, spatter, warp = (of_class[c] for c in (LayerClass.POROSITY, LayerClass.SPATTER, LayerClass.WARPING))
        region = _fill_holes(is_part | pores | warp)
        ids = part_ids.astype(np.uint32) if part_ids is not None else self.tracker.label(region)
        if part_ids is not None:
            region = region | (ids > 0)
        region_px = float(region.sum())
        v: dict[str, float] = {}
        pid_list = self.tracker.last_ids if part_ids is None else _ids_present(ids)
        v["part_count"] = float(len(pid_list))
        v["part_area_mm2"] = region_px * self.px_mm2
        for c, m in of_class.items():
            name = c.name.lower()
            v[f"{name}_fraction"] = float(m.sum()) / total
            v[f"{name}_fraction_part"] = float((m & region).sum()) / region_px if region_px else 0.0
        pore_labels, n_pores, pore_px, _ = _label(pores)
        diam = 2.0 * np.sqrt(pore_px * self.px_mm2 / np.pi)
        v["pore_count"] = float(n_pores)
        v["pore_area_mm2"] = float(pore_px.sum()) * self.px_mm2
        v["pore_mean_diameter_mm"] = float(diam.mean()) if n_pores else 0.0
        v["pore_p90_diameter_mm"] = float(np.percentile(diam, 90)) if n_pores else 0.0
        v["pore_max_diameter_mm"] = float(diam.max()) if n_pores else 0.0
        _, n_spatter, _, spatter_xy = _label(spatter)
        v["spatter_count"] = float(n_spatter)
        v["spatter_area_mm2"] = float(spatter.sum()) * self.px_mm2
        outline = region & ~_erode(region)
        near_warp = _dilate(warp, 2)
        edge = outline & near_warp
        v["warping_area_mm2"] = float(warp.sum()) * self.px_mm2
        v["warping_edge_mm"] = float(edge.sum()) * self.mm_per_px
        prev_edge = self._prev_edge_mm if self._prev_edge_mm is not None else v["warping_edge_mm"]
        prev_area = self._prev_warp_mm2 if self._prev_warp_mm2 is not None else v["warping_area_mm2"]
        v["warping_growth_mm"] = v["warping_edge_mm"] - prev_edge
        v["warping_growth_area_mm2"] = v["warping_area_mm2"] - prev_area
        self._prev_edge_mm, self._prev_warp_mm2 = v["warping_edge_mm"], v["warping_area_mm2"]
        prev_warp = self._prev_warp if self._prev_warp is not None and self._prev_warp.shape == warp.shape else None
        stable = warp & _dilate(prev_warp, 2) if prev_warp is not None else None
        v["warping_stable_area_mm2"] = float(stable.sum()) * self.px_mm2 if stable is not None else 0.0
        v["warping_stable_growth_mm2"] = v["warping_stable_area_mm2"] - self._prev_stable_mm2
        self._prev_warp, self._prev_stable_mm2 = warp, v["warping_stable_area_mm2"]
        confirmed = self._geometry(v, warp, pores, region, outline, ids, gray)
        parts = self._per_part(ids, pid_list, pores, pore_labels, spatter_xy, warp, edge)
        return LayerMetrics(v, parts, ids, confirmed)

    def _geometry(
        self,
        v: dict[str, float],
        warp: np.ndarray,
        pores: np.ndarray,
        region: np.ndarray,
        outline: np.ndarray,
        ids: np.ndarray,
        gray: np.ndarray | None,
    ) -> np.ndarray | None:
        """Warping judged by where it stands and whether it stays (see the module docstring); returns the
        confirmed pixels (None when there are none)."""
        history = (*self._warps, *self._pores, *self._regions)
        initial = (self._initial_warp, self._initial_pores)
        if any(w.shape != warp.shape for w in history) or any(i is not None and i.shape != warp.shape for i in initial):
            self._warps.clear()
            self._pores.clear()
            self._regions.clear()
            self._initial_warp, self._initial_pores, self._layers_seen = None, None, 0
        # persistent: warping on at least 2 of the last 3 layers at the same place (within 2 px), this one
        # included; a misreading flickers, a lifted edge stays (and may be missed on one layer). What was
        # "warping" in the build's first layers is a fixture or a misreading of the plate, not a part that
        # lifted: parts lift after stress has built up over layers
        persistent = self._persistent(warp, self._warps, self._initial_warp)
        # a lifted corner seen dark (its shadow, a dark rim) is often read as porosity: porosity that stays
        # at the same place and stands out of the parts' earlier outline is no pore (pores lie inside a part)
        dark = self._persistent(pores, self._pores, self._initial_pores)
        outside = np.zeros_like(warp)
        dark_outside = np.zeros_like(warp)
        footprint: np.ndarray | None = None
        if (warp.any() or dark.any()) and len(self._regions) > 2:  # persistent warping is part of warp
            footprint = np.zeros_like(warp)
            for r in list(self._regions)[:-2]:  # 3 to 8 layers ago: before a growing warp's latest rim
                footprint |= r
            beyond = ~_dilate(footprint, 1)
            outside = warp & beyond & _dilate(region & ~warp, 3)
            dark_outside = dark & beyond & _dilate(region & ~warp & ~pores, 3)
        v["warping_persistent_area_mm2"] = float(persistent.sum()) * self.px_mm2
        v["warping_outside_area_mm2"] = float(outside.sum()) * self.px_mm2
        confirmed_px = 0.0
        confirmed: np.ndarray | None = None
        candidates = persistent | dark
        if candidates.any():
            labels, n, areas, _ = _label(candidates)
            # per component sums over its own pixels only (a few hundred, not the whole frame)
            at = np.flatnonzero(candidates)
            flat = labels.ravel()[at]

            def per_component(where: np.ndarray) -> np.ndarray:
                return np.bincount(flat, weights=where.ravel()[at], minlength=n + 1)[1:]

            n_out = per_component(outside | dark_outside)
            # the "at the outline" branch is for warping only: a pore at a part's edge is a pore
            at_edge = (per_component(_dilate(outline, 2)) > 0) & (per_component(persistent) > 0)
            # the part each component lies on (most pixels), and that part's area
            owner = np.zeros(n, dtype=np.int64)
            on = ids.ravel()[at].astype(np.int64)
            on_part = on > 0
            if on_part.any():
                width = int(on.max()) + 1
                pairs = flat[on_part] * width + on[on_part]
                owner = np.bincount(pairs, minlength=(n + 1) * width).reshape(n + 1, -1)[1:].argmax(axis=1)
            part_area = np.bincount(ids.ravel().astype(np.int64))
            share = np.where(owner > 0, areas / np.maximum(part_area[np.minimum(owner, part_area.size - 1)], 1), 1.0)
            at_edge &= share < 0.5
            if gray is not None and at_edge.any():
                # inside the outline the mask is all there is: a lift shades or roughens the part where it is
                # painted; paint on a part that looks the same there as around it is a misreading
                at_edge &= self._unlike_part(gray, labels, at_edge, warp | pores, ids, owner)
            # a part that was not there 3 to 8 layers ago has no earlier outline to stand out of (a thin wall
            # that started 2 layers ago with a pore at its end is not a lifted corner)
            keep = ((n_out >= _OUTSIDE_MIN_PX) | at_edge) & self._established(region, footprint, labels, n)
            confirmed_px = float(areas[keep].sum())
            if keep.any():
                confirmed = np.concatenate(([False], keep))[labels]
        v["warping_confirmed_area_mm2"] = confirmed_px * self.px_mm2
        v["warping_confirmed_growth_mm2"] = v["warping_confirmed_area_mm2"] - self._prev_confirmed_mm2
        self._prev_confirmed_mm2 = v["warping_confirmed_area_mm2"]
        self._warps.append(warp)
        self._pores.append(pores)
        self._regions.append(region)
        self._layers_seen += 1
        if self._layers_seen <= _INITIAL_LAYERS:
            grown, grown_pores = _dilate(warp, 3), _dilate(pores, 3)
            self._initial_warp = grown if self._initial_warp is None else (self._initial_warp | grown)
            self._initial_pores = grown_pores if self._initial_pores is None else (self._initial_pores | grown_pores)
        return confirmed

    @staticmethod
    def _established(region: np.ndarray, footprint: np.ndarray | None, labels: np.ndarray, n: int) -> np.ndarray:
        """(n,) bool per candidate component: the part region it lies in was there 3 to 8 layers ago (at least
        half of it lies within the earlier footprint). Without a footprint yet (the build's first layers), True."""
        if footprint is None:
            return np.ones(n, dtype=bool)
        reg_labels, n_reg, reg_areas, _ = _label(region)
        if n_reg == 0:
            return np.ones(n, dtype=bool)
        grown = _dilate(footprint, 2)
        inside = np.bincount(reg_labels[grown & region], minlength=n_reg + 1)[1:]
        established = np.concatenate(([False], inside >= 0.5 * reg_areas))
        # the region each component lies in (components are subsets of the region)
        at = np.flatnonzero(labels)
        comp_region = np.zeros(n + 1, dtype=np.int64)
        comp_region[labels.ravel()[at]] = reg_labels.ravel()[at]
        return np.asarray(established[comp_region[1:]])

    @staticmethod
    def _unlike_part(
        gray: np.ndarray, labels: np.ndarray, which: np.ndarray, painted: np.ndarray, ids: np.ndarray, owner: np.ndarray
    ) -> np.ndarray:
        """(n,) bool: for each component in ``which``, whether the frame under it differs from the same part
        around it (within 10 px, not painted a defect): its median more than _UNLIKE_SHIFT robust spreads away,
        or its texture _UNLIKE_ROUGH times as rough. True where there is too little part around it to tell."""
        out = np.zeros(which.shape, dtype=bool)
        boxes = ndimage.find_objects(labels, max_label=which.size)
        h, w = labels.shape
        for i in np.flatnonzero(which):
            box = boxes[i]
            if box is None:
                continue
            r0, r1 = max(0, box[0].start - 10), min(h, box[0].stop + 10)
            c0, c1 = max(0, box[1].start - 10), min(w, box[1].stop + 10)
            comp = labels[r0:r1, c0:c1] == i + 1
            g = gray[r0:r1, c0:c1].astype(np.float32)
            around = ~painted[r0:r1, c0:c1] & ~comp
            if owner[i] > 0:
                around &= ids[r0:r1, c0:c1] == owner[i]
            if int(around.sum()) < 20 or int(comp.sum()) < 4:
                out[i] = True
                continue
            a, c = g[around], g[comp]
            med_a = float(np.median(a))
            spread = 1.4826 * float(np.median(np.abs(a - med_a)))
            floor = 0.004 * (255.0 if gray.dtype == np.uint8 else 65535.0 if gray.dtype == np.uint16 else 1.0)
            shifted = abs(float(np.median(c)) - med_a) > _UNLIKE_SHIFT * spread + floor
            rough = float(c.std()) > _UNLIKE_ROUGH * float(a.std()) + floor
            out[i] = shifted or rough
        return out

    @staticmethod
    def _persistent(now: np.ndarray, earlier: deque[np.ndarray], initial: np.ndarray | None) -> np.ndarray:
        """Pixels of ``now`` also seen, within 2 px, on at least _PERSIST_MIN - 1 of the earlier layers (once
        _PERSIST_LAYERS - 1 of them are known), outside ``initial``."""
        if not now.any() or len(earlier) < _PERSIST_LAYERS - 1:
            return np.zeros_like(now)
        seen = np.zeros(now.shape, np.uint8)
        for e in earlier:
            seen += _dilate(e, 2)
        persistent = now & (seen >= _PERSIST_MIN - 1)
        return persistent & ~initial if initial is not None else persistent

    def _per_part(
        self,
        ids: np.ndarray,
        pid_list: list[int],
        pores: np.ndarray,
        pore_labels: np.ndarray,
        spatter_xy: np.ndarray,
        warp: np.ndarray,
        edge: np.ndarray,
    ) -> list[dict[str, float]]:
        if not pid_list:
            return []
        h, w = ids.shape
        r = self.spatter_reach_px
        spatter_owner: dict[int, int] = {}
        for x, y in spatter_xy:  # a particle belongs to the part within reach (the largest id if several)
            cy, cx = round(float(y)), round(float(x))
            window = ids[max(0, cy - r) : min(h, cy + r + 1), max(0, cx - r) : min(w, cx + r + 1)]
            owner = int(window.max()) if window.size else 0
            spatter_owner[owner] = spatter_owner.get(owner, 0) + 1
        out = []
        for pid in pid_list:
            inside = ids == pid
            area = float(np.count_nonzero(inside))
            in_pores = inside & pores
            pore_ids = np.unique(pore_labels[in_pores])
            out.append(
                {
                    "part_id": float(pid),
                    "area_mm2": area * self.px_mm2,
                    "porosity_fraction": float(np.count_nonzero(in_pores)) / area if area else 0.0,
                    "pore_count": float(np.count_nonzero(pore_ids)),
                    "spatter_count": float(spatter_owner.get(pid, 0)),
                    "warping_area_mm2": float(np.count_nonzero(inside & warp)) * self.px_mm2,
                    "warping_edge_mm": float(np.count_nonzero(edge & inside)) * self.mm_per_px,
                }
            )
        return out


def metric_unit(name: str) -> str:
    """The unit of a metric (whole-plate, in-part or per-part), by the naming rule every metric follows."""
    if name.endswith(("_mm2", "_mm2_part")):
        return "mm²"
    if name.endswith(("_mm", "_mm_part")):
        return "mm"
    return "share" if "fraction" in name else "count"
