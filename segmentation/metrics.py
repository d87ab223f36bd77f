"""Segmentation metrics: confusion matrix, per-class IoU/precision/recall/F1, object-level recall."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from segmentation.classes import CLASS_NAMES, NUM_CLASSES, LayerClass

__all__ = ["ClassScores", "Evaluation", "confusion", "object_recall", "scores"]


def confusion(truth: np.ndarray, pred: np.ndarray, n: int = NUM_CLASSES) -> np.ndarray:
    """(n, n) int64 counts; rows are true classes, columns predicted classes. Truth pixels that are not
    a class id (the partial labels ``NO_DEFECT`` and ``UNLABELLED``) are not counted."""
    t = truth.astype(np.int64).ravel()
    p = pred.astype(np.int64).ravel()
    if t.size and int(t.max()) >= n:
        keep = t < n
        t, p = t[keep], p[keep]
    return np.bincount(t * n + p, minlength=n * n).reshape(n, n)


@dataclass(frozen=True)
class ClassScores:
    """Pixel scores of one class; NaN where the class is absent from both truth and prediction."""

    name: str
    iou: float
    precision: float
    recall: float
    f1: float
    support: int


def scores(cm: np.ndarray) -> list[ClassScores]:
    """Per-class scores from a confusion matrix."""
    out = []
    for c in range(cm.shape[0]):
        tp = float(cm[c, c])
        fp = float(cm[:, c].sum() - tp)
        fn = float(cm[c, :].sum() - tp)
        iou = tp / (tp + fp + fn) if tp + fp + fn else float("nan")
        prec = tp / (tp + fp) if tp + fp else float("nan")
        rec = tp / (tp + fn) if tp + fn else float("nan")
        f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else float("nan")
        out.append(ClassScores(CLASS_NAMES[c], iou, prec, rec, f1, int(cm[c, :].sum())))
    return out


def object_recall(
    truth: np.ndarray, pred: np.ndarray, cls: int = LayerClass.POROSITY, cover: float = 0.5
) -> tuple[int, int]:
    """(found, total) objects of class ``cls``: an object (8-connected component of the truth) is
    found when the prediction labels at least ``cover`` of its pixels with that class."""
    labels, n = ndimage.label(truth == cls, structure=np.ones((3, 3), dtype=bool))
    if n == 0:
        return 0, 0
    hit = (pred == cls).astype(np.int64)
    sizes = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    covered = np.bincount(labels.ravel(), weights=hit.ravel(), minlength=n + 1)[1:]
    return int((covered >= cover * sizes).sum()), int(n)


@dataclass
class Evaluation:
    """Accumulates pixel and object statistics over many frames."""

    cm: np.ndarray
    pores_found: int = 0
    pores_total: int = 0
    frames: int = 0

    @classmethod
    def empty(cls) -> Evaluation:
        return cls(np.zeros((NUM_CLASSES, NUM_CLASSES), dtype=np.int64))

    def add(self, truth: np.ndarray, pred: np.ndarray) -> None:
        if truth.shape != pred.shape:
            raise ValueError(f"mask shape {truth.shape} differs from prediction shape {pred.shape}")
        self.cm += confusion(truth, pred)
        f, t = object_recall(truth, pred)
        self.pores_found += f
        self.pores_total += t
        self.frames += 1

    @property
    def pore_recall(self) -> float:
        return self.pores_found / self.pores_total if self.pores_total else float("nan")

    def to_dict(self) -> dict[str, object]:
        return {
            "frames": self.frames,
            "classes": {s.name: {k: v for k, v in vars(s).items() if k != "name"} for s in scores(self.cm)},
            "pore_object_recall": self.pore_recall,
            "pores_found": self.pores_found,
            "pores_total": self.pores_total,
            "confusion": self.cm.tolist(),
            "confusion_axes": "rows: true class, columns: predicted class, order " + ",".join(CLASS_NAMES),
        }
