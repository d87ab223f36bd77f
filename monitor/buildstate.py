"""What the monitor keeps of one build while it judges it, and what it made of one layer.

Plain data: the stages of a layer's path (:mod:`monitor.pipeline`), the observers (:mod:`monitor.observers`)
and the build's opening and resuming (:mod:`monitor.opening`) share these, and nothing here acts.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from monitor.metrics import LayerMetrics, MetricsComputer
from monitor.policy import PolicyEngine, RuleHit
from monitor.record import BuildRecord
from printer_io.messages import ActionMessage, FrameMeta, RuleHitInfo
from printer_io.printer import PrinterStatus
from printer_io.vocabulary import Severity
from segmentation.roi import Roi

__all__ = ["Build", "CameraPresence", "LayerContext", "LayerOutcome", "record_stem"]

_PLAIN_JOB = re.compile(r"[A-Za-z0-9_.-]{1,100}")
_HASHED_STEM = re.compile(r".*-[0-9a-f]{10}")


def record_stem(job_id: str) -> str:
    """The file name (without ``.h5``) of a job's record, one job to one name.

    A plain job id is its own name. Any other (characters a file name must not hold, long, or ending like
    our temporary, recovering and crashed files, or like a hashed name) becomes its safe characters plus
    a hash of the whole id: "a/b" and "a_b" no longer share a record, and job "victim.creating" no longer
    names the temporary file of job "victim". A reprint of a job adds ``~2``, ``~3``... (no job id holds ``~``)."""
    if (
        _PLAIN_JOB.fullmatch(job_id)
        and not _HASHED_STEM.fullmatch(job_id)
        and not job_id.endswith((".creating", ".recovering", ".crashed", ".h5"))
        and job_id not in (".", "..")
    ):
        return job_id
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", job_id)[:80].strip(".") or "job"
    return f"{safe}-{hashlib.sha256(job_id.encode()).hexdigest()[:10]}"


@dataclass
class Build:
    """One build being judged: its record, the running measurement and rule windows, the layer numbering."""

    job_id: str
    record: BuildRecord
    metrics: MetricsComputer
    policy: PolicyEngine
    last_layer: int = -1
    last_seen: float = field(default_factory=time.monotonic)
    gaps: deque[float] = field(default_factory=lambda: deque(maxlen=10))  # seconds between its recent frames
    ahead: int | None = None  # a frame far ahead of last_layer, not yet followed by the next
    layers_judged: int = 0
    roi: Roi | None = None  # the build plate; None: the whole frame
    roi_mask: np.ndarray | None = None
    illum: np.ndarray | None = None  # the reference lighting, once the first layers gave it
    illum_frames: list[np.ndarray] = field(default_factory=list)
    printer_was_active: bool = False  # the printer was seen printing (or paused) during this build
    end_reason: str = ""  # why the job is over (printer state, end event); the record closes after the grace time
    # an end event that came while the printer still printed: (when, why); the job ends when the printer stops
    end_held: tuple[float, str] | None = None
    thickness: float = 0.0  # the record's layer thickness (mm)
    backlog: tuple[int, int] | None = None  # (first, last) layer of a backlog being judged late, not acted on
    heights: deque[tuple[int, float]] = field(default_factory=lambda: deque(maxlen=8))  # (layer, z) of recent frames
    thickness_said: bool = False

    def set_roi(self, roi: Roi | None, shape: tuple[int, int]) -> None:
        self.roi = roi
        self.roi_mask = roi.mask(shape) if roi is not None else None


@dataclass(frozen=True)
class LayerOutcome:
    """What the monitor made of one layer: its mask and metrics, the rules it broke, the actions taken."""

    mask: np.ndarray
    metrics: LayerMetrics
    hits: list[RuleHit]
    actions: list[ActionMessage]
    judged: bool
    late: bool  # it came after a later layer: stored, never judged
    severity: Severity
    printer: PrinterStatus | None  # the printer's state when the layer was judged (the watcher's last reading)
    timings_ms: dict[str, float]
    object_ids: np.ndarray | None = None  # the parts as the camera's printer knows them (its object ids)


@dataclass
class LayerContext:
    """One frame on its way through the stages (monitor.pipeline): what each stage adds for the next ones."""

    meta: FrameMeta
    received: float  # wall-clock time the message came
    frame: np.ndarray  # as decoded (BGR or gray)
    object_ids: np.ndarray | None  # the printer's object ids per pixel, where the frame carried them
    timings_ms: dict[str, float] = field(default_factory=dict)
    build: Build | None = None
    gray: np.ndarray | None = None  # the frame as the model sees it and the record keeps it
    segmentation: Any = None  # segmentation.inference.SegmentResult
    metrics: LayerMetrics | None = None
    hits: list[RuleHit] = field(default_factory=list)
    hit_infos: list[RuleHitInfo] = field(default_factory=list)
    judged: bool = False
    late: bool = False
    sound: bool = False  # quality fine and in order: what drift and lighting may learn from
    waited: bool = False  # it waited for the monitor while the print moved on: judged, not acted on
    actions: list[ActionMessage] = field(default_factory=list)
    outcome: LayerOutcome | None = None


class CameraPresence:
    """Whether frames follow the printer's layer events: the first layer event no frame has followed yet (job,
    layer, when), and whether the camera's absence was said (monitor.jobs says it; a frame clears it)."""

    def __init__(self) -> None:
        self.awaiting: tuple[str, int, float] | None = None
        self.said = False

    def layer_event(self, job_id: str, layer: int) -> None:
        if self.awaiting is None:
            self.awaiting = (job_id, layer, time.monotonic())  # its frame should follow

    def frame_came(self) -> bool:
        """A frame came: the camera is there. Whether its absence had been said (the caller clears the problem)."""
        self.awaiting = None
        said, self.said = self.said, False
        return said
