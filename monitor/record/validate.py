"""A record (or any build file) checked before anything is read from it: nothing outside the file, bounded
work, the layout a reader relies on (monitor.record.files opens every file through it)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from monitor.record.layout import (
    IMAGES,
    LEGACY_IMAGES,
    LW,
    MASKS,
    OPTIONAL_TABLES,
    PART_IDS,
    READABLE_SCHEMAS,
    RECOAT_IMAGES,
    SAMPLE_IDS,
    SHADOW,
    SHADOW_DTYPE,
    TABLES,
    RecordError,
    images_path,
)  # fmt: skip
from segmentation.imageio import DEFAULT_MAX_PIXELS

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
