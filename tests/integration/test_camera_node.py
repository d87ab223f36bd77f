"""The camera node on a real broker: one frame per layer, retries, refusals, and the CLI services end to end."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
from peers import REPO, Mosquitto, OctoPrint

from monitor.settings import EXIT_CONFIG
from monitor.sources import SimulatorSource
from printer_io.camera import CameraNode, CameraSettings, FolderSource
from printer_io.frames import decode_image
from printer_io.messages import EventMessage, FrameMeta, LayerEvent, decode_frame
from printer_io.mqtt import MqttConfig, MqttLink
from printer_io.topics import Topics

pytestmark = pytest.mark.integration
LAYERWATCH = str(Path(sys.executable).parent / "layerwatch")


class Monitor:
    """A stand-in for the monitor service: collects frames and events of one printer."""

    def __init__(self, broker: Mosquitto, topics: Topics) -> None:
        self.frames: list[tuple[FrameMeta, np.ndarray]] = []
        self.events: list[EventMessage] = []
        self.cond = threading.Condition()
        self.link = MqttLink(MqttConfig(url=broker.url), service="monitor", topics=topics)
        self.link.subscribe(topics.image, self._frame)
        self.link.subscribe(topics.event, self._event)

    def _frame(self, topic: str, payload: bytes) -> None:
        meta, data = decode_frame(payload, topic)
        with self.cond:
            self.frames.append((meta, decode_image(data, topic)))
            self.cond.notify_all()

    def _event(self, topic: str, payload: bytes) -> None:
        with self.cond:
            self.events.append(EventMessage.from_json(payload, topic))
            self.cond.notify_all()

    def wait(self, frames: int = 0, events: int = 0, timeout: float = 20) -> None:
        with self.cond:
            self.cond.wait_for(lambda: len(self.frames) >= frames and len(self.events) >= events, timeout)


@pytest.fixture
def topics(request: pytest.FixtureRequest) -> Topics:
    return Topics("layerwatch", f"cam-{request.node.name[:40].replace('[', '-').replace(']', '')}")


@pytest.fixture
def monitor(broker: Mosquitto, topics: Topics) -> Iterator[Monitor]:
    m = Monitor(broker, topics)
    m.link.start()
    yield m
    m.link.close()


def _node(broker: Mosquitto, topics: Topics, source: object, **kw: object) -> CameraNode:
    cfg = MqttConfig(url=broker.url, **{k: v for k, v in kw.items() if k == "max_frame_bytes"})  # type: ignore[arg-type]
    settings = CameraSettings(**{k: v for k, v in kw.items() if k != "max_frame_bytes"})  # type: ignore[arg-type]
    return CameraNode(MqttLink(cfg, service="camera", topics=topics), source, settings)  # type: ignore[arg-type]


def _trigger(broker: Mosquitto, topics: Topics, layers: list[int], payloads: list[bytes] = ()) -> None:  # type: ignore[assignment]
    with MqttLink(MqttConfig(url=broker.url), service="bridge", topics=topics) as bridge:
        for raw in payloads:
            bridge.publish(topics.layer, raw, wait_s=5)
        for n in layers:
            event = LayerEvent(printer=topics.printer, job_id="job-7", layer=n, z_mm=0.2 * (n + 1))
            bridge.publish(topics.layer, event.to_json(), wait_s=5)


def test_one_frame_per_layer_with_its_metadata(broker: Mosquitto, topics: Topics, monitor: Monitor) -> None:
    node = _node(broker, topics, SimulatorSource(seed=99, size=256, layers=10)).start()
    try:
        other = LayerEvent(printer="someone-else", job_id="j", layer=0, z_mm=0.2).to_json()
        _trigger(broker, topics, [0, 1, 2, 2, 3], payloads=[b"not json", other])  # layer 2 twice: one frame
        monitor.wait(frames=4)
        time.sleep(0.5)
    finally:
        node.close()
    assert [m.layer for m, _ in monitor.frames] == [0, 1, 2, 3]
    meta, image = monitor.frames[1]
    expected = SimulatorSource(seed=99, size=256, layers=10).grab(LayerEvent(printer="x", job_id="j", layer=1, z_mm=0))
    assert np.array_equal(image, expected)  # PNG: lossless, 16-bit kept
    assert (meta.width, meta.height, meta.job_id, meta.source) == (256, 256, "job-7", "simulator")
    assert meta.quality is not None and meta.z_mm == pytest.approx(0.4)
    assert meta.part_ids_bytes > 0  # the simulator knows the parts and sends them along
    assert dict(node.link.rejected) == {"json": 1, "printer": 1}


def test_a_failing_capture_is_retried_then_given_up_visibly(
    broker: Mosquitto, topics: Topics, monitor: Monitor, tmp_path: Path
) -> None:
    for i in range(2):
        cv2.imwrite(str(tmp_path / f"{i}.png"), (np.random.default_rng(i).random((64, 64)) * 255).astype(np.uint8))
    node = _node(broker, topics, FolderSource(tmp_path), attempts=3, retry_s=0.05).start()
    try:
        _trigger(broker, topics, [0, 5, 1])  # no image for layer 5
        monitor.wait(frames=2, events=4)
    finally:
        node.close()
    assert [m.layer for m, _ in monitor.frames] == [0, 1]  # the node went on after giving up layer 5
    codes = [(e.code, e.level.value, e.layer) for e in monitor.events]
    assert codes == [("capture_failed", "warning", 5)] * 3 + [("capture_gave_up", "error", 5)]
    assert node.given_up == 1


def test_an_oversized_frame_is_refused_with_an_error_event(broker: Mosquitto, topics: Topics, monitor: Monitor) -> None:
    node = _node(broker, topics, SimulatorSource(seed=5, size=256, layers=4), max_frame_bytes=2048).start()
    try:
        _trigger(broker, topics, [0])
        monitor.wait(events=1)
    finally:
        node.close()
    assert monitor.frames == []
    assert monitor.events[0].code == "frame_too_large" and "exceeds the limit of" in monitor.events[0].message


def _run(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([LAYERWATCH, *args], capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO)


def test_bridge_and_camera_services_end_to_end(broker: Mosquitto, topics: Topics, monitor: Monitor) -> None:
    common = ["--printer", topics.printer, "--broker", broker.url]
    camera = subprocess.Popen(
        [LAYERWATCH, "camera", *common, "--source", "simulator", "--size", "128", "--encoding", "jpeg"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert camera.stdout is not None and camera.stdout.readline().startswith("camera: simulator source")
    bridge = subprocess.Popen(
        [LAYERWATCH, "bridge", *common, "--backend", "virtual", "--layers", "4", "--layer-time", "0.3"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        monitor.wait(frames=4, timeout=30)
    finally:
        for proc in (bridge, camera):
            proc.send_signal(signal.SIGTERM)
        out_bridge, _ = bridge.communicate(timeout=20)
        out_camera, _ = camera.communicate(timeout=20)
    assert [m.layer for m, _ in monitor.frames] == [0, 1, 2, 3]
    assert all(m.encoding == "jpeg" and m.bit_depth == 8 for m, _ in monitor.frames)
    assert bridge.returncode == 0 and "stopped after 4 layer event(s)" in out_bridge
    assert camera.returncode == 0 and "4 frame(s) published" in out_camera


def test_layer_event_hook_publishes_one_event(broker: Mosquitto, topics: Topics) -> None:
    got: list[LayerEvent] = []
    link = MqttLink(MqttConfig(url=broker.url), service="monitor", topics=topics)
    link.subscribe(topics.layer, lambda t, p: got.append(LayerEvent.from_json(p, t)))
    with link.start():
        result = _run("layer-event", "--printer", topics.printer, "--broker", broker.url, "--job", "a.gcode",
                      "--layer", "12", "--z", "2.6")  # fmt: skip
        assert result.returncode == 0, result.stderr
        end = time.monotonic() + 5
        while not got and time.monotonic() < end:
            time.sleep(0.05)
    assert [(e.layer, e.z_mm, e.source) for e in got] == [(12, 2.6, "hook")]


def _one_line_error(result: subprocess.CompletedProcess[str], *words: str, code: int = 2) -> None:
    """One line on stderr naming ``words``; exit status ``code`` (78: the configuration must change)."""
    assert result.returncode == code, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for w in words:
        assert w in lines[0], lines[0]


def test_printer_command_against_octoprint(octoprint: OctoPrint, tmp_path: Path) -> None:
    key = tmp_path / "key"
    key.write_text(octoprint.api_key + "\n")
    key.chmod(0o600)  # as docs/printers.md asks (a key others can read is warned about)
    args = ["--backend", "octoprint", "--url", octoprint.url, "--api-key-file", str(key), "--printer", "op1"]
    result = _run("printer", "status", *args, "--connect-port", "VIRTUAL")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("op1: ")
    assert octoprint.api_key not in result.stdout + result.stderr
    result = _run("printer", "pause", *args)
    _one_line_error(result, "OctoPrint refused", "pause")
    result = _run("printer", "gcode", *args, "--gcode", "M117 hello from layerwatch")
    assert result.returncode == 0 and "sent 1 G-code line(s)" in result.stdout, result.stderr


def test_cli_bad_input_is_one_line(broker: Mosquitto, octoprint: OctoPrint, tmp_path: Path) -> None:
    bad_key = tmp_path / "key"
    bad_key.write_text("0" * 32)
    bad_key.chmod(0o600)
    _one_line_error(
        _run("printer", "status", "--backend", "octoprint", "--url", octoprint.url, "--api-key-file", str(bad_key)),
        "rejected the API key",
        code=EXIT_CONFIG,
    )
    _one_line_error(
        _run(
            "printer",
            "status",
            "--backend",
            "octoprint",
            "--url",
            octoprint.url,
            "--api-key-file",
            str(tmp_path / "no"),
        ),
        "OctoPrint API key file",
        "No such file",
        code=EXIT_CONFIG,
    )
    env = {**os.environ, "LAYERWATCH_MQTT_PASSWORD": "nope"}
    cfg = tmp_path / "lw.toml"
    cfg.write_text(f'[mqtt]\nurl = "{broker.auth_url}"\nusername = "lw-camera"\n')
    _one_line_error(
        _run(
            "layer-event", "--printer", "p", "--config", str(cfg), "--job", "j", "--layer", "0", "--z", "0.2", env=env
        ),
        "refused lw-camera",
        "LAYERWATCH_MQTT_PASSWORD",
        code=EXIT_CONFIG,
    )
    cfg.write_text("[mqtt]\nurll = 1\n")
    _one_line_error(
        _run("camera", "--printer", "p", "--config", str(cfg)), "[mqtt] has no key 'urll'", code=EXIT_CONFIG
    )
    _one_line_error(_run("camera", "--printer", "p", "--source", "folder"), "needs --path")
