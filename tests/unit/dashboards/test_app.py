"""The dashboard's words for what the printer does, and the trend of the metric that stopped it."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from dashboards.render import printer_view, trend_figure


def _action(t: float, action: str, state: str, rule: str, layer: int, **detail: Any) -> dict[str, Any]:
    return {
        "time": t, "layer": layer, "request_id": f"r{t}", "action": action, "state": state, "rule": rule,
        "incident": f"job:{rule}:{layer}", "detail": json.dumps(detail),
    }  # fmt: skip


def test_a_confirmed_pause_is_what_the_page_says_with_its_reason_in_words() -> None:
    telemetry = [{"time": 10.0, "layer": 17, "state": "printing", "z_mm": 0.7, "feed_pct": 100.0, "flow_pct": 100.0}]
    reason = "confirmed warping grows by more than 0.2 mm² a layer on 3 consecutive layers (rule warping-grows: ...)"
    actions = [
        _action(10.1, "pause", "requested", "warping-grows", 17, reason=reason),
        _action(10.4, "pause", "confirmed", "warping-grows", 17, reason=reason),
    ]
    text = printer_view(actions, telemetry)
    assert text.startswith("; printer paused by rule warping-grows at layer 17: confirmed warping grows")
    assert "printing" not in text
    # the printer's own later report agrees (paused): still the monitor's words, which say why
    later = [*telemetry, {"time": 15.0, "layer": 18, "state": "paused", "z_mm": 0.7, "feed_pct": 1.0, "flow_pct": 1.0}]
    assert printer_view(actions, later) == text
    # an operator resumes: then the printer's own later report is shown again
    actions.append(_action(20.0, "resume", "confirmed", "operator", 17, operator="ana", reason="looked fine"))
    assert printer_view(actions, telemetry) == "; printer resumed by operator ana at layer 17"
    telemetry.append({"time": 30.0, "layer": 18, "state": "printing", "z_mm": 0.74, "feed_pct": 100.0, "flow_pct": 1.0})
    assert printer_view(actions, telemetry).startswith("; printer printing at layer 18")
    assert printer_view([], []) == ""


def test_the_metric_that_fired_is_plotted_with_its_threshold() -> None:
    names = ["porosity_fraction_part", "spatter_fraction", "warping_confirmed_area_mm2", "pore_max_diameter_mm"]
    m = np.zeros(3, dtype=[(n, "f8") for n in names])
    m["pore_max_diameter_mm"] = [0.1, 0.4, 0.9]
    policy = {"rules": [{"name": "big-pore", "metric": "pore_max_diameter_mm", "above": 0.5, "region": "anywhere"}]}
    fig = trend_figure(np.arange(3), m, policy, 2, [_action(1.0, "pause", "confirmed", "big-pore", 2)])
    traces = {t["name"]: t for t in fig["data"]}
    assert traces["pore_max_diameter_mm (rule big-pore) (mm)"]["y"] == [0.1, 0.4, 0.9]
    assert any(sh.get("y0") == 0.5 for sh in fig["layout"]["shapes"])


def test_a_reader_that_failed_or_whose_record_was_replaced_is_reopened_on_the_next_request(tmp_path: Path) -> None:
    from dashboards.state import DashboardOptions, Records
    from monitor.record import BuildRecord, RecordSpec, recover

    path = tmp_path / "r.h5"
    spec = RecordSpec(
        printer="p", job_id="j", height=8, width=8, dtype="uint8", mm_per_px=0.1, layer_thickness_mm=0.04,
        class_names=("powder", "part", "porosity", "spatter", "warping"), metric_names=("m",),
        part_metric_names=(), config={}, policy={"rules": []}, model={"id": "m"}, software_version="t",
    )  # fmt: skip
    BuildRecord.create(path, spec).close()
    records = Records(DashboardOptions(records=tmp_path))
    first = records.reader(path)
    assert records.reader(path) is first  # kept open and refreshed while it works
    records.drop(path)  # what every callback does after a read error
    second = records.reader(path)
    assert second is not first and second.state == "closed"
    recover(path)  # after a crash the record is rewritten under its name: the reader kept open reads the old file
    third = records.reader(path)
    assert third is not second and third.state == "closed"


def test_only_the_records_the_dashboard_lists_are_ever_opened(tmp_path: Path) -> None:
    """docs/security.md F10: the callbacks opened any path the browser sent (outside --records, system files)."""
    import pytest

    from dashboards.state import DashboardOptions, Records
    from monitor.record import BuildRecord, RecordError, RecordSpec

    spec = RecordSpec(
        printer="p", job_id="j", height=8, width=8, dtype="uint8", mm_per_px=0.1, layer_thickness_mm=0.04,
        class_names=("powder", "part", "porosity", "spatter", "warping"), metric_names=("m",),
        part_metric_names=(), config={}, policy={"rules": []}, model={"id": "m"}, software_version="t",
    )  # fmt: skip
    root, outside = tmp_path / "records", tmp_path / "elsewhere"
    (root / "p").mkdir(parents=True)
    outside.mkdir()
    BuildRecord.create(root / "p" / "ok.h5", spec).close()
    BuildRecord.create(outside / "secret.h5", spec).close()
    (root / "p" / "link.h5").symlink_to(outside / "secret.h5")
    records = Records(DashboardOptions(records=root))
    assert records.reader(root / "p" / "ok.h5").state == "closed"
    for path in [
        outside / "secret.h5",
        root / "p" / ".." / ".." / "elsewhere" / "secret.h5",
        root / "p" / "link.h5",
        Path("/etc/passwd"),
        root / "p" / "missing.h5",
    ]:
        with pytest.raises(RecordError, match="is not a record of this dashboard"):
            records.reader(path)
    assert records.actions(str(outside / "secret.h5")) == []
    # the page names records by the ids the server gave out, never by a path
    ok_id = records.record_id(root / "p" / "ok.h5")
    assert records.resolve(ok_id) == root / "p" / "ok.h5"
    for sent in (str(root / "p" / "ok.h5"), str(outside / "secret.h5"), "0" * 16, "../../etc/passwd"):
        with pytest.raises(RecordError, match="is not a record of this dashboard"):
            records.resolve(sent)
    single = Records(DashboardOptions(record=root / "p" / "ok.h5"))
    with pytest.raises(RecordError):
        single.reader(outside / "secret.h5")


def test_requests_are_authenticated_then_checked_before_dash_parses_them(tmp_path: Path, caplog: Any) -> None:
    """docs/security.md F11: malformed POSTs got 500 and a traceback before authentication."""
    import base64
    import logging

    from dashboards.app import DashboardOptions, close_app, create_app

    secret = "s" * 32
    login = {"Authorization": "Basic " + base64.b64encode(f"ana:{secret}".encode()).decode()}
    wrong = {"Authorization": "Basic " + base64.b64encode(b"ana:guess").decode()}
    bodies = [b"{", b"[]", b'{"output": 1}', b"\xff\xfe", b'{"output": "a.b", "inputs": "x"}', b"{}"]
    guarded = create_app(DashboardOptions(records=tmp_path, operators={"ana": secret}))
    readonly = create_app(DashboardOptions(records=tmp_path))
    url = "/_dash-update-component"
    with caplog.at_level(logging.INFO):
        for body in bodies:
            for headers in ({}, wrong):
                answer = guarded.server.test_client().post(url, data=body, headers=headers)
                assert answer.status_code == 401, body
            assert guarded.server.test_client().post(url, data=body, headers=login).status_code == 400, body
            assert readonly.server.test_client().post(url, data=body).status_code == 400, body
        assert guarded.server.test_client().get("/_dash-layout").status_code == 401
        assert guarded.server.test_client().get("/_dash-layout", headers=login).status_code == 200
        huge = readonly.server.test_client().post(url, data=b"[" * (2 << 20), content_type="application/json")
        assert huge.status_code == 413
    assert "Traceback" not in caplog.text and not [r for r in caplog.records if r.levelno >= logging.ERROR]
    close_app(guarded)
    close_app(readonly)


def test_the_farm_says_which_worker_judges_a_printer_and_which_services_are_down() -> None:
    from dashboards.state import ServiceStatus
    from printer_io.messages import StatusMessage
    from printer_io.mqtt import MqttConfig

    status = ServiceStatus(MqttConfig(url="mqtt://127.0.0.1:1"))  # not started: statuses are fed by hand

    def say(printer: str, service: str, state: str, worker: str = "", at: float | None = None) -> None:
        msg = StatusMessage(service=service, client_id="c", state=state, worker=worker)  # type: ignore[arg-type]
        if at is not None:
            msg = msg.model_copy(update={"time": at})
        status._on_status(f"layerwatch/{printer}/status/{service}", msg.to_json())

    say("p1", "monitor", "online", "judge-a")
    say("p2", "monitor", "online")
    assert status.describe("p1") == "; judged by worker judge-a" and status.describe("p2") == ""
    connected = time.time() - 7200  # a last will is dated when its connection was made, hours before it fired
    say("p1", "camera", "offline", at=connected)  # found offline (retained): dated by its message
    stamp = time.strftime("%H:%M:%S", time.localtime(connected))
    assert status.describe("p1") == f"; camera offline (its last status is of {stamp})"  # what is down comes first
    say("p1", "camera", "online")
    say("p1", "monitor", "offline", "judge-a", at=connected)  # seen dying: its worker no longer judges it
    down = status.describe("p1")
    assert down.startswith("; monitor offline since") and stamp not in down  # when it went, not when it connected
    say("p1", "monitor", "online")
    refused = StatusMessage(service="camera", client_id="c", state="degraded", problem="refused on layerwatch/p1/image")
    status._on_status("layerwatch/p1/status/camera", refused.to_json())
    assert status.describe("p1") == "; camera degraded: refused on layerwatch/p1/image"


def test_the_printer_s_own_state_is_shown_with_its_age() -> None:
    from dashboards.state import ServiceStatus, printer_state_text
    from printer_io.messages import PrinterStateMessage
    from printer_io.mqtt import MqttConfig

    status = ServiceStatus(MqttConfig(url="mqtt://127.0.0.1:1"))
    assert printer_state_text(status.printer_state("p1")) == ""
    said = PrinterStateMessage(printer="p1", state="paused", layer=12, backend="octoprint", time=1000.0)
    status._on_status("layerwatch/p1/status/printer", said.to_json())
    assert (
        printer_state_text(status.printer_state("p1"), now=1003.0) == "printer paused at layer 12 (octoprint, 3 s ago)"
    )
    idle = said.model_copy(update={"state": "idle"})
    assert printer_state_text(idle, now=1003.0) == "printer idle (octoprint, 3 s ago)"
