"""The embedded virtual printer: state machine, layer timing, G-code effects."""

from __future__ import annotations

import threading
import time

import pytest

from printer_io.errors import ConfigError, PrinterCommandRefused
from printer_io.printer import PrinterState, create_printer
from printer_io.virtual import LayerDone, VirtualPrinter


def _printer(**kw: object) -> VirtualPrinter:
    options: dict[str, object] = {"layers": 5, "layer_time_s": 1.0, "realtime": False, "pause_delay_s": 0.3}
    options.update(kw)
    return VirtualPrinter("v", **options).start()  # type: ignore[arg-type]


def test_layers_complete_on_time_and_the_job_finishes() -> None:
    p = _printer()
    seen: list[LayerDone] = []
    p.add_layer_listener(seen.append)
    job = p.start_job("cube")
    assert p.advance(0.99) == []
    done = p.advance(0.02)
    assert [(d.layer, d.z_mm, d.job_id) for d in done] == [(0, 0.2, job)]
    p.advance(10)
    assert [d.layer for d in seen] == [0, 1, 2, 3, 4]
    assert [d.z_mm for d in seen] == [0.2, 0.4, 0.6, 0.8, 1.0]
    assert p.status().state == PrinterState.FINISHED


def test_m220_changes_layer_time_and_m221_the_flow() -> None:
    p = _printer()
    p.start_job()
    p.send_gcode(["M220 S200 ; twice as fast", "M221 S95"])
    assert len(p.advance(1.0)) == 2
    st = p.status()
    assert st.feed_pct == 200 and st.flow_pct == 95
    assert [g.effect for g in p.gcode_log] == ["feed 200 %", "flow 95 %"]
    p.send_gcode(["M220 S0"])
    assert p.gcode_log[-1].effect.startswith("ignored")


def test_pause_goes_through_pausing_and_stops_layers() -> None:
    p = _printer()
    p.start_job()
    p.advance(0.5)
    p.send_gcode(["M25"])
    assert p.status().state == PrinterState.PAUSING
    p.advance(0.31)
    assert p.status().state == PrinterState.PAUSED
    assert p.advance(5.0) == []  # nothing prints while paused
    p.send_gcode(["M25"])  # a repeated pause never resumes
    assert p.status().state == PrinterState.PAUSED
    p.resume()
    assert p.status().state == PrinterState.PRINTING
    assert len(p.advance(0.51)) == 1


def test_pause_returns_a_confirmed_outcome() -> None:
    p = _printer()
    p.start_job()
    outcome = p.pause()
    assert outcome.paused_s == pytest.approx(0.3) and p.status().state == PrinterState.PAUSED


def test_realtime_pause_is_confirmed_by_polling() -> None:
    with VirtualPrinter("rt", layers=100, layer_time_s=0.5, pause_delay_s=0.1) as p:
        p.start_job()
        outcome = p.pause(timeout_s=5)
        assert outcome.acknowledged_s is not None and outcome.acknowledged_s <= outcome.paused_s
        assert outcome.paused_s >= 0.09
        assert p.status().state == PrinterState.PAUSED


def test_a_held_printer_waits_but_still_pauses() -> None:
    held = threading.Event()
    held.set()
    with VirtualPrinter("rt", layers=100, layer_time_s=0.05, pause_delay_s=0.05) as p:
        p.hold = held.is_set
        p.start_job()
        time.sleep(0.4)  # eight layers' time
        status = p.status()
        assert status.job is not None and status.job.layer == 0 and status.state == PrinterState.PRINTING
        held.clear()
        deadline = time.monotonic() + 5
        while p.status().job.layer < 3 and time.monotonic() < deadline:  # type: ignore[union-attr]
            time.sleep(0.01)
        assert p.status().job.layer >= 3  # type: ignore[union-attr]
        held.set()
        outcome = p.pause(timeout_s=5)  # a pause completes while the printer is held
        assert outcome.paused_s is not None and p.status().state == PrinterState.PAUSED


def test_commands_the_state_does_not_allow_are_refused() -> None:
    p = _printer()
    with pytest.raises(PrinterCommandRefused, match="cannot pause while idle"):
        p.pause()
    with pytest.raises(PrinterCommandRefused, match="nothing to cancel"):
        p.cancel()
    p.start_job()
    with pytest.raises(PrinterCommandRefused, match="already printing"):
        p.start_job()
    p.cancel()
    assert p.status().state == PrinterState.CANCELLED
    with pytest.raises(PrinterCommandRefused, match="cannot resume"):
        p.resume()


def test_exclude_object_knows_the_objects() -> None:
    p = _printer(objects=("bracket", "gear"))
    p.start_job()
    p.exclude_object("gear")
    assert p.excluded == ["gear"]
    with pytest.raises(PrinterCommandRefused, match="no object 'nut'; known: bracket, gear"):
        p.exclude_object("nut")


def test_registry_builds_backends_by_name_and_lists_valid_names() -> None:
    assert isinstance(create_printer("virtual", layers=3), VirtualPrinter)
    with pytest.raises(ConfigError, match="valid: dry-run, moonraker, octoprint, virtual"):
        create_printer("prusalink")
    with pytest.raises(ConfigError, match="layers >= 1"):
        VirtualPrinter(layers=0)


def test_dry_run_only_logs() -> None:
    p = create_printer("dry-run").start()
    p.pause()
    p.send_gcode(["M220 S90"])
    assert p.actions == ["pause", "send G-code M220 S90"]


def test_the_end_of_a_job_is_announced_once() -> None:
    from printer_io.virtual import VirtualPrinter

    ends: list[tuple[str, int, float, str]] = []
    p = VirtualPrinter("v", layers=3, layer_time_s=1.0, realtime=False)
    p.add_end_listener(lambda *a: ends.append(a))
    job = p.start_job("a")
    p.advance(10.0)
    p.advance(10.0)
    assert ends == [(job, 2, p._z(2), "done")]
    job2 = p.start_job("b")
    p.advance(1.5)
    p.cancel()
    assert ends[-1] == (job2, 0, p._z(0), "cancelled") and len(ends) == 2
