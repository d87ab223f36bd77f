"""Opening a printer's build when its first frame comes: a new record, or the job's record continued (a monitor
restarted mid-build, a worker taking the printer over), from which the running state is rebuilt; the build's
units and build plate; a reprint of a closed job gets a record of its own."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from monitor import __version__
from monitor.buildstate import Build, record_stem
from monitor.metrics import METRIC_NAMES, PART_METRIC_NAMES, MetricsComputer
from monitor.policy import PolicyEngine
from monitor.ports import PrinterPort
from monitor.record import BuildRecord, RecordError, RecordReader, RecordSpec
from monitor.requests import roi_file
from printer_io.errors import PayloadError
from printer_io.messages import FrameMeta
from segmentation.classes import CLASS_NAMES
from segmentation.preprocess import to_gray
from segmentation.roi import Roi, propose_roi

__all__ = ["FRAME_METRICS", "build_for"]

log = logging.getLogger(__name__)

#: Per-frame figures stored beside the mask metrics (not usable in rules: they judge the frame, not the layer).
FRAME_METRICS = ("ood_score",)
_REPRINT_LAYERS = 2  # a closed job's record that holds one of its first layers again: the job is printed again


def build_for(pm: PrinterPort, meta: FrameMeta, frame: np.ndarray) -> Build:
    """The build ``meta``'s frame belongs to: the open one, else a new or continued one (the open one closed).
    Raises PayloadError for a frame of a job that may not start now."""
    jobs = pm.jobs
    if pm.build is not None and pm.build.job_id == meta.job_id:
        return pm.build
    if jobs.trigger_seen and meta.job_id not in jobs.announced:
        # the printer's layer events say which job prints: a frame naming another never starts one
        raise pm.refusal(
            "other_job_refused",
            f"frame of job {meta.job_id[:80]!r} (layer {meta.layer}), which no layer event of printer "
            f"{pm.printer_id} announced: refused",
            meta.layer,
            f"frame of job {meta.job_id[:80]!r} that no layer event announced",
            "job",
        )
    if pm.build is not None:
        jobs.other_job(pm.build, meta.job_id, meta.layer, "frame")
    path, again = _record_path(pm, meta.job_id, meta.layer)
    if meta.job_id in jobs.ended_jobs and not again:
        pm.emit_event(
            "error", "build_ended", f"layer {meta.layer} arrived for build {meta.job_id}, which has ended; not stored",
            meta.layer,
        )  # fmt: skip
        raise PayloadError(f"layer {meta.layer} of ended build {meta.job_id}", "ended")
    jobs.ended_jobs.discard(meta.job_id)
    pm.close_build("closed")
    scale, thickness, units_said = _units(pm, meta)
    h, w = frame.shape[:2]
    dtype = "uint16" if frame.dtype == np.uint16 else "uint8"
    resumed = path.exists()
    fsync = pm.service.config.monitor.fsync
    try:
        if resumed:
            record = BuildRecord.open(path, fsync=fsync)
            roi = _stored_roi(record) or _initial_roi(pm, to_gray(frame, order="bgr"))
            stored = len(record.stored_layers())
            log.info("%s: continuing build record %s (%d layers stored)", pm.printer_id, path, stored)
        else:
            roi = _initial_roi(pm, to_gray(frame, order="bgr"))
            record = BuildRecord.create(path, _spec(pm, meta.job_id, h, w, dtype, roi, scale, thickness), fsync=fsync)
            log.info("%s: new build %s, record %s", pm.printer_id, meta.job_id, path)
    except RecordError as err:
        pm.emit_event("critical", "record_failed", str(err), meta.layer)
        raise PayloadError(str(err), "record") from err
    if resumed:  # the record's own units, whatever this first frame after a restart says
        scale, thickness = record.mm_per_px, record.layer_thickness_mm
    build = Build(meta.job_id, record, MetricsComputer(scale), PolicyEngine(pm.policy))
    build.thickness = thickness
    build.set_roi(roi, (h, w))
    pm.build = build
    pm.last_record = record.path
    for text in units_said if not resumed else []:
        pm.emit_event("warning", "units", text, meta.layer)
    if record.shared_with_reader:
        pm.emit_event(
            "warning",
            "record_shared",
            f"{record.path} is held open by another program reading it (HDF5's file lock); the build goes on "
            "without the lock, and that program shows the record as it was: reopen it there to see later layers",
            meta.layer,
        )
    if roi is not None and roi.source == "proposed" and not resumed:
        pm.emit_event(
            "info",
            "roi_proposed",
            f"build plate proposed from the first frame: {[list(p) for p in roi.points]}; only it is judged. "
            "Confirm it on the dashboard, or set [printers.<id>] roi in the config",
            meta.layer,
        )
    pm.controller.new_build(meta.job_id, pm.service.model_id)
    pm.observers.build_opened(build, resumed)
    _restore(pm, build)
    return build


def _restore(pm: PrinterPort, build: Build) -> None:
    """A monitor restarted mid-build (or a worker taking the printer over) rebuilds from the record what the
    next layers are judged with: the metrics' memory of earlier layers (warping confirmed across layers, part
    footprints), rule windows and incidents (the observers rebuild their own). Nothing is acted on again."""
    record = build.record
    stored = record.stored_layers()
    if not len(stored):
        return
    metrics = record.table("metrics")
    parts = record.table("part_metrics")
    last = int(stored.max())
    for layer in (int(n) for n in stored):
        mask, samples = record.layer_for_restart(layer)
        # the last layer's frame too: its confirmed warping is what the next layer's growth is measured from
        build.metrics.compute(mask, part_ids=samples, gray=record.image(layer) if layer == last else None)
        rows = [p for p in parts if int(p["layer"]) == layer]
        build.policy.evaluate(layer, metrics[layer], rows)
    pm.controller.restore_handled(int(n) for n in stored)
    pm.controller.restore(record.table("actions"))
    build.last_layer = last


def _record_path(pm: PrinterPort, job_id: str, layer: int) -> tuple[Path, bool]:
    """Where ``job_id``'s frames go, and whether it is printed again. The job's newest record is continued
    (a monitor restarted mid-build, a late layer), unless it is closed and already holds this layer
    among the first ones: the same file printed again, which gets a record of its own."""
    folder = pm.service.config.monitor.out_dir / pm.printer_id
    stem = record_stem(job_id)
    newest: Path | None = None
    for n in range(1, 10_000):
        path = folder / (f"{stem}.h5" if n == 1 else f"{stem}~{n}.h5")
        if not path.exists():
            break
        newest = path
    if newest is None:
        return path, False
    try:
        with RecordReader(newest) as r:
            rows = r.layer_rows()
            again = r.state != "writing" and layer <= _REPRINT_LAYERS and layer < len(rows)
            again = again and bool(rows[layer]["stored"])
    except RecordError:
        return newest, False  # opening it for writing says what is wrong with it
    return (path, True) if again else (newest, False)


def _stored_roi(record: BuildRecord) -> Roi | None:
    """The build plate a record was made with (a monitor restarted mid-build keeps judging the same area)."""
    try:
        data = record.json_attr("roi")
        return Roi.from_points(data["points"], str(data.get("source", "proposed"))) if data else None
    except (ValueError, KeyError, TypeError):
        return None


def _initial_roi(pm: PrinterPort, frame: np.ndarray) -> Roi | None:
    """The configured plate, else the one an operator confirmed, else one proposed from this frame."""
    section = pm.service.config.printers.get(pm.printer_id)
    if section is not None and section.roi is not None:
        return Roi.from_points(section.roi, "config")
    saved_file = roi_file(pm)
    if saved_file.is_file():
        try:
            saved = json.loads(saved_file.read_text())
            return Roi.from_points(saved["points"], "confirmed")
        except (OSError, ValueError, KeyError, TypeError) as err:
            log.warning("%s: %s is unreadable (%s); proposing the plate again", pm.printer_id, saved_file, err)
    if not pm.service.config.monitor.propose_roi:
        return None
    return propose_roi([frame])


def _units(pm: PrinterPort, meta: FrameMeta) -> tuple[float, float, list[str]]:
    """(mm per px, layer thickness in mm) of a new build. ``[printers.<id>]`` wins where it sets them (a frame's
    word is the network's); else what the camera (the frame's ``mm_per_px``) and the printer (z of the layer)
    report; else ``[monitor]``'s. A report that disagrees with a value set in the config is a warning (returned:
    said once the build's record is there to keep it)."""
    cfg = pm.service.config
    section = cfg.printers.get(pm.printer_id)
    own = {k for k in ("mm_per_px", "layer_thickness_mm") if section is not None and getattr(section, k)}
    general = cfg.monitor.model_fields_set
    reported = {
        "mm_per_px": meta.mm_per_px,
        "layer_thickness_mm": meta.z_mm / (meta.layer + 1) if 0 < meta.z_mm / (meta.layer + 1) <= 5 else None,
    }
    what = {"mm_per_px": ("the camera's scale", "mm/px"), "layer_thickness_mm": ("the printer's layers", "mm")}
    chosen: dict[str, float] = {}
    said: list[str] = []
    for key, report in reported.items():
        configured = getattr(section, key) if key in own else getattr(cfg.monitor, key)
        value = configured if key in own or report is None else report
        chosen[key] = float(value)
        explicit = key in own or key in general
        if report is not None and explicit and abs(report - configured) > 0.1 * configured:
            where = f"[printers.{pm.printer_id}]" if key in own else "[monitor]"
            used = "the config's" if key in own else "the reported one"
            name, unit = what[key]
            said.append(
                f"{name}: {report:.4g} {unit} reported, {where} {key} = {configured:g}: this build uses {used} "
                f"({value:.4g} {unit}); fix whichever is wrong (areas and volumes follow it)"
            )
    return chosen["mm_per_px"], chosen["layer_thickness_mm"], said


def _spec(
    pm: PrinterPort, job_id: str, h: int, w: int, dtype: str, roi: Roi | None, scale: float, thickness: float
) -> RecordSpec:
    svc = pm.service
    return RecordSpec(
        printer=pm.printer_id,
        job_id=job_id,
        height=h,
        width=w,
        dtype=dtype,
        mm_per_px=scale,
        layer_thickness_mm=thickness,
        class_names=tuple(CLASS_NAMES),
        metric_names=(*METRIC_NAMES, *FRAME_METRICS),
        part_metric_names=PART_METRIC_NAMES,
        config=svc.config.to_record(),
        policy=pm.policy.model_dump(mode="json"),
        model={"id": svc.model_id, "sha256": svc.model_sha256},
        shadow={"id": svc.shadow_id, "sha256": svc.shadow_sha256} if svc.shadow is not None else None,
        software_version=__version__,
        compression_level=svc.config.monitor.gzip_level,
        roi=roi.to_json() if roi is not None else None,
    )
