"""The embedded virtual printer: the demo and replay run on it, and it makes every test possible without hardware.

Same state machine as a real printer (idle, printing, pausing, paused, cancelled, finished), layer timing
(``layer_time_s`` per layer at 100 % feed), G-code effects (M220 feed and M221 flow overrides, M117
message, M25/M24 and PAUSE/RESUME, CANCEL_PRINT/M524, EXCLUDE_OBJECT), and a G-code log to inspect.

Time: with ``realtime=True`` a thread advances the printer with the wall clock; with ``realtime=False``
nothing moves until :meth:`advance` is called (deterministic, for replay and tests).
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from pydantic import Field

from printer_io.errors import ConfigError, PrinterCommandRefused
from printer_io.layers import LayerChange
from printer_io.printer import (
    ACTIVE_STATES,
    Backend,
    BackendOptions,
    JobInfo,
    LayerSink,
    PauseOutcome,
    Printer,
    PrinterState,
    PrinterStatus,
    confirm_pause,
)

__all__ = ["GcodeLine", "LayerDone", "VirtualPrinter"]

log = logging.getLogger(__name__)

_WORD = re.compile(r"([A-Z])\s*(-?\d+(?:\.\d+)?)")
_PARAM = re.compile(r"([A-Z_]+)=(\"[^\"]*\"|\S+)")


@dataclass(frozen=True)
class LayerDone:
    """Layer ``layer`` (from 0) of ``job_id`` finished at ``z_mm``; ``time`` in unix seconds."""

    job_id: str
    layer: int
    z_mm: float
    time: float


@dataclass(frozen=True)
class GcodeLine:
    time: float
    line: str
    effect: str


class VirtualPrinter:
    """A simulated printer. Thread-safe; every public method may be called from any thread."""

    supports_exclude_object = True

    def __init__(
        self,
        name: str = "virtual",
        *,
        layers: int = 40,
        layer_time_s: float = 2.0,
        layer_height_mm: float = 0.2,
        first_layer_z_mm: float | None = None,
        pause_delay_s: float = 0.3,
        objects: Sequence[str] = ("part_1", "part_2"),
        realtime: bool = True,
        autostart_job: str | None = None,
    ) -> None:
        if layers < 1 or layer_time_s <= 0 or layer_height_mm <= 0 or pause_delay_s < 0:
            raise ConfigError(
                "virtual printer: needs layers >= 1, layer_time_s > 0, layer_height_mm > 0, pause_delay_s >= 0"
            )
        self.name = name
        self.layers = layers
        self.layer_time_s = layer_time_s
        self.layer_height_mm = layer_height_mm
        self.first_layer_z_mm = first_layer_z_mm if first_layer_z_mm is not None else layer_height_mm
        self.pause_delay_s = pause_delay_s
        self.objects = list(objects)
        self.realtime = realtime
        self.autostart_job = autostart_job
        self.gcode_log: deque[GcodeLine] = deque(maxlen=5000)
        self.excluded: list[str] = []
        self.message = ""
        self._listeners: list[Callable[[LayerDone], None]] = []
        self._end_listeners: list[Callable[[str, int, float, str], None]] = []
        self._lock = threading.RLock()
        self._state = PrinterState.IDLE
        self._job: str | None = None
        self._job_id = ""
        self._layer = 0
        self._layer_progress = 0.0
        self._pause_left = 0.0
        self._feed = 100.0
        self._flow = 100.0
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._epoch = time.time()
        self._vtime = 0.0
        #: While this returns True, a printing job's clock stands still (a pause still completes):
        #: ``layerwatch demo`` keeps its printer in step with a monitor that a busy machine slows down.
        self.hold: Callable[[], bool] | None = None

    # ---- lifecycle --------------------------------------------------------------------------------
    def start(self) -> VirtualPrinter:
        if self.autostart_job:
            self.start_job(self.autostart_job)
        if self.realtime and self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name=f"virtual-{self.name}", daemon=True)
            self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> VirtualPrinter:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def add_layer_listener(self, callback: Callable[[LayerDone], None]) -> None:
        """``callback(LayerDone)`` runs on the printer's thread when a layer completes: keep it short."""
        self._listeners.append(callback)

    def report_to(self, sink: LayerSink) -> None:
        """Report every finished layer and the job's end to ``sink`` (the bridge)."""
        self.add_layer_listener(lambda done: sink.on_change(done.job_id, LayerChange(done.layer, done.z_mm)))
        self.add_end_listener(sink.on_end)

    def add_end_listener(self, callback: Callable[[str, int, float, str], None]) -> None:
        """``callback(job_id, last layer, z_mm, outcome)`` when a job is done or cancelled."""
        self._end_listeners.append(callback)

    def _announce_end(self, job_id: str, layer: int, outcome: str) -> None:
        for callback in self._end_listeners:
            try:
                callback(job_id, layer, self._z(max(layer, 0)), outcome)
            except Exception:
                log.exception("%s: end listener failed", self.name)

    # ---- jobs and time ----------------------------------------------------------------------------
    def start_job(self, name: str = "virtual-job", layers: int | None = None) -> str:
        """Start printing; returns the job id."""
        with self._lock:
            if self._state in ACTIVE_STATES:
                raise PrinterCommandRefused(f"{self.name}: already {self._state.value}; cancel the job first")
            self._job = name
            self._job_id = f"{name}-{int(self._now())}"
            if layers is not None:
                self.layers = layers
            self._layer = 0
            self._layer_progress = 0.0
            self._feed = self._flow = 100.0
            self.excluded = []
            self._state = PrinterState.PRINTING
            log.info("%s: printing %s (%d layers)", self.name, self._job_id, self.layers)
            return self._job_id

    def advance(self, dt: float) -> list[LayerDone]:
        """Move time on by ``dt`` seconds; returns (and announces) the layers completed meanwhile."""
        done: list[LayerDone] = []
        with self._lock:
            self._vtime += dt
            left = dt
            while left > 1e-12:
                if self._state == PrinterState.PAUSING:
                    step = min(left, self._pause_left)
                    self._pause_left -= step
                    left -= step
                    if self._pause_left <= 1e-12:
                        self._state = PrinterState.PAUSED
                        log.info("%s: paused at layer %d", self.name, self._layer)
                    continue
                if self._state != PrinterState.PRINTING:
                    break
                speed = self._feed / 100.0
                need = (1.0 - self._layer_progress) * self.layer_time_s / speed
                if left < need:
                    self._layer_progress += left * speed / self.layer_time_s
                    break
                left -= need
                done.append(LayerDone(self._job_id, self._layer, self._z(self._layer), self._now()))
                self._layer += 1
                self._layer_progress = 0.0
                if self._layer >= self.layers:
                    self._state = PrinterState.FINISHED
                    log.info("%s: finished %s", self.name, self._job_id)
                    break
            finished = bool(done) and self._state == PrinterState.FINISHED
        for event in done:
            for callback in self._listeners:
                try:
                    callback(event)
                except Exception:
                    log.exception("%s: layer listener failed", self.name)
        if finished:
            self._announce_end(done[-1].job_id, done[-1].layer, "done")
        return done

    def _run(self) -> None:
        last = time.monotonic()
        while not self._stop.wait(0.01):
            now = time.monotonic()
            if self.hold is not None and self._state == PrinterState.PRINTING and self.hold():
                last = now
                continue
            self.advance(now - last)
            last = now

    def _now(self) -> float:
        return self._epoch + self._vtime if not self.realtime else time.time()

    def _z(self, layer: int) -> float:
        return round(self.first_layer_z_mm + layer * self.layer_height_mm, 4)

    # ---- Printer interface ------------------------------------------------------------------------
    def status(self) -> PrinterStatus:
        with self._lock:
            job = None
            if self._job is not None:
                job = JobInfo(
                    name=self._job,
                    progress=min(1.0, (self._layer + self._layer_progress) / self.layers),
                    layer=min(self._layer, self.layers - 1),
                    layer_count=self.layers,
                    z_mm=self._z(min(self._layer, self.layers - 1)),
                )
            return PrinterStatus(self._state, job, self._feed, self._flow, self.message)

    @property
    def job_id(self) -> str:
        return self._job_id

    def pause(self, timeout_s: float = 30.0) -> PauseOutcome:
        if not self.realtime:
            self._request_pause()
            self.advance(self.pause_delay_s)
            return PauseOutcome(acknowledged_s=0.0, paused_s=self.pause_delay_s, attempts=1)
        return confirm_pause(self._request_pause, lambda: self.status().state, timeout_s=timeout_s, printer=self.name)

    def _request_pause(self) -> None:
        with self._lock:
            if self._state in (PrinterState.PAUSING, PrinterState.PAUSED):
                return  # idempotent: a retried pause never resumes
            if self._state != PrinterState.PRINTING:
                raise PrinterCommandRefused(f"{self.name}: cannot pause while {self._state.value}")
            self._state = PrinterState.PAUSING
            self._pause_left = self.pause_delay_s
            if self.pause_delay_s == 0:
                self._state = PrinterState.PAUSED

    def resume(self) -> None:
        with self._lock:
            if self._state not in (PrinterState.PAUSED, PrinterState.PAUSING):
                raise PrinterCommandRefused(f"{self.name}: cannot resume while {self._state.value}")
            self._state = PrinterState.PRINTING
            log.info("%s: resumed at layer %d", self.name, self._layer)

    def cancel(self) -> None:
        with self._lock:
            if self._state not in ACTIVE_STATES:
                raise PrinterCommandRefused(f"{self.name}: nothing to cancel while {self._state.value}")
            self._state = PrinterState.CANCELLED
            log.info("%s: cancelled %s at layer %d", self.name, self._job_id, self._layer)
            job, layer = self._job_id, self._layer - 1
        self._announce_end(job, layer, "cancelled")

    def exclude_object(self, name: str) -> None:
        self.send_gcode([f"EXCLUDE_OBJECT NAME={name}"])

    def send_gcode(self, lines: Sequence[str]) -> None:
        for raw in lines:
            line = raw.split(";", 1)[0].strip()
            if not line:
                continue
            effect = self._apply(line)
            with self._lock:
                self.gcode_log.append(GcodeLine(self._now(), line, effect))
            log.info("%s: G-code %s -> %s", self.name, line, effect)

    def _apply(self, line: str) -> str:
        head, _, rest = line.partition(" ")
        cmd = head.upper()
        words = dict((k, float(v)) for k, v in _WORD.findall(rest.upper()))
        if cmd in ("M220", "M221"):
            if "S" not in words or not 1 <= words["S"] <= 500:
                return "ignored: needs S1..S500"
            with self._lock:
                if cmd == "M220":
                    self._feed = words["S"]
                    return f"feed {self._feed:g} %"
                self._flow = words["S"]
                return f"flow {self._flow:g} %"
        if cmd == "M117":
            self.message = rest
            return "message"
        if cmd in ("M25", "M601", "PAUSE"):
            self._request_pause()
            return "pause"
        if cmd in ("M24", "M602", "RESUME"):
            self.resume()
            return "resume"
        if cmd in ("M524", "CANCEL_PRINT"):
            self.cancel()
            return "cancel"
        if cmd == "EXCLUDE_OBJECT":
            params = {k: v.strip('"') for k, v in _PARAM.findall(rest)}
            name = params.get("NAME")
            if name is None:
                return f"objects {self.objects}, excluded {self.excluded}"
            if name not in self.objects:
                raise PrinterCommandRefused(f"{self.name}: no object {name!r}; known: {', '.join(self.objects)}")
            with self._lock:
                if name not in self.excluded:
                    self.excluded.append(name)
            return f"excluded {name}"
        return "ok"


class VirtualOptions(BackendOptions):
    layers: int = Field(default=40, ge=1, le=1_000_000, description="layers of the job")
    layer_time_s: float = Field(default=2.0, gt=0, le=3600, description="seconds a layer")
    job: str = Field(default="virtual-job", min_length=1, max_length=128, description="the job the bridge prints")


def _create(printer_id: str, o: VirtualOptions) -> VirtualPrinter:
    return VirtualPrinter(printer_id, layers=o.layers, layer_time_s=o.layer_time_s)


def _trigger(printer: Printer, o: VirtualOptions, sink: LayerSink) -> Callable[[], None]:
    assert isinstance(printer, VirtualPrinter)
    printer.report_to(sink)
    printer.start_job(o.job)
    return lambda: None


BACKEND = Backend("virtual", "the embedded virtual printer (no hardware)", VirtualOptions, _create, _trigger)
