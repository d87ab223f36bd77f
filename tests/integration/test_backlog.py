"""No layer lost across a restart, and every message bounded by its topic (issue 31), on a real Mosquitto.

A monitor stopped while the camera publishes a backlog of 40 (and 400) layers at 512 px takes them all in order
when it comes back (the broker holds what its Receive Maximum does not let through yet): every layer judged and
stored, none dropped, none acted on as live, and acting resumes with the first live layer. A frame far ahead of the
printer's layer events is refused; a second, different frame for a stored layer is recorded as a conflict; an
oversized message on any topic is refused before it is parsed."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from peers import Mosquitto, wait_until

from monitor.config import Config, MonitorSection, PrinterSection
from monitor.record import RecordReader, build_records
from monitor.service import MonitorService
from printer_io.frames import encode_image
from printer_io.messages import FrameMeta, LayerEvent, encode_frame
from printer_io.mqtt import MqttConfig, MqttLink
from printer_io.topics import Topics
from segmentation.simulator import SimBuild, scenario_spec

pytestmark = [pytest.mark.integration, pytest.mark.slow]


class Camera:
    """The printer's layer events and its camera's frames, published as the bridge and the camera would."""

    def __init__(self, broker: Mosquitto, topics: Topics, layers: int, warp: int | None, job: str) -> None:
        spec = scenario_spec(7, 512, layers, warp_start=warp)
        self.build = SimBuild(7, 512, 512, layers, spec=spec)
        self.topics, self.job = topics, job
        self.link = MqttLink(MqttConfig(url=broker.url), service="camera", topics=topics).start()

    def frame(self, layer: int, captured_at: float, image: np.ndarray | None = None) -> bytes:
        img = self.build.layer(layer).image if image is None else image
        meta = FrameMeta(
            printer=self.topics.printer, job_id=self.job, layer=layer, z_mm=0.04 * (layer + 1),
            captured_at=captured_at, encoding="png", width=img.shape[1], height=img.shape[0], channels=1,
            bit_depth=8, source="simulator",
        )  # fmt: skip
        return encode_frame(meta, encode_image(img))

    def layer(self, layer: int, captured_at: float | None = None) -> None:
        event = LayerEvent(printer=self.topics.printer, job_id=self.job, layer=layer, z_mm=0.04 * (layer + 1))
        self.link.publish(self.topics.layer, event.to_json(), wait_s=10)
        self.link.publish(self.topics.image, self.frame(layer, captured_at or time.time()), wait_s=10)

    def close(self) -> None:
        self.link.close()


@pytest.fixture
def site(broker: Mosquitto, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[tuple[Config, Topics]]:
    pid = f"b-{request.node.name[5:30].replace('_', '-')}-{int(time.time() * 1000) % 100_000}"
    config = Config(
        mqtt=MqttConfig(url=broker.url),
        monitor=MonitorSection(out_dir=tmp_path / "records", models_dir=tmp_path / "models", mm_per_px=0.1),
        printers={pid: PrinterSection(backend="none")},
    )
    yield config, Topics("layerwatch", pid)


def _stored(config: Config, topics: Topics) -> list[int]:
    paths = build_records(config.monitor.out_dir / topics.printer)
    if not paths:
        return []
    with RecordReader(paths[0]) as r:
        return [int(k) for k in r.stored_layers()]


@pytest.mark.parametrize("backlog", [40, 400])
def test_a_backlog_published_while_the_monitor_was_down_is_judged_in_order_and_not_acted_on(
    site: tuple[Config, Topics], broker: Mosquitto, backlog: int
) -> None:
    config, topics = site
    first, layers = 3, 3 + backlog + 1
    warp = first + backlog // 2  # a warp grows in the backlog: the policy holds on it, but nothing acts
    camera = Camera(broker, topics, layers, warp, "backlog-job")
    with MonitorService(config).start():
        for k in range(first):
            camera.layer(k)
        wait_until("the first layers stored", lambda: _stored(config, topics) == list(range(first)), 60)
    # the monitor is down for ten minutes (its frames were captured then); its session at the broker holds them
    outage = time.time() - 600
    for k in range(first, first + backlog):
        camera.layer(k, captured_at=outage + k * 0.1)
    with MonitorService(config).start() as service:
        wait_until(
            f"{backlog} waiting layers stored", lambda: len(_stored(config, topics)) == first + backlog, 60 + backlog
        )
        camera.layer(first + backlog)  # live again
        wait_until("the live layer stored", lambda: len(_stored(config, topics)) == layers, 60)
        link = service.monitors[topics.printer].link
        rejected = dict(link.rejected)
    camera.close()
    assert _stored(config, topics) == list(range(layers))  # every layer, once, in order
    assert rejected == {}, rejected  # nothing dropped, nothing refused
    (path,) = build_records(config.monitor.out_dir / topics.printer)
    with RecordReader(path) as r:
        rows = r.layers()
        events = [(int(e["layer"]), str(e["code"])) for e in r.table("events")]
        actions = [(int(a["layer"]), str(a["action"])) for a in r.table("actions")]
    assert all(bool(rows[k]["judged"]) for k in range(layers))
    assert (first, "backlog") in events and (first + backlog, "caught_up") in events
    assert not any(code in ("frames_dropped", "layers_missing") for _, code in events), events
    # not acted on while the print had moved on: the first action (the warp, if it holds) is the live layer's
    assert all(layer == first + backlog for layer, _ in actions), actions


def test_a_frame_ahead_of_the_printer_is_refused_and_a_second_frame_for_a_layer_is_a_conflict(
    site: tuple[Config, Topics], broker: Mosquitto
) -> None:
    config, topics = site
    camera = Camera(broker, topics, 8, None, "forged-job")
    with MonitorService(config).start() as service:
        for k in range(3):
            camera.layer(k)
        wait_until("3 layers stored", lambda: _stored(config, topics) == [0, 1, 2], 60)
        # before the camera's own frame of layer 3 (and the printer's event for it): a forged one
        camera.link.publish(topics.image, camera.frame(3, time.time()), wait_s=10)
        # and another frame for layer 1, unlike the one stored
        other = np.full((512, 512), 90, np.uint8)
        camera.link.publish(topics.image, camera.frame(1, time.time(), image=other), wait_s=10)
        camera.layer(3)  # the printer's event and the camera's frame: stored as usual
        wait_until("layer 3 stored", lambda: _stored(config, topics) == [0, 1, 2, 3], 60)
        rejected = dict(service.monitors[topics.printer].link.rejected)
    camera.close()
    assert rejected == {"layer": 1}, rejected
    (path,) = build_records(config.monitor.out_dir / topics.printer)
    with RecordReader(path) as r:
        codes = [str(e["code"]) for e in r.table("events")]
        kept = r.image(1)
    assert "layer_refused" in codes and codes.count("frame_conflict") == 1
    assert not np.array_equal(kept, np.full((512, 512), 90, np.uint8))  # the first frame is kept


def test_oversized_messages_are_refused_by_topic_before_they_are_parsed(
    site: tuple[Config, Topics], broker: Mosquitto
) -> None:
    config, topics = site
    camera = Camera(broker, topics, 4, None, "big-job")
    sender = MqttLink(MqttConfig(url=broker.url, max_frame_bytes=64 << 20), service="big", topics=topics).start()
    with MonitorService(config).start() as service:
        camera.layer(0)
        wait_until("layer 0 stored", lambda: _stored(config, topics) == [0], 60)
        link = service.monitors[topics.printer].link
        big_event = LayerEvent(printer=topics.printer, job_id="x" * 200, layer=1, z_mm=0.1).to_json()
        sender.publish(topics.layer, big_event[:-1] + b" " * (2 << 20) + b"}", wait_s=10)  # 2 MB of JSON
        sender.publish(topics.action, b"{" + b" " * (3 << 20) + b"}", wait_s=10)
        # 20 MB on the frame topic: more than the 16 MB (and envelope) the monitor told the broker it takes
        sender.publish(topics.image, b"LWF1" + bytes(20 << 20), wait_s=30)
        camera.layer(1)
        wait_until("layer 1 stored", lambda: _stored(config, topics) == [0, 1], 60)
        rejected = dict(link.rejected)
    sender.close()
    camera.close()
    assert rejected == {"size": 2}, rejected  # the event and the action; the frame the broker did not deliver
