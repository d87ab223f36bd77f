"""Simulator of top-down layer camera images with pixel-exact class masks.

A :class:`SimBuild` is a stack of layers over several parts of varied geometry (boxes, cylinders,
thin walls, rings, overhangs). Defects are 3D-coherent: a pore is an ellipsoid spanning a few
layers, warping starts at a part's corner and grows over consecutive layers, spatter is new on
every layer.

Appearance is randomised per build and per layer so that a model learns defects, not one
renderer's (or one camera's) habits (domain randomisation, :class:`Look`):

- parts brighter, darker or about as bright as the powder, or freshly melted and much brighter
  with specular glints; scan-track hatching whose angle rotates every layer;
- defects of both polarities: bright or dark spatter, dark pits and pores with or without a lit
  wall or a bright rim, lifted corners brighter, darker or rough (warping is geometry: a lifted
  rim outside the part's outline, with a shadow, never a uniformly bright part);
- distractors that are *not* defects: powder grain, dark speckle, dark powder clumps, recoater
  streaks, uneven-spreading bands, ghosts of parts under the powder, chamber walls, rails, screws
  and the plate edge around the plate;
- the camera: linear gradients, falloff bands, vignetting, light blobs, gain, gamma, contrast,
  blur, read and shot noise, JPEG, colour tint, 16-bit, 0.05 to 0.12 mm per pixel.

A layer can also be drawn over a *real* frame (``layer(k, background=...)``): the parts and
defects are painted relative to the real frame's local brightness, and its pixels keep the label
given for them (powder, or "no defect here" where it is not known).

Everything is deterministic by seed: ``SimBuild(seed).layer(k)`` always returns the same arrays.

Rendering rule that keeps masks exact: every defect pixel of the mask is painted with the defect's
appearance and no pixel outside the mask is; blur and noise are applied afterwards to the whole
frame, as a camera would. Chamber hardware occludes: its pixels are background (class 0).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field

import cv2
import numpy as np
from scipy import ndimage

from segmentation.classes import LayerClass
from segmentation.simspec import (
    _MIN_PORE_RADIUS_PX,
    FEATURES,
    BuildSpec,
    Look,
    PartSpec,
    PoreSpec,
    WarpSpec,
    _draw_look,
    _random_spec,
    _rng,
    random_spec,
    scenario_spec,
)  # fmt: skip

__all__ = [
    "FEATURES",
    "BuildSpec",
    "Look",
    "PartSpec",
    "PoreSpec",
    "SimBuild",
    "SimLayer",
    "WarpSpec",
    "dataset_layers",
    "random_spec",
    "scenario_spec",
    "simulate_dataset",
    "simulate_scenarios",
]


@dataclass
class SimLayer:
    """One rendered layer.

    ``image``: (H, W) gray or (H, W, 3) RGB, uint8 or uint16; ``mask``: (H, W) uint8 class ids
    (254, "no defect here", where drawn over a real frame whose pixels are not known);
    ``part_ids``: (H, W) uint32, 0 where no part; ``index``: layer index from 0; ``z``: mm.
    """

    image: np.ndarray
    mask: np.ndarray
    part_ids: np.ndarray
    index: int
    z: float
    meta: dict[str, float] = field(default_factory=dict)


def _erode_px(mask: np.ndarray, px: int) -> np.ndarray:
    """``mask`` eroded by a disk of radius ``px``."""
    k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * px + 1, 2 * px + 1))
    return np.asarray(cv2.erode(mask.astype(np.uint8), k, borderType=cv2.BORDER_REPLICATE) > 0)


def _dilate_px(mask: np.ndarray, px: int) -> np.ndarray:
    k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * px + 1, 2 * px + 1))
    return np.asarray(cv2.dilate(mask.astype(np.uint8), k) > 0)


def _blur(img: np.ndarray, sigma: float) -> np.ndarray:
    return np.asarray(cv2.GaussianBlur(img, (0, 0), sigma, borderType=cv2.BORDER_REFLECT))


class SimBuild:
    """A simulated build: ``layer(k)`` renders layer ``k`` (0 <= k < n_layers).

    Args:
        seed: determines geometry, defects and appearance.
        height, width: frame size in px.
        n_layers: layers in the build.
        spec: use this exact spec instead of a random one (``seed`` still drives appearance; its ``features``
            the looks drawn).
        features: the looks beyond the first revision's a random build draws (FEATURES: all of them).
    """

    def __init__(
        self,
        seed: int,
        height: int = 512,
        width: int = 512,
        n_layers: int = 60,
        spec: BuildSpec | None = None,
        features: frozenset[str] = FEATURES,
    ) -> None:
        if height < 32 or width < 32:
            raise ValueError(f"frame size {height}x{width} is too small: at least 32x32 px")
        if n_layers < 1:
            raise ValueError(f"n_layers={n_layers}: a build needs at least one layer")
        self.spec = spec if spec is not None else _random_spec(seed, height, width, n_layers, features)
        self.seed = seed
        s = self.spec
        yy, xx = np.mgrid[0 : s.height, 0 : s.width].astype(np.float32)
        self._xx_mm = (xx + 0.5) * s.mm_per_px
        self._yy_mm = (yy + 0.5) * s.mm_per_px
        self._xx = xx
        self._yy = yy
        self.look = _draw_look(seed, s.color, s.features)
        self._hardware, self._hardware_img = self._chamber()
        self._ghost_shapes = self._ghost_field()

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
            extra = p.growth * (min(k, p.z1 - 1) - p.z0)
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

    def _pits(self, rng: np.random.Generator, part: np.ndarray) -> np.ndarray:
        """Small single-layer pits (holes of 1.3-3 px radius) in the part: porosity too."""
        s = self.spec
        mask = np.zeros(part.shape, dtype=bool)
        area_mm2 = float(part.sum()) * s.mm_per_px**2
        n = int(rng.poisson(self.look.pit_rate * area_mm2 / 100.0))
        if n == 0:
            return mask
        ys, xs = np.nonzero(part)
        for _ in range(min(n, 40)):
            i = int(rng.integers(ys.size))
            r = float(rng.uniform(_MIN_PORE_RADIUS_PX, 3.0))
            e = float(rng.uniform(0.6, 1.0))
            cv2.ellipse(
                mask.view(np.uint8),
                (int(xs[i]), int(ys[i])),
                (max(1, round(r)), max(1, round(r * e))),
                float(rng.uniform(0, 180)),
                0,
                360,
                1,
                -1,
            )
        return mask & part

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
            extent = w.extent(k)
            if extent <= 0:
                continue
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

    # ---- rendering ------------------------------------------------------------------------------
    def layer(self, k: int, background: np.ndarray | None = None, background_label: int = 0) -> SimLayer:
        """Render layer ``k``: image, exact mask and part ids.

        ``background``: an (H, W) float32 gray frame in [0, 1] of a real camera to draw the layer
        over (its lighting, texture and fixtures are kept; no simulated chamber or lighting is added);
        its pixels are labelled ``background_label`` (0 powder, or 254 "no defect here").
        """
        s = self.spec
        lk = self.look
        if not 0 <= k < s.n_layers:
            raise IndexError(f"layer {k} outside the build (0..{s.n_layers - 1})")
        if background is not None and background.shape != (s.height, s.width):
            raise ValueError(f"background is {background.shape}, the build's frames are {(s.height, s.width)}")
        rng = _rng(self.seed, 3, k)
        h, w = s.height, s.width
        ids = self.part_ids(k)
        part = ids > 0
        if background is None:
            part &= ~self._hardware
        pores = self._pore_mask(k, ids) & part
        pores |= self._pits(rng, part & ~pores)
        warp, ramp = self._warp_mask(k, ids)
        if background is None:
            warp &= ~self._hardware

        grain = _blur(rng.normal(0, 1, (h, w)).astype(np.float32), float(rng.uniform(0.6, 1.4)))
        grain /= max(0.2, float(grain.std()))
        img: np.ndarray
        if background is None:
            drift = lk.drift_amp * math.sin(lk.drift_phase + 2 * math.pi * k / max(8, s.n_layers))
            powder: np.ndarray = np.full((h, w), lk.powder + drift + float(rng.normal(0, 0.015)), np.float32)
            # powder: grain texture + streaks + smudges + clumps + speckle + ghosts (not defects)
            img = powder + grain * float(rng.uniform(0.015, 0.06))
            img += self._streaks(rng)
            img += self._smudges(rng)
            img += self._clumps(rng, powder)
            img += self._ghosts(k) * lk.ghost
            delta = lk.part_delta * float(rng.uniform(0.85, 1.15))
            part_level = powder + delta
        else:
            img = background.astype(np.float32).copy()
            # the real frame's local brightness: parts and defects are drawn relative to it
            powder = _blur(img, 6.0)
            rel = lk.part_delta / max(lk.powder, 0.1) * float(rng.uniform(0.85, 1.15))
            part_level = powder * (1.0 + rel)
            delta = lk.part_delta
        speckle = self._speckle(rng, (h, w)) * lk.speckle

        # part: scan-track hatching rotating layer by layer, border contour, glints when fresh
        theta = lk.hatch_angle0 + k * math.radians(67)
        phase = (self._xx * math.cos(theta) + self._yy * math.sin(theta)) * (2 * math.pi / lk.hatch_period)
        hatch = np.sin(phase) * lk.hatch_amp * float(rng.uniform(0.6, 1.4))
        part_tex = part_level + hatch + grain * 0.012 + speckle
        if lk.part_mode == "fresh":
            glint = np.maximum(rng.normal(0, 1, (h, w)).astype(np.float32) - 2.2, 0) * 0.25
            part_tex += _blur(glint, 0.7) + 0.1 * _blur(rng.normal(0, 1, (h, w)).astype(np.float32), 4.0)
        exposed = _rng(self.seed, 15, k) if lk.part_mode == "exposed" else None
        if exposed is not None:
            # right after exposure: thin bright scan tracks at the layer's angle over the part's own level
            tracks = (0.5 + 0.5 * np.sin(phase)) ** lk.track_power
            part_tex = part_level + tracks * lk.hatch_amp * float(exposed.uniform(0.7, 1.3)) + grain * 0.012 + speckle
        holes = self._holes(k, img, powder, part if background is not None else part | self._hardware)
        img = np.where(part, part_tex, img + speckle * 0.7)
        contour = part & ~ndimage.binary_erosion(part, iterations=1)
        img[contour] += delta * float(rng.uniform(-0.2, 0.4))
        if exposed is not None:
            self._contours(exposed, img, part, powder)

        # porosity: dark voids; a lit far wall, plain dark or a bright rim
        dark_level = np.minimum(part_level, powder)
        if pores.any():
            depth = float(rng.uniform(0.15, 0.4))
            if lk.pore_style == "lit":
                lx, ly = math.cos(lk.light), math.sin(lk.light)
                shade = _blur(pores.astype(np.float32), 1.0)
                gy, gx = np.gradient(shade)
                lit = np.clip(-(gx * lx + gy * ly) * 3, 0, 1)
                img[pores] = (dark_level - depth + 0.15 * lit)[pores]
            else:
                img[pores] = (dark_level - depth)[pores]
                if lk.pore_style == "rim":
                    rim = ndimage.binary_dilation(pores, iterations=1) & ~pores & part
                    img[rim] += 0.12

        # warping: lifted material near a corner, its rim outside the outline, a shadow beside it
        if warp.any():
            lift = float(rng.uniform(0.2, 0.4))
            rough = _blur(rng.normal(0, 1, (h, w)).astype(np.float32), 1.2)
            rough /= max(float(rough.std()), 1e-6)
            # a tilted surface: shading ramps towards the lifted corner, the scan tracks are smeared
            if lk.warp_style == "bright":
                base = np.maximum(part_level, powder) + 0.5 * lift
                wimg = base + lift * 0.6 * ramp + 0.015 * rough
            elif lk.warp_style == "dark":
                base = np.minimum(part_level, powder) - 0.35 * lift
                wimg = base - lift * 0.5 * ramp + 0.015 * rough
            else:
                sign = float(rng.choice([-1.0, 1.0]))
                wimg = part_level + sign * lift * (0.25 + 0.5 * ramp) + 0.06 * rough
            img[warp] = wimg[warp]
            edge = warp & ~ndimage.binary_erosion(warp, iterations=1) & ~part
            img[edge] += 0.1 if lk.warp_style == "dark" else 0.03
            # shadow cast on the powder beside the rim (not labelled: it is powder)
            shadow = ndimage.binary_dilation(warp, iterations=2) & ~warp & ~part
            img[shadow] -= float(rng.uniform(0.04, 0.12))

        mask = np.where(part, LayerClass.PART, LayerClass.POWDER).astype(np.uint8)
        if background is not None:
            mask[~part] = background_label
        mask[pores | holes] = LayerClass.POROSITY
        mask[warp] = LayerClass.WARPING
        self._spatter(rng, img, mask, part, powder, part_level, occluded=self._hardware if background is None else None)

        if background is None:
            img = np.where(self._hardware, self._hardware_img * (0.85 + 0.3 * powder), img)
            img = self._camera(rng, img)
        else:
            img = self._light_camera(rng, img)
        return SimLayer(
            image=self._encode(rng, img),
            mask=mask,
            part_ids=np.where(mask == LayerClass.POWDER, 0, ids).astype(np.uint32) if background is None else ids,
            index=k,
            z=round((k + 1) * s.layer_thickness, 6),
            meta={"mm_per_px": s.mm_per_px, "layer_thickness": s.layer_thickness},
        )

    def _contours(self, rng: np.random.Generator, img: np.ndarray, part: np.ndarray, powder: np.ndarray) -> None:
        """An exposed part's contour scan: a bright line along its outline (and sometimes a second one just
        inside), often the brightest thing in the frame, so thin walls and rings are bright lines and circles."""
        lk = self.look
        width = max(1, round(lk.contour_px * float(rng.uniform(0.8, 1.2))))
        inner = _erode_px(part, width)
        img[part & ~inner] = (powder + lk.contour_level * float(rng.uniform(0.85, 1.15)))[part & ~inner]
        if lk.second_contour:
            gap = int(rng.integers(1, 4))
            outer2 = _erode_px(part, width + gap)
            band = outer2 & ~_erode_px(part, 2 * width + gap)
            img[band] = (powder + 0.8 * lk.contour_level * float(rng.uniform(0.85, 1.15)))[band]

    def _holes(self, k: int, img: np.ndarray, powder: np.ndarray, blocked: np.ndarray) -> np.ndarray:
        """Holes in the fresh powder (porosity): small dark pits and faint dark rings, 1.5-7 px in radius, away
        from parts and hardware; painted into ``img`` in place. Returns the (H, W) bool mask of their disks."""
        s = self.spec
        mask = np.zeros((s.height, s.width), dtype=bool)
        if self.look.holes <= 0:
            return mask
        rng = _rng(self.seed, 13, k)
        near = _dilate_px(blocked, 3)
        for _ in range(min(int(rng.poisson(self.look.holes)), 30)):
            r = float(rng.uniform(1.5, 7.0))
            cx, cy = float(rng.uniform(r + 1, s.width - r - 1)), float(rng.uniform(r + 1, s.height - r - 1))
            x0, x1 = int(cx - r - 1), int(cx + r + 2)
            y0, y1 = int(cy - r - 1), int(cy + r + 2)
            if near[y0:y1, x0:x1].any():
                continue
            d = np.hypot(self._xx[y0:y1, x0:x1] + 0.5 - cx, self._yy[y0:y1, x0:x1] + 0.5 - cy)
            disk = d <= r
            if rng.random() < 0.45:  # a faint ring: the crater's rim in shadow, its floor near the powder's level
                depth = float(rng.uniform(0.04, 0.14))
                profile = depth * np.exp(-(((d - 0.72 * r) / max(0.6, 0.22 * r)) ** 2))
            else:  # a pit: darkest at its centre
                depth = float(rng.uniform(0.06, 0.3))
                profile = depth * np.sqrt(np.clip(1 - (d / r) ** 2, 0, 1))
            level = np.maximum(powder[y0:y1, x0:x1], 0.12) / 0.4  # deeper on brighter powder, as a shadow is
            img[y0:y1, x0:x1] -= np.where(disk, profile * level, 0).astype(np.float32)
            mask[y0:y1, x0:x1] |= disk
        return mask

    # ---- distractors (never labelled as defects) --------------------------------------------------
    def _streaks(self, rng: np.random.Generator) -> np.ndarray:
        s = self.spec
        n = int(rng.poisson(self.look.streaks))
        prof = np.zeros(s.width if s.recoat_axis == 0 else s.height, dtype=np.float32)
        x = np.arange(prof.size, dtype=np.float32)
        for _ in range(n):
            c = float(rng.uniform(0, prof.size))
            width = float(rng.uniform(0.6, 4.0))
            amp = self.look.streak_amp
            prof += float(rng.uniform(-amp, amp)) * np.exp(-0.5 * ((x - c) / width) ** 2)
        # streaks run along the recoating direction across the whole plate
        return np.asarray(
            np.broadcast_to(prof[None, :], (s.height, s.width))
            if s.recoat_axis == 0
            else np.broadcast_to(prof[:, None], (s.height, s.width))
        )

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
        if rng.random() < self.look.uneven:
            # bands across the recoating direction where the blade spread unevenly, wavy at their edges
            n = s.height if s.recoat_axis == 0 else s.width
            prof = ndimage.gaussian_filter1d(rng.normal(0, 1, n), float(rng.uniform(3, 25)))
            prof = (prof / max(float(np.abs(prof).max()), 1e-6) * float(rng.uniform(0.02, 0.12))).astype(np.float32)
            band = np.broadcast_to(prof[:, None] if s.recoat_axis == 0 else prof[None, :], (s.height, s.width))
            wobble = _blur(rng.normal(0, 1, (s.height, s.width)).astype(np.float32), 12.0)
            field += band * (1.0 + 4.0 * wobble)
        return field

    def _clumps(self, rng: np.random.Generator, powder: np.ndarray) -> np.ndarray:
        """Dark (sometimes bright) powder clumps and thin patches, 3-15 px, soft edges."""
        s = self.spec
        n = int(rng.poisson(self.look.clumps))
        field = np.zeros((s.height, s.width), dtype=np.float32)
        for _ in range(n):
            cx, cy = int(rng.uniform(0, s.width)), int(rng.uniform(0, s.height))
            r = float(rng.uniform(3, 15))
            amp = float(rng.uniform(0.03, 0.12)) * (-1.0 if rng.random() < 0.75 else 1.0)
            cv2.ellipse(
                field,
                (cx, cy),
                (round(r), round(r * rng.uniform(0.4, 1.0))),
                float(rng.uniform(0, 180)),
                0,
                360,
                amp,
                -1,
            )
        return _blur(field, 2.0) if n else field

    def _speckle(self, rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
        """Dark specks of at most 1 px: powder texture and sensor dust, never porosity or spatter."""
        if self.look.speckle <= 0:
            return np.zeros(shape, np.float32)
        u = rng.random(shape).astype(np.float32)
        specks = (u < 0.01).astype(np.float32) * -rng.uniform(0.4, 1.0, shape).astype(np.float32)
        return _blur(specks, 0.5)

    def _ghost_field(self) -> np.ndarray:
        """Faint shapes under the powder (parts of earlier layers), fixed for the build."""
        s = self.spec
        rng = _rng(self.seed, 5)
        field = np.zeros((s.height, s.width), dtype=np.float32)
        for _ in range(int(rng.integers(0, 4))):
            cx, cy = int(rng.uniform(0.1, 0.9) * s.width), int(rng.uniform(0.1, 0.9) * s.height)
            a = int(rng.uniform(0.03, 0.15) * s.width)
            b = int(a * rng.uniform(0.3, 1.0))
            sign = float(rng.choice([-1.0, 1.0]))
            if rng.random() < 0.5:
                cv2.ellipse(field, (cx, cy), (a, b), float(rng.uniform(0, 180)), 0, 360, sign, -1)
            else:
                cv2.rectangle(field, (cx - a, cy - b), (cx + a, cy + b), sign, -1)
        return _blur(field, 1.5)

    def _ghosts(self, k: int) -> np.ndarray:
        """Shapes under the powder: parts that ended in the last few layers and the build's fixed ghosts."""
        if self.look.ghost <= 0:
            return np.zeros_like(self._ghost_shapes)
        field = self._ghost_shapes.copy()
        for p in self.spec.parts:
            if p.z1 <= k < p.z1 + 6:
                field += self._part_mask(p, k).astype(np.float32) * float(np.sign(self.look.part_delta) or 1.0)
        return field

    def _chamber(self) -> tuple[np.ndarray, np.ndarray]:
        """Chamber hardware around the plate: walls, rails, screws, the plate's edge. (H, W) bool
        where hardware hides the plate, and its brightness relative to the powder level."""
        s = self.spec
        lk = self.look
        rng = _rng(self.seed, 6)
        h, w = s.height, s.width
        hw = np.zeros((h, w), dtype=bool)
        val = np.ones((h, w), dtype=np.float32) * lk.powder * lk.wall_gain
        texture = _blur(rng.normal(0, 1, (h, w)).astype(np.float32), 2.0) * 0.04
        if any(lk.walls):
            bh = [int(lk.wall_width[i] * h) for i in (0, 1)]
            bw = [int(lk.wall_width[i] * w) for i in (2, 3)]
            if lk.walls[0]:
                hw[: bh[0]] = True
            if lk.walls[1]:
                hw[h - bh[1] :] = True
            if lk.walls[2]:
                hw[:, : bw[0]] = True
            if lk.walls[3]:
                hw[:, w - bw[1] :] = True
        for i in range(lk.rails):
            # a bright metal bar beside the plate, with a specular line along it
            width = max(2, int(rng.uniform(0.01, 0.03) * min(h, w)))
            pos = int(rng.uniform(0.0, 0.06) * (w if s.recoat_axis == 0 else h))
            pos = pos if i == 0 else (w if s.recoat_axis == 0 else h) - pos - width
            bar = np.zeros((h, w), dtype=bool)
            if s.recoat_axis == 0:
                bar[:, pos : pos + width] = True
            else:
                bar[pos : pos + width, :] = True
            hw |= bar
            gain = float(rng.uniform(1.3, 2.0))
            val[bar] = lk.powder * gain
            line = pos + width // 2
            if s.recoat_axis == 0:
                val[:, line] = min(1.0, lk.powder * gain * 1.3)
            else:
                val[line, :] = min(1.0, lk.powder * gain * 1.3)
        if lk.screws:
            r = max(3, int(rng.uniform(0.02, 0.04) * min(h, w)))
            m = int(rng.uniform(0.03, 0.07) * min(h, w)) + r
            for cx, cy in ((m, m), (w - m, m), (m, h - m), (w - m, h - m)):
                disc = np.zeros((h, w), np.uint8)
                cv2.circle(disc, (cx, cy), r, 1, -1)
                d = disc.astype(bool)
                hw |= d
                val[d] = lk.powder * float(rng.choice([0.4, 1.6]))
        if lk.plate_edge:
            m = int(rng.uniform(0.02, 0.06) * min(h, w))
            frame = np.zeros((h, w), np.uint8)
            cv2.rectangle(frame, (m, m), (w - 1 - m, h - 1 - m), 1, max(1, int(rng.integers(1, 3))))
            f = frame.astype(bool) & ~hw
            hw |= f
            val[f] = lk.powder + lk.plate_edge
        return hw, (val + texture).astype(np.float32)

    # ---- defects drawn per layer ------------------------------------------------------------------
    def _spatter(
        self,
        rng: np.random.Generator,
        img: np.ndarray,
        mask: np.ndarray,
        part: np.ndarray,
        powder: np.ndarray,
        part_level: np.ndarray,
        occluded: np.ndarray | None = None,
    ) -> None:
        s = self.spec
        n = int(rng.poisson(s.spatter_rate))
        near = ndimage.binary_dilation(part, iterations=int(min(s.height, s.width) * 0.06))
        ys, xs = np.nonzero(near)
        lx, ly = math.cos(self.look.light), math.sin(self.look.light)
        for _ in range(n):
            if ys.size and rng.random() < 0.8:
                i = int(rng.integers(ys.size))
                cy, cx = float(ys[i] + rng.uniform(-0.5, 0.5)), float(xs[i] + rng.uniform(-0.5, 0.5))
            else:
                cy, cx = float(rng.uniform(0, s.height)), float(rng.uniform(0, s.width))
            # at least 1.2 px: a smaller particle is lost in camera noise, and labelling it teaches guessing
            r = float(rng.uniform(1.2, 3.2))
            y0, y1 = max(0, int(cy - r - 3)), min(s.height, int(cy + r + 4))
            x0, x1 = max(0, int(cx - r - 3)), min(s.width, int(cx + r + 4))
            if y0 >= y1 or x0 >= x1:
                continue
            dy = self._yy[y0:y1, x0:x1] - cy
            dx = self._xx[y0:y1, x0:x1] - cx
            d2 = dx * dx + dy * dy
            disk = d2 <= r * r
            if occluded is not None:
                disk &= ~occluded[y0:y1, x0:x1]
            if not disk.any():
                continue
            local = np.maximum(powder[y0:y1, x0:x1], part_level[y0:y1, x0:x1])
            low = np.minimum(powder[y0:y1, x0:x1], part_level[y0:y1, x0:x1])
            dark = self.look.spatter == "dark" or (self.look.spatter == "mixed" and rng.random() < 0.5)
            if dark:
                vals = low - float(rng.uniform(0.15, 0.35)) + 0.08 * d2 / (r * r)
            else:
                # small shadow on the side away from the light, outside the particle
                sh = ((dx + lx * r * 0.8) ** 2 + (dy + ly * r * 0.8) ** 2 <= r * r) & ~disk
                img[y0:y1, x0:x1][sh] -= 0.06
                vals = local + float(rng.uniform(0.2, 0.45)) - 0.12 * d2 / (r * r)
            img[y0:y1, x0:x1][disk] = vals[disk].astype(np.float32)
            mask[y0:y1, x0:x1][disk] = LayerClass.SPATTER

    # ---- camera -----------------------------------------------------------------------------------
    def _camera(self, rng: np.random.Generator, img: np.ndarray) -> np.ndarray:
        s = self.spec
        lk = self.look
        xn = self._xx / s.width - 0.5
        yn = self._yy / s.height - 0.5
        # illumination: linear gradient, vignetting, a falloff band, broad blobs, per-layer gain
        g = rng.normal(0, 1, 2)
        g = g / max(float(np.hypot(*g)), 1e-6) * lk.gradient * float(rng.uniform(0.7, 1.3))
        illum = 1.0 + g[0] * xn + g[1] * yn - lk.vignette * float(rng.uniform(0.7, 1.3)) * (xn * xn + yn * yn) * 2
        if lk.falloff:
            a = lk.light
            t = np.cos(a) * xn + np.sin(a) * yn  # -0.7..0.7 across the frame
            illum = illum * (1.0 - lk.falloff * np.clip((t - 0.15) / 0.5, 0, 1) ** 1.5)
        for _ in range(lk.blobs):
            cx, cy, r = rng.uniform(-0.3, 1.3), rng.uniform(-0.3, 1.3), rng.uniform(0.15, 0.5)
            illum += float(rng.uniform(-0.25, 0.25)) * np.exp(
                -((self._xx / s.width - cx) ** 2 + (self._yy / s.height - cy) ** 2) / (2 * r * r)
            )
        img = img * np.maximum(illum, 0.05)
        mean = float(img.mean())
        img = mean + (img - mean) * lk.contrast * float(rng.uniform(0.9, 1.1))
        sigma = lk.blur * float(rng.uniform(0.5, 1.2))
        if sigma > 0.3:
            img = _blur(img.astype(np.float32), sigma)
        shot = np.sqrt(np.clip(img, 0, 1)) * lk.shot
        img = img + rng.normal(0, 1, img.shape).astype(np.float32) * (lk.noise + shot)
        gain = float(rng.uniform(0.8, 1.2))
        gamma = lk.gamma_mid * float(rng.uniform(0.9, 1.1))
        img = np.clip(np.clip(img * gain, 0, 1) ** gamma, 0, 1).astype(np.float32)
        return self._jpeg(img)

    def _light_camera(self, rng: np.random.Generator, img: np.ndarray) -> np.ndarray:
        """Over a real frame: only what a second capture would add (a little noise, JPEG)."""
        img = img + rng.normal(0, float(rng.uniform(0.0, 0.012)), img.shape).astype(np.float32)
        return self._jpeg(np.clip(img, 0, 1).astype(np.float32))

    def _jpeg(self, img: np.ndarray) -> np.ndarray:
        if not self.look.jpeg_quality:
            return img
        # compression artefacts of cameras that only stream JPEG
        ok, buf = cv2.imencode(".jpg", (img * 255).astype(np.uint8), [cv2.IMWRITE_JPEG_QUALITY, self.look.jpeg_quality])
        dec = cv2.imdecode(buf, cv2.IMREAD_GRAYSCALE) if ok else None
        return dec.astype(np.float32) / 255.0 if dec is not None else img

    def _encode(self, rng: np.random.Generator, img: np.ndarray) -> np.ndarray:
        s = self.spec
        if s.color:
            tint = np.asarray(self.look.tint, dtype=np.float32)
            rgb = img[..., None] * tint[None, None, :]
            rgb += rng.normal(0, 0.006, rgb.shape).astype(np.float32)
            img = np.clip(rgb, 0, 1)
        if s.bit_depth == 16:
            return (img * 65535 + 0.5).astype(np.uint16)
        return (img * 255 + 0.5).astype(np.uint8)


def simulate_dataset(
    seed: int,
    count: int,
    height: int = 512,
    width: int = 512,
    layers_per_build: int = 4,
    features: frozenset[str] = FEATURES,
) -> list[SimLayer]:
    """``count`` layers drawn from ``ceil(count / layers_per_build)`` builds seeded from ``seed``.

    Three of every four layers come from the upper part of a build, where warping has had time to
    grow; the others from anywhere, so that early layers and layers without parts are seen too.
    """
    return [build.layer(k) for build, k in dataset_layers(seed, count, height, width, layers_per_build, features)]


def dataset_layers(
    seed: int,
    count: int,
    height: int = 512,
    width: int = 512,
    layers_per_build: int = 4,
    features: frozenset[str] = FEATURES,
) -> Iterator[tuple[SimBuild, int]]:
    """The builds and layer indices :func:`simulate_dataset` renders, without rendering them (a caller
    that needs a build's other layers, e.g. its first for the plate, renders them itself)."""
    n = 0
    b = 0
    n_layers = 40
    while n < count:
        build_seed = seed * 100_003 + b
        build = SimBuild(build_seed, height, width, n_layers, features=features)
        rng = _rng(build_seed, 9)
        upper = rng.choice(np.arange(8, n_layers), size=layers_per_build, replace=False)
        ks = [int(k) if i % 4 else int(rng.integers(0, n_layers)) for i, k in enumerate(upper)]
        for k in ks:
            if n < count:
                n += 1
                yield build, k
        b += 1


def simulate_scenarios(seed: int, count: int, size: int = 512, n_layers: int = 30) -> list[SimLayer]:
    """``count`` layers of scenario builds (:func:`scenario_spec`): a box and a cylinder, warped from a
    random layer with a slow (0.2-1 mm² a layer) or fast warp, or clean; layers drawn from the whole
    build, half of them from the few layers after the warp starts, where it is smallest."""
    out: list[SimLayer] = []
    b = 0
    while len(out) < count:
        build_seed = seed * 100_003 + b
        rng = _rng(build_seed, 11)
        warped = rng.random() < 0.75
        start = int(rng.integers(4, n_layers - 8))
        growth = float(rng.uniform(0.2, 1.0)) if rng.random() < 0.8 else 0.0
        spec = scenario_spec(build_seed, size, n_layers, warp_start=start if warped else None, warp_area_growth=growth)
        build = SimBuild(build_seed, size, size, n_layers, spec=spec)
        for i in range(4):
            k = int(rng.integers(start, min(n_layers, start + 7))) if i % 2 else int(rng.integers(0, n_layers))
            if len(out) < count:
                out.append(build.layer(k))
        b += 1
    return out
