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

The package depends on nothing else of LayerWatch (but printer_io's vocabulary and segmentation's limits): the
monitor and the dashboards both use it. Its modules: ``layout`` (paths, rows, spec), ``view`` (the read side,
the same for writer and readers), ``writer``, ``reader``, ``files`` (opening, naming, recovery), ``validate``
(a file checked before it is read), ``peregrine`` (Peregrine's classes onto ours).
"""

from __future__ import annotations

from monitor.record.files import build_records, is_build_record, open_build_file, recover, set_attrs, write_truth_build
from monitor.record.layout import (
    IMAGES,
    LEGACY_IMAGES,
    LW,
    MASKS,
    PART_IDS,
    READABLE_SCHEMAS,
    RECOAT_IMAGES,
    SAMPLE_IDS,
    SCHEMA_VERSION,
    TABLES,
    WRITABLE_SCHEMAS,
    RecordError,
    RecordSpec,
    images_path,
)  # fmt: skip
from monitor.record.peregrine import PEREGRINE_CLASSES, PEREGRINE_TO_OURS, class_mask, class_sources, layer_class
from monitor.record.reader import RecordReader, action_boxes, check_record
from monitor.record.validate import MAX_EXPANSION, MAX_FRAME_PIXELS, MAX_OBJECTS, MAX_TABLE_ROWS, check_layout
from monitor.record.view import RecordView
from monitor.record.writer import BuildRecord

__all__ = [
    "IMAGES", "LEGACY_IMAGES", "LW", "MASKS", "MAX_EXPANSION", "MAX_FRAME_PIXELS", "MAX_OBJECTS", "MAX_TABLE_ROWS",
    "PART_IDS", "PEREGRINE_CLASSES", "PEREGRINE_TO_OURS", "READABLE_SCHEMAS", "RECOAT_IMAGES", "SAMPLE_IDS",
    "SCHEMA_VERSION", "TABLES", "WRITABLE_SCHEMAS", "BuildRecord", "RecordError", "RecordReader", "RecordSpec",
    "RecordView", "action_boxes", "build_records", "check_layout", "check_record", "class_mask", "class_sources",
    "images_path", "is_build_record", "layer_class", "open_build_file", "recover", "set_attrs", "write_truth_build",
]  # fmt: skip
