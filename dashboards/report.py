"""``layerwatch report``: from a build record (or a build file with ground truth) to a 3D defect report.

The per-layer class masks are stacked into a voxel volume with the record's pixel size and layer
thickness *without* holding it in memory: each layer's 2D components of a defect class are linked to
the components of the previous layer they overlap (6-connectivity along Z), with union-find, while
their statistics accumulate. Memory stays bounded by two layers, whatever the number of layers.

Outputs: ``defects.csv`` (one row per 3D defect), ``parts.csv`` (one row per part, with a verdict
against acceptance criteria), ``report.json`` (both, plus the build's facts) and a self-contained
``report.html`` (plotly.js embedded: opens offline) with a 3D view of the defects per class.
"""

from __future__ import annotations

import base64
import csv
import html
import itertools
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from string import Template
from typing import Any

import cv2
import h5py
import numpy as np

from monitor.record import RecordError, class_sources, images_path, layer_class, open_build_file
from segmentation.classes import CLASS_BGR, CLASS_HEX, CLASS_NAMES, DEFECT_CLASSES, DEFECT_NAMES, LayerClass

__all__ = ["Criteria", "Defect", "Part", "Report", "ReportError", "analyze", "figure_3d", "write_report"]

MASKS = "slices/segmentation_results"
PART_IDS = "slices/part_ids"
_DEFECTS = {int(c): CLASS_NAMES[c] for c in DEFECT_CLASSES}


class ReportError(Exception):
    """The record cannot give a report; the message says why."""


@dataclass(frozen=True)
class Criteria:
    """Acceptance of a part: no pore larger than ``max_pore_diameter_mm`` and porosity under ``max_porosity_pct``."""

    max_pore_diameter_mm: float = 0.5
    max_porosity_pct: float = 0.5
    max_warping_mm3: float = 0.0


@dataclass
class Defect:
    id: int
    cls: str
    part_id: int
    voxels: int
    volume_mm3: float
    centroid_mm: tuple[float, float, float]
    bbox_mm: tuple[float, float, float, float, float, float]  # x0, y0, z0, x1, y1, z1
    first_layer: int
    last_layer: int
    equivalent_diameter_mm: float
    max_extent_mm: float


@dataclass
class Part:
    id: int
    volume_mm3: float
    porosity_pct: float
    defects: dict[str, int] = field(default_factory=dict)
    defect_volume_mm3: dict[str, float] = field(default_factory=dict)
    largest_defect_mm: float = 0.0
    first_affected_layer: int | None = None
    last_affected_layer: int | None = None
    verdict: str = "pass"
    reasons: list[str] = field(default_factory=list)


class _Acc:
    """Running statistics of one 3D component."""

    __slots__ = ("n", "parts", "sx", "sy", "sz", "x0", "x1", "y0", "y1", "z0", "z1")

    def __init__(self) -> None:
        self.n = 0
        self.sx = self.sy = self.sz = 0.0
        self.x0 = self.y0 = self.z0 = 1 << 30
        self.x1 = self.y1 = self.z1 = -1
        self.parts: dict[int, int] = {}

    def merge(self, o: _Acc) -> None:
        self.n += o.n
        self.sx += o.sx
        self.sy += o.sy
        self.sz += o.sz
        self.x0, self.y0, self.z0 = min(self.x0, o.x0), min(self.y0, o.y0), min(self.z0, o.z0)
        self.x1, self.y1, self.z1 = max(self.x1, o.x1), max(self.y1, o.y1), max(self.z1, o.z1)
        for k, v in o.parts.items():
            self.parts[k] = self.parts.get(k, 0) + v


def _layer_mask(f: h5py.File, cls: int, k: int) -> np.ndarray:
    return layer_class(f, cls, k)


@dataclass
class Report:
    """A build's defects in 3D and its parts' verdicts; ``to_dict()`` is the content of report.json."""

    build: dict[str, Any]  # the build's facts: record, layers, calibration, criteria, notes, printer, job, state
    defects: list[Defect]
    parts: list[Part]
    per_layer_mm2: dict[str, list[Any]]  # "layers" and, per defect class, its area on each layer
    timeline: list[dict[str, Any]]  # the record's actions; pauses carry a thumbnail of their layer
    top_view: bytes  # PNG: every defect seen from above over the parts' footprint

    def to_dict(self) -> dict[str, Any]:
        return {
            "build": self.build,
            "defects": [asdict(d) for d in self.defects],
            "parts": [asdict(p) for p in self.parts],
            "per_layer_mm2": self.per_layer_mm2,
            "timeline": self.timeline,
        }


@dataclass(frozen=True)
class _Calibration:
    mm_px: float
    mm_py: float
    dz: float

    @property
    def voxel_mm3(self) -> float:
        return self.mm_px * self.mm_py * self.dz


def _calibration(f: h5py.File, path: Path) -> _Calibration:
    a = f.attrs
    try:
        mm_px = float(a["printer/x_real_dimension"]) / float(a["printer/x_camera_dimension"])
        mm_py = float(a["printer/y_real_dimension"]) / float(a["printer/y_camera_dimension"])
        dz = float(a["material/layer_thickness"])
    except KeyError as err:
        raise ReportError(f"{path} lacks the calibration attribute {err}: sizes in mm are unknown") from err
    if not (mm_px > 0 and mm_py > 0 and dz > 0) or abs(mm_px - mm_py) > 0.05 * mm_px:
        raise ReportError(
            f"{path}: inconsistent calibration (x {mm_px:.4g} mm/px, y {mm_py:.4g} mm/px, layer {dz:.4g} mm)"
        )
    return _Calibration(mm_px, mm_py, dz)


def _layer_heights(f: h5py.File, cal: _Calibration, layers: list[int], notes: list[str]) -> _Calibration:
    """The layer thickness the stored layers' own heights show (the printer's z per layer), where it differs by
    more than 10 % from the record's attribute (a config that did not match the printer): volumes follow it."""
    if "layerwatch/layers" not in f or len(layers) < 3:
        return cal
    try:
        z = f["layerwatch/layers"]["z_mm"][:]
    except (KeyError, ValueError):
        return cal
    pairs = [(k, float(z[k])) for k in layers if k < len(z)]
    steps = [(z1 - z0) / (k1 - k0) for (k0, z0), (k1, z1) in itertools.pairwise(pairs) if k1 > k0 and z1 > z0]
    if len(steps) < 2:
        return cal
    step = float(np.median(steps))
    if not 0 < step <= 5 or abs(step - cal.dz) <= 0.1 * cal.dz:
        return cal
    notes.append(
        f"the layers' heights rise {step:.4g} mm a layer, the record's layer thickness is {cal.dz:g} mm: "
        f"volumes use {step:.4g} mm (check the monitor's layer_thickness_mm)"
    )
    return _Calibration(cal.mm_px, cal.mm_py, step)


def _stored_layers(f: h5py.File, notes: list[str]) -> list[int]:
    """The layers to read: every frame of a build file, the stored ones of a (live) record."""
    n = int(f[images_path(f)].shape[0])
    if "layerwatch/layers" not in f:
        return list(range(n))
    stored = [int(k) for k in np.flatnonzero(f["layerwatch/layers"]["stored"][:])]
    missing = sorted(set(range(n)) - set(stored))
    if missing:
        notes.append(f"{len(missing)} layer(s) missing from the record and skipped: {missing[:10]}")
    return stored


def _components(m: np.ndarray, parts_k: np.ndarray | None, k: int) -> tuple[np.ndarray, list[_Acc]]:
    """2D components of one layer's mask of a class: (labels, their statistics, label order from 1)."""
    count, labels, stats, cents = cv2.connectedComponentsWithStats(m.view(np.uint8), connectivity=8)
    owners: dict[int, dict[int, int]] = {}
    if parts_k is not None and count > 1:  # which parts each component lies on, in one pass
        sel = labels > 0
        width = int(parts_k.max()) + 1
        keys, cnt = np.unique(labels[sel].astype(np.int64) * width + parts_k[sel], return_counts=True)
        for key, c in zip(keys.tolist(), cnt.tolist(), strict=True):
            owners.setdefault(key // width, {})[key % width] = int(c)
    out = []
    for lab in range(1, count):
        x, y, w, h, area = (int(v) for v in stats[lab])
        s = _Acc()
        s.n, s.sx, s.sy, s.sz = area, float(cents[lab][0]) * area, float(cents[lab][1]) * area, float(k) * area
        s.x0, s.y0, s.z0, s.x1, s.y1, s.z1 = x, y, k, x + w - 1, y + h - 1, k
        s.parts = owners.get(lab, {})
        out.append(s)
    return labels, out


def _link_3d(f: h5py.File, cls: int, layers: list[int], has_parts: bool, on_layer: Any) -> list[_Acc]:
    """The 3D components of a class: each layer's 2D components joined to those of the previous layer they
    overlap (6-connectivity along Z) with a disjoint set, statistics merged; two layers in memory at most.
    ``on_layer(k, mask, parts_k)`` sees every layer's mask (for the footprint, the top view, the areas)."""
    from scipy.cluster.hierarchy import DisjointSet

    joined: DisjointSet = DisjointSet()
    acc: dict[int, _Acc] = {}
    prev_labels: np.ndarray | None = None
    prev_ids = np.zeros(0, dtype=np.int64)
    prev_layer = -2
    for k in layers:
        m = _layer_mask(f, cls, k)
        parts_k = np.asarray(f[PART_IDS][k]) if has_parts else None
        on_layer(k, m, parts_k)
        labels, comps = _components(m, parts_k, k)
        ids_here = np.zeros(len(comps) + 1, dtype=np.int64)
        for lab, s in enumerate(comps, 1):
            gid = len(acc) + 1
            joined.add(gid)
            ids_here[lab] = gid
            acc[gid] = s
        if prev_labels is not None and k == prev_layer + 1 and comps:
            both = (labels > 0) & (prev_labels > 0)
            if both.any():
                pairs = np.unique(np.stack([labels[both], prev_labels[both]]), axis=1)
                for here, before in pairs.T:
                    joined.merge(int(ids_here[here]), int(prev_ids[before]))
        prev_labels, prev_ids, prev_layer = labels, ids_here, k
    merged: dict[int, _Acc] = {}
    for gid, s in acc.items():
        root = joined[gid]
        if root in merged:
            merged[root].merge(s)
        else:
            merged[root] = s
    return list(merged.values())


def _defect(number: int, name: str, s: _Acc, cal: _Calibration) -> Defect:
    part = max(s.parts, key=lambda p: s.parts[p]) if s.parts else 0
    vol = s.n * cal.voxel_mm3
    ext = max((s.x1 - s.x0 + 1) * cal.mm_px, (s.y1 - s.y0 + 1) * cal.mm_py, (s.z1 - s.z0 + 1) * cal.dz)
    return Defect(
        id=number,
        cls=name,
        part_id=part,
        voxels=s.n,
        volume_mm3=round(vol, 6),
        centroid_mm=(
            round(s.sx / s.n * cal.mm_px, 3),
            round(s.sy / s.n * cal.mm_py, 3),
            round((s.sz / s.n + 0.5) * cal.dz, 3),
        ),
        bbox_mm=(
            round(s.x0 * cal.mm_px, 3),
            round(s.y0 * cal.mm_py, 3),
            round(s.z0 * cal.dz, 3),
            round((s.x1 + 1) * cal.mm_px, 3),
            round((s.y1 + 1) * cal.mm_py, 3),
            round((s.z1 + 1) * cal.dz, 3),
        ),
        first_layer=s.z0,
        last_layer=s.z1,
        equivalent_diameter_mm=round(2 * (3 * vol / (4 * math.pi)) ** (1 / 3), 4),
        max_extent_mm=round(ext, 3),
    )


def _timeline(f: h5py.File) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    if "layerwatch/actions" not in f:
        return out
    n = int(f[images_path(f)].shape[0])
    for row in f["layerwatch/actions"][:]:
        item = {
            k: (v.decode() if isinstance(v, bytes) else v.item() if hasattr(v, "item") else v)
            for k, v in zip(row.dtype.names or (), row, strict=True)
        }
        item.pop("detail", None)
        if item["action"] == "pause" and item["state"] == "requested" and 0 <= int(item["layer"]) < n:
            item["thumbnail"] = _thumbnail(f, int(item["layer"]))
        out.append(item)
    return out


def analyze(path: Path, *, floor_voxels: int = 3, criteria: Criteria | None = None) -> Report:
    """Defects and parts of one build. Layers missing from a record are skipped (and said so)."""
    criteria = criteria or Criteria()
    try:
        f = open_build_file(path)  # a live record gives a partial report
    except RecordError as err:
        raise ReportError(str(err)) from None
    with f:
        images = images_path(f)
        if images not in f or MASKS not in f:
            raise ReportError(f"{path} has no /{images} and /{MASKS}: not a build record with masks")
        sources = class_sources(f)
        cal = _calibration(f, path)
        notes: list[str] = []
        layers = _stored_layers(f, notes)
        cal = _layer_heights(f, cal, layers, notes)
        has_parts = PART_IDS in f
        part_voxels: dict[int, int] = {}
        part_pores: dict[int, int] = {}
        defects: list[Defect] = []
        h, w = f[images].shape[1:]
        footprint = np.zeros((h, w), dtype=bool)  # top view: bounded by one frame per class
        projection = {name: np.zeros((h, w), dtype=bool) for name in DEFECT_NAMES}
        per_layer: dict[str, list[Any]] = {name: [] for name in DEFECT_NAMES}
        for cls, name in _DEFECTS.items():
            if not sources.get(cls):
                continue

            def seen(k: int, m: np.ndarray, parts_k: np.ndarray | None, cls: int = cls, name: str = name) -> None:
                projection[name] |= m
                per_layer[name].append(round(float(m.sum()) * cal.mm_px * cal.mm_py, 4))
                if cls != DEFECT_CLASSES[0]:
                    return
                # the parts' volumes, once (with the first class): part, this class and warping pixels
                part_px = _layer_mask(f, LayerClass.PART, k) | m | _layer_mask(f, LayerClass.WARPING, k)
                footprint[...] |= part_px
                if parts_k is None:
                    part_voxels[0] = part_voxels.get(0, 0) + int(part_px.sum())
                    return
                ids, counts = np.unique(parts_k[part_px], return_counts=True)
                for i, c in zip(ids.tolist(), counts.tolist(), strict=True):
                    part_voxels[int(i)] = part_voxels.get(int(i), 0) + int(c)

            for s in _link_3d(f, cls, layers, has_parts, seen):
                if s.n < floor_voxels:
                    continue
                d = _defect(len(defects) + 1, name, s, cal)
                defects.append(d)
                if cls == LayerClass.POROSITY:
                    part_pores[d.part_id] = part_pores.get(d.part_id, 0) + s.n
        parts = _parts(part_voxels, part_pores, defects, cal.voxel_mm3, criteria, has_parts)
        a = f.attrs
        facts = {
            "record": str(path),
            "layers": len(layers),
            "layers_in_file": int(f[images].shape[0]),
            "mm_per_px": cal.mm_px,
            "layer_thickness_mm": cal.dz,
            "voxel_mm3": cal.voxel_mm3,
            "floor_voxels": floor_voxels,
            "criteria": asdict(criteria),
            "notes": notes,
            "printer": str(a.get("layerwatch/printer", "")),
            "job_id": str(a.get("layerwatch/job_id", path.stem)),
            "state": bytes(f["layerwatch/state"][()]).decode().strip() if "layerwatch/state" in f else "file",
        }
        if not defects:
            notes.append("no defect above the size floor: a clean build")
        if not parts or all(p.volume_mm3 == 0 for p in parts):
            notes.append("no part found in the masks")
        timeline = _timeline(f)
    return Report(
        build=facts,
        defects=defects,
        parts=parts,
        per_layer_mm2={"layers": layers, **per_layer},
        timeline=timeline,
        top_view=_top_view(footprint, projection),
    )


def _thumbnail(f: h5py.File, layer: int) -> str:
    gray = np.asarray(f[images_path(f)][layer])
    if gray.dtype.kind == "f":  # a Peregrine file's float frames
        top = max(float(np.nanmax(gray, initial=0.0)), 1e-6)
        gray = np.round(np.clip(np.nan_to_num(gray) / top, 0, 1) * 255).astype(np.uint8)
    gray = gray if gray.dtype == np.uint8 else (gray // 256).astype(np.uint8)
    bgr = cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR)
    for cls in (LayerClass.PART, *DEFECT_CLASSES):
        color = CLASS_BGR[cls]
        if class_sources(f).get(cls):
            sel = layer_class(f, cls, layer)
            bgr[sel] = (0.45 * bgr[sel] + 0.55 * np.array(color)).astype(np.uint8)
    small = cv2.resize(bgr, (160, round(160 * bgr.shape[0] / bgr.shape[1])), interpolation=cv2.INTER_AREA)
    return "data:image/png;base64," + base64.b64encode(cv2.imencode(".png", small)[1].tobytes()).decode()


def _top_view(footprint: np.ndarray, projection: dict[str, np.ndarray]) -> bytes:
    """Static figure: every defect seen from above over the parts' footprint, in the class colours."""
    img = np.full((*footprint.shape, 3), 245, np.uint8)
    img[footprint] = (235, 190, 150)
    for c in DEFECT_CLASSES:
        img[projection[CLASS_NAMES[c]]] = CLASS_BGR[c]
    return bytes(cv2.imencode(".png", img)[1].tobytes())


def _parts(
    voxels: dict[int, int], pores: dict[int, int], defects: list[Defect], voxel_mm3: float, c: Criteria, has_parts: bool
) -> list[Part]:
    out = []
    for pid in sorted(p for p in voxels if p or not has_parts):
        mine = [d for d in defects if d.part_id == pid]
        vol = voxels[pid] * voxel_mm3
        part = Part(
            id=pid, volume_mm3=round(vol, 4), porosity_pct=round(100 * pores.get(pid, 0) / max(voxels[pid], 1), 4)
        )
        for d in mine:
            part.defects[d.cls] = part.defects.get(d.cls, 0) + 1
            part.defect_volume_mm3[d.cls] = round(part.defect_volume_mm3.get(d.cls, 0.0) + d.volume_mm3, 6)
        if mine:
            part.largest_defect_mm = max(d.equivalent_diameter_mm for d in mine)
            part.first_affected_layer = min(d.first_layer for d in mine)
            part.last_affected_layer = max(d.last_layer for d in mine)
        pores_d = [d.equivalent_diameter_mm for d in mine if d.cls == "porosity"]
        if pores_d and max(pores_d) > c.max_pore_diameter_mm:
            part.reasons.append(f"pore of {max(pores_d):.2f} mm > {c.max_pore_diameter_mm} mm")
        if part.porosity_pct > c.max_porosity_pct:
            part.reasons.append(f"porosity {part.porosity_pct:.2f} % > {c.max_porosity_pct} %")
        warp = part.defect_volume_mm3.get("warping", 0.0)
        if warp > c.max_warping_mm3:
            part.reasons.append(f"warping {warp:.2f} mm³ > {c.max_warping_mm3} mm³")
        part.verdict = "reject" if part.reasons else "pass"
        out.append(part)
    return out


def write_report(report: Report, out: Path) -> list[Path]:
    """defects.csv, parts.csv, top_view.png, report.json and a self-contained report.html in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    defects_csv, parts_csv = out / "defects.csv", out / "parts.csv"
    with defects_csv.open("w", newline="") as fh:
        w = csv.DictWriter(fh, _DEFECT_COLUMNS)
        w.writeheader()
        for d in report.defects:
            row = asdict(d)
            w.writerow(
                {k: row[k] for k in _DEFECT_COLUMNS[:9]}
                | dict(zip(_DEFECT_COLUMNS[9:12], d.centroid_mm, strict=True))
                | dict(zip(_DEFECT_COLUMNS[12:], d.bbox_mm, strict=True))
            )
    # one count column per defect class, named by the class (porosity's is "pores", as it always was)
    counts = {name: _count_column(name) for name in DEFECT_NAMES}
    columns = ["part_id", "volume_mm3", "porosity_pct", *counts.values(), "largest_defect_mm"]
    columns += ["first_affected_layer", "last_affected_layer", "verdict", "reasons"]
    with parts_csv.open("w", newline="") as fh:
        dw = csv.DictWriter(fh, columns)
        dw.writeheader()
        for p in report.parts:
            row = {k: v for k, v in asdict(p).items() if k in columns}
            row |= {"part_id": p.id, "reasons": "; ".join(p.reasons)}
            row |= {col: p.defects.get(name, 0) for name, col in counts.items()}
            dw.writerow(row)
    top = out / "top_view.png"
    top.write_bytes(report.top_view)
    js = out / "report.json"
    js.write_text(json.dumps(report.to_dict(), indent=1))
    html_path = out / "report.html"
    html_path.write_text(_html(report))
    return [defects_csv, parts_csv, top, js, html_path]


_DEFECT_COLUMNS = [
    "id",
    "cls",
    "part_id",
    "voxels",
    "volume_mm3",
    "equivalent_diameter_mm",
    "max_extent_mm",
    "first_layer",
    "last_layer",
    "cx_mm",
    "cy_mm",
    "cz_mm",
    "x0_mm",
    "y0_mm",
    "z0_mm",
    "x1_mm",
    "y1_mm",
    "z1_mm",
]


def _count_column(defect: str) -> str:
    return "pores" if defect == "porosity" else defect


def figure_3d(report: Report) -> dict[str, Any]:
    """The 3D view of the defects (plotly figure as a dict), shared by the HTML report and the dashboard."""
    traces = []
    for c in DEFECT_CLASSES:
        cls, color = CLASS_NAMES[c], CLASS_HEX[c]
        ds = [asdict(d) for d in report.defects if d.cls == cls]
        if not ds:
            continue
        traces.append(
            {
                "type": "scatter3d",
                "mode": "markers",
                "name": cls,
                "x": [d["centroid_mm"][0] for d in ds],
                "y": [d["centroid_mm"][1] for d in ds],
                "z": [d["centroid_mm"][2] for d in ds],
                "marker": {"color": color, "size": [max(3.0, min(20.0, 12 * d["equivalent_diameter_mm"])) for d in ds]},
                "text": [
                    f"defect {d['id']} ({cls}), part {d['part_id']}: {d['volume_mm3']:.4f} mm³, "
                    f"{d['equivalent_diameter_mm']:.2f} mm, layers {d['first_layer']}-{d['last_layer']}"
                    for d in ds
                ],
                "hoverinfo": "text",
            }
        )
    layout = {
        "scene": {
            "xaxis": {"title": {"text": "x (mm)"}},
            "yaxis": {"title": {"text": "y (mm)"}},
            "zaxis": {"title": {"text": "z (mm)"}},
            "aspectmode": "data",
        },
        "margin": {"l": 0, "r": 0, "t": 30, "b": 0},
        "title": {"text": "defects in 3D (marker size: equivalent diameter)"},
    }
    return {"data": traces, "layout": layout}


def time_text(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


_PAGE = Template(
    """<!doctype html><html><head><meta charset="utf-8"><title>LayerWatch report $job</title>
<script>$plotly</script>
<style>body{font-family:system-ui,sans-serif;margin:16px;color:#222} table{border-collapse:collapse}
td,th{border-bottom:1px solid #ddd;padding:3px 8px;text-align:right} tr.reject td{color:#b71c1c}</style></head>
<body><h1>Build report: $job</h1>
<p>printer $printer; $layers layers; $mm_per_px mm/px; layer $thickness mm; record $state;
$n_defects defects above $floor voxels.</p><ul>$notes</ul>
<div id="view3d" style="height:560px"></div>
<h2>Seen from above</h2><p>every defect of the build over the parts' footprint (also top_view.png)</p>$top_img
<div id="perlayer" style="height:320px"></div><div id="sizes" style="height:320px"></div>
<h2>Incidents and actions</h2><table><tr><th>time</th><th>layer</th><th>action</th><th>rule</th><th>evidence</th></tr>
$timeline_rows</table>
<h2>Parts</h2><table><tr><th>part</th><th>volume (mm³)</th><th>porosity (%)</th>$count_heads
<th>largest defect (mm)</th><th>verdict</th></tr>$part_rows</table>
<p>Criteria: pores up to $max_pore mm, porosity under $max_porosity %, warping at most $max_warping mm³.
Every defect: defects.csv; parts: parts.csv; all: report.json.</p>
<script>Plotly.newPlot("view3d", $traces, $layout);
Plotly.newPlot("perlayer", $layer_traces, $layer_layout);
Plotly.newPlot("sizes", $size_traces, $size_layout);</script></body></html>"""
)


def _html(report: Report) -> str:
    from plotly.offline import get_plotlyjs

    fig = figure_3d(report)
    b = report.build
    pl = report.per_layer_mm2
    hexes = {CLASS_NAMES[c]: CLASS_HEX[c] for c in DEFECT_CLASSES}
    layer_traces = [
        {"type": "scatter", "mode": "lines", "name": cls, "x": pl["layers"], "y": pl.get(cls, []),
         "line": {"color": hexes[cls]}}
        for cls in DEFECT_NAMES
    ]  # fmt: skip
    layer_layout = {
        "title": {"text": "defect area per layer (mm²)"},
        "xaxis": {"title": {"text": "layer"}},
        "yaxis": {"title": {"text": "mm²"}},
        "margin": {"t": 40},
    }
    size_traces = [
        {"type": "histogram", "name": cls, "x": [d.equivalent_diameter_mm for d in report.defects if d.cls == cls],
         "marker": {"color": hexes[cls]}, "opacity": 0.7}
        for cls in DEFECT_NAMES
    ]  # fmt: skip
    size_layout = {
        "title": {"text": "defect sizes (equivalent diameter, mm)"},
        "barmode": "overlay",
        "xaxis": {"title": {"text": "mm"}},
        "yaxis": {"title": {"text": "defects"}},
        "margin": {"t": 40},
    }
    timeline_rows = (
        "".join(
            f"<tr><td>{time_text(t['time'])}</td><td>{t['layer']}</td><td>{html.escape(str(t['action']))} "
            f"{html.escape(str(t['state']))}</td><td>{html.escape(str(t['rule']))}</td>"
            f"<td>{'<img src=' + chr(34) + t['thumbnail'] + chr(34) + '>' if t.get('thumbnail') else ''}</td></tr>"
            for t in report.timeline
        )
        or "<tr><td colspan='5'>no action in this record</td></tr>"
    )
    top = base64.b64encode(report.top_view).decode()
    part_rows = "".join(
        f"<tr class='{p.verdict}'><td>{p.id}</td><td>{p.volume_mm3:.2f}</td><td>{p.porosity_pct:.3f}</td>"
        + "".join(f"<td>{p.defects.get(name, 0)}</td>" for name in DEFECT_NAMES)
        + f"<td>{p.largest_defect_mm:.2f}</td><td><b>{p.verdict}</b> {html.escape('; '.join(p.reasons))}</td></tr>"
        for p in report.parts
    )
    return _PAGE.substitute(
        job=html.escape(b["job_id"]),
        plotly=get_plotlyjs(),
        printer=html.escape(b["printer"]),
        layers=b["layers"],
        mm_per_px=f"{b['mm_per_px']:.4g}",
        thickness=b["layer_thickness_mm"],
        state=html.escape(b["state"]),
        n_defects=len(report.defects),
        floor=b["floor_voxels"],
        notes="".join(f"<li>{html.escape(n)}</li>" for n in b["notes"]),
        top_img=f"<img alt='top view' src='data:image/png;base64,{top}' style='max-width:640px'>",
        timeline_rows=timeline_rows,
        count_heads="".join(f"<th>{_count_column(name)}</th>" for name in DEFECT_NAMES),
        part_rows=part_rows,
        max_pore=b["criteria"]["max_pore_diameter_mm"],
        max_porosity=b["criteria"]["max_porosity_pct"],
        max_warping=b["criteria"]["max_warping_mm3"],
        traces=json.dumps(fig["data"]),
        layout=json.dumps(fig["layout"]),
        layer_traces=json.dumps(layer_traces),
        layer_layout=json.dumps(layer_layout),
        size_traces=json.dumps(size_traces),
        size_layout=json.dumps(size_layout),
    )
