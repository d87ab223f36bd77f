"""The monitor service on the in-process bus: the whole layer path without a broker, and bad input.

Each step waits on an explicit signal (a result for the layer, the controller idle, the bus idle),
never on a sleep. The integration tests run the same path over a real Mosquitto.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import h5py
import pytest

from monitor.config import Config, MonitorSection, PrinterSection, SecuritySection
from monitor.record import RecordReader
from monitor.service import MonitorService
from monitor.sources import SimulatorSource
from printer_io.bus import BusLink, MessageBus
from printer_io.camera import CameraNode, CameraSettings
from printer_io.credentials import Credential, sign
from printer_io.messages import ActionMessage, LabelStroke, LayerEvent, ResultMessage
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


OPERATOR = Credential("ana", "s" * 32)


@pytest.fixture
def rig(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Rig]:
    from segmentation.simulator import scenario_spec

    spec = scenario_spec(3, 512, 12, warp_start=3)
    bus = MessageBus()
    topics = Topics("layerwatch", PID)
    operators = tmp_path / "operators"
    operators.write_text(f"{OPERATOR.name}:{OPERATOR.secret}\n")
    operators.chmod(0o600)
    config = Config(
        monitor=MonitorSection(
            out_dir=tmp_path / "records",
            models_dir=tmp_path / "models",
            shadow_model=_other_model(tmp_path) if request.node.get_closest_marker("shadow") else None,
            drift_reference_layers=5,
            drift_window=4,
            mm_per_px=spec.mm_per_px,
            layer_thickness_mm=spec.layer_thickness,
        ),
        printers={PID: PrinterSection(backend="virtual")},
        security=SecuritySection(operators_file=operators),
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
    # drift: the printer's reference under this model was taken on its first 5 layers and kept for later builds
    (reference,) = (pm.build.record.path.parent).glob("drift-*.json")
    assert reference.name == f"drift-{rig.monitor.model_sha256[:12]}.json"


def test_a_monitor_restarted_mid_build_decides_as_one_that_ran_through(rig: Rig, tmp_path: Path) -> None:
    """The lighting reference, the metrics' memory of earlier layers (warping confirmed across layers) and
    the rule windows come back from the record: the next layers are judged as without the restart."""
    from monitor.replay import ReplayOptions, run_replay

    before = [rig.layer("bus-job", k) for k in range(5)]
    rig.monitor.release_printer(PID, publish_offline=False)  # lets go of the record as a crash would leave it
    rig.monitor.open_printer(PID)
    after = [rig.layer("bus-job", k) for k in range(5, 12)]
    pm = rig.monitor.monitors[PID]
    pm.controller.wait_idle(30)
    rig.watch.wait_idle(30)
    assert pm.build is not None
    alone = run_replay(ReplayOptions(source=pm.build.record.path, out=tmp_path / "alone.h5", progress=False,
                                     models_dir=tmp_path / "models"))  # fmt: skip
    assert [r.severity for r in before + after] == [r.severity for r in sorted(alone.results, key=lambda r: r.layer)]
    requested = [(a.layer, a.action) for a in rig.actions if a.state == ActionState.REQUESTED]
    assert requested == [(a.layer, a.action) for a in alone.actions if a.state == ActionState.REQUESTED]
    assert any(action == ActionKind.PAUSE for _, action in requested)


def test_a_restarted_monitor_refills_the_drift_window_from_the_record(rig: Rig) -> None:
    for k in range(6):
        rig.layer("bus-job", k)

    def watch(pm: Any) -> Any:
        drift = pm.observers.get("drift")
        return drift.watch if drift is not None else None

    pm = rig.monitor.monitors[PID]
    assert isinstance(pm.link, BusLink) and pm.link.wait_idle(30)  # the observers run after the result is out
    live = watch(pm)
    assert live is not None
    before = dict(live.window_stats())
    rig.monitor.release_printer(PID, publish_offline=False)
    rig.monitor.open_printer(PID)
    rig.layer("bus-job", 6)
    pm = rig.monitor.monitors[PID]
    assert isinstance(pm.link, BusLink) and pm.link.wait_idle(30)
    heir = watch(pm)
    assert heir is not None and heir is not live
    # without the refill the window would hold layer 6 alone and a drift would wait 4 more layers
    assert heir.describe()["window_layers"] == [3, 4, 5, 6]
    for layer, stats in heir.window_stats()[:3]:  # measured again from the stored frame and mask: the same
        assert stats.keys() == before[layer].keys()
        for key, value in stats.items():
            assert value == pytest.approx(before[layer][key], rel=1e-5, abs=1e-6), (layer, key)


def test_whether_a_printer_is_between_builds_is_read_under_its_lock(rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    """A site worker above its share asks each printer it holds whether it is between builds, while frames are
    handled. The newest record is read under the printer's lock: HDF5 refuses to open a file for writing while the
    process has it open to read, and a read beside the handler cost the layer it was opening the record for."""
    import monitor.service as service

    rig.layer("bus-job", 0)
    rig.monitor.release_printer(PID, publish_offline=False)  # taken over: its record is left "writing"
    pm = rig.monitor.open_printer(PID)
    reads: list[bool] = []
    real = service.RecordReader

    def reader(path: Path) -> RecordReader:
        reads.append(pm.lock._is_owned())  # type: ignore[attr-defined]
        return real(path)

    monkeypatch.setattr(service, "RecordReader", reader)
    assert not pm.between_builds()  # no build opened since the take, and the newest record is being written
    assert reads == [True]
    assert rig.layer("bus-job", 1).layer == 1
    assert not pm.between_builds()  # its live build
    pm.close_build("closed")
    assert pm.between_builds()
    assert reads and all(reads)


@pytest.mark.shadow
def test_the_shadow_model_goes_on_judging_after_a_restart_from_its_stored_masks(rig: Rig) -> None:
    for k in range(4):
        rig.layer("sh-job", k)
    rig.monitor.monitors[PID].link.wait_idle(30)  # type: ignore[attr-defined]
    rig.monitor.release_printer(PID, publish_offline=False)
    pm = rig.monitor.open_printer(PID)
    for k in range(4, 7):
        rig.layer("sh-job", k)
    assert isinstance(pm.link, BusLink) and pm.link.wait_idle(30)
    assert pm.build is not None and pm.counters["shadow_failed"] == 0
    with RecordReader(pm.build.record.path) as r:
        shadow = r.shadow_layers()
    assert sorted(shadow) == list(range(7))
    # the shadow's porosity rule (it calls porosity everywhere) kept its window over the restart: it would
    # have acted on the first layers after it, as on those before
    assert shadow[4]["would_act"] == shadow[3]["would_act"], shadow


def test_malformed_messages_are_counted_and_the_service_goes_on(rig: Rig) -> None:
    from hostile import malformed_messages

    pm = rig.monitor.monitors[PID]
    for suffix, payload in malformed_messages(200, PID, "bus-job", seed=5):
        rig.bridge.publish(f"{rig.topics.prefix}/{PID}/{suffix}", payload)
    assert isinstance(pm.link, BusLink) and pm.link.wait_idle(60)
    assert sum(pm.link.rejected.values()) > 100, pm.link.rejected
    r = rig.layer("bus-job", 0)
    assert r.layer == 0 and r.printer == PID  # still judging after the flood


def _label_request(job: str, layer: int, strokes: list[LabelStroke], cred: Credential = OPERATOR) -> ActionMessage:
    msg = ActionMessage(
        printer=PID, action=ActionKind.LABEL, state=ActionState.REQUESTED, request_id=f"t:{uuid.uuid4().hex[:8]}",
        job_id=job, layer=layer, labels=strokes,
    )  # fmt: skip
    return sign(msg, cred)


def test_operators_label_a_layer_and_bad_strokes_are_refused_with_a_reason(rig: Rig) -> None:
    from monitor.labels import export_labels
    from segmentation.classes import NO_DEFECT, UNLABELLED

    for k in range(3):
        rig.layer("lab-job", k)
    good = _label_request(
        "lab-job",
        1,
        [
            LabelStroke(kind="region", label=NO_DEFECT, points=[(10, 10), (200, 10), (200, 200), (10, 200)]),
            LabelStroke(kind="brush", label=2, width=9, points=[(300, 300), (340, 300)]),
            LabelStroke(kind="brush", label=UNLABELLED, width=5, points=[(20, 20), (60, 20)]),  # erase a bit
        ],
    )
    bad = {
        "outside": _label_request("lab-job", 1, [LabelStroke(kind="brush", label=2, points=[(600, 10)])]),
        "unstored": _label_request("lab-job", 9, [LabelStroke(kind="frame", label=NO_DEFECT)]),
        "class": _label_request("lab-job", 1, [LabelStroke(kind="frame", label=17)]),
        "forged": _label_request(
            "lab-job", 1, [LabelStroke(kind="frame", label=NO_DEFECT)], Credential("ana", "x" * 32)
        ),
    }
    for msg in (good, *bad.values()):
        rig.bridge.publish(rig.topics.action, msg.to_json())
    pm = rig.monitor.monitors[PID]
    assert isinstance(pm.link, BusLink) and pm.link.wait_idle(30)
    rig.watch.wait_idle(30)
    answers = {a.request_id: a for a in rig.actions if a.state != ActionState.REQUESTED}
    assert answers[good.request_id].state == ActionState.CONFIRMED, answers[good.request_id].detail
    reasons = {k: answers[m.request_id].detail for k, m in bad.items()}
    assert all(answers[m.request_id].state == ActionState.FAILED for m in bad.values()), reasons
    assert "outside the 512x512 px frame" in reasons["outside"]
    assert "no stored layer 9" in reasons["unstored"]
    assert "label 17 is not a class id" in reasons["class"]
    assert "refused" in reasons["forged"]
    assert pm.build is not None
    record = pm.build.record.path
    pm.close_build("closed", "lab-job")
    with RecordReader(record) as r:
        rows = r.table("labels")
    assert [(row["operator"], row["kind"], row["layer"]) for row in rows] == [
        ("ana", "region", 1), ("ana", "brush", 1), ("ana", "brush", 1)
    ]  # fmt: skip
    counts = export_labels([record], rig_out := record.parent / "export")
    assert counts["layers"] == 1 and counts["strokes"] == 1
    mask = cv2.imread(str(rig_out / "masks" / f"{record.stem}-00001.png"), cv2.IMREAD_UNCHANGED)
    assert mask is not None
    assert mask[100, 100] == NO_DEFECT and mask[20, 40] == UNLABELLED and mask[300, 320] == 2
    assert mask[400, 50] == UNLABELLED


def test_a_closed_build_is_labelled_in_place_and_keeps_its_state(rig: Rig) -> None:
    from segmentation.classes import NO_DEFECT

    rig.layer("old-job", 0)
    pm = rig.monitor.monitors[PID]
    assert pm.build is not None
    record = pm.build.record.path
    pm.close_build("closed", "old-job")
    msg = _label_request("old-job", 0, [LabelStroke(kind="frame", label=NO_DEFECT)])
    rig.bridge.publish(rig.topics.action, msg.to_json())
    assert isinstance(pm.link, BusLink) and pm.link.wait_idle(30)
    rig.watch.wait_idle(30)
    answer = next(a for a in rig.actions if a.request_id == msg.request_id and a.state != ActionState.REQUESTED)
    assert answer.state == ActionState.CONFIRMED, answer.detail
    with RecordReader(record) as r:
        assert r.state == "closed" and [row["kind"] for row in r.table("labels")] == ["frame"]


def test_a_promoted_model_is_picked_up_without_a_restart_and_a_rollback_too(rig: Rig, tmp_path: Path) -> None:
    import shutil
    import time

    from monitor.models import ModelStore
    from segmentation.inference import DEFAULT_MODEL

    assert rig.layer("m-job", 0).model.startswith(f"{DEFAULT_MODEL.stem}@")
    candidate = tmp_path / "candidate" / "tuned.pt"
    candidate.parent.mkdir()
    shutil.copyfile(DEFAULT_MODEL, candidate)
    shutil.copyfile(DEFAULT_MODEL.with_suffix(".onnx"), candidate.with_suffix(".onnx"))
    store = ModelStore(tmp_path / "models")
    entry = store.promote(candidate, by="ana", why="learnt the glare", forced=False, evaluation={"refusals": []})

    def model_becomes(prefix: str) -> None:
        deadline = time.monotonic() + 30
        while not rig.monitor.model_id.startswith(prefix) and time.monotonic() < deadline:
            time.sleep(0.05)  # the monitor's watcher looks at the store every second
        assert rig.monitor.model_id.startswith(prefix), rig.monitor.model_id

    model_becomes(f"{entry.id}@")  # the store keeps it as <id>/model.pt, id = name-sha
    assert entry.id.startswith("tuned-") and rig.layer("m-job", 1).model.startswith(f"{entry.id}@")
    store.rollback(by="bo", why="pauses late on printer 3")
    model_becomes(f"{DEFAULT_MODEL.stem}@")
    assert rig.layer("m-job", 2).model.startswith(f"{DEFAULT_MODEL.stem}@")
    assert [(e.event, e.id, e.by) for e in store.history()] == [
        ("promote", entry.id, "ana"), ("rollback", "shipped", "bo")
    ]  # fmt: skip
    pm = rig.monitor.monitors[PID]
    assert pm.build is not None
    with RecordReader(pm.build.record.path) as r:
        changes = [e["message"] for e in r.table("events") if e["code"] == "model_changed"]
    assert len(changes) == 2 and f"to {entry.id}@" in changes[0] and f"to {DEFAULT_MODEL.stem}@" in changes[1], changes


def _other_model(tmp_path: Path) -> Path:
    """The shipped model with its last layer's weights changed: another model that judges differently."""
    import torch

    from segmentation.inference import DEFAULT_MODEL

    ckpt = torch.load(DEFAULT_MODEL, map_location="cpu", weights_only=False)
    state = ckpt["state_dict"]
    last = "unet.segmentation_head.0.bias"
    state[last] = state[last] + torch.tensor([0.0, 0.0, 12.0, 0.0, 0.0])  # porosity wherever it was in doubt
    out = tmp_path / "shadow.pt"
    torch.save(ckpt, out)
    return out


@pytest.mark.shadow
def test_a_shadow_model_judges_beside_the_model_in_use_and_acts_on_nothing(rig: Rig) -> None:
    results = [rig.layer("sh-job", k) for k in range(6)]
    pm = rig.monitor.monitors[PID]
    assert isinstance(pm.link, BusLink) and pm.link.wait_idle(30)  # the shadow runs after the result is out
    pm.controller.wait_idle(30)
    rig.watch.wait_idle(30)
    assert all(r.model.startswith("layerwatch-unet@") for r in results)  # the model in use judges and acts
    assert not [a for a in rig.actions if a.action == ActionKind.PAUSE]  # the warp from layer 3 is paused at 7
    assert pm.build is not None
    with RecordReader(pm.build.record.path) as r:
        shadow = r.shadow_layers()
        assert r.shadow_model is not None and r.shadow_model["id"].startswith("shadow@")
        assert sorted(shadow) == list(range(6))
        mask = r.shadow_mask(5)
        assert mask is not None and mask.shape == r.mask(5).shape
        # the shadow calls far more porosity, so it disagrees and would have adjusted the flow; nothing was
        assert (mask == 2).sum() > 2 * (r.mask(5) == 2).sum() and shadow[5]["disagree"] > 0
        assert any(row["would_act"] and "porosity-in-parts" in row["rules"] for row in shadow.values()), shadow
        assert [a for a in r.table("actions") if a["action"] in ("pause", "gcode")] == []


def test_a_broken_model_store_keeps_the_model_in_use_and_is_said_once(rig: Rig, tmp_path: Path) -> None:
    import time

    from monitor.models import ModelStore

    rig.layer("b-job", 0)
    store = ModelStore(tmp_path / "models")
    store.root.mkdir(parents=True, exist_ok=True)
    store.current_file.write_text("{not json")
    before = rig.monitor.model_id
    deadline = time.monotonic() + 30
    pm = rig.monitor.monitors[PID]
    assert pm.build is not None
    said: list[str] = []
    while not said and time.monotonic() < deadline:
        time.sleep(0.05)  # the watcher looks at the store every second
        with RecordReader(pm.build.record.path) as r:
            said = [e["message"] for e in r.table("events") if e["code"] == "model_not_switched"]
    rig.monitor.tick()  # two more looks at the unchanged store, driven here instead of waited for
    rig.monitor.tick()
    with RecordReader(pm.build.record.path) as r:
        said = [e["message"] for e in r.table("events") if e["code"] == "model_not_switched"]
    assert len(said) == 1 and "not JSON" in said[0], said
    assert rig.monitor.model_id == before and rig.layer("b-job", 1).model == before


def test_an_after_recoat_frame_is_kept_and_gives_the_builds_lighting(rig: Rig) -> None:
    import numpy as np

    from printer_io.frames import encode_image
    from printer_io.messages import FrameMeta, encode_frame

    h = w = 512
    powder = np.clip(np.tile(np.linspace(60, 140, w), (h, 1)), 0, 255).astype(np.uint8)  # lit from the right
    meta = FrameMeta(
        printer=PID, job_id="rc-job", layer=0, z_mm=0.04, captured_at=0.0, encoding="png", width=w, height=h,
        channels=1, bit_depth=8, view="recoat",
    )  # fmt: skip
    rig.bridge.publish(rig.topics.image, encode_frame(meta, encode_image(powder)))
    results = [rig.layer("rc-job", k) for k in range(3)]
    assert [r.layer for r in results] == [0, 1, 2]  # the recoat frame is no layer of its own
    pm = rig.monitor.monitors[PID]
    assert pm.build is not None and pm.build.illum is not None
    with RecordReader(pm.build.record.path) as r:
        seen = r.illumination()
        assert seen is not None and seen[1] == 0  # the lighting from the powder, used from layer 0 on
        assert results[0].judged  # judged at once: no first layers spent learning the lighting
    with h5py.File(pm.build.record.path, "r", swmr=True) as f:
        assert np.array_equal(f["slices/camera_data/visible/1"][0], powder)


def _bus_monitor(tmp_path: Path, monitor: MonitorSection, printer: PrinterSection) -> tuple[MessageBus, MonitorService]:
    bus = MessageBus()
    config = Config(monitor=monitor, printers={PID: printer})
    return bus, MonitorService(config, printers={}, bus=bus).start()


def test_units_come_from_the_printer_and_the_camera_and_a_disagreement_with_the_config_is_said(
    tmp_path: Path,
) -> None:
    from segmentation.simulator import scenario_spec

    spec = scenario_spec(3, 256, 8)  # the camera reports its 0.2 mm a pixel
    bus, monitor = _bus_monitor(
        tmp_path,
        MonitorSection(out_dir=tmp_path / "records", models_dir=tmp_path / "models", mm_per_px=0.1),
        PrinterSection(backend="none", mm_per_px=0.25),  # the printer's table says otherwise: it wins, said
    )
    topics = Topics("layerwatch", PID)
    camera = CameraNode(bus.link(service="camera", topics=topics), SimulatorSource(spec=spec), CameraSettings()).start()
    bridge = bus.link(service="bridge", topics=topics).start()
    try:
        for k in range(6):  # layers of 0.2 mm (the [monitor] default is 0.04, not set in this config: no warning)
            bridge.publish(topics.layer, LayerEvent(printer=PID, job_id="j", layer=k, z_mm=0.2 * (k + 1)).to_json())
        pm = monitor.monitors[PID]
        deadline = threading.Event()
        for _ in range(600):
            if pm.counters["layers"] >= 6:
                break
            deadline.wait(0.1)
        path = pm.last_record
    finally:
        for closer in (bridge, camera, monitor):
            closer.close()
    assert path is not None
    with RecordReader(path) as r:
        assert float(r.attrs["material/layer_thickness"]) == pytest.approx(0.2)  # the printer's z steps
        assert float(r.attrs["layerwatch/mm_per_px"]) == pytest.approx(0.25)  # the printer's table wins
        units = [e["message"] for e in r.table("events") if e["code"] == "units"]
    assert len(units) == 1 and "the camera's scale: 0.2 mm/px reported, [printers.p1] mm_per_px = 0.25" in units[0]


def test_layers_printed_without_frames_are_said_once_and_on_the_monitor_s_status(tmp_path: Path) -> None:
    from printer_io.messages import EventMessage, StatusMessage

    bus, monitor = _bus_monitor(
        tmp_path, MonitorSection(out_dir=tmp_path / "records", models_dir=tmp_path / "models"), PrinterSection()
    )
    topics = Topics("layerwatch", PID)
    seen: list[bytes] = []
    watch = bus.link(service="watch", topics=topics)
    watch.subscribe(topics.event, lambda t, p: seen.append(p))
    statuses: list[StatusMessage] = []
    watch.subscribe(topics.status("monitor"), lambda t, p: statuses.append(StatusMessage.from_json(p, t)))
    watch.start()
    bridge = bus.link(service="bridge", topics=topics).start()
    pm = monitor.monitors[PID]
    try:
        for k in range(3):
            bridge.publish(topics.layer, LayerEvent(printer=PID, job_id="j", layer=k, z_mm=0.2).to_json())
        bus_idle = threading.Event()
        for _ in range(100):
            if pm.camera.awaiting is not None:
                break
            bus_idle.wait(0.05)
        pm.check_frames(wait_s=0)
        pm.check_frames(wait_s=0)  # said once
        assert watch.wait_idle(30)  # the event and the status delivered before the links close
    finally:
        for closer in (bridge, watch, monitor):
            closer.close()
    events = [EventMessage.from_json(p) for p in seen]
    said = [e for e in events if e.code == "no_frames"]
    assert len(said) == 1 and "no frame came" in said[0].message and "layerwatch/p1/image" in said[0].message
    assert any(s.state == "degraded" and "no frame came" in s.problem for s in statuses)
