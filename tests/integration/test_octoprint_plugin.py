"""LayerWatch's OctoPrint plugin (integrations/octoprint) in the real OctoPrint 1.11.8 of the test peers, installed
with OctoPrint's own pip, on a site set up as docs/printers.md says: ``security broker-config`` for a locked-down
Mosquitto (the plugin connects as ``octoprint-p1``), ``layerwatch up`` with ``bridge = false`` and no camera for the
printer, and OctoPrint's webcam snapshot URL served by this test (a simulated build that starts to warp).

A Virtual Printer job with Cura's layer markers, uploaded through OctoPrint's API (the plugin marks it): every layer
arrives at the monitor as the bridge's layer event and with a frame, the monitor judges each, pauses OctoPrint
through its API, and the pause with its reason and evidence shows in the plugin's tab (its API and the page in
Chromium)."""

from __future__ import annotations

import functools
import os
import shutil
import signal
import subprocess
import threading
import time
import zipfile
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import cv2
import httpx
import pytest
from gcode import make_gcode
from peers import PEERS, REPO, OctoPrint, free_port, launch_chromium, require, site_broker, wait_until

from monitor.record import RecordError, RecordReader, build_records
from printer_io.messages import ActionMessage, LayerEvent
from printer_io.mqtt import MqttConfig, MqttLink
from printer_io.octoprint import OctoPrintClient
from printer_io.topics import Topics
from segmentation.simulator import SimBuild, scenario_spec

pytestmark = [pytest.mark.integration, pytest.mark.slow]
LAYERWATCH = str(REPO / ".venv" / "bin" / "layerwatch")
PLUGIN = REPO / "integrations" / "octoprint"
FRAMES, WARP, SEED, LAYERS = 14, 4, 3, 40


class Webcam:
    """OctoPrint's snapshot URL: the n-th snapshot is layer n of a simulated build whose corner lifts from layer
    WARP on (JPEG, as webcams give); past its last layer it shows the last one."""

    def __init__(self) -> None:
        build = SimBuild(SEED, 512, 512, FRAMES, spec=scenario_spec(SEED, 512, FRAMES, warp_start=WARP))
        self.jpegs = [bytes(cv2.imencode(".jpg", build.layer(n).image, [cv2.IMWRITE_JPEG_QUALITY, 95])[1])
                      for n in range(FRAMES)]  # fmt: skip
        self.served = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                data = outer.jpegs[min(outer.served, FRAMES - 1)]
                outer.served += 1
                self.send_response(200)
                self.send_header("Content-Type", "image/jpeg")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/snapshot.jpg"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()


class PluginOctoPrint(OctoPrint):
    """The peers' OctoPrint with the plugin's settings and a classic webcam whose snapshot URL is ``snapshot``."""

    def __init__(self, workdir: Path, plugin: dict[str, Any], snapshot: str) -> None:
        super().__init__(workdir)
        self.plugin, self.snapshot = plugin, snapshot

    def configure(self) -> None:
        import yaml

        super().configure()
        path = self.basedir / "config.yaml"
        config = yaml.safe_load(path.read_text())
        config["plugins"]["layerwatch"] = self.plugin
        config["plugins"]["_disabled"].append("file_check")  # its set-up wizard would stand over the page
        # _config_version: the settings are of this version (else OctoPrint "migrates" them from webcam.snapshot)
        config["plugins"]["classicwebcam"] = {"_config_version": 1, "snapshot": self.snapshot, "snapshotTimeout": 5}
        config["webcam"] = {"webcamEnabled": True, "snapshotWebcam": "classic"}
        path.write_text(yaml.safe_dump(config))


def release_archive(out: Path) -> Path:
    """The plugin's source as a release archive (a zip with one top folder, as `make plugin-archive` and a GitHub
    release give): what the Plugin Manager's "... from URL" hands to pip."""
    archive = out / "OctoPrint-LayerWatch.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for path in sorted(PLUGIN.rglob("*")):
            rel = path.relative_to(PLUGIN)
            if path.is_file() and not {"build", "__pycache__"} & set(rel.parts) and ".egg-info" not in str(rel):
                z.write(path, "OctoPrint-LayerWatch" / rel)
    return archive


@pytest.fixture(scope="module")
def plugin_installed(tmp_path_factory: pytest.TempPathFactory) -> None:
    """The working tree's plugin in OctoPrint's environment, installed by OctoPrint's own pip from a release
    archive's URL, offline (``make peers`` installed it once with paho-mqtt, its one dependency)."""
    python = PEERS / "octoprint" / "bin" / "python"
    if not python.exists():
        require("OctoPrint", "make peers")
    if subprocess.run([str(python), "-c", "import paho.mqtt"], capture_output=True).returncode != 0:
        require("paho-mqtt in OctoPrint's environment", "make peers (installs the plugin with its dependency)")
    url = release_archive(tmp_path_factory.mktemp("plugin")).as_uri()
    pip = [str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--force-reinstall"]
    done = subprocess.run([*pip, url], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


class Site:
    def __init__(self, folder: Path) -> None:
        self.dir, self.records = folder, folder / "records"

    def stored(self) -> list[int]:
        paths = build_records(self.records / "p1")
        if not paths:
            return []
        try:
            with RecordReader(paths[0]) as r:
                return [int(k) for k in r.stored_layers()]
        except (RecordError, OSError):
            return []


@pytest.fixture
def site(tmp_path: Path, plugin_installed: None) -> Iterator[tuple[Site, PluginOctoPrint, Webcam, int]]:
    folder = tmp_path / "site"
    with site_broker(folder) as port:
        webcam = Webcam()
        password = (folder / "credentials" / "octoprint-p1.password").read_text().strip()
        plugin = {
            "broker": f"mqtt://127.0.0.1:{port}", "username": "octoprint-p1", "password": password, "printer": "p1",
            "capture": True, "settle_s": 0.2, "dashboard_url": "http://127.0.0.1:8050/",
        }  # fmt: skip
        octoprint = PluginOctoPrint(tmp_path, plugin, webcam.url).start()
        key = folder / "p1-octoprint-key"
        key.write_text(octoprint.limited_api_key + "\n")  # STATUS and PRINT only (docs/printers.md)
        key.chmod(0o600)
        config = folder / "layerwatch.toml"
        config.write_text(
            config.read_text()
            + f"""
[printers.p1]
backend = "octoprint"
url = "{octoprint.url}"
api_key_file = "p1-octoprint-key"
bridge = false      # layer events and frames come from LayerWatch's OctoPrint plugin
"""
        )
        yield Site(folder), octoprint, webcam, port
        octoprint.stop()
        webcam.close()


def _plugin_state(octoprint: OctoPrint) -> dict[str, Any]:
    """What the plugin's tab shows, from its API (as the admin)."""
    headers = {"X-Api-Key": octoprint.api_key}
    return dict(httpx.get(f"{octoprint.url}/api/plugin/layerwatch", headers=headers, timeout=10).json())


def _observer(s: Site, port: int) -> tuple[MqttLink, list[LayerEvent], dict[str, str]]:
    """A client with the dashboard's rights: the layer events as the monitor sees them, the services' status."""
    events: list[LayerEvent] = []
    online: dict[str, str] = {}
    password = s.dir / "credentials" / "dashboard.password"
    config = MqttConfig(url=f"mqtt://127.0.0.1:{port}", username="dashboard", password_file=password)
    link = MqttLink(config, service="observer", topics=Topics("layerwatch", "p1"), ephemeral=True)
    link.subscribe("layerwatch/p1/layer", lambda topic, payload: events.append(LayerEvent.from_json(payload, topic)))
    link.subscribe(
        "layerwatch/p1/status/+", lambda topic, payload: online.update({topic.rsplit("/", 1)[1]: payload.decode()})
    )
    link.start()
    return link, events, online


def test_the_plugin_feeds_the_monitor_every_layer_and_shows_its_pause_in_octoprint(
    site: tuple[Site, PluginOctoPrint, Webcam, int], tmp_path: Path
) -> None:
    s, octoprint, webcam, port = site
    admin = OctoPrintClient(octoprint.url, octoprint.api_key)
    api = {"X-Api-Key": octoprint.api_key}
    plugin_state = functools.partial(_plugin_state, octoprint)
    wait_until("the plugin connected as octoprint-p1", lambda: plugin_state()["broker"] == "connected", 60)
    link, events, online = _observer(s, port)
    log = tmp_path / "up.log"
    with log.open("wb") as out:
        up = subprocess.Popen(
            [LAYERWATCH, "up", "--config", str(s.dir / "layerwatch.toml"), "--no-dashboard"],
            stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path, start_new_session=True,
        )  # fmt: skip
    try:
        wait_until("the monitor online", lambda: '"online"' in online.get("monitor", ""), 120)
        assert '"online"' in online.get("octoprint", ""), online
        if admin.connection()["current"]["state"] in ("Closed", "Offline"):
            admin.connect("VIRTUAL")
        wait_until("OctoPrint operational", lambda: admin.job()["state"] == "Operational", 60)
        admin.upload("plugin.gcode", make_gcode(LAYERS, markers="cura", moves=6), select=True, print_=True)
        wait_until("OctoPrint paused by the monitor", lambda: admin.job()["state"] == "Paused", 240)
        paused_at = time.time()
        state = plugin_state()
        wait_until("the pause in the plugin's tab", lambda: plugin_state()["badge"], 30)
        state = plugin_state()
        # hostile messages from a user who may write actions: refused or shown as text, the plugin goes on
        script = '<img src=x onerror="window.pwned=1"> </td><script>window.pwned=2</script>'
        for payload in (b"{" * 200_000, b"\xff\xfe", ActionMessage(printer="p1", action="pause", state="confirmed",
                        request_id="forged-p2", reason="other printer").to_json().replace(b'"p1"', b'"p2"'),
                        ActionMessage(printer="p1", action="notify", state="failed", request_id="hostile",
                                      reason=script, layer=1).to_json()):  # fmt: skip
            link.publish("layerwatch/p1/action", payload, wait_s=5)
        wait_until(
            "the hostile notice shown", lambda: any(i["reason"] == script for i in plugin_state()["incidents"]), 30
        )
        assert not any(i["request_id"] == "forged-p2" for i in plugin_state()["incidents"])
        stored = s.stored()
        _screenshot_tab(octoprint, tmp_path / "octoprint-tab.png", script)
        admin.job_command({"command": "cancel"})
        wait_until("the job's end event", lambda: any(e.end for e in events), 60)
    finally:
        up.send_signal(signal.SIGTERM)
        try:
            up.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(up.pid, signal.SIGKILL)
        link.close()
    out = log.read_text()
    assert "bridge:p1" not in out and "camera:p1" not in out, out[-2000:]  # `up` started neither: the plugin is both

    # every layer the printer finished before the pause arrived as the bridge's event, in order, from layer 0
    layers = [e for e in events if not e.end]
    assert [e.layer for e in layers] == list(range(len(layers))) and len(layers) > WARP
    assert {e.source for e in events} == {"octoprint"} and len({e.job_id for e in events}) == 1
    assert layers[0].job_id.startswith("plugin.gcode-") and layers[0].job_id[13:].isdigit()
    assert [e.z_mm for e in layers] == [pytest.approx(0.2 * (n + 1)) for n in range(len(layers))]
    assert events[-1].end and events[-1].outcome == "cancelled"
    assert all(e.time <= paused_at + 5 for e in layers)  # nothing announced while it stood paused
    # ... with a frame each (one snapshot per layer), judged into the record
    assert webcam.served == len(layers)
    assert stored[: WARP + 1] == list(range(WARP + 1)), stored
    (path,) = build_records(s.records / "p1")
    with RecordReader(path) as r:
        assert [int(k) for k in r.stored_layers()] == [e.layer for e in layers]
        actions = [(a["action"], a["state"], a["rule"], a["layer"]) for a in r.table("actions")]
    pause = next(a for a in actions if a[:2] == ("pause", "confirmed"))
    assert pause[2] in ("warping-persists", "warping-grows") and WARP < pause[3] <= WARP + 6, actions

    # the tab: the pause with its reason and evidence, the last layer with its overlay and frame
    assert state["badge"].startswith(f"Paused by LayerWatch at layer {pause[3]}: ") and "warping" in state["badge"]
    incident = next(i for i in state["incidents"] if i["action"] == "pause")
    assert incident["state"] == "confirmed" and incident["rule"] == pause[2] and incident["reason"]
    assert incident["metrics"]["warping_confirmed_area_mm2"] > 1 and incident["has_frame"] and incident["has_overlay"]
    last = state["last"]
    assert last["layer"] >= pause[3] and last["has_frame"] and last["has_overlay"]
    for kind, magic in (("overlay", b"\x89PNG"), ("frame", b"\xff\xd8")):
        image = httpx.get(
            f"{octoprint.url}/api/plugin/layerwatch",
            params={"image": kind, "job": incident["job"], "layer": incident["layer"]}, headers=api, timeout=10,
        )  # fmt: skip
        assert image.status_code == 200 and image.content.startswith(magic)
    assert httpx.get(f"{octoprint.url}/api/plugin/layerwatch", timeout=10).status_code in (401, 403)
    # the broker password: never on the settings API, never in OctoPrint's log
    settings = httpx.get(f"{octoprint.url}/api/settings", headers=api, timeout=10).json()
    assert settings["plugins"]["layerwatch"]["password"] is None
    password = octoprint.plugin["password"]
    assert password not in (octoprint.basedir / "logs" / "octoprint.log").read_text()
    assert password not in octoprint.log.read_text()


def _screenshot_tab(octoprint: PluginOctoPrint, out: Path, script: str) -> None:
    """The LayerWatch tab in Chromium, logged in as an OctoPrint user: the badge and the incident are on the page.
    LAYERWATCH_DOCS_SCREENSHOT=PATH keeps the picture there too (docs/img/octoprint-tab.png)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = launch_chromium(p)
        page = browser.new_page(viewport={"width": 1280, "height": 1100})
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("response", lambda r: errors.append(r.url) if r.status >= 400 and "layerwatch" in r.url else None)
        page.goto(octoprint.url + "/", timeout=60_000)
        page.wait_for_selector("#login-user", timeout=60_000)
        page.fill("#login-user", octoprint.USER)
        page.fill("#login-password", octoprint.PASSWORD)
        page.click("#login-button")
        # after the login OctoPrint loads its page again: wait until its UI has started up, with our tab in it
        started = "() => window.OctoPrint && OctoPrint.coreui && OctoPrint.coreui.startedUp && window.jQuery"
        page.wait_for_function(started, timeout=60_000)
        page.wait_for_selector("#tab_plugin_layerwatch_link a", state="attached", timeout=60_000)
        page.evaluate("$('#tab_plugin_layerwatch_link a').tab('show')")  # the tab bar may fold it into a menu
        page.wait_for_selector("#layerwatch-incidents tbody tr", timeout=30_000)
        page.wait_for_selector("#layerwatch-badge", state="visible", timeout=30_000)
        assert "Paused by LayerWatch" in page.inner_text("#layerwatch-paused")
        incidents = page.inner_text("#layerwatch-incidents")
        assert "pause" in incidents and "confirmed" in incidents, incidents
        assert script in incidents and page.evaluate("window.pwned") is None and not errors  # text, never markup
        page.evaluate("$('#layerwatch-incidents tbody tr:first').hide()")  # the picture for the docs: the pause
        page.wait_for_function("document.querySelector('.layerwatch-frame img.layerwatch-image').naturalWidth > 0")
        page.screenshot(path=str(out), full_page=False)
        if os.environ.get("LAYERWATCH_DOCS_SCREENSHOT"):
            shutil.copy(out, os.environ["LAYERWATCH_DOCS_SCREENSHOT"])
        # OctoPrint's settings dialog has LayerWatch's page: the stored settings, the password field empty
        page.click("#navbar_show_settings")
        page.wait_for_selector("#settings_plugin_layerwatch_link a", state="attached", timeout=30_000)
        page.evaluate("$('#settings_plugin_layerwatch_link a').tab('show')")
        broker = page.locator("#settings_plugin_layerwatch input[data-bind*='layerwatch.broker']")
        broker.wait_for(state="visible", timeout=30_000)
        assert broker.input_value() == octoprint.plugin["broker"]
        assert page.locator("#settings_plugin_layerwatch input[type=password]").input_value() == ""
        browser.close()


def test_settings_saved_in_octoprint_take_effect_and_a_file_without_markers_is_followed_by_its_moves(
    site: tuple[Site, PluginOctoPrint, Webcam, int],
) -> None:
    """Capture turned off in OctoPrint's settings (the password field left empty keeps the stored one: the plugin
    connects again), then a job uploaded without slicer markers: its layers from the moves OctoPrint sends, Z-hops
    and all, each once at its height, the last at PrintDone, then the end of the job; no snapshot taken."""
    s, octoprint, webcam, port = site
    admin = OctoPrintClient(octoprint.url, octoprint.api_key)
    api = {"X-Api-Key": octoprint.api_key}
    plugin_state = functools.partial(_plugin_state, octoprint)
    wait_until("the plugin connected", lambda: plugin_state()["broker"] == "connected", 60)
    saved = httpx.post(
        f"{octoprint.url}/api/settings", headers=api, timeout=10,
        json={"plugins": {"layerwatch": {"capture": False, "password": "", "settle_s": 0.1}}},
    )  # fmt: skip
    assert saved.status_code == 200, saved.text
    assert saved.json()["plugins"]["layerwatch"]["capture"] is False
    wait_until("connected again with the stored password", lambda: plugin_state()["broker"] == "connected", 60)
    link, events, _ = _observer(s, port)
    try:
        if admin.connection()["current"]["state"] in ("Closed", "Offline"):
            admin.connect("VIRTUAL")
        wait_until("OctoPrint operational", lambda: admin.job()["state"] == "Operational", 60)
        admin.upload("plain.gcode", make_gcode(6, markers=None, hop=0.4), select=True, print_=True)
        wait_until("the job's end event", lambda: any(e.end for e in events), 120)
    finally:
        link.close()
    assert [(e.layer, e.z_mm) for e in events if not e.end] == [(n, pytest.approx(0.2 * (n + 1))) for n in range(6)]
    assert events[-1].outcome == "done" and events[-1].layer == 5
    assert webcam.served == 0 and plugin_state()["capture"] is False
