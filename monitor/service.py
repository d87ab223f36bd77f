"""``layerwatch monitor``: judge every layer of every configured printer.

Per printer: one MQTT link (persistent session ``layerwatch-monitor-<printer>``) subscribed to the
printer's image and action topics; frames are handled one at a time, in order, on the link's worker:
decode, segment, metrics, policy, controller, build record, result. The model is loaded once at start
and shared by all printers. Bad input (undecodable frames, a frame of another size mid-build, a layer
of a build that has ended) is logged, counted and published as an event; the service goes on, and no
stored layer is lost. A redelivered layer is recognised and not acted on twice.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from monitor import __version__
from monitor.config import Config
from monitor.controller import Controller, job_key
from monitor.drift import DriftSettings, DriftWatch, layer_stats
from monitor.metrics import METRIC_NAMES, PART_METRIC_NAMES, LayerMetrics, MetricsComputer
from monitor.policy import Box, Policy, PolicyEngine, RuleHit, evidence_boxes
from monitor.record import BuildRecord, RecordError, RecordReader, RecordSpec, build_records
from printer_io.bus import Link, MessageBus, open_link
from printer_io.credentials import DUPLICATE, Credential, Verifier, load_operators
from printer_io.errors import ConfigError, PayloadError, PrinterError
from printer_io.frames import decode_image
from printer_io.messages import (
    ActionMessage,
    ActionState,
    EventLevel,
    EventMessage,
    FrameMeta,
    LayerEvent,
    PrinterStateMessage,
    ResultMessage,
    RuleHitInfo,
    split_frame,
)
from printer_io.mqtt import MqttConfig, anonymous_allowed
from printer_io.printer import ACTIVE_STATES, Printer, PrinterState, PrinterStatus, create_printer
from printer_io.topics import Topics
from printer_io.vocabulary import Severity
from segmentation.classes import CLASS_NAMES
from segmentation.preprocess import illumination, powder_lighting, to_gray, to_gray_float
from segmentation.roi import Roi, propose_roi

__all__ = ["MonitorService", "PrinterMonitor"]

log = logging.getLogger(__name__)

#: Per-frame figures stored beside the mask metrics (not usable in rules: they judge the frame, not the layer).
FRAME_METRICS = ("ood_score",)
_MAX_ROI_POINTS = 64


@dataclass(frozen=True)
class _RecordView:
    """What an operator's request is checked against, from the live writer or a reader of a closed record."""

    job_id: str
    table: Callable[[str], list[dict[str, Any]]]
    stored: set[int]
    size: tuple[int, int]  # frame height, width


_REPRINT_LAYERS = 2  # a closed job's record that holds one of its first layers again: the job is printed again
_REFUSAL_EVERY_S = 10.0  # refused input of one kind is said at most this often
_LAYER_STEP = 5  # layers a camera may miss between two frames before the numbering waits for confirmation
_MAX_LAYER_JUMP = 1000  # a frame further ahead of the build's last layer is refused (the record would grow by it)
_MAX_FIRST_LAYER = 100_000  # the first frame of a build (a monitor started mid-build) may be at most this layer
_REFUSED_INPUT = frozenset(
    {
        "frame_undecodable", "frame_size", "part_ids_size", "build_ended", "frames_dropped", "other_job_refused",
        "end_event_refused", "layer_refused",
    }
)  # fmt: skip
# requests only a verified operator may make (printer_io.credentials)
_OPERATOR_ACTIONS = frozenset({"pause", "resume", "cancel", "gcode", "exclude_object", "feedback", "roi", "label"})
_STATE_POLL_S = 2.0  # how often an open build's printer is asked whether its job is still on
_END_HOLD_S = 60.0  # an end event held this long while the printer prints on was not the printer's
_NO_FRAME_S = 60.0  # a layer event no frame has followed for this long: the camera is missing (said once)
_MOVED_ON = 3  # a frame this many layers behind the printer's own layer waited: judged, not acted on
_LIVE_STATES = frozenset({"printing", "pausing", "paused", "resuming"})
# printer states that end a job this monitor saw printing
_ENDED_STATES = frozenset({PrinterState.IDLE, PrinterState.FINISHED, PrinterState.CANCELLED, PrinterState.ERROR})


_PLAIN_JOB = re.compile(r"[A-Za-z0-9_.-]{1,100}")
_HASHED_STEM = re.compile(r".*-[0-9a-f]{10}")


def record_stem(job_id: str) -> str:
    """The file name (without ``.h5``) of a job's record, one job to one name.

    A plain job id is its own name. Any other (characters a file name must not hold, long, or ending like
    our temporary, recovering and crashed files, or like a hashed name) becomes its safe characters plus
    a hash of the whole id: "a/b" and "a_b" no longer share a record, and job "victim.creating" no longer
    names the temporary file of job "victim". A reprint of a job adds ``~2``, ``~3``... (no job id holds ``~``)."""
    if (
        _PLAIN_JOB.fullmatch(job_id)
        and not _HASHED_STEM.fullmatch(job_id)
        and not job_id.endswith((".creating", ".recovering", ".crashed", ".h5"))
        and job_id not in (".", "..")
    ):
        return job_id
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", job_id)[:80].strip(".") or "job"
    return f"{safe}-{hashlib.sha256(job_id.encode()).hexdigest()[:10]}"


@dataclass(frozen=True)
class LayerOutcome:
    """What the monitor made of one layer: its mask and metrics, the rules it broke, the actions taken."""

    mask: np.ndarray
    metrics: LayerMetrics
    hits: list[RuleHit]
    actions: list[ActionMessage]
    judged: bool
    late: bool  # it came after a later layer: stored, never judged
    severity: Severity
    printer: PrinterStatus | None  # the printer's state when the layer was judged
    timings_ms: dict[str, float]
    given_part_ids: np.ndarray | None = None  # the parts as the camera's printer knows them (its object ids)


@dataclass
class Build:
    job_id: str
    record: BuildRecord
    metrics: MetricsComputer
    policy: PolicyEngine
    last_layer: int = -1
    last_seen: float = field(default_factory=time.monotonic)
    gaps: deque[float] = field(default_factory=lambda: deque(maxlen=10))  # seconds between its recent frames
    ahead: int | None = None  # a frame far ahead of last_layer, not yet followed by the next
    layers_judged: int = 0
    roi: Roi | None = None  # the build plate; None: the whole frame
    roi_mask: np.ndarray | None = None
    illum: np.ndarray | None = None  # the reference lighting, once the first layers gave it
    illum_frames: list[np.ndarray] = field(default_factory=list)
    printer_was_active: bool = False  # the printer was seen printing (or paused) during this build
    shadow_metrics: MetricsComputer | None = None  # the shadow model's own measurement and rule windows
    shadow_policy: PolicyEngine | None = None
    ended: str = ""  # why the job is over (printer state, end event); the record closes after the grace time
    # an end event that came while the printer still printed: (when, why); the job ends when the printer stops
    end_held: tuple[float, str] | None = None
    thickness: float = 0.0  # the record's layer thickness (mm)
    backlog: tuple[int, int] | None = None  # (first, last) layer of a backlog being judged late, not acted on
    heights: deque[tuple[int, float]] = field(default_factory=lambda: deque(maxlen=8))  # (layer, z) of recent frames
    thickness_said: bool = False

    def set_roi(self, roi: Roi | None, shape: tuple[int, int]) -> None:
        self.roi = roi
        self.roi_mask = roi.mask(shape) if roi is not None else None


class PrinterMonitor:
    """Everything the monitor keeps for one printer."""

    def __init__(
        self, service: MonitorService, printer_id: str, link: Link, printer: Printer | None, policy: Policy
    ) -> None:
        self.service = service
        self.printer_id = printer_id
        self.link = link
        self.printer = printer
        self.policy = policy
        cfg = service.config
        section = cfg.printers.get(printer_id)
        names = dict(section.object_names) if section else {}
        self.controller = Controller(
            printer,
            printer_id=printer_id,
            emit_action=self._emit_action,
            emit_event=self._emit_event,
            limits=cfg.controller,
            object_name=lambda pid: names.get(str(pid), f"part_{pid}"),
        )
        self.build: Build | None = None
        self.last_record: Path | None = None  # the record of the current or most recent build
        self.ended: set[str] = set()
        # the jobs the printer's layer events announced; once any came, a frame alone never starts a job
        self.announced: deque[str] = deque(maxlen=16)
        self.trigger_seen = False
        self.lock = threading.RLock()  # the record is written from the link's worker and the controller's
        self.results: list[ResultMessage] = []
        self.counters: dict[str, int] = {
            "layers": 0, "duplicates": 0, "late": 0, "bad_frames": 0, "needs_review": 0, "refused_requests": 0,
            "shadow_failed": 0, "drift": 0,
        }  # fmt: skip
        self._operator_requests: set[str] = set()
        self._drift: DriftWatch | None = None
        self.ha: Any = None  # monitor.homeassistant.HomeAssistant, where [homeassistant] is enabled
        self._ha_incident: tuple[str, dict[str, Any] | None] = ("", None)  # (job, its last incident) for HA
        self._dropped_seen = 0
        self._said: dict[str, tuple[float, int]] = {}
        self.holder: Any = None  # monitor.workers.PrinterLock, where workers share the site
        self.released = False
        self._printer_said: tuple[Any, float] = (None, -1e9)  # the last printer state published, and when
        self._printer_reported: tuple[int | None, float] = (None, -1e9)  # the printer's own layer, and when read
        self._awaiting: tuple[str, int, float] | None = None  # the first layer event no frame has followed yet
        self._event_layers: dict[str, int] = {}  # job -> the highest layer its layer events announced
        self._no_frames_said = False

    # ---- holding the printer (site workers) ---------------------------------------------------------
    def owned(self, handler: Callable[[str, bytes], None]) -> Callable[[str, bytes], None]:
        """``handler``, run only while this process holds the printer (its ``holder``, where workers share
        the site): a worker that took the printer over waits here until the previous one let go of it."""

        def run(topic: str, payload: bytes) -> None:
            if self.holder is not None and not self.holder.acquire(lambda: self.link.connected and not self.released):
                raise PayloadError(f"{topic}: {self.printer_id} went to another worker; message left to it", "moved")
            handler(topic, payload)

        return run

    def release(self) -> None:
        """Let go of the printer: its record stays open ("writing") for the next holder, its lock is freed."""
        with self.lock:
            self.released = True
            if self.build is not None:
                self.controller.wait_idle(30)
                self.build.record.close("writing")
                build = self.build
                log.info("%s: let go of build %s after layer %d", self.printer_id, build.job_id, build.last_layer)
                self.build = None
            if self.holder is not None:
                self.holder.release()

    def between_builds(self) -> bool:
        """Whether the printer is between builds: its build ended, or (none opened since it was taken) the newest
        record in its folder is not being written.

        Read under the printer's lock, as every other read of its records: HDF5 refuses to open a file for
        writing while the same process has it open to read, so a read beside the frame handler would cost the
        layer it is opening the record for."""
        with self.lock:
            if self.build is not None:
                return bool(self.build.ended)
            records = build_records(self.service.config.monitor.out_dir / self.printer_id)
            if not records:
                return True
            try:
                with RecordReader(max(records, key=lambda r: r.stat().st_mtime)) as reader:
                    return reader.state != "writing"
            except (RecordError, OSError):
                return False

    # ---- messages in ------------------------------------------------------------------------------
    def on_frame(self, topic: str, payload: bytes) -> None:
        received = time.time()
        t0 = time.perf_counter()
        meta, data, part_data = split_frame(payload, topic)
        if meta.printer != self.printer_id:
            raise PayloadError(f"{topic}: frame of printer {meta.printer!r} on {self.printer_id!r}'s topic", "printer")
        self._awaiting = None  # frames come: the camera is there
        if self._no_frames_said:
            self._no_frames_said = False
            self.link.set_problem("")
        dropped = self.link.rejected["dropped"]
        if dropped > self._dropped_seen:
            self._emit_event(
                "warning",
                "frames_dropped",
                f"{dropped - self._dropped_seen} frame(s) dropped before layer {meta.layer}: frames came faster than "
                "the monitor judges them; the oldest were dropped, the newest kept",
                meta.layer,
            )
            self._dropped_seen = dropped
        try:
            limit = self.service.config.monitor.max_frame_pixels
            image = decode_image(data, topic, max_pixels=limit, expect=(meta.width, meta.height))
            part_ids = decode_image(part_data, topic, max_pixels=limit) if part_data else None
        except PayloadError as err:
            self.counters["bad_frames"] += 1
            self._emit_event("error", "frame_undecodable", f"layer {meta.layer}: {err}; layer not judged", meta.layer)
            raise
        if part_ids is not None and part_ids.shape != image.shape[:2]:
            self._emit_event(
                "warning", "part_ids_size", f"layer {meta.layer}: part ids of another size ignored", meta.layer
            )
            part_ids = None
        decode_ms = (time.perf_counter() - t0) * 1000
        with self.lock:
            self._handle(meta, image, received, part_ids, decode_ms)

    def on_action(self, topic: str, payload: bytes) -> None:
        msg = ActionMessage.from_json(payload, topic)
        if msg.state != ActionState.REQUESTED or msg.action not in _OPERATOR_ACTIONS:
            return  # outcomes, notifications
        if not msg.operator and not msg.signature and msg.rule and msg.rule != "operator":
            return  # our own automatic request, echoed by the broker
        refusal = self.service.verifier.refusal(msg)
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
            "%s: operator %s says incident %s is %s", self.printer_id, msg.operator or "?", msg.incident, msg.verdict
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

        def known(view: _RecordView) -> None:
            if not any(a["incident"] == msg.incident for a in view.table("actions")):
                raise PayloadError(f"build {view.job_id} has no incident {msg.incident!r}", "incident")

        return self._in_record(
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

        def fits(view: _RecordView) -> None:
            if layer not in view.stored:
                raise PayloadError(f"build {view.job_id} has no stored layer {layer} to label", "layer")
            h, w = view.size
            for i, stroke in enumerate(msg.labels):
                for x, y in stroke.points:
                    if not (0 <= x < w and 0 <= y < h):
                        raise PayloadError(f"stroke {i}: point ({x}, {y}) is outside the {w}x{h} px frame", "field")

        def write(record: BuildRecord) -> None:
            for stroke in msg.labels:
                record.add_label(layer, msg.operator, stroke.kind, stroke.label, stroke.width, stroke.points, msg.time)

        where = self._in_record(lambda job: job == msg.job_id, f"has a job {msg.job_id!r}", fits, write)
        log.info(
            "%s: operator %s labelled layer %d of %s (%d stroke(s))",
            self.printer_id, msg.operator or "?", layer, msg.job_id, len(msg.labels),
        )  # fmt: skip
        return where

    def _in_record(
        self,
        matches: Callable[[str], bool],
        what: str,
        check: Callable[[_RecordView], None],
        write: Callable[[BuildRecord], None],
    ) -> str:
        """Write to the record of the build whose job id ``matches``: the live one, else a closed one of this
        printer (opened for writing a moment, its state kept). ``check`` refuses with a PayloadError before
        anything is written. Returns the record's name."""
        with self.lock:
            build = self.build
            if build is not None and matches(build.job_id):
                rec = build.record
                check(_RecordView(build.job_id, rec.table, {int(k) for k in rec.stored_layers()}, rec.frame_size))
                write(rec)
                return rec.path.name
            for path in build_records(self.service.config.monitor.out_dir / self.printer_id):
                try:
                    with RecordReader(path) as reader:
                        job = str(reader.attrs.get("layerwatch/job_id", ""))
                        if not matches(job):
                            continue
                        stored = {int(k) for k in reader.stored_layers()}
                        check(_RecordView(job, reader.table, stored, reader.frame_size))
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
        raise PayloadError(f"no build of printer {self.printer_id} {what}", "incident")

    def emit_notify_failure(self, why: str) -> None:
        layer = self.build.last_layer if self.build is not None else 0
        self._emit_event("warning", "notify_failed", why, max(layer, 0))

    def _refuse(self, msg: ActionMessage, why: str) -> None:
        """A request that did not prove who sent it: not carried out, counted, said in the record and answered."""
        self.counters["refused_requests"] += 1
        what = f"{msg.action} request {msg.request_id[:128]!r} refused: {why}"
        # said once per interval at most (with the count so far): a flood must not flood the log and the record
        if self._say_now("request_refused") is not None:
            count = self.counters["refused_requests"]
            log.warning("%s: %s (%d refused so far)", self.printer_id, what, count)
            with self.lock:
                if self.build is not None:
                    layer = max(self.build.last_layer, 0)
                    self.build.record.add_event(layer, "warning", "request_refused", f"{what} ({count} so far)")
        self._answer(msg, ActionState.FAILED, f"refused: {why}")

    def _answer(self, request: ActionMessage, state: ActionState, detail: str) -> None:
        """The outcome of an operator's request, on the action topic (``layerwatch control`` waits for it)."""
        reply = request.model_copy(update={"state": state, "detail": detail[:2000], "time": time.time()})
        self._publish(self.link.topics.action, reply.to_json())

    def _operator_command(self, msg: ActionMessage) -> None:
        """A pause or resume an operator asked for (dashboard, ``layerwatch control``): carried out by the
        same controller as automatic actions, recorded, outcome published. Redelivered requests run once."""
        with self.lock:
            if msg.request_id in self._operator_requests:
                return
            self._operator_requests.add(msg.request_id)
            layer = self.build.last_layer if self.build is not None else 0
            request = msg.model_copy(
                update={"rule": "operator", "layer": max(layer, 0), "job_id": self.build.job_id if self.build else ""}
            )
            self._record_action(request)
        log.warning("%s: operator %s asks to %s: %s", self.printer_id, msg.operator, msg.action, msg.reason)
        self.controller.operator(request)

    def on_layer(self, topic: str, payload: bytes) -> None:
        """Layer events say when a job ended (an end event, or a layer of another job); frames carry the rest.

        Neither ends a live build on its word alone (anyone on the broker can send one): an end event is not
        taken while the printer reports that it still prints, and a layer of another job only once the build
        is quiet."""
        event = LayerEvent.from_json(payload, topic)
        if not event.end and self._awaiting is None:
            self._awaiting = (event.job_id, event.layer, time.monotonic())  # its frame should follow
        if not event.end:  # how far each job has printed, as its layer events say
            self._event_layers[event.job_id] = max(event.layer, self._event_layers.get(event.job_id, -1))
            while len(self._event_layers) > 16:
                self._event_layers.pop(next(iter(self._event_layers)))
        with self.lock:
            self.trigger_seen = True
            build = self.build
            free = build is None or build.ended or build.job_id == event.job_id
            if free and not event.end and event.job_id not in self.announced:
                self.announced.append(event.job_id)
            if build is None or build.ended:
                return
            if event.end and build.job_id == event.job_id:
                why = f"job {event.outcome or 'ended'} after layer {event.layer} ({event.source or 'event'})"
                state = self._printer_state()
                if state is not None and state.state in ACTIVE_STATES:
                    # a printer still finishing its last moves, or a forged end: the build ends when the printer
                    # stops (the watcher sees it); one that prints on past _END_HOLD_S was not done
                    if build.end_held is None:
                        build.end_held = (time.monotonic(), why)
                        self._emit_event(
                            "info",
                            "end_event_held",
                            f"an end event for job {event.job_id} came while printer {self.printer_id} is "
                            f"{state.state.value}: the job ends when the printer stops",
                            max(build.last_layer, 0),
                        )
                    return
                self.job_ended(why)
            elif not event.end and build.job_id != event.job_id and event.job_id not in self.ended:
                self._other_job(build, event.job_id, event.layer, "layer event")
                self.announced.append(event.job_id)
                self.job_ended(f"a new job {event.job_id} started")

    def _quiet(self, build: Build) -> bool:
        """Whether another job may start: the build ended, or had no frame for ``job_switch_quiet_s`` and three
        of its usual layer intervals."""
        wait = self.service.config.monitor.job_switch_quiet_s
        if build.ended or wait == 0:
            return True
        typical = float(np.median(build.gaps)) if build.gaps else 0.0
        return time.monotonic() - build.last_seen >= max(wait, 3 * typical)

    def _refused(self, code: str, said: str, layer: int, short: str, reason: str) -> PayloadError:
        """Refused input: a warning event (said once per interval per kind) and the error that counts it."""
        self._emit_event("warning", code, said, layer)
        return PayloadError(short, reason)

    def _other_job(self, build: Build, job_id: str, layer: int, what: str) -> None:
        """A message of another job while ``build`` is live: refused unless the build is quiet."""
        if self._quiet(build):
            return
        raise self._refused(
            "other_job_refused",
            f"{what} of job {job_id[:80]!r} (layer {layer}) while build {build.job_id} is live: refused; "
            "another job starts once this one ends or has been quiet for [monitor] job_switch_quiet_s",
            max(build.last_layer, 0),
            f"{what} of job {job_id[:80]!r} while build {build.job_id} is live",
            "job",
        )

    def job_ended(self, why: str) -> None:
        """The job is over: its record closes once no frame has come for ``job_end_grace_s``."""
        with self.lock:
            if self.build is not None and not self.build.ended:
                self.build.ended = why
                log.info("%s: %s; closing %s", self.printer_id, why, self.build.record.path.name)

    def check_frames(self, wait_s: float = _NO_FRAME_S) -> None:
        """A printer that prints layers (its layer events come) while no frame comes for them: said once, as a
        warning event and on the monitor's status, until a frame comes."""
        awaiting = self._awaiting
        if awaiting is None or self._no_frames_said or time.monotonic() - awaiting[2] < wait_s:
            return
        job, layer, _ = awaiting
        self._no_frames_said = True
        text = (
            f"printer {self.printer_id} prints (layer event for layer {layer} of job {job[:80]!r}) but no frame came "
            f"for {wait_s:.0f} s: is its camera running, and may its broker user publish on {self.link.topics.image}? "
            "(the camera's status says so; layerwatch security check)"
        )
        self._emit_event("warning", "no_frames", text, layer)
        self.link.set_problem(text)

    def check_printer(self) -> None:
        """The printer's own state, read by the watcher: published (retained) for the dashboard and the farm
        view; and a printer that printed this build and now is idle, finished, cancelled or failed ended the job."""
        if self.printer is None:
            return
        state = self._printer_state()
        self._say_printer_state(state)
        if self.build is None or self.build.ended or state is None:
            return
        with self.lock:
            build = self.build
            if build is None:
                return
            held = build.end_held
            if state.state in ACTIVE_STATES:
                build.printer_was_active = True
                if held is not None and time.monotonic() - held[0] > _END_HOLD_S:
                    build.end_held = None
                    self._emit_event(
                        "warning",
                        "end_event_refused",
                        f"an end event for job {build.job_id} came {_END_HOLD_S:.0f} s ago, and printer "
                        f"{self.printer_id} still prints: the build goes on (the end event was not the printer's)",
                        max(build.last_layer, 0),
                    )
            elif held is not None:
                self.job_ended(held[1])
            elif build.printer_was_active and state.state in _ENDED_STATES:
                self.job_ended(f"printer {state.state.value}")

    def _confirm_roi(self, msg: ActionMessage, topic: str) -> None:
        """An operator accepts (or redraws) the build plate: kept for this printer's later builds too."""
        try:
            points = json.loads(msg.detail)
            if not isinstance(points, list) or len(points) > _MAX_ROI_POINTS:
                raise ValueError(f"at most {_MAX_ROI_POINTS} [x, y] points")
            roi = Roi.from_points(points, "confirmed")
        except (ValueError, TypeError, IndexError, RecursionError) as err:
            raise PayloadError(
                f"{topic}: roi detail is not a polygon of [x, y] camera pixels ({err})", "field"
            ) from err
        path = self.roi_file
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({**roi.to_json(), "operator": msg.operator, "time": msg.time}))
        tmp.replace(path)
        with self.lock:
            if self.build is not None:
                self.build.set_roi(roi, (self.build.record.height, self.build.record.width))
                layer = max(self.build.last_layer, 0)
            else:
                layer = 0
        self._emit_event(
            "info", "roi_confirmed", f"operator {msg.operator} confirmed the build plate outline {roi.points}", layer
        )

    @property
    def roi_file(self) -> Path:
        return self.service.config.monitor.out_dir / self.printer_id / "roi.json"

    def _initial_roi(self, frame: np.ndarray) -> Roi | None:
        """The configured plate, else the one an operator confirmed, else one proposed from this frame."""
        section = self.service.config.printers.get(self.printer_id)
        if section is not None and section.roi is not None:
            return Roi.from_points(section.roi, "config")
        if self.roi_file.is_file():
            try:
                saved = json.loads(self.roi_file.read_text())
                return Roi.from_points(saved["points"], "confirmed")
            except (OSError, ValueError, KeyError, TypeError) as err:
                log.warning("%s: %s is unreadable (%s); proposing the plate again", self.printer_id, self.roi_file, err)
        if not self.service.config.monitor.propose_roi:
            return None
        return propose_roi([frame])

    def _reference_image(self, build: Build) -> None:
        """The printer's configured reference frame (the plate before exposure), if any, as the build's lighting."""
        section = self.service.config.printers.get(self.printer_id)
        path = section.reference_image if section is not None else None
        if path is None:
            return
        from segmentation.errors import ImageError
        from segmentation.imageio import read_image

        try:
            gray = to_gray_float(read_image(path, max_pixels=self.service.config.monitor.max_frame_pixels))
        except ImageError as err:
            self._emit_event("warning", "reference_unusable", f"{err}; the first layers give the lighting instead", 0)
            return
        shape = (build.record.height, build.record.width)
        if gray.shape != shape:
            self._emit_event(
                "warning",
                "reference_unusable",
                f"{path} is {gray.shape[1]}x{gray.shape[0]} px, the frames {shape[1]}x{shape[0]}: "
                "the first layers give the lighting instead",
                0,
            )
            return
        build.illum = illumination(gray, build.roi_mask)
        build.record.set_illumination(build.illum, 0)

    def _reference(self, build: Build, frame: np.ndarray, mask: np.ndarray, layer: int) -> None:
        """Learn the camera's fixed lighting from the plain powder of the build's first layers."""
        n = self.service.config.monitor.reference_layers
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
            log.info("%s: reference lighting taken from the first %d layers", self.printer_id, n)

    # ---- one layer --------------------------------------------------------------------------------
    def _handle(
        self,
        meta: FrameMeta,
        frame: np.ndarray,
        received: float,
        part_ids: np.ndarray | None = None,
        decode_ms: float = 0.0,
    ) -> None:
        """One layer's journey: validate -> judge (and act) -> store -> publish."""
        build = self._build_for(meta, frame)
        if build is None:
            return
        if meta.view == "recoat":
            self._recoat(build, meta, frame)
            return
        gray = self._validate(build, meta, frame, received)
        if gray is None:
            return
        outcome = self._judge(build, meta, gray, part_ids)
        record_ms = self._store(build, meta, gray, outcome)
        self._publish_result(build, meta, outcome, received, {"decode": decode_ms, "record": record_ms})
        self._notify(build, gray, outcome)
        if self.ha is not None:
            self.ha.publish_state(self._ha_state(build, meta.layer, outcome))
        self._shadow(build, meta.layer, gray, part_ids, outcome)

    def _ha_state(self, build: Build, layer: int, outcome: LayerOutcome) -> dict[str, Any]:
        if self._ha_incident[0] != build.job_id:  # a new (or continued) build: its last incident, read once
            rows = [a for a in build.record.table("actions") if a["incident"] and a["state"] == "requested"]
            self._ha_incident = (build.job_id, rows[-1] if rows else None)
        for a in outcome.actions:  # then this layer's own requests keep it current
            if a.incident and a.state == ActionState.REQUESTED:
                self._ha_incident = (build.job_id, {"action": str(a.action), "rule": a.rule, "layer": a.layer})
        last = self._ha_incident[1]
        return {
            "state": str(outcome.printer.state) if outcome.printer is not None else "unknown",
            "job": build.job_id,
            "layer": layer,
            "severity": str(outcome.severity),
            "incident": f"{last['action']} ({last['rule']}) at layer {last['layer']}" if last else "none",
        }

    def _bound(self, build: Build, layer: int, what: str) -> None:
        """Refuse (PayloadError) a layer beyond what the build can have reached: one message must not make the
        record grow to a forged layer number."""
        limit = _MAX_FIRST_LAYER if build.last_layer < 0 else build.last_layer + _MAX_LAYER_JUMP
        if layer > limit:
            raise self._refused(
                "layer_refused",
                f"{what} {layer} is beyond what build {build.job_id} can have reached (at most layer {limit} now): "
                "refused, not stored",
                max(build.last_layer, 0),
                f"{what} {layer} of build {build.job_id} is out of bounds (at most {limit})",
                "layer",
            )

    def _recoat(self, build: Build, meta: FrameMeta, frame: np.ndarray) -> None:
        """An after-recoat frame: kept in the record (Peregrine's ``visible/1``), never judged; the first one is
        the build's lighting reference (plain powder, nothing printed on it yet) unless there is one already."""
        self._bound(build, meta.layer, "after-recoat frame of layer")
        gray = to_gray(frame, order="bgr")
        if gray.shape != (build.record.height, build.record.width):
            why = f"after-recoat frame of layer {meta.layer} has another size than the build's frames: ignored"
            self._emit_event("warning", "frame_size", why, meta.layer)
            return
        build.record.append_recoat(meta.layer, gray)
        if build.illum is None and self.service.config.monitor.reference_layers:
            build.illum = illumination(to_gray_float(gray), build.roi_mask)
            build.illum_frames.clear()
            build.record.set_illumination(build.illum, meta.layer)
            log.info("%s: reference lighting from the after-recoat frame of layer %d", self.printer_id, meta.layer)

    def _notify(self, build: Build, gray: np.ndarray, outcome: LayerOutcome) -> None:
        """Tell people of the actions taken on this layer ([notifications]), off the layer's path."""
        notifier = self.service.notifier
        if notifier is None:
            return
        from monitor.notify import Notice, evidence_png

        evidence = b""
        for action in outcome.actions:
            if action.state == ActionState.REQUESTED and notifier.wants(self.printer_id, action):
                if not evidence:  # one image for the layer: every rectangle of its actions
                    boxes = [b for a in outcome.actions for b in self.controller.where(a.request_id)]
                    evidence = evidence_png(gray, outcome.mask, boxes)
                notifier.submit(Notice(self.printer_id, action, evidence, build.record.path.name, action.time))

    def _shadow(
        self, build: Build, layer: int, gray: np.ndarray, part_ids: np.ndarray | None, outcome: LayerOutcome
    ) -> None:
        """The shadow model's judgement of the layer, after the result is out (it never delays an action):
        its mask, the rules that would hold and whether it would have acted, stored beside the real ones."""
        shadow = self.service.shadow
        if shadow is None or build.shadow_metrics is None or build.shadow_policy is None:
            return
        try:
            result = shadow.segment(gray, roi=build.roi_mask, illumination=build.illum)
            m = build.shadow_metrics.compute(result.mask, part_ids=part_ids, gray=gray)
            hits = build.shadow_policy.evaluate(layer, m.values, m.parts, judged=outcome.judged)
            would_act = outcome.judged and any(a.type != "notify" for h in hits for a in h.rule.actions)
            build.record.append_shadow(
                layer,
                result.mask,
                severity=Severity.worst(h.rule.severity for h in hits),
                disagree=float(np.count_nonzero(result.mask != outcome.mask)) / max(result.mask.size, 1),
                would_act=would_act,
                rules=sorted({h.rule.name for h in hits}),
            )
        except Exception as err:  # the shadow must never stop the monitor
            self.counters["shadow_failed"] += 1
            log.warning("%s: the shadow model failed on layer %d (%s)", self.printer_id, layer, err)

    def _validate(self, build: Build, meta: FrameMeta, frame: np.ndarray, received: float) -> np.ndarray | None:
        """The frame as the gray the model sees, or None when the layer is already stored (its stored result
        is published again). Raises PayloadError for a layer out of bounds or a frame of another size."""
        layer = meta.layer
        self._bound(build, layer, "layer")
        if build.record.is_stored(layer):
            self.counters["duplicates"] += 1
            log.info(
                "%s: layer %d of %s already stored; its stored result is published again, nothing is redone",
                self.printer_id,
                layer,
                meta.job_id,
            )
            self._conflict(build, meta, frame)
            self._republish(build, meta, received)
            return None
        limit = self._event_layers.get(meta.job_id)
        if self.trigger_seen and limit is not None and layer > limit:
            # the printer's layer events say how far the print is: a frame further ahead is no camera's of it
            raise self._refused(
                "layer_refused",
                f"frame of layer {layer} is ahead of the printer (its last layer event: layer {limit}): refused, "
                "not stored",
                max(build.last_layer, 0),
                f"frame of layer {layer} ahead of the printer's layer {limit}",
                "layer",
            )
        # decoded frames are in OpenCV's BGR order: the gray the model sees is the gray the record keeps
        # (and a replay, or `layerwatch segment` on the colour file, sees the same numbers)
        gray = to_gray(frame, order="bgr")
        if gray.shape != (build.record.height, build.record.width):
            self.counters["bad_frames"] += 1
            self._emit_event(
                "error",
                "frame_size",
                f"layer {layer} is {gray.shape[1]}x{gray.shape[0]} px but this build's frames are "
                f"{build.record.width}x{build.record.height}; layer not judged (camera changed mid-build?)",
                layer,
            )
            raise PayloadError(f"layer {layer}: frame size changed mid-build", "size")
        return gray

    def _conflict(self, build: Build, meta: FrameMeta, frame: np.ndarray) -> None:
        """A second frame for a stored layer: a redelivery is the same frame; a different one (a camera the site
        did not set up, a forgery) is recorded as a conflict, never silently taken for a redelivery."""
        try:
            stored = build.record.image(meta.layer)
        except (RecordError, OSError, KeyError, IndexError):
            return
        gray = to_gray(frame, order="bgr")
        if gray.shape == stored.shape and np.array_equal(gray, stored):
            return
        self._emit_event(
            "error",
            "frame_conflict",
            f"two different frames for layer {meta.layer}: the first one stored is kept; the other (source "
            f"{meta.source or 'unnamed'!r}, captured {time.strftime('%H:%M:%S', time.localtime(meta.captured_at))}) is "
            "not. A camera the site did not set up may publish on this printer's topic: give each camera its own "
            "broker user (layerwatch security broker-config)",
            meta.layer,
        )

    def _judge(self, build: Build, meta: FrameMeta, gray: np.ndarray, part_ids: np.ndarray | None) -> LayerOutcome:
        """Segment, measure, apply the policy and let the controller act (before anything is stored: a pause
        must not wait for the disk). A layer is judged only when its frame is sound, in order and familiar."""
        layer = meta.layer
        t0 = time.perf_counter()
        result = self.service.segmenter.segment(gray, roi=build.roi_mask, illumination=build.illum)
        segment_ms = (time.perf_counter() - t0) * 1000
        self._reference(build, gray, result.mask, layer)
        m = build.metrics.compute(result.mask, part_ids=part_ids, gray=gray)
        m.values["ood_score"] = result.ood
        metrics_ms = (time.perf_counter() - t0) * 1000 - segment_ms
        quality = meta.quality
        late = layer < build.last_layer
        unfamiliar = self.service.config.monitor.ood_check and result.unfamiliar
        judged = (quality is None or quality.ok) and not late and not unfamiliar
        if unfamiliar:
            self.counters["needs_review"] += 1
            self._emit_event(
                "warning",
                "needs_review",
                f"layer {layer} looks unlike the frames the model was trained on (score {result.ood:.1f} times its "
                "threshold): not judged automatically, never paused on; review it on the dashboard and label it",
                layer,
            )
        if quality is not None and not quality.ok:
            self._emit_event(
                "warning", "frame_quality", f"layer {layer} frame is {', '.join(quality.problems)}: not judged", layer
            )
        if late:
            self.counters["late"] += 1
            self._emit_event(
                "warning",
                "layer_out_of_order",
                f"layer {layer} arrived after layer {build.last_layer}: stored, not judged",
                layer,
            )
        hits = build.policy.evaluate(layer, m.values, m.parts, judged=judged)
        waited = judged and self._waited(build, meta)
        if (quality is None or quality.ok) and not late:  # unfamiliar frames too: they are what drift is made of
            self._watch_drift(layer, gray, result.mask, build.roi_mask, result.ood)
        state = self._printer_state()
        if state is not None and state.state in ACTIVE_STATES:
            build.printer_was_active = True
        mask = result.mask

        def locate(hit: RuleHit) -> tuple[Box, ...]:
            return evidence_boxes(hit.rule, hit.part_id, mask, m)

        actions = (
            self.controller.on_layer(layer, hits, m.values, state.state if state else None, locate=locate)
            if judged and not waited  # a layer that waited for the monitor is judged, never acted on as live
            else []
        )
        return LayerOutcome(
            mask=result.mask,
            metrics=m,
            hits=hits,
            actions=actions,
            judged=judged,
            late=late,
            severity=Severity.worst(h.rule.severity for h in hits),
            printer=state,
            timings_ms={"segment": segment_ms, "metrics": metrics_ms},
            given_part_ids=part_ids,
        )

    def _watch_drift(
        self, layer: int, gray: np.ndarray, mask: np.ndarray, roi: np.ndarray | None, ood: float, say: bool = True
    ) -> None:
        """This printer's frames and class areas against the model's and the printer's reference (monitor.drift)."""
        cfg = self.service.config.monitor
        if not cfg.drift_reference_layers:
            return
        sha = self.service.model_sha256[:12]
        path = cfg.out_dir / self.printer_id / f"drift-{sha}.json"
        if self._drift is None or self._drift.path != path:  # a new model: its own reference on this printer
            settings = DriftSettings(reference_layers=cfg.drift_reference_layers, window=cfg.drift_window)
            self._drift = DriftWatch.open(path, settings)
        finding = self._drift.add(layer, layer_stats(gray, mask, roi, ood))
        if finding is not None and say:
            self.counters["drift"] += 1
            self._emit_event("warning", "drift", finding.message(self.printer_id, cfg.drift_window), layer)

    def _store(self, build: Build, meta: FrameMeta, gray: np.ndarray, outcome: LayerOutcome) -> float:
        """Append the layer to the build record (with the printer's telemetry); returns the time it took, ms.
        Then move the build's layer numbering on."""
        layer, m, state = meta.layer, outcome.metrics, outcome.printer
        t1 = time.perf_counter()
        build.record.append_layer(
            layer,
            z_mm=meta.z_mm,
            image=gray,
            mask=outcome.mask,
            part_ids=m.part_ids,
            sample_ids=outcome.given_part_ids,
            metrics=m.values,
            part_metrics=[{"layer": layer, **p} for p in m.parts],
            captured_at=meta.captured_at,
            quality=meta.quality.model_dump() if meta.quality is not None else {},
            judged=outcome.judged,
            severity=outcome.severity,
        )
        record_ms = (time.perf_counter() - t1) * 1000
        if state is None and self.printer is not None:
            build.record.add_telemetry(layer, "offline", meta.z_mm, None, None)  # the page says so in words
        if state is not None:
            job = state.job
            build.record.add_telemetry(
                layer, state.state.value, job.z_mm if job and job.z_mm else meta.z_mm, state.feed_pct, state.flow_pct
            )
        self._advance(build, layer, outcome.late)
        self._check_thickness(build, layer, meta.z_mm)
        build.layers_judged += int(outcome.judged)
        self.counters["layers"] += 1
        return record_ms

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
            self._emit_event(
                "warning",
                "units",
                f"the printer's z rises {step:.4g} mm a layer, the record says {build.thickness:g} mm "
                f"([printers.{self.printer_id}] or [monitor] layer_thickness_mm): volumes in the report use the "
                "layers' own heights; fix the config",
                layer,
            )

    def _waited(self, build: Build, meta: FrameMeta) -> bool:
        """Whether this layer waited for the monitor (it was down or behind) while the print moved on: the printer
        reports a layer at least _MOVED_ON layers further, or, where it reports none, the frame was captured more
        than ``[monitor] live_window_s`` ago. Said once per backlog; and once when the monitor has caught up."""
        printer_layer = self._printer_layer()
        if printer_layer is not None:
            waited = printer_layer - meta.layer >= _MOVED_ON
        else:
            waited = time.time() - meta.captured_at > self.service.config.monitor.live_window_s
        if waited and build.backlog is None:
            build.backlog = (meta.layer, meta.layer)
            age = time.time() - meta.captured_at
            self._emit_event(
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
            self._emit_event(
                "info",
                "caught_up",
                f"caught up: layers {first}-{last} were judged late (not acted on); layer {meta.layer} is live",
                meta.layer,
            )
        return waited

    def _printer_layer(self) -> int | None:
        """The layer the printer itself last reported (the watcher's reading), where its host reports layers."""
        layer, at = self._printer_reported
        return layer if layer is not None and time.monotonic() - at < 30 else None

    def _advance(self, build: Build, layer: int, late: bool) -> None:
        """The numbering moves on by small steps, or by a bigger one that the next frame confirms: one frame
        far ahead must not make every later layer "late", never judged. Layers skipped (no frame came for them:
        the camera missed them, or they were lost on the way) are said, each gap once."""
        if not late and build.last_layer >= 0 and layer > build.last_layer + 1:
            first, last = build.last_layer + 1, layer - 1
            self._emit_event(
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
            self._emit_event(
                "info",
                "layer_jump",
                f"layer {layer} follows layer {build.last_layer}: judged; the numbering moves on when the next frame "
                "follows it",
                layer,
            )
        build.gaps.append(time.monotonic() - build.last_seen)
        build.last_seen = time.monotonic()

    def _publish_result(
        self, build: Build, meta: FrameMeta, outcome: LayerOutcome, received: float, timings_ms: dict[str, float]
    ) -> None:
        m = outcome.metrics
        times = {**outcome.timings_ms, **timings_ms}
        res = ResultMessage(
            printer=self.printer_id,
            job_id=meta.job_id,
            layer=meta.layer,
            z_mm=meta.z_mm,
            judged=outcome.judged,
            severity=outcome.severity,
            metrics=_numbers(m.values),
            parts=[_numbers(p) for p in m.parts],
            hits=[_hit_info(h) for h in outcome.hits],
            actions=[a.request_id for a in outcome.actions],
            quality=meta.quality,
            captured_at=meta.captured_at,
            received_at=received,
            segment_ms=round(times["segment"], 2),
            timings_ms={k: round(times[k], 2) for k in ("decode", "segment", "metrics", "record")},
            model=self.service.model_id,
            record=str(build.record.path),
        )
        self.link.publish(self.link.topics.result, res.to_json())
        self.results.append(res)
        v = m.values
        log.info(
            "%s layer %d: porosity %.2f%% spatter %.2f%% of the part area, confirmed warping %.1f mm²%s",
            self.printer_id,
            meta.layer,
            100 * v["porosity_fraction_part"],
            100 * v["spatter_fraction_part"],
            v["warping_confirmed_area_mm2"],
            "; " + ", ".join(f"{a.action} ({a.rule})" for a in outcome.actions) if outcome.actions else "",
        )

    def _republish(self, build: Build, meta: FrameMeta, received: float) -> None:
        """A redelivered frame of a stored layer (a crash between storing and publishing): publish the
        stored result, so no layer stays without one; the actions of that layer are never taken twice."""
        stored = build.record.stored_layer(meta.layer)
        res = ResultMessage(
            printer=self.printer_id,
            job_id=meta.job_id,
            layer=meta.layer,
            z_mm=stored["z_mm"],
            judged=stored["judged"],
            severity=stored["severity"],
            metrics=_numbers(stored["metrics"]),
            parts=[_numbers(p) for p in stored["parts"]],
            quality=meta.quality,
            captured_at=stored["captured_at"] or meta.captured_at,
            received_at=received,
            model=self.service.model_id,
            record=str(build.record.path),
        )
        self.link.publish(self.link.topics.result, res.to_json())

    def _say_printer_state(self, state: Any) -> None:
        """``<prefix>/<printer>/status/printer``, retained: on a change of state, job or layer, and once a minute."""
        job = state.job if state is not None else None
        build = self.build
        layer = job.layer if job is not None and job.layer is not None else None
        live = state is not None and state.state.value in _LIVE_STATES
        self._printer_reported = (layer if live else None, time.monotonic())  # the printer's own word only
        if layer is None and build is not None and build.last_layer >= 0 and not build.ended:
            layer = build.last_layer
        msg = PrinterStateMessage(
            printer=self.printer_id,
            state=state.state.value if state is not None else "unreachable",
            job=(job.name if job is not None else "")[:256],
            layer=layer,
            z_mm=job.z_mm if job is not None and job.z_mm is not None and -5 <= job.z_mm <= 10_000 else None,
            backend=getattr(self.printer, "name", "") or "",
        )
        key = (msg.state, msg.job, msg.layer)
        said_key, said_at = self._printer_said
        if key == said_key and time.monotonic() - said_at < 60:
            return
        self._printer_said = (key, time.monotonic())
        try:
            self.link.publish(self.link.topics.status("printer"), msg.to_json(), retain=True)
        except Exception as err:  # the page shows the record's view meanwhile; the watcher goes on
            log.debug("%s: printer state not published: %s", self.printer_id, err)

    def _printer_state(self) -> Any:
        if self.printer is None:
            return None
        try:
            return self.printer.status()
        except PrinterError as err:
            log.debug("%s: printer status unavailable: %s", self.printer_id, err)
            return None

    def _record_path(self, job_id: str, layer: int) -> tuple[Path, bool]:
        """Where ``job_id``'s frames go, and whether it is printed again. The job's newest record is continued
        (a monitor restarted mid-build, a late layer), unless it is closed and already holds this layer
        among the first ones: the same file printed again, which gets a record of its own."""
        folder = self.service.config.monitor.out_dir / self.printer_id
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
                rows = r.layers()
                again = r.state != "writing" and layer <= _REPRINT_LAYERS and layer < len(rows)
                again = again and bool(rows[layer]["stored"])
        except RecordError:
            return newest, False  # opening it for writing says what is wrong with it
        return (path, True) if again else (newest, False)

    def _build_for(self, meta: FrameMeta, frame: np.ndarray) -> Build | None:
        if self.build is not None and self.build.job_id == meta.job_id:
            return self.build
        if self.trigger_seen and meta.job_id not in self.announced:
            # the printer's layer events say which job prints: a frame naming another never starts one
            raise self._refused(
                "other_job_refused",
                f"frame of job {meta.job_id[:80]!r} (layer {meta.layer}), which no layer event of printer "
                f"{self.printer_id} announced: refused",
                meta.layer,
                f"frame of job {meta.job_id[:80]!r} that no layer event announced",
                "job",
            )
        if self.build is not None:
            self._other_job(self.build, meta.job_id, meta.layer, "frame")
        path, again = self._record_path(meta.job_id, meta.layer)
        if meta.job_id in self.ended and not again:
            self._emit_event(
                "error",
                "build_ended",
                f"layer {meta.layer} arrived for build {meta.job_id}, which has ended; not stored",
                meta.layer,
            )
            raise PayloadError(f"layer {meta.layer} of ended build {meta.job_id}", "ended")
        self.ended.discard(meta.job_id)
        self.close_build("closed")
        scale, thickness, units_said = self._units(meta)
        h, w = frame.shape[:2]
        dtype = "uint16" if frame.dtype == np.uint16 else "uint8"
        resumed = path.exists()
        try:
            if resumed:
                record = BuildRecord.open(path, fsync=self.service.config.monitor.fsync)
                roi = _stored_roi(record) or self._initial_roi(to_gray(frame, order="bgr"))
                log.info(
                    "%s: continuing build record %s (%d layers stored)",
                    self.printer_id,
                    path,
                    len(record.stored_layers()),
                )
            else:
                roi = self._initial_roi(to_gray(frame, order="bgr"))
                record = BuildRecord.create(
                    path,
                    self._spec(meta.job_id, h, w, dtype, roi, scale, thickness),
                    fsync=self.service.config.monitor.fsync,
                )
                log.info("%s: new build %s, record %s", self.printer_id, meta.job_id, path)
        except RecordError as err:
            self._emit_event("critical", "record_failed", str(err), meta.layer)
            raise PayloadError(str(err), "record") from err
        if resumed:  # the record's own units, whatever this first frame after a restart says
            scale, thickness = record.mm_per_px, record.layer_thickness_mm
        build = Build(meta.job_id, record, MetricsComputer(scale), PolicyEngine(self.policy))
        build.thickness = thickness
        if self.service.shadow is not None and record.has_shadow:
            build.shadow_metrics, build.shadow_policy = MetricsComputer(scale), PolicyEngine(self.policy)
        build.set_roi(roi, (h, w))
        self.build = build
        self.last_record = record.path
        for text in units_said if not resumed else []:
            self._emit_event("warning", "units", text, meta.layer)
        self._reference_image(build)
        if record.shared_with_reader:
            self._emit_event(
                "warning",
                "record_shared",
                f"{record.path} is held open by another program reading it (HDF5's file lock); the build goes on "
                "without the lock, and that program shows the record as it was: reopen it there to see later layers",
                meta.layer,
            )
        if roi is not None and roi.source == "proposed" and not resumed:
            self._emit_event(
                "info",
                "roi_proposed",
                f"build plate proposed from the first frame: {[list(p) for p in roi.points]}; only it is judged. "
                "Confirm it on the dashboard, or set [printers.<id>] roi in the config",
                meta.layer,
            )
        self.controller.new_build(meta.job_id, self.service.model_id)
        self._replay_windows(build)
        return build

    def _replay_windows(self, build: Build) -> None:
        """A monitor restarted mid-build (or a worker taking the printer over) rebuilds from the record what the
        next layers are judged with: the reference lighting, the metrics' memory of earlier layers (warping
        confirmed across layers, part footprints), rule windows and incidents, and the shadow model's own
        memory and windows from its stored masks. Nothing is acted on again."""
        stored = build.record.stored_layers()
        if not len(stored):
            return
        build.illum = build.record.illumination()
        metrics = build.record.table("metrics")
        parts = build.record.table("part_metrics")
        shadow = build.record.shadow_masks() if build.shadow_metrics is not None else {}
        last = int(stored.max())
        for layer in (int(n) for n in stored):
            mask, samples = build.record.layer_for_restart(layer)
            if build.illum is None:  # the frames are read only until the lighting is known
                self._reference(build, build.record.image(layer), mask, layer)
            # the last layer's frame too: its confirmed warping is what the next layer's growth is measured from
            build.metrics.compute(mask, part_ids=samples, gray=build.record.image(layer) if layer == last else None)
            rows = [p for p in parts if int(p["layer"]) == layer]
            build.policy.evaluate(layer, metrics[layer], rows)
            if layer in shadow and build.shadow_metrics is not None and build.shadow_policy is not None:
                m = build.shadow_metrics.compute(shadow[layer], part_ids=samples)  # the shadow's memory and windows
                build.shadow_policy.evaluate(layer, m.values, m.parts)
        self.controller.restore_handled(int(n) for n in stored)
        self.controller.restore(build.record.table("actions"))
        build.last_layer = int(stored.max())
        self._restore_drift(build, stored, metrics)

    def _restore_drift(self, build: Build, stored: np.ndarray, metrics: list[dict[str, Any]]) -> None:
        """A restarted monitor (or a worker taking the printer over) refills the drift window with the build's
        last sound layers, which the process before it had watched: otherwise a camera drifting around a
        crash is said a whole window later. Nothing is said again while refilling (a finding the refilled
        window holds was said before, and the window starts afresh as it did then)."""
        cfg = self.service.config.monitor
        if self._drift is not None or not cfg.drift_reference_layers:
            return  # this process has watched the layers itself
        rows = build.record.layer_rows()
        sound: list[int] = []
        latest = -1
        for layer in sorted((int(n) for n in stored), key=lambda n: float(rows[n]["stored_at"])):
            late, latest = layer < latest, max(latest, layer)  # stored but never judged, as on arrival
            if not late and not any(rows[layer][k] for k in ("blurry", "frozen", "too_dark", "too_bright")):
                sound.append(layer)
        for layer in sound[-cfg.drift_window :]:
            mask, _ = build.record.layer_for_restart(layer)
            ood = float(metrics[layer].get("ood_score", float("nan"))) if layer < len(metrics) else float("nan")
            gray = build.record.image(layer)
            self._watch_drift(layer, gray, mask, build.roi_mask, ood, say=False)

    def _units(self, meta: FrameMeta) -> tuple[float, float, list[str]]:
        """(mm per px, layer thickness in mm) of a new build. ``[printers.<id>]`` wins where it sets them (a frame's
        word is the network's); else what the camera (the frame's ``mm_per_px``) and the printer (z of the layer)
        report; else ``[monitor]``'s. A report that disagrees with a value set in the config is a warning (returned:
        said once the build's record is there to keep it)."""
        cfg = self.service.config
        section = cfg.printers.get(self.printer_id)
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
                where = f"[printers.{self.printer_id}]" if key in own else "[monitor]"
                used = "the config's" if key in own else "the reported one"
                name, unit = what[key]
                said.append(
                    f"{name}: {report:.4g} {unit} reported, {where} {key} = {configured:g}: this build uses {used} "
                    f"({value:.4g} {unit}); fix whichever is wrong (areas and volumes follow it)"
                )
        return chosen["mm_per_px"], chosen["layer_thickness_mm"], said

    def _spec(
        self, job_id: str, h: int, w: int, dtype: str, roi: Roi | None, scale: float, thickness: float
    ) -> RecordSpec:
        svc = self.service
        return RecordSpec(
            printer=self.printer_id,
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
            policy=self.policy.model_dump(mode="json"),
            model={"id": svc.model_id, "sha256": svc.model_sha256},
            shadow={"id": svc.shadow_id, "sha256": svc.shadow_sha256} if svc.shadow is not None else None,
            software_version=__version__,
            compression_level=svc.config.monitor.gzip_level,
            roi=roi.to_json() if roi is not None else None,
        )

    def close_build(self, state: str = "closed", job_id: str | None = None) -> None:
        """Close the current build's record (only if it is still ``job_id``'s, where given)."""
        with self.lock:
            if self.build is None or (job_id is not None and self.build.job_id != job_id):
                return
            self.controller.wait_idle(30)
            if self.build.ended:
                self._emit_event("info", "job_ended", f"{self.build.ended}: record closed", self.build.last_layer)
            self.build.record.close(state)
            self.ended.add(self.build.job_id)
            log.info(
                "%s: build %s %s (%d layers judged)",
                self.printer_id,
                self.build.job_id,
                state,
                self.build.layers_judged,
            )
            self.build = None

    # ---- messages out -----------------------------------------------------------------------------
    def _record_action(self, msg: ActionMessage) -> None:
        if self.build is not None:
            detail: dict[str, Any] = {
                "reason": msg.reason,
                "metrics": msg.metrics,
                "model": msg.model,
                "detail": msg.detail,
                "gcode": msg.gcode,
                "severity": msg.severity,
                "operator": msg.operator,
            }
            where = self.controller.where(msg.request_id)
            if where:  # the rectangles of the frame the rule measured (x, y, width, height in camera px)
                detail["where"] = [list(b) for b in where]
            self.build.record.add_action(
                msg.layer or 0, msg.request_id, msg.action, msg.state.value, msg.rule, msg.incident, detail, at=msg.time
            )

    def _emit_action(self, msg: ActionMessage) -> None:
        with self.lock:
            self._record_action(msg)
        level = logging.WARNING if msg.action in ("pause", "cancel") else logging.INFO
        log.log(
            level,
            "%s: %s %s at layer %s: %s %s",
            self.printer_id,
            msg.action,
            msg.state.value,
            msg.layer,
            msg.reason,
            msg.detail,
        )
        self._publish(self.link.topics.action, msg.to_json())

    def _say_now(self, kind: str) -> int | None:
        """Whether ``kind`` of refusal may be said now (once per _REFUSAL_EVERY_S): how many were held back since
        it was last said, or None (and it is counted) when it was said too recently."""
        now = time.monotonic()
        said, held = self._said.get(kind, (-1e9, 0))
        if now - said < _REFUSAL_EVERY_S:
            self._said[kind] = (said, held + 1)
            return None
        self._said[kind] = (now, 0)
        return held

    def _emit_event(self, level: str, code: str, message: str, layer: int) -> None:
        if code in _REFUSED_INPUT:
            # refused input is said once per interval per kind, with how many were not said: a flood of bad
            # messages must not flood the record, the log and the event topic
            held = self._say_now(code)
            if held is None:
                return
            if held:
                message = f"{message} ({held} more of these since the last said)"
        with self.lock:
            if self.build is not None:
                self.build.record.add_event(layer, level, code, message)
        loudness = {"critical": logging.ERROR, "error": logging.ERROR, "warning": logging.WARNING}
        log.log(loudness.get(level, logging.INFO), "%s: %s", self.printer_id, message)
        event = EventMessage(
            printer=self.printer_id,
            service="monitor",
            level=EventLevel(level),
            code=code,
            message=message[:4000],
            job_id=self.build.job_id if self.build else "",
            layer=layer,
        )
        self._publish(self.link.topics.event, event.to_json())

    def _publish(self, topic: str, payload: bytes) -> None:
        try:
            self.link.publish(topic, payload)
        except Exception as err:  # never let a publish failure take the judgement down
            log.warning("%s: could not publish on %s: %s", self.printer_id, topic, err)


def _stored_roi(record: BuildRecord) -> Roi | None:
    """The build plate a record was made with (a monitor restarted mid-build keeps judging the same area)."""
    try:
        data = record.json_attr("roi")
        return Roi.from_points(data["points"], str(data.get("source", "proposed"))) if data else None
    except (ValueError, KeyError, TypeError):
        return None


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


class MonitorService:
    """The monitor for all configured printers. ``printers`` overrides backends (the demo's virtual printer)."""

    def __init__(
        self,
        config: Config,
        *,
        printer_ids: list[str] | None = None,
        printers: Mapping[str, Printer | None] | None = None,
        bus: MessageBus | None = None,
    ) -> None:
        """``bus``: links on this in-process bus instead of the configured MQTT broker (demo, replay, tests)."""
        self.config = config
        self.bus = bus
        self.printer_ids = printer_ids or sorted(config.printers)
        if not self.printer_ids:
            raise ValueError("no printer to monitor: add a [printers.<id>] table to the config or pass --printer ID")
        self._given = dict(printers or {})
        self.monitors: dict[str, PrinterMonitor] = {}
        self.segmenter: Any = None
        self.model_id = ""
        self.model_sha256 = ""
        self._store_stamp = 0.0
        self.shadow: Any = None  # the candidate run beside the model in use ([monitor] shadow_model)
        self.notifier: Any = None  # monitor.notify.Notifier, where [notifications] has routes
        self.shadow_id = ""
        self.shadow_sha256 = ""
        self._stop = threading.Event()
        self._idle: threading.Thread | None = None
        self.policy: Policy | None = None
        self.site: Any = None  # monitor.workers.SiteWorker, where workers share the site ([monitor] group)
        operators_file = config.operators_file()
        operators = load_operators(operators_file) if operators_file is not None else {}
        self.verifier = Verifier(operators, window_s=config.security.signature_window_s)
        ha = config.homeassistant
        # the operator Home Assistant's Pause button signs as (its secret stays in this process)
        self._ha_operator = (
            Credential(ha.operator, operators[ha.operator]) if ha.enabled and ha.operator in operators else None
        )
        if not operators:
            log.warning(
                "monitor: no operators file ([security] operators_file or LAYERWATCH_OPERATORS_FILE): operator "
                "requests (pause, resume, verdicts, plate outline) from the network are refused; only the policy acts"
            )

    def _load_model(self, model: Path | None = None) -> tuple[Any, str, str]:
        """The segmenter of ``model``, else of the model to use: the configured one, else the store's current,
        else the shipped."""
        from monitor.models import ModelStore, model_name
        from segmentation.inference import DEFAULT_MODEL, Segmenter
        from segmentation.model import file_sha256

        cfg = self.config.monitor
        if model is None:
            self._store_stamp = ModelStore(cfg.models_dir).stamp()
            model = cfg.model or ModelStore(cfg.models_dir).current_model(DEFAULT_MODEL)
        segmenter = Segmenter(
            model_path=model, engine=cfg.engine, threads=cfg.threads, max_pixels=cfg.max_frame_pixels
        ).start()
        sha = file_sha256(Path(model))
        return segmenter, f"{model_name(Path(model))}@{sha[:12]}", sha

    def _follow_store(self) -> None:
        """Switch to the store's current model when it changed (a promotion or a rollback), between layers.
        A model that does not load leaves the one in use, said in the log and in every live record."""
        from monitor.models import ModelStore

        cfg = self.config.monitor
        stamp = ModelStore(cfg.models_dir).stamp()
        if cfg.model is not None or stamp == self._store_stamp:
            return
        self._store_stamp = stamp  # a store that cannot be used is said once per change, not every second
        try:
            segmenter, model_id, sha = self._load_model()
        except Exception as err:  # any failure keeps the model in use
            log.error("monitor: the promoted model cannot be used (%s); keeping %s", err, self.model_id)
            why = f"the new model cannot be used ({err}); kept {self.model_id}"
            self._tell_builds("error", "model_not_switched", why)
            return
        monitors = list(self.monitors.values())
        for pm in monitors:  # no layer is being judged while the model changes
            pm.lock.acquire()
        try:
            old, self.segmenter = self.segmenter, segmenter
            previous, self.model_id, self.model_sha256 = self.model_id, model_id, sha
        finally:
            for pm in reversed(monitors):
                pm.lock.release()
        old.close()
        log.warning("monitor: model switched from %s to %s (model store %s)", previous, model_id, cfg.models_dir)
        self._tell_builds("info", "model_changed", f"model switched from {previous} to {model_id}")

    def _tell_builds(self, level: str, code: str, message: str) -> None:
        for pm in list(self.monitors.values()):
            with pm.lock:
                if pm.build is not None:
                    pm.build.record.add_event(max(pm.build.last_layer, 0), level, code, message)

    def start(self) -> MonitorService:
        if self.segmenter is not None:
            return self  # already started (``with MonitorService(...).start():``)
        cfg = self.config
        self.segmenter, self.model_id, self.model_sha256 = self._load_model()
        if cfg.notifications.routes:
            from monitor.notify import Notifier

            def failed(printer: str, why: str) -> None:
                pm = self.monitors.get(printer)
                if pm is not None:
                    pm.emit_notify_failure(why)

            self.notifier = Notifier(cfg.notifications, cfg.source, failed)
        if cfg.monitor.shadow_model is not None:
            self.shadow, self.shadow_id, self.shadow_sha256 = self._load_model(cfg.monitor.shadow_model)
            log.info("monitor: shadow model %s runs beside %s, acting on nothing", self.shadow_id, self.model_id)
        self.policy = cfg.resolved_policy()
        try:
            if cfg.monitor.group:
                from monitor.workers import SiteWorker

                if self.bus is not None or cfg.mqtt.protocol != "5":
                    raise ConfigError(
                        f"[monitor] group {cfg.monitor.group!r}: workers share printers through an MQTT 5 broker "
                        '(shared subscriptions, delayed wills); set [mqtt] protocol = "5" or remove the group'
                    )

                self.site = SiteWorker(self).start()  # it takes printers as the broker hands them over
            else:
                for pid in self.printer_ids:
                    self.open_printer(pid)
        except BaseException:
            self.close()
            raise
        if self.bus is None:
            self._warn_if_anonymous()
        self._idle = threading.Thread(target=self._watch, name="monitor-watch", daemon=True)
        self._idle.start()
        log.info(
            "monitor: model %s (%s engine); printers %s", self.model_id, cfg.monitor.engine, ", ".join(self.printer_ids)
        )
        return self

    def printer_mqtt(self, pid: str) -> MqttConfig:
        """The broker settings of a printer's link: frames waiting beyond the memory bound go to a spool beside its
        records (a backlog after an outage is judged, not dropped)."""
        return self.config.mqtt.model_copy(update={"spool_dir": self.config.monitor.out_dir / pid / ".spool"})

    def open_printer(self, pid: str, link: Link | None = None, holder: Any = None) -> PrinterMonitor:
        """Start judging ``pid``: its printer backend, its link (``link``, else one on the configured broker or
        bus), its handlers. A site worker (monitor.workers) passes an exclusive link of its own and the
        printer's ``holder`` lock, which every handler takes before it touches the printer's records."""
        cfg = self.config
        assert self.policy is not None, "open_printer before start"
        printer = self._given[pid] if pid in self._given else self._make_printer(pid)
        topics = Topics(cfg.mqtt.prefix, pid)
        if link is None:
            link = open_link(self.bus, self.printer_mqtt(pid), service="monitor", topics=topics, version=__version__)
        pm = PrinterMonitor(self, pid, link, printer, self.policy)
        pm.holder = holder
        handlers = ((topics.image, pm.on_frame), (topics.action, pm.on_action), (topics.layer, pm.on_layer))
        for topic_filter, handler in handlers:
            link.subscribe(topic_filter, pm.owned(handler))
        self.monitors[pid] = pm
        try:
            link.start()
        except BaseException:
            self.release_printer(pid, publish_offline=False)
            raise
        if cfg.homeassistant.enabled:
            from monitor.homeassistant import HomeAssistant

            pm.ha = HomeAssistant(pm, cfg.homeassistant.discovery_prefix, self._ha_operator)
            pm.ha.start()
        return pm

    def release_printer(self, pid: str, *, publish_offline: bool = True) -> None:
        """Stop judging ``pid`` and let go of its record, which stays open for the next holder (a site worker
        handing the printer to another, or losing it): the same as a restart, without the crash."""
        pm = self.monitors.pop(pid, None)
        if pm is None:
            return
        pm.link.close(publish_offline=publish_offline)  # the layer being judged finishes first
        pm.release()
        pm.controller.close()
        if pm.printer is not None and pid not in self._given:
            pm.printer.close()

    def _warn_if_anonymous(self) -> None:
        """Loudly, at start: a broker that lets anyone in lets anyone publish frames and layer events."""
        mqtt = self.config.mqtt
        username, _ = mqtt.credentials()
        if username is None:
            log.warning(
                "monitor: SECURITY: connected to %s without a user name: an anonymous broker lets anyone on the "
                "network publish frames and layer events (control requests still need an operator's signature); "
                "set [mqtt] username and a password, see docs/security.md",
                mqtt.url,
            )
        elif anonymous_allowed(mqtt):
            log.warning(
                "monitor: SECURITY: broker %s also lets in clients without a user name: set allow_anonymous false, "
                "see docs/security.md",
                mqtt.url,
            )

    def _make_printer(self, pid: str) -> Printer | None:
        section = self.config.printers.get(pid)
        if section is None or section.backend == "none":
            return None
        return create_printer(section.backend, pid, **section.options).start()

    def _watch(self) -> None:
        """Read each printer's state (published for the dashboard), close the records of jobs that ended (after
        the grace time) or whose printer went silent."""
        cfg = self.config.monitor
        last_poll = 0.0
        while not self._stop.wait(min(1.0, cfg.build_idle_close_s)):
            poll = time.monotonic() - last_poll >= _STATE_POLL_S
            if poll:
                last_poll = time.monotonic()
            try:
                self._follow_store()
            except Exception:  # the watcher must outlive a broken model store
                log.exception("monitor: checking the model store failed")
            for pm in list(self.monitors.values()):
                try:
                    pm.check_frames()
                    if poll:
                        pm.check_printer()
                    build = pm.build
                    if build is None:
                        continue
                    quiet = time.monotonic() - build.last_seen
                    if build.ended and quiet >= cfg.job_end_grace_s:
                        pm.close_build("closed", build.job_id)
                    elif quiet > cfg.build_idle_close_s:
                        pm.close_build("closed-idle", build.job_id)
                except Exception:  # the watcher must outlive any one printer's trouble
                    log.exception("%s: checking for the end of the job failed", pm.printer_id)

    def close(self) -> None:
        self._stop.set()
        if self.site is not None:
            # first out of the site's group: the printers it lets go now go to the other workers, not back to it
            self.site.close()
            for pid in list(self.monitors):
                self.release_printer(pid)
        for pm in list(self.monitors.values()):
            pm.link.close()
            pm.close_build("closed")
            pm.controller.close()
            if pm.printer is not None and pm.printer_id not in self._given:
                pm.printer.close()
        if self.notifier is not None:
            self.notifier.close()
        for segmenter in (self.segmenter, self.shadow):
            if segmenter is not None:
                segmenter.close()
        self.segmenter = self.shadow = None

    def __enter__(self) -> MonitorService:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
