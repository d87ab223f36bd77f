"""Versioned payload schemas of the MQTT contract, validated on receipt.

Every JSON payload carries ``"schema": "<name>/<version>"``. A payload that is not JSON, names another
schema or version, misses a field or has one out of range raises :class:`PayloadError` whose message
names the field and what was expected, and whose ``reason`` feeds the services' rejection counters.

Frames travel as one binary envelope (works on MQTT 3.1.1 and 5): ``b"LWF1"``, a 4-byte big-endian
header length, the :class:`FrameMeta` JSON header, then the encoded image bytes (PNG or JPEG).
"""

from __future__ import annotations

import json
import struct
import time
from typing import Any, ClassVar, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from printer_io.errors import PayloadError
from printer_io.vocabulary import ActionKind, ActionState, EventLevel, Severity, Verdict

__all__ = [
    "FRAME_MAGIC",
    "ActionMessage",
    "ActionState",
    "EventLevel",
    "EventMessage",
    "FrameMeta",
    "FrameQuality",
    "LabelStroke",
    "LayerEvent",
    "Message",
    "PrinterStateMessage",
    "ResultMessage",
    "RuleHitInfo",
    "StatusMessage",
    "decode_frame",
    "encode_frame",
    "split_frame",
]

FRAME_MAGIC = b"LWF1"
_HEADER = struct.Struct(">I")
_MAX_HEADER = 64 * 1024


class Message(BaseModel):
    """Base of the JSON payloads: frozen, unknown fields refused, ``schema`` checked."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    SCHEMA: ClassVar[str] = ""
    READS: ClassVar[tuple[str, ...]] = ()  # earlier versions whose fields are a subset of this one's

    schema_: str = Field(alias="schema", default="")

    def model_post_init(self, context: Any, /) -> None:
        if not self.schema_:
            object.__setattr__(self, "schema_", self.SCHEMA)

    def to_json(self) -> bytes:
        return self.model_dump_json(by_alias=True).encode()

    @classmethod
    def from_json(cls, payload: bytes | str, topic: str = "") -> Self:
        where = f"{topic}: " if topic else ""
        try:
            data = json.loads(payload)
        except (UnicodeDecodeError, ValueError) as err:
            raise PayloadError(f"{where}payload is not JSON ({err}); expected a {cls.SCHEMA} object", "json") from err
        except RecursionError:
            raise PayloadError(
                f"{where}payload is JSON nested too deeply; expected a {cls.SCHEMA} object", "json"
            ) from None
        return cls.from_dict(data, topic)

    @classmethod
    def from_dict(cls, data: object, topic: str = "") -> Self:
        where = f"{topic}: " if topic else ""
        if not isinstance(data, dict):
            raise PayloadError(f"{where}payload is {type(data).__name__}, expected a {cls.SCHEMA} object", "schema")
        schema = data.get("schema")
        if schema in cls.READS:
            data = {**data, "schema": cls.SCHEMA}
        elif schema != cls.SCHEMA:
            name = cls.SCHEMA.split("/")[0]
            reason = "version" if isinstance(schema, str) and schema.startswith(name + "/") else "schema"
            raise PayloadError(f"{where}field 'schema' is {schema!r}, expected {cls.SCHEMA!r}", reason)
        try:
            return cls.model_validate(data)
        except ValidationError as err:
            first = err.errors()[0]
            field = ".".join(str(p) for p in first["loc"]) or "(root)"
            got = first.get("input")
            shown = repr(got) if not isinstance(got, dict) else "an object"
            raise PayloadError(f"{where}field {field!r}: {first['msg']} (got {shown})", "field") from None


class LayerEvent(Message):
    """Layer ``layer`` (index from 0) of job ``job_id`` is complete at height ``z_mm``."""

    SCHEMA: ClassVar[str] = "layerwatch.layer/1"
    printer: str = Field(min_length=1, max_length=64)
    job_id: str = Field(min_length=1, max_length=256)
    layer: int = Field(ge=0, le=1_000_000)
    z_mm: float = Field(ge=-5.0, le=10_000.0)
    time: float = Field(default_factory=time.time, description="unix seconds when the layer completed")
    source: str = Field(default="", max_length=64, description="octoprint, moonraker, virtual, replay, hook")
    end: bool = Field(default=False, description="the job has ended (after layer ``layer``): close its record")
    outcome: Literal["", "done", "cancelled", "failed"] = ""


class FrameQuality(BaseModel):
    """Frame-quality checks that travel with a frame. ``sharpness``: variance of the Laplacian (8-bit scale)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    sharpness: float = Field(ge=0)
    mean: float = Field(ge=0, le=1, description="mean brightness, 0 black .. 1 full scale")
    blurry: bool = False
    frozen: bool = False
    too_dark: bool = False
    too_bright: bool = False

    @property
    def ok(self) -> bool:
        return not (self.blurry or self.frozen or self.too_dark or self.too_bright)

    @property
    def problems(self) -> list[str]:
        return [n for n in ("blurry", "frozen", "too_dark", "too_bright") if getattr(self, n)]


class FrameMeta(Message):
    """Header of a frame envelope: which layer it shows and how it is encoded."""

    SCHEMA: ClassVar[str] = "layerwatch.frame/2"
    READS: ClassVar[tuple[str, ...]] = ("layerwatch.frame/1",)
    printer: str = Field(min_length=1, max_length=64)
    job_id: str = Field(min_length=1, max_length=256)
    layer: int = Field(ge=0, le=1_000_000)
    z_mm: float = Field(ge=-5.0, le=10_000.0)
    captured_at: float
    encoding: Literal["png", "jpeg"]
    width: int = Field(ge=1, le=65_535)
    height: int = Field(ge=1, le=65_535)
    channels: Literal[1, 3]
    bit_depth: Literal[8, 16]
    source: str = Field(default="", max_length=64)
    attempt: int = Field(default=1, ge=1, description="capture attempt that succeeded")
    quality: FrameQuality | None = None
    part_ids_bytes: int = Field(default=0, ge=0, description="length of the part-id PNG after the image bytes")
    # "melt": the layer after exposure (judged); "recoat": the fresh powder spread for the layer, before it is
    # exposed (Peregrine's second image: kept in the record, and the build's lighting reference)
    view: Literal["melt", "recoat"] = "melt"
    # the camera's scale where its source knows it (a calibrated camera, the simulator): the record uses it unless
    # [printers.<id>] mm_per_px says otherwise, and a disagreement is said
    mm_per_px: float | None = Field(default=None, gt=0, le=10)


def encode_frame(meta: FrameMeta, image_bytes: bytes, part_ids: bytes = b"") -> bytes:
    """The envelope; ``part_ids``, when given, is a PNG of the part id of every pixel (0: none)."""
    if meta.part_ids_bytes != len(part_ids):
        meta = meta.model_copy(update={"part_ids_bytes": len(part_ids)})
    header = meta.to_json()
    return FRAME_MAGIC + _HEADER.pack(len(header)) + header + image_bytes + part_ids


def split_frame(payload: bytes, topic: str = "") -> tuple[FrameMeta, bytes, bytes]:
    """Validated header, encoded image bytes and encoded part-id bytes (empty when the frame has none)."""
    where = f"{topic}: " if topic else ""
    if len(payload) < 8 or payload[:4] != FRAME_MAGIC:
        raise PayloadError(f"{where}not a LayerWatch frame (expected the {FRAME_MAGIC!r} envelope)", "envelope")
    (n,) = _HEADER.unpack_from(payload, 4)
    if n > _MAX_HEADER or 8 + n > len(payload):
        raise PayloadError(f"{where}frame header length {n} does not fit the {len(payload)}-byte payload", "envelope")
    meta = FrameMeta.from_json(payload[8 : 8 + n], topic)
    body = payload[8 + n :]
    if not body:
        raise PayloadError(f"{where}frame of layer {meta.layer} carries no image bytes", "envelope")
    if meta.part_ids_bytes >= len(body):
        raise PayloadError(
            f"{where}frame of layer {meta.layer} says {meta.part_ids_bytes} bytes of part ids but carries "
            f"{len(body)} bytes in all",
            "envelope",
        )
    cut = len(body) - meta.part_ids_bytes
    image, parts = body[:cut], body[cut:]
    if not image:
        raise PayloadError(f"{where}frame of layer {meta.layer} carries no image bytes", "envelope")
    return meta, image, parts


def decode_frame(payload: bytes, topic: str = "") -> tuple[FrameMeta, bytes]:
    """Split a frame envelope into its validated header and the encoded image bytes (not decoded here)."""
    meta, image, _ = split_frame(payload, topic)
    return meta, image


MAX_STROKES = 64
MAX_STROKE_POINTS = 512


class LabelStroke(BaseModel):
    """One operator's label on one layer, in camera pixels: a ``brush`` line of ``width`` px, a filled
    ``region`` polygon, or the whole ``frame``. ``label``: a class id (0 powder .. 4 warping), 254 "no defect
    here" or 255 to erase."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    kind: Literal["brush", "region", "frame"]
    label: int = Field(ge=0, le=255)
    width: float = Field(default=1.0, ge=1, le=512)
    points: list[tuple[float, float]] = Field(default_factory=list, max_length=MAX_STROKE_POINTS)


class ActionMessage(Message):
    """A command to the printer and its outcome (requested, acknowledged, confirmed, failed)."""

    SCHEMA: ClassVar[str] = "layerwatch.action/1"
    printer: str = Field(min_length=1, max_length=64)
    action: ActionKind
    state: ActionState
    request_id: str = Field(min_length=1, max_length=128)
    job_id: str = Field(default="", max_length=256)
    layer: int | None = Field(default=None, ge=0)
    reason: str = Field(default="", max_length=2000)
    gcode: list[str] = Field(default_factory=list, max_length=100)
    object_name: str = ""
    time: float = Field(default_factory=time.time)
    detail: str = Field(default="", max_length=2000)
    rule: str = Field(default="", max_length=64)
    incident: str = Field(default="", max_length=128)
    severity: Severity | Literal[""] = ""
    metrics: dict[str, float] = Field(default_factory=dict)
    model: str = Field(default="", max_length=128)
    verdict: Verdict | Literal[""] = ""
    labels: list[LabelStroke] = Field(default_factory=list, max_length=MAX_STROKES)
    operator: str = Field(default="", max_length=64)
    # an operator's request: HMAC-SHA256 (hex) of the rest under the operator's secret (printer_io.credentials)
    signature: str = Field(default="", max_length=64)


class RuleHitInfo(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    rule: str
    severity: Severity
    value: float
    threshold: float
    part_id: int = 0
    description: str = ""


class ResultMessage(Message):
    """The monitor's judgement of one layer: metrics, rule hits, the actions requested, timings."""

    SCHEMA: ClassVar[str] = "layerwatch.result/2"
    READS: ClassVar[tuple[str, ...]] = ("layerwatch.result/1",)
    printer: str = Field(min_length=1, max_length=64)
    job_id: str = Field(min_length=1, max_length=256)
    layer: int = Field(ge=0)
    z_mm: float
    judged: bool = True
    severity: Severity = Severity.OK
    metrics: dict[str, int | float] = Field(default_factory=dict, description="counts are integers")
    parts: list[dict[str, int | float]] = Field(default_factory=list)
    hits: list[RuleHitInfo] = Field(default_factory=list)
    actions: list[str] = Field(default_factory=list, description="request ids of the actions requested")
    quality: FrameQuality | None = None
    captured_at: float = 0.0
    received_at: float = 0.0
    published_at: float = Field(default_factory=time.time)
    segment_ms: float = 0.0
    timings_ms: dict[str, float] = Field(default_factory=dict, description="decode, segment, metrics, record")
    model: str = ""
    record: str = ""
    # the layer's classes as a small RGBA PNG (base64) to lay over its frame: powder clear, the part faint, defects
    # strong, at most [monitor] result_overlay_px on its longer side (OctoPrint's LayerWatch tab shows it)
    overlay: str = Field(default="", max_length=400_000, pattern=r"^(iVBORw0KGgo[A-Za-z0-9+/]*={0,2})?$")


class EventMessage(Message):
    """Something an operator should see: capture failed, frame too large, pause not confirmed, ..."""

    SCHEMA: ClassVar[str] = "layerwatch.event/1"
    printer: str = Field(min_length=1, max_length=64)
    service: str = Field(min_length=1, max_length=64)
    level: EventLevel
    code: str = Field(min_length=1, max_length=64)
    message: str = Field(max_length=4000)
    job_id: str = ""
    layer: int | None = Field(default=None, ge=0)
    time: float = Field(default_factory=time.time)


class StatusMessage(Message):
    """Retained on ``<prefix>/<printer>/status`` by every service; the last will says ``offline``.

    ``worker``: the monitor worker that holds the printer (``layerwatch monitor --group``), where workers share a
    site; ``hops``: how often a worker passed the printer on, taking no more than its share (monitor.workers)."""

    SCHEMA: ClassVar[str] = "layerwatch.status/3"
    READS: ClassVar[tuple[str, ...]] = ("layerwatch.status/1", "layerwatch.status/2")
    service: str = Field(min_length=1, max_length=64)
    client_id: str = Field(min_length=1, max_length=128)
    # degraded: connected, but something it must do fails (the broker refuses its publishes): ``problem`` says what
    state: Literal["online", "degraded", "offline"]
    problem: str = Field(default="", max_length=500)
    time: float = Field(default_factory=time.time)
    version: str = ""
    worker: str = Field(default="", max_length=64)
    hops: int = Field(default=0, ge=0, le=1000)


class PrinterStateMessage(Message):
    """Retained on ``<prefix>/<printer>/status/printer`` by the monitor: what the printer itself says it is doing,
    as the monitor's watcher last read it (every few seconds, and at once on a change). ``state`` is one of
    printer_io.printer.PrinterState's values, or ``unreachable`` when the printer's host does not answer;
    ``layer``: the printer's layer where it reports one, else the last layer event's."""

    SCHEMA: ClassVar[str] = "layerwatch.printer/1"
    printer: str = Field(min_length=1, max_length=64)
    state: str = Field(min_length=1, max_length=32, pattern=r"^[a-z_]+$")
    job: str = Field(default="", max_length=256)
    layer: int | None = Field(default=None, ge=0, le=1_000_000)
    z_mm: float | None = Field(default=None, ge=-5.0, le=10_000.0)
    backend: str = Field(default="", max_length=64)
    time: float = Field(default_factory=time.time)
