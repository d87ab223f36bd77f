"""The record's layout: dataset paths, table rows, the spec a record is made from, and the one error."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import h5py
import numpy as np

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
