"""The dashboard in a real headless Chromium (Debian's), driven by Playwright: live view, overlay, controls.

Screenshots of the main views are saved to ``runs/test-artifacts/`` (or ``$LAYERWATCH_ARTIFACTS``).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from peers import REPO, Mosquitto, free_port, launch_chromium

from monitor.config import Config, MonitorSection, PrinterSection
from monitor.record import RecordReader
from monitor.service import MonitorService
from printer_io.frames import QualityChecker, encode_image
from printer_io.messages import FrameMeta, encode_frame
from printer_io.mqtt import MqttConfig, MqttLink
from printer_io.printer import PrinterState
from printer_io.topics import Topics
from printer_io.virtual import VirtualPrinter
from segmentation.simulator import SimBuild, scenario_spec

pytestmark = [pytest.mark.integration, pytest.mark.slow]
ARTIFACTS = Path(os.environ.get("LAYERWATCH_ARTIFACTS", REPO / "runs" / "test-artifacts"))
TOKEN = "operator-token-for-tests"
PID = "dash-p1"


class Server:
    def __init__(self, app: object) -> None:
        from werkzeug.serving import make_server

        self.port = free_port()
        self.httpd = make_server("127.0.0.1", self.port, app.server, threaded=True)  # type: ignore[attr-defined]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def close(self) -> None:
        self.httpd.shutdown()


@pytest.fixture(scope="module")
def rig(broker: Mosquitto, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, object]]:
    tmp = tmp_path_factory.mktemp("dash")
    printer = VirtualPrinter(PID, layers=1000, layer_time_s=5.0).start()
    printer.start_job("dash-job")
    spec = scenario_spec(3, 512, 12, warp_start=4)
    config = Config(
        mqtt=MqttConfig(url=broker.url),
        monitor=MonitorSection(out_dir=tmp / "records", mm_per_px=spec.mm_per_px),
        printers={PID: PrinterSection(backend="virtual")},
    )
    monitor = MonitorService(config, printers={PID: printer}).start()
    camera = MqttLink(MqttConfig(url=broker.url), service="camera", topics=Topics("layerwatch", PID)).start()
    build = SimBuild(3, 512, 512, 12, spec=spec)
    quality = QualityChecker()

    def publish(layer: int) -> None:
        image = build.layer(layer).image
        meta = FrameMeta(
            printer=PID,
            job_id="dash-job",
            layer=layer,
            z_mm=0.04 * (layer + 1),
            captured_at=time.time(),
            encoding="png",
            width=512,
            height=512,
            channels=1,
            bit_depth=8,
            quality=quality.check(image),
        )
        camera.publish(camera.topics.image, encode_frame(meta, encode_image(image)), wait_s=5)

    from dashboards.app import DashboardOptions, create_app

    controlled = Server(create_app(DashboardOptions(records=tmp / "records", broker=broker.url, token=TOKEN)))
    readonly = Server(create_app(DashboardOptions(records=tmp / "records")))
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    yield {
        "publish": publish,
        "printer": printer,
        "controlled": controlled,
        "readonly": readonly,
        "tmp": tmp,
        "monitor": monitor,
    }
    controlled.close()
    readonly.close()
    camera.close()
    monitor.close()
    printer.close()


def _operator_page(p: object, rig: dict[str, object]) -> tuple[object, object]:
    """A browser and a page on the controlled dashboard, logged in with the token."""
    browser = launch_chromium(p)
    page = browser.new_context(  # type: ignore[attr-defined]
        http_credentials={"username": "operator", "password": TOKEN}, viewport={"width": 1400, "height": 1000}
    ).new_page()
    page.goto(rig["controlled"].url)  # type: ignore[attr-defined]
    return browser, page


def _wait_text(page: object, selector: str, text: str, timeout: float = 30.0) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if text in page.inner_text(selector):  # type: ignore[attr-defined]
            return time.monotonic() - t0
        time.sleep(0.1)
    raise AssertionError(f"{selector!r} never showed {text!r}; it shows {page.inner_text(selector)!r}")  # type: ignore[attr-defined]


def test_live_view_overlay_toggle_and_pause_from_the_page(rig: dict[str, object]) -> None:
    from playwright.sync_api import sync_playwright

    publish = rig["publish"]
    for layer in range(3):
        publish(layer)  # type: ignore[operator]
    with sync_playwright() as p:
        browser, page = _operator_page(p, rig)
        _wait_text(page, "#layer-info", "layer 2")
        assert (page.get_attribute("#frame", "src") or "").startswith("data:image/png;base64,")
        publish(3)  # type: ignore[operator]
        shown_after = _wait_text(page, "#layer-info", "layer 3")  # appears live, no reload
        page.wait_for_selector("#trend .main-svg", timeout=15_000)
        page.screenshot(path=str(ARTIFACTS / "dashboard_live.png"), full_page=True)
        before = page.get_attribute("#frame", "src")
        page.get_by_text("part", exact=True).click()  # the class toggle: part off
        t0 = time.monotonic()
        while page.get_attribute("#frame", "src") == before and time.monotonic() - t0 < 10:
            time.sleep(0.1)
        assert page.get_attribute("#frame", "src") != before
        page.screenshot(path=str(ARTIFACTS / "dashboard_part_hidden.png"), full_page=True)
        page.click("#btn-pause")
        _wait_text(page, "#control-status", "sent")
        printer = rig["printer"]
        t0 = time.monotonic()
        while printer.status().state != PrinterState.PAUSED and time.monotonic() - t0 < 15:  # type: ignore[attr-defined]
            time.sleep(0.1)
        assert printer.status().state == PrinterState.PAUSED  # type: ignore[attr-defined]
        _wait_text(page, "#log", "pause confirmed (operator)")
        page.screenshot(path=str(ARTIFACTS / "dashboard_paused.png"), full_page=True)
        browser.close()  # type: ignore[attr-defined]
    (record,) = (rig["tmp"] / "records" / PID).glob("*.h5")  # type: ignore[operator]
    with RecordReader(record) as r:
        rows = [(a["action"], a["state"], a["rule"]) for a in r.table("actions")]
    assert ("pause", "requested", "operator") in rows and ("pause", "confirmed", "operator") in rows
    print(f"layer shown {shown_after:.2f} s after it was published")


def test_read_only_mode_shows_no_controls_and_refuses_them(rig: dict[str, object]) -> None:
    from playwright.sync_api import sync_playwright

    rig["printer"].resume()  # type: ignore[attr-defined]
    for layer in range(4, 9):  # the warp from layer 4 grows: the monitor pauses at layer 7
        rig["publish"](layer)  # type: ignore[operator]
    with sync_playwright() as p:
        browser = launch_chromium(p)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})  # type: ignore[attr-defined]
        page.goto(rig["readonly"].url)  # type: ignore[attr-defined]
        _wait_text(page, "#read-only", "Read-only")
        _wait_text(page, "#layer-info", "layer ")
        assert page.query_selector("#btn-pause") is None
        _wait_text(page, "#layer-info", "layer 8", timeout=30)
        page.wait_for_selector("#trend .main-svg", timeout=15_000)  # plotly.js has drawn the trend
        page.screenshot(path=str(ARTIFACTS / "dashboard_read_only.png"), full_page=True)
        page.click("#jump")  # the build browser: jump to the incident
        page.get_by_text("pause (warping-grows) at layer 7").click()
        _wait_text(page, "#layer-info", "layer 7 ")
        assert "warping" in page.inner_text("#layer-info")
        page.wait_for_selector("#log img.thumb", timeout=15_000)  # the evidence thumbnail of the pause
        page.screenshot(path=str(ARTIFACTS / "dashboard_incident.png"), full_page=True)

        browser.close()  # type: ignore[attr-defined]
    # a forged control request to the read-only server: there is no such callback to run
    body = {
        "output": "control-status.children",
        "outputs": {"id": "control-status", "property": "children"},
        "inputs": [{"id": "btn-pause", "property": "n_clicks", "value": 1}],
        "changedPropIds": ["btn-pause.n_clicks"],
        "state": [],
    }
    response = httpx.post(rig["readonly"].url + "_dash-update-component", json=body)  # type: ignore[attr-defined]
    assert response.status_code >= 400 and "sent" not in response.text


def test_false_alarm_from_the_page_is_stored_with_the_incident(rig: dict[str, object]) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:  # the read-only test above made the monitor pause at layer 7: an incident
        browser, page = _operator_page(p, rig)
        _wait_text(page, "#layer-info", "layer 8")
        page.click("#incident")
        page.get_by_text("warping-grows @ layer 7").click()
        page.click("#btn-false")
        _wait_text(page, "#control-status", "false alarm for")
        browser.close()  # type: ignore[attr-defined]
    (record,) = (rig["tmp"] / "records" / PID).glob("*.h5")  # type: ignore[operator]
    deadline = time.monotonic() + 10
    verdicts: list[str] = []
    while time.monotonic() < deadline and not verdicts:
        with RecordReader(record) as r:
            verdicts = [f["verdict"] for f in r.table("feedback")]
        time.sleep(0.2)
    assert verdicts == ["false_alarm"]


def test_a_monitor_that_goes_offline_is_said_in_words(rig: dict[str, object]) -> None:
    from playwright.sync_api import sync_playwright

    rig["monitor"].close()  # type: ignore[attr-defined]  # its retained status turns to offline
    with sync_playwright() as p:
        browser, page = _operator_page(p, rig)
        _wait_text(page, "#record-status", "monitor offline since")
        assert "Traceback" not in page.content()
        browser.close()  # type: ignore[attr-defined]


def test_the_3d_view_callback_gives_the_reports_figure(rig: dict[str, object]) -> None:
    (record,) = (rig["tmp"] / "records" / PID).glob("*.h5")  # type: ignore[operator]
    body = {
        "output": "view3d.figure",
        "outputs": {"id": "view3d", "property": "figure"},
        "inputs": [{"id": "details3d", "property": "open", "value": True}],
        "state": [{"id": "record", "property": "value", "value": str(record)}],
        "changedPropIds": ["details3d.open"],
    }
    url = rig["readonly"].url + "_dash-update-component"  # type: ignore[attr-defined]
    response = httpx.post(url, json=body, timeout=60)
    assert response.status_code == 200, response.text[:300]
    figure = response.json()["response"]["view3d"]["figure"]
    kinds = {t["name"]: t["type"] for t in figure["data"]}
    assert kinds.get("warping") == "scatter3d"


def test_controls_need_the_token(rig: dict[str, object]) -> None:
    url = rig["controlled"].url  # type: ignore[attr-defined]
    assert httpx.get(url).status_code == 401
    assert httpx.get(url, auth=("operator", "wrong")).status_code == 401
    assert httpx.get(url, auth=("operator", TOKEN)).status_code == 200
