"""What the model does on real layer images: held-out rows of the fixed split only.

Reads ``../shared/realdata`` (or ``--root``) and its ``split.tsv``; every figure comes from the
``heldout`` rows (training may use the ``train`` rows, ``bench/import_realdata.py``). Prints:

- ``pblm/<category>``: share of layers that would raise an alarm, i.e. where porosity, spatter and
  warping together cover more than ``--alarm`` (0.5 %) of the judged area (the build plate proposed by
  :func:`segmentation.roi.propose_roi` from the frame itself), per class too; clean categories are
  No_Defect, Powder_Uneven, Powder_Uneven_With_Scratch (uneven spreading and recoater scratches are not
  defects of our classes) and Plateform_Powder_Uneven (an empty plate); Deformation_With_Scratch
  (parts standing out of the powder) reports how often warping is found;
- ``fdm_pores``: pore object recall (a labelled pore is found when >= 50 % of it is called porosity)
  and object precision (a predicted pore, a porosity component of at least 4 px, is right when it
  touches a labelled pore), and pixel IoU, precision and recall, on the whole frame;
- ``slm_recoat``: share of recoater-scratch and uneven-powder pixels called a defect;
- per set, the share of frames the model flags as unlike its training data (``ood`` > 1).

    .venv/bin/python bench/eval_realdata.py [--root ../shared/realdata] [--out runs/realdata] [--json F]

Exits 0 with a note when the data are absent (a user's clone has no ../shared).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import machine
from segmentation.classes import DEFECT_CLASSES, LayerClass
from segmentation.imageio import read_image, write_overlay
from segmentation.inference import DEFAULT_MODEL, Segmenter
from segmentation.roi import propose_roi

DEFAULT_ROOT = Path(__file__).resolve().parent.parent.parent / "shared" / "realdata"
CLEAN = ("No_Defect", "Powder_Uneven", "Powder_Uneven_With_Scratch", "Plateform_Powder_Uneven")
MIN_PORE_PX = 4


def heldout(root: Path) -> list[str]:
    rows = []
    for line in (root / "split.tsv").read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        path, split = line.split("\t")[:2]
        if split.strip() == "heldout":
            rows.append(path)
    return rows


def pblm(seg: Segmenter, root: Path, paths: list[str], alarm: float, out: Path | None) -> dict[str, Any]:
    per_class = {c.name.lower(): 0 for c in DEFECT_CLASSES}
    frac_sum = dict.fromkeys(per_class, 0.0)
    alarms = unfamiliar = 0
    for i, rel in enumerate(paths):
        img = read_image(root / rel)
        roi = propose_roi([img]).mask(img.shape[:2])
        res = seg.segment(img, roi=roi)
        judged = float(roi.sum())
        total = 0.0
        for c in DEFECT_CLASSES:
            frac = float((res.mask == c).sum()) / judged
            name = c.name.lower()
            frac_sum[name] += frac
            per_class[name] += int(frac > alarm)
            total += frac
        alarms += int(total > alarm)
        unfamiliar += int(res.unfamiliar)
        if out is not None and i < 3:
            write_overlay(out / Path(rel).parent.name / f"{Path(rel).stem}.png", img, res.mask)
    n = max(len(paths), 1)
    return {
        "layers": len(paths),
        "alarm_share": alarms / n,
        "alarm_share_by_class": {k: v / n for k, v in per_class.items()},
        "mean_fraction_by_class": {k: v / n for k, v in frac_sum.items()},
        "unfamiliar_share": unfamiliar / n,
    }


def fdm(seg: Segmenter, root: Path, paths: list[str], out: Path | None) -> dict[str, Any]:
    tp = fp = fn = 0
    found = total = right = predicted = unfamiliar = 0
    for rel in paths:
        raw = root / rel
        t = cv2.imread(str(raw.parent / "derived_masks" / raw.name.replace("_raw.jpg", "_pore_mask.png")), 0)
        if t is None:
            continue
        truth = t > 0
        img = read_image(raw)
        res = seg.segment(img)
        pred = res.mask == LayerClass.POROSITY
        unfamiliar += int(res.unfamiliar)
        tp += int((truth & pred).sum())
        fp += int((~truth & pred).sum())
        fn += int((truth & ~pred).sum())
        n, labels = cv2.connectedComponents(truth.astype(np.uint8), connectivity=8)
        for lab in range(1, n):
            obj = labels == lab
            total += 1
            found += int(pred[obj].mean() >= 0.5)
        n, labels, stats, _ = cv2.connectedComponentsWithStats(pred.astype(np.uint8), connectivity=8)
        for lab in range(1, n):
            if stats[lab, cv2.CC_STAT_AREA] < MIN_PORE_PX:
                continue
            predicted += 1
            right += int(truth[labels == lab].any())
        if out is not None:
            write_overlay(out / "fdm_pores" / f"{raw.stem}.png", img, res.mask)
    return {
        "images": len(paths),
        "object_recall": found / total if total else float("nan"),
        "pores_found": f"{found}/{total}",
        "object_precision": right / predicted if predicted else float("nan"),
        "predicted_right": f"{right}/{predicted}",
        "pixel_iou": tp / (tp + fp + fn) if tp + fp + fn else float("nan"),
        "pixel_precision": tp / (tp + fp) if tp + fp else float("nan"),
        "pixel_recall": tp / (tp + fn) if tp + fn else float("nan"),
        "unfamiliar_share": unfamiliar / max(len(paths), 1),
    }


def slm(seg: Segmenter, root: Path, paths: list[str], out: Path | None) -> dict[str, Any]:
    res: dict[str, Any] = {}
    for rel in paths:
        path = root / rel
        truth = cv2.imread(str(path.with_name(path.stem + "_mask.png")), 0)
        img = read_image(path)
        r = seg.segment(img, roi=propose_roi([img]).mask(img.shape[:2]))
        defect = np.isin(r.mask, [int(c) for c in DEFECT_CLASSES])
        row: dict[str, Any] = {"defect_share": float(defect.mean()), "unfamiliar": r.unfamiliar}
        if truth is not None:
            for lab, name in ((1, "powder_uneven"), (3, "scratch")):
                sel = truth == lab
                if sel.any():
                    row[f"{name}_called_defect"] = float(defect[sel].mean())
        res[path.stem] = row
        if out is not None:
            write_overlay(out / "slm_recoat" / f"{path.stem}.png", img, r.mask)
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", type=Path, default=DEFAULT_ROOT)
    ap.add_argument("--out", type=Path, default=Path("runs/realdata"), help="overlays for people")
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    ap.add_argument("--engine", default="onnx")
    ap.add_argument("--alarm", type=float, default=0.005, help="defect share of the plate that is an alarm")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    if not (args.root / "split.tsv").is_file():
        print(f"real data not found at {args.root}: nothing to evaluate (expected outside the dev machine)")
        return 0
    rows = heldout(args.root)
    report: dict[str, Any] = {"machine": machine(), "model": str(args.model), "alarm": args.alarm, "split": "heldout"}
    with Segmenter(args.model, engine=args.engine) as seg:
        for cat in (*CLEAN, "Deformation_With_Scratch"):
            paths = [r for r in rows if r.startswith(f"pblm/{cat}/")]
            if paths:
                report[f"pblm/{cat}"] = pblm(seg, args.root, paths, args.alarm, args.out)
        report["fdm_pores"] = fdm(seg, args.root, [r for r in rows if r.startswith("fdm_pores/")], args.out)
        report["slm_recoat"] = slm(seg, args.root, [r for r in rows if r.startswith("slm_recoat/")], args.out)

    print(f"machine: {report['machine']}")
    print(f"model: {args.model}; held-out rows only; alarm: defects over {args.alarm:.1%} of the proposed plate")
    print("set                                  layers  alarm   porosity spatter warping  unfamiliar")
    for key in [k for k in report if k.startswith("pblm/")]:
        r = report[key]
        c = r["alarm_share_by_class"]
        print(
            f"{key:36s} {r['layers']:6d}  {r['alarm_share']:6.1%}  {c['porosity']:6.1%}  {c['spatter']:6.1%} "
            f"{c['warping']:6.1%}  {r['unfamiliar_share']:6.1%}"
        )
    f = report["fdm_pores"]
    print(
        f"fdm_pores ({f['images']} images): object recall {f['object_recall']:.3f} ({f['pores_found']}), "
        f"object precision {f['object_precision']:.3f} ({f['predicted_right']}); pixel IoU {f['pixel_iou']:.3f}, "
        f"precision {f['pixel_precision']:.3f}, recall {f['pixel_recall']:.3f}; unfamiliar {f['unfamiliar_share']:.0%}"
    )
    for name, row in report["slm_recoat"].items():
        print(f"slm_recoat {name}: " + ", ".join(f"{k} {v:.3f}" for k, v in row.items() if isinstance(v, float)))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
