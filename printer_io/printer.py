"""One interface for every printer backend, and the registry that picks one by name.

Backends: ``virtual`` (embedded simulator), ``octoprint`` (REST API), ``moonraker`` (Klipper), ``dry-run``
(logs what it would do). Every backend reports the same states and confirms a pause the same way:
``pausing`` means the printer acknowledged, ``paused`` means it stopped.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol, runtime_checkable

from printer_io.errors import ConfigError, PauseNotConfirmed, PrinterCommandRefused, PrinterError

__all__ = [
    "PRINTERS",
    "JobInfo",
    "PauseOutcome",
    "Printer",
    "PrinterState",
    "PrinterStatus",
    "confirm_pause",
    "create_printer",
    "register_printer",
]

log = logging.getLogger(__name__)


class PrinterState(StrEnum):
    OFFLINE = "offline"
    IDLE = "idle"
    PRINTING = "printing"
    PAUSING = "pausing"
    PAUSED = "paused"
    RESUMING = "resuming"
    CANCELLING = "cancelling"
    CANCELLED = "cancelled"
    FINISHED = "finished"
    ERROR = "error"


ACTIVE_STATES = frozenset({PrinterState.PRINTING, PrinterState.PAUSING, PrinterState.PAUSED, PrinterState.RESUMING})


@dataclass(frozen=True)
class JobInfo:
    """The job on the printer. ``progress`` 0..1 where known; ``layer`` index from 0; ``z_mm`` height."""

    name: str
    progress: float | None = None
    layer: int | None = None
    layer_count: int | None = None
    z_mm: float | None = None


@dataclass(frozen=True)
class PrinterStatus:
    state: PrinterState
    job: JobInfo | None = None
    feed_pct: float | None = None
    flow_pct: float | None = None
    message: str = ""
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)


@dataclass(frozen=True)
class PauseOutcome:
    """Timings of a confirmed pause, in seconds from the request."""

    acknowledged_s: float | None
    paused_s: float
    attempts: int


@runtime_checkable
class Printer(Protocol):
    """What the controller needs of a printer. Methods raise :class:`PrinterError` subclasses."""

    name: str
    supports_exclude_object: bool

    def start(self) -> Printer: ...
    def close(self) -> None: ...
    def status(self) -> PrinterStatus: ...
    def pause(self, timeout_s: float = 30.0) -> PauseOutcome: ...
    def resume(self) -> None: ...
    def cancel(self) -> None: ...
    def send_gcode(self, lines: Sequence[str]) -> None: ...
    def exclude_object(self, name: str) -> None: ...


PrinterFactory = Callable[..., Printer]
PRINTERS: dict[str, PrinterFactory] = {}


def register_printer(name: str, factory: PrinterFactory) -> None:
    PRINTERS[name] = factory


def create_printer(backend: str, /, **options: Any) -> Printer:
    """Build a backend by name (``options`` go to its constructor); the error lists the valid names."""
    _load_builtin()
    try:
        factory = PRINTERS[backend]
    except KeyError:
        raise ConfigError(f"unknown printer backend {backend!r}; valid: {', '.join(sorted(PRINTERS))}") from None
    return factory(**options)


def _load_builtin() -> None:
    if PRINTERS:
        return
    from printer_io.dryrun import DryRunPrinter
    from printer_io.moonraker import MoonrakerPrinter
    from printer_io.octoprint import OctoPrintPrinter
    from printer_io.virtual import VirtualPrinter

    register_printer("virtual", VirtualPrinter)
    register_printer("octoprint", OctoPrintPrinter)
    register_printer("moonraker", MoonrakerPrinter)
    register_printer("dry-run", DryRunPrinter)


def confirm_pause(
    send: Callable[[], None],
    state: Callable[[], PrinterState],
    *,
    timeout_s: float,
    attempts: int = 2,
    poll_s: float = 0.05,
    on_retry: Callable[[int, str], None] | None = None,
    printer: str = "printer",
) -> PauseOutcome:
    """Send a pause and wait for ``paused``; re-send (idempotent pause only) up to ``attempts`` times.

    ``acknowledged_s``: first time the printer reported ``pausing`` (or ``paused``). Raises
    PauseNotConfirmed naming the last state seen when no attempt is confirmed within ``timeout_s`` each.
    """
    t0 = time.monotonic()
    ack: float | None = None
    last = PrinterState.OFFLINE
    for attempt in range(1, attempts + 1):
        try:
            send()
        except PrinterCommandRefused:
            raise  # a definite "no" (not printing): sending it again changes nothing
        except PrinterError as err:
            if attempt == attempts:
                raise
            if on_retry is not None:
                on_retry(attempt, str(err))
            continue
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            try:
                last = state()
            except PrinterError:
                last = PrinterState.OFFLINE
            now = time.monotonic() - t0
            if last in (PrinterState.PAUSING, PrinterState.PAUSED) and ack is None:
                ack = now
            if last == PrinterState.PAUSED:
                return PauseOutcome(acknowledged_s=ack, paused_s=now, attempts=attempt)
            if last in (PrinterState.IDLE, PrinterState.CANCELLED, PrinterState.FINISHED, PrinterState.ERROR):
                raise PauseNotConfirmed(f"{printer}: pause requested but the printer is {last.value}, not printing")
            time.sleep(poll_s)
        if on_retry is not None and attempt < attempts:
            on_retry(attempt, f"no 'paused' within {timeout_s:g} s (last state {last.value}); sending pause again")
    raise PauseNotConfirmed(
        f"{printer}: pause not confirmed after {attempts} attempt(s) of {timeout_s:g} s; last state {last.value}"
    )
