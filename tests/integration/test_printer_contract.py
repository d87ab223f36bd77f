"""One contract, every backend of the registry: virtual, OctoPrint (real server), Moonraker (real server,
Klippy stand-in).

Each backend's fixture gives the printer, a way to start a job on it, and a way to look at what the
printer itself received (to check that G-code reached it, not just that the call returned).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
from gcode import make_gcode
from peers import Moonraker, OctoPrint, free_port

from printer_io.errors import PrinterAuthError, PrinterError, PrinterUnreachable, UnsupportedOperation
from printer_io.moonraker import MoonrakerPrinter
from printer_io.octoprint import OctoPrintPrinter
from printer_io.printer import Printer, PrinterState, backends
from printer_io.virtual import VirtualPrinter

pytestmark = pytest.mark.integration


@dataclass
class Rig:
    printer: Printer
    start_job: Callable[[], None]
    received: Callable[[], str]  # everything the printer got, as text


def _wait_state(printer: Printer, states: set[PrinterState], timeout: float = 20) -> PrinterState:
    end = time.monotonic() + timeout
    state = printer.status().state
    while state not in states and time.monotonic() < end:
        time.sleep(0.05)
        state = printer.status().state
    return state


@pytest.fixture
def virtual_rig() -> Iterator[Rig]:
    with VirtualPrinter("virtual", layers=400, layer_time_s=0.25, pause_delay_s=0.2) as p:
        yield Rig(p, lambda: p.start_job("contract"), lambda: "\n".join(g.line for g in p.gcode_log))


@pytest.fixture
def octoprint_rig(octoprint: OctoPrint) -> Iterator[Rig]:
    p = OctoPrintPrinter("octoprint", url=octoprint.url, api_key=octoprint.api_key, connect_port="VIRTUAL").start()
    assert _wait_state(p, {PrinterState.IDLE}) == PrinterState.IDLE

    def start() -> None:
        assert p.client is not None
        p.client.upload("contract.gcode", make_gcode(200), select=True, print_=True)
        assert _wait_state(p, {PrinterState.PRINTING}) == PrinterState.PRINTING

    yield Rig(p, start, lambda: octoprint.serial_log.read_text())
    if p.status().state in (PrinterState.PRINTING, PrinterState.PAUSED, PrinterState.PAUSING):
        p.cancel()
    _wait_state(p, {PrinterState.IDLE})
    p.close()


@pytest.fixture
def moonraker_rig(moonraker: Moonraker) -> Iterator[Rig]:
    p = MoonrakerPrinter("moonraker", url=moonraker.url).start()

    def start() -> None:
        p.send_gcode(['SDCARD_PRINT_FILE FILENAME="contract.gcode"'])
        assert _wait_state(p, {PrinterState.PRINTING}) == PrinterState.PRINTING

    yield Rig(p, start, lambda: "\n".join(moonraker.klippy.scripts))
    if p.status().state in (PrinterState.PRINTING, PrinterState.PAUSED):
        p.cancel()
    p.close()


# every registered backend that moves a printer is held to the contract: a new backend needs a
# ``<name>_rig`` fixture here (its real peer), or this test fails naming the missing fixture
CONTRACT_BACKENDS = sorted(name for name, b in backends().items() if b.acts)


def test_every_backend_that_acts_is_under_contract() -> None:
    assert {"virtual", "octoprint", "moonraker"} <= set(CONTRACT_BACKENDS)


@pytest.fixture(params=CONTRACT_BACKENDS)
def rig(request: pytest.FixtureRequest) -> Rig:
    return request.getfixturevalue(f"{request.param.replace('-', '_')}_rig")  # type: ignore[no-any-return]


class TestPrinterContract:
    def test_pause_is_confirmed_then_resume_prints_again(self, rig: Rig) -> None:
        rig.start_job()
        outcome = rig.printer.pause(timeout_s=20)
        assert rig.printer.status().state == PrinterState.PAUSED
        assert outcome.paused_s > 0 and outcome.attempts == 1
        if outcome.acknowledged_s is not None:
            assert outcome.acknowledged_s <= outcome.paused_s
        rig.printer.pause(timeout_s=20)  # pausing again keeps it paused (never toggles)
        assert rig.printer.status().state == PrinterState.PAUSED
        rig.printer.resume()
        assert _wait_state(rig.printer, {PrinterState.PRINTING}) == PrinterState.PRINTING

    def test_gcode_reaches_the_printer(self, rig: Rig) -> None:
        rig.start_job()
        rig.printer.send_gcode(["M220 S80", "M221 S95"])
        end = time.monotonic() + 10
        while not ("M220 S80" in rig.received() and "M221 S95" in rig.received()) and time.monotonic() < end:
            time.sleep(0.05)
        assert "M220 S80" in rig.received() and "M221 S95" in rig.received()

    def test_cancel_ends_the_job(self, rig: Rig) -> None:
        rig.start_job()
        rig.printer.cancel()
        state = _wait_state(rig.printer, {PrinterState.CANCELLED, PrinterState.IDLE})
        assert state in (PrinterState.CANCELLED, PrinterState.IDLE)
        with pytest.raises(PrinterError):
            rig.printer.pause(timeout_s=2)  # nothing to pause any more

    def test_exclude_object_where_the_firmware_supports_it(self, rig: Rig) -> None:
        rig.start_job()
        if rig.printer.supports_exclude_object:
            rig.printer.exclude_object("part_1")
            assert "EXCLUDE_OBJECT" in rig.received()
        else:
            with pytest.raises(UnsupportedOperation, match="exclude"):
                rig.printer.exclude_object("part_1")


@pytest.mark.parametrize("backend", [OctoPrintPrinter, MoonrakerPrinter])
def test_an_unreachable_printer_is_a_typed_error_without_hanging(backend: type) -> None:
    t0 = time.monotonic()
    with pytest.raises(PrinterUnreachable, match="unreachable"):
        backend("p", url=f"http://127.0.0.1:{free_port()}", api_key="k", timeout_s=2).start()
    assert time.monotonic() - t0 < 5


def test_octoprint_rejects_a_wrong_api_key_with_a_line_that_says_what_to_fix(octoprint: OctoPrint) -> None:
    with pytest.raises(PrinterAuthError, match=r"rejected the API key .*LAYERWATCH_OCTOPRINT_API_KEY"):
        OctoPrintPrinter("p", url=octoprint.url, api_key="0" * 32).start()


def test_a_user_with_only_status_and_print_can_pause_resume_and_cancel(octoprint: OctoPrint) -> None:
    admin = OctoPrintPrinter("admin", url=octoprint.url, api_key=octoprint.api_key, connect_port="VIRTUAL").start()
    limited = OctoPrintPrinter("limited", url=octoprint.url, api_key=octoprint.limited_api_key).start()
    try:
        assert _wait_state(admin, {PrinterState.IDLE}) == PrinterState.IDLE
        assert admin.client is not None
        admin.client.upload("limited.gcode", make_gcode(200), select=True, print_=True)
        assert _wait_state(limited, {PrinterState.PRINTING}) == PrinterState.PRINTING
        limited.pause(timeout_s=20)
        assert limited.status().state == PrinterState.PAUSED
        limited.resume()
        assert _wait_state(limited, {PrinterState.PRINTING}) == PrinterState.PRINTING
        with pytest.raises(PrinterAuthError, match=r"lacks the CONTROL permission .*M220/M221"):
            limited.send_gcode(["M220 S90"])  # feed/flow changes need CONTROL as well
        assert limited.missing_permissions == ["CONTROL", "FILES_DOWNLOAD"]  # said at start, once each
        limited.cancel()
        assert _wait_state(admin, {PrinterState.IDLE}) == PrinterState.IDLE
    finally:
        admin.close()
        limited.close()
