"""Labels from build records: the operators' verdicts on incidents, as training masks.

A verdict is a label of the layer its incident was opened on: "false alarm" says that layer's defect
pixels are powder or part (254, "no defect here"), "confirmed defect" that they are what the model
called them; every other pixel stays 255 (not labelled). ``layerwatch labels export`` writes them as
``images/`` + ``masks/`` PNGs, the format ``layerwatch finetune`` and users' own tools share.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from monitor.record import RecordError, RecordReader
from printer_io.vocabulary import Verdict
from segmentation.classes import DEFECT_CLASSES, NO_DEFECT, UNLABELLED

__all__ = ["LabelledLayer", "export_labels", "verdict_layers"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LabelledLayer:
    record: Path
    layer: int
    incident: str
    verdict: Verdict
    operator: str


def verdict_layers(path: Path) -> list[LabelledLayer]:
    """The layers of a record that carry an operator's verdict (the last verdict of an incident wins)."""
    with RecordReader(path) as r:
        return _verdicts(r, path)


def _verdicts(r: RecordReader, path: Path) -> list[LabelledLayer]:
    opened: dict[str, int] = {}
    for a in r.table("actions"):
        if a["incident"] and a["action"] != "feedback" and int(a["layer"]) >= 0:
            opened.setdefault(str(a["incident"]), int(a["layer"]))
    last: dict[str, tuple[Verdict, str]] = {}
    for f in r.table("feedback"):
        if f["verdict"] in set(Verdict):
            last[str(f["incident"])] = (Verdict(f["verdict"]), str(f["operator"]))
    stored = {int(k) for k in r.stored_layers()}
    return [
        LabelledLayer(path, opened[inc], inc, verdict, who)
        for inc, (verdict, who) in sorted(last.items())
        if inc in opened and opened[inc] in stored
    ]


def export_labels(records: list[Path], out: Path) -> Counter[str]:
    """Write every verdict's layer as ``out/images/NAME.png`` and ``out/masks/NAME.png``; counts by verdict.
    A record that cannot be read is skipped with its reason counted under ``unreadable``."""
    for sub in ("images", "masks"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    counts: Counter[str] = Counter()
    for path in records:
        try:
            with RecordReader(path) as r:
                for item in _verdicts(r, path):
                    predicted = r.mask(item.layer)
                    defect = np.isin(predicted, [int(c) for c in DEFECT_CLASSES])
                    label = np.full(predicted.shape, UNLABELLED, np.uint8)
                    label[defect] = NO_DEFECT if item.verdict == Verdict.FALSE_ALARM else predicted[defect]
                    name = f"{path.stem}-{item.layer:05d}"
                    cv2.imwrite(str(out / "images" / f"{name}.png"), r.image(item.layer))
                    cv2.imwrite(str(out / "masks" / f"{name}.png"), label)
                    counts[str(item.verdict)] += 1
        except (RecordError, OSError, KeyError) as err:
            counts["unreadable"] += 1
            log.warning("labels: %s skipped (%s)", path, err)
    return counts
