"""The job a printer prints: its layer events, its own state read by the watcher, when a job ends.

The printer's state is read here, by the monitor's watcher (every ``_STATE_POLL_S``, and at once after an
action's outcome), never in a layer's path: a layer is judged with the last reading (``state_for_layer``).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections import deque

import numpy as np

from monitor.buildstate import Build
from monitor.ports import PrinterPort
from printer_io.errors import PrinterError
from printer_io.messages import ActionMessage, LayerEvent, PrinterStateMessage
from printer_io.printer import ACTIVE_STATES, PrinterState, PrinterStatus
from printer_io.vocabulary import ActionKind, ActionState

__all__ = ["JobWatch"]

log = logging.getLogger(__name__)

STATE_POLL_S = 2.0  # how often an open build's printer is asked what it does
_END_HOLD_S = 60.0  # an end event held this long while the printer prints on was not the printer's
NO_FRAME_S = 60.0  # a layer event no frame has followed for this long: the camera is missing (said once)
_LIVE_STATES = frozenset({"printing", "pausing", "paused", "resuming"})
# printer states that end a job this monitor saw printing
_ENDED_STATES = frozenset({PrinterState.IDLE, PrinterState.FINISHED, PrinterState.CANCELLED, PrinterState.ERROR})
_REPORTED_FOR_S = 30.0  # the printer's own layer is taken for this long after it was read


class JobWatch:
    """One printer's jobs: which the layer events announced, which ended, the printer's last state."""

    def __init__(self, pm: PrinterPort) -> None:
        self.pm = pm
        self.ended_jobs: set[str] = set()
        # the jobs the printer's layer events announced; once any came, a frame alone never starts a job
        self.announced: deque[str] = deque(maxlen=16)
        self.trigger_seen = False
        self.event_layers: dict[str, int] = {}  # job -> the highest layer its layer events announced
        self._state: PrinterStatus | None = None  # the watcher's last reading
        self._read_at = -1e9  # when it was read (monotonic)
        self._acted_at = -1e9  # when an action's outcome last changed what the printer does
        self.poll_now = threading.Event()  # the watcher reads the state at once (an action's outcome came)
        self._said: tuple[object, float] = (None, -1e9)  # the last printer state published, and when
        self._reported: tuple[int | None, float] = (None, -1e9)  # the printer's own layer, and when read

    # ---- layer events ---------------------------------------------------------------------------------
    def on_layer_event(self, topic: str, payload: bytes) -> None:
        """Layer events say when a job ended (an end event, or a layer of another job); frames carry the rest.

        Neither ends a live build on its word alone (anyone on the broker can send one): an end event is not
        taken while the printer reports that it still prints, and a layer of another job only once the build
        is quiet."""
        pm = self.pm
        event = LayerEvent.from_json(payload, topic)
        if not event.end:  # its frame should follow; how far each job has printed, as its layer events say
            pm.camera.layer_event(event.job_id, event.layer)
            self.event_layers[event.job_id] = max(event.layer, self.event_layers.get(event.job_id, -1))
            while len(self.event_layers) > 16:
                self.event_layers.pop(next(iter(self.event_layers)))
        # an end event is checked against what the printer says now (asked before the lock: no layer waits on it)
        state = self.read_state() if event.end else None
        with pm.lock:
            self.trigger_seen = True
            build = pm.build
            free = build is None or build.end_reason or build.job_id == event.job_id
            if free and not event.end and event.job_id not in self.announced:
                self.announced.append(event.job_id)
            if build is None or build.end_reason:
                return
            if event.end and build.job_id == event.job_id:
                why = f"job {event.outcome or 'ended'} after layer {event.layer} ({event.source or 'event'})"
                if state is not None and state.state in ACTIVE_STATES:
                    # a printer still finishing its last moves, or a forged end: the build ends when the printer
                    # stops (the watcher sees it); one that prints on past _END_HOLD_S was not done
                    if build.end_held is None:
                        build.end_held = (time.monotonic(), why)
                        pm.emit_event(
                            "info",
                            "end_event_held",
                            f"an end event for job {event.job_id} came while printer {pm.printer_id} is "
                            f"{state.state.value}: the job ends when the printer stops",
                            max(build.last_layer, 0),
                        )
                    return
                self.job_ended(why)
            elif not event.end and build.job_id != event.job_id and event.job_id not in self.ended_jobs:
                self.other_job(build, event.job_id, event.layer, "layer event")
                self.announced.append(event.job_id)
                self.job_ended(f"a new job {event.job_id} started")

    def quiet(self, build: Build) -> bool:
        """Whether another job may start: the build ended, or had no frame for ``job_switch_quiet_s`` and three
        of its usual layer intervals."""
        wait = self.pm.service.config.monitor.job_switch_quiet_s
        if build.end_reason or wait == 0:
            return True
        typical = float(np.median(build.gaps)) if build.gaps else 0.0
        return time.monotonic() - build.last_seen >= max(wait, 3 * typical)

    def other_job(self, build: Build, job_id: str, layer: int, what: str) -> None:
        """A message of another job while ``build`` is live: refused unless the build is quiet."""
        if self.quiet(build):
            return
        raise self.pm.refusal(
            "other_job_refused",
            f"{what} of job {job_id[:80]!r} (layer {layer}) while build {build.job_id} is live: refused; "
            "another job starts once this one ends or has been quiet for [monitor] job_switch_quiet_s",
            max(build.last_layer, 0),
            f"{what} of job {job_id[:80]!r} while build {build.job_id} is live",
            "job",
        )

    def job_ended(self, why: str) -> None:
        """The job is over: its record closes once no frame has come for ``job_end_grace_s``."""
        pm = self.pm
        with pm.lock:
            if pm.build is not None and not pm.build.end_reason:
                pm.build.end_reason = why
                log.info("%s: %s; closing %s", pm.printer_id, why, pm.build.record.path.name)

    # ---- frames ---------------------------------------------------------------------------------------
    def check_frames(self, wait_s: float = NO_FRAME_S) -> None:
        """A printer that prints layers (its layer events come) while no frame comes for them: said once, as a
        warning event and on the monitor's status, until a frame comes."""
        pm = self.pm
        awaiting = pm.camera.awaiting
        if awaiting is None or pm.camera.said or time.monotonic() - awaiting[2] < wait_s:
            return
        job, layer, _ = awaiting
        pm.camera.said = True
        text = (
            f"printer {pm.printer_id} prints (layer event for layer {layer} of job {job[:80]!r}) but no frame came "
            f"for {wait_s:.0f} s: is its camera running, and may its broker user publish on {pm.link.topics.image}? "
            "(the camera's status says so; layerwatch security check)"
        )
        pm.emit_event("warning", "no_frames", text, layer)
        pm.link.set_problem(text)

    # ---- the printer's own state (the watcher's thread) ----------------------------------------------
    def read_state(self) -> PrinterStatus | None:
        """Ask the printer what it does (a network call for OctoPrint and Moonraker): the watcher's, never a
        layer's. Kept for the layers judged until the next reading."""
        pm = self.pm
        if pm.printer is None:
            return None
        asked = time.monotonic()
        try:
            state: PrinterStatus | None = pm.printer.status()
        except PrinterError as err:
            log.debug("%s: printer status unavailable: %s", pm.printer_id, err)
            state = None
        self._state, self._read_at = state, asked
        return state

    def acted(self, msg: ActionMessage) -> None:
        """A pause, resume or cancel was asked for or carried out: the last reading is stale (read again now).
        A confirmed pause is the printer's own word that it is paused (the backend waits for it): that is the
        reading from then on, until the watcher reads again."""
        now = time.monotonic()
        self._acted_at = now
        self.poll_now.set()
        if msg.action == ActionKind.PAUSE and msg.state == ActionState.CONFIRMED and self._state is not None:
            self._state, self._read_at = dataclasses.replace(self._state, state=PrinterState.PAUSED), now

    def reading(self) -> tuple[PrinterStatus | None, bool, int | None]:
        """What a layer is judged with, in one call: the printer's last state read, whether it is current (a
        reading taken before the last pause, resume or cancel is shown as telemetry but not decided on: the
        controller must not take its own pause for an operator's resume), and the layer the printer itself
        last reported (None where its host reports none)."""
        return self._state, self._read_at >= self._acted_at, self.printer_layer()

    def printer_layer(self) -> int | None:
        """The layer the printer itself last reported (the watcher's reading), where its host reports layers."""
        layer, at = self._reported
        return layer if layer is not None and time.monotonic() - at < _REPORTED_FOR_S else None

    def check_printer(self) -> None:
        """The printer's own state, read by the watcher: published (retained) for the dashboard and the farm
        view; and a printer that printed this build and now is idle, finished, cancelled or failed ended the job."""
        pm = self.pm
        if pm.printer is None:
            return
        state = self.read_state()
        self._say_state(state)
        if pm.build is None or pm.build.end_reason or state is None:
            return
        with pm.lock:
            build = pm.build
            if build is None:
                return
            held = build.end_held
            if state.state in ACTIVE_STATES:
                build.printer_was_active = True
                if held is not None and time.monotonic() - held[0] > _END_HOLD_S:
                    build.end_held = None
                    pm.emit_event(
                        "warning",
                        "end_event_refused",
                        f"an end event for job {build.job_id} came {_END_HOLD_S:.0f} s ago, and printer "
                        f"{pm.printer_id} still prints: the build goes on (the end event was not the printer's)",
                        max(build.last_layer, 0),
                    )
            elif held is not None:
                self.job_ended(held[1])
            elif build.printer_was_active and state.state in _ENDED_STATES:
                self.job_ended(f"printer {state.state.value}")

    def _say_state(self, state: PrinterStatus | None) -> None:
        """``<prefix>/<printer>/status/printer``, retained: on a change of state, job or layer, and once a minute."""
        pm = self.pm
        job = state.job if state is not None else None
        build = pm.build
        layer = job.layer if job is not None and job.layer is not None else None
        live = state is not None and state.state.value in _LIVE_STATES
        self._reported = (layer if live else None, time.monotonic())  # the printer's own word only
        if layer is None and build is not None and build.last_layer >= 0 and not build.end_reason:
            layer = build.last_layer
        msg = PrinterStateMessage(
            printer=pm.printer_id,
            state=state.state.value if state is not None else "unreachable",
            job=(job.name if job is not None else "")[:256],
            layer=layer,
            z_mm=job.z_mm if job is not None and job.z_mm is not None and -5 <= job.z_mm <= 10_000 else None,
            backend=getattr(pm.printer, "name", "") or "",
        )
        key = (msg.state, msg.job, msg.layer)
        said_key, said_at = self._said
        if key == said_key and time.monotonic() - said_at < 60:
            return
        self._said = (key, time.monotonic())
        try:
            pm.link.publish(pm.link.topics.status("printer"), msg.to_json(), retain=True)
        except Exception as err:  # the page shows the record's view meanwhile; the watcher goes on
            log.debug("%s: printer state not published: %s", pm.printer_id, err)
