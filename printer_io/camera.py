"""The camera node: hears "layer N is done", captures exactly one frame of that layer, publishes it.

Sources sit behind one small interface (:class:`FrameSource`) and are picked by name from :data:`SOURCES`:
``opencv`` (USB index, RTSP/HTTP URL or a video file through ``cv2.VideoCapture``), ``folder`` (one image
per layer, sorted by name), ``record`` (the camera images of a recorded HDF5 build,
``/slices/camera_data/visible/0``). The monitor package registers ``simulator`` (the layer simulator) on top.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import cv2
import numpy as np

from printer_io.bus import Link
from printer_io.errors import CaptureError, ConfigError, FrameTooLarge, PayloadError
from printer_io.frames import Encoding, QualityChecker, encode_image
from printer_io.messages import EventLevel, EventMessage, FrameMeta, LayerEvent, encode_frame

__all__ = [
    "SOURCES",
    "CameraNode",
    "CameraSettings",
    "FolderSource",
    "FrameSource",
    "OpenCVSource",
    "RecordSource",
    "create_source",
    "register_source",
]

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


class FrameSource(Protocol):
    """``grab(event)`` returns the frame of that layer: ``(H, W)`` or ``(H, W, 3)`` BGR, uint8 or uint16."""

    name: str

    def open(self) -> None: ...
    def grab(self, event: LayerEvent) -> np.ndarray: ...
    def close(self) -> None: ...


class OpenCVSource:
    """A live camera: device index (``"0"``), RTSP/HTTP URL or video file. Stale buffered frames are flushed."""

    name = "opencv"

    def __init__(self, device: str = "0", *, flush: int = 2) -> None:
        self.device: int | str = int(device) if device.isdigit() else device
        self.flush = flush
        self._cap: Any = None

    def open(self) -> None:
        cap = cv2.VideoCapture(self.device)
        if not cap.isOpened():
            cap.release()
            raise CaptureError(f"camera {self.device!r} cannot be opened: check the device index or URL")
        self._cap = cap

    def grab(self, event: LayerEvent) -> np.ndarray:
        if self._cap is None:
            self.open()
        for _ in range(self.flush):  # drop frames buffered before the trigger
            self._cap.grab()
        ok, frame = self._cap.read()
        if not ok or frame is None:
            self._cap.release()
            self._cap = None  # reopen on the next attempt
            raise CaptureError(f"camera {self.device!r} delivered no frame")
        return np.asarray(frame)

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None


class FolderSource:
    """Images of a folder, sorted by name; layer N gets the N-th (``loop=True`` wraps around)."""

    name = "folder"

    def __init__(self, path: str | Path, *, loop: bool = False) -> None:
        self.path = Path(path)
        self.loop = loop
        self._files: list[Path] = []

    def open(self) -> None:
        if not self.path.is_dir():
            raise ConfigError(f"camera folder {self.path} does not exist")
        self._files = sorted(p for p in self.path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not self._files:
            raise ConfigError(f"camera folder {self.path} holds no image ({', '.join(IMAGE_SUFFIXES)})")

    def grab(self, event: LayerEvent) -> np.ndarray:
        if not self._files:
            self.open()
        index = event.layer % len(self._files) if self.loop else event.layer
        if index >= len(self._files):
            raise CaptureError(f"camera folder {self.path} has {len(self._files)} images, none for layer {event.layer}")
        path = self._files[index]
        image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if image is None:
            raise CaptureError(f"{path} cannot be read as an image")
        if image.ndim == 3 and image.shape[2] == 4:
            image = cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
        return np.asarray(image)

    def close(self) -> None:
        self._files = []


class RecordSource:
    """The camera images of a recorded build (HDF5, Peregrine layout ``/slices/camera_data/visible/0``, or
    ``/slices/camera_data/0`` of records before schema 3; Z × Y × X)."""

    name = "record"
    DATASETS = ("slices/camera_data/visible/0", "slices/camera_data/0")

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._file: Any = None
        self._dataset = ""

    def open(self) -> None:
        import h5py

        try:
            self._file = h5py.File(self.path, "r", locking=False)
        except OSError as err:
            raise ConfigError(f"build record {self.path} cannot be opened as HDF5: {err}") from err
        self._dataset = next((d for d in self.DATASETS if d in self._file), "")
        if not self._dataset:
            self.close()
            raise ConfigError(f"build record {self.path} has no /{self.DATASETS[0]} dataset")

    def grab(self, event: LayerEvent) -> np.ndarray:
        if self._file is None:
            self.open()
        data = self._file[self._dataset]
        data.refresh() if hasattr(data, "refresh") else None
        if event.layer >= data.shape[0]:
            raise CaptureError(f"build record {self.path} has {data.shape[0]} layers, none for layer {event.layer}")
        return np.asarray(data[event.layer])

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


SourceFactory = Callable[..., FrameSource]
SOURCES: dict[str, SourceFactory] = {"opencv": OpenCVSource, "folder": FolderSource, "record": RecordSource}


def register_source(name: str, factory: SourceFactory) -> None:
    SOURCES[name] = factory


def create_source(name: str, *args: Any, **kwargs: Any) -> FrameSource:
    try:
        factory = SOURCES[name]
    except KeyError:
        raise ConfigError(f"unknown camera source {name!r}; valid: {', '.join(sorted(SOURCES))}") from None
    return factory(*args, **kwargs)


@dataclass(frozen=True)
class CameraSettings:
    """``settle_s``: wait after the trigger (head parked, vibrations gone). ``attempts`` captures per layer,
    ``retry_s`` apart; after the last failure the layer is given up with an error event."""

    settle_s: float = 0.0
    attempts: int = 3
    retry_s: float = 0.5
    encoding: Encoding = "png"
    jpeg_quality: int = 92
    view: Literal["melt", "recoat"] = "melt"  # what this camera's frames show (a second camera: after recoat)


class CameraNode:
    """Subscribes to the printer's layer topic and publishes one frame per layer on its image topic."""

    def __init__(self, link: Link, source: FrameSource, settings: CameraSettings | None = None) -> None:
        self.link = link
        self.source = source
        self.settings = settings or CameraSettings()
        self.topics = link.topics
        self.quality = QualityChecker()
        self.published = 0
        self.given_up = 0
        self._seen: set[tuple[str, int]] = set()
        self._job = ""  # the job of the last layer captured
        self._lock = threading.Lock()

    def start(self) -> CameraNode:
        self.source.open()
        self.link.subscribe(self.topics.layer, self._on_layer)
        self.link.start()
        return self

    def close(self) -> None:
        self.link.close()
        self.source.close()

    def _on_layer(self, topic: str, payload: bytes) -> None:
        event = LayerEvent.from_json(payload, topic)
        if event.printer != self.topics.printer:
            raise PayloadError(
                f"{topic}: layer event for printer {event.printer!r}, this node serves {self.topics.printer!r}",
                "printer",
            )
        if event.end:
            log.info("camera: job %s %s; nothing to capture", event.job_id, event.outcome or "ended")
            return
        key = (event.job_id, event.layer)
        with self._lock:
            if key in self._seen:
                log.info(
                    "camera: layer %d of %s already captured; duplicate trigger ignored", event.layer, event.job_id
                )
                return
            self._seen.add(key)
            if event.job_id != self._job:  # a new job's first layer is not "frozen" for looking like the last one
                self._job = event.job_id
                self.quality.reset()
        self.capture(event)

    def _scale(self) -> float | None:
        """The source's scale in mm per px, where it knows it (``mm_per_px`` attribute), else None."""
        scale = getattr(self.source, "mm_per_px", None)
        return float(scale) if isinstance(scale, (int, float)) and 0 < scale <= 10 else None

    def capture(self, event: LayerEvent) -> bool:
        """Capture and publish the frame of one layer; False when the layer was given up."""
        s = self.settings
        if s.settle_s > 0:
            time.sleep(s.settle_s)
        for attempt in range(1, s.attempts + 1):
            try:
                image = self.source.grab(event)
                data = encode_image(image, s.encoding, s.jpeg_quality)
            except CaptureError as err:
                last = f"capture attempt {attempt}/{s.attempts} failed: {err}"
                self._event(event, EventLevel.WARNING, "capture_failed", last)
                if attempt < s.attempts:
                    time.sleep(s.retry_s)
                continue
            quality = self.quality.check(image)
            part_ids = self._part_ids(event)
            meta = FrameMeta(
                printer=event.printer,
                job_id=event.job_id,
                layer=event.layer,
                z_mm=event.z_mm,
                captured_at=time.time(),
                encoding=s.encoding,
                width=int(image.shape[1]),
                height=int(image.shape[0]),
                channels=3 if image.ndim == 3 else 1,
                bit_depth=8 if s.encoding == "jpeg" or image.dtype == np.uint8 else 16,
                source=self.source.name,
                attempt=attempt,
                quality=quality,
                view=s.view,
                mm_per_px=self._scale(),
            )
            try:
                self.link.publish(self.topics.image, encode_frame(meta, data, part_ids))
            except FrameTooLarge as err:
                self._event(event, EventLevel.ERROR, "frame_too_large", str(err))
                self.given_up += 1
                return False
            self.published += 1
            if not quality.ok:
                problems = ", ".join(quality.problems)
                text = f"frame of layer {event.layer} is {problems} (sharpness {quality.sharpness:.1f}, "
                self._event(event, EventLevel.WARNING, "frame_quality", text + f"mean {quality.mean:.2f})")
            log.info(
                "camera: layer %d of %s published (%d bytes, attempt %d)", event.layer, event.job_id, len(data), attempt
            )
            return True
        self.given_up += 1
        text = f"no frame for layer {event.layer} after {s.attempts} attempts; the layer is not monitored"
        self._event(event, EventLevel.ERROR, "capture_gave_up", text)
        return False

    def _part_ids(self, event: LayerEvent) -> bytes:
        """A source that knows which part each pixel belongs to (``part_ids(event)``) sends it along, as a
        16-bit PNG; the monitor then attributes defects to those parts instead of tracking its own."""
        getter = getattr(self.source, "part_ids", None)
        if getter is None:
            return b""
        ids = getter(event)
        if ids is None:
            return b""
        return encode_image(np.minimum(ids, 65_535).astype(np.uint16), "png")

    def _event(self, event: LayerEvent, level: EventLevel, code: str, message: str) -> None:
        log.log(logging.ERROR if level == EventLevel.ERROR else logging.WARNING, "camera: %s", message)
        msg = EventMessage(
            printer=event.printer,
            service=self.link.service,
            level=level,
            code=code,
            message=message,
            job_id=event.job_id,
            layer=event.layer,
        )
        try:
            self.link.publish(self.topics.event, msg.to_json())
        except Exception as err:  # an event must never take the node down
            log.warning("camera: could not publish the %s event: %s", code, err)
