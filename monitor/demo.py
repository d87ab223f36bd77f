"""``layerwatch demo``: the main job, one command, no hardware.

Runs its services on an in-process message bus (or over ``--broker URL``, or a local broker started
with ``--broker-impl mosquitto|amqtt|auto``), the embedded virtual printer and its layer bridge, a
camera node fed by a simulated build whose defect appears mid-build (``--scenario warp``: warping
from layer 14 that grows; ``clean``: the same build without it), the monitor with the default
policy, and the dashboard where it exists. It prints one line per judged layer, pauses the virtual
printer on a critical defect with the reason, writes the build record and the evidence overlay, and
ends with a summary.
"""

from __future__ import annotations

import importlib
import logging
import socket
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from monitor.config import Config, MonitorSection, PrinterSection
from monitor.service import MonitorService
from printer_io.bridge import Bridge
from printer_io.bus import BusLink, Link, MessageBus, open_link
from printer_io.camera import CameraNode, CameraSettings
from printer_io.messages import ActionMessage, EventMessage, ResultMessage
from printer_io.mqtt import MqttConfig
from printer_io.printer import PrinterState
from printer_io.topics import Topics
from printer_io.virtual import VirtualPrinter

__all__ = ["DemoOptions", "run_demo"]

log = logging.getLogger(__name__)
PRINTER = "demo"


@dataclass(frozen=True)
class DemoOptions:
    out: Path = Path("layerwatch-demo")
    layers: int = 40
    size: int = 512
    scenario: str = "warp"
    warp_start: int = 14
    seed: int = 3
    layer_time_s: float = 0.8
    broker: str | None = None
    broker_impl: str = "bus"  # bus (in process), or a local broker: auto, mosquitto, amqtt
    headless: bool = False
    stay: bool = False  # keep the dashboard up after the summary until Ctrl-C
    engine: Literal["auto", "onnx", "openvino", "torch"] = "auto"
    model: Path | None = None


@dataclass
class Watch:
    """What the demo's own subscriber saw: results, actions and events of the printer."""

    results: list[ResultMessage] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    actions: list[ActionMessage] = field(default_factory=list)
    events: list[EventMessage] = field(default_factory=list)
    paused: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    held: bool = False  # the printer has waited for the monitor


def run_demo(opts: DemoOptions) -> int:
    from monitor.broker import LocalBroker
    from monitor.sources import SimulatorSource
    from segmentation.simulator import scenario_spec

    if opts.scenario not in ("warp", "clean"):
        raise ValueError(f"scenario {opts.scenario!r}: use warp or clean")
    if opts.scenario == "warp" and opts.warp_start >= opts.layers - 3:
        raise ValueError(f"--layers {opts.layers} leaves no room for the warp starting at layer {opts.warp_start}")
    opts.out.mkdir(parents=True, exist_ok=True)
    broker, bus = None, None
    url, protocol = opts.broker or "mqtt://127.0.0.1:1883", "5"
    if opts.broker is not None:
        print(f"broker: {url}")
    elif opts.broker_impl == "bus":
        bus = MessageBus()
        print("broker: in-process bus (--broker URL, or --broker-impl mosquitto, to watch it over MQTT)")
    else:
        broker = LocalBroker(opts.broker_impl).start()  # type: ignore[arg-type]
        url, protocol = broker.url, broker.protocol
        print(f"broker: {broker.kind} on {url}")
    spec = scenario_spec(
        opts.seed, opts.size, opts.layers, warp_start=opts.warp_start if opts.scenario == "warp" else None
    )
    mqtt = MqttConfig(url=url, protocol=protocol)  # type: ignore[arg-type]
    config = Config(
        mqtt=mqtt,
        monitor=MonitorSection(
            out_dir=opts.out / "records",
            engine=opts.engine,
            model=opts.model,
            mm_per_px=spec.mm_per_px,
            layer_thickness_mm=spec.layer_thickness,
        ),
        printers={PRINTER: PrinterSection(backend="virtual")},
    )
    topics = Topics(mqtt.prefix, PRINTER)
    printer = VirtualPrinter(
        PRINTER,
        layers=opts.layers,
        layer_time_s=opts.layer_time_s,
        layer_height_mm=spec.layer_thickness,
        pause_delay_s=0.3,
    )
    watch = Watch()
    printer.hold = _keep_in_step(printer, watch)
    started = time.monotonic()

    stack: list[object] = []
    server = None
    try:
        monitor = MonitorService(config, printer_ids=[PRINTER], printers={PRINTER: printer}, bus=bus).start()
        stack.append(monitor)
        watcher = _watcher(open_link(bus, mqtt, service="demo-watch", topics=topics), topics, watch)
        stack.append(watcher)
        source = SimulatorSource(spec=spec)
        camera = CameraNode(open_link(bus, mqtt, service="camera", topics=topics), source, CameraSettings()).start()
        stack.append(camera)
        bridge_link = open_link(bus, mqtt, service="bridge", topics=topics)
        bridge_link.start()
        stack.append(bridge_link)
        bridge = Bridge(bridge_link, "virtual")
        printer.report_to(bridge)
        printer.start()
        stack.append(printer)
        server = _dashboard(opts, config)
        if server is not None:
            stack.append(_Stopper(server))
        job = printer.start_job(f"demo-{opts.scenario}")
        print(
            f"printing {job}: {opts.layers} layers (numbered 0 to {opts.layers - 1}, as in the record) of "
            f"{opts.size}x{opts.size} px, {opts.layer_time_s:g} s a layer; "
            f"scenario {opts.scenario}"
            + (f" (warping from layer {opts.warp_start})" if opts.scenario == "warp" else "")
        )
        _wait(printer, watch, opts)
        monitor.monitors[PRINTER].controller.wait_idle(30)
        if isinstance(watcher, BusLink):
            watcher.wait_idle(30)  # the last outcome messages have reached the watcher
        else:
            time.sleep(0.3)  # over a broker there is no signal for "delivered to the others"
        pm = monitor.monitors[PRINTER]
        record = pm.last_record
        incidents = pm.controller.incidents
        if opts.stay and server is not None:
            _summary(watch, incidents, record, None, time.monotonic() - started)
            print("the dashboard stays up; Ctrl-C ends the demo", flush=True)
            try:
                while True:
                    time.sleep(1)
            except KeyboardInterrupt:
                pass
    finally:
        for item in reversed(stack):
            item.close()  # type: ignore[attr-defined]
        if broker is not None:
            broker.close()
    evidence = _evidence(record, watch, opts.out) if record else None
    _summary(watch, incidents, record, evidence, time.monotonic() - started)
    return 0


class _Stopper:
    def __init__(self, server: object) -> None:
        self.server = server

    def close(self) -> None:
        self.server.shutdown()  # type: ignore[attr-defined]


def _watcher(link: Link, topics: Topics, watch: Watch) -> Link:
    def on_result(topic: str, payload: bytes) -> None:
        r = ResultMessage.from_json(payload, topic)
        now = time.time()
        with watch.lock:
            watch.results.append(r)
            watch.latencies.append(now - r.captured_at)
        v = r.metrics
        flag = "" if r.judged else "  (not judged)"
        hits = "  " + "; ".join(f"{h.rule} [{h.severity}]" for h in r.hits) if r.hits else ""
        porosity = 100 * v.get("porosity_fraction_part", 0)
        spatter = 100 * v.get("spatter_fraction", 0)
        print(
            f"layer {r.layer:3d}  z={r.z_mm:5.2f} mm  porosity {porosity:5.2f}%  spatter {spatter:5.2f}%"
            f"  confirmed warping {v.get('warping_confirmed_area_mm2', 0):5.1f} mm²"
            f"  ({now - r.captured_at:.2f} s){flag}{hits}",
            flush=True,
        )

    def on_action(topic: str, payload: bytes) -> None:
        a = ActionMessage.from_json(payload, topic)
        with watch.lock:
            watch.actions.append(a)
        if a.action == "pause" and a.state.value == "requested":
            print(f">>> PAUSE requested at layer {a.layer}: {a.reason}", flush=True)
        elif a.action == "pause" and a.state.value == "confirmed":
            print(f">>> printer PAUSED ({a.detail})", flush=True)
            watch.paused.set()
        elif a.state.value in ("failed", "timed_out"):
            print(f">>> {a.action} {a.state.value}: {a.detail}", flush=True)
        elif a.action in ("gcode", "notify", "exclude_object") and a.state.value in (
            "requested",
            "confirmed",
            "skipped",
        ):
            what = " ".join(a.gcode) if a.gcode else a.reason
            print(f">>> {a.action} {a.state.value} at layer {a.layer}: {what}", flush=True)

    def on_event(topic: str, payload: bytes) -> None:
        e = EventMessage.from_json(payload, topic)
        with watch.lock:
            watch.events.append(e)

    link.subscribe(topics.result, on_result)
    link.subscribe(topics.action, on_action)
    link.subscribe(topics.event, on_event)
    link.start()
    return link


def _keep_in_step(printer: VirtualPrinter, watch: Watch, patience_s: float = 20.0) -> Callable[[], bool]:
    """The virtual printer's hold: on a machine too busy for the monitor to keep up with the demo's short
    layers, the printer waits while two finished layers are not judged yet (for ``patience_s`` at most),
    so the demo still shows what the monitor does about them instead of a job that finished before its
    verdicts. Said once when it happens; the per-layer latencies printed stay the real ones."""
    since: list[float] = []

    def hold() -> bool:
        status = printer.status()
        done = (status.job.layer or 0) if status.job is not None else 0
        with watch.lock:
            behind = done - len(watch.results) >= 2
        if not behind:
            since.clear()
            return False
        now = time.monotonic()
        if not since:
            since.append(now)
            if not watch.held:
                watch.held = True
                print("demo: the monitor is two layers behind the printer (a busy machine); the printer waits for it")
        return now - since[0] < patience_s

    return hold


def _wait(printer: VirtualPrinter, watch: Watch, opts: DemoOptions) -> None:
    deadline = time.monotonic() + opts.layers * opts.layer_time_s * 3 + 60
    while time.monotonic() < deadline:
        state = printer.status().state
        done = len(watch.results) >= opts.layers
        if watch.paused.is_set() or (state == PrinterState.FINISHED and done):
            break
        time.sleep(0.1)
    else:
        print("demo: timed out waiting for the build to finish (is the machine very busy?)")
    if watch.paused.is_set():
        # frames already captured before the pause are still judged; give them a moment
        time.sleep(1.0)


def _dashboard(opts: DemoOptions, config: Config) -> object | None:
    """Start the dashboard on a free loopback port (resolved by name: the demo runs without it)."""
    if opts.headless:
        return None
    try:
        dashboards = importlib.import_module("dashboards.app")
        from werkzeug.serving import make_server
    except ImportError as err:
        print(f"dashboard: not available ({err}); records can be read with `layerwatch record info`")
        return None

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    app = dashboards.create_app(dashboards.DashboardOptions(records=config.monitor.out_dir, title="LayerWatch demo"))
    server = make_server("127.0.0.1", port, app.server, threaded=True)
    threading.Thread(target=server.serve_forever, name="dashboard", daemon=True).start()
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    print(f"dashboard: http://127.0.0.1:{port}/ (read-only; it stops with the demo)")
    return server


def _evidence(record: Path, watch: Watch, out: Path) -> Path | None:
    """Overlay of the layer whose judgement paused the printer, from the build record."""
    from monitor.record import RecordReader, action_boxes
    from segmentation.imageio import write_overlay

    pause = next((a for a in watch.actions if a.action == "pause" and a.state.value == "requested"), None)
    if pause is None or pause.layer is None:
        return None
    with RecordReader(record) as r:
        if pause.layer not in set(int(n) for n in r.stored_layers()):
            return None
        path = out / f"evidence_layer_{pause.layer:04d}.png"
        write_overlay(
            path, r.image(pause.layer), r.mask(pause.layer), action_boxes(r.table("actions"), pause.request_id)
        )
    return path


def _summary(
    watch: Watch, incidents: Sequence[object], record: Path | None, evidence: Path | None, seconds: float
) -> None:
    judged = sum(r.judged for r in watch.results)
    lat = sorted(watch.latencies)
    print()
    print("summary")
    print(f"  layers judged: {judged} of {len(watch.results)} received, in {seconds:.0f} s")
    if lat:
        p95 = lat[min(len(lat) - 1, round(0.95 * (len(lat) - 1)))]
        print(f"  latency capture -> result: median {statistics.median(lat):.2f} s, p95 {p95:.2f} s")
    print(f"  incidents: {len(incidents)}")
    for inc in incidents:
        print(f"    {getattr(inc, 'id', inc)} ({getattr(inc, 'state', '')})")
    outcomes = [a for a in watch.actions if a.state.value != "requested"]
    print(f"  actions: {len(outcomes)}")
    for a in outcomes:
        print(f"    layer {a.layer}: {a.action} {a.state.value} - {a.rule}: {a.detail or a.reason}")
    if watch.events:
        codes: dict[str, int] = {}
        for e in watch.events:
            codes[e.code] = codes.get(e.code, 0) + 1
        print("  events: " + ", ".join(f"{c} x{n}" for c, n in sorted(codes.items())))
    if record is not None:
        print(f"  build record: {record}   (layerwatch record info {record})")
    if evidence is not None:
        print(f"  evidence: {evidence}")
