"""Layer triggers against real servers: OctoPrint's push API (markers and Z-hops) and Moonraker's websocket."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
from gcode import make_gcode
from peers import Moonraker, OctoPrint

from printer_io.layers import LayerChange
from printer_io.moonraker import MoonrakerPrinter, MoonrakerTrigger
from printer_io.octoprint import OctoPrintPrinter, OctoPrintTrigger
from printer_io.printer import PrinterState

pytestmark = pytest.mark.integration


class Changes:
    def __init__(self) -> None:
        self.items: list[tuple[str, LayerChange]] = []
        self.cond = threading.Condition()

    def __call__(self, job_id: str, change: LayerChange) -> None:
        with self.cond:
            self.items.append((job_id, change))
            self.cond.notify_all()

    def wait(self, n: int, timeout: float = 30) -> list[tuple[str, LayerChange]]:
        with self.cond:
            self.cond.wait_for(lambda: len(self.items) >= n, timeout)
            return list(self.items)


@pytest.fixture
def octo(octoprint: OctoPrint) -> Iterator[OctoPrintPrinter]:
    p = OctoPrintPrinter("octoprint", url=octoprint.url, api_key=octoprint.api_key, connect_port="VIRTUAL").start()
    end = time.monotonic() + 20
    while p.state() != PrinterState.IDLE and time.monotonic() < end:
        time.sleep(0.1)
    yield p
    if p.state() in (PrinterState.PRINTING, PrinterState.PAUSED):
        p.cancel()
    p.close()


@pytest.mark.parametrize("markers", ["cura", "prusa", None])
def test_octoprint_push_reports_every_layer_once_in_order(octo: OctoPrintPrinter, markers: str | None) -> None:
    changes = Changes()
    assert octo.client is not None
    trigger = OctoPrintTrigger(octo.client, changes).start()
    try:
        assert trigger.connected.wait(10)
        octo.client.upload(f"trigger-{markers}.gcode", make_gcode(6, markers=markers), select=True, print_=True)
        got = changes.wait(6)
        time.sleep(1.0)  # nothing more may come after the job ended
        got = changes.items
    finally:
        trigger.close()
    assert trigger.mode == ("markers" if markers else "z")
    assert [c.layer for _, c in got] == [0, 1, 2, 3, 4, 5]
    assert [c.z_mm for _, c in got] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0, 1.2])
    assert len({job for job, _ in got}) == 1 and got[0][0].startswith(f"trigger-{markers}.gcode-")


def test_moonraker_websocket_reports_layers_from_print_stats(moonraker: Moonraker) -> None:
    changes = Changes()
    trigger = MoonrakerTrigger(moonraker.url, changes).start()
    printer = MoonrakerPrinter("moonraker", url=moonraker.url).start()
    try:
        assert trigger.connected.wait(10)
        printer.send_gcode(['SDCARD_PRINT_FILE FILENAME="ws.gcode"'])
        got = changes.wait(4, timeout=20)
    finally:
        printer.cancel()
        printer.close()
        trigger.close()
    layers = [c.layer for _, c in got]
    assert layers[:4] == [0, 1, 2, 3]
    assert got[0][0].startswith("ws.gcode-")
    zs = [c.z_mm for _, c in got[:4]]
    assert zs == sorted(zs) and zs[0] > 0
