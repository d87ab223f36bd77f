"""A layer's path through the monitor, in this order (one frame at a time per printer, on its link's worker):

1. decode: the message split and its images decoded, bounded before anything is allocated;
2. admit: its build (opened or resumed, monitor.opening), its bounds and numbering; a layer already stored ends
   here (its stored result is published again), an after-recoat frame is kept and ends here;
3. segment: the model's mask (flat-fielded by the build's lighting, only the build plate);
4. decide: metrics and the policy's rules; whether the layer is judged (sound, in order, familiar);
5. act: with the watcher's last reading of the printer, whether the layer waited for the monitor while the print
   moved on (judged, never acted on), else the controller pauses or notifies, before anything is stored (a pause
   never waits for the disk);
6. store: one record call for the layer, then the printer's telemetry;
7. publish: the layer's result;

then the observers (monitor.observers), each isolated. A stage ends the layer early by returning False or
raising PayloadError (refused input: counted and said by the link). The printer's state comes from the
watcher's last reading (monitor.jobs), never from a network call here.
"""

from __future__ import annotations

import base64
import itertools
import logging
import time
from collections.abc import Mapping

import numpy as np

from monitor.buildstate import Build, LayerContext, LayerOutcome
from monitor.opening import build_for
from monitor.policy import Box, RuleHit, evidence_boxes
from monitor.ports import PrinterPort
from monitor.record import RecordError
from printer_io.errors import PayloadError
from printer_io.frames import decode_image
from printer_io.messages import ResultMessage, RuleHitInfo, split_frame
from printer_io.printer import ACTIVE_STATES
from printer_io.vocabulary import Severity
from segmentation.imageio import class_overlay_png
from segmentation.preprocess import illumination, to_gray, to_gray_float

__all__ = ["STAGES", "LayerPath"]

log = logging.getLogger(__name__)

STAGES = ("decode", "admit", "segment", "decide", "act", "store", "publish")
_LAYER_STEP = 5  # layers a camera may miss between two frames before the numbering waits for confirmation
_MAX_LAYER_JUMP = 1000  # a frame further ahead of the build's last layer is refused (the record would grow by it)
_MAX_FIRST_LAYER = 100_000  # the first frame of a build (a monitor started mid-build) may be at most this layer
_MOVED_ON = 3  # a frame this many layers behind the printer's own layer waited: judged, not acted on


class LayerPath:
    """One printer's frames, each through the stages in order."""

    def __init__(self, pm: PrinterPort) -> None:
        self.pm = pm
        self._dropped_seen = 0

    def on_frame(self, topic: str, payload: bytes) -> None:
        pm = self.pm
        ctx = self.decode(topic, payload)
        with pm.lock:
            if not self.admit(ctx):
                return
            self.segment(ctx)
            self.decide(ctx)
            self.act(ctx)
            self.store(ctx)
            self.publish(ctx)
            pm.observers.layer_done(ctx)

    # ---- 1. decode ------------------------------------------------------------------------------------
    def decode(self, topic: str, payload: bytes) -> LayerContext:
        pm = self.pm
        received = time.time()
        t0 = time.perf_counter()
        meta, data, part_data = split_frame(payload, topic)
        if meta.printer != pm.printer_id:
            raise PayloadError(f"{topic}: frame of printer {meta.printer!r} on {pm.printer_id!r}'s topic", "printer")
        if pm.camera.frame_came():  # the camera is there: a "no frames" problem said before is over
            pm.link.set_problem("")
        dropped = pm.link.rejected["dropped"]
        if dropped > self._dropped_seen:
            pm.emit_event(
                "warning",
                "frames_dropped",
                f"{dropped - self._dropped_seen} frame(s) dropped before layer {meta.layer}: frames came faster than "
                "the monitor judges them; the oldest were dropped, the newest kept",
                meta.layer,
            )
            self._dropped_seen = dropped
        try:
            limit = pm.service.config.monitor.max_frame_pixels
            image = decode_image(data, topic, max_pixels=limit, expect=(meta.width, meta.height))
            object_ids = decode_image(part_data, topic, max_pixels=limit) if part_data else None
        except PayloadError as err:
            pm.counters["bad_frames"] += 1
            pm.emit_event("error", "frame_undecodable", f"layer {meta.layer}: {err}; layer not judged", meta.layer)
            raise
        if object_ids is not None and object_ids.shape != image.shape[:2]:
            pm.emit_event(
                "warning", "part_ids_size", f"layer {meta.layer}: part ids of another size ignored", meta.layer
            )
            object_ids = None
        ctx = LayerContext(meta, received, image, object_ids)
        ctx.timings_ms["decode"] = (time.perf_counter() - t0) * 1000
        return ctx

    # ---- 2. admit -------------------------------------------------------------------------------------
    def admit(self, ctx: LayerContext) -> bool:
        """The layer's build, and the frame as the gray the model sees; False where the layer ends here."""
        pm, meta = self.pm, ctx.meta
        build = ctx.build = build_for(pm, meta, ctx.frame)
        if meta.view == "recoat":
            self._recoat(build, ctx)
            return False
        layer = meta.layer
        self._bound(build, layer, "layer")
        if build.record.is_stored(layer):
            pm.counters["duplicates"] += 1
            log.info(
                "%s: layer %d of %s already stored; its stored result is published again, nothing is redone",
                pm.printer_id, layer, meta.job_id,
            )  # fmt: skip
            self._conflict(build, ctx)
            self._republish(build, ctx)
            return False
        limit = pm.jobs.event_layers.get(meta.job_id)
        if pm.jobs.trigger_seen and limit is not None and layer > limit:
            # the printer's layer events say how far the print is: a frame further ahead is no camera's of it
            raise pm.refusal(
                "layer_refused",
                f"frame of layer {layer} is ahead of the printer (its last layer event: layer {limit}): refused, "
                "not stored",
                max(build.last_layer, 0),
                f"frame of layer {layer} ahead of the printer's layer {limit}",
                "layer",
            )
        # decoded frames are in OpenCV's BGR order: the gray the model sees is the gray the record keeps
        # (and a replay, or `layerwatch segment` on the colour file, sees the same numbers)
        gray = to_gray(ctx.frame, order="bgr")
        if gray.shape != build.record.frame_size:
            pm.counters["bad_frames"] += 1
            h, w = build.record.frame_size
            pm.emit_event(
                "error",
                "frame_size",
                f"layer {layer} is {gray.shape[1]}x{gray.shape[0]} px but this build's frames are {w}x{h}; layer not "
                "judged (camera changed mid-build?)",
                layer,
            )
            raise PayloadError(f"layer {layer}: frame size changed mid-build", "size")
        ctx.gray = gray
        return True

    def _bound(self, build: Build, layer: int, what: str) -> None:
        """Refuse a layer beyond what the build can have reached: one message must not make the record grow to a
        forged layer number."""
        limit = _MAX_FIRST_LAYER if build.last_layer < 0 else build.last_layer + _MAX_LAYER_JUMP
        if layer > limit:
            raise self.pm.refusal(
                "layer_refused",
                f"{what} {layer} is beyond what build {build.job_id} can have reached (at most layer {limit} now): "
                "refused, not stored",
                max(build.last_layer, 0),
                f"{what} {layer} of build {build.job_id} is out of bounds (at most {limit})",
                "layer",
            )

    def _recoat(self, build: Build, ctx: LayerContext) -> None:
        """An after-recoat frame: kept in the record (Peregrine's ``visible/1``), never judged; the first one is
        the build's lighting reference (plain powder, nothing printed on it yet) unless there is one already."""
        pm, meta = self.pm, ctx.meta
        self._bound(build, meta.layer, "after-recoat frame of layer")
        gray = to_gray(ctx.frame, order="bgr")
        if gray.shape != build.record.frame_size:
            why = f"after-recoat frame of layer {meta.layer} has another size than the build's frames: ignored"
            pm.emit_event("warning", "frame_size", why, meta.layer)
            return
        build.record.append_recoat(meta.layer, gray)
        if build.illum is None and pm.service.config.monitor.reference_layers:
            build.illum = illumination(to_gray_float(gray), build.roi_mask)
            build.illum_frames.clear()
            build.record.set_illumination(build.illum, meta.layer)
            log.info("%s: reference lighting from the after-recoat frame of layer %d", pm.printer_id, meta.layer)

    def _conflict(self, build: Build, ctx: LayerContext) -> None:
        """A second frame for a stored layer: a redelivery is the same frame; a different one (a camera the site
        did not set up, a forgery) is recorded as a conflict, never silently taken for a redelivery."""
        meta = ctx.meta
        try:
            stored = build.record.image(meta.layer)
        except (RecordError, OSError, KeyError, IndexError):
            return
        gray = to_gray(ctx.frame, order="bgr")
        if gray.shape == stored.shape and np.array_equal(gray, stored):
            return
        self.pm.emit_event(
            "error",
            "frame_conflict",
            f"two different frames for layer {meta.layer}: the first one stored is kept; the other (source "
            f"{meta.source or 'unnamed'!r}, captured {time.strftime('%H:%M:%S', time.localtime(meta.captured_at))}) is "
            "not. A camera the site did not set up may publish on this printer's topic: give each camera its own "
            "broker user (layerwatch security broker-config)",
            meta.layer,
        )

    def _republish(self, build: Build, ctx: LayerContext) -> None:
        """A redelivered frame of a stored layer (a crash between storing and publishing): publish the
        stored result, so no layer stays without one; the actions of that layer are never taken twice."""
        pm, meta = self.pm, ctx.meta
        stored = build.record.stored_layer(meta.layer)
        res = ResultMessage(
            printer=pm.printer_id,
            job_id=meta.job_id,
            layer=meta.layer,
            z_mm=stored["z_mm"],
            judged=stored["judged"],
            severity=stored["severity"],
            metrics=_numbers(stored["metrics"]),
            parts=[_numbers(p) for p in stored["parts"]],
            quality=meta.quality,
            captured_at=stored["captured_at"] or meta.captured_at,
            received_at=ctx.received,
            model=pm.service.model_id,
            record=str(build.record.path),
        )
        pm.link.publish(pm.link.topics.result, res.to_json())

    # ---- 3. segment -----------------------------------------------------------------------------------
    def segment(self, ctx: LayerContext) -> None:
        assert ctx.build is not None and ctx.gray is not None
        t0 = time.perf_counter()
        build = ctx.build
        ctx.segmentation = self.pm.service.segmenter.segment(ctx.gray, roi=build.roi_mask, illumination=build.illum)
        ctx.timings_ms["segment"] = (time.perf_counter() - t0) * 1000

    # ---- 4. decide ------------------------------------------------------------------------------------
    def decide(self, ctx: LayerContext) -> None:
        """Measure, and apply the policy. A layer is judged only when its frame is sound, in order and familiar."""
        assert ctx.build is not None and ctx.segmentation is not None
        pm, build, meta, result = self.pm, ctx.build, ctx.meta, ctx.segmentation
        layer = meta.layer
        t0 = time.perf_counter()
        m = ctx.metrics = build.metrics.compute(result.mask, part_ids=ctx.object_ids, gray=ctx.gray)
        m.values["ood_score"] = result.ood
        ctx.timings_ms["metrics"] = (time.perf_counter() - t0) * 1000
        quality = meta.quality
        ctx.late = late = layer < build.last_layer
        unfamiliar = pm.service.config.monitor.ood_check and result.unfamiliar
        ctx.judged = (quality is None or quality.ok) and not late and not unfamiliar
        ctx.sound = (quality is None or quality.ok) and not late
        if unfamiliar:
            pm.counters["needs_review"] += 1
            pm.emit_event(
                "warning",
                "needs_review",
                f"layer {layer} looks unlike the frames the model was trained on (score {result.ood:.1f} times its "
                "threshold): not judged automatically, never paused on; review it on the dashboard and label it",
                layer,
            )
        if quality is not None and not quality.ok:
            pm.emit_event(
                "warning", "frame_quality", f"layer {layer} frame is {', '.join(quality.problems)}: not judged", layer
            )
        if late:
            pm.counters["late"] += 1
            pm.emit_event(
                "warning",
                "layer_out_of_order",
                f"layer {layer} arrived after layer {build.last_layer}: stored, not judged",
                layer,
            )
        ctx.hits = build.policy.evaluate(layer, m.values, m.parts, judged=ctx.judged)
        ctx.hit_infos = [_hit_info(h) for h in ctx.hits]  # what the result says of them, in words

    def _waited(self, build: Build, ctx: LayerContext, printer_layer: int | None) -> bool:
        """Whether this layer waited for the monitor (it was down or behind) while the print moved on: the printer
        reports a layer at least _MOVED_ON layers further, or, where it reports none, the frame was captured more
        than ``[monitor] live_window_s`` ago. Said once per backlog; and once when the monitor has caught up."""
        pm, meta = self.pm, ctx.meta
        if printer_layer is not None:
            waited = printer_layer - meta.layer >= _MOVED_ON
        else:
            waited = time.time() - meta.captured_at > pm.service.config.monitor.live_window_s
        if waited and build.backlog is None:
            build.backlog = (meta.layer, meta.layer)
            age = time.time() - meta.captured_at
            pm.emit_event(
                "warning",
                "backlog",
                f"layer {meta.layer} waited {age:.0f} s for the monitor (it was down or behind) and the print has "
                "moved on: the layers that waited are judged and stored in order, not acted on; acting resumes with "
                "the live layers",
                meta.layer,
            )
        elif waited and build.backlog is not None:
            build.backlog = (build.backlog[0], meta.layer)
        elif not waited and build.backlog is not None:
            first, last = build.backlog
            build.backlog = None
            pm.emit_event(
                "info",
                "caught_up",
                f"caught up: layers {first}-{last} were judged late (not acted on); layer {meta.layer} is live",
                meta.layer,
            )
        return waited

    # ---- 5. act ---------------------------------------------------------------------------------------
    def act(self, ctx: LayerContext) -> None:
        """The controller's decision on the layer's rule hits, before anything is stored. The printer's state
        is the watcher's last reading; a layer that waited for the monitor is judged, never acted on as live."""
        assert ctx.build is not None and ctx.metrics is not None and ctx.segmentation is not None
        pm, build, m = self.pm, ctx.build, ctx.metrics
        # the watcher's last reading, taken under the printer's lock (an action's outcome may have just changed
        # it): no network call here
        state, current, printer_layer = pm.jobs.reading()
        ctx.waited = ctx.judged and self._waited(build, ctx, printer_layer)
        if state is not None and state.state in ACTIVE_STATES:
            build.printer_was_active = True
        mask = ctx.segmentation.mask

        def locate(hit: RuleHit) -> tuple[Box, ...]:
            return evidence_boxes(hit.rule, hit.part_id, mask, m)

        if ctx.judged and not ctx.waited:
            decided = state.state if state is not None and current else None
            ctx.actions = pm.controller.decide(ctx.meta.layer, ctx.hits, m.values, decided, locate=locate)
        ctx.outcome = LayerOutcome(
            mask=mask,
            metrics=m,
            hits=ctx.hits,
            actions=ctx.actions,
            judged=ctx.judged,
            late=ctx.late,
            severity=Severity.worst(h.rule.severity for h in ctx.hits),
            printer=state,
            timings_ms=ctx.timings_ms,
            object_ids=ctx.object_ids,
        )

    # ---- 6. store -------------------------------------------------------------------------------------
    def store(self, ctx: LayerContext) -> None:
        """Append the layer to the build record (with the printer's telemetry), then move the numbering on."""
        assert ctx.build is not None and ctx.outcome is not None and ctx.gray is not None
        pm, build, meta, outcome = self.pm, ctx.build, ctx.meta, ctx.outcome
        layer, m, state = meta.layer, outcome.metrics, outcome.printer
        t1 = time.perf_counter()
        build.record.append_layer(
            layer,
            z_mm=meta.z_mm,
            image=ctx.gray,
            mask=outcome.mask,
            part_ids=m.part_ids,
            sample_ids=ctx.object_ids,
            metrics=m.values,
            part_metrics=[{"layer": layer, **p} for p in m.parts],
            captured_at=meta.captured_at,
            quality=meta.quality.model_dump() if meta.quality is not None else {},
            judged=outcome.judged,
            severity=outcome.severity,
        )
        ctx.timings_ms["record"] = (time.perf_counter() - t1) * 1000
        if state is None and pm.printer is not None:
            build.record.add_telemetry(layer, "offline", meta.z_mm, None, None)  # the page says so in words
        if state is not None:
            job = state.job
            build.record.add_telemetry(
                layer, state.state.value, job.z_mm if job and job.z_mm else meta.z_mm, state.feed_pct, state.flow_pct
            )
        self._advance(build, layer, outcome.late)
        self._check_thickness(build, layer, meta.z_mm)
        build.layers_judged += int(outcome.judged)
        pm.counters["layers"] += 1

    def _check_thickness(self, build: Build, layer: int, z_mm: float) -> None:
        """The printer's z steps against the record's layer thickness: a disagreement of more than 10 % over the
        last layers is said once a build (volumes in the report follow the layers' own heights)."""
        build.heights.append((layer, z_mm))
        if build.thickness_said or len(build.heights) < 5:
            return
        pairs = sorted(build.heights)
        steps = [(z1 - z0) / (k1 - k0) for (k0, z0), (k1, z1) in itertools.pairwise(pairs) if k1 > k0 and z1 > z0]
        if len(steps) < 4:
            return
        step = float(np.median(steps))
        if abs(step - build.thickness) > 0.1 * build.thickness:
            build.thickness_said = True
            self.pm.emit_event(
                "warning",
                "units",
                f"the printer's z rises {step:.4g} mm a layer, the record says {build.thickness:g} mm "
                f"([printers.{self.pm.printer_id}] or [monitor] layer_thickness_mm): volumes in the report use the "
                "layers' own heights; fix the config",
                layer,
            )

    def _advance(self, build: Build, layer: int, late: bool) -> None:
        """The numbering moves on by small steps, or by a bigger one that the next frame confirms: one frame
        far ahead must not make every later layer "late", never judged. Layers skipped (no frame came for them:
        the camera missed them, or they were lost on the way) are said, each gap once."""
        if not late and build.last_layer >= 0 and layer > build.last_layer + 1:
            first, last = build.last_layer + 1, layer - 1
            self.pm.emit_event(
                "warning",
                "layers_missing",
                f"no frame came for layer{'s' if last > first else ''} {first}{f'-{last}' if last > first else ''} "
                "(the camera missed them, or they were lost on the way): not judged",
                layer,
            )
        steady = build.last_layer < 0 or layer <= build.last_layer + _LAYER_STEP
        confirmed = build.ahead is not None and 0 < layer - build.ahead <= _LAYER_STEP
        if steady or confirmed:
            build.last_layer, build.ahead = max(build.last_layer, layer), None
        elif not late:
            build.ahead = layer
            self.pm.emit_event(
                "info",
                "layer_jump",
                f"layer {layer} follows layer {build.last_layer}: judged; the numbering moves on when the next frame "
                "follows it",
                layer,
            )
        build.gaps.append(time.monotonic() - build.last_seen)
        build.last_seen = time.monotonic()

    # ---- 7. publish -----------------------------------------------------------------------------------
    def publish(self, ctx: LayerContext) -> None:
        assert ctx.build is not None and ctx.outcome is not None
        pm, meta, outcome = self.pm, ctx.meta, ctx.outcome
        m, times = outcome.metrics, ctx.timings_ms
        res = ResultMessage(
            printer=pm.printer_id,
            job_id=meta.job_id,
            layer=meta.layer,
            z_mm=meta.z_mm,
            judged=outcome.judged,
            severity=outcome.severity,
            metrics=_numbers(m.values),
            parts=[_numbers(p) for p in m.parts],
            hits=ctx.hit_infos,
            actions=[a.request_id for a in outcome.actions],
            quality=meta.quality,
            captured_at=meta.captured_at,
            received_at=ctx.received,
            segment_ms=round(times["segment"], 2),
            timings_ms={k: round(times[k], 2) for k in ("decode", "segment", "metrics", "record")},
            model=pm.service.model_id,
            record=str(ctx.build.record.path),
            overlay=self._overlay(ctx),
        )
        pm.link.publish(pm.link.topics.result, res.to_json())
        v = m.values
        log.info(
            "%s layer %d: porosity %.2f%% spatter %.2f%% of the part area, confirmed warping %.1f mm²%s",
            pm.printer_id,
            meta.layer,
            100 * v["porosity_fraction_part"],
            100 * v["spatter_fraction_part"],
            v["warping_confirmed_area_mm2"],
            "; " + ", ".join(f"{a.action} ({a.rule})" for a in outcome.actions) if outcome.actions else "",
        )

    def _overlay(self, ctx: LayerContext) -> str:
        side = self.pm.service.config.monitor.result_overlay_px
        if not side or ctx.segmentation is None:
            return ""
        return base64.b64encode(class_overlay_png(ctx.segmentation.mask, side)).decode()


def _numbers(values: Mapping[str, float]) -> dict[str, int | float]:
    """Metrics for a message: counts and ids as integers, NaN (not measured) left out."""
    out: dict[str, int | float] = {}
    for k, v in values.items():
        if v != v:
            continue
        whole = k.endswith("_count") or k == "part_id"
        out[k] = int(v) if whole and float(v).is_integer() else float(v)
    return out


def _hit_info(hit: RuleHit) -> RuleHitInfo:
    return RuleHitInfo(
        rule=hit.rule.name,
        severity=hit.rule.severity,
        value=hit.value,
        threshold=hit.rule.threshold,
        part_id=hit.part_id,
        description=hit.describe(),
    )
