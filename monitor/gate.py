"""The gate before a model reaches a printer: replay the builds operators reviewed with the current and the
candidate model, side by side (``layerwatch model evaluate``), and the rule ``layerwatch model promote`` keeps.

What counts, per reviewed build (a record with operators' verdicts or labels):

- a *confirmed defect* is an incident an operator confirmed, at the layer it was opened; a model catches it
  with its first pause at or after ``EARLY_LAYERS`` layers before that layer (the defect may have begun before
  the model that found it saw it); the delay is that pause's layer minus the incident's, negative when earlier;
- a *false pause* is a pause in a build with verdicts that catches no confirmed defect (before every one of
  them, or in a build where none was confirmed); pauses in builds with labels but no verdict are "unreviewed";
- labelled layers (verdicts and strokes, ``monitor.labels``) are scored per defect class: IoU over the labelled
  pixels (254 "no defect here" counts against every defect class), and the share of "no defect here" pixels
  the model calls a defect;
- held-out simulated layers (the simulator's test stream) keep what the simulator taught in view.

The candidate passes when it misses no confirmed defect, catches none later than the current model, has
no more false pauses in any build, and its mean defect IoU on the held-out simulated layers is at most
``MAX_SIM_DROP`` below the current model's (a model that learnt one camera by forgetting the rest).
"""

from __future__ import annotations

import logging
import math
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from monitor.labels import labelled_layers, layer_label
from monitor.record import RecordError, RecordReader
from printer_io.vocabulary import Verdict
from segmentation.classes import CLASS_NAMES, DEFECT_CLASSES, NO_DEFECT, UNLABELLED

__all__ = [
    "EARLY_LAYERS",
    "MAX_SIM_DROP",
    "Review",
    "evaluate",
    "format_evaluation",
    "records_state",
    "refusals",
    "reviewed_builds",
    "still_valid",
]

log = logging.getLogger(__name__)

EARLY_LAYERS = 5
# the candidate must not forget what the simulator taught: its mean defect IoU on held-out simulated layers
# may fall by at most this much (absolute) below the model in use's
MAX_HOLDOUT_DROP = 0.02  # a candidate may score this much lower on the labelled frames its fine-tune held out
MAX_SIM_DROP = 0.10


@dataclass
class Review:
    """What operators said of one build."""

    path: Path
    confirmed: list[int]  # layers of confirmed incidents
    false_alarms: list[int]  # layers of incidents called false alarms
    labels: dict[int, np.ndarray] = field(default_factory=dict)  # layer -> label (class ids, 254, 255)

    @property
    def has_verdicts(self) -> bool:
        return bool(self.confirmed or self.false_alarms)


def reviewed_builds(records: list[Path]) -> list[Review]:
    """The records with verdicts or labels, with what they say; unreadable ones are skipped with a warning."""
    out = []
    for path in records:
        try:
            with RecordReader(path) as r:
                confirmed: set[int] = set()
                false_alarms: set[int] = set()
                labels: dict[int, np.ndarray] = {}
                for layer, (verdicts, strokes) in labelled_layers(r, path).items():
                    for v in verdicts:
                        (confirmed if v.verdict == Verdict.CONFIRMED_DEFECT else false_alarms).add(layer)
                    labels[layer] = layer_label(r.mask(layer), verdicts, strokes)
        except (RecordError, OSError, KeyError) as err:
            log.warning("gate: %s skipped (%s)", path, err)
            continue
        if labels:
            out.append(Review(path, sorted(confirmed), sorted(false_alarms), labels))
    return out


def _judge_pauses(review: Review, pauses: list[int]) -> dict[str, Any]:
    caught: dict[int, int | None] = {}
    for layer in review.confirmed:
        hit = next((p for p in pauses if p >= layer - EARLY_LAYERS), None)
        caught[layer] = None if hit is None else hit - layer
    first = min((c - EARLY_LAYERS for c in review.confirmed), default=math.inf)
    false = [p for p in pauses if p < first] if review.has_verdicts else []
    return {"pauses": pauses, "delays": caught, "false_pauses": len(false), "reviewed": review.has_verdicts}


def _label_scores(review: Review, masks: dict[int, np.ndarray]) -> np.ndarray:
    """(defect classes, 3) tp, fp, fn over labelled pixels, plus no-defect px called defect in a 4th row."""
    defects = [int(c) for c in DEFECT_CLASSES]
    counts = np.zeros((len(defects) + 1, 3), np.int64)
    for layer, label in review.labels.items():
        pred = masks.get(layer)
        if pred is None:
            continue
        known = label != UNLABELLED
        for i, c in enumerate(defects):
            p, t = (pred == c) & known, label == c
            counts[i] += [np.count_nonzero(p & t), np.count_nonzero(p & ~t), np.count_nonzero(~p & t)]
        clean = label == NO_DEFECT
        counts[-1] += [np.count_nonzero(clean & np.isin(pred, defects)), np.count_nonzero(clean), 0]
    return counts


def _replay(source: Path, model: Path, out: Path) -> tuple[list[int], dict[int, np.ndarray], list[int]]:
    from monitor.replay import ReplayOptions, run_replay

    result = run_replay(ReplayOptions(source=source, out=out, model=model, progress=False))
    pauses = sorted({int(a.layer) for a in result.actions if a.action == "pause" and a.state.value == "requested"
                     and a.layer is not None})  # fmt: skip
    with RecordReader(result.record) as r:
        stored = [int(k) for k in r.stored_layers()]
        return pauses, {k: r.mask(k) for k in stored}, stored


def _sim_iou(model: Path, layers: int, features: frozenset[str] | None) -> dict[str, float]:
    from segmentation.evaluate import evaluate_simulated
    from segmentation.inference import Segmenter
    from segmentation.metrics import scores

    if layers <= 0:
        return {}
    with Segmenter(model_path=model, engine="onnx") as seg:
        ev = evaluate_simulated(seg, layers, 512, features=features)
    return {s.name: s.iou for s in scores(ev.cm)}


def _features(model: Path) -> frozenset[str]:
    """The simulator looks ``model`` was trained with: both models are scored on the current one's."""
    from segmentation.evaluate import trained_features
    from segmentation.inference import Segmenter

    with Segmenter(model_path=model, engine="onnx") as seg:
        return trained_features(seg.model_meta)


def evaluate(
    candidate: Path, current: Path, records: list[Path], *, sim_layers: int = 8, echo: Callable[[str], None] = print
) -> dict[str, Any]:
    """Replay every reviewed build with both models; the side-by-side report (JSON-able)."""
    from segmentation.model import file_sha256

    reviews = reviewed_builds(records)
    models = {"current": current, "candidate": candidate}
    report: dict[str, Any] = {
        "models": {k: {"path": str(p), "sha256": file_sha256(p)} for k, p in models.items()},
        "inputs": records_state(records),
        "builds": [],
        "early_layers": EARLY_LAYERS,
    }
    counts = {k: np.zeros((len(DEFECT_CLASSES) + 1, 3), np.int64) for k in models}
    with tempfile.TemporaryDirectory(prefix="layerwatch-gate-") as tmp:
        for i, review in enumerate(reviews):
            build: dict[str, Any] = {
                "record": str(review.path),
                "confirmed": review.confirmed,
                "false_alarms": review.false_alarms,
                "labelled_layers": sorted(review.labels),
            }
            for name, model in models.items():
                echo(f"evaluate: {review.path.name} with the {name} model ({i + 1}/{len(reviews)})")
                pauses, masks, _ = _replay(review.path, model, Path(tmp) / f"{i}-{name}.h5")
                build[name] = _judge_pauses(review, pauses)
                counts[name] += _label_scores(review, masks)
            report["builds"].append(build)
    labelled: dict[str, Any] = {}
    for name, c in counts.items():
        per_class = {
            CLASS_NAMES[d]: (float(tp / (tp + fp + fn)) if tp + fp + fn else None)
            for d, (tp, fp, fn) in zip(DEFECT_CLASSES, c[:-1], strict=True)
        }
        called, clean, _ = c[-1]
        labelled[name] = {"iou": per_class, "no_defect_called_defect": float(called / clean) if clean else None}
    report["labelled"] = labelled
    echo(f"evaluate: {sim_layers} held-out simulated layers with each model")
    features = _features(current) if sim_layers > 0 else frozenset()
    report["simulated"] = {name: _sim_iou(model, sim_layers, features) for name, model in models.items()}
    held = candidate.parent / "holdout"
    if (held / "images").is_dir():  # the labelled frames a fine-tune held out: neither model learnt from them
        from segmentation.finetune import score_labelled

        echo(f"evaluate: the candidate's held-out labelled frames ({held}) with each model")
        report["holdout"] = {name: score_labelled(model, held) for name, model in models.items()}
    report["refusals"] = refusals(report)
    return report


def records_state(records: list[Path]) -> dict[str, list[float]]:
    """Each record's size and modification time: a new verdict or label changes them."""
    return {str(p.resolve()): [float(p.stat().st_size), p.stat().st_mtime] for p in records if p.exists()}


def still_valid(report: dict[str, Any], candidate: Path, current: Path, records: list[Path]) -> str | None:
    """Why an earlier evaluation no longer stands for these models and records (None: it stands)."""
    from segmentation.model import file_sha256

    try:
        if report["models"]["candidate"]["sha256"] != file_sha256(candidate):
            return "it evaluated another candidate"
        if report["models"]["current"]["sha256"] != file_sha256(current):
            return "the model in use has changed since"
        if report["inputs"] != records_state(records):
            return "the records (or their verdicts and labels) have changed since"
        report["refusals"] = refusals(report)  # the rule of this version, not the file's word
    except (KeyError, TypeError) as err:
        return f"it is not an evaluation of this LayerWatch ({err})"
    return None


def _mean_defect_iou(ious: dict[str, float]) -> float:
    values = [ious.get(CLASS_NAMES[c], math.nan) for c in DEFECT_CLASSES]
    values = [v for v in values if v is not None and not math.isnan(v)]
    return sum(values) / len(values) if values else math.nan


def refusals(report: dict[str, Any]) -> list[str]:
    """Why the candidate must not replace the current model (empty: it may)."""
    out = []
    sim = report.get("simulated") or {}
    before, after = _mean_defect_iou(sim.get("current", {})), _mean_defect_iou(sim.get("candidate", {}))
    if not math.isnan(before) and not math.isnan(after) and before - after > MAX_SIM_DROP:
        out.append(
            f"held-out simulated layers: mean defect IoU {after:.3f}, the current model {before:.3f} "
            f"(it may fall by {MAX_SIM_DROP} at most: the candidate forgets what the simulator taught)"
        )
    held = report.get("holdout") or {}
    if held:
        before, after = _mean_defect_iou(held["current"]["iou"]), _mean_defect_iou(held["candidate"]["iou"])
        if not math.isnan(before) and not math.isnan(after) and after < before - MAX_HOLDOUT_DROP:
            out.append(
                f"your held-out labelled frames: mean defect IoU {after:.3f}, the current model {before:.3f} "
                "(the candidate does worse on frames it did not learn from)"
            )
    for b in report["builds"]:
        name = Path(b["record"]).name
        cur, cand = b["current"], b["candidate"]
        for layer, delay in cand["delays"].items():
            before = cur["delays"].get(layer)
            if delay is None:
                out.append(f"{name}: misses the confirmed defect of layer {layer}")
            elif before is not None and delay > before:
                out.append(f"{name}: pauses {delay - before} layer(s) later on the confirmed defect of layer {layer}")
        if cand["false_pauses"] > cur["false_pauses"]:
            out.append(f"{name}: {cand['false_pauses']} false pause(s), the current model {cur['false_pauses']}")
    return out


def _delay(d: int | None) -> str:
    return "missed" if d is None else f"{d:+d} layers"


def format_evaluation(report: dict[str, Any]) -> str:
    lines = [
        f"current:   {report['models']['current']['path']} (sha256 {report['models']['current']['sha256'][:12]})",
        f"candidate: {report['models']['candidate']['path']} (sha256 {report['models']['candidate']['sha256'][:12]})",
        "",
        f"{'build':40s} {'':22s} {'current':>14s} {'candidate':>14s}",
    ]
    totals = {"current": [0, 0, 0], "candidate": [0, 0, 0]}  # false pauses, caught, confirmed
    for b in report["builds"]:
        name = Path(b["record"]).name[:40]
        cur, cand = b["current"], b["candidate"]
        kind = "false pauses" if cur["reviewed"] else "pauses (unreviewed)"
        values = (
            (cur["false_pauses"], cand["false_pauses"])
            if cur["reviewed"]
            else (len(cur["pauses"]), len(cand["pauses"]))
        )
        lines.append(f"{name:40s} {kind:22s} {values[0]:>14d} {values[1]:>14d}")
        for layer in b["confirmed"]:
            d0, d1 = cur["delays"].get(layer), cand["delays"].get(layer)
            lines.append(f"{'':40s} {'defect @ layer ' + str(layer):22s} {_delay(d0):>14s} {_delay(d1):>14s}")
        for who, run in (("current", cur), ("candidate", cand)):
            totals[who][0] += run["false_pauses"]
            totals[who][1] += sum(d is not None for d in run["delays"].values())
            totals[who][2] += len(run["delays"])
    lines.append(f"{'all builds':40s} {'false pauses':22s} {totals['current'][0]:>14d} {totals['candidate'][0]:>14d}")
    lines.append(
        f"{'':40s} {'confirmed caught':22s} {'{}/{}'.format(*totals['current'][1:]):>14s} "
        f"{'{}/{}'.format(*totals['candidate'][1:]):>14s}"
    )

    def num(v: float | None) -> str:
        return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"

    lab = report["labelled"]
    lines.append("labelled layers: in-sample for a candidate fine-tuned on these records")
    for cls in lab["current"]["iou"]:
        lines.append(f"{'labelled layers':40s} {cls + ' IoU':22s} {num(lab['current']['iou'][cls]):>14s} "
                     f"{num(lab['candidate']['iou'][cls]):>14s}")  # fmt: skip
    lines.append(f"{'':40s} {'no defect -> defect':22s} {num(lab['current']['no_defect_called_defect']):>14s} "
                 f"{num(lab['candidate']['no_defect_called_defect']):>14s}")  # fmt: skip
    held = report.get("holdout") or {}
    if held:
        for cls in held["current"]["iou"]:
            cur, cand = num(held["current"]["iou"][cls]), num(held["candidate"]["iou"].get(cls))
            lines.append(f"{'your held-out labelled frames':40s} {cls + ' IoU':22s} {cur:>14s} {cand:>14s}")
        for key, name in (("pore_recall", "pores found"), ("pore_precision", "pores right"),
                          ("no_defect_called_defect", "no defect -> defect")):  # fmt: skip
            lines.append(f"{'':40s} {name:22s} {num(held['current'][key]):>14s} {num(held['candidate'][key]):>14s}")
    sim = report["simulated"]
    for cls in sim.get("current", {}):
        lines.append(f"{'held-out simulated':40s} {cls + ' IoU':22s} {num(sim['current'][cls]):>14s} "
                     f"{num(sim['candidate'][cls]):>14s}")  # fmt: skip
    lines.append("")
    if report["refusals"]:
        lines.append("the candidate would be refused:")
        lines += [f"  - {r}" for r in report["refusals"]]
    else:
        lines.append(
            "the candidate passes the gate: no confirmed defect missed or caught later, no added false pause, "
            "what the simulator taught kept"
        )
    return "\n".join(lines)
