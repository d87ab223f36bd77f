"""``layerwatch replay``: run a recorded build through the live pipeline again, to test a model or policy.

The recorded layers are published exactly as the bridge and the camera publish them (a layer event,
then the frame, same topics, same metadata) and judged by an ordinary monitor, against the embedded
virtual printer unless a real backend is asked for. ``--model`` and ``--policy`` replace what the
record was made with; the run writes a new record that names the one it replays.

Accepted inputs: records of ``monitor`` and ``demo``, simulated builds with ground truth
(``layerwatch synth --build --record``), and build files in the plain Peregrine layout from other
tools and ORNL Peregrine's own files (``/slices/camera_data/visible/0``, or ``/slices/camera_data/0`` of
older records, and the calibration attributes; ``/slices/segmentation_results/<id>`` is read as ground
truth when the file says so or is not a LayerWatch record, a Peregrine file's 12 classes mapped onto ours).
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import statistics
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import h5py
import numpy as np

from monitor.config import Config, MonitorSection, PolicySection, PrinterSection
from monitor.record import (
    MASKS,
    READABLE_SCHEMAS,
    RecordError,
    class_mask,
    images_path,
    open_build_file,
    set_attrs,
)
from monitor.service import MonitorService
from printer_io.bus import BusLink, Link, MessageBus, open_link
from printer_io.errors import MqttError
from printer_io.frames import QualityChecker, encode_image
from printer_io.messages import ActionMessage, FrameMeta, LayerEvent, ResultMessage, encode_frame
from printer_io.mqtt import MqttConfig
from printer_io.printer import Printer
from printer_io.topics import Topics
from printer_io.virtual import VirtualPrinter

__all__ = ["ReplayError", "ReplayOptions", "ReplaySource", "open_source", "run_replay"]

log = logging.getLogger(__name__)
PRINTER = "replay"


class ReplayError(Exception):
    """The input cannot be replayed or the replay cannot run; the message says why and what to do."""


@dataclass
class ReplaySource:
    path: Path
    kind: str  # "record", "truth", "peregrine"
    layers: list[int]
    height: int
    width: int
    mm_per_px: float
    thickness_mm: float
    z_mm: dict[int, float]
    captured_at: dict[int, float]
    job_id: str
    ground_truth: bool
    _file: Any = field(repr=False, default=None)

    def image(self, layer: int) -> np.ndarray:
        """The layer's frame as a camera gives it: uint8 or uint16 (a Peregrine file's float images, in [0, 1]
        or in counts, become 16-bit)."""
        image = np.asarray(self._file[images_path(self._file)][layer])
        if image.dtype.kind == "f":
            top = 1.0 if float(np.nanmax(image, initial=0.0)) <= 1.0 else 65535.0
            image = np.round(np.clip(np.nan_to_num(image) / top, 0, 1) * 65535).astype(np.uint16)
        elif image.dtype not in (np.uint8, np.uint16):
            image = np.clip(image, 0, 65535).astype(np.uint16)
        return image

    def truth(self, layer: int) -> np.ndarray | None:
        """(H, W) uint8 class ids of the ground truth, or None."""
        if not self.ground_truth:
            return None
        return truth_mask(self._file, layer)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def truth_mask(f: h5py.File, layer: int) -> np.ndarray:
    return class_mask(f, layer)


def _open_h5(path: Path) -> h5py.File:
    try:
        return open_build_file(path)
    except RecordError as err:
        raise ReplayError(str(err)) from None


def open_source(path: Path, *, skip_missing: bool = False) -> ReplaySource:
    f = _open_h5(path)
    try:
        images = images_path(f)
        if images not in f:
            raise ReplayError(f"{path} has no /{images}: not a build file in the Peregrine layout")
        a = f.attrs
        schema = a.get("layerwatch/schema_version")
        if schema is not None and schema not in READABLE_SCHEMAS:
            raise ReplayError(
                f"{path} is a LayerWatch record of schema {schema}; this version reads schemas "
                f"{', '.join(map(str, READABLE_SCHEMAS))}"
            )
        for attr in ("printer/x_real_dimension", "printer/x_camera_dimension"):
            if attr not in a:
                raise ReplayError(f"{path} lacks the calibration attribute {attr}: the scale in mm is unknown")
        z, h, w = f[images].shape
        mm_per_px = float(a["printer/x_real_dimension"]) / float(a["printer/x_camera_dimension"])
        thickness = float(a.get("material/layer_thickness", 0.04))
        kind = "record" if schema is not None else ("truth" if a.get("layerwatch/ground_truth") else "peregrine")
        layers = list(range(z))
        z_mm = {k: thickness * (k + 1) for k in layers}
        captured: dict[int, float] = {}
        if kind == "record":
            rows = f["layerwatch/layers"][:]
            stored = [int(k) for k in np.flatnonzero(rows["stored"])]
            missing = sorted(set(range(max(stored) + 1 if stored else 0)) - set(stored))
            if missing and not skip_missing:
                shown = ", ".join(map(str, missing[:10])) + (" ..." if len(missing) > 10 else "")
                raise ReplayError(
                    f"{path} is missing the frames of layers {shown}; replay the rest with --skip-missing"
                )
            layers = stored
            z_mm = {k: float(rows[k]["z_mm"]) for k in layers}
            captured = {k: float(rows[k]["captured_at"]) for k in layers}
        if not layers:
            raise ReplayError(f"{path} holds no layer to replay")
        job = str(a.get("layerwatch/job_id", path.stem))
        truth = kind in ("truth", "peregrine") and MASKS in f
        return ReplaySource(path, kind, layers, h, w, mm_per_px, thickness, z_mm, captured, job, truth, f)
    except BaseException:
        f.close()
        raise


@dataclass(frozen=True)
class ReplayOptions:
    source: Path
    out: Path | None = None
    speed: float | None = None  # None: as fast as the monitor keeps up
    model: Path | None = None  # None: the model store's current model, else the shipped one
    models_dir: Path = Path("models")
    policy: Path | None = None
    broker: str | None = None
    engine: Literal["auto", "onnx", "openvino", "torch"] = "auto"
    window: int = 2  # frames in flight at most (back-pressure)
    printer: Printer | None = None  # a real backend; default: the embedded virtual printer
    skip_missing: bool = False
    progress: bool = True
    threads: int | None = None  # the model's CPU threads (None: the engine's default)
    reference_layers: int = 3  # [monitor] reference_layers: the build's lighting from its first layers (0: off)


@dataclass
class ReplayResult:
    record: Path
    layers: int
    seconds: float
    results: list[ResultMessage]
    actions: list[ActionMessage]

    @property
    def first_pause(self) -> ActionMessage | None:
        return next((a for a in self.actions if a.action == "pause" and a.state.value == "requested"), None)


def default_out(source: Path) -> Path:
    return Path("replays") / f"{source.stem}-replay.h5"


def run_replay(opts: ReplayOptions) -> ReplayResult:
    """Replay a build through a monitor: over ``opts.broker`` when given, else on an in-process bus."""
    out = opts.out or default_out(opts.source)
    if out.resolve() == opts.source.resolve():
        raise ReplayError(f"--out {out} is the record being replayed; choose another path")
    source = open_source(opts.source, skip_missing=opts.skip_missing)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=".replay-", dir=out.parent) as tmp:
            result = _replay(source, opts, Path(tmp))
            sha = hashlib.sha256(opts.source.read_bytes()).hexdigest()
            set_attrs(result.record, {"replay_of": str(opts.source.resolve()), "replay_of_sha256": sha})
            shutil.move(str(result.record), out)  # the output name appears only once the record is complete
            result.record = out
        return result
    finally:
        source.close()


def _replay(source: ReplaySource, opts: ReplayOptions, tmp: Path) -> ReplayResult:
    mqtt = MqttConfig(url=opts.broker, connect_timeout_s=10) if opts.broker else MqttConfig()
    bus = None if opts.broker else MessageBus()
    config = Config(
        mqtt=mqtt,
        monitor=MonitorSection(
            out_dir=tmp,
            engine=opts.engine,
            model=opts.model,
            models_dir=opts.models_dir,
            threads=opts.threads,
            reference_layers=opts.reference_layers,
            mm_per_px=source.mm_per_px,
            layer_thickness_mm=source.thickness_mm,
        ),
        printers={PRINTER: PrinterSection(backend="virtual")},
        policy=PolicySection(file=opts.policy),
    )
    topics = Topics(mqtt.prefix, PRINTER)
    printer = opts.printer
    if printer is None:
        virtual = VirtualPrinter(PRINTER, layers=max(source.layers) + 1, realtime=False).start()
        virtual.start_job(f"replay-{source.job_id}")
        printer = virtual
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

    job = f"replay-{source.job_id}"
    try:
        monitor = MonitorService(config, printer_ids=[PRINTER], printers={PRINTER: printer}, bus=bus).start()
    except MqttError as err:
        raise ReplayError(str(err)) from err

    watch, bridge, camera = (
        open_link(bus, mqtt, service=s, topics=topics) for s in ("replay-watch", "bridge", "camera")
    )
    watch.subscribe(topics.result, on_result)
    watch.subscribe(topics.action, on_action)
    started = time.monotonic()
    try:
        watch.start()
        bridge.start()
        camera.start()
        _publish(source, opts, job, topics, bridge, camera, results, cond)
        with cond:
            cond.wait_for(lambda: len(results) >= len(source.layers), 600)
        monitor.monitors[PRINTER].controller.wait_idle(60)
        if isinstance(watch, BusLink):
            watch.wait_idle(30)  # the last outcomes have reached the watcher
        else:
            time.sleep(0.2)  # over a broker there is no signal for "delivered to the others"
        pm = monitor.monitors[PRINTER]
        if pm.build is None:
            raise ReplayError("the monitor stored no layer of the replay (see the events above)")
        record = pm.build.record.path
    finally:
        for each in (camera, bridge, watch):
            each.close()
        monitor.close()
    return ReplayResult(record, len(results), time.monotonic() - started, results, actions)


def _publish(
    source: ReplaySource,
    opts: ReplayOptions,
    job: str,
    topics: Topics,
    bridge: Link,
    camera: Link,
    results: list[ResultMessage],
    cond: threading.Condition,
) -> None:
    from tqdm import tqdm

    quality = QualityChecker()
    first = source.layers[0]
    t0 = time.monotonic()
    bar = tqdm(source.layers, desc="replay", unit="layer", disable=not opts.progress)
    for i, layer in enumerate(bar):
        if opts.speed is not None and source.captured_at:
            due = (source.captured_at.get(layer, 0.0) - source.captured_at.get(first, 0.0)) / opts.speed
            time.sleep(max(0.0, due - (time.monotonic() - t0)))
        with cond:  # back-pressure: at most `window` frames in flight, whatever the speed
            if not cond.wait_for(lambda i=i: len(results) >= i - opts.window + 1, 300):  # type: ignore[misc]
                raise ReplayError(f"the monitor stopped answering at layer {layer}; see its events")
        image = source.image(layer)
        z = source.z_mm.get(layer, 0.0)
        event = LayerEvent(printer=PRINTER, job_id=job, layer=layer, z_mm=z, source="replay")
        bridge.publish(topics.layer, event.to_json())
        meta = FrameMeta(
            printer=PRINTER,
            job_id=job,
            layer=layer,
            z_mm=z,
            captured_at=time.time(),
            encoding="png",
            width=source.width,
            height=source.height,
            channels=1 if image.ndim == 2 else 3,
            bit_depth=16 if image.dtype == np.uint16 else 8,
            source="replay",
            quality=quality.check(image),
        )
        camera.publish(topics.image, encode_frame(meta, encode_image(image)))
        if results:
            bar.set_postfix(severity=results[-1].severity)
    bar.close()


def summary(result: ReplayResult, source: Path) -> list[str]:
    lines = [
        f"replayed {result.layers} layers of {source} in {result.seconds:.1f} s "
        f"({result.layers / max(result.seconds, 1e-9):.1f} layers/s)"
    ]
    pause = result.first_pause
    lines.append(f"first pause: layer {pause.layer} ({pause.rule})" if pause else "first pause: none")
    outcomes = [a for a in result.actions if a.state.value != "requested"]
    for a in outcomes:
        lines.append(f"  layer {a.layer}: {a.action} {a.state.value} ({a.rule})")
    stages = ("decode", "segment", "metrics", "record")
    timings = [r.timings_ms for r in result.results if r.timings_ms]
    if timings:
        med = {s: statistics.median(t.get(s, 0.0) for t in timings) for s in stages}
        total = statistics.median((r.published_at - r.received_at) * 1000 for r in result.results)
        parts = ", ".join(f"{s} {med[s]:.0f}" for s in stages)
        lines.append(f"time per layer in the monitor (median ms): {parts}; receipt to result {total:.0f}")
    lines.append(f"record: {result.record}")
    return lines
