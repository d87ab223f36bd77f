"""Notifications through Apprise to a local webhook receiver, from a monitor on a real Mosquitto: the pause
on a growing warp reaches the receiver with its reason, the evidence image and the link to the layer; a
receiver that is down is said in the record and the monitor judges on."""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
from peers import Mosquitto, WebhookReceiver, free_port

from monitor.config import Config, MonitorSection, NotificationRoute, NotificationsSection, PrinterSection
from monitor.record import RecordReader, action_boxes
from monitor.service import MonitorService
from printer_io.frames import QualityChecker, encode_image
from printer_io.messages import FrameMeta, encode_frame
from printer_io.mqtt import MqttConfig, MqttLink
from printer_io.topics import Topics
from printer_io.virtual import VirtualPrinter
from segmentation.simulator import SimBuild, scenario_spec

pytestmark = pytest.mark.integration
LAYERS, WARP = 12, 3


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    r = WebhookReceiver()
    yield r
    r.close()


def _run(broker: Mosquitto, tmp_path: Path, url: str, monkeypatch: pytest.MonkeyPatch) -> tuple[MonitorService, Path]:
    pid = f"notify-{abs(hash(url)) % 10_000}"
    monkeypatch.setenv("LW_TEST_NOTIFY_URLS", url)
    spec = scenario_spec(3, 512, LAYERS, warp_start=WARP)
    config = Config(
        mqtt=MqttConfig(url=broker.url),
        monitor=MonitorSection(out_dir=tmp_path / "records", models_dir=tmp_path / "models", mm_per_px=spec.mm_per_px),
        printers={pid: PrinterSection(backend="virtual")},
        notifications=NotificationsSection(
            dashboard_url="http://farm.example:8050",
            routes=(NotificationRoute(urls_env="LW_TEST_NOTIFY_URLS", min_severity="critical", actions=("pause",)),),
        ),
    )
    printer = VirtualPrinter(pid, layers=100, realtime=False).start()
    printer.start_job("notify-job")
    monitor = MonitorService(config, printers={pid: printer}).start()
    camera = MqttLink(MqttConfig(url=broker.url), service="camera", topics=Topics("layerwatch", pid)).start()
    build, quality = SimBuild(3, 512, 512, LAYERS, spec=spec), QualityChecker()
    try:
        for layer in range(LAYERS):
            image = build.layer(layer).image
            meta = FrameMeta(
                printer=pid, job_id="notify-job", layer=layer, z_mm=0.04 * (layer + 1), captured_at=time.time(),
                encoding="png", width=512, height=512, channels=1, bit_depth=8, quality=quality.check(image),
            )  # fmt: skip
            camera.publish(camera.topics.image, encode_frame(meta, encode_image(image)), wait_s=5)
        deadline = time.monotonic() + 120
        pm = monitor.monitors[pid]
        while pm.counters["layers"] < LAYERS and time.monotonic() < deadline:
            time.sleep(0.1)
        assert pm.build is not None
        record = pm.build.record.path
    finally:
        camera.close()
        monitor.close()  # waits for the notices queued
        printer.close()
    return monitor, record


def test_a_pause_reaches_the_webhook_with_its_evidence_and_link(
    broker: Mosquitto, tmp_path: Path, receiver: WebhookReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monitor, record = _run(broker, tmp_path, f"json://127.0.0.1:{receiver.port}/hook", monkeypatch)
    (_, post), *more = receiver.wait(1)
    assert more == []  # one pause, one notice (the warning-level notify rules are below this route's severity)
    assert "pause at layer" in post["title"] and "warping" in post["title"]
    assert "confirmed warping" in post["message"]
    link = post["message"].splitlines()[-1]
    assert link.startswith("http://farm.example:8050/?printer=notify-") and f"record={record.name}" in link
    (attachment,) = post["attachments"]
    png = cv2.imdecode(np.frombuffer(base64.b64decode(attachment["base64"]), np.uint8), cv2.IMREAD_COLOR)
    assert png is not None and png.shape[:2] == (512, 512)
    with RecordReader(record) as r:  # the rectangles the record keeps for the pause are outlined on the image
        (pause,) = [a for a in r.table("actions") if a["action"] == "pause" and a["state"] == "requested"]
        boxes = action_boxes([pause], request_id=pause["request_id"])
    assert boxes and all(tuple(png[y, x]) == (255, 255, 255) for x, y, _, _ in boxes)
    notifier = monitor.notifier
    assert notifier is not None and notifier.sent == 1 and notifier.failed == 0
    print(f"decision -> webhook: {1000 * notifier.latencies_s[0]:.0f} ms")


def test_a_receiver_that_is_down_is_said_in_the_record_and_the_build_goes_on(
    broker: Mosquitto, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, record = _run(broker, tmp_path, f"json://127.0.0.1:{free_port()}/nobody", monkeypatch)
    with RecordReader(record) as r:
        assert len(r.stored_layers()) == LAYERS
        failures = [e["message"] for e in r.table("events") if e["code"] == "notify_failed"]
        assert any(a["action"] == "pause" for a in r.table("actions"))
    assert failures and "refused the notice or was unreachable" in failures[0]
