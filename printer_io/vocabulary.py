"""The words the services, the build record and the dashboard share, each defined once.

Wire values (the strings in MQTT payloads and records) are the enum values; the record's layer table
stores a severity as its index in :class:`Severity` (``Severity.from_index``).
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum

__all__ = ["ActionKind", "ActionState", "EventLevel", "Severity", "Verdict"]


class Severity(StrEnum):
    """How bad a layer is, in rising order: a layer's severity is the worst of its rule hits."""

    OK = "ok"
    INFO = "info"
    WARNING = "warning"
    CRITICAL = "critical"

    @property
    def rank(self) -> int:
        return list(Severity).index(self)

    @classmethod
    def from_index(cls, index: int) -> Severity:
        """The severity stored as ``index`` (an out-of-range index reads as OK)."""
        members = list(cls)
        return members[index] if 0 <= index < len(members) else cls.OK

    @classmethod
    def worst(cls, severities: Iterable[str]) -> Severity:
        return max((cls(s) for s in severities), key=lambda s: s.rank, default=cls.OK)


class ActionKind(StrEnum):
    """What an action message asks of (or tells about) a printer."""

    PAUSE = "pause"
    RESUME = "resume"
    CANCEL = "cancel"
    GCODE = "gcode"
    EXCLUDE_OBJECT = "exclude_object"
    NOTIFY = "notify"
    FEEDBACK = "feedback"
    ROI = "roi"
    LABEL = "label"


class ActionState(StrEnum):
    REQUESTED = "requested"
    CONFIRMED = "confirmed"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    SKIPPED = "skipped"  # decided against (bound reached, unsupported): said, so nobody waits for it


class EventLevel(StrEnum):
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"
    CRITICAL = "critical"


class Verdict(StrEnum):
    """An operator's judgement of an incident (feedback)."""

    FALSE_ALARM = "false_alarm"
    CONFIRMED_DEFECT = "confirmed_defect"
