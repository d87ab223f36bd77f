"""Simulator of top-down layer camera images with pixel-exact class masks.

A :class:`SimBuild` is a stack of layers over several parts of varied geometry (boxes, cylinders,
thin walls, rings, overhangs). Defects are 3D-coherent: a pore is an ellipsoid spanning a few
layers, warping starts at a part's corner and grows over consecutive layers, spatter is new on
every layer. Appearance varies from build to build and layer to layer (powder grain, scan-track
hatching whose angle rotates every layer, illumination gradients, vignetting, brightness drift,
blur, noise, recoater streaks and powder smudges that are *not* defects, gray or colour, mm per
pixel), so that a model cannot learn one renderer's habits.

Everything is deterministic by seed: ``SimBuild(seed).layer(k)`` always returns the same arrays.

Rendering rule that keeps masks exact: every defect pixel of the mask is painted with the defect's
appearance and no pixel outside the mask is; blur and noise are applied afterwards to the whole
frame, as a camera would.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import cv2
import numpy as np
from scipy import ndimage

from segmentation.classes import LayerClass

__all__ = [
    "BuildSpec",
    "PartSpec",
    "PoreSpec",
    "SimBuild",
    "SimLayer",
    "WarpSpec",
    "simulate_dataset",
]

PartKind = Literal["box", "cylinder", "thin_wall", "ring", "overhang"]
PART_KINDS: tuple[PartKind, ...] = ("box", "cylinder", "thin_wall", "ring", "overhang")

# Smallest pore cross-section radius (px) that is drawn at all: below it a pore is not visible
# through camera noise, so labelling it would teach the model to guess.
_MIN_PORE_RADIUS_PX = 1.3


@dataclass(frozen=True)
class PartSpec:
    """One part: centre and sizes in mm, angle in radians, layers ``z0 <= k < z1``."""

    part_id: int
    kind: PartKind
    cx: float
    cy: float
    half_w: float
    half_h: float
    angle: float
    z0: int
    z1: int
    inner_ratio: float = 0.0  # rings: inner radius / outer radius
    growth: float = 0.0  # overhangs: half width added per layer (mm)


@dataclass(frozen=True)
class PoreSpec:
    """One pore: an ellipsoid centred at (cx, cy) mm and layer ``cz``, radii in mm and layers."""

    part_id: int
    cx: float
    cy: float
    cz: float
    rx: float
    ry: float
    rz: float
    angle: float
    lack_of_fusion: bool


@dataclass(frozen=True)
class WarpSpec:
    """Warping that starts at a corner (x, y) mm of a part at ``start`` and grows each layer."""

    part_id: int
    x: float
    y: float
    start: int
    extent0: float  # mm at the first layer
    growth: float  # mm per layer
    max_extent: float  # mm
    rim_px: float  # width of the lifted rim outside the part outline, px


@dataclass(frozen=True)
class BuildSpec:
    """Geometry, defects and camera of one simulated build."""

    seed: int
    height: int
    width: int
    n_layers: int
    mm_per_px: float
    layer_thickness: float
    color: bool
    bit_depth: int
    parts: tuple[PartSpec, ...]
    pores: tuple[PoreSpec, ...]
    warps: tuple[WarpSpec, ...]
    spatter_rate: float  # mean particles per layer
    recoat_axis: int  # 0: streaks along x, 1: along y


@dataclass
class SimLayer:
    """One rendered layer.

    ``image``: (H, W) gray or (H, W, 3) RGB, uint8 or uint16; ``mask``: (H, W) uint8 class ids;
    ``part_ids``: (H, W) uint32, 0 where no part; ``index``: layer index from 0; ``z``: mm.
    """

    image: np.ndarray
    mask: np.ndarray
    part_ids: np.ndarray
    index: int
    z: float
    meta: dict[str, float] = field(default_factory=dict)


def _rng(*keys: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([abs(int(k)) for k in keys]))


def _random_spec(seed: int, height: int, width: int, n_layers: int) -> BuildSpec:
    rng = _rng(seed, 1)
    mmpp = float(rng.uniform(0.05, 0.12))
    plate_w, plate_h = width * mmpp, height * mmpp
    parts: list[PartSpec] = []
    # some builds have an empty plate: frames with nothing fused must stay all powder
    n_parts = 0 if rng.random() < 0.07 else int(rng.integers(1, 7))
    placed: list[tuple[float, float, float]] = []
    for pid in range(1, n_parts + 1):
        kind: PartKind = PART_KINDS[int(rng.integers(len(PART_KINDS)))]
        span = min(plate_w, plate_h)
        for _ in range(30):
            size = float(rng.uniform(0.08, 0.2)) * span
            cx = float(rng.uniform(size + 0.05 * plate_w, plate_w - size - 0.05 * plate_w))
            cy = float(rng.uniform(size + 0.05 * plate_h, plate_h - size - 0.05 * plate_h))
            if all(math.hypot(cx - x, cy - y) > (size + s) * 1.05 for x, y, s in placed):
                break
        else:
            continue
        placed.append((cx, cy, size * 1.45))
        angle = float(rng.uniform(0, math.pi))
        z0 = int(rng.integers(0, max(1, n_layers // 5)))
        z1 = int(rng.integers(max(z0 + 2, (3 * n_layers) // 4), n_layers + 1))
        half_w = size
        half_h = size * float(rng.uniform(0.45, 1.0))
        inner, growth = 0.0, 0.0
        if kind == "cylinder":
            half_h = half_w
        elif kind == "thin_wall":
            half_w = size * 1.3
            half_h = max(0.6, 4.0 * mmpp) + float(rng.uniform(0, 3)) * mmpp
        elif kind == "ring":
            half_h = half_w
            inner = float(rng.uniform(0.45, 0.75))
        elif kind == "overhang":
            half_w = size * 0.6
            growth = 0.4 * size / max(1, z1 - z0)
        parts.append(PartSpec(pid, kind, cx, cy, half_w, half_h, angle, z0, z1, inner, growth))

    pores: list[PoreSpec] = []
    for p in parts:
        area = 4 * (p.half_w + p.growth * (p.z1 - p.z0) / 2) * p.half_h * (0.5 if p.kind == "ring" else 1.0)
        # pores visible on one layer of this part, on average; each pore spans ~3 layers
        per_layer = float(rng.uniform(1.0, 8.0)) * max(0.5, area / 60.0)
        n_pores = int(rng.poisson(per_layer * (p.z1 - p.z0) / 3.0)) + 2
        for _ in range(n_pores):
            r = float(rng.uniform(0.12, 0.55))
            lof = bool(rng.random() < 0.3)
            rx, ry = (r * float(rng.uniform(1.8, 3.0)), r * 0.6) if lof else (r, r * float(rng.uniform(0.75, 1.0)))
            u, v = float(rng.uniform(-0.85, 0.85)), float(rng.uniform(-0.85, 0.85))
            cx, cy = _part_point(p, u, v)
            pores.append(
                PoreSpec(
                    p.part_id,
                    cx,
                    cy,
                    float(rng.uniform(p.z0, p.z1)),
                    rx,
                    ry,
                    float(rng.uniform(1.0, 3.5)),
                    float(rng.uniform(0, math.pi)),
                    lof,
                )
            )

    warps: list[WarpSpec] = []
    for p in parts:
        if p.kind == "thin_wall" or rng.random() > 0.6:
            continue
        for _ in range(int(rng.integers(1, 3))):
            su, sv = float(rng.choice([-1.0, 1.0])), float(rng.choice([-1.0, 1.0]))
            if p.kind in ("cylinder", "ring"):
                a = float(rng.uniform(0, 2 * math.pi))
                su, sv = math.cos(a), math.sin(a)
            x, y = _part_point(p, su, sv)
            start = int(rng.integers(p.z0, max(p.z0 + 1, p.z1 - 3)))
            warps.append(
                WarpSpec(
                    p.part_id,
                    x,
                    y,
                    start,
                    float(rng.uniform(0.2, 0.6)) * p.half_h,
                    float(rng.uniform(0.02, 0.08)) * p.half_h,
                    float(rng.uniform(0.5, 1.2)) * p.half_h,
                    float(rng.uniform(1.5, 4.0)),
                )
            )

    return BuildSpec(
        seed=seed,
        height=height,
        width=width,
        n_layers=n_layers,
        mm_per_px=mmpp,
        layer_thickness=float(rng.choice([0.03, 0.04, 0.05])),
        color=bool(rng.random() < 0.5),
        bit_depth=16 if rng.random() < 0.2 else 8,
        parts=tuple(parts),
        pores=tuple(pores),
        warps=tuple(warps),
        spatter_rate=float(rng.uniform(8, 70)),
        recoat_axis=int(rng.integers(2)),
    )


def _part_point(p: PartSpec, u: float, v: float) -> tuple[float, float]:
    """Point at relative coordinates (u, v) in [-1, 1] of a part's frame, in mm."""
    if p.kind in ("cylinder", "ring"):
        r = math.hypot(u, v)
        if p.kind == "ring" and r < 1e-6:
            u, r = 1.0, 1.0
        if p.kind == "ring":
            # keep pores in the wall, not the hole
            rr = p.inner_ratio + (1 - p.inner_ratio) * (0.5 + 0.5 * min(1.0, r))
            u, v = u / max(r, 1e-6) * rr, v / max(r, 1e-6) * rr
        elif r > 1:
            u, v = u / r, v / r
    c, s = math.cos(p.angle), math.sin(p.angle)
    du, dv = u * p.half_w, v * p.half_h
    return p.cx + c * du - s * dv, p.cy + s * du + c * dv


class SimBuild:
    """A simulated build: ``layer(k)`` renders layer ``k`` (0 <= k < n_layers).

    Args:
        seed: determines geometry, defects and appearance.
        height, width: frame size in px.
        n_layers: layers in the build.
        spec: use this exact spec instead of a random one (``seed`` still drives appearance).
    """

    def __init__(
        self,
        seed: int,
        height: int = 512,
        width: int = 512,
        n_layers: int = 60,
        spec: BuildSpec | None = None,
    ) -> None:
        if height < 32 or width < 32:
            raise ValueError(f"frame size {height}x{width} is too small: at least 32x32 px")
        if n_layers < 1:
            raise ValueError(f"n_layers={n_layers}: a build needs at least one layer")
        self.spec = spec if spec is not None else _random_spec(seed, height, width, n_layers)
        self.seed = seed
        s = self.spec
        yy, xx = np.mgrid[0 : s.height, 0 : s.width].astype(np.float32)
        self._xx_mm = (xx + 0.5) * s.mm_per_px
        self._yy_mm = (yy + 0.5) * s.mm_per_px
        self._xx = xx
        self._yy = yy
        rng = _rng(seed, 2)
        # Appearance fixed for the build, drifting slowly over layers.
        self._powder = float(rng.uniform(0.3, 0.6))
        sign = 1.0 if rng.random() < 0.6 else -1.0
        self._part_delta = sign * float(rng.uniform(0.12, 0.3))
        self._tint = rng.uniform(0.75, 1.0, size=3) if s.color else np.ones(3)
        self._drift_phase = float(rng.uniform(0, 2 * math.pi))
        self._drift_amp = float(rng.uniform(0.0, 0.12))
        self._hatch_angle0 = float(rng.uniform(0, math.pi))
        self._hatch_period = float(rng.uniform(3.0, 7.0))
        self._light = float(rng.uniform(0, 2 * math.pi))  # direction light comes from
        # chamber walls beyond the plate on some sides, of varied width and darkness
        self._border = rng.random(4) < 0.35
        self._border_width = rng.uniform(0.015, 0.08, 4)
        self._border_gain = float(rng.uniform(0.15, 0.7))
        self._jpeg_quality = int(rng.integers(60, 96)) if rng.random() < 0.25 else 0

    @property
    def n_layers(self) -> int:
        return self.spec.n_layers

    # ---- geometry -------------------------------------------------------------------------------
    def part_ids(self, k: int) -> np.ndarray:
        """(H, W) uint32 part id of every pixel on layer ``k`` (0: powder)."""
        ids = np.zeros((self.spec.height, self.spec.width), dtype=np.uint32)
        for p in self.spec.parts:
            if p.z0 <= k < p.z1:
                ids[self._part_mask(p, k)] = p.part_id
        return ids

    def _part_mask(self, p: PartSpec, k: int) -> np.ndarray:
        c, s = math.cos(p.angle), math.sin(p.angle)
        dx, dy = self._xx_mm - p.cx, self._yy_mm - p.cy
        u = c * dx + s * dy
        v = -s * dx + c * dy
        if p.kind in ("box", "thin_wall"):
            return (np.abs(u) <= p.half_w) & (np.abs(v) <= p.half_h)
        if p.kind == "overhang":
            extra = p.growth * (k - p.z0)
            # one side fixed, the other side grows outward layer by layer
            return (u >= -p.half_w) & (u <= p.half_w + 2 * extra) & (np.abs(v) <= p.half_h)
        r2 = u * u + v * v
        inside = r2 <= p.half_w**2
        if p.kind == "ring":
            inside &= r2 >= (p.inner_ratio * p.half_w) ** 2
        return inside

    def _pore_mask(self, k: int, part_ids: np.ndarray) -> np.ndarray:
        s = self.spec
        mask = np.zeros((s.height, s.width), dtype=bool)
        for pore in s.pores:
            dz = (k - pore.cz) / pore.rz
            if abs(dz) >= 1:
                continue
            f = math.sqrt(1 - dz * dz)
            rx, ry = pore.rx * f, pore.ry * f
            if min(rx, ry) / s.mm_per_px < _MIN_PORE_RADIUS_PX:
                continue
            x0 = int((pore.cx - rx - pore.ry) / s.mm_per_px) - 2
            y0 = int((pore.cy - rx - pore.ry) / s.mm_per_px) - 2
            x1 = int((pore.cx + rx + pore.ry) / s.mm_per_px) + 3
            y1 = int((pore.cy + rx + pore.ry) / s.mm_per_px) + 3
            x0, y0, x1, y1 = max(0, x0), max(0, y0), min(s.width, x1), min(s.height, y1)
            if x0 >= x1 or y0 >= y1:
                continue
            dx = self._xx_mm[y0:y1, x0:x1] - pore.cx
            dy = self._yy_mm[y0:y1, x0:x1] - pore.cy
            c, sn = math.cos(pore.angle), math.sin(pore.angle)
            u, v = c * dx + sn * dy, -sn * dx + c * dy
            inside = (u / rx) ** 2 + (v / ry) ** 2 <= 1
            if pore.lack_of_fusion:
                # a second lobe makes lack-of-fusion voids irregular
                u2 = u - 0.6 * rx
                v2 = v - 0.5 * ry
                inside |= (u2 / (0.6 * rx)) ** 2 + (v2 / (0.9 * ry)) ** 2 <= 1
            inside &= part_ids[y0:y1, x0:x1] == pore.part_id
            mask[y0:y1, x0:x1] |= inside
        return mask

    def _warp_mask(self, k: int, part_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Warped pixels and, for shading, the normalised distance to the warp's corner."""
        s = self.spec
        mask = np.zeros((s.height, s.width), dtype=bool)
        ramp = np.zeros((s.height, s.width), dtype=np.float32)
        for w in s.warps:
            if k < w.start:
                continue
            part = part_ids == w.part_id
            if not part.any():
                continue
            extent = min(w.max_extent, w.extent0 + w.growth * (k - w.start))
            d = np.hypot(self._xx_mm - w.x, self._yy_mm - w.y)
            near = d <= extent
            if not near.any():
                continue
            # lifted rim: powder pixels just outside the outline, near the corner
            rim = ndimage.binary_dilation(part, iterations=max(1, round(w.rim_px))) & ~part
            region = (part | rim) & near
            mask |= region
            ramp = np.maximum(ramp, np.where(region, 1.0 - d / extent, 0.0).astype(np.float32))
        return mask, ramp

    def mask(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(mask, part_ids) of layer ``k``: (H, W) uint8 class ids and (H, W) uint32 part ids."""
        ids = self.part_ids(k)
        m = np.where(ids > 0, LayerClass.PART, LayerClass.POWDER).astype(np.uint8)
        m[self._pore_mask(k, ids)] = LayerClass.POROSITY
        warp, _ = self._warp_mask(k, ids)
        m[warp] = LayerClass.WARPING
        return m, ids

    # ---- rendering ------------------------------------------------------------------------------
    def layer(self, k: int) -> SimLayer:
        """Render layer ``k``: image, exact mask and part ids."""
        s = self.spec
        if not 0 <= k < s.n_layers:
            raise IndexError(f"layer {k} outside the build (0..{s.n_layers - 1})")
        rng = _rng(self.seed, 3, k)
        h, w = s.height, s.width
        ids = self.part_ids(k)
        part = ids > 0
        pores = self._pore_mask(k, ids)
        warp, ramp = self._warp_mask(k, ids)

        drift = self._drift_amp * math.sin(self._drift_phase + 2 * math.pi * k / max(8, s.n_layers))
        powder = self._powder + drift + float(rng.normal(0, 0.015))
        part_level = powder + self._part_delta * float(rng.uniform(0.85, 1.15))

        # powder: grain texture + recoater streaks + soft smudges (distractors, not defects)
        grain = ndimage.gaussian_filter(rng.normal(0, 1, (h, w)).astype(np.float32), rng.uniform(0.6, 1.4))
        img = powder + grain * float(rng.uniform(0.02, 0.06)) / max(0.2, float(grain.std()))
        img += self._streaks(rng)
        img += self._smudges(rng)

        # part: scan-track hatching rotating layer by layer, border contour
        theta = self._hatch_angle0 + k * math.radians(67)
        phase = (self._xx * math.cos(theta) + self._yy * math.sin(theta)) * (2 * math.pi / self._hatch_period)
        hatch = np.sin(phase) * float(rng.uniform(0.015, 0.05))
        part_tex = part_level + hatch + grain * 0.01
        img = np.where(part, part_tex, img)
        contour = part & ~ndimage.binary_erosion(part, iterations=1)
        img[contour] += self._part_delta * 0.25

        # porosity: dark voids with a lit far wall
        if pores.any():
            depth = float(rng.uniform(0.2, 0.4))
            lx, ly = math.cos(self._light), math.sin(self._light)
            shade = ndimage.gaussian_filter(pores.astype(np.float32), 1.0)
            gx, gy = np.gradient(shade)
            lit = np.clip(-(gx * lx + gy * ly) * 3, 0, 1)
            img[pores] = (np.minimum(part_level, powder) - depth + 0.15 * lit[pores]).astype(np.float32)

        # warping: lifted material, brighter towards the corner, hatching smeared out
        if warp.any():
            lift = float(rng.uniform(0.25, 0.4))
            base = max(part_level, powder) + 0.5 * lift
            rough = ndimage.gaussian_filter(rng.normal(0, 0.03, (h, w)).astype(np.float32), 1.2)
            img[warp] = (base + lift * 0.6 * ramp[warp] + rough[warp]).astype(np.float32)
            # shadow cast on the powder beside the rim (not labelled: it is powder)
            shadow = ndimage.binary_dilation(warp, iterations=2) & ~warp & ~part
            img[shadow] -= 0.08

        # spatter: new on every layer, bright round particles, mostly near the parts
        mask = np.where(part, LayerClass.PART, LayerClass.POWDER).astype(np.uint8)
        mask[pores] = LayerClass.POROSITY
        mask[warp] = LayerClass.WARPING
        self._spatter(rng, img, mask, part, powder, part_level)

        img = self._camera(rng, img)
        return SimLayer(
            image=self._encode(rng, img),
            mask=mask,
            part_ids=ids,
            index=k,
            z=round((k + 1) * s.layer_thickness, 6),
            meta={"mm_per_px": s.mm_per_px, "layer_thickness": s.layer_thickness},
        )

    def _streaks(self, rng: np.random.Generator) -> np.ndarray:
        s = self.spec
        n = int(rng.integers(0, 6))
        prof = np.zeros(s.width if s.recoat_axis == 0 else s.height, dtype=np.float32)
        for _ in range(n):
            c = float(rng.uniform(0, prof.size))
            width = float(rng.uniform(0.8, 3.0))
            x = np.arange(prof.size, dtype=np.float32)
            prof += float(rng.uniform(-0.07, 0.07)) * np.exp(-0.5 * ((x - c) / width) ** 2)
        # streaks run along the recoating direction across the whole plate
        return prof[:, None].T.repeat(s.height, 0) if s.recoat_axis == 0 else prof[:, None].repeat(s.width, 1)

    def _smudges(self, rng: np.random.Generator) -> np.ndarray:
        """Soft powder blotches and uneven-spreading bands: not defects, and not parts."""
        s = self.spec
        field = np.zeros((s.height, s.width), dtype=np.float32)
        for _ in range(int(rng.integers(0, 5))):
            cx, cy = rng.uniform(0, s.width), rng.uniform(0, s.height)
            r = float(rng.uniform(12, 60))
            field += float(rng.uniform(-0.1, 0.1)) * np.exp(
                -((self._xx - cx) ** 2 + (self._yy - cy) ** 2) / (2 * r * r)
            )
        if rng.random() < 0.4:
            # bands across the recoating direction where the blade spread unevenly
            n = s.height if s.recoat_axis == 0 else s.width
            prof = ndimage.gaussian_filter1d(rng.normal(0, 1, n), float(rng.uniform(4, 25)))
            prof = (prof / max(float(np.abs(prof).max()), 1e-6) * float(rng.uniform(0.02, 0.09))).astype(np.float32)
            field += prof[:, None] if s.recoat_axis == 0 else prof[None, :]
        return field

    def _spatter(
        self,
        rng: np.random.Generator,
        img: np.ndarray,
        mask: np.ndarray,
        part: np.ndarray,
        powder: float,
        part_level: float,
    ) -> None:
        s = self.spec
        n = int(rng.poisson(s.spatter_rate))
        near = ndimage.binary_dilation(part, iterations=int(min(s.height, s.width) * 0.06))
        ys, xs = np.nonzero(near)
        bright = max(powder, part_level)
        lx, ly = math.cos(self._light), math.sin(self._light)
        for _ in range(n):
            if ys.size and rng.random() < 0.8:
                i = int(rng.integers(ys.size))
                cy, cx = float(ys[i] + rng.uniform(-0.5, 0.5)), float(xs[i] + rng.uniform(-0.5, 0.5))
            else:
                cy, cx = float(rng.uniform(0, s.height)), float(rng.uniform(0, s.width))
            r = float(rng.uniform(1.2, 3.2))
            y0, y1 = max(0, int(cy - r - 3)), min(s.height, int(cy + r + 4))
            x0, x1 = max(0, int(cx - r - 3)), min(s.width, int(cx + r + 4))
            if y0 >= y1 or x0 >= x1:
                continue
            dy = self._yy[y0:y1, x0:x1] - cy
            dx = self._xx[y0:y1, x0:x1] - cx
            d2 = dx * dx + dy * dy
            disk = d2 <= r * r
            if not disk.any():
                continue
            # small shadow on the side away from the light, outside the particle
            sh = ((dx + lx * r * 0.8) ** 2 + (dy + ly * r * 0.8) ** 2 <= r * r) & ~disk
            img[y0:y1, x0:x1][sh] -= 0.06
            peak = bright + float(rng.uniform(0.2, 0.45))
            img[y0:y1, x0:x1][disk] = (peak - 0.12 * d2[disk] / (r * r)).astype(np.float32)
            mask[y0:y1, x0:x1][disk] = LayerClass.SPATTER

    def _camera(self, rng: np.random.Generator, img: np.ndarray) -> np.ndarray:
        s = self.spec
        # illumination: linear gradient, vignetting and broad uneven lighting, then per-layer gain
        gx, gy = rng.normal(0, 0.2, 2)
        xn = self._xx / s.width - 0.5
        yn = self._yy / s.height - 0.5
        illum = 1.0 + gx * xn + gy * yn - float(rng.uniform(0, 0.4)) * (xn * xn + yn * yn) * 2
        for _ in range(int(rng.integers(0, 4))):
            cx, cy, r = rng.uniform(-0.3, 1.3), rng.uniform(-0.3, 1.3), rng.uniform(0.15, 0.5)
            illum += float(rng.uniform(-0.2, 0.2)) * np.exp(
                -((self._xx / s.width - cx) ** 2 + (self._yy / s.height - cy) ** 2) / (2 * r * r)
            )
        img = img * illum
        if self._border.any():
            # dark chamber walls beyond the plate (still "powder"/background class)
            edge = np.zeros_like(img, dtype=bool)
            bh = (self._border_width * s.height).astype(int)
            bw = (self._border_width * s.width).astype(int)
            if self._border[0]:
                edge[: bh[0]] = True
            if self._border[1]:
                edge[s.height - bh[1] :] = True
            if self._border[2]:
                edge[:, : bw[2]] = True
            if self._border[3]:
                edge[:, s.width - bw[3] :] = True
            img = np.where(edge, img * self._border_gain, img)
        sigma = float(rng.uniform(0.0, 1.0))
        if sigma > 0.3:
            img = ndimage.gaussian_filter(img, sigma)
        img = img + rng.normal(0, float(rng.uniform(0.005, 0.03)), img.shape).astype(np.float32)
        gain = float(rng.uniform(0.8, 1.2))
        gamma = float(rng.uniform(0.8, 1.25))
        img = np.clip(np.clip(img * gain, 0, 1) ** gamma, 0, 1).astype(np.float32)
        if self._jpeg_quality:
            # compression artefacts of cameras that only stream JPEG
            ok, buf = cv2.imencode(".jpg", (img * 255).astype(np.uint8), [cv2.IMWRITE_JPEG_QUALITY, self._jpeg_quality])
            dec = cv2.imdecode(buf, cv2.IMREAD_GRAYSCALE) if ok else None
            if dec is not None:
                img = dec.astype(np.float32) / 255.0
        return img

    def _encode(self, rng: np.random.Generator, img: np.ndarray) -> np.ndarray:
        s = self.spec
        if s.color:
            rgb = img[..., None] * self._tint[None, None, :].astype(np.float32)
            rgb += rng.normal(0, 0.006, rgb.shape).astype(np.float32)
            img = np.clip(rgb, 0, 1)
        if s.bit_depth == 16:
            return (img * 65535 + 0.5).astype(np.uint16)
        return (img * 255 + 0.5).astype(np.uint8)


def simulate_dataset(
    seed: int, count: int, height: int = 512, width: int = 512, layers_per_build: int = 4
) -> list[SimLayer]:
    """``count`` layers drawn from ``ceil(count / layers_per_build)`` builds seeded from ``seed``.

    Three of every four layers come from the upper part of a build, where warping has had time to
    grow; the others from anywhere, so that early layers and layers without parts are seen too.
    """
    out: list[SimLayer] = []
    b = 0
    n_layers = 40
    while len(out) < count:
        build_seed = seed * 100_003 + b
        build = SimBuild(build_seed, height, width, n_layers)
        rng = _rng(build_seed, 9)
        upper = rng.choice(np.arange(8, n_layers), size=layers_per_build, replace=False)
        ks = [int(k) if i % 4 else int(rng.integers(0, n_layers)) for i, k in enumerate(upper)]
        for k in ks:
            if len(out) < count:
                out.append(build.layer(k))
        b += 1
    return out


def scenario_spec(
    seed: int, size: int = 512, n_layers: int = 40, *, warp_start: int | None = None, pores: int = 6
) -> BuildSpec:
    """A fixed, readable build for demos and end-to-end tests: two parts (a box and a cylinder) on a
    51 mm plate at 0.1 mm/px scaled to ``size``, a few small pores, light spatter, and, when
    ``warp_start`` is given, warping that starts at the box's corner on that layer and grows every layer.
    ``seed`` drives the appearance (lighting, texture, noise) and the pore positions."""
    rng = _rng(seed, 7)
    mmpp = 0.1 * 512 / size
    plate = size * mmpp
    box = PartSpec(1, "box", 0.38 * plate, 0.42 * plate, 0.16 * plate, 0.12 * plate, 0.15, 0, n_layers)
    cyl = PartSpec(2, "cylinder", 0.72 * plate, 0.66 * plate, 0.11 * plate, 0.11 * plate, 0.0, 0, n_layers)
    pore_specs = []
    for _ in range(pores):
        p = box if rng.random() < 0.6 else cyl
        cx, cy = _part_point(p, float(rng.uniform(-0.7, 0.7)), float(rng.uniform(-0.7, 0.7)))
        r = float(rng.uniform(0.2, 0.4))
        pore_specs.append(PoreSpec(p.part_id, cx, cy, float(rng.uniform(1, n_layers - 1)), r, r, 1.5, 0.0, False))
    warps: tuple[WarpSpec, ...] = ()
    if warp_start is not None:
        x, y = _part_point(box, 1.0, 1.0)
        warps = (WarpSpec(1, x, y, warp_start, 0.3 * box.half_h, 0.12 * box.half_h, 1.4 * box.half_h, 3.0),)
    return BuildSpec(
        seed=seed, height=size, width=size, n_layers=n_layers, mm_per_px=mmpp, layer_thickness=0.04, color=False,
        bit_depth=8, parts=(box, cyl), pores=tuple(pore_specs), warps=warps, spatter_rate=15.0, recoat_axis=0,
    )  # fmt: skip
