"""What a simulated build is, before it is drawn: its parts, pores, warps and look (:mod:`segmentation.simulator`
draws it). Random builds draw their specs here (domain randomisation), scenario builds are fixed and readable."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

__all__ = [
    "FEATURES", "BuildSpec", "Look", "PartSpec", "PoreSpec", "WarpSpec", "random_spec", "scenario_spec",
]  # fmt: skip

#: Looks the simulator draws beyond its first revision's, each from a random stream of its own (so a build without
#: them renders exactly as before): "exposed" (an after-exposure camera: bright contour lines around bright scan
#: tracks) and "holes" (dark pits and faint rings in the fresh powder). A model's checkpoint says which it was
#: trained with (``simulator_features``; none for models older than them).
FEATURES: frozenset[str] = frozenset({"exposed", "holes"})

PartKind = Literal["box", "cylinder", "thin_wall", "ring", "overhang"]
PART_KINDS: tuple[PartKind, ...] = ("box", "cylinder", "thin_wall", "ring", "overhang")
PartMode = Literal["brighter", "darker", "similar", "fresh", "exposed"]
Polarity = Literal["bright", "dark", "mixed"]

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
    """Warping that starts at a corner (x, y) mm of a part at ``start`` and grows each layer.

    The lifted region is the part and a rim just outside its outline within ``extent`` mm of the
    corner. ``extent`` grows by ``growth`` mm a layer from ``extent0``; or, when ``area_growth``
    is set, so that the lifted area grows by about that many mm² a layer from ``area0`` (slow warps).
    """

    part_id: int
    x: float
    y: float
    start: int
    extent0: float  # mm at the first layer
    growth: float  # mm per layer
    max_extent: float  # mm
    rim_px: float  # width of the lifted rim outside the part outline, px
    area0: float = 0.0  # mm², with area_growth
    area_growth: float = 0.0  # mm² per layer; 0: extent grows linearly instead

    def extent(self, k: int) -> float:
        """Radius (mm) of the lifted region around the corner at layer ``k >= start``."""
        if self.area_growth > 0:
            # a quarter disc of radius e at a right-angled corner has area pi e^2 / 4
            area = self.area0 + self.area_growth * (k - self.start)
            return min(self.max_extent, math.sqrt(4.0 * area / math.pi))
        return min(self.max_extent, self.extent0 + self.growth * (k - self.start))


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
    # looks added after the first models were trained (FEATURES): a random build draws them, a scenario build
    # (demos, end-to-end tests, policy replays) does not unless asked, so that it looks as it always did
    features: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Look:
    """How one build looks (drawn from its seed): materials, distractors, chamber and camera."""

    powder: float  # powder gray level in [0, 1]
    part_mode: PartMode
    part_delta: float  # part level minus powder level (signed)
    hatch_angle0: float
    hatch_period: float  # px
    hatch_amp: float
    light: float  # direction light comes from (radians)
    drift_phase: float
    drift_amp: float
    streaks: int  # recoater streaks per layer (mean)
    streak_amp: float
    uneven: float  # probability of uneven-spreading bands on a layer
    clumps: int  # dark powder clumps per layer (mean)
    speckle: float  # amplitude of dark speckle on powder and parts
    ghost: float  # contrast of parts under the powder (ghosts of earlier layers)
    spatter: Polarity
    pore_style: Literal["lit", "dark", "rim"]
    warp_style: Literal["bright", "dark", "rough"]
    pit_rate: float  # small single-layer pits per 100 mm² of part and layer
    gradient: float  # strength of the linear illumination gradient
    vignette: float
    falloff: float  # a band of the frame falling off into darkness
    blobs: int
    gamma_mid: float
    contrast: float
    noise: float
    shot: float
    blur: float
    jpeg_quality: int  # 0: no JPEG
    tint: tuple[float, float, float]
    walls: tuple[bool, bool, bool, bool]  # top, bottom, left, right
    wall_width: tuple[float, float, float, float]  # share of the frame
    wall_gain: float  # <1 dark walls, >1 bright metal
    rails: int  # bright rails along the recoating direction, beside the plate
    screws: bool
    plate_edge: float  # contrast of the plate's edge line (0: none)
    # "exposed" parts (an after-exposure camera): a bright contour line (px wide), sometimes two, around an
    # interior of bright scan tracks of this sharpness (a higher power: thinner tracks)
    contour_px: float = 0.0
    contour_level: float = 0.0  # above the powder; near or past saturation
    second_contour: bool = False
    track_power: float = 1.0
    holes: float = 0.0  # holes in the fresh powder (pits and faint rings, porosity) per layer, mean


def _rng(*keys: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([abs(int(k)) for k in keys]))


def _first_if(cond: bool, a: float, b: float) -> float:
    return a if cond else b


def _draw_look(seed: int, color: bool, features: frozenset[str] = FEATURES) -> Look:
    rng = _rng(seed, 2)
    mode: PartMode = ("brighter", "darker", "similar", "fresh")[int(rng.choice(4, p=[0.4, 0.25, 0.12, 0.23]))]
    # drawn from streams of their own, so that every other build looks exactly as before they existed
    extra = _rng(seed, 12)
    exposed = bool(extra.random() < 0.22) and "exposed" in features
    contour_px = float(extra.uniform(1.0, 3.2))
    contour_level = float(extra.uniform(0.35, 0.9))
    second_contour = bool(extra.random() < 0.4)
    track_power = float(extra.uniform(1.5, 8.0))
    exposed_delta = float(extra.uniform(-0.08, 0.22))  # the interior: darker than the powder up to much brighter
    exposed_amp = float(extra.uniform(0.1, 0.45))
    holes = float(extra.uniform(0.5, 8.0)) if extra.random() < 0.35 and "holes" in features else 0.0
    powder = float(rng.uniform(0.18, 0.65))
    if mode == "brighter":
        delta = float(rng.uniform(0.1, 0.3))
    elif mode == "darker":
        delta = -float(rng.uniform(0.08, min(0.3, powder - 0.05)))
    elif mode == "similar":
        # about as bright as the powder: the scan tracks and the outline tell the part apart
        delta = float(rng.choice([-1.0, 1.0])) * float(rng.uniform(0.04, 0.09))
    else:
        delta = float(rng.uniform(0.25, 0.55))
    walls = rng.random(4) < 0.35
    tint = tuple(float(t) for t in rng.uniform(0.75, 1.0, size=3)) if color else (1.0, 1.0, 1.0)
    return Look(
        powder=powder,
        part_mode="exposed" if exposed else mode,
        part_delta=exposed_delta if exposed else delta,
        hatch_angle0=float(rng.uniform(0, math.pi)),
        hatch_period=float(rng.uniform(2.5, 8.0)),
        # drawn whatever the mode: the draws after it stay the same
        hatch_amp=_first_if(exposed, exposed_amp, float(rng.uniform(0.02 if mode == "similar" else 0.005, 0.06))),
        light=float(rng.uniform(0, 2 * math.pi)),
        drift_phase=float(rng.uniform(0, 2 * math.pi)),
        drift_amp=float(rng.uniform(0.0, 0.12)),
        streaks=int(rng.integers(0, 8)),
        streak_amp=float(rng.uniform(0.02, 0.12)),
        uneven=float(rng.uniform(0.0, 0.8)),
        clumps=int(rng.integers(0, 10)),
        speckle=float(rng.uniform(0.0, 0.12)) if rng.random() < 0.6 else 0.0,
        ghost=float(rng.uniform(0.015, 0.05)) if rng.random() < 0.5 else 0.0,
        spatter=("bright", "dark", "mixed")[int(rng.choice(3, p=[0.45, 0.3, 0.25]))],
        pore_style=("lit", "dark", "rim")[int(rng.choice(3, p=[0.4, 0.45, 0.15]))],
        warp_style=("bright", "dark", "rough")[int(rng.choice(3, p=[0.45, 0.25, 0.3]))],
        pit_rate=float(rng.uniform(0.0, 1.5)),
        gradient=float(rng.uniform(0.0, 0.6)),
        vignette=float(rng.uniform(0.0, 0.6)),
        falloff=float(rng.uniform(0.2, 0.7)) if rng.random() < 0.35 else 0.0,
        blobs=int(rng.integers(0, 4)),
        gamma_mid=float(np.exp(rng.uniform(np.log(0.6), np.log(1.7)))),
        contrast=float(rng.uniform(0.55, 1.3)),
        noise=float(rng.uniform(0.003, 0.025)),
        shot=float(rng.uniform(0.0, 0.025)),
        blur=float(rng.uniform(0.0, 1.4)),
        jpeg_quality=int(rng.integers(40, 96)) if rng.random() < 0.35 else 0,
        tint=tint,  # type: ignore[arg-type]
        walls=tuple(bool(w) for w in walls),  # type: ignore[arg-type]
        wall_width=tuple(float(w) for w in rng.uniform(0.015, 0.08, 4)),  # type: ignore[arg-type]
        wall_gain=float(rng.uniform(0.15, 0.7)) if rng.random() < 0.7 else float(rng.uniform(1.3, 1.9)),
        rails=int(rng.choice(3, p=[0.7, 0.15, 0.15])),
        screws=bool(rng.random() < 0.2),
        plate_edge=float(rng.uniform(-0.15, 0.15)) if rng.random() < 0.3 else 0.0,
        contour_px=contour_px if exposed else 0.0,
        contour_level=contour_level if exposed else 0.0,
        second_contour=second_contour and exposed,
        track_power=track_power if exposed else 1.0,
        holes=holes,
    )


def random_spec(seed: int, height: int, width: int, n_layers: int, features: frozenset[str] = FEATURES) -> BuildSpec:
    """The random build of ``seed`` that ``SimBuild(seed, height, width, n_layers)`` draws (a caller may change it,
    e.g. take its defects out, and pass it as ``spec``)."""
    return _random_spec(seed, height, width, n_layers, features)


def _random_spec(seed: int, height: int, width: int, n_layers: int, features: frozenset[str] = FEATURES) -> BuildSpec:
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
            extent0 = float(rng.uniform(0.2, 0.6)) * p.half_h
            growth = float(rng.uniform(0.02, 0.08)) * p.half_h
            max_extent = float(rng.uniform(0.5, 1.2)) * p.half_h
            rim = float(rng.uniform(1.5, 4.0))
            if rng.random() < 0.4:
                # a slow warp: a few tenths of a mm² more every layer, small for many layers
                g = float(rng.uniform(0.2, 1.0))
                warps.append(WarpSpec(p.part_id, x, y, start, 0.0, 0.0, max_extent, rim, g, g))
            else:
                warps.append(WarpSpec(p.part_id, x, y, start, extent0, growth, max_extent, rim))

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
        features=frozenset(features),
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


def scenario_spec(
    seed: int,
    size: int = 512,
    n_layers: int = 40,
    *,
    warp_start: int | None = None,
    pores: int = 6,
    warp_area_growth: float = 0.0,
) -> BuildSpec:
    """A fixed, readable build for demos and end-to-end tests: two parts (a box and a cylinder) on a
    51 mm plate at 0.1 mm/px scaled to ``size``, a few small pores, light spatter, and, when
    ``warp_start`` is given, warping that starts at the box's corner on that layer and grows every layer
    (by ``warp_area_growth`` mm² a layer when given: a slow warp, otherwise fast).
    ``seed`` drives the appearance (lighting, texture, noise, distractors) and the pore positions."""
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
        if warp_area_growth > 0:
            warps = (
                WarpSpec(1, x, y, warp_start, 0.0, 0.0, 1.4 * box.half_h, 2.0, warp_area_growth, warp_area_growth),
            )
        else:
            warps = (WarpSpec(1, x, y, warp_start, 0.3 * box.half_h, 0.12 * box.half_h, 1.4 * box.half_h, 3.0),)
    return BuildSpec(
        seed=seed, height=size, width=size, n_layers=n_layers, mm_per_px=mmpp, layer_thickness=0.04, color=False,
        bit_depth=8, parts=(box, cyl), pores=tuple(pore_specs), warps=warps, spatter_rate=15.0, recoat_axis=0,
    )  # fmt: skip
