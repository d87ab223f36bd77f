"""One interface for every printer backend, and the registry that picks one by name.

Backends: ``virtual`` (embedded simulator), ``octoprint`` (REST API), ``moonraker`` (Klipper), ``dry-run``
(logs what it would do). Every backend reports the same states and confirms a pause the same way:
``pausing`` means the printer acknowledged, ``paused`` means it stopped.
"""

from __future__ import annotations

import importlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, ValidationError

from printer_io.errors import ConfigError, PauseNotConfirmed, PrinterCommandRefused, PrinterError
from printer_io.layers import LayerChange

__all__ = [
    "BACKEND_MODULES",
    "Backend",
    "BackendOptions",
    "JobInfo",
    "PauseOutcome",
    "Printer",
    "PrinterState",
    "PrinterStatus",
    "backend",
    "backend_options",
    "backends",
    "confirm_pause",
    "create_printer",
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


class BackendOptions(BaseModel):
    """A backend's settings: the keys of its ``[printers.<id>]`` table and its command-line flags."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class LayerSink(Protocol):
    """Where a backend's layer trigger reports (the bridge): a layer done, the job ended."""

    def on_change(self, job_id: str, change: LayerChange) -> None: ...
    def on_end(self, job_id: str, layer: int, z_mm: float, outcome: str) -> None: ...


@dataclass(frozen=True)
class Backend:
    """One printer backend, declared by its module as ``BACKEND``.

    ``create(printer_id, options)`` builds the printer (not started); ``trigger(printer, options, sink)``
    starts reporting its layer changes and returns the function that stops it (None: the backend has no
    layer trigger); ``acts``: it moves a real or simulated printer (the contract test holds it to the
    printer contract), as opposed to only saying what it would do.
    """

    name: str
    summary: str
    options: type[BackendOptions]
    create: Callable[[str, Any], Printer]
    trigger: Callable[[Printer, Any, LayerSink], Callable[[], None]] | None = None
    acts: bool = True


#: The registry: one module a backend, each declaring ``BACKEND``. A new backend is a module and a line here.
BACKEND_MODULES = (
    "printer_io.virtual",
    "printer_io.octoprint",
    "printer_io.moonraker",
    "printer_io.dryrun",
)

_BACKENDS: dict[str, Backend] = {}


def backends() -> dict[str, Backend]:
    """Every registered backend by name (the modules are imported on first use)."""
    if not _BACKENDS:
        for module in BACKEND_MODULES:
            b: Backend = importlib.import_module(module).BACKEND
            _BACKENDS[b.name] = b
    return _BACKENDS


def backend(name: str) -> Backend:
    """The backend called ``name``; the error lists the valid names."""
    try:
        return backends()[name]
    except KeyError:
        raise ConfigError(f"unknown printer backend {name!r}; valid: {', '.join(sorted(backends()))}") from None


def backend_options(name: str, options: Mapping[str, Any]) -> BackendOptions:
    """``options`` validated by the backend's model; the error names the key, the value and what is wrong."""
    b = backend(name)
    try:
        return b.options.model_validate(dict(options))
    except ValidationError as err:
        first = err.errors()[0]
        key = ".".join(str(p) for p in first["loc"]) or "(options)"
        if first["type"] == "extra_forbidden":
            allowed = ", ".join(sorted(b.options.model_fields)) or "none"
            raise ConfigError(f"backend {name!r} has no setting {key!r}; its settings: {allowed}") from None
        message = str(first["msg"]).removeprefix("Value error, ")
        raise ConfigError(f"backend {name!r}: {key} = {first.get('input')!r}: {message}") from None


def create_printer(name: str, /, printer_id: str = "", **options: Any) -> Printer:
    """Build a backend's printer by backend name with its validated ``options`` (not started)."""
    return backend(name).create(printer_id or name, backend_options(name, options))


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
