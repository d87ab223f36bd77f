"""Labels from build records: operators' strokes and verdicts, as training masks.

Two sources, applied in this order on a layer that starts "not labelled" (255):

- a verdict on an incident labels the layer the incident was opened on, for the defect class its
  rule watches (warping for a warping rule; every defect class when the rule's metric names none):
  "false alarm" says the pixels the model gave that class are powder or part (254, "no defect
  here"), "confirmed defect" that they are that class; the layer's other pixels say nothing (a false
  alarm on warping is no word on that layer's spatter);
- operators' strokes from the dashboard (the record's ``labels`` table), in the order they were
  given: a brush line, a filled region or the whole frame set to a class id, 254 ("no defect here") or
  255 (erase).

``layerwatch labels export`` writes them as ``images/`` + ``masks/`` PNGs, the format
``layerwatch finetune`` and users' own tools share. The images are the frames as the model saw them
(flat-fielded by the build's reference lighting, 16-bit), so that what is learnt is what runs.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from monitor.policy import watched_class
from monitor.record import RecordError, RecordReader
from printer_io.vocabulary import Verdict
from segmentation.classes import DEFECT_CLASSES, NO_DEFECT, NUM_CLASSES, UNLABELLED

__all__ = [
    "LABEL_VALUES",
    "LabelledLayer",
    "draw_strokes",
    "export_labels",
    "labelled_layers",
    "layer_label",
    "saved_label",
    "verdict_layers",
]

log = logging.getLogger(__name__)

LABEL_VALUES = frozenset({*range(NUM_CLASSES), NO_DEFECT, UNLABELLED})


@dataclass(frozen=True)
class LabelledLayer:
    record: Path
    layer: int
    incident: str
    verdict: Verdict
    operator: str
    classes: tuple[int, ...] = tuple(int(c) for c in DEFECT_CLASSES)  # the defect classes the incident was about


def verdict_layers(path: Path) -> list[LabelledLayer]:
    """The layers of a record that carry an operator's verdict (the last verdict of an incident wins)."""
    with RecordReader(path) as r:
        return _verdicts(r, path)


def _verdicts(r: RecordReader, path: Path) -> list[LabelledLayer]:
    opened: dict[str, int] = {}
    rules: dict[str, str] = {}
    for a in r.table("actions"):
        if a["incident"] and a["action"] != "feedback" and int(a["layer"]) >= 0:
            opened.setdefault(str(a["incident"]), int(a["layer"]))
            rules.setdefault(str(a["incident"]), str(a["rule"]))
    try:
        metric_of = {str(rule["name"]): str(rule["metric"]) for rule in (r.json_attr("policy") or {}).get("rules", [])}
    except (KeyError, ValueError, TypeError, AttributeError):
        metric_of = {}
    last: dict[str, tuple[Verdict, str]] = {}
    for f in r.table("feedback"):
        if f["verdict"] in set(Verdict):
            last[str(f["incident"])] = (Verdict(f["verdict"]), str(f["operator"]))
    stored = {int(k) for k in r.stored_layers()}
    out = []
    for inc, (verdict, who) in sorted(last.items()):
        if inc in opened and opened[inc] in stored:
            watched = watched_class(metric_of.get(rules.get(inc, ""), ""))
            classes = (int(watched),) if watched is not None else tuple(int(c) for c in DEFECT_CLASSES)
            out.append(LabelledLayer(path, opened[inc], inc, verdict, who, classes))
    return out


def draw_strokes(label: np.ndarray, strokes: Iterable[Mapping[str, Any]]) -> np.ndarray:
    """Paint strokes (``kind``, ``label``, ``width``, ``points`` in px) onto a (H, W) uint8 label, in order."""
    for s in strokes:
        value = int(s["label"])
        pts = np.round(np.asarray(s["points"], dtype=np.float64)).astype(np.int32).reshape(-1, 1, 2)
        if s["kind"] == "frame":
            label[:] = value
        elif s["kind"] == "region" and len(pts) >= 3:
            cv2.fillPoly(label, [pts], value)
        elif s["kind"] == "brush" and len(pts):
            width = max(1, round(float(s["width"])))
            if len(pts) == 1:
                cv2.circle(label, tuple(int(v) for v in pts[0, 0]), max(1, width // 2), value, -1)
            else:
                cv2.polylines(label, [pts], False, value, thickness=width, lineType=cv2.LINE_8)
    return label


def _strokes(r: RecordReader) -> dict[int, list[dict[str, Any]]]:
    by_layer: dict[int, list[dict[str, Any]]] = {}
    for row in sorted(r.table("labels"), key=lambda row: row["time"]):
        try:
            points = json.loads(row["points"])
        except ValueError:
            continue  # a row cut short: nothing to draw
        if int(row["label"]) in LABEL_VALUES:
            by_layer.setdefault(int(row["layer"]), []).append({**row, "points": points})
    return by_layer


def saved_label(r: RecordReader, layer: int) -> tuple[np.ndarray, int] | None:
    """What operators painted on ``layer`` so far (their strokes in order, 255 where none) and how many
    strokes; None where no one did."""
    strokes = _strokes(r).get(layer, [])
    if not strokes:
        return None
    return draw_strokes(np.full(r.frame_size, UNLABELLED, np.uint8), strokes), len(strokes)


def layer_label(
    predicted: np.ndarray, verdicts: Sequence[LabelledLayer], strokes: Sequence[Mapping[str, Any]]
) -> np.ndarray:
    """A layer's label: verdicts on the model's mask ``predicted``, then the strokes."""
    label = np.full(predicted.shape, UNLABELLED, np.uint8)
    for v in verdicts:
        said = np.isin(predicted, v.classes)  # the verdict is about the incident's class, not the whole layer
        label[said] = NO_DEFECT if v.verdict == Verdict.FALSE_ALARM else predicted[said]
    return draw_strokes(label, strokes)


def labelled_layers(r: RecordReader, path: Path) -> dict[int, tuple[list[LabelledLayer], list[dict[str, Any]]]]:
    """Every stored layer with a verdict or a stroke: its verdicts and strokes."""
    out: dict[int, tuple[list[LabelledLayer], list[dict[str, Any]]]] = {}
    for v in _verdicts(r, path):
        out.setdefault(v.layer, ([], []))[0].append(v)
    stored = {int(k) for k in r.stored_layers()}
    for layer, strokes in _strokes(r).items():
        if layer in stored:
            out.setdefault(layer, ([], []))[1].extend(strokes)
    return dict(sorted(out.items()))


def export_labels(records: list[Path], out: Path) -> Counter[str]:
    """Write every labelled layer as ``out/images/NAME.png`` and ``out/masks/NAME.png``; counts layers
    (``layers`` in all; by verdict; ``strokes``). A record that cannot be read is skipped, as ``unreadable``."""
    for sub in ("images", "masks"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    counts: Counter[str] = Counter()
    for path in records:
        try:
            with RecordReader(path) as r:
                for layer, (verdicts, strokes) in labelled_layers(r, path).items():
                    label = layer_label(r.mask(layer), verdicts, strokes)
                    if (label == UNLABELLED).all():
                        continue  # erased again: nothing to learn from
                    name = f"{path.stem}-{layer:05d}"
                    # the frame as the model saw it (flat-fielded by the build's lighting): what it must learn
                    seen = np.round(r.seen_image(layer) * 65535).astype(np.uint16)
                    cv2.imwrite(str(out / "images" / f"{name}.png"), seen)
                    cv2.imwrite(str(out / "masks" / f"{name}.png"), label)
                    counts["layers"] += 1
                    for v in verdicts:
                        counts[str(v.verdict)] += 1
                    if strokes:
                        counts["strokes"] += 1
        except (RecordError, OSError, KeyError) as err:
            counts["unreadable"] += 1
            log.warning("labels: %s skipped (%s)", path, err)
    return counts
