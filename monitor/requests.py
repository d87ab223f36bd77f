"""An operator's requests to one printer's monitor: pause and resume, verdicts on incidents, labels on stored
layers, the build plate. Each is verified (printer_io.credentials) before anything is done, carried out
once however often the broker delivers it, and answered on the action topic."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from monitor.controller import job_key
from monitor.ports import PrinterPort
from monitor.record import BuildRecord, RecordError, RecordReader, build_records
from printer_io.credentials import DUPLICATE
from printer_io.errors import PayloadError
from printer_io.messages import ActionMessage, ActionState
from segmentation.classes import CLASS_NAMES
from segmentation.roi import Roi

__all__ = ["OperatorRequests", "roi_file"]

log = logging.getLogger(__name__)

_MAX_ROI_POINTS = 64
# requests only a verified operator may make (printer_io.credentials)
_OPERATOR_ACTIONS = frozenset({"pause", "resume", "cancel", "gcode", "exclude_object", "feedback", "roi", "label"})


def roi_file(pm: PrinterPort) -> Path:
    """Where the build plate an operator confirmed for this printer is kept."""
    return pm.service.config.monitor.out_dir / pm.printer_id / "roi.json"


class OperatorRequests:
    """One printer's operator requests."""

    def __init__(self, pm: PrinterPort, record_action: Callable[[ActionMessage], None]) -> None:
        self.pm = pm
        self._record_action = record_action
        # the pause and resume requests carried out (a redelivery runs once), oldest first
        self._done: dict[str, None] = {}

    def on_action(self, topic: str, payload: bytes) -> None:
        pm = self.pm
        msg = ActionMessage.from_json(payload, topic)
        if msg.state != ActionState.REQUESTED or msg.action not in _OPERATOR_ACTIONS:
            return  # outcomes, notifications
        if not msg.operator and not msg.signature and msg.rule and msg.rule != "operator":
            return  # our own automatic request, echoed by the broker
        refusal = pm.service.verifier.refusal(msg)
        if refusal == DUPLICATE:
            return  # a redelivered request already carried out
        if refusal is not None:
            self._refuse(msg, refusal)
            return
        if msg.action in ("pause", "resume"):
            self._operator_command(msg)
            return
        if msg.action == "roi":
            self._confirm_roi(msg, topic)
            return
        if msg.action == "label":
            self._carry_out(msg, self._store_labels)
            return
        if msg.action != "feedback":
            why = f"{msg.action} is not taken from operator requests: pause, resume, feedback, label and roi are"
            self._answer(msg, ActionState.FAILED, why)
            return
        self._carry_out(msg, self._store_feedback)
        log.info(
            "%s: operator %s says incident %s is %s", pm.printer_id, msg.operator or "?", msg.incident, msg.verdict
        )

    def _carry_out(self, msg: ActionMessage, store: Callable[[ActionMessage], str]) -> None:
        try:
            where = store(msg)
        except PayloadError as err:
            self._answer(msg, ActionState.FAILED, str(err))
            raise
        self._answer(msg, ActionState.CONFIRMED, f"stored in {where}")

    def _store_feedback(self, msg: ActionMessage) -> str:
        """An operator's verdict on an incident of any build this monitor recorded; returns the record's name."""
        if msg.verdict == "":
            raise PayloadError("feedback without a verdict (false_alarm or confirmed_defect)", "field")

        def known(view: Any) -> None:
            if not any(a["incident"] == msg.incident for a in view.table("actions")):
                raise PayloadError(f"build {view.job_id} has no incident {msg.incident!r}", "incident")

        return self.in_record(
            lambda job: msg.incident.startswith(f"{job_key(job)}:"),
            f"has an incident {msg.incident!r}",
            known,
            lambda record: record.add_feedback(msg.incident, msg.verdict, msg.operator, msg.reason, at=msg.time),
        )

    def _store_labels(self, msg: ActionMessage) -> str:
        """An operator's strokes on one stored layer of a build this monitor recorded (live or closed)."""
        from monitor.labels import LABEL_VALUES

        layer = msg.layer
        if layer is None or not msg.labels or not msg.job_id:
            raise PayloadError("a label request needs job_id, layer and at least one stroke", "field")
        for i, stroke in enumerate(msg.labels):
            if stroke.label not in LABEL_VALUES:
                raise PayloadError(
                    f"stroke {i}: label {stroke.label} is not a class id 0-{len(CLASS_NAMES) - 1}, 254 (no defect "
                    "here) or 255 (erase)",
                    "field",
                )
            least = {"brush": 1, "region": 3, "frame": 0}[stroke.kind]
            if len(stroke.points) < least:
                raise PayloadError(f"stroke {i}: a {stroke.kind} needs at least {least} point(s)", "field")

        def fits(view: Any) -> None:
            if layer not in {int(k) for k in view.stored_layers()}:
                raise PayloadError(f"build {view.job_id} has no stored layer {layer} to label", "layer")
            h, w = view.frame_size
            for i, stroke in enumerate(msg.labels):
                for x, y in stroke.points:
                    if not (0 <= x < w and 0 <= y < h):
                        raise PayloadError(f"stroke {i}: point ({x}, {y}) is outside the {w}x{h} px frame", "field")

        def write(record: BuildRecord) -> None:
            for stroke in msg.labels:
                record.add_label(layer, msg.operator, stroke.kind, stroke.label, stroke.width, stroke.points, msg.time)

        where = self.in_record(lambda job: job == msg.job_id, f"has a job {msg.job_id!r}", fits, write)
        log.info(
            "%s: operator %s labelled layer %d of %s (%d stroke(s))",
            self.pm.printer_id, msg.operator or "?", layer, msg.job_id, len(msg.labels),
        )  # fmt: skip
        return where

    def in_record(
        self,
        matches: Callable[[str], bool],
        what: str,
        check: Callable[[Any], None],
        write: Callable[[BuildRecord], None],
    ) -> str:
        """Write to the record of the build whose job id ``matches``: the live one, else a closed one of this
        printer (opened for writing a moment, its state kept). ``check`` (given the record's read view: the live
        writer or a reader) refuses with a PayloadError before anything is written. Returns the record's name."""
        pm = self.pm
        with pm.lock:
            build = pm.build
            if build is not None and matches(build.job_id):
                check(build.record)
                write(build.record)
                return build.record.path.name
            for path in build_records(pm.service.config.monitor.out_dir / pm.printer_id):
                try:
                    with RecordReader(path) as reader:
                        if not matches(reader.job_id):
                            continue
                        check(reader)
                        state = reader.state
                except RecordError:
                    continue
                try:
                    with BuildRecord.open(path) as record:
                        write(record)
                        record.close(state)
                except RecordError as err:
                    raise PayloadError(f"cannot store it in {path.name}: {err}", "record") from err
                return path.name
        raise PayloadError(f"no build of printer {pm.printer_id} {what}", "incident")

    def _refuse(self, msg: ActionMessage, why: str) -> None:
        """A request that did not prove who sent it: not carried out, counted, said in the record and answered."""
        pm = self.pm
        pm.counters["refused_requests"] += 1
        what = f"{msg.action} request {msg.request_id[:128]!r} refused: {why}"
        # said once per interval at most (with the count so far): a flood must not flood the log and the record
        if pm.say_now("request_refused") is not None:
            count = pm.counters["refused_requests"]
            log.warning("%s: %s (%d refused so far)", pm.printer_id, what, count)
            with pm.lock:
                if pm.build is not None:
                    layer = max(pm.build.last_layer, 0)
                    pm.build.record.add_event(layer, "warning", "request_refused", f"{what} ({count} so far)")
        self._answer(msg, ActionState.FAILED, f"refused: {why}")

    def _answer(self, request: ActionMessage, state: ActionState, detail: str) -> None:
        """The outcome of an operator's request, on the action topic (``layerwatch control`` waits for it)."""
        reply = request.model_copy(update={"state": state, "detail": detail[:2000], "time": time.time()})
        self.pm.publish(self.pm.link.topics.action, reply.to_json())

    def _operator_command(self, msg: ActionMessage) -> None:
        """A pause or resume an operator asked for (dashboard, ``layerwatch control``): carried out by the
        same controller as automatic actions, recorded, outcome published. Redelivered requests run once."""
        pm = self.pm
        with pm.lock:
            if msg.request_id in self._done:
                return
            self._done[msg.request_id] = None
            if len(self._done) > 10_000:  # a long-running monitor keeps the recent ones (the verifier bounds too)
                del self._done[next(iter(self._done))]
            layer = pm.build.last_layer if pm.build is not None else 0
            request = msg.model_copy(
                update={"rule": "operator", "layer": max(layer, 0), "job_id": pm.build.job_id if pm.build else ""}
            )
            self._record_action(request)
        log.warning("%s: operator %s asks to %s: %s", pm.printer_id, msg.operator, msg.action, msg.reason)
        pm.controller.operator(request)

    def _confirm_roi(self, msg: ActionMessage, topic: str) -> None:
        """An operator accepts (or redraws) the build plate: kept for this printer's later builds too."""
        pm = self.pm
        try:
            points = json.loads(msg.detail)
            if not isinstance(points, list) or len(points) > _MAX_ROI_POINTS:
                raise ValueError(f"at most {_MAX_ROI_POINTS} [x, y] points")
            roi = Roi.from_points(points, "confirmed")
        except (ValueError, TypeError, IndexError, RecursionError) as err:
            raise PayloadError(
                f"{topic}: roi detail is not a polygon of [x, y] camera pixels ({err})", "field"
            ) from err
        path = roi_file(pm)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({**roi.to_json(), "operator": msg.operator, "time": msg.time}))
        tmp.replace(path)
        with pm.lock:
            if pm.build is not None:
                pm.build.set_roi(roi, pm.build.record.frame_size)
                layer = max(pm.build.last_layer, 0)
            else:
                layer = 0
        pm.emit_event(
            "info", "roi_confirmed", f"operator {msg.operator} confirmed the build plate outline {roi.points}", layer
        )
