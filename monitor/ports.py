"""What the parts of the monitor need of each other, as Protocols: the stages (monitor.pipeline), the job watch
(monitor.jobs), operator requests (monitor.requests), the observers (monitor.observers), Home Assistant and the
site workers depend on these, never on monitor.service, which puts them together. No import circle."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from typing import Any, Protocol

from monitor.buildstate import Build, CameraPresence
from monitor.config import Config
from monitor.controller import Controller
from monitor.policy import Policy
from printer_io.bus import Link
from printer_io.credentials import Verifier
from printer_io.messages import ActionMessage
from printer_io.mqtt import MqttConfig
from printer_io.printer import Printer, PrinterStatus

__all__ = ["JobsPort", "MonitorPort", "PrinterPort"]


class MonitorPort(Protocol):
    """The monitor of all printers, as its parts and the site workers see it."""

    config: Config
    printer_ids: list[str]
    monitors: dict[str, Any]  # printer id -> its PrinterPort
    segmenter: Any  # segmentation.inference.Segmenter
    shadow: Any  # the shadow model's Segmenter, or None
    notifier: Any  # monitor.notify.Notifier, or None
    verifier: Verifier
    model_id: str
    model_sha256: str
    shadow_id: str
    shadow_sha256: str

    def printer_mqtt(self, pid: str) -> MqttConfig: ...
    def open_printer(self, pid: str, link: Link | None = None, holder: Any = None) -> Any: ...
    def release_printer(self, pid: str, *, publish_offline: bool = True) -> None: ...


class JobsPort(Protocol):
    """What the layer's path asks of the job watch (monitor.jobs.JobWatch)."""

    trigger_seen: bool
    announced: Any  # deque of job ids the printer's layer events announced
    ended_jobs: set[str]
    event_layers: dict[str, int]

    def other_job(self, build: Build, job_id: str, layer: int, what: str) -> None: ...
    def reading(self) -> tuple[PrinterStatus | None, bool, int | None]: ...


class PrinterPort(Protocol):
    """One printer's monitor (monitor.service.PrinterMonitor), as its parts see it."""

    @property
    def service(self) -> MonitorPort: ...
    @property
    def printer_id(self) -> str: ...
    @property
    def link(self) -> Link: ...
    @property
    def printer(self) -> Printer | None: ...
    @property
    def policy(self) -> Policy: ...
    @property
    def controller(self) -> Controller: ...
    @property
    def lock(self) -> threading.RLock: ...
    @property
    def jobs(self) -> JobsPort: ...
    @property
    def observers(self) -> Any: ...  # monitor.observers.Observers
    @property
    def camera(self) -> CameraPresence: ...

    build: Build | None
    last_record: Any  # Path | None
    counters: Counter[str]

    def emit_event(self, level: str, code: str, message: str, layer: int) -> None: ...
    def refusal(self, code: str, said: str, layer: int, short: str, reason: str) -> Exception: ...
    def close_build(self, state: str = "closed", job_id: str | None = None) -> None: ...
    def publish(self, topic: str, payload: bytes) -> None: ...
    def on_action(self, topic: str, payload: bytes) -> None: ...
    def say_now(self, kind: str) -> int | None: ...


#: a handler of one MQTT message
Handler = Callable[[str, bytes], None]
#: an action a part of the monitor wants recorded and published
ActionSink = Callable[[ActionMessage], None]
