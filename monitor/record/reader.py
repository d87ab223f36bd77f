"""Reading a record, also while it is written (SWMR), kept open by the dashboard and refreshed; ``check_record``
for ``layerwatch record check``; the evidence rectangles kept with the actions."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import h5py

from monitor.record.files import _READERS, _READERS_LOCK, _open_for_reading
from monitor.record.layout import (
    LW,
    MASKS,
    OPTIONAL_TABLES,
    PART_IDS,
    READABLE_SCHEMAS,
    SHADOW,
    TABLES,
    RecordError,
    images_path,
)  # fmt: skip
from monitor.record.validate import check_layout
from monitor.record.view import RecordView

__all__ = ["RecordReader", "action_boxes", "check_record"]


class RecordReader(RecordView):
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

    def _refresh(self, dataset: h5py.Dataset) -> None:
        if self._f.swmr_mode:
            dataset.refresh()

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
