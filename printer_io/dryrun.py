"""The dry-run backend: logs what it would do and does nothing. For trying a policy on a live printer safely."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from printer_io.printer import Backend, BackendOptions, PauseOutcome, PrinterState, PrinterStatus

__all__ = ["DryRunPrinter"]

log = logging.getLogger(__name__)


class DryRunPrinter:
    supports_exclude_object = True

    def __init__(self, name: str = "dry-run") -> None:
        self.name = name
        self.actions: list[str] = []

    def start(self) -> DryRunPrinter:
        return self

    def close(self) -> None:
        pass

    def _would(self, what: str) -> None:
        self.actions.append(what)
        log.warning("%s: dry run, would %s", self.name, what)

    def status(self) -> PrinterStatus:
        return PrinterStatus(PrinterState.PRINTING, message="dry run: the real printer is not asked")

    def pause(self, timeout_s: float = 30.0) -> PauseOutcome:
        self._would("pause")
        return PauseOutcome(acknowledged_s=0.0, paused_s=0.0, attempts=1)

    def resume(self) -> None:
        self._would("resume")

    def cancel(self) -> None:
        self._would("cancel")

    def send_gcode(self, lines: Sequence[str]) -> None:
        self._would("send G-code " + " | ".join(lines))

    def exclude_object(self, name: str) -> None:
        self._would(f"exclude object {name}")


class DryRunOptions(BackendOptions):
    pass


BACKEND = Backend(
    "dry-run", "logs what it would do and does nothing", DryRunOptions, lambda pid, _o: DryRunPrinter(pid), acts=False
)
