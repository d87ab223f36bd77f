"""``layerwatch compare A.h5 B.h5``: what two runs of the same build decided differently.

Per layer: metrics that differ (beyond a relative tolerance), severity, actions requested. Per run:
the first layer it paused at; and, where the replayed build has ground truth (a simulated build, or a
labelled Peregrine file), per-class IoU, time to detect (layers from a defect's onset to the first
pause) and false pauses (pauses before any defect is there). The exit status says whether the
decisions differ, so a model or policy update can be gated on it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from monitor.policy import watched_class
from monitor.record import RecordReader, images_path, open_build_file
from printer_io.vocabulary import Severity
from segmentation.classes import CLASS_NAMES, DEFECT_CLASSES, NUM_CLASSES
from segmentation.metrics import confusion, scores

__all__ = ["Run", "compare", "format_report", "load_run"]

DEFECTS = {int(c): CLASS_NAMES[c] for c in DEFECT_CLASSES}
ONSET_PX = 50  # a defect class "is there" from the first layer where the truth has this many pixels of it


@dataclass
class Run:
    path: Path
    layers: list[int]
    metrics: dict[int, dict[str, float]]
    severity: dict[int, str]
    actions: dict[int, list[str]]
    model: str
    replay_of: str
    pauses: list[tuple[int, str]]  # (layer, defect class the rule watches)

    @property
    def first_pause(self) -> int | None:
        pauses = [k for k, acts in self.actions.items() if any(a.startswith("pause") for a in acts)]
        return min(pauses) if pauses else None


def load_run(path: Path) -> Run:
    with RecordReader(path) as r:
        rows = r.layers()
        stored = [int(k) for k in r.stored_layers()]
        table = r.metrics()
        names = table.dtype.names or ()
        metrics = {k: {n: float(table[k][n]) for n in names} for k in stored}
        severity = {
            k: Severity.from_index(int(rows[k]["severity"])) if "severity" in (rows.dtype.names or ()) else "ok"
            for k in stored
        }
        actions: dict[int, list[str]] = {}
        watches = {
            rule["name"]: _watched_class(rule["metric"]) for rule in (r.json_attr("policy") or {}).get("rules", [])
        }
        pauses: list[tuple[int, str]] = []
        for a in r.table("actions"):
            if a["state"] == "requested":
                actions.setdefault(int(a["layer"]), []).append(f"{a['action']}:{a['rule']}")
                if a["action"] == "pause":
                    pauses.append((int(a["layer"]), watches.get(a["rule"], "any")))
        attrs = r.attrs
        return Run(
            path,
            stored,
            metrics,
            severity,
            actions,
            str((r.json_attr("model") or {}).get("id", "")),
            str(attrs.get("layerwatch/replay_of", "")),
            sorted(pauses),
        )


def _watched_class(metric: str) -> str:
    c = watched_class(metric)
    return CLASS_NAMES[c] if c is not None else "any"


def _truth_iou(run: Run, truth: h5py.File) -> dict[str, float]:
    from monitor.replay import truth_mask

    cm = np.zeros((NUM_CLASSES, NUM_CLASSES), np.int64)
    with RecordReader(run.path) as r:
        for k in run.layers:
            if k >= truth[images_path(truth)].shape[0]:
                continue
            cm += confusion(truth_mask(truth, k), r.mask(k))
    return {s.name: s.iou for s in scores(cm)}


def _onsets(truth: h5py.File) -> dict[str, int | None]:
    out: dict[str, int | None] = {}
    for c, name in DEFECTS.items():
        d = truth[f"slices/segmentation_results/{c}"]
        onset = None
        for k in range(d.shape[0]):
            if int(np.count_nonzero(d[k])) >= ONSET_PX:
                onset = k
                break
        out[name] = onset
    return out


def compare(a: Run, b: Run, *, tolerance: float = 0.01, truth: Path | None = None) -> dict[str, Any]:
    layers = sorted(set(a.layers) | set(b.layers))
    rows = []
    for k in layers:
        ma, mb = a.metrics.get(k), b.metrics.get(k)
        differ: list[str] = []
        if ma is not None and mb is not None:
            for name in sorted(set(ma) & set(mb)):
                x, y = ma[name], mb[name]
                if (x != x) != (y != y) or (x == x and abs(x - y) > tolerance * max(1.0, abs(x), abs(y))):
                    differ.append(name)
        severity = [a.severity.get(k), b.severity.get(k)]
        acts = [a.actions.get(k, []), b.actions.get(k, [])]
        row: dict[str, Any] = {
            "layer": k,
            "in_a": ma is not None,
            "in_b": mb is not None,
            "metrics_differ": differ,
            "severity": severity,
            "actions": acts,
            "differs": bool(differ) or severity[0] != severity[1] or acts[0] != acts[1] or (ma is None) != (mb is None),
        }
        rows.append(row)
    decisions_differ = a.actions != b.actions
    report: dict[str, Any] = {
        "a": {"path": str(a.path), "model": a.model, "first_pause": a.first_pause, "replay_of": a.replay_of},
        "b": {"path": str(b.path), "model": b.model, "first_pause": b.first_pause, "replay_of": b.replay_of},
        "layers": rows,
        "layers_differing": sum(r["differs"] for r in rows),
        "decisions_differ": decisions_differ,
    }
    truth_path = truth or (Path(a.replay_of) if a.replay_of and a.replay_of == b.replay_of else None)
    if truth_path is not None and truth_path.exists():
        with open_build_file(truth_path) as t:
            if "slices/segmentation_results" in t and (
                t.attrs.get("layerwatch/ground_truth") or "layerwatch/schema_version" not in t.attrs
            ):
                onsets = _onsets(t)
                any_onset = min((o for o in onsets.values() if o is not None), default=None)
                report["truth"] = {"path": str(truth_path), "onset": onsets}
                for key, run in (("a", a), ("b", b)):
                    report[key]["iou"] = _truth_iou(run, t)
                    detect: dict[str, int | None] = {}
                    false: list[int] = []
                    for layer, cls in run.pauses:
                        onset = onsets.get(cls, any_onset)
                        if onset is None or layer < onset:
                            false.append(layer)  # paused for a defect that is not there (yet)
                        elif detect.get(cls) is None:
                            detect[cls] = layer - onset
                    report[key]["time_to_detect_layers"] = detect
                    report[key]["false_pauses"] = false
    return report


def format_report(report: dict[str, Any]) -> str:
    a, b = report["a"], report["b"]
    out = [f"A: {a['path']}  (model {a['model']})", f"B: {b['path']}  (model {b['model']})"]
    out.append(f"first pause: A {a['first_pause']}, B {b['first_pause']}")
    if "truth" in report:
        t = report["truth"]
        onset = ", ".join(f"{k} {v}" for k, v in t["onset"].items())
        out.append(f"ground truth: {t['path']} (onset layer: {onset})")
        out.append("IoU          " + "".join(f"{n:>10s}" for n in a["iou"]))
        for key, run in (("A", a), ("B", b)):
            out.append(f"  {key}        " + "".join(f"{v:10.3f}" for v in run["iou"].values()))
        out.append(
            f"time to detect (layers after onset): A {a['time_to_detect_layers']}, B {b['time_to_detect_layers']}; "
            f"false pauses: A {a['false_pauses']}, B {b['false_pauses']}"
        )
    diffs = [r for r in report["layers"] if r["differs"]]
    out.append(f"layers that differ: {len(diffs)} of {len(report['layers'])}")
    for r in diffs[:50]:
        parts = []
        if r["severity"][0] != r["severity"][1]:
            parts.append(f"severity {r['severity'][0]} -> {r['severity'][1]}")
        if r["actions"][0] != r["actions"][1]:
            parts.append(f"actions {r['actions'][0]} -> {r['actions'][1]}")
        if r["metrics_differ"]:
            shown = ", ".join(r["metrics_differ"][:4]) + (" ..." if len(r["metrics_differ"]) > 4 else "")
            parts.append(f"metrics {shown}")
        out.append(f"  layer {r['layer']:4d}: " + "; ".join(parts))
    out.append("decisions differ" if report["decisions_differ"] else "decisions identical")
    return "\n".join(out)


def write_json(report: dict[str, Any], path: Path) -> None:
    path.write_text(json.dumps(report, indent=1, default=lambda x: None if x != x else x))
