"""The monitor service on the in-process bus: the whole layer path without a broker, and bad input.

Each step waits on an explicit signal (a result for the layer, the controller idle, the bus idle),
never on a sleep. The integration tests run the same path over a real Mosquitto.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from monitor.config import Config, MonitorSection, PrinterSection
from monitor.record import RecordReader
from monitor.service import MonitorService
from monitor.sources import SimulatorSource
from printer_io.bus import BusLink, MessageBus
from printer_io.camera import CameraNode, CameraSettings
from printer_io.messages import ActionMessage, LayerEvent, ResultMessage
from printer_io.printer import PrinterState
from printer_io.topics import Topics
from printer_io.virtual import VirtualPrinter
from printer_io.vocabulary import ActionKind, ActionState

PID = "p1"


@dataclass
class Rig:
    bus: MessageBus
    topics: Topics
    monitor: MonitorService
    printer: VirtualPrinter
    bridge: BusLink
    watch: BusLink
    results: dict[int, ResultMessage] = field(default_factory=dict)
    actions: list[ActionMessage] = field(default_factory=list)
    cond: threading.Condition = field(default_factory=threading.Condition)

    def layer(self, job: str, k: int, timeout: float = 60) -> ResultMessage:
        """Announce layer ``k`` (the camera captures it) and wait for the monitor's result."""
        event = LayerEvent(printer=PID, job_id=job, layer=k, z_mm=0.04 * (k + 1), source="test")
        self.bridge.publish(self.topics.layer, event.to_json())
        with self.cond:
            assert self.cond.wait_for(lambda: k in self.results, timeout), f"no result for layer {k}"
            return self.results[k]


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    from segmentation.simulator import scenario_spec

    spec = scenario_spec(3, 512, 12, warp_start=3)
    bus = MessageBus()
    topics = Topics("layerwatch", PID)
    config = Config(
        monitor=MonitorSection(out_dir=tmp_path, mm_per_px=spec.mm_per_px, layer_thickness_mm=spec.layer_thickness),
        printers={PID: PrinterSection(backend="virtual")},
    )
    printer = VirtualPrinter(PID, layers=12, realtime=False, pause_delay_s=0.05).start()
    printer.start_job("bus-job")
    monitor = MonitorService(config, printers={PID: printer}, bus=bus).start()
    camera = CameraNode(bus.link(service="camera", topics=topics), SimulatorSource(spec=spec), CameraSettings())
    camera.start()
    links = bus.link(service="bridge", topics=topics), bus.link(service="watch", topics=topics)
    rig = Rig(bus, topics, monitor, printer, *links)

    def on_result(topic: str, payload: bytes) -> None:
        r = ResultMessage.from_json(payload, topic)
        with rig.cond:
            rig.results[r.layer] = r
            rig.cond.notify_all()

    def on_action(topic: str, payload: bytes) -> None:
        with rig.cond:
            rig.actions.append(ActionMessage.from_json(payload, topic))

    rig.watch.subscribe(topics.result, on_result)
    rig.watch.subscribe(topics.action, on_action)
    rig.watch.start()
    rig.bridge.start()
    yield rig
    for closer in (rig.bridge, rig.watch, camera, monitor, printer):
        closer.close()


def test_a_growing_warp_pauses_the_printer_with_its_evidence_recorded(rig: Rig) -> None:
    results = [rig.layer("bus-job", k) for k in range(12)]
    assert all(r.judged or r.layer < 3 for r in results)  # the first layers give the build's lighting
    pm = rig.monitor.monitors[PID]
    pm.controller.wait_idle(30)
    rig.watch.wait_idle(30)
    pauses = [a for a in rig.actions if a.action == ActionKind.PAUSE]
    assert [a.state for a in pauses] == [ActionState.REQUESTED, ActionState.CONFIRMED], rig.actions
    assert pauses[0].layer is not None and 3 < pauses[0].layer <= 3 + 6  # after the onset, within 6 layers
    assert rig.printer.status().state == PrinterState.PAUSED
    assert pm.build is not None
    with RecordReader(pm.build.record.path) as r:
        assert [int(k) for k in r.stored_layers()] == list(range(12))
        assert [a["state"] for a in r.table("actions") if a["action"] == "pause"] == ["requested", "confirmed"]


def test_malformed_messages_are_counted_and_the_service_goes_on(rig: Rig) -> None:
    from hostile import malformed_messages

    pm = rig.monitor.monitors[PID]
    for suffix, payload in malformed_messages(200, PID, "bus-job", seed=5):
        rig.bridge.publish(f"{rig.topics.prefix}/{PID}/{suffix}", payload)
    assert isinstance(pm.link, BusLink) and pm.link.wait_idle(60)
    assert sum(pm.link.rejected.values()) > 100, pm.link.rejected
    r = rig.layer("bus-job", 0)
    assert r.layer == 0 and r.printer == PID  # still judging after the flood
