"""What the model does on real layer images (evaluation only; never used for training).

Reads ``../shared/realdata`` (or ``--root``) and prints an honest table:
- ``pblm/No_Defect``: share of clean L-PBF layers on which the model reports any defect area
  (and any defect above 0.05 % of the region of interest), i.e. the false-alarm rate;
- ``pblm/Powder_Uneven``: the same on unevenly spread powder (not one of our classes);
- ``pblm/Deformation_With_Scratch``: share of layers where warping (super-elevation) is found;
- ``fdm_pores``: porosity IoU, precision, recall and object recall against the outline-derived masks;
- ``slm_recoat``: share of ``powder_uncover`` pixels called warping (or any defect), and share of
  recoater ``scratch`` pixels wrongly called a defect.

The L-PBF frames show chamber walls at their borders, so the region of interest is the central
88 % of the frame in each direction. Overlays for people go to ``--out``.

    .venv/bin/python bench/eval_realdata.py [--root ../shared/realdata] [--out runs/realdata]

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
from segmentation.metrics import Evaluation, scores

DEFAULT_ROOT = Path(__file__).resolve().parent.parent.parent / "shared" / "realdata"
ROI_MARGIN = 0.06
ALARM_FLOOR = 0.0005  # defect share of the ROI above which a layer would raise an alarm


def roi(mask: np.ndarray) -> np.ndarray:
    h, w = mask.shape
    mh, mw = int(h * ROI_MARGIN), int(w * ROI_MARGIN)
    return mask[mh : h - mh, mw : w - mw]


def image_level(seg: Segmenter, folder: Path, out: Path | None, limit: int) -> dict[str, Any]:
    """Per-folder image-level figures: share of layers with any defect / defect above the floor."""
    paths = sorted(folder.glob("*.jpg")) + sorted(folder.glob("*.png"))
    paths = paths[:limit] if limit else paths
    any_defect = {c.name.lower(): 0 for c in DEFECT_CLASSES}
    over_floor = dict(any_defect)
    frac_sum = {k: 0.0 for k in any_defect}
    alarms_any = alarms_floor = 0
    for i, p in enumerate(paths):
        img = read_image(p)
        mask = seg.segment(img).mask
        r = roi(mask)
        layer_any = layer_floor = False
        for c in DEFECT_CLASSES:
            frac = float((r == c).mean())
            name = c.name.lower()
            frac_sum[name] += frac
            any_defect[name] += int(frac > 0)
            over_floor[name] += int(frac > ALARM_FLOOR)
            layer_any |= frac > 0
            layer_floor |= frac > ALARM_FLOOR
        alarms_any += int(layer_any)
        alarms_floor += int(layer_floor)
        if out is not None and i < 4:
            write_overlay(out / folder.name / f"{p.stem}.png", img, mask)
    n = max(len(paths), 1)
    return {
        "layers": len(paths),
        "share_any_defect": alarms_any / n,
        "share_defect_over_floor": alarms_floor / n,
        "share_any_by_class": {k: v / n for k, v in any_defect.items()},
        "share_over_floor_by_class": {k: v / n for k, v in over_floor.items()},
        "mean_roi_fraction_by_class": {k: v / n for k, v in frac_sum.items()},
    }


def fdm_pores(seg: Segmenter, root: Path, out: Path | None) -> dict[str, Any]:
    ev = Evaluation.empty()
    for raw in sorted(root.glob("sample_*_raw.jpg")):
        truth_path = root / "derived_masks" / raw.name.replace("_raw.jpg", "_pore_mask.png")
        t = cv2.imread(str(truth_path), cv2.IMREAD_GRAYSCALE)
        if t is None:
            continue
        truth = np.where(t > 0, LayerClass.POROSITY, LayerClass.PART).astype(np.uint8)
        img = read_image(raw)
        pred = seg.segment(img).mask
        # only porosity is labelled: everything else counts as "not porosity"
        pred2 = np.where(pred == LayerClass.POROSITY, LayerClass.POROSITY, LayerClass.PART).astype(np.uint8)
        ev.add(truth, pred2)
        if out is not None:
            write_overlay(out / "fdm_pores" / f"{raw.stem}.png", img, pred)
    s = scores(ev.cm)[LayerClass.POROSITY]
    return {
        "images": ev.frames,
        "porosity_iou": s.iou,
        "porosity_precision": s.precision,
        "porosity_recall": s.recall,
        "pore_object_recall": ev.pore_recall,
        "pores": f"{ev.pores_found}/{ev.pores_total}",
    }


def slm_recoat(seg: Segmenter, root: Path, out: Path | None) -> dict[str, Any]:
    res: dict[str, Any] = {}
    uncover_total = uncover_warp = uncover_any = 0
    scratch_total = scratch_defect = 0
    for img_path in sorted((root / "Data" / "Recoat").glob("[0-9]*.png")):
        if img_path.stem.endswith("_mask"):
            continue
        truth = cv2.imread(str(img_path.with_name(img_path.stem + "_mask.png")), cv2.IMREAD_GRAYSCALE)
        img = read_image(img_path)
        pred = seg.segment(img).mask
        defect = np.isin(pred, [int(c) for c in DEFECT_CLASSES])
        if truth is not None:
            unc = truth == 2
            uncover_total += int(unc.sum())
            uncover_warp += int((unc & (pred == LayerClass.WARPING)).sum())
            uncover_any += int((unc & defect).sum())
            scr = truth == 3
            scratch_total += int(scr.sum())
            scratch_defect += int((scr & defect).sum())
        res[img_path.stem] = {c.name.lower(): float((roi(pred) == c).mean()) for c in DEFECT_CLASSES}
        if out is not None:
            write_overlay(out / "slm_recoat" / f"{img_path.stem}.png", img, pred)
    res["powder_uncover_called_warping"] = uncover_warp / uncover_total if uncover_total else float("nan")
    res["powder_uncover_called_any_defect"] = uncover_any / uncover_total if uncover_total else float("nan")
    res["scratch_called_defect"] = scratch_defect / scratch_total if scratch_total else float("nan")
    return res


MONTAGE = (
    "No_Defect/converted__0000.png",
    "Deformation_With_Scratch/converted__0035.png",
    "slm_recoat/10448.png",
    "fdm_pores/sample_1_raw.png",
)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", type=Path, default=DEFAULT_ROOT)
    ap.add_argument("--out", type=Path, default=Path("runs/realdata"))
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    ap.add_argument("--engine", default="onnx")
    ap.add_argument("--limit", type=int, default=0, help="at most this many images per pblm folder (0: all)")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--montage", type=Path, default=None, help="also write the docs figure (4 overlays) here")
    args = ap.parse_args()
    if not args.root.is_dir():
        print(f"real data not found at {args.root}: nothing to evaluate (this is expected outside the dev machine)")
        return 0
    out = args.out
    report: dict[str, Any] = {"machine": machine(), "roi_margin": ROI_MARGIN, "alarm_floor": ALARM_FLOOR}
    with Segmenter(args.model, engine=args.engine) as seg:
        for folder in ("No_Defect", "Powder_Uneven", "Deformation_With_Scratch"):
            path = args.root / "pblm" / folder
            if path.is_dir():
                report[f"pblm/{folder}"] = image_level(seg, path, out, args.limit)
        if (args.root / "fdm_pores").is_dir():
            report["fdm_pores"] = fdm_pores(seg, args.root / "fdm_pores", out)
        if (args.root / "slm_recoat").is_dir():
            report["slm_recoat"] = slm_recoat(seg, args.root / "slm_recoat", out)

    print(f"machine: {report['machine']}")
    print(f"ROI: central {100 - 200 * ROI_MARGIN:.0f} % of each axis; alarm floor {ALARM_FLOOR:.2%} of the ROI")
    print("set                              layers  any-defect  >floor   porosity>fl spatter>fl warping>fl")
    for key in ("pblm/No_Defect", "pblm/Powder_Uneven", "pblm/Deformation_With_Scratch"):
        if key in report:
            r = report[key]
            by = r["share_over_floor_by_class"]
            print(
                f"{key:32s} {r['layers']:6d}  {r['share_any_defect']:9.1%}  {r['share_defect_over_floor']:6.1%}"
                f"   {by['porosity']:9.1%} {by['spatter']:9.1%} {by['warping']:9.1%}"
            )
    if "fdm_pores" in report:
        f = report["fdm_pores"]
        print(
            f"fdm_pores: {f['images']} images, porosity IoU {f['porosity_iou']:.3f}, precision "
            f"{f['porosity_precision']:.3f}, recall {f['porosity_recall']:.3f}, pore object recall "
            f"{f['pore_object_recall']:.3f} ({f['pores']})"
        )
    if "slm_recoat" in report:
        s = report["slm_recoat"]
        print(
            f"slm_recoat: powder_uncover pixels called warping {s['powder_uncover_called_warping']:.1%}, "
            f"any defect {s['powder_uncover_called_any_defect']:.1%}; scratch pixels called a defect "
            f"{s['scratch_called_defect']:.1%}"
        )
    print(f"overlays in {out}/")
    if args.montage:
        tiles = []
        for name in MONTAGE:
            tile = cv2.imread(str(out / name))
            if tile is not None:
                tiles.append(cv2.resize(tile, (384, 384), interpolation=cv2.INTER_AREA))
        if tiles:
            cv2.imwrite(str(args.montage), np.hstack(tiles), [cv2.IMWRITE_JPEG_QUALITY, 85])
            print(f"montage of {len(tiles)} overlays in {args.montage}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
