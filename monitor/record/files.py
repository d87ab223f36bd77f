"""Opening build files to read (without HDF5's file lock, SWMR where a writer has it), naming and finding
records, recovering one a crashed writer left, and the plain truth-build files simulations write."""

from __future__ import annotations

import fcntl
import os
import threading
import weakref
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import h5py
import numpy as np

from monitor.record.layout import IMAGES, MASKS, RecordError
from monitor.record.validate import check_layout


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


class _Reader(Protocol):
    _released: bool
    _f: h5py.File
    _opened: os.stat_result


_READERS: weakref.WeakSet[_Reader] = weakref.WeakSet()
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
