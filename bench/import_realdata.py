"""Copy the *train* rows of the licensed real images into ``data/realdata`` as a labelled set.

The real images (``../shared/realdata``, MIT-licensed samples of public repositories) come with a fixed
split (``split.tsv``): training may use the ``train`` rows only; every figure is reported on the
``heldout`` rows, which this script never copies. Output, in LayerWatch's label format (the same
as ``layerwatch labels export`` and what ``layerwatch train --real`` reads):

- ``data/realdata/images/NAME.jpg``: the frame (original bytes; the 3772x3302 empty-plate photos
  and the RGB PNGs are re-encoded as JPEG, the plate photos scaled to 1024 px wide);
- ``data/realdata/masks/NAME.png``: one channel, class ids, 254 "no defect here", 255 "not labelled":
  - ``pblm`` clean powder beds (No_Defect, Powder_Uneven*, Plateform_Powder_Uneven): all 0, powder
    (uneven spreading and recoater scratches are not defects of our classes; walls are background);
  - ``fdm_pores``: 2 (porosity) inside the outline-derived pore masks, 254 elsewhere;
  - ``slm_recoat``: 254 (uneven powder and scratches are no defect), 255 on ``powder_uncover`` (a
    part standing out of the powder: not labelled, since its class is a judgement call);
  ``pblm/Deformation_With_Scratch`` has image-level labels only and is not copied;
- each source folder's ``LICENSE`` and ``README.txt`` beside them, and ``manifest.tsv``.

    python bench/import_realdata.py [--root ../shared/realdata] [--out data/realdata]
"""

from __future__ import annotations

import argparse
import csv
import shutil
import sys
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SRC = ROOT.parent / "shared" / "realdata"

CLEAN_PBLM = ("No_Defect", "Powder_Uneven", "Powder_Uneven_With_Scratch", "Plateform_Powder_Uneven")


def train_rows(src: Path) -> list[str]:
    rows = []
    with (src / "split.tsv").open() as f:
        for line in f:
            if line.startswith("#") or not line.strip():
                continue
            path, split = line.rstrip("\n").split("\t")[:2]
            if split.strip() == "train":
                rows.append(path)
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", type=Path, default=DEFAULT_SRC)
    ap.add_argument("--out", type=Path, default=ROOT / "data" / "realdata")
    args = ap.parse_args()
    src: Path = args.root
    if not (src / "split.tsv").is_file():
        print(f"import_realdata: {src}/split.tsv not found; nothing to import", file=sys.stderr)
        return 1
    out: Path = args.out
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    manifest = []
    for rel in train_rows(src):
        parts = rel.split("/")
        dataset = parts[0]
        path = src / rel
        if dataset == "pblm" and parts[1] not in CLEAN_PBLM:
            continue
        name = "-".join(p.removesuffix(".jpg").removesuffix(".png") for p in parts)
        img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if img is None:
            print(f"import_realdata: {path}: unreadable, skipped", file=sys.stderr)
            continue
        h, w = img.shape[:2]
        target = out / "images" / f"{name}.jpg"
        if dataset == "pblm" and w > 1024:
            img = cv2.resize(img, (1024, round(h * 1024 / w)), interpolation=cv2.INTER_AREA)
            cv2.imwrite(str(target), img, [cv2.IMWRITE_JPEG_QUALITY, 92])
        elif path.suffix == ".png":
            cv2.imwrite(str(target), img, [cv2.IMWRITE_JPEG_QUALITY, 95])
        else:
            shutil.copyfile(path, target)
        h, w = img.shape[:2]
        if dataset == "pblm":
            mask = np.zeros((h, w), np.uint8)
            kind = "powder"
        elif dataset == "fdm_pores":
            pores = cv2.imread(
                str(src / "fdm_pores" / "derived_masks" / path.name.replace("_raw.jpg", "_pore_mask.png")), 0
            )
            if pores is None:
                print(f"import_realdata: {path}: no derived pore mask, skipped", file=sys.stderr)
                continue
            mask = np.where(pores > 0, 2, 254).astype(np.uint8)
            kind = "pores"
        elif dataset == "slm_recoat":
            labels = cv2.imread(str(path.with_name(path.stem + "_mask.png")), 0)
            mask = np.where(labels == 2, 255, 254).astype(np.uint8)
            kind = "no_defect"
        else:
            continue
        cv2.imwrite(str(out / "masks" / f"{name}.png"), mask)
        manifest.append((f"{name}.jpg", rel, kind))
        for extra in ("LICENSE", "README.txt"):
            lic = src / dataset / extra
            if lic.is_file():
                (out / "licenses" / dataset).mkdir(parents=True, exist_ok=True)
                shutil.copyfile(lic, out / "licenses" / dataset / extra)
    with (out / "manifest.tsv").open("w", newline="") as f:
        wr = csv.writer(f, delimiter="\t")
        wr.writerow(["image", "source (../shared/realdata, train row)", "labels"])
        wr.writerows(manifest)
    print(f"import_realdata: {len(manifest)} train images written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
