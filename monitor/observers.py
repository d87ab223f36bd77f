"""What hangs off a layer once it is judged, acted on, stored and published: the lighting reference, drift,
notifications, Home Assistant, the shadow model.

Each is an :class:`Observer` with two hooks, ``build_opened`` (a new or resumed build: set up, or rebuild
from the record what a restarted monitor forgot) and ``layer_done`` (after the layer's result is out), and
is registered here like a printer backend. Each is isolated: a failure is logged and counted under its own
name (``<name>_failed``); it costs neither another observer nor the layer. A new observer is one class and
one line in ``OBSERVERS``.
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar

import numpy as np

from monitor.buildstate import Build, LayerContext
from monitor.drift import DriftSettings, DriftWatch, layer_stats
from monitor.metrics import MetricsComputer
from monitor.policy import PolicyEngine
from monitor.ports import PrinterPort
from printer_io.messages import ActionState
from printer_io.vocabulary import Severity
from segmentation.preprocess import illumination, powder_lighting, to_gray_float

__all__ = ["OBSERVERS", "Observer", "Observers"]

log = logging.getLogger(__name__)


class Observer:
    """One add-on of a printer's monitor. Subclasses set ``name`` and override the hooks they need."""

    name: ClassVar[str] = ""

    def __init__(self, pm: PrinterPort) -> None:
        self.pm = pm

    @classmethod
    def wanted(cls, pm: PrinterPort) -> bool:
        """Whether this printer's monitor runs it (its config section enabled)."""
        return True

    def start(self) -> None:
        """Once, when the printer's link is up."""

    def build_opened(self, build: Build, resumed: bool) -> None:
        """A build was opened (``resumed``: continued from its record, with layers stored before)."""

    def layer_done(self, ctx: LayerContext) -> None:
        """A layer is judged, stored and its result published."""


class LightingReference(Observer):
    """The camera's fixed lighting, learnt from the plain powder of a build's first layers (or taken from the
    printer's configured reference frame): the next layers are segmented flat-fielded by it."""

    name = "lighting"

    def build_opened(self, build: Build, resumed: bool) -> None:
        self._reference_image(build)
        if not resumed:
            return
        known = build.record.illumination()
        build.illum = known[0] if known is not None else None
        for layer in (int(n) for n in build.record.stored_layers()):
            if build.illum is not None:
                break  # the frames are read only until the lighting is known
            mask, _ = build.record.layer_for_restart(layer)
            self._learn(build, build.record.image(layer), mask, layer)

    def layer_done(self, ctx: LayerContext) -> None:
        assert ctx.build is not None and ctx.gray is not None and ctx.segmentation is not None
        self._learn(ctx.build, ctx.gray, ctx.segmentation.mask, ctx.meta.layer)

    def _learn(self, build: Build, frame: np.ndarray, mask: np.ndarray, layer: int) -> None:
        n = self.pm.service.config.monitor.reference_layers
        if n == 0 or build.illum is not None:
            return
        lighting = powder_lighting(to_gray_float(frame), mask, build.roi_mask)
        if lighting is None:
            return  # too little plain powder to see the lighting by
        build.illum_frames.append(lighting)
        if len(build.illum_frames) >= n:
            build.illum = np.mean(build.illum_frames, axis=0).astype(np.float32)
            build.illum_frames.clear()
            build.record.set_illumination(build.illum, layer + 1)  # this layer was judged without it
            log.info("%s: reference lighting taken from the first %d layers", self.pm.printer_id, n)

    def _reference_image(self, build: Build) -> None:
        """The printer's configured reference frame (the plate before exposure), if any, as the build's lighting."""
        pm = self.pm
        section = pm.service.config.printers.get(pm.printer_id)
        path = section.reference_image if section is not None else None
        if path is None:
            return
        from segmentation.errors import ImageError
        from segmentation.imageio import read_image

        try:
            gray = to_gray_float(read_image(path, max_pixels=pm.service.config.monitor.max_frame_pixels))
        except ImageError as err:
            pm.emit_event("warning", "reference_unusable", f"{err}; the first layers give the lighting instead", 0)
            return
        shape = build.record.frame_size
        if gray.shape != shape:
            pm.emit_event(
                "warning",
                "reference_unusable",
                f"{path} is {gray.shape[1]}x{gray.shape[0]} px, the frames {shape[1]}x{shape[0]}: "
                "the first layers give the lighting instead",
                0,
            )
            return
        build.illum = illumination(gray, build.roi_mask)
        build.record.set_illumination(build.illum, 0)


class Drift(Observer):
    """This printer's frames and class areas against the model's and the printer's reference (monitor.drift)."""

    name = "drift"

    def __init__(self, pm: PrinterPort) -> None:
        super().__init__(pm)
        self.watch: DriftWatch | None = None

    @classmethod
    def wanted(cls, pm: PrinterPort) -> bool:
        return bool(pm.service.config.monitor.drift_reference_layers)

    def layer_done(self, ctx: LayerContext) -> None:
        if ctx.sound:  # unfamiliar frames too: they are what drift is made of
            assert ctx.build is not None and ctx.gray is not None and ctx.segmentation is not None
            seg = ctx.segmentation
            self._add(ctx.meta.layer, ctx.gray, seg.mask, ctx.build.roi_mask, seg.ood)

    def _add(
        self, layer: int, gray: np.ndarray, mask: np.ndarray, roi: np.ndarray | None, ood: float, say: bool = True
    ) -> None:
        pm = self.pm
        cfg = pm.service.config.monitor
        path = cfg.out_dir / pm.printer_id / f"drift-{pm.service.model_sha256[:12]}.json"
        if self.watch is None or self.watch.path != path:  # a new model: its own reference on this printer
            settings = DriftSettings(reference_layers=cfg.drift_reference_layers, window=cfg.drift_window)
            self.watch = DriftWatch.open(path, settings)
        finding = self.watch.add(layer, layer_stats(gray, mask, roi, ood))
        if finding is not None and say:
            pm.counters["drift"] += 1
            pm.emit_event("warning", "drift", finding.message(pm.printer_id, cfg.drift_window), layer)

    def build_opened(self, build: Build, resumed: bool) -> None:
        """A restarted monitor (or a worker taking the printer over) refills the drift window with the build's
        last sound layers, which the process before it had watched: otherwise a camera drifting around a
        crash is said a whole window later. Nothing is said again while refilling (a finding the refilled
        window holds was said before, and the window starts afresh as it did then)."""
        if not resumed or self.watch is not None:
            return  # this process has watched the layers itself
        record = build.record
        rows = record.layer_rows()
        metrics = record.table("metrics")
        sound: list[int] = []
        latest = -1
        for layer in sorted((int(n) for n in record.stored_layers()), key=lambda n: float(rows[n]["stored_at"])):
            late, latest = layer < latest, max(latest, layer)  # stored but never judged, as on arrival
            if not late and not any(rows[layer][k] for k in ("blurry", "frozen", "too_dark", "too_bright")):
                sound.append(layer)
        for layer in sound[-self.pm.service.config.monitor.drift_window :]:
            mask, _ = record.layer_for_restart(layer)
            ood = float(metrics[layer].get("ood_score", float("nan"))) if layer < len(metrics) else float("nan")
            self._add(layer, record.image(layer), mask, build.roi_mask, ood, say=False)


class Notifications(Observer):
    """Tell people of the actions taken on a layer ([notifications]), off the layer's path."""

    name = "notify"

    @classmethod
    def wanted(cls, pm: PrinterPort) -> bool:
        return bool(pm.service.config.notifications.routes)

    def layer_done(self, ctx: LayerContext) -> None:
        pm = self.pm
        notifier = pm.service.notifier
        if notifier is None or not ctx.actions:
            return
        from monitor.notify import Notice, evidence_png

        assert ctx.build is not None and ctx.gray is not None and ctx.segmentation is not None
        evidence = b""
        for action in ctx.actions:
            if action.state == ActionState.REQUESTED and notifier.wants(pm.printer_id, action):
                if not evidence:  # one image for the layer: every rectangle of its actions
                    boxes = [b for a in ctx.actions for b in pm.controller.where(a.request_id)]
                    evidence = evidence_png(ctx.gray, ctx.segmentation.mask, boxes)
                notifier.submit(Notice(pm.printer_id, action, evidence, ctx.build.record.path.name, action.time))


class HomeAssistantState(Observer):
    """The printer as a Home Assistant device: its state after every layer, a Pause button (monitor.homeassistant)."""

    name = "homeassistant"

    def __init__(self, pm: PrinterPort) -> None:
        super().__init__(pm)
        self.device: Any = None
        self._incident: tuple[str, dict[str, Any] | None] = ("", None)  # (job, its last incident)

    @classmethod
    def wanted(cls, pm: PrinterPort) -> bool:
        return pm.service.config.homeassistant.enabled

    def start(self) -> None:
        from monitor.homeassistant import HomeAssistant

        ha = self.pm.service.config.homeassistant
        self.device = HomeAssistant(self.pm, ha.discovery_prefix, getattr(self.pm.service, "ha_operator", None))
        self.device.start()

    def build_opened(self, build: Build, resumed: bool) -> None:
        rows = [a for a in build.record.table("actions") if a["incident"] and a["state"] == "requested"]
        self._incident = (build.job_id, rows[-1] if rows else None)  # a continued build: its last incident

    def layer_done(self, ctx: LayerContext) -> None:
        if self.device is None:
            return
        assert ctx.build is not None and ctx.outcome is not None
        outcome = ctx.outcome
        for a in outcome.actions:  # this layer's own requests keep it current
            if a.incident and a.state == ActionState.REQUESTED:
                self._incident = (ctx.build.job_id, {"action": str(a.action), "rule": a.rule, "layer": a.layer})
        last = self._incident[1] if self._incident[0] == ctx.build.job_id else None
        self.device.publish_state(
            {
                "state": str(outcome.printer.state) if outcome.printer is not None else "unknown",
                "job": ctx.build.job_id,
                "layer": ctx.meta.layer,
                "severity": str(outcome.severity),
                "incident": f"{last['action']} ({last['rule']}) at layer {last['layer']}" if last else "none",
            }
        )


class Shadow(Observer):
    """The shadow model's judgement of the layer, after the result is out (it never delays an action): its
    mask, the rules that would hold and whether it would have acted, stored beside the real ones."""

    name = "shadow"

    def __init__(self, pm: PrinterPort) -> None:
        super().__init__(pm)
        self._metrics: MetricsComputer | None = None  # the shadow's own measurement and rule windows
        self._policy: PolicyEngine | None = None

    @classmethod
    def wanted(cls, pm: PrinterPort) -> bool:
        return pm.service.config.monitor.shadow_model is not None

    def build_opened(self, build: Build, resumed: bool) -> None:
        self._metrics = self._policy = None
        if self.pm.service.shadow is None or not build.record.has_shadow:
            return
        self._metrics, self._policy = MetricsComputer(build.record.mm_per_px), PolicyEngine(self.pm.policy)
        if not resumed:
            return
        for layer, mask in sorted(build.record.shadow_masks().items()):  # its memory and windows from its masks
            m = self._metrics.compute(mask, part_ids=build.record.sample_ids(layer))
            self._policy.evaluate(layer, m.values, m.parts)

    def layer_done(self, ctx: LayerContext) -> None:
        shadow = self.pm.service.shadow
        if shadow is None or self._metrics is None or self._policy is None:
            return
        assert ctx.build is not None and ctx.gray is not None and ctx.outcome is not None
        build, outcome, layer = ctx.build, ctx.outcome, ctx.meta.layer
        result = shadow.segment(ctx.gray, roi=build.roi_mask, illumination=build.illum)
        m = self._metrics.compute(result.mask, part_ids=ctx.object_ids, gray=ctx.gray)
        hits = self._policy.evaluate(layer, m.values, m.parts, judged=outcome.judged)
        would_act = outcome.judged and any(a.type != "notify" for h in hits for a in h.rule.actions)
        build.record.append_shadow(
            layer,
            result.mask,
            severity=Severity.worst(h.rule.severity for h in hits),
            disagree=float(np.count_nonzero(result.mask != outcome.mask)) / max(result.mask.size, 1),
            would_act=would_act,
            rules=sorted({h.rule.name for h in hits}),
        )


#: the observers a printer's monitor runs, in this order, where ``wanted``
OBSERVERS: tuple[type[Observer], ...] = (LightingReference, Drift, Notifications, HomeAssistantState, Shadow)


class Observers:
    """A printer's observers, each isolated from the others and from the layer."""

    def __init__(self, pm: PrinterPort, kinds: tuple[type[Observer], ...] = OBSERVERS) -> None:
        self.pm = pm
        self.items = [kind(pm) for kind in kinds if kind.wanted(pm)]

    def get(self, name: str) -> Observer | None:
        return next((o for o in self.items if o.name == name), None)

    def _each(self, hook: str, layer: int, *args: Any) -> None:
        for obs in self.items:
            try:
                getattr(obs, hook)(*args)
            except Exception as err:  # an add-on must never cost another, the layer or the monitor
                self.pm.counters[f"{obs.name}_failed"] += 1
                log.warning("%s: %s failed (%s) at layer %d: %s", self.pm.printer_id, obs.name, hook, layer, err)

    def start(self) -> None:
        self._each("start", 0)

    def build_opened(self, build: Build, resumed: bool) -> None:
        self._each("build_opened", max(build.last_layer, 0), build, resumed)

    def layer_done(self, ctx: LayerContext) -> None:
        self._each("layer_done", ctx.meta.layer, ctx)
