"""Writing a record: created complete or not at all, appended layer by layer in SWMR mode, each append flushed
(and fsynced where asked), so that a writer killed at any moment leaves every stored layer readable."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from monitor.record.files import _held_by_readers_only, _let_go_of_readers, recover
from monitor.record.layout import (
    ILLUMINATION,
    IMAGES,
    LABEL_DTYPE,
    LAYER_DTYPE,
    LW,
    MASKS,
    OPTIONAL_TABLES,
    PART_IDS,
    READABLE_SCHEMAS,
    RECOAT_IMAGES,
    SAMPLE_IDS,
    SCHEMA_VERSION,
    SHADOW,
    SHADOW_DTYPE,
    TABLES,
    WRITABLE_SCHEMAS,
    RecordError,
    RecordSpec,
    _fit,
    images_path,
)  # fmt: skip
from monitor.record.view import RecordView
from printer_io.vocabulary import Severity

__all__ = ["BuildRecord"]


class BuildRecord(RecordView):
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
            f = _open_past_own_readers(path)
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

    def _commit(self) -> None:
        self._f.flush()
        if self._fsync:
            os.fsync(self._f.id.get_vfd_handle())

    # ---- appends ----------------------------------------------------------------------------------
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


_OWN_READER_WAIT_S = 2.0  # a reader of this process still opening the file (checking its layout) is waited for


def _open_past_own_readers(path: Path) -> h5py.File:
    """``path`` opened for writing, although a reader in this process has it open (the demo's dashboard, a
    test's poll): HDF5 will not open a file again to write that the same process has open to read. Such
    readers are closed (they read as stale and are opened anew); one still opening it (checking its layout,
    not yet known) is waited for a moment. Raises OSError where the file stays open to read."""
    deadline = time.monotonic() + _OWN_READER_WAIT_S
    while True:
        try:
            return h5py.File(path, "r+", libver=("v110", "v110"))
        except OSError as err:
            if "already open for read-only" not in str(err):
                raise
            if not _let_go_of_readers(path) and time.monotonic() > deadline:
                raise
            time.sleep(0.02)
