"""The "looks like its part" warping rule (segmentation.geometry) on kept replays of ``eval_policy.py``.

For the replay records in ``DIR`` (``eval_policy.py --records DIR``), with each build's ground truth:

1. every warping component of the stored masks (at least 20 px, with 20 part pixels within 8 px): the gap
   between its median brightness and the median of the part pixels around it, in interquartile ranges of
   those; true (at least 30 % of it is truly warping) against false components, and the share of each
   the rule removes;
2. the first pause of each build judged again from the stored masks with the default (or ``--policy``)
   policy, without and with the rule applied to them.

Records made with the rule already in the monitor show what it leaves; to see what it removes, keep the
records with the code before it (git caaca05 or earlier).

    .venv/bin/python bench/eval_warp_rule.py DIR [--policy P]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

import cv2
import h5py
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import machine
from bench.eval_policy import verdict
from monitor.metrics import MetricsComputer
from monitor.policy import DEFAULT_POLICY, PolicyEngine, load_policy
from monitor.record import RecordReader
from segmentation.classes import LayerClass
from segmentation.geometry import warping_geometry
from segmentation.preprocess import to_gray_float

RING = np.ones((17, 17), np.uint8)


def truth(build: h5py.File, layer: int, shape: tuple[int, ...]) -> np.ndarray:
    out = np.zeros(shape, np.uint8)
    results = build["slices/segmentation_results"]
    for c in sorted(results, key=int):
        out[results[c][layer] > 0] = int(c)
    return out


def components(mask: np.ndarray, gray: np.ndarray, true: np.ndarray) -> list[tuple[int, float, bool]]:
    """(area px, brightness gap in interquartile ranges, truly warping) of each judged warping component."""
    warp = mask == LayerClass.WARPING
    part = mask == LayerClass.PART
    n, labels = cv2.connectedComponents(warp.view(np.uint8), connectivity=8)
    out = []
    for i in range(1, n):
        comp = labels == i
        ring = (cv2.dilate(comp.view(np.uint8), RING) > 0) & part
        if comp.sum() < 20 or ring.sum() < 20:
            continue
        q25, q50, q75 = np.percentile(gray[ring], (25, 50, 75))
        gap = abs(float(np.median(gray[comp])) - q50) / max(q75 - q25, 1 / 255)
        out.append((int(comp.sum()), gap, bool((true[comp] == LayerClass.WARPING).mean() >= 0.3)))
    return out


def first_pause(reader: RecordReader, policy: Path, rule: bool) -> int | None:
    engine = PolicyEngine(load_policy(policy))
    mc = MetricsComputer(float(reader.attrs["layerwatch/mm_per_px"]))
    judged = reader.layers()["judged"]
    for k in (int(n) for n in reader.stored_layers()):
        mask = reader.mask(k)
        if rule:
            mask = warping_geometry(mask, to_gray_float(reader.image(k)))
        m = mc.compute(mask)
        if judged[k] and any(
            a.type == "pause" for hit in engine.evaluate(k, m.values, m.parts) for a in hit.rule.actions
        ):
            return k
    return None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("records", type=Path)
    ap.add_argument("--policy", type=Path, default=DEFAULT_POLICY)
    args = ap.parse_args()
    comps: list[tuple[int, float, bool]] = []
    outcomes: dict[bool, Counter[str]] = {False: Counter(), True: Counter()}
    for row_file in sorted(args.records.glob("s*.json")):
        row = json.loads(row_file.read_text())
        name = row_file.stem
        with RecordReader(args.records / f"{name}-replay.h5") as r, h5py.File(args.records / f"{name}.h5") as b:
            for k in (int(n) for n in r.stored_layers()):
                mask = r.mask(k)
                if (mask == LayerClass.WARPING).any():
                    comps += components(mask, to_gray_float(r.image(k)), truth(b, k, mask.shape))
            for rule in (False, True):
                outcomes[rule][verdict(row, first_pause(r, args.policy, rule), 6)] += 1
    print(f"machine: {machine()}; records {args.records}")
    for name, sel in (("true", [c for c in comps if c[2]]), ("false", [c for c in comps if not c[2]])):
        if not sel:
            continue
        gaps = np.array([c[1] for c in sel])
        area = np.array([c[0] for c in sel], float)
        removed = gaps < 1.0
        p10, p50, p90 = np.percentile(gaps, (10, 50, 90))
        print(
            f"{name} warping components: {len(sel)}; brightness gap to the part around them p10 {p10:.2f}, "
            f"median {p50:.2f}, p90 {p90:.2f} interquartile ranges; the rule removes {removed.sum()} "
            f"({area[removed].sum() / area.sum():.0%} of their area)"
        )
    for rule in (False, True):
        print(f"first pauses {'with' if rule else 'without'} the rule: {dict(sorted(outcomes[rule].items()))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
