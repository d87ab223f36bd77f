"""Drift: a printer's frames or the model's answers on them moving away from where the model stood.

Per printer and model, two references:

- the model's own, from its calibration on the frames it was trained on (``ood`` in its metadata): the
  per-frame unfamiliarity score (:mod:`segmentation.ood`) is near its calibrated median on frames of
  the kind it knows; on most frames of a window it should stay well below the "unfamiliar" threshold;
- the printer's, taken on the first ``reference_layers`` layers this model saw on this printer whose
  frames it knows (unfamiliarity at most ``ood_share`` of its threshold; kept in
  ``<out_dir>/<printer>/drift-<model>.json``, so it outlives builds and restarts): frame brightness and
  contrast, and the share of the plate each class takes. Until it is taken, the window is judged by the
  model's reference alone, so a printer that drifts from its first layers on is said too.

Over a sliding window of recent layers (sound frames, in order; unfamiliar ones included), drift is:
the median unfamiliarity above ``ood_share`` of the threshold; the median brightness or contrast
outside the reference's range widened by ``margin``; or the median share of a class outside its
reference range widened by ``margin`` (and by at least ``min_share`` of the plate). A drift says what
moved and which layers of the window to label (the most unlike the reference); it never retrains.
"""

from __future__ import annotations

import json
import logging
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from segmentation.classes import CLASS_NAMES, NUM_CLASSES

__all__ = ["DriftFinding", "DriftSettings", "DriftWatch", "layer_stats"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DriftSettings:
    reference_layers: int = 30
    window: int = 20
    ood_share: float = 0.5  # of the model's "unfamiliar" threshold, on the window's median frame
    margin: float = 0.5  # the reference range is widened by this share of its width on each side
    min_share: float = 0.02  # a class's share must move by at least this much of the plate
    label_count: int = 5  # layers named to label


@dataclass(frozen=True)
class DriftFinding:
    reasons: list[str]
    layers: list[int]  # to label, the most unlike the reference first

    def message(self, printer: str, window: int) -> str:
        return (
            f"needs review: drift on printer {printer} over the last {window} layers: {'; '.join(self.reasons)}. "
            f"Label layers {', '.join(map(str, self.layers))} on the dashboard (layerwatch finetune --records "
            "learns from them); nothing is retrained by itself"
        )


def layer_stats(gray: np.ndarray, mask: np.ndarray, roi: np.ndarray | None, ood: float) -> dict[str, float]:
    """What drift watches on one judged layer: brightness and contrast of the plate, each class's share of
    it, and the unfamiliarity score (a share of the model's threshold; NaN for an uncalibrated model)."""
    sel = roi if roi is not None and roi.any() else np.ones(mask.shape, bool)
    values = gray[sel].astype(np.float32)
    scale = 65535.0 if gray.dtype == np.uint16 else 255.0 if gray.dtype == np.uint8 else 1.0
    shares = np.bincount(mask[sel].ravel(), minlength=NUM_CLASSES)[:NUM_CLASSES] / max(int(sel.sum()), 1)
    out = {"brightness": float(values.mean() / scale), "contrast": float(values.std() / scale), "ood": float(ood)}
    out |= {f"share_{CLASS_NAMES[c]}": float(shares[c]) for c in range(NUM_CLASSES)}
    return out


@dataclass
class DriftWatch:
    """One printer's drift under one model."""

    path: Path  # the printer's reference for this model (JSON)
    settings: DriftSettings = field(default_factory=DriftSettings)
    reference: dict[str, list[float]] | None = None  # statistic -> [low, high] (5th and 95th percentiles)
    _seen: list[dict[str, float]] = field(default_factory=list)  # layers toward the reference
    _window: deque[tuple[int, dict[str, float]]] = field(default_factory=deque)

    @classmethod
    def open(cls, path: Path, settings: DriftSettings | None = None) -> DriftWatch:
        watch = cls(path, settings or DriftSettings())
        try:
            if path.is_file() and path.stat().st_size < 1 << 20:
                data = json.loads(path.read_text())
                if isinstance(data, dict) and all(
                    isinstance(v, list) and len(v) == 2 and all(isinstance(x, (int, float)) for x in v)
                    for v in data.values()
                ):
                    watch.reference = {k: [float(v[0]), float(v[1])] for k, v in data.items()}
        except (OSError, ValueError) as err:
            log.warning("drift: %s unreadable (%s); the reference is taken again", path, err)
        return watch

    def add(self, layer: int, stats: dict[str, float]) -> DriftFinding | None:
        """One judged layer; a finding once the window drifts (then the window starts afresh)."""
        s = self.settings
        # the printer's reference is taken on frames the model knows: a printer that drifts from its first
        # layers on must not make its drift the reference (the window below says so meanwhile)
        if self.reference is None and not stats.get("ood", 0.0) > s.ood_share:
            self._seen.append(stats)
            if len(self._seen) >= s.reference_layers:
                self.reference = {
                    k: [float(np.nanpercentile(v, 5)), float(np.nanpercentile(v, 95))]
                    for k in stats
                    if k != "ood" and np.isfinite(v := np.array([x[k] for x in self._seen])).any()
                }
                self._seen.clear()
                self._save()
        self._window.append((layer, stats))
        if len(self._window) > s.window:
            self._window.popleft()
        if len(self._window) < s.window:
            return None
        reasons, distance = self._compare()
        if not reasons:
            return None
        order = np.argsort(-distance, kind="stable")[: s.label_count]
        layers = [self._window[i][0] for i in order]
        self._window.clear()
        return DriftFinding(reasons, layers)

    def _compare(self) -> tuple[list[str], np.ndarray]:
        """What moved (in words) and, per layer of the window, how far it lies from the reference."""
        s, ref = self.settings, self.reference or {}
        rows = [stats for _, stats in self._window]
        distance = np.zeros(len(rows))
        reasons = []
        ood = np.array([r["ood"] for r in rows])
        if np.isfinite(ood).any():
            distance += np.nan_to_num(ood)
            if float(np.nanmedian(ood)) > s.ood_share:
                reasons.append(
                    f"frames unlike the model's training frames (median score {np.nanmedian(ood):.2f} of its "
                    f"threshold, drift from {s.ood_share:.2f})"
                )
        for key, (lo, hi) in ref.items():
            v = np.array([r.get(key, np.nan) for r in rows])
            if not np.isfinite(v).any():
                continue
            pad = max(s.margin * (hi - lo), s.min_share if key.startswith("share_") else 0.02)
            low, high = lo - pad, hi + pad
            outside = np.maximum(low - v, 0) + np.maximum(v - high, 0)
            distance += np.nan_to_num(outside / max(pad, 1e-6))
            median = float(np.nanmedian(v))
            if not low <= median <= high:
                what = key.replace("share_", "share of ") if key.startswith("share_") else key
                reasons.append(f"{what} {median:.3f}, the reference {lo:.3f}-{hi:.3f}")
        return reasons, distance

    def _save(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.reference))
            tmp.replace(self.path)
        except OSError as err:
            log.warning("drift: cannot keep the reference in %s (%s); taken again after a restart", self.path, err)

    def describe(self) -> dict[str, Any]:
        return {
            "reference": self.reference,
            "window": len(self._window),
            "window_layers": [layer for layer, _ in self._window],
            "toward_reference": len(self._seen),
        }

    def window_stats(self) -> list[tuple[int, dict[str, float]]]:
        """The window's layers and what was measured on each, oldest first."""
        return list(self._window)
