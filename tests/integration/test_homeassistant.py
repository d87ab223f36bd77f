"""Home Assistant MQTT discovery on a real Mosquitto: the device's entities are announced (retained), the
state follows the layers, and the Pause button pauses the printer through the signed control path, recorded
with the operator it signs as; without that operator in the operators file, a press pauses nothing."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
from peers import Mosquitto

from monitor.config import Config, HomeAssistantSection, MonitorSection, PrinterSection, SecuritySection
from monitor.record import RecordReader
from monitor.service import MonitorService
from printer_io.credentials import new_secret
from printer_io.frames import QualityChecker, encode_image
from printer_io.messages import FrameMeta, encode_frame
from printer_io.mqtt import MqttConfig, MqttLink
from printer_io.printer import PrinterState
from printer_io.topics import Topics
from printer_io.virtual import VirtualPrinter
from segmentation.simulator import SimBuild, scenario_spec

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("known", [True, False])
def test_discovery_state_and_the_pause_button(broker: Mosquitto, tmp_path: Path, known: bool) -> None:
    pid = f"ha-{int(known)}"
    operators = tmp_path / "operators"
    operators.write_text(f"homeassistant:{new_secret()}\n" if known else f"ana:{new_secret()}\n")
    operators.chmod(0o600)
    spec = scenario_spec(3, 256, 4)
    config = Config(
        mqtt=MqttConfig(url=broker.url),
        monitor=MonitorSection(out_dir=tmp_path / "records", models_dir=tmp_path / "models", mm_per_px=spec.mm_per_px),
        printers={pid: PrinterSection(backend="virtual")},
        security=SecuritySection(operators_file=operators),
        homeassistant=HomeAssistantSection(enabled=True),
    )
    printer = VirtualPrinter(pid, layers=100, realtime=False).start()
    printer.start_job("ha-job")
    seen: dict[str, bytes] = {}
    cond = threading.Condition()

    def on_any(topic: str, payload: bytes) -> None:
        with cond:
            seen[topic] = payload
            cond.notify_all()

    topics = Topics("layerwatch", pid)
    watch = MqttLink(MqttConfig(url=broker.url), service="ha-watch", topics=topics)
    watch.subscribe(f"homeassistant/+/layerwatch_{pid}/+/config", on_any)
    watch.subscribe(f"layerwatch/{pid}/ha/state", on_any)
    watch.start()
    monitor = MonitorService(config, printers={pid: printer}).start()
    try:
        camera = MqttLink(MqttConfig(url=broker.url), service="camera", topics=topics).start()
        image = SimBuild(3, 256, 256, 4, spec=spec).layer(0).image
        meta = FrameMeta(
            printer=pid, job_id="ha-job", layer=0, z_mm=0.04, captured_at=time.time(), encoding="png", width=256,
            height=256, channels=1, bit_depth=8, quality=QualityChecker().check(image),
        )  # fmt: skip
        camera.publish(topics.image, encode_frame(meta, encode_image(image)), wait_s=5)
        camera.close()
        state_topic = f"layerwatch/{pid}/ha/state"
        with cond:
            assert cond.wait_for(lambda: state_topic in seen and len(seen) >= 7, 60), sorted(seen)
        button = json.loads(seen[f"homeassistant/button/layerwatch_{pid}/pause/config"])
        assert button["command_topic"] == f"layerwatch/{pid}/ha/pause" and button["payload_press"] == "PRESS"
        sensors = {t.split("/")[3] for t in seen if t.startswith("homeassistant/sensor/")}
        assert sensors == {"state", "job", "layer", "severity", "incident"}
        state = json.loads(seen[state_topic])
        assert state["job"] == "ha-job" and state["layer"] == 0 and state["severity"] == "ok"
        # Home Assistant presses the button: a plain MQTT message with its payload
        ha = MqttLink(MqttConfig(url=broker.url), service="homeassistant", topics=topics).start()
        ha.publish(button["command_topic"], b"PRESS", wait_s=5)
        ha.close()
        deadline = time.monotonic() + 20
        while known and printer.status().state != PrinterState.PAUSED and time.monotonic() < deadline:
            time.sleep(0.1)
        if not known:
            time.sleep(2)  # no broker-side signal for "handled": give the press time to be refused
        pm = monitor.monitors[pid]
        assert pm.build is not None
        with RecordReader(pm.build.record.path) as r:
            pauses = [a for a in r.table("actions") if a["action"] == "pause"]
    finally:
        monitor.close()
        watch.close()
        printer.close()
    if known:
        assert printer.status().state == PrinterState.PAUSED
        assert pauses and pauses[0]["rule"] == "operator" and "homeassistant" in pauses[0]["detail"]
    else:
        assert pauses == [] and printer.status().state != PrinterState.PAUSED
