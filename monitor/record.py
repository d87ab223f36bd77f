"""The build record: one HDF5 file per build, appended layer by layer, crash-safe, readable while written.

Layout (``docs/record.md``): Peregrine-compatible paths, so tools made for ORNL Peregrine's open
layer-wise format can read it,

- ``/slices/camera_data/0``: (Z, H, W) the layer images (gray; uint8 or uint16);
- ``/slices/segmentation_results/<class id>``: (Z, H, W) uint8, 1 where the pixel is of that class;
- ``/slices/part_ids``: (Z, H, W) uint32, the part each pixel belongs to (0: none);
- root attributes ``printer/x_real_dimension``, ``printer/y_real_dimension`` (mm),
  ``printer/x_camera_dimension``, ``printer/y_camera_dimension`` (px), ``material/layer_thickness`` (mm);

and LayerWatch's own group ``/layerwatch``: ``layers`` (one row per layer index: stored flag, z, times,
frame quality), ``metrics`` (one row per layer index, one column per metric), ``part_metrics``,
``events``, ``actions``, ``feedback``, ``telemetry`` (append-only tables), ``state``, and attributes
with the config and policy in force, the model id and hash, the software and record schema versions.

Crash safety: the file is written in SWMR mode (``libver=("v110", "v110")``), every table exists as an
extendable dataset before SWMR starts, and every append ends with ``flush()`` (plus ``fsync`` when
asked). A layer is *stored* once :meth:`BuildRecord.append_layer` has returned. A writer killed at any
moment leaves a file that opens with ``swmr=True`` (which every reader here uses) and holds every
stored layer; :func:`recover` rewrites such a file so that stock tools and a new writer open it again.

This module depends on nothing else of LayerWatch: the monitor and the dashboards both use it.
"""

from __future__ import annotations

import fcntl
import json
import os
import threading
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from printer_io.vocabulary import Severity
from segmentation.imageio import DEFAULT_MAX_PIXELS

__all__ = [
    "IMAGES",
    "LEGACY_IMAGES",
    "PEREGRINE_CLASSES",
    "READABLE_SCHEMAS",
    "SCHEMA_VERSION",
    "BuildRecord",
    "RecordError",
    "RecordReader",
    "action_boxes",
    "build_records",
    "check_layout",
    "check_record",
    "class_mask",
    "class_sources",
    "images_path",
    "is_build_record",
    "layer_class",
    "recover",
    "set_attrs",
    "write_truth_build",
]

# 2: the append-only tables hold fixed-length UTF-8 strings (HDF5's SWMR cannot write variable-length
# data: readers of a live record failed once actions and events were written). Schema 1 still reads.
# 3: the layer images at Peregrine's own path (/slices/camera_data/visible/0, where DREAM3D-NX's reader
# looks), /slices/sample_ids, the class names on /slices/segmentation_results. Schema 2 is still continued.
SCHEMA_VERSION = 3
READABLE_SCHEMAS = (1, 2, 3)
WRITABLE_SCHEMAS = (2, 3)
IMAGES = "slices/camera_data/visible/0"
LEGACY_IMAGES = "slices/camera_data/0"  # schemas 1 and 2
# Peregrine's after-recoat image. DREAM3D-NX's reader requires it beside visible/0 (same shape): it grows with
# the layers and holds zeros (unwritten chunks: no space) where the machine gives no second image
RECOAT_IMAGES = "slices/camera_data/visible/1"
SAMPLE_IDS = "slices/sample_ids"
MASKS = "slices/segmentation_results"
PART_IDS = "slices/part_ids"
LW = "layerwatch"


def images_path(f: h5py.File) -> str:
    """Where a build file keeps its layer images: Peregrine's path, or the one of records before schema 3."""
    return LEGACY_IMAGES if IMAGES not in f and LEGACY_IMAGES in f else IMAGES


def _s(n: int) -> np.dtype:
    """A fixed-length string of ``n`` bytes (UTF-8; longer text is cut at a character boundary)."""
    return np.dtype(f"S{n}")


LAYER_DTYPE = np.dtype(
    [
        ("stored", "u1"), ("z_mm", "f4"), ("captured_at", "f8"), ("stored_at", "f8"),
        ("sharpness", "f4"), ("mean", "f4"), ("blurry", "u1"), ("frozen", "u1"),
        ("too_dark", "u1"), ("too_bright", "u1"), ("judged", "u1"), ("severity", "u1"),
    ]
)  # fmt: skip
EVENT_DTYPE = np.dtype([("time", "f8"), ("layer", "i4"), ("level", _s(16)), ("code", _s(64)), ("message", _s(1024))])
ACTION_DTYPE = np.dtype(
    [
        ("time", "f8"), ("layer", "i4"), ("request_id", _s(160)), ("action", _s(32)), ("state", _s(32)),
        ("rule", _s(64)), ("incident", _s(256)), ("detail", _s(8192)),
    ]
)  # fmt: skip
FEEDBACK_DTYPE = np.dtype(
    [("time", "f8"), ("incident", _s(256)), ("verdict", _s(32)), ("operator", _s(64)), ("note", _s(2048))]
)
TELEMETRY_DTYPE = np.dtype(
    [("time", "f8"), ("layer", "i4"), ("state", _s(32)), ("z_mm", "f4"), ("feed_pct", "f4"), ("flow_pct", "f4")]
)
# operators' labels: one row a stroke (brush line, region, whole frame), points as JSON [[x, y], ...] camera px
LABEL_DTYPE = np.dtype(
    [
        ("time", "f8"), ("layer", "i4"), ("operator", _s(64)), ("kind", _s(16)), ("label", "u1"), ("width", "f4"),
        ("points", _s(8192)),
    ]
)  # fmt: skip
TABLES = {
    "events": EVENT_DTYPE,
    "actions": ACTION_DTYPE,
    "feedback": FEEDBACK_DTYPE,
    "telemetry": TELEMETRY_DTYPE,
}
# a shadow model's judgement of each layer (it runs beside the model in use, acting on nothing)
SHADOW = f"{LW}/shadow"
SHADOW_DTYPE = np.dtype(
    [("layer", "i4"), ("severity", "u1"), ("disagree", "f4"), ("would_act", "u1"), ("rules", _s(512))]
)
# the reference lighting the frames were flat-fielded by before the model saw them (what labels must match)
ILLUMINATION = "illumination"
# tables added after schema 2 was fixed: made when a record is created or next opened for writing (before
# SWMR, which cannot create them); a reader treats one that is missing as empty
OPTIONAL_TABLES = {"labels": LABEL_DTYPE}


def _fit(value: Any, size: int) -> bytes:
    """UTF-8 bytes of ``value`` cut to ``size`` bytes without splitting a character."""
    raw = str(value).encode("utf-8")
    return raw if len(raw) <= size else raw[:size].decode("utf-8", errors="ignore").encode("utf-8")


class RecordError(Exception):
    """A record cannot be created, opened or appended to; the message names the file and the problem."""


@dataclass(frozen=True)
class RecordSpec:
    """What a new record needs to know. Frame size in px, ``mm_per_px`` and ``layer_thickness_mm`` in mm."""

    printer: str
    job_id: str
    height: int
    width: int
    dtype: str  # "uint8" or "uint16"
    mm_per_px: float
    layer_thickness_mm: float
    class_names: tuple[str, ...]
    metric_names: tuple[str, ...]
    part_metric_names: tuple[str, ...]
    config: Mapping[str, Any]
    policy: Mapping[str, Any]
    model: Mapping[str, str]
    software_version: str
    compression_level: int = 1  # gzip, built into every HDF5: stock tools read it without plugins
    roi: Mapping[str, Any] | None = None  # the build plate: {"points": [[x, y], ...], "source": ...}
    shadow: Mapping[str, str] | None = None  # the shadow model: {"id", "sha256"}; None: no shadow run


class BuildRecord:
    """Writer of one build's record. Not thread-safe: one writer thread per record."""

    def __init__(self, path: Path, file: h5py.File, fsync: bool) -> None:
        self.path = path
        self._f = file
        self._fsync = fsync
        self._n_classes = len(file.attrs["layerwatch/class_names"])
        self.metric_names = tuple(json.loads(file.attrs["layerwatch/metric_names"]))
        self.part_metric_names = tuple(json.loads(file.attrs["layerwatch/part_metric_names"]))
        self._images = images_path(file)
        self.height, self.width = file[self._images].shape[1:]
        #: the record's units: mm per camera pixel and layer thickness in mm
        self.mm_per_px = float(file.attrs["printer/x_real_dimension"]) / max(1, int(self.width))
        self.layer_thickness_mm = float(file.attrs["material/layer_thickness"])
        #: opened for writing without HDF5's file lock, which a program reading the file held
        self.shared_with_reader = False

    @property
    def frame_size(self) -> tuple[int, int]:
        return self.height, self.width

    @property
    def has_shadow(self) -> bool:
        return SHADOW in self._f

    # ---- lifecycle --------------------------------------------------------------------------------
    @classmethod
    def create(cls, path: Path, spec: RecordSpec, *, fsync: bool = False) -> BuildRecord:
        if spec.dtype not in ("uint8", "uint16"):
            raise RecordError(f"{path}: camera images must be uint8 or uint16, not {spec.dtype}")
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".creating.h5")
        try:
            f = h5py.File(tmp, "w", libver=("v110", "v110"))
        except OSError as err:
            raise RecordError(f"cannot create build record {path}: {err}") from err
        h, w = spec.height, spec.width
        level = spec.compression_level
        gzip: dict[str, Any] = {"compression": "gzip", "compression_opts": level, "shuffle": True} if level else {}
        f.create_dataset(IMAGES, (0, h, w), maxshape=(None, h, w), dtype=spec.dtype, chunks=(1, h, w), **gzip)
        f.create_dataset(
            RECOAT_IMAGES, (0, h, w), maxshape=(None, h, w), dtype=spec.dtype, chunks=(1, h, w), fillvalue=0, **gzip
        )
        for cid in range(len(spec.class_names)):
            f.create_dataset(f"{MASKS}/{cid}", (0, h, w), maxshape=(None, h, w), dtype="u1", chunks=(1, h, w), **gzip)
        f[MASKS].attrs["class_names"] = list(spec.class_names)  # where Peregrine files name their classes
        f.create_dataset(PART_IDS, (0, h, w), maxshape=(None, h, w), dtype="u4", chunks=(1, h, w), **gzip)
        # the parts as the printer knows them (its object ids), where its frames carry them; 0 elsewhere
        f.create_dataset(SAMPLE_IDS, (0, h, w), maxshape=(None, h, w), dtype="u4", chunks=(1, h, w), **gzip)
        g = f.create_group(LW)
        g.create_dataset("layers", (0,), maxshape=(None,), dtype=LAYER_DTYPE, chunks=(256,))
        metric_dtype = np.dtype([(n, "f8") for n in spec.metric_names])
        g.create_dataset("metrics", (0,), maxshape=(None,), dtype=metric_dtype, chunks=(256,))
        part_dtype = np.dtype([("layer", "i4"), ("part_id", "u4")] + [(n, "f8") for n in spec.part_metric_names])
        g.create_dataset("part_metrics", (0,), maxshape=(None,), dtype=part_dtype, chunks=(256,))
        _create_tables(g, {**TABLES, **OPTIONAL_TABLES})
        _create_illumination(g, h, w)
        if spec.shadow is not None:
            f.create_dataset(f"{SHADOW}/mask", (0, h, w), maxshape=(None, h, w), dtype="u1", chunks=(1, h, w), **gzip)
            f[SHADOW].create_dataset("layers", (0,), maxshape=(None,), dtype=SHADOW_DTYPE, chunks=(64,))
            f.attrs["layerwatch/shadow_model"] = json.dumps(dict(spec.shadow))
        g.create_dataset("state", data=np.bytes_("writing".ljust(16)), dtype="S16")
        a = f.attrs
        a["printer/x_real_dimension"] = w * spec.mm_per_px
        a["printer/y_real_dimension"] = h * spec.mm_per_px
        a["printer/x_camera_dimension"] = w
        a["printer/y_camera_dimension"] = h
        a["material/layer_thickness"] = spec.layer_thickness_mm
        a["layerwatch/schema_version"] = SCHEMA_VERSION
        a["layerwatch/software_version"] = spec.software_version
        a["layerwatch/printer"] = spec.printer
        a["layerwatch/job_id"] = spec.job_id
        a["layerwatch/created_at"] = time.time()
        a["layerwatch/mm_per_px"] = spec.mm_per_px
        a["layerwatch/class_names"] = list(spec.class_names)
        a["layerwatch/metric_names"] = json.dumps(list(spec.metric_names))
        a["layerwatch/part_metric_names"] = json.dumps(list(spec.part_metric_names))
        a["layerwatch/config"] = json.dumps(spec.config, default=str)
        a["layerwatch/policy"] = json.dumps(spec.policy, default=str)
        a["layerwatch/model"] = json.dumps(dict(spec.model))
        if spec.roi is not None:
            a["layerwatch/roi"] = json.dumps(dict(spec.roi))
        f.flush()
        f.close()
        tmp.replace(path)  # the record appears complete with its layout, or not at all
        return cls.open(path, fsync=fsync)

    @classmethod
    def open(cls, path: Path, *, fsync: bool = False) -> BuildRecord:
        """Open an existing record to append (a monitor restarted mid-build); a crashed one is recovered first.

        A stock tool holding the file open to read (HDFView, plain h5py) keeps HDF5's shared file lock and
        would stop the build from being continued: every later layer refused while the printer goes on.
        When only readers hold it (a shared lock is free to take; a writer's is exclusive), the record is
        opened without the lock and ``shared_with_reader`` says so: the tool's view stops at what it read."""
        shared = False
        try:
            try:
                f = h5py.File(path, "r+", libver=("v110", "v110"))
            except OSError as err:
                # a reader in this process (the demo's dashboard): HDF5 will not open it again to write
                if "already open for read-only" not in str(err) or not _let_go_of_readers(path):
                    raise
                f = h5py.File(path, "r+", libver=("v110", "v110"))
        except OSError as err:
            if _held_by_readers_only(path, err):
                f = h5py.File(path, "r+", libver=("v110", "v110"), locking=False)
                shared = True
            elif "already open for write" not in str(err) and "file close degree" not in str(err):
                raise RecordError(f"cannot open build record {path} for writing: {err}") from err
            else:
                recover(path)
                f = h5py.File(path, "r+", libver=("v110", "v110"))
        schema = f.attrs.get("layerwatch/schema_version")
        if schema not in WRITABLE_SCHEMAS:
            f.close()
            if schema in READABLE_SCHEMAS:
                raise RecordError(
                    f"{path} is a record of schema {schema}, written by an earlier LayerWatch: it can be read, "
                    f"replayed and reported, but not continued; move it aside to start a new record"
                )
            raise RecordError(f"{path} is not a LayerWatch record of schema {SCHEMA_VERSION}")
        f[f"{LW}/state"][()] = np.bytes_("writing".ljust(16))
        _create_tables(f[LW], {k: v for k, v in OPTIONAL_TABLES.items() if k not in f[LW]})
        if ILLUMINATION not in f[LW]:
            _create_illumination(f[LW], *f[images_path(f)].shape[1:])
        f.swmr_mode = True
        record = cls(path, f, fsync)
        record.shared_with_reader = shared
        return record

    def close(self, state: str = "closed") -> None:
        if self._f.id.valid:
            self._f[f"{LW}/state"][()] = np.bytes_(state.ljust(16)[:16])
            self._commit()
            self._f.close()

    def __enter__(self) -> BuildRecord:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def json_attr(self, name: str) -> Any:
        """A JSON attribute of the record (``layerwatch/<name>``), or None."""
        raw = self._f.attrs.get(f"{LW}/{name}")
        return json.loads(raw) if raw is not None else None

    def _commit(self) -> None:
        self._f.flush()
        if self._fsync:
            os.fsync(self._f.id.get_vfd_handle())

    # ---- appends ----------------------------------------------------------------------------------
    def stored_layers(self) -> np.ndarray:
        rows = self._f[f"{LW}/layers"]
        return np.flatnonzero(rows["stored"][:]) if rows.shape[0] else np.zeros(0, dtype=np.int64)

    def is_stored(self, layer: int) -> bool:
        rows = self._f[f"{LW}/layers"]
        return layer < rows.shape[0] and bool(rows[layer]["stored"])

    def stored_layer(self, layer: int) -> dict[str, Any]:
        """What was stored for ``layer``: metrics, parts (rows), judged, severity, z_mm, captured_at."""
        f = self._f
        row = f[f"{LW}/layers"][layer]
        m = f[f"{LW}/metrics"][layer]
        parts_table = f[f"{LW}/part_metrics"]
        parts = parts_table[:][parts_table["layer"][:] == layer] if parts_table.shape[0] else []
        return {
            "metrics": {n: float(m[n]) for n in m.dtype.names or ()},
            "parts": [{n: float(p[n]) for n in p.dtype.names if n != "layer"} for p in parts],
            "judged": bool(row["judged"]),
            "severity": Severity.from_index(int(row["severity"])),
            "z_mm": float(row["z_mm"]),
            "captured_at": float(row["captured_at"]),
        }

    def layer_rows(self) -> np.ndarray:
        """The ``layers`` table (one row per layer index: stored, arrival time, frame quality, judged)."""
        return np.asarray(self._f[f"{LW}/layers"][:])

    def layer_for_restart(self, layer: int) -> tuple[np.ndarray, np.ndarray | None]:
        """The stored class ids and the printer's part ids (None where the frame had none) of ``layer``: what a
        monitor that continues this build feeds its running state with (monitor.service)."""
        f = self._f
        samples = np.asarray(f[SAMPLE_IDS][layer]) if SAMPLE_IDS in f else None
        return class_mask(f, layer), samples if samples is not None and samples.any() else None

    def image(self, layer: int) -> np.ndarray:
        """The stored frame of ``layer``."""
        return np.asarray(self._f[IMAGES][layer])

    def shadow_masks(self) -> dict[int, np.ndarray]:
        """The shadow model's masks by layer, for the layers it judged (empty without a shadow)."""
        f = self._f
        if not self.has_shadow:
            return {}
        judged = sorted({int(n) for n in f[f"{SHADOW}/layers"]["layer"][:]})
        return {n: np.asarray(f[f"{SHADOW}/mask"][n]) for n in judged if n < f[f"{SHADOW}/mask"].shape[0]}

    def illumination(self) -> np.ndarray | None:
        """The build's reference lighting, once set."""
        f = self._f
        if f"{LW}/{ILLUMINATION}_from" not in f or int(f[f"{LW}/{ILLUMINATION}_from"][0]) < 0:
            return None
        illum = np.asarray(f[f"{LW}/{ILLUMINATION}"][...])
        return illum if np.isfinite(illum).all() else None

    def append_layer(
        self,
        layer: int,
        *,
        z_mm: float,
        image: np.ndarray,
        mask: np.ndarray,
        part_ids: np.ndarray | None,
        metrics: Mapping[str, float],
        sample_ids: np.ndarray | None = None,
        part_metrics: Sequence[Mapping[str, float]] = (),
        captured_at: float = 0.0,
        quality: Mapping[str, float | bool] | None = None,
        judged: bool = True,
        severity: str = "ok",
    ) -> None:
        """Store layer ``layer`` (row ``layer`` of every slice dataset); stored once this returns.

        ``image`` (H, W) gray; ``mask`` (H, W) uint8 class ids; ``part_ids`` (H, W) uint32 or None;
        ``sample_ids`` (H, W) uint32, the printer's own part ids where its frames carry them, or None.
        Layers may arrive out of order: a late one fills its row. Rows of missing layers stay unstored.
        """
        if image.shape != (self.height, self.width) or mask.shape != image.shape:
            raise RecordError(
                f"{self.path}: layer {layer} is {image.shape[1]}x{image.shape[0]} px, the build's frames are "
                f"{self.width}x{self.height}"
            )
        f = self._f
        n = max(f[self._images].shape[0], layer + 1)
        slices = [f[self._images], f[PART_IDS]] + [f[f"{MASKS}/{c}"] for c in range(self._n_classes)]
        slices += [f[name] for name in (SAMPLE_IDS, RECOAT_IMAGES) if name in f]
        for d in slices:
            if d.shape[0] < n:
                d.resize(n, axis=0)
        f[self._images][layer] = image
        if SAMPLE_IDS in f:
            f[SAMPLE_IDS][layer] = sample_ids if sample_ids is not None else 0
        for c in range(self._n_classes):
            f[f"{MASKS}/{c}"][layer] = (mask == c).view(np.uint8)
        f[PART_IDS][layer] = part_ids if part_ids is not None else 0
        metric_row = np.zeros((), dtype=f[f"{LW}/metrics"].dtype)
        for name in self.metric_names:
            metric_row[name] = float(metrics.get(name, np.nan))
        _put_row(f[f"{LW}/metrics"], layer, metric_row)
        if part_metrics:
            table = f[f"{LW}/part_metrics"]
            rows = np.zeros(len(part_metrics), dtype=table.dtype)
            for i, pm in enumerate(part_metrics):
                for name in rows.dtype.names or ():
                    rows[i][name] = pm.get(name, np.nan if name not in ("layer", "part_id") else 0)
            start = table.shape[0]
            table.resize(start + len(rows), axis=0)
            table[start:] = rows
        q = quality or {}
        layer_row = np.zeros((), dtype=LAYER_DTYPE)
        layer_row["z_mm"], layer_row["captured_at"], layer_row["stored_at"] = z_mm, captured_at, time.time()
        for key in ("sharpness", "mean", "blurry", "frozen", "too_dark", "too_bright"):
            layer_row[key] = q.get(key, 0)
        layer_row["judged"] = judged
        layer_row["severity"] = Severity(severity).rank if severity in set(Severity) else 0
        # the stored flag goes last: a crash before this flush leaves the layer unstored, not half-stored
        _put_row(f[f"{LW}/layers"], layer, layer_row)
        self._commit()
        layer_row["stored"] = 1
        f[f"{LW}/layers"][layer] = layer_row
        self._commit()

    def table(self, name: str) -> list[dict[str, Any]]:
        """Rows of a table written so far (``metrics``, ``part_metrics``, ``actions``, ...) as dicts."""
        return _rows(self._f[f"{LW}/{name}"][:])

    def _append(self, table: str, row: tuple[Any, ...]) -> None:
        d = self._f[f"{LW}/{table}"]
        record = np.zeros((), dtype=d.dtype)
        for (name, (dtype, _)), value in zip(d.dtype.fields.items(), row, strict=True):
            record[name] = _fit(value, dtype.itemsize) if dtype.kind == "S" else value
        d.resize(d.shape[0] + 1, axis=0)
        d[-1] = record
        self._commit()

    def append_recoat(self, layer: int, image: np.ndarray) -> None:
        """The after-recoat image of ``layer`` (the powder spread for it, before exposure): Peregrine's
        ``visible/1``. A record made without that dataset (before schema 3) ignores it."""
        if RECOAT_IMAGES not in self._f:
            return
        if image.shape != (self.height, self.width):
            raise RecordError(f"{self.path}: the after-recoat image of layer {layer} is not {self.width}x{self.height}")
        d = self._f[RECOAT_IMAGES]
        if d.shape[0] <= layer:
            d.resize(layer + 1, axis=0)
        d[layer] = image
        self._commit()

    def set_illumination(self, illum: np.ndarray, from_layer: int) -> None:
        """The build's reference lighting, used on layer ``from_layer`` and after."""
        if ILLUMINATION not in self._f[LW] or illum.shape != (self.height, self.width):
            return
        self._f[f"{LW}/{ILLUMINATION}"][...] = illum.astype(np.float32)
        self._f[f"{LW}/{ILLUMINATION}_from"][0] = from_layer
        self._commit()

    def append_shadow(
        self, layer: int, mask: np.ndarray, *, severity: str, disagree: float, would_act: bool, rules: Sequence[str]
    ) -> None:
        """The shadow model's mask (class ids) and judgement of ``layer``; a record made without one ignores it."""
        if not self.has_shadow:
            return
        d = self._f[f"{SHADOW}/mask"]
        if d.shape[0] <= layer:
            d.resize(layer + 1, axis=0)
        d[layer] = mask
        row = np.zeros((), dtype=SHADOW_DTYPE)
        row["layer"], row["disagree"], row["would_act"] = layer, disagree, would_act
        row["severity"] = Severity(severity).rank if severity in set(Severity) else 0
        row["rules"] = _fit(json.dumps(list(rules)), SHADOW_DTYPE["rules"].itemsize)
        table = self._f[f"{SHADOW}/layers"]
        table.resize(table.shape[0] + 1, axis=0)
        table[-1] = row
        self._commit()

    def add_event(self, layer: int, level: str, code: str, message: str, at: float | None = None) -> None:
        self._append("events", (at or time.time(), layer, level, code, message))

    def add_action(
        self, layer: int, request_id: str, action: str, state: str, rule: str, incident: str, detail: Mapping[str, Any],
        at: float | None = None,
    ) -> None:  # fmt: skip
        row = (at or time.time(), layer, request_id, action, state, rule, incident, json.dumps(detail, default=str))
        self._append("actions", row)

    def add_feedback(self, incident: str, verdict: str, operator: str, note: str, at: float | None = None) -> None:
        self._append("feedback", (at or time.time(), incident, verdict, operator, note))

    def add_label(
        self, layer: int, operator: str, kind: str, label: int, width: float, points: Sequence[Sequence[float]],
        at: float | None = None,
    ) -> None:  # fmt: skip
        """One operator's stroke on ``layer`` (camera px); at most about 680 points fit a row."""
        text = json.dumps([[round(float(x)), round(float(y))] for x, y in points], separators=(",", ":"))
        if len(text) > LABEL_DTYPE["points"].itemsize:
            raise RecordError(f"{self.path}: a label of {len(points)} points does not fit a row; simplify it")
        self._append("labels", (at or time.time(), layer, operator, kind, label, width, text))

    def add_telemetry(
        self,
        layer: int,
        state: str,
        z_mm: float,
        feed_pct: float | None,
        flow_pct: float | None,
        at: float | None = None,
    ) -> None:
        feed = np.nan if feed_pct is None else feed_pct
        flow = np.nan if flow_pct is None else flow_pct
        self._append("telemetry", (at or time.time(), layer, state, z_mm, feed, flow))


def _create_illumination(group: h5py.Group, h: int, w: int) -> None:
    """The build's reference lighting, NaN until known, and the first layer segmented with it (-1: none)."""
    group.create_dataset(ILLUMINATION, (h, w), dtype="f4", fillvalue=np.nan, chunks=(h, w), compression="gzip")
    group.create_dataset(f"{ILLUMINATION}_from", data=np.array([-1], np.int32))


def _create_tables(group: h5py.Group, tables: Mapping[str, np.dtype]) -> None:
    for name, dtype in tables.items():
        # zero-padded fixed-length rows compress to almost nothing
        group.create_dataset(name, (0,), maxshape=(None,), dtype=dtype, chunks=(64,), compression="gzip")


def _put_row(dataset: h5py.Dataset, index: int, row: np.ndarray) -> None:
    if dataset.shape[0] <= index:
        dataset.resize(index + 1, axis=0)
    dataset[index] = row


MAX_FRAME_PIXELS = DEFAULT_MAX_PIXELS
MAX_TABLE_ROWS = 10_000_000
MAX_OBJECTS = 10_000


#: decompressing a record's frames and masks may give at most this many times the file's size (deflate's own
#: limit is about 1032:1): more is a file declaring work it does not hold (a decompression bomb)
MAX_EXPANSION = 1100


def _frames_to_read(f: h5py.File, n: int) -> int:
    """How many slices of an n-slice stack a reader reads: the stored layers of a record, else all of them."""
    table = f.get(f"{LW}/layers")
    if isinstance(table, h5py.Dataset) and table.ndim == 1 and "stored" in (table.dtype.names or ()):
        if table.shape[0] > MAX_TABLE_ROWS:
            return n
        return int(np.count_nonzero(table["stored"][:]))
    return n


def _bound_work(f: h5py.File, path: Path, size: int, bad: Callable[[str], RecordError]) -> None:
    """The whole file's work, not one slice's: the frames and masks a reader decompresses must fit what the file
    can hold (MAX_EXPANSION times its size, and 256 MB more), and a record's stored layers must all have their
    frames (a closed record; a live one is read up to the frames its reader sees)."""
    total = 0.0
    names = [n for n in (IMAGES, LEGACY_IMAGES, RECOAT_IMAGES, PART_IDS, SAMPLE_IDS) if n in f]
    if MASKS in f and isinstance(f[MASKS], h5py.Group):
        names += [f"{MASKS}/{k}" for k in f[MASKS]]
    for name in names:
        obj = f[name]
        if not isinstance(obj, h5py.Dataset) or obj.ndim != 3:
            continue
        slices = min(_frames_to_read(f, obj.shape[0]), obj.shape[0])
        total += float(slices) * obj.shape[1] * obj.shape[2] * obj.dtype.itemsize
    if total > MAX_EXPANSION * size + (256 << 20):
        raise bad(
            f"its frames and masks would decompress to {total / 1e9:.1f} GB from a {size / 1e6:.1f} MB file "
            f"(more than {MAX_EXPANSION} times its size)"
        )
    table = f.get(f"{LW}/layers")
    images = IMAGES if IMAGES in f else LEGACY_IMAGES if LEGACY_IMAGES in f else None
    readable = isinstance(table, h5py.Dataset) and table.ndim == 1 and table.shape[0] <= MAX_TABLE_ROWS
    if not f.swmr_mode and images is not None and readable and "stored" in (table.dtype.names or ()):
        stored = np.flatnonzero(table["stored"][:])
        slices = f[images].shape[0]
        if stored.size and int(stored.max()) >= slices:
            raise bad(f"layer {int(stored.max())} is marked stored, but /{images} holds {slices} frames")


def check_layout(f: h5py.File, path: Path) -> None:
    """Refuse a file whose structure would make a reader fail or allocate without bound, before anything is read
    (a crafted 2.5 KB file can declare 65 GB tables). RecordError names the file, the object and the problem.

    Checks any file with the slices layout (ours, a Peregrine-style build, a truth build): nothing in it points
    outside it (no external or soft link, no virtual dataset, no data in another file); frames are 3-D datasets of
    at most MAX_FRAME_PIXELS per slice, masks and part ids of the same frame size, and all the frames and masks a
    reader would decompress fit what the file can hold; every table (1-D dataset) at most MAX_TABLE_ROWS rows and
    not declaring far more than the file can hold; camera dimensions that are the frames'. A LayerWatch record
    also needs its attributes and tables with their fields, and a closed one the frames of its stored layers."""
    size = max(path.stat().st_size, 1) if path.exists() else 1
    count = 0

    def bad(what: str) -> RecordError:
        return RecordError(f"{path}: {what}; not a readable build record (made or changed by another program?)")

    def link(name: str, kind: Any) -> str | None:
        # links are looked at before any object is: nothing a record points to outside itself is ever opened.
        # A problem is returned, which ends the walk (an exception raised inside HDF5's iteration is not safe)
        nonlocal count
        count += 1
        if count > MAX_OBJECTS:
            return f"more than {MAX_OBJECTS} links"
        if isinstance(kind, h5py.ExternalLink):
            return f"/{name} links to {kind.filename!r}: a record holds its own data, it points to no other file"
        if isinstance(kind, h5py.SoftLink):
            return f"/{name} is a soft link (to {kind.path!r}): a record's objects are where their names say"
        return None

    problem = f.visititems_links(link)
    if problem is not None:
        raise bad(problem)
    count = 0

    def visit(name: str, obj: Any) -> None:
        nonlocal count
        count += 1
        if count > MAX_OBJECTS:
            raise bad(f"more than {MAX_OBJECTS} objects")
        if not isinstance(obj, h5py.Dataset):
            return
        if obj.is_virtual:
            raise bad(f"/{name} is a virtual dataset (its data in other files)")
        if obj.external:
            raise bad(f"/{name} keeps its data in another file ({obj.external[0][0]!r})")
        shape: tuple[int, ...] = tuple(obj.shape or ())
        itemsize = obj.dtype.itemsize
        if len(shape) > 4 or itemsize > 1 << 20:
            raise bad(f"/{name} has shape {shape} and {itemsize}-byte items")
        declared = int(np.prod(shape, dtype=np.float64)) * itemsize if shape else itemsize
        if obj.chunks is None and obj.id.get_storage_size() < declared and declared > 64 << 20:
            raise bad(f"/{name} declares {declared / 1e9:.1f} GB but holds {obj.id.get_storage_size()} bytes")
        if len(shape) == 1 and (shape[0] > MAX_TABLE_ROWS or declared > 1000 * size + (64 << 20)):
            raise bad(f"/{name} declares {shape[0]} rows ({declared / 1e9:.1f} GB) in a {size / 1e6:.1f} MB file")

    f.visititems(visit)
    frame: tuple[int, ...] | None = None
    if "slices" in f:
        for name in (IMAGES, LEGACY_IMAGES, RECOAT_IMAGES, PART_IDS, SAMPLE_IDS):
            if name in f:
                obj = f[name]
                if not isinstance(obj, h5py.Dataset) or obj.ndim != 3:
                    raise bad(f"/{name} is not a layers x height x width dataset")
                if obj.shape[1] * obj.shape[2] > MAX_FRAME_PIXELS or 0 in obj.shape[1:]:
                    raise bad(f"/{name} has {obj.shape[2]}x{obj.shape[1]} px frames")
                if obj.dtype.kind not in "uif" and obj.dtype != bool:
                    raise bad(f"/{name} holds {obj.dtype}, not numbers")
                if frame is not None and obj.shape[1:] != frame:
                    raise bad(
                        f"/{name} has {obj.shape[2]}x{obj.shape[1]} px frames, the frames are {frame[1]}x{frame[0]}"
                    )
                frame = frame or obj.shape[1:]
        if MASKS in f:
            group = f[MASKS]
            if not isinstance(group, h5py.Group):
                raise bad(f"/{MASKS} is not a group of masks")
            for key, obj in group.items():
                if not isinstance(obj, h5py.Dataset) or obj.ndim != 3 or obj.dtype.kind not in "uib":
                    raise bad(f"/{MASKS}/{key} is not a layers x height x width mask of integers")
                if frame is not None and obj.shape[1:] != frame:
                    raise bad(
                        f"/{MASKS}/{key} has {obj.shape[2]}x{obj.shape[1]} px masks, the frames are "
                        f"{frame[1]}x{frame[0]}"
                    )
                if obj.shape[1] * obj.shape[2] > MAX_FRAME_PIXELS:
                    raise bad(f"/{MASKS}/{key} has {obj.shape[2]}x{obj.shape[1]} px masks")
    if frame is not None:
        _bound_work(f, path, size, bad)
    for key, axis in (("printer/x_camera_dimension", 1), ("printer/y_camera_dimension", 0)):
        if key in f.attrs:
            try:
                value = float(f.attrs[key])
            except (TypeError, ValueError):
                raise bad(f"attribute {key} is {f.attrs[key]!r}, not a number of pixels") from None
            if not value >= 1 or (frame is not None and int(value) != frame[axis]):
                raise bad(f"attribute {key} is {value:g}: the frames are {frame[1]}x{frame[0]} px" if frame else
                          f"attribute {key} is {value:g}, not a number of pixels")  # fmt: skip
    if SHADOW in f:
        mask, table = f.get(f"{SHADOW}/mask"), f.get(f"{SHADOW}/layers")
        if not isinstance(mask, h5py.Dataset) or mask.ndim != 3 or (frame is not None and mask.shape[1:] != frame):
            raise bad(f"/{SHADOW}/mask is not a layers x height x width mask of the frames' size")
        if not isinstance(table, h5py.Dataset) or not set(SHADOW_DTYPE.names or ()) <= set(table.dtype.names or ()):
            raise bad(f"/{SHADOW}/layers is not a table with {', '.join(SHADOW_DTYPE.names or ())}")
    if f.attrs.get("layerwatch/schema_version") not in READABLE_SCHEMAS:
        return  # not ours, or a schema this version does not read: the caller says which
    a = f.attrs
    required = ("layerwatch/class_names", "layerwatch/metric_names", "layerwatch/part_metric_names")
    for key in (*required, "printer/x_real_dimension", "printer/y_real_dimension", "material/layer_thickness"):
        if key not in a:
            raise bad(f"attribute {key} is missing")
    try:
        names = [str(n) for n in a["layerwatch/class_names"]]
        for key in ("metric_names", "part_metric_names"):
            value = json.loads(a[f"layerwatch/{key}"])
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ValueError(f"{key} is not a list of names")
        for key in ("printer/x_real_dimension", "printer/y_real_dimension", "material/layer_thickness"):
            float(a[key])
    except (KeyError, TypeError, ValueError) as err:
        raise bad(f"attributes: {err}") from None
    if not 2 <= len(names) <= 32:
        raise bad(f"{len(names)} class names")
    for name in (images_path(f), PART_IDS, *(f"{MASKS}/{c}" for c in range(len(names)))):
        if name not in f:
            raise bad(f"/{name} is missing")
    tables: list[tuple[str, tuple[str, ...]]] = [("layers", ("stored", "z_mm", "judged", "severity"))]
    tables += [(t, tuple(TABLES[t].names or ())) for t in TABLES]
    tables += [(t, tuple(d.names or ())) for t, d in OPTIONAL_TABLES.items() if f"{LW}/{t}" in f]
    for name, fields in tables:
        obj = f.get(f"{LW}/{name}")
        if not isinstance(obj, h5py.Dataset) or obj.ndim != 1 or not set(fields) <= set(obj.dtype.names or ()):
            raise bad(f"/{LW}/{name} is missing or is not a table with {', '.join(fields)}")
    for name in ("metrics", "part_metrics"):
        obj = f.get(f"{LW}/{name}")
        if not isinstance(obj, h5py.Dataset) or obj.ndim != 1 or obj.dtype.names is None:
            raise bad(f"/{LW}/{name} is missing or is not a table")
    if not isinstance(f.get(f"{LW}/state"), h5py.Dataset):
        raise bad(f"/{LW}/state is missing")


def _open_for_reading(path: Path) -> h5py.File:
    """A closed record opens plainly; one being written (or left by a crashed writer) with SWMR. Never try
    SWMR on a damaged file: HDF5's SWMR reader retries bad metadata for minutes instead of failing.

    Without HDF5's file lock: a reader that holds a record open (the dashboard keeps its readers) would
    otherwise stop a restarted monitor, or the worker taking a printer over, from opening the build again
    for writing, and every later layer of that build would be refused. Writers still lock each other out,
    and a writer's mark in the file tells a reader to read with SWMR."""
    try:
        return _unlocked(path)
    except OSError as err:
        if "already open for write" not in str(err):
            raise
        return _unlocked(path, libver=("v110", "v110"), swmr=True)


def _held_by_readers_only(path: Path, err: OSError) -> bool:
    """Whether ``err`` is HDF5 failing to lock ``path`` for writing while only readers hold its lock (HDF5
    takes a shared flock to read, an exclusive one to write; an SWMR writer holds none once started)."""
    if "unable to lock file" not in str(err):
        return False
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return False  # an exclusive lock: another writer is opening or holds it
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return True
    finally:
        os.close(fd)


def _unlocked(path: Path, **kwargs: Any) -> h5py.File:
    """``path`` opened to read without a file lock, unless this process already has it open (the monitor
    reading a record it writes), where HDF5 shares that handle and wants the same locking setting."""
    try:
        return h5py.File(path, "r", locking=False, **kwargs)
    except OSError as err:
        if "file locking flag values don't match" not in str(err):
            raise
        return h5py.File(path, "r", **kwargs)


def open_build_file(path: Path) -> h5py.File:
    """Any build file (a LayerWatch record, live or closed; a simulated build with its truth; a Peregrine
    file) opened for reading, its layout checked before anything is read: a crafted file must not make a
    reader allocate without bound. Every failure is a RecordError naming the file."""
    if not path.exists():
        raise RecordError(f"{path} does not exist")
    try:
        f = _open_for_reading(path)
    except OSError as err:
        raise RecordError(f"{path} is not a readable HDF5 file ({err}); is it truncated?") from err
    try:
        check_layout(f, path)
    except RecordError:
        f.close()
        raise
    return f


# ORNL Peregrine's 12 classes (the numbering of its /slices/segmentation_results/<id>) onto ours. Peregrine
# judges the powder bed, we judge parts: spreading anomalies are powder here (not a part defect), swelling and
# super-elevation (material standing above the layer) are warping, debris and spatter (soot) are spatter,
# over- and under-melting (keyhole and lack-of-fusion) are porosity, a misprint is part. docs/record.md.
PEREGRINE_CLASSES = (
    "Powder", "Printed", "Recoater Hopping", "Recoater Streaking", "Incomplete Spreading", "Swelling", "Debris",
    "Super-Elevation", "Spatter", "Misprint", "Over Melting", "Under Melting",
)  # fmt: skip
PEREGRINE_TO_OURS = (0, 1, 0, 0, 0, 4, 3, 4, 3, 1, 2, 2)


def _class_map(f: h5py.File) -> dict[int, int]:
    """Each mask id of the file -> our class id: ours as they are; a Peregrine file's 12 classes mapped."""
    ids = sorted(int(k) for k in f[MASKS] if k.isdigit())
    named = f[MASKS].attrs.get("class_names")
    names = [n.decode() if isinstance(n, bytes) else str(n) for n in named] if named is not None else []
    peregrine = names[:2] == list(PEREGRINE_CLASSES[:2]) or (not names and ids and max(ids) >= 5)
    if peregrine and f.attrs.get("layerwatch/schema_version") is None:
        lookup = {n.lower(): PEREGRINE_TO_OURS[i] for i, n in enumerate(PEREGRINE_CLASSES)}
        if names:
            return {i: lookup.get(names[i].lower(), 0) for i in ids if i < len(names)}
        return {i: PEREGRINE_TO_OURS[i] for i in ids if i < len(PEREGRINE_TO_OURS)}
    return {i: i for i in ids}


def class_sources(f: h5py.File) -> dict[int, list[int]]:
    """Our class id -> the file's mask ids that make it (one each in our files; several in a Peregrine file)."""
    out: dict[int, list[int]] = {}
    for source, ours in _class_map(f).items():
        out.setdefault(ours, []).append(source)
    return out


def layer_class(f: h5py.File, cls: int, layer: int) -> np.ndarray:
    """(H, W) bool: where ``layer`` is of our class ``cls`` in a build file (ours, or a Peregrine file's)."""
    out = np.zeros(f[images_path(f)].shape[1:], dtype=bool)
    for source in class_sources(f).get(cls, []):
        out |= np.asarray(f[f"{MASKS}/{source}"][layer]).astype(bool)
    return out


def class_mask(f: h5py.File, layer: int) -> np.ndarray:
    """(H, W) uint8 class ids of ``layer`` (ours), from the build file's per-class masks; where masks overlap,
    the higher of our ids wins (a defect over the part it is on)."""
    out = np.zeros(f[images_path(f)].shape[1:], dtype=np.uint8)
    mapping = _class_map(f)
    for source, ours in sorted(mapping.items(), key=lambda kv: kv[1]):
        if ours:
            out[np.asarray(f[f"{MASKS}/{source}"][layer]).astype(bool)] = ours
    return out


_READERS: weakref.WeakSet[RecordReader] = weakref.WeakSet()
_READERS_LOCK = threading.Lock()


def _let_go_of_readers(path: Path) -> bool:
    """Close this process's readers of ``path`` (they read as stale and are opened anew): HDF5 will not open a
    file for writing that the same process has open to read. Whether there was one."""
    try:
        target = path.stat()
    except OSError:
        return False
    found = False
    with _READERS_LOCK:
        readers = list(_READERS)
    for reader in readers:
        if reader._released or not reader._f.id.valid:
            continue
        if (reader._opened.st_dev, reader._opened.st_ino) == (target.st_dev, target.st_ino):
            reader._released = True
            reader._f.close()
            found = True
    return found


class RecordReader:
    """Reads a record, also while it is being written (SWMR); :meth:`refresh` sees new layers."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._released = False  # closed so that this process could write the file (stale from then on)
        try:
            self._f = _open_for_reading(path)
        except OSError as err:
            raise RecordError(f"cannot open build record {path}: {err}") from err
        if self._f.attrs.get("layerwatch/schema_version") is None:
            self._f.close()
            raise RecordError(f"{path} is an HDF5 file but not a LayerWatch build record")
        try:
            check_layout(self._f, path)
        except RecordError:
            self._f.close()
            raise
        self._images = images_path(self._f)
        self._opened = os.fstat(self._f.id.get_vfd_handle())
        with _READERS_LOCK:
            _READERS.add(self)

    def stale(self) -> bool:
        """Whether this reader no longer sees the record its path names: the file was replaced (a recovery after
        a crash puts a rewritten copy in its place) or, where the record was closed when this reader opened it
        (read plainly, not refreshed), it has been written since (a restarted monitor continued it, a label was
        stored), or this process closed it to write the file. A reader kept open (the dashboard's) is opened
        anew when stale."""
        if self._released:
            return True
        try:
            now = self.path.stat()
        except OSError:
            return True
        if (now.st_dev, now.st_ino) != (self._opened.st_dev, self._opened.st_ino):
            return True
        return not self._f.swmr_mode and now.st_mtime_ns != self._opened.st_mtime_ns

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> RecordReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def refresh(self) -> None:
        if not self._f.swmr_mode:
            return  # the writer had closed the file when we opened it: nothing new will come
        # the writer stores a layer's data before its stored flag: reading the flags first means the data
        # refreshed after them is at least as new
        for name in ["layers", "metrics", "part_metrics", "state", *TABLES, *OPTIONAL_TABLES]:
            if name in self._f[LW]:
                self._f[f"{LW}/{name}"].refresh()
        for name in self._slices():
            self._f[name].refresh()
        if SHADOW in self._f:
            self._f[f"{SHADOW}/layers"].refresh()
            self._f[f"{SHADOW}/mask"].refresh()

    @property
    def attrs(self) -> dict[str, Any]:
        return {k: (v.decode() if isinstance(v, bytes) else v) for k, v in self._f.attrs.items()}

    @property
    def class_names(self) -> list[str]:
        return [str(n) for n in self._f.attrs["layerwatch/class_names"]]

    @property
    def frame_size(self) -> tuple[int, int]:
        """(height, width) of the frames, px."""
        h, w = self._f[self._images].shape[1:]
        return int(h), int(w)

    def json_attr(self, name: str) -> Any:
        return json.loads(self._f.attrs[f"layerwatch/{name}"])

    @property
    def state(self) -> str:
        return bytes(self._f[f"{LW}/state"][()]).decode().strip()

    def layers(self) -> np.ndarray:
        return np.asarray(self._f[f"{LW}/layers"][:])

    def _slices(self) -> list[str]:
        return [self._images, PART_IDS, *(f"{MASKS}/{c}" for c in range(len(self.class_names)))]

    def stored_layers(self) -> np.ndarray:
        """Layers stored and visible to this reader. Under SWMR each dataset is refreshed on its own, so a
        reader may see a layer's stored flag before the frame datasets that grew for it: such a layer is
        left for the next refresh rather than read past the end of a dataset."""
        rows = self.layers()
        if not rows.shape[0]:
            return np.zeros(0, dtype=np.int64)
        visible = min(self._f[name].shape[0] for name in self._slices())
        return np.flatnonzero(rows["stored"][:visible])

    def _slice(self, name: str, layer: int) -> np.ndarray:
        d = self._f[name]
        if layer >= d.shape[0] and self._f.swmr_mode:
            d.refresh()
        if not 0 <= layer < d.shape[0]:
            raise RecordError(f"{self.path}: layer {layer} is not stored (the record has {d.shape[0]} rows)")
        return np.asarray(d[layer])

    def image(self, layer: int) -> np.ndarray:
        return self._slice(self._images, layer)

    def mask(self, layer: int) -> np.ndarray:
        """(H, W) uint8 class ids, rebuilt from the per-class masks."""
        out = np.zeros(self.frame_size, dtype=np.uint8)
        for c in range(1, len(self.class_names)):
            out[self._slice(f"{MASKS}/{c}", layer).astype(bool)] = c
        return out

    def part_ids(self, layer: int) -> np.ndarray:
        return self._slice(PART_IDS, layer)

    def illumination(self) -> tuple[np.ndarray, int] | None:
        """The reference lighting the frames were flat-fielded by and the first layer it was used on, or None."""
        if f"{LW}/{ILLUMINATION}_from" not in self._f:
            return None
        if self._f.swmr_mode:
            self._f[f"{LW}/{ILLUMINATION}_from"].refresh()
            self._f[f"{LW}/{ILLUMINATION}"].refresh()
        start = int(self._f[f"{LW}/{ILLUMINATION}_from"][0])
        if start < 0:
            return None
        illum = np.asarray(self._f[f"{LW}/{ILLUMINATION}"][...])
        return (illum, start) if illum.shape == self.frame_size and np.isfinite(illum).all() else None

    def seen_image(self, layer: int) -> np.ndarray:
        """The frame of ``layer`` as the model saw it: flat-fielded by the reference lighting where it was
        (float32 in [0, 1])."""
        from segmentation.preprocess import flat_field, to_gray_float

        gray = to_gray_float(self.image(layer))
        ref = self.illumination()
        return flat_field(gray, ref[0]) if ref is not None and layer >= ref[1] else gray

    @property
    def shadow_model(self) -> dict[str, str] | None:
        """The shadow model that ran beside the model in use ({"id", "sha256"}), or None."""
        raw = self._f.attrs.get("layerwatch/shadow_model")
        return json.loads(raw) if raw is not None and SHADOW in self._f else None

    def shadow_layers(self) -> dict[int, dict[str, Any]]:
        """The shadow model's judgement per layer: severity, disagree (share of pixels), would_act, rules."""
        if SHADOW not in self._f:
            return {}
        out = {}
        for row in self._f[f"{SHADOW}/layers"][:]:
            try:
                rules = json.loads(_py(row["rules"]))
            except ValueError:
                rules = []
            out[int(row["layer"])] = {
                "severity": Severity.from_index(int(row["severity"])),
                "disagree": float(row["disagree"]),
                "would_act": bool(row["would_act"]),
                "rules": rules,
            }
        return out

    def shadow_mask(self, layer: int) -> np.ndarray | None:
        """(H, W) class ids the shadow model gave ``layer``, or None where it did not judge it."""
        if SHADOW not in self._f or layer not in self.shadow_layers():
            return None
        return self._slice(f"{SHADOW}/mask", layer)

    def metrics(self) -> np.ndarray:
        return np.asarray(self._f[f"{LW}/metrics"][:])

    def part_metrics(self) -> np.ndarray:
        return np.asarray(self._f[f"{LW}/part_metrics"][:])

    def table(self, name: str) -> list[dict[str, Any]]:
        """Rows of an append-only table (events, actions, feedback, telemetry, labels) as dicts; a table this
        record was made without is empty."""
        if name in OPTIONAL_TABLES and name not in self._f[LW]:
            return []
        return _rows(self._f[f"{LW}/{name}"][:])

    def table_at(self, name: str, layer: int) -> list[dict[str, Any]]:
        """The rows of ``name`` (a table with a ``layer`` column) about ``layer``: only their layer column is read
        whole, not every row's text (an action row holds up to 8 KB)."""
        if name in OPTIONAL_TABLES and name not in self._f[LW]:
            return []
        d = self._f[f"{LW}/{name}"]
        at = np.flatnonzero(d.fields("layer")[:] == layer)
        return _rows(d[at.tolist()]) if len(at) else []


_MAX_BOXES = 64


def action_boxes(
    actions: Sequence[Mapping[str, Any]], request_id: str | None = None, layer: int | None = None
) -> list[tuple[int, int, int, int]]:
    """The evidence rectangles ((x, y, width, height) camera px) kept in the ``detail`` of ``actions`` rows:
    of one request, or of every pause, cancel and other action a rule took at ``layer``. What is not a list
    of four whole numbers from 0 to 65535 is skipped (a record is a file like any other)."""
    out: list[tuple[int, int, int, int]] = []
    for row in actions:
        if (request_id is not None and row.get("request_id") != request_id) or (
            layer is not None and (row.get("layer") != layer or row.get("rule") in ("", "operator"))
        ):
            continue
        try:
            where = json.loads(row.get("detail") or "{}").get("where") or []
        except (ValueError, AttributeError, RecursionError):
            continue
        for box in where if isinstance(where, list) else []:
            if (
                isinstance(box, list)
                and len(box) == 4
                and all(type(v) is int and 0 <= v <= 0xFFFF for v in box)
                and tuple(box) not in out
            ):
                out.append((box[0], box[1], box[2], box[3]))
        if len(out) >= _MAX_BOXES:
            return out[:_MAX_BOXES]
    return out


def _rows(data: np.ndarray) -> list[dict[str, Any]]:
    """Table rows (a structured array) as dicts of Python values."""
    fields = data.dtype.names or ()
    return [{k: _py(row[k]) for k in fields} for row in data]


def _py(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, np.generic):
        return value.item()
    return value


def set_attrs(path: Path, attrs: Mapping[str, Any]) -> None:
    """Add ``layerwatch/<key>`` attributes to a closed record (e.g. which record a replay replays)."""
    with h5py.File(path, "r+", libver=("v110", "v110")) as f:
        for key, value in attrs.items():
            f.attrs[f"layerwatch/{key}"] = value


def write_truth_build(
    path: Path,
    images: Sequence[np.ndarray],
    masks: Sequence[np.ndarray],
    *,
    mm_per_px: float,
    layer_thickness_mm: float,
    class_names: Sequence[str],
    description: str = "",
) -> None:
    """A build in the plain Peregrine layout with *ground-truth* masks (a simulated build, or a labelled
    one from elsewhere): ``/slices/camera_data/0``, ``/slices/segmentation_results/<id>`` and the
    calibration attributes, plus ``layerwatch/ground_truth = 1``. Replay reads it like any build file."""
    h, w = images[0].shape[:2]
    tmp = path.with_suffix(".writing.h5")
    gzip: dict[str, Any] = {"compression": "gzip", "compression_opts": 4, "shuffle": True}
    with h5py.File(tmp, "w", libver=("v110", "v110")) as f:
        f.create_dataset(IMAGES, data=np.stack(images), chunks=(1, h, w), **gzip)
        stack = np.stack(masks)
        for cid in range(len(class_names)):
            f.create_dataset(f"{MASKS}/{cid}", data=(stack == cid).astype(np.uint8), chunks=(1, h, w), **gzip)
        f[MASKS].attrs["class_names"] = list(class_names)
        f.attrs["printer/x_real_dimension"] = w * mm_per_px
        f.attrs["printer/y_real_dimension"] = h * mm_per_px
        f.attrs["printer/x_camera_dimension"] = w
        f.attrs["printer/y_camera_dimension"] = h
        f.attrs["material/layer_thickness"] = layer_thickness_mm
        f.attrs["layerwatch/ground_truth"] = 1
        f.attrs["layerwatch/class_names"] = list(class_names)
        f.attrs["layerwatch/description"] = description
    tmp.replace(path)


def check_record(path: Path) -> list[str]:
    """Problems with a record's layout, as lines; empty when it is a valid LayerWatch/Peregrine record."""
    problems: list[str] = []
    try:  # as stock tools (h5dump, h5ls, plain h5py) open it
        with h5py.File(path, "r"):
            pass
    except OSError as err:
        if "already open for write" not in str(err) and "lock" not in str(err):
            return [f"cannot open build record {path}: {err}"]
        problems.append(
            "marked open for writing (its writer still runs, or crashed): stock HDF5 tools cannot open it; if no "
            "monitor writes it any more, `layerwatch record check --repair FILE` rewrites it so that they can"
        )
    try:
        reader = RecordReader(path)
    except RecordError as err:
        return [*problems, str(err)]
    with reader:
        f = reader._f
        for attr in ("printer/x_real_dimension", "printer/y_real_dimension", "printer/x_camera_dimension",
                     "printer/y_camera_dimension", "material/layer_thickness"):  # fmt: skip
            if attr not in f.attrs:
                problems.append(f"missing root attribute {attr}")
        if f.attrs.get("layerwatch/schema_version") not in READABLE_SCHEMAS:
            problems.append(
                f"schema version {f.attrs.get('layerwatch/schema_version')} is not one of {READABLE_SCHEMAS}"
            )
        images = images_path(f)
        required = [images, PART_IDS] + [f"{MASKS}/{c}" for c in range(len(reader.class_names))]
        required += [f"{LW}/{n}" for n in ("layers", "metrics", "part_metrics", "state", *TABLES)]
        for name in required:
            if name not in f:
                problems.append(f"missing dataset /{name}")
        if any(p.startswith("missing") for p in problems):
            return problems
        z, h, w = f[images].shape
        if (w, h) != (f.attrs["printer/x_camera_dimension"], f.attrs["printer/y_camera_dimension"]):
            problems.append(f"/{images} is {w}x{h} px but the camera attributes say otherwise")
        for name in [PART_IDS] + [f"{MASKS}/{c}" for c in range(len(reader.class_names))]:
            if f[name].shape[1:] != (h, w):
                problems.append(f"/{name} has frame shape {f[name].shape[1:]}, expected {(h, w)}")
        stored = reader.stored_layers()
        if stored.size and stored.max() >= z:
            problems.append(f"layer {int(stored.max())} is marked stored but /{images} has only {z} slices")
    return problems


# files a writer leaves beside a record: one being created, a recovery's copy in progress (left by a
# crash during the recovery), the original a recovery kept
_SIDE_FILES = (".creating.h5", ".recovering.h5", ".crashed.h5")


def is_build_record(path: Path) -> bool:
    """Whether ``path`` is named as a build record (``*.h5``, not a file left beside one)."""
    return path.suffix == ".h5" and not path.name.endswith(_SIDE_FILES)


def build_records(folder: Path, *, recursive: bool = False) -> list[Path]:
    """The build records in ``folder`` (and below it where ``recursive``), sorted by path."""
    found = folder.rglob("*.h5") if recursive else folder.glob("*.h5")
    return sorted(p for p in found if is_build_record(p))


def recover(path: Path) -> Path:
    """Rewrite a record left open by a crashed writer so that any tool (and a new writer) can open it.

    Reads it with SWMR (which a crash does not prevent), copies every group, dataset and attribute
    into ``NAME.recovering.h5``, writes it to disk and puts it in place; the original is kept as
    ``NAME.crashed.h5`` (a second link to it, made before the copy replaces it, so that ``NAME`` names
    one whole record at every moment: a crash during a recovery leaves the original or the copy there,
    never nothing, and the recovery can simply be run again).
    """
    src = _open_for_reading(path)
    tmp = path.with_suffix(".recovering.h5")
    with src, h5py.File(tmp, "w", libver=("v110", "v110")) as dst:
        for key, value in src.attrs.items():
            dst.attrs[key] = value
        for name in src:
            src.copy(src[name], dst, name=name)
        dst.flush()
        os.fsync(dst.id.get_vfd_handle())
    kept = path.with_suffix(".crashed.h5")
    kept.unlink(missing_ok=True)  # an earlier recovery's original
    os.link(path, kept)
    tmp.replace(path)
    return path
