"""The intervention controller: turns rule hits into printer actions, idempotent and bounded.

- One pause per incident. An incident is one rule (on one part) that holds; while its pause is
  pending or in force, the rule holding again does nothing. After an operator resumes, it pauses
  again only if the metric has grown by ``regrow_factor`` over its value at the pause.
- Redelivered layers never act twice: each (job, layer) is handled once, and request ids are
  deterministic (``job:layer:rule:action``) so a consumer can de-duplicate too.
- G-code adjustments are bounded per command over the build (``max_total_pct`` of the rule) and in
  number (``max_adjustments``), with a cooldown in layers per rule; so are notifications.
- A pause runs on a worker thread: the decision is published at once (``requested``), the outcome
  follows (``confirmed`` with timings, ``timed_out``, ``failed``) and a failure is a critical event.
- If the controller itself fails, it fails to "no action" plus a critical event, never to a wrong action.
"""

from __future__ import annotations

import hashlib
import logging
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from monitor.policy import Box, GcodeAction, RuleHit
from printer_io.errors import PauseNotConfirmed, PrinterError, UnsupportedOperation
from printer_io.messages import ActionMessage
from printer_io.printer import Printer, PrinterState
from printer_io.vocabulary import ActionKind, ActionState, Severity

__all__ = ["Controller", "ControllerLimits", "Incident", "bounded_id", "job_key"]

log = logging.getLogger(__name__)

EmitAction = Callable[[ActionMessage], None]
Locate = Callable[[RuleHit], tuple[Box, ...]]
_WHERE_KEPT = 256  # requests whose evidence rectangles are remembered (the record keeps them all)
EmitEvent = Callable[[str, str, str, int], None]  # level, code, message, layer


def job_key(job_id: str) -> str:
    """The job as it starts request and incident ids: itself when short, else its start and a hash of it.
    A real file name plus OctoPrint's suffix runs past 100 characters, and ids are at most 128."""
    if len(job_id) <= 48:
        return job_id
    return f"{job_id[:32]}~{hashlib.sha256(job_id.encode()).hexdigest()[:12]}"


def bounded_id(*parts: object, limit: int = 128) -> str:
    """``parts`` joined by ``:``, cut with a hash of the whole where longer than ``limit`` (ids stay unique)."""
    joined = ":".join(str(p) for p in parts)
    if len(joined) <= limit:
        return joined
    return f"{joined[: limit - 17]}~{hashlib.sha256(joined.encode()).hexdigest()[:16]}"


class ControllerLimits(BaseModel):
    """The controller's bounds; also the config's ``[controller]`` section."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    # a rule adjusts or notifies again only after this many layers
    cooldown_layers: int = Field(default=5, ge=0, le=10_000)
    max_adjustments: int = Field(default=10, ge=0, le=1000)  # G-code adjustments a build
    # a pause not confirmed in this time is sent again, then escalated
    pause_timeout_s: float = Field(default=30.0, gt=0, le=600)
    # after an operator resumes, pause again only if the defect grows this much
    regrow_factor: float = Field(default=1.25, ge=1.0, le=100)


class IncidentState(StrEnum):
    OPEN = "open"
    PAUSING = "pausing"  # a pause was requested, not yet confirmed
    PAUSED = "paused"
    RESUMED = "resumed"  # the operator resumed; it pauses again only if the defect grows
    CANCELLED = "cancelled"
    FAILED = "failed"  # the printer did not carry the pause out


@dataclass
class Incident:
    id: str
    key: str
    rule: str
    part_id: int
    opened_layer: int
    state: IncidentState = IncidentState.OPEN
    value_at_pause: float = 0.0
    pauses: int = 0


@dataclass
class _BuildState:
    handled: set[int] = field(default_factory=set)
    baseline: dict[str, float] = field(default_factory=dict)  # metric values when the operator resumed
    incidents: dict[str, Incident] = field(default_factory=dict)
    last_acted: dict[tuple[str, str], int] = field(default_factory=dict)
    adjustments: int = 0
    totals: dict[str, float] = field(default_factory=dict)
    excluded: set[int] = field(default_factory=set)


class Controller:
    """One per printer. ``on_layer`` is called by the monitor for every judged layer, in its thread."""

    def __init__(
        self,
        printer: Printer | None,
        *,
        printer_id: str,
        emit_action: EmitAction,
        emit_event: EmitEvent,
        limits: ControllerLimits | None = None,
        object_name: Callable[[int], str] = lambda pid: f"part_{pid}",
    ) -> None:
        self.printer = printer
        self.printer_id = printer_id
        self.emit_action = emit_action
        self.emit_event = emit_event
        self.limits = limits or ControllerLimits()
        self.object_name = object_name
        self.job_id = ""
        self.model = ""
        self._state = _BuildState()
        self._locate: Locate | None = None
        self._where: OrderedDict[str, tuple[Box, ...]] = OrderedDict()
        self._work: queue.Queue[Callable[[], None] | None] = queue.Queue()
        self._worker = threading.Thread(target=self._run, name=f"controller-{printer_id}", daemon=True)
        self._worker.start()

    def new_build(self, job_id: str, model: str) -> None:
        self.job_id, self.model = job_id, model
        self._state = _BuildState()
        self._where.clear()

    @property
    def incidents(self) -> list[Incident]:
        return list(self._state.incidents.values())

    def close(self, timeout: float = 60) -> None:
        self._work.put(None)
        self._worker.join(timeout)

    def where(self, request_id: str) -> tuple[Box, ...]:
        """The rectangles of the frame that made the rule of request ``request_id`` hold (empty if unknown)."""
        return self._where.get(request_id, ())

    def wait_idle(self, timeout: float = 60) -> None:
        done = threading.Event()
        self._work.put(done.set)
        done.wait(timeout)

    # ---- decisions --------------------------------------------------------------------------------
    def decide(
        self,
        layer: int,
        hits: Sequence[RuleHit],
        metrics: Mapping[str, float],
        printer_state: PrinterState | None = None,
        locate: Locate | None = None,
    ) -> list[ActionMessage]:
        """Decide on one layer's rule hits; returns the actions requested (outcomes follow asynchronously).
        ``locate``: where on the frame a hit was measured, asked only for the hits that lead to an action
        (:meth:`where` gives it back by request id: the evidence the record and the notices show)."""
        st = self._state
        if layer in st.handled:
            log.info("%s: layer %d already handled; no action (redelivered message)", self.printer_id, layer)
            return []
        st.handled.add(layer)
        self._locate = locate
        try:
            self._note_operator_resume(printer_state, layer, metrics)
            out: list[ActionMessage] = []
            for hit in hits:
                out += self._decide(hit, metrics)
            return out
        except Exception as err:  # a controller bug must end in no action, loudly
            log.exception("%s: controller failed at layer %d", self.printer_id, layer)
            self.emit_event(
                "critical", "controller_failed", f"controller failed at layer {layer}: {err}; no action taken", layer
            )
            return []
        finally:
            self._locate = None  # it holds the layer's mask

    def _note_operator_resume(self, state: PrinterState | None, layer: int, metrics: Mapping[str, float]) -> None:
        """The printer prints again after our pause: the operator looked and resumed. What they saw is the
        new baseline: from now on a pause rule acts only when its metric grows by ``regrow_factor`` over it."""
        if state not in (PrinterState.PRINTING, PrinterState.RESUMING):
            return
        resumed = False
        for inc in self._state.incidents.values():
            if inc.state == IncidentState.PAUSED:
                inc.state = IncidentState.RESUMED
                resumed = True
                log.info("%s: incident %s resumed by the operator at layer %d", self.printer_id, inc.id, layer)
        if resumed:
            self._state.baseline = {k: float(v) for k, v in metrics.items() if isinstance(v, int | float) and v == v}

    def restore_handled(self, layers: Iterable[int]) -> None:
        """Layers judged before a restart: never acted on again."""
        self._state.handled.update(layers)

    def restore(self, actions: Sequence[Mapping[str, Any]]) -> None:
        """Rebuild incidents from a record's action rows (a monitor restarted mid-build)."""
        for row in actions:
            if row.get("action") not in (ActionKind.PAUSE, ActionKind.CANCEL) or row.get("state") not in (
                ActionState.CONFIRMED,
                ActionState.REQUESTED,
            ):
                continue
            inc_id = str(row.get("incident", ""))
            parts = inc_id.rsplit(":", 2)
            if len(parts) != 3:
                continue
            key = parts[1]
            inc = self._state.incidents.setdefault(
                key, Incident(inc_id, key, str(row.get("rule", "")), 0, int(row.get("layer", 0)))
            )
            inc.state = IncidentState.PAUSED if row["action"] == ActionKind.PAUSE else IncidentState.CANCELLED
            inc.pauses = max(inc.pauses, 1)

    def _decide(self, hit: RuleHit, metrics: Mapping[str, float]) -> list[ActionMessage]:
        out: list[ActionMessage] = []
        st = self._state
        inc = st.incidents.get(hit.key)
        if inc is None:
            incident = bounded_id(job_key(self.job_id), hit.key, hit.layer)
            inc = Incident(incident, hit.key, hit.rule.name, hit.part_id, hit.layer)
            st.incidents[hit.key] = inc
            if hit.rule.severity != Severity.INFO:
                self.emit_event(hit.rule.severity.value, "incident", f"{hit.describe()} [incident {inc.id}]", hit.layer)
        for action in hit.rule.actions:
            kind = ActionKind(action.type)
            if kind in (ActionKind.PAUSE, ActionKind.CANCEL):
                msg = self._stop(kind, hit, inc, metrics)
            elif kind == ActionKind.GCODE:
                assert isinstance(action, GcodeAction)
                msg = self._adjust(action, hit, inc, metrics)
            elif kind == ActionKind.EXCLUDE_OBJECT:
                msg = self._exclude(hit, inc, metrics)
            else:
                msg = self._notify(hit, inc, metrics)
            if msg is not None:
                out.append(msg)
        return out

    def _message(
        self,
        hit: RuleHit,
        inc: Incident,
        action: ActionKind,
        state: ActionState,
        metrics: Mapping[str, float],
        **extra: Any,
    ) -> ActionMessage:
        request_id = bounded_id(job_key(self.job_id), hit.layer, hit.key, action)
        if request_id not in self._where:
            self._where[request_id] = self._where_of(hit)
            while len(self._where) > _WHERE_KEPT:
                self._where.popitem(last=False)
        return ActionMessage(
            printer=self.printer_id,
            action=action,
            state=state,
            request_id=request_id,
            job_id=self.job_id,
            layer=hit.layer,
            reason=hit.describe(),
            rule=hit.rule.name,
            incident=inc.id,
            severity=hit.rule.severity,
            metrics={k: float(v) for k, v in metrics.items() if v == v},
            model=self.model,
            **extra,
        )

    def _where_of(self, hit: RuleHit) -> tuple[Box, ...]:
        """The hit's evidence rectangles; a failure to find them never stands in the way of the action."""
        if self._locate is None:
            return ()
        try:
            return self._locate(hit)
        except Exception:
            log.exception("%s: could not locate the evidence of %s at layer %d", self.printer_id, hit.key, hit.layer)
            return ()

    def _stop(
        self, kind: ActionKind, hit: RuleHit, inc: Incident, metrics: Mapping[str, float]
    ) -> ActionMessage | None:
        if inc.state in (IncidentState.PAUSING, IncidentState.PAUSED, IncidentState.CANCELLED):
            return None  # one pause per incident
        metric = hit.rule.metric if hit.rule.region != "part" else f"{hit.rule.metric}_part"
        base = self._state.baseline.get(metric) if not hit.part_id else None
        if inc.state == IncidentState.RESUMED and not self._grown(hit, max(inc.value_at_pause, base or 0.0)):
            return None  # the operator resumed; the defect has not grown since
        if inc.state == IncidentState.OPEN and base is not None and not self._grown(hit, base):
            return None  # the operator resumed with this defect in view; it has not grown since
        if kind == ActionKind.PAUSE and any(
            i.state in (IncidentState.PAUSING, IncidentState.PAUSED) for i in self._state.incidents.values()
        ):
            # the printer is already stopped for another rule: this incident joins that pause
            inc.state, inc.value_at_pause = IncidentState.PAUSED, hit.value
            return None
        inc.state = IncidentState.PAUSING if kind == ActionKind.PAUSE else IncidentState.CANCELLED
        inc.value_at_pause = hit.value
        inc.pauses += 1
        msg = self._message(hit, inc, kind, ActionState.REQUESTED, metrics)
        self.emit_action(msg)
        self._work.put(lambda: self._execute_stop(kind, msg, inc))
        return msg

    def operator(self, request: ActionMessage) -> None:
        """Carry out an operator's pause or resume on the worker; the outcome is published and recorded."""

        def run() -> None:
            if self.printer is None:
                self._outcome(request, ActionState.SKIPPED, "no printer backend configured (observe-only)")
                return
            try:
                if request.action == ActionKind.PAUSE:
                    outcome = self.printer.pause(self.limits.pause_timeout_s)
                    for inc in self._state.incidents.values():
                        if inc.state == IncidentState.RESUMED:
                            inc.state = IncidentState.PAUSED
                    self._outcome(request, ActionState.CONFIRMED, f"paused after {outcome.paused_s * 1000:.0f} ms")
                else:
                    self.printer.resume()
                    self._outcome(request, ActionState.CONFIRMED, "resume sent")
            except PauseNotConfirmed as err:
                self._outcome(request, ActionState.TIMED_OUT, str(err))
                self.emit_event("critical", "pause_not_confirmed", str(err), request.layer or 0)
            except PrinterError as err:
                self._outcome(request, ActionState.FAILED, str(err))

        self._work.put(run)

    def _grown(self, hit: RuleHit, reference: float) -> bool:
        factor = self.limits.regrow_factor
        if hit.rule.above is not None:
            return hit.value >= reference * factor if reference > 0 else hit.value > reference
        return hit.value <= reference / factor

    def _execute_stop(self, kind: ActionKind, msg: ActionMessage, inc: Incident) -> None:
        t0 = time.monotonic()
        if self.printer is None:
            self._outcome(msg, ActionState.SKIPPED, "no printer backend configured (observe-only)")
            return
        try:
            if kind == ActionKind.PAUSE:
                outcome = self.printer.pause(self.limits.pause_timeout_s)
                inc.state = IncidentState.PAUSED
                ack = "n/a" if outcome.acknowledged_s is None else f"{outcome.acknowledged_s * 1000:.0f} ms"
                detail = f"acknowledged after {ack}, paused after {outcome.paused_s * 1000:.0f} ms"
                self._outcome(msg, ActionState.CONFIRMED, detail)
            else:
                self.printer.cancel()
                self._outcome(msg, ActionState.CONFIRMED, f"cancel sent in {(time.monotonic() - t0) * 1000:.0f} ms")
        except PauseNotConfirmed as err:
            inc.state = IncidentState.FAILED
            self._outcome(msg, ActionState.TIMED_OUT, str(err))
            self.emit_event("critical", "pause_not_confirmed", str(err), msg.layer or 0)
        except PrinterError as err:
            inc.state = IncidentState.FAILED
            self._outcome(msg, ActionState.FAILED, str(err))
            self.emit_event("critical", f"{kind}_failed", f"{kind} of {self.printer_id} failed: {err}", msg.layer or 0)

    def _outcome(self, msg: ActionMessage, state: ActionState, detail: str) -> None:
        self.emit_action(msg.model_copy(update={"state": state, "detail": detail, "time": time.time()}))

    def _cooling(self, hit: RuleHit, action: str) -> bool:
        last = self._state.last_acted.get((hit.key, action))
        return last is not None and hit.layer - last < self.limits.cooldown_layers

    def _adjust(
        self, action: GcodeAction, hit: RuleHit, inc: Incident, metrics: Mapping[str, float]
    ) -> ActionMessage | None:
        st = self._state
        if self._cooling(hit, ActionKind.GCODE):
            return None
        total = st.totals.get(action.command, 0.0)
        new_total = total + action.step_pct
        if abs(new_total) > action.max_total_pct + 1e-9 or st.adjustments >= self.limits.max_adjustments:
            if (hit.key, "gcode-bound") not in st.last_acted:
                st.last_acted[(hit.key, "gcode-bound")] = hit.layer
                why = f"{action.command} already adjusted by {total:+g} % (bound {action.max_total_pct:g} %)"
                if st.adjustments >= self.limits.max_adjustments:
                    why = f"{st.adjustments} adjustments made this build (bound {self.limits.max_adjustments})"
                msg = self._message(hit, inc, ActionKind.GCODE, ActionState.SKIPPED, metrics, detail=why)
                self.emit_action(msg)
                return msg
            return None
        st.totals[action.command] = new_total
        st.adjustments += 1
        st.last_acted[(hit.key, ActionKind.GCODE)] = hit.layer
        line = f"{action.command} S{100 + new_total:g}"
        msg = self._message(hit, inc, ActionKind.GCODE, ActionState.REQUESTED, metrics, gcode=[line])
        self.emit_action(msg)
        self._work.put(lambda: self._execute_gcode(msg, [line]))
        return msg

    def _execute_gcode(self, msg: ActionMessage, lines: list[str]) -> None:
        if self.printer is None:
            self._outcome(msg, ActionState.SKIPPED, "no printer backend configured (observe-only)")
            return
        try:
            self.printer.send_gcode(lines)
            self._outcome(msg, ActionState.CONFIRMED, "sent " + "; ".join(lines))
        except PrinterError as err:
            self._outcome(msg, ActionState.FAILED, str(err))
            self.emit_event("warning", "gcode_failed", f"G-code to {self.printer_id} failed: {err}", msg.layer or 0)

    def _exclude(self, hit: RuleHit, inc: Incident, metrics: Mapping[str, float]) -> ActionMessage | None:
        st = self._state
        if not hit.part_id or hit.part_id in st.excluded:
            return None
        st.excluded.add(hit.part_id)
        name = self.object_name(hit.part_id)
        msg = self._message(hit, inc, ActionKind.EXCLUDE_OBJECT, ActionState.REQUESTED, metrics, object_name=name)
        self.emit_action(msg)

        def run() -> None:
            if self.printer is None:
                self._outcome(msg, ActionState.SKIPPED, "no printer backend configured (observe-only)")
                return
            try:
                self.printer.exclude_object(name)
                self._outcome(msg, ActionState.CONFIRMED, f"excluded {name}")
            except UnsupportedOperation as err:
                self._outcome(msg, ActionState.SKIPPED, str(err))
            except PrinterError as err:
                self._outcome(msg, ActionState.FAILED, str(err))

        self._work.put(run)
        return msg

    def _notify(self, hit: RuleHit, inc: Incident, metrics: Mapping[str, float]) -> ActionMessage | None:
        if self._cooling(hit, ActionKind.NOTIFY):
            return None
        self._state.last_acted[(hit.key, ActionKind.NOTIFY)] = hit.layer
        msg = self._message(hit, inc, ActionKind.NOTIFY, ActionState.CONFIRMED, metrics)
        self.emit_action(msg)
        return msg

    def _run(self) -> None:
        while True:
            job = self._work.get()
            if job is None:
                return
            try:
                job()
            except Exception as err:
                log.exception("%s: controller worker failed", self.printer_id)
                self.emit_event("critical", "controller_failed", f"controller worker failed: {err}; no action taken", 0)
