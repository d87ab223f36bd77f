"""The policy: rules that turn per-layer metrics into decisions, persisting across layers.

A rule names a metric, a threshold (``above`` or ``below``), a persistence (``k`` of the last ``n``
judged layers), a region (``anywhere``: the whole frame; ``part``: inside the part region, the metric's
``_part`` variant; ``each_part``: every part on its own, a per-part metric; ``part:<id>``: one part),
a severity and actions. Frames that fail the camera's quality checks are not judged: they neither
count towards nor break a persistence, and they raise their own warning.

Rules live in the TOML config (``[[policy.rules]]``); ``data/config/policy.toml`` ships the defaults.
"""

from __future__ import annotations

import tomllib
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from monitor.metrics import METRIC_NAMES, PART_METRIC_NAMES, SPATTER_REACH_PX, LayerMetrics
from monitor.settings import ConfigFileError, section
from printer_io.vocabulary import Severity
from segmentation.classes import CLASS_NAMES, DEFECT_CLASSES, LayerClass
from segmentation.resources import data_dir

__all__ = [
    "DEFAULT_POLICY",
    "Box",
    "Policy",
    "PolicyEngine",
    "Rule",
    "RuleHit",
    "Severity",
    "evidence_boxes",
    "load_policy",
    "watched_class",
]

DEFAULT_POLICY = data_dir() / "config" / "policy.toml"


def watched_class(metric: str) -> LayerClass | None:
    """The defect class a metric measures (``warping_confirmed_area_mm2`` -> warping), or None."""
    return next((c for c in DEFECT_CLASSES if CLASS_NAMES[c] in metric), None)


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class GcodeAction(_Strict):
    """Adjust feed (M220) or flow (M221) by ``step_pct`` each time, at most ``max_total_pct`` in total a build."""

    type: Literal["gcode"] = "gcode"
    command: Literal["M220", "M221"]
    step_pct: float = Field(gt=-50, lt=50)
    max_total_pct: float = Field(gt=0, le=50)

    @model_validator(mode="after")
    def _nonzero(self) -> GcodeAction:
        if self.step_pct == 0:
            raise ValueError("step_pct must not be 0")
        return self


class SimpleAction(_Strict):
    type: Literal["notify", "pause", "cancel", "exclude_object"]


Action = Annotated[GcodeAction | SimpleAction, Field(discriminator="type")]


class Rule(_Strict):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    metric: str
    above: float | None = None
    below: float | None = None
    k: int = Field(default=1, ge=1, le=100)
    n: int = Field(default=1, ge=1, le=100)
    region: str = "anywhere"
    severity: Severity = Severity.WARNING
    actions: tuple[Action, ...] = ()
    description: str = ""

    @model_validator(mode="after")
    def _check(self) -> Rule:
        if (self.above is None) == (self.below is None):
            raise ValueError(f"rule {self.name!r}: give exactly one of 'above' or 'below'")
        if self.severity == Severity.OK:
            raise ValueError(f"rule {self.name!r}: severity 'ok' says nothing; use info, warning or critical")
        if self.k > self.n:
            raise ValueError(f"rule {self.name!r}: k={self.k} of n={self.n} can never hold; k must be <= n")
        if self.region not in ("anywhere", "part", "each_part") and not (
            self.region.startswith("part:") and self.region[5:].isdigit()
        ):
            raise ValueError(
                f"rule {self.name!r}: region {self.region!r} is not one of anywhere, part, each_part, part:<id>"
            )
        valid = self.valid_metrics()
        if self.metric not in valid:
            raise ValueError(
                f"rule {self.name!r}: metric {self.metric!r} does not exist for region {self.region!r}; "
                f"valid: {', '.join(valid)}"
            )
        return self

    def valid_metrics(self) -> tuple[str, ...]:
        if self.region == "anywhere":
            return METRIC_NAMES
        if self.region == "part":
            return tuple(m[: -len("_part")] for m in METRIC_NAMES if m.endswith("_part"))
        return PART_METRIC_NAMES

    def holds(self, value: float) -> bool:
        if value != value:  # NaN: not measured, never a hit
            return False
        return value > self.above if self.above is not None else value < self.below  # type: ignore[operator]

    @property
    def threshold(self) -> float:
        return self.above if self.above is not None else self.below  # type: ignore[return-value]


class Policy(_Strict):
    rules: tuple[Rule, ...] = ()

    @model_validator(mode="after")
    def _unique(self) -> Policy:
        names = [r.name for r in self.rules]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"rule names must be unique; repeated: {', '.join(dupes)}")
        return self


def load_policy(path: Path) -> Policy:
    """A policy file: ``[[rules]]`` tables. Errors name the file; see :mod:`monitor.config` for the format."""
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigFileError(f"policy file {path} does not exist") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise ConfigFileError(f"policy file {path} is not valid TOML: {err}") from err
    return section(Policy, data, "policy", str(path))


#: a rectangle on the frame, camera pixels: (x, y, width, height)
Box = tuple[int, int, int, int]
_BOXES = 8  # evidence boxes per hit at most, the largest first
_BOX_MARGIN_PX = 4


def evidence_boxes(
    rule: Rule, part_id: int, mask: np.ndarray, metrics: LayerMetrics, limit: int = _BOXES
) -> tuple[Box, ...]:
    """Where on the frame a hit of ``rule`` was measured: rectangles around the largest connected regions of
    the pixels its metric counts (confirmed warping, or its class's pixels within its region or part),
    ``limit`` at most, each with a margin of 4 px. Empty for metrics of no class (part counts and areas)
    except a part's own area, boxed whole."""
    h, w = mask.shape
    ids = metrics.part_ids
    if rule.metric.startswith("warping_confirmed"):
        if metrics.confirmed is None:
            return ()
        where = metrics.confirmed
    elif (cls := watched_class(rule.metric)) is not None:
        where = mask == cls
        if rule.region == "part":
            where &= ids > 0
        elif part_id:
            own = ids == part_id
            if cls == LayerClass.SPATTER:  # particles near the part count for it (the metrics' reach)
                reach = 2 * SPATTER_REACH_PX + 1
                own = cv2.dilate(own.view(np.uint8), np.ones((reach, reach), np.uint8)) > 0
            where &= own
    elif part_id:
        where = ids == part_id
    else:
        return ()
    if not where.any():
        return ()
    _, _, stats, _ = cv2.connectedComponentsWithStats(where.view(np.uint8), connectivity=8)
    order = np.argsort(-stats[1:, cv2.CC_STAT_AREA], kind="stable")[:limit] + 1
    m = _BOX_MARGIN_PX
    out: list[Box] = []
    for i in order:
        x, y, bw, bh = (int(v) for v in stats[i, :4])
        x0, y0 = max(0, x - m), max(0, y - m)
        out.append((x0, y0, min(w, x + bw + m) - x0, min(h, y + bh + m) - y0))
    return tuple(out)


@dataclass(frozen=True)
class RuleHit:
    """A rule that holds at ``layer`` (its persistence met). ``part_id`` 0 unless the rule is per part."""

    rule: Rule
    layer: int
    value: float
    part_id: int
    window: tuple[bool, ...]  # the last n judgements, oldest first

    @property
    def key(self) -> str:
        return self.rule.name if not self.part_id else f"{self.rule.name}@part{self.part_id}"

    def describe(self) -> str:
        """Why, in words first (the rule's description), then the figures: what a person reads."""
        where = f" on part {self.part_id}" if self.part_id else ""
        op = ">" if self.rule.above is not None else "<"
        measured = (
            f"{self.rule.metric}{where} = {self.value:.4g} {op} {self.rule.threshold:g} "
            f"on {sum(self.window)} of the last {len(self.window)} layers"
        )
        if self.rule.description:
            return f"{self.rule.description}{where} (rule {self.rule.name}: {measured})"
        return f"rule {self.rule.name}: {measured}"


class PolicyEngine:
    """Evaluates a policy layer by layer for one build; keeps each rule's window (per part where it applies)."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self._windows: dict[tuple[str, int], deque[bool]] = {}

    def evaluate(
        self, layer: int, metrics: Mapping[str, float], parts: Sequence[Mapping[str, float]], *, judged: bool = True
    ) -> list[RuleHit]:
        """Rules that hold at this layer. ``judged=False`` (a bad frame): windows stay as they are."""
        if not judged:
            return []
        hits: list[RuleHit] = []
        for rule in self.policy.rules:
            for part_id, value in self._values(rule, metrics, parts):
                window = self._windows.setdefault((rule.name, part_id), deque(maxlen=rule.n))
                window.append(rule.holds(value))
                if sum(window) >= rule.k:
                    hits.append(RuleHit(rule, layer, value, part_id, tuple(window)))
        return hits

    @staticmethod
    def _values(
        rule: Rule, metrics: Mapping[str, float], parts: Sequence[Mapping[str, float]]
    ) -> list[tuple[int, float]]:
        if rule.region == "anywhere":
            return [(0, float(metrics.get(rule.metric, float("nan"))))]
        if rule.region == "part":
            return [(0, float(metrics.get(f"{rule.metric}_part", float("nan"))))]
        wanted = int(rule.region[5:]) if rule.region.startswith("part:") else None
        return [
            (int(p["part_id"]), float(p.get(rule.metric, float("nan"))))
            for p in parts
            if wanted is None or int(p["part_id"]) == wanted
        ]

    def to_dict(self) -> dict[str, Any]:
        return self.policy.model_dump(mode="json")
