"""A site set up from the docs (docs/deploy.md, "From nothing to a monitored print"), as a new user does it:
``security broker-config`` for a locked-down Mosquitto, an operator, the printer's table appended to the generated
site config, ``layerwatch up``; a real OctoPrint with its Virtual Printer and a least-privilege user; a job with
layer markers. Every part connects as its own broker user; every layer is judged into a record; the dashboard's
operator pause and resume reach OctoPrint; a part whose credentials or ACL are wrong makes ``up`` say so."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from gcode import make_gcode
from peers import REPO, OctoPrint, free_port, launch_chromium, site_broker, wait_port, wait_until

from monitor.cli import main
from monitor.record import RecordError, RecordReader, build_records
from monitor.settings import EXIT_CONFIG
from printer_io.octoprint import OctoPrintClient

pytestmark = [pytest.mark.integration, pytest.mark.slow]
LAYERWATCH = str(REPO / ".venv" / "bin" / "layerwatch")
LAYERS = 40


class Site:
    def __init__(self, folder: Path, octoprint: OctoPrint) -> None:
        self.dir = folder
        self.octoprint = octoprint
        self.config = folder / "layerwatch.toml"
        self.records = folder / "records"

    def stored(self) -> int:
        paths = build_records(self.records / "p1")
        if not paths:
            return 0
        try:
            with RecordReader(paths[0]) as r:
                return len(r.stored_layers())
        except (RecordError, OSError):
            return 0

    def octoprint_state(self) -> str:
        client = OctoPrintClient(self.octoprint.url, self.octoprint.api_key)
        return str(client.job()["state"])

    def up(self, *extra: str, log: str = "up.log") -> tuple[subprocess.Popen[bytes], Path]:
        out = self.dir.parent / log
        with out.open("wb") as f:
            proc = subprocess.Popen(
                [LAYERWATCH, "up", "--config", str(self.config), *extra],
                stdout=f, stderr=subprocess.STDOUT, cwd=self.dir.parent, start_new_session=True,
            )  # fmt: skip
        return proc, out


@pytest.fixture
def site(tmp_path: Path, octoprint: OctoPrint) -> Iterator[Site]:
    folder = tmp_path / "site"
    # docs/deploy.md, steps 1-3: the broker's set-up and the site's config, an operator, the printer's table
    with site_broker(folder):
        key = folder / "p1-octoprint-key"
        key.write_text(octoprint.limited_api_key + "\n")  # STATUS and PRINT only (docs/printers.md)
        key.chmod(0o600)
        cred = folder / "ana.credential"
        add = ["operator", "add", "ana", "--operators-file", str(folder / "operators"), "--credential-out", str(cred)]
        assert main(add) == 0
        config = folder / "layerwatch.toml"
        config.write_text(
            config.read_text()
            + f"""
[printers.p1]
backend = "octoprint"
url = "{octoprint.url}"
api_key_file = "p1-octoprint-key"

[printers.p1.camera]
source = "simulator"
size = 256
"""
        )
        yield Site(folder, octoprint)


def test_a_part_whose_credentials_or_acl_are_wrong_makes_up_say_so(site: Site) -> None:
    password = site.dir / "credentials" / "camera-p1.password"
    right = password.read_text()
    password.write_text("not-the-password\n")
    proc, log = site.up("--no-dashboard")
    assert proc.wait(60) == EXIT_CONFIG
    out = log.read_text()
    assert "camera:p1: MQTT broker" in out and "refused camera-p1: not authorized" in out, out
    assert f"the password in {password}" in out
    assert "nothing started" in out and "Traceback" not in out
    password.write_text(right)
    acl = site.dir / "acl"
    acl.write_text(acl.read_text().replace("topic write layerwatch/p1/image\n", ""))  # the camera may not publish
    proc, log = site.up("--no-dashboard", log="up-acl.log")
    assert proc.wait(60) == EXIT_CONFIG
    out = log.read_text()
    assert f"camera:p1 connects as camera-p1, which the ACL {acl} does not let publish on layerwatch/p1/image" in out
    assert "Traceback" not in out


def test_a_site_from_the_docs_judges_every_layer_and_the_dashboard_pauses_and_resumes_octoprint(site: Site) -> None:
    from playwright.sync_api import sync_playwright

    dash = free_port()
    proc, log = site.up("--port", str(dash), "--state-file", str(site.dir / "state.json"))
    try:
        wait_port(dash, 120, None, log)
        admin = OctoPrintClient(site.octoprint.url, site.octoprint.api_key)
        if admin.connection()["current"]["state"] in ("Closed", "Offline"):
            admin.connect("VIRTUAL")  # the operator connects the printer in OctoPrint, as every day
        wait_until("OctoPrint operational", lambda: site.octoprint_state() == "Operational", 60)
        admin.upload("site.gcode", make_gcode(LAYERS, markers="cura", moves=8), select=True, print_=True)
        wait_until("5 layers stored", lambda: site.stored() >= 5)
        cred = (site.dir / "ana.credential").read_text().strip()
        name, secret = cred.split(":", 1)
        with sync_playwright() as p:
            browser = launch_chromium(p)
            context = browser.new_context(http_credentials={"username": name, "password": secret})
            page = context.new_page()
            page.goto(f"http://127.0.0.1:{dash}/")
            page.wait_for_selector("#farm-p1 a", timeout=60_000)
            page.click("#farm-p1 a")
            page.wait_for_selector("#btn-pause", timeout=30_000)
            page.click("#btn-pause")
            wait_until("OctoPrint paused by the dashboard's operator", lambda: site.octoprint_state() == "Paused", 60)
            _wait_text = lambda: "printer paused" in page.inner_text("#record-status")  # noqa: E731
            wait_until("the page shows the printer's own state", _wait_text, 30)
            page.click("#btn-resume")
            wait_until("OctoPrint printing again", lambda: site.octoprint_state() == "Printing", 60)
            browser.close()
        wait_until(f"all {LAYERS} layers stored", lambda: site.stored() == LAYERS, 300)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
    out = log.read_text()
    (path,) = build_records(site.records / "p1")
    with RecordReader(path) as r:
        assert [int(k) for k in r.stored_layers()] == list(range(LAYERS))
        assert float(r.attrs["material/layer_thickness"]) == pytest.approx(0.2)  # the printer's, not the default
        actions = [(a["action"], a["state"], a["rule"]) for a in r.table("actions")]
        codes = [e["code"] for e in r.table("events")]
    assert ("pause", "confirmed", "operator") in actions and ("resume", "confirmed", "operator") in actions
    assert "no_frames" not in codes and "units" not in codes
    assert "Traceback" not in out and "refused the publish" not in out, out[-3000:]
    assert "rejected message" not in out and "exited with status" not in out, out[-3000:]
