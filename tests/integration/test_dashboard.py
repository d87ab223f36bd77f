"""The dashboard in a real headless Chromium (Debian's), driven by Playwright: live view, overlay, controls.

Every test stands alone: it gets its own printer, monitor, build record and dashboards (a controlled one
an operator logs in to, a read-only one), and never depends on what another test did or in which order they run.
Screenshots of the main views are saved to ``runs/test-artifacts/`` (or ``$LAYERWATCH_ARTIFACTS``).
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from peers import REPO, Mosquitto, free_port, launch_chromium

from monitor.config import Config, MonitorSection, PrinterSection
from monitor.record import RecordReader, action_boxes
from monitor.service import MonitorService
from printer_io.credentials import Credential
from printer_io.frames import QualityChecker, encode_image
from printer_io.messages import ActionMessage, FrameMeta, ResultMessage, encode_frame
from printer_io.mqtt import MqttConfig, MqttLink
from printer_io.printer import PrinterState
from printer_io.topics import Topics
from printer_io.virtual import VirtualPrinter
from segmentation.simulator import SimBuild, scenario_spec

pytestmark = [pytest.mark.integration, pytest.mark.slow]
ARTIFACTS = Path(os.environ.get("LAYERWATCH_ARTIFACTS", REPO / "runs" / "test-artifacts"))
LAYERS, WARP = 14, 4
_ids = itertools.count(1)


class Server:
    def __init__(self, app: object) -> None:
        from werkzeug.serving import make_server

        self.app = app
        self.port = free_port()
        self.httpd = make_server("127.0.0.1", self.port, app.server, threaded=True)  # type: ignore[attr-defined]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def close(self) -> None:
        from dashboards.app import close_app

        self.httpd.shutdown()
        close_app(self.app)


@dataclass
class Rig:
    """One printing line of one test: printer, monitor, camera, dashboards, and what the monitor said."""

    pid: str
    printer: VirtualPrinter
    monitor: MonitorService
    records: Path
    controlled: Server
    readonly: Server
    camera: MqttLink
    build: SimBuild
    results: list[ResultMessage]
    actions: list[ActionMessage]
    cond: threading.Condition
    operator: Credential  # the operator the monitor knows and the controlled dashboard logs in as

    def publish(self, *layers: int) -> None:
        quality = QualityChecker()
        for layer in layers:
            image = self.build.layer(layer).image
            meta = FrameMeta(
                printer=self.pid, job_id="dash-job", layer=layer, z_mm=0.04 * (layer + 1), captured_at=time.time(),
                encoding="png", width=512, height=512, channels=1, bit_depth=8, quality=quality.check(image),
            )  # fmt: skip
            self.camera.publish(self.camera.topics.image, encode_frame(meta, encode_image(image)), wait_s=5)

    def wait_result(self, layer: int, timeout: float = 60) -> None:
        with self.cond:
            ok = self.cond.wait_for(lambda: any(r.layer == layer for r in self.results), timeout)
        assert ok, f"no result for layer {layer}"

    def wait_pause(self, timeout: float = 60) -> ActionMessage:
        def found() -> ActionMessage | None:
            return next((a for a in self.actions if a.action == "pause" and a.state.value == "confirmed"), None)

        with self.cond:
            self.cond.wait_for(lambda: found() is not None, timeout)
            pause = found()
        assert pause is not None, f"the monitor never paused; actions {[(a.action, a.state) for a in self.actions]}"
        return pause

    @property
    def record(self) -> Path:
        (path,) = (self.records / self.pid).glob("*.h5")
        return path


@pytest.fixture
def rig(broker: Mosquitto, tmp_path: Path, ana: Credential) -> Iterator[Rig]:
    pid = f"dash-{next(_ids)}-{os.getpid()}"
    printer = VirtualPrinter(pid, layers=1000, realtime=False).start()
    printer.start_job("dash-job")
    spec = scenario_spec(3, 512, LAYERS, warp_start=WARP)
    records = tmp_path / "records"
    config = Config(
        mqtt=MqttConfig(url=broker.url),
        monitor=MonitorSection(out_dir=records, mm_per_px=spec.mm_per_px),
        printers={pid: PrinterSection(backend="virtual")},
    )
    monitor = MonitorService(config, printers={pid: printer}).start()
    topics = Topics("layerwatch", pid)
    results: list[ResultMessage] = []
    actions: list[ActionMessage] = []
    cond = threading.Condition()

    def on_result(topic: str, payload: bytes) -> None:
        with cond:
            results.append(ResultMessage.from_json(payload, topic))
            cond.notify_all()

    def on_action(topic: str, payload: bytes) -> None:
        with cond:
            actions.append(ActionMessage.from_json(payload, topic))
            cond.notify_all()

    watch = MqttLink(MqttConfig(url=broker.url), service="watch", topics=topics)
    watch.subscribe(topics.result, on_result)
    watch.subscribe(topics.action, on_action)
    watch.start()
    camera = MqttLink(MqttConfig(url=broker.url), service="camera", topics=topics).start()
    from dashboards.app import DashboardOptions, create_app

    (records / pid).mkdir(parents=True, exist_ok=True)
    controlled = Server(
        create_app(DashboardOptions(records=records / pid, broker=broker.url, operators={ana.name: ana.secret}))
    )
    readonly = Server(create_app(DashboardOptions(records=records / pid)))
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    build = SimBuild(3, 512, 512, LAYERS, spec=spec)
    yield Rig(pid, printer, monitor, records, controlled, readonly, camera, build, results, actions, cond, ana)
    controlled.close()
    readonly.close()
    camera.close()
    watch.close()
    monitor.close()
    printer.close()


def _page(p: Any, url: str, operator: Credential | None) -> tuple[Any, Any]:
    """A browser and a page on a dashboard, logged in as the operator where given."""
    browser = launch_chromium(p)
    credentials = {"http_credentials": {"username": operator.name, "password": operator.secret}} if operator else {}
    page = browser.new_context(viewport={"width": 1400, "height": 1000}, **credentials).new_page()
    page.goto(url)
    return browser, page


def _wait_text(page: Any, selector: str, text: str, timeout: float = 30.0) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if text in page.inner_text(selector):
            return time.monotonic() - t0
        time.sleep(0.1)
    raise AssertionError(f"{selector!r} never showed {text!r}; it shows {page.inner_text(selector)!r}")


def test_live_view_overlay_toggle_and_pause_from_the_page(rig: Rig) -> None:
    from playwright.sync_api import sync_playwright

    rig.publish(0, 1, 2)
    rig.wait_result(2)
    with sync_playwright() as p:
        browser, page = _page(p, rig.controlled.url, rig.operator)
        _wait_text(page, "#layer-info", "layer 2")
        assert (page.get_attribute("#frame", "src") or "").startswith("data:image/png;base64,")
        rig.publish(3)
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
        rig.wait_pause()
        assert rig.printer.status().state == PrinterState.PAUSED
        _wait_text(page, "#log", "pause confirmed (operator)")
        _wait_text(page, "#record-status", "printer paused by operator ana")  # what the monitor did, not telemetry
        page.screenshot(path=str(ARTIFACTS / "dashboard_paused.png"), full_page=True)
        browser.close()
    with RecordReader(rig.record) as r:
        rows = [(a["action"], a["state"], a["rule"]) for a in r.table("actions")]
    assert ("pause", "requested", "operator") in rows and ("pause", "confirmed", "operator") in rows
    print(f"layer shown {shown_after:.2f} s after it was published")


def test_read_only_mode_shows_no_controls_and_refuses_them(rig: Rig) -> None:
    from playwright.sync_api import sync_playwright

    rig.publish(*range(LAYERS))  # the warp from layer WARP grows until the monitor pauses
    pause = rig.wait_pause()
    rig.wait_result(LAYERS - 1)
    with sync_playwright() as p:
        browser, page = _page(p, rig.readonly.url, None)
        _wait_text(page, "#read-only", "Read-only")
        assert page.query_selector("#btn-pause") is None
        _wait_text(page, "#layer-info", f"layer {LAYERS - 1}")
        page.wait_for_selector("#trend .main-svg", timeout=15_000)  # plotly.js has drawn the trend
        _wait_text(page, "#record-status", f"printer paused by rule {pause.rule} at layer {pause.layer}")
        page.screenshot(path=str(ARTIFACTS / "dashboard_read_only.png"), full_page=True)
        page.click("#jump")  # the build browser: jump to the incident
        page.get_by_role("dialog").get_by_text(f"pause ({pause.rule}) at layer {pause.layer}").click()  # the menu
        _wait_text(page, "#layer-info", f"layer {pause.layer} ")
        _wait_text(page, "#layer-info", f"outlined in white: where {pause.rule} (pause) measured")
        page.wait_for_selector("#log img.thumb", timeout=15_000)  # the evidence thumbnail of the pause
        page.screenshot(path=str(ARTIFACTS / "dashboard_incident.png"), full_page=True)
        browser.close()
    with RecordReader(rig.record) as r:  # where the rule measured: the rectangles the page outlines
        boxes = action_boxes(r.table("actions"), request_id=pause.request_id)
        height, width = r.image(pause.layer).shape[:2]
    assert boxes and all(x + w <= width and y + h <= height for x, y, w, h in boxes)  # and >= 0 (action_boxes)
    # a forged control request to the read-only server: there is no such callback to run
    body = {
        "output": "control-status.children",
        "outputs": {"id": "control-status", "property": "children"},
        "inputs": [{"id": "btn-pause", "property": "n_clicks", "value": 1}],
        "changedPropIds": ["btn-pause.n_clicks"],
        "state": [],
    }
    response = httpx.post(rig.readonly.url + "_dash-update-component", json=body)
    assert response.status_code >= 400 and "sent" not in response.text


def test_false_alarm_from_the_page_is_stored_with_the_incident(rig: Rig) -> None:
    from playwright.sync_api import sync_playwright

    rig.publish(*range(LAYERS))
    pause = rig.wait_pause()
    with sync_playwright() as p:
        browser, page = _page(p, rig.controlled.url, rig.operator)
        _wait_text(page, "#layer-info", "layer ")
        page.click("#incident")
        page.get_by_text(f"{pause.rule} @ layer {pause.layer}").click()
        page.click("#btn-false")
        _wait_text(page, "#control-status", "false alarm for")
        browser.close()
    deadline = time.monotonic() + 10
    verdicts: list[tuple[str, str]] = []
    while time.monotonic() < deadline and not verdicts:
        with RecordReader(rig.record) as r:
            verdicts = [(f["verdict"], f["operator"]) for f in r.table("feedback")]
        time.sleep(0.2)
    assert verdicts == [("false_alarm", "ana")]  # the operator who logged in, from the signature


def test_a_monitor_that_goes_offline_is_said_in_words(rig: Rig) -> None:
    from playwright.sync_api import sync_playwright

    rig.publish(0)
    rig.wait_result(0)
    rig.monitor.close()  # its retained status turns to offline
    with sync_playwright() as p:
        browser, page = _page(p, rig.controlled.url, rig.operator)
        _wait_text(page, "#record-status", "monitor offline since")
        assert "Traceback" not in page.content()
        browser.close()


def test_the_3d_view_opens_in_the_browser_with_the_reports_traces(rig: Rig) -> None:
    from playwright.sync_api import sync_playwright

    rig.publish(*range(8))
    rig.wait_result(7)
    with sync_playwright() as p:
        browser, page = _page(p, rig.readonly.url, None)
        _wait_text(page, "#layer-info", "layer 7")
        page.click("#btn-3d")
        page.wait_for_function(
            "() => { const g = document.querySelector('#view3d .js-plotly-plot');"
            " return g && g.data && g.data.length > 0; }",
            timeout=90_000,
        )
        traces = page.evaluate("() => document.querySelector('#view3d .js-plotly-plot').data.map(t => t.type)")
        page.screenshot(path=str(ARTIFACTS / "dashboard_3d.png"), full_page=True)
        browser.close()
    assert "scatter3d" in traces, traces


def test_controls_need_an_operators_login(rig: Rig) -> None:
    url, ana = rig.controlled.url, rig.operator
    assert httpx.get(url).status_code == 401
    assert httpx.get(url, auth=(ana.name, "wrong")).status_code == 401
    assert httpx.get(url, auth=("bob", ana.secret)).status_code == 401  # another name with ana's secret
    assert httpx.get(url, auth=(ana.name, ana.secret)).status_code == 200


def test_an_operator_paints_labels_on_a_layer_and_they_reach_the_record(rig: Rig) -> None:
    from playwright.sync_api import sync_playwright

    from monitor.labels import export_labels
    from segmentation.classes import CLASS_HEX, NO_DEFECT, UNLABELLED

    rig.publish(0, 1, 2)
    rig.wait_result(2)
    with sync_playwright() as p:
        browser, page = _page(p, rig.controlled.url, rig.operator)
        _wait_text(page, "#layer-info", "layer 2")
        page.wait_for_selector("#label-canvas .nsewdrag", timeout=15_000)
        page.locator("#label-canvas").scroll_into_view_if_needed()
        box = page.locator("#label-canvas .nsewdrag").bounding_box()
        assert box is not None
        scale = box["width"] / 512  # the 512 px frame fills the canvas's width

        def at(x: float, y: float) -> tuple[float, float]:
            return box["x"] + x * scale, box["y"] + y * scale

        def pen(dragmode: str, color: str) -> None:
            """Wait until the canvas has the pen asked for (the server redraws it)."""
            page.wait_for_function(
                "([mode, color]) => { const g = document.querySelector('#label-canvas .js-plotly-plot');"
                " return g && g.layout.dragmode === mode && g.layout.newshape.line.color === color; }",
                arg=[dragmode, color],
                timeout=30_000,
            )

        # a region of "no defect here" (the default label): a square around (100, 100) of the frame
        page.check("#label-tool input[value='region']")
        pen("drawclosedpath", "#00bcd4")
        page.mouse.move(*at(40, 40))
        page.mouse.down()
        for x, y in ((160, 40), (160, 160), (40, 160), (40, 45)):
            page.mouse.move(*at(x, y), steps=8)
        page.mouse.up()
        # a porosity brush line across (300..380, 300)
        page.check("#label-tool input[value='brush']")
        page.click("#label-value")
        page.get_by_text("porosity", exact=True).last.click()
        pen("drawopenpath", CLASS_HEX[2])
        page.mouse.move(*at(300, 300))
        page.mouse.down()
        page.mouse.move(*at(380, 300), steps=10)
        page.mouse.up()
        page.wait_for_timeout(500)
        page.screenshot(path=str(ARTIFACTS / "dashboard_labels.png"), full_page=True)
        page.click("#btn-label-save")
        _wait_text(page, "#label-status", "2 label stroke(s) on layer 2")
        deadline = time.monotonic() + 15
        rows: list[dict[str, Any]] = []
        while time.monotonic() < deadline and len(rows) < 2:
            with RecordReader(rig.record) as r:
                rows = r.table("labels")
            time.sleep(0.2)
        # stored: a fresh drawing on the layer shows them faded under the pen, where they are
        page.click("#btn-label-clear")
        page.wait_for_function(
            "() => { const g = document.querySelector('#label-canvas .js-plotly-plot');"
            " return g && g.layout.images.length === 2 && g.layout.shapes.length === 0; }",
            timeout=30_000,
        )
        page.screenshot(path=str(ARTIFACTS / "dashboard_labels_saved.png"), full_page=True)
        browser.close()
    assert sorted((row["kind"], row["label"], row["operator"], row["layer"]) for row in rows) == [
        ("brush", 2, "ana", 2), ("region", NO_DEFECT, "ana", 2)
    ]  # fmt: skip
    out = rig.records / "export"
    assert export_labels([rig.record], out)["layers"] == 1
    import cv2

    mask = cv2.imread(str(out / "masks" / f"{rig.record.stem}-00002.png"), cv2.IMREAD_UNCHANGED)
    assert mask is not None
    assert mask[100, 100] == NO_DEFECT and mask[300, 340] == 2 and mask[450, 450] == UNLABELLED


def test_the_farm_view_shows_the_printer_and_a_link_opens_its_layer(rig: Rig) -> None:
    from playwright.sync_api import sync_playwright

    rig.publish(*range(LAYERS))
    pause = rig.wait_pause()
    rig.wait_result(LAYERS - 1)
    with sync_playwright() as p:
        browser, page = _page(p, rig.readonly.url, None)
        _wait_text(page, "#farm", rig.pid)
        _wait_text(page, "#farm", f"pause ({pause.rule}) at layer {pause.layer}")
        page.wait_for_selector("#farm img.thumb", timeout=15_000)  # the incident's evidence
        page.screenshot(path=str(ARTIFACTS / "dashboard_farm.png"), full_page=True)
        page.click(f"#farm-{rig.pid} a")  # one click to its build, at the incident's layer
        _wait_text(page, "#layer-info", f"layer {pause.layer} ")
        # a notification's link: that printer's record at that layer, on a fresh page
        page.goto(f"{rig.readonly.url}?printer={rig.pid}&record={rig.record.name}&layer=2")
        _wait_text(page, "#layer-info", "layer 2 ")
        browser.close()
