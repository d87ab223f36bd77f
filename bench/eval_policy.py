"""The default policy on replayed builds: every slow warp paused soon after it starts, no clean build ever.

For each seed, two builds that differ only in the defect (``scenario_spec``: a box and a cylinder on a
51 mm plate at 0.1 mm/px, the seed's lighting, camera, chamber and distractors): a slow warp at the box's
corner that starts at a random layer (8-14) and grows by a random 0.3-0.7 mm² a layer, and the same build
without it. Each build is written as a build file with ground truth and run through ``layerwatch replay``
(local broker, monitor with the model and policy, virtual printer) exactly as a user would back-test one.
Onset = the first layer whose ground truth has warping. A warped build counts as caught when the first
pause comes within ``--within`` (6) layers of the onset, never before it; a pause on a clean build is a
false pause.

Seeds: 2000-2019 are the reported test builds; tune thresholds on other seeds (3000+), never on these.
``--records DIR`` keeps the replay records; ``--rejudge DIR --policy P`` evaluates another policy (and the
current metrics code) on the masks of kept records without replaying.

    .venv/bin/python bench/eval_policy.py [--seeds 2000 20] [--layers 30] [--policy P] [--records DIR]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import machine
from monitor.metrics import MetricsComputer
from monitor.policy import DEFAULT_POLICY, PolicyEngine, load_policy
from monitor.record import RecordReader, write_truth_build
from monitor.replay import ReplayOptions, run_replay
from segmentation.classes import CLASS_NAMES, LayerClass
from segmentation.inference import DEFAULT_MODEL
from segmentation.simulator import SimBuild, scenario_spec


def scenario(seed: int, layers: int, warped: bool) -> tuple[Any, int | None, float]:
    """(spec, warp start, growth mm²/layer) of one test build."""
    rng = np.random.default_rng([seed, 4711])
    start = int(rng.integers(8, 15))
    growth = float(rng.uniform(0.3, 0.7))
    spec = scenario_spec(seed, 512, layers, warp_start=start if warped else None, warp_area_growth=growth)
    return spec, (start if warped else None), growth


def write_build(path: Path, seed: int, layers: int, warped: bool) -> dict[str, Any]:
    spec, start, growth = scenario(seed, layers, warped)
    build = SimBuild(seed, 512, 512, layers, spec=spec)
    rendered = [build.layer(k) for k in range(layers)]
    images = [la.image if la.image.ndim == 2 else la.image.mean(axis=2).astype(la.image.dtype) for la in rendered]
    write_truth_build(
        path,
        images,
        [la.mask for la in rendered],
        mm_per_px=spec.mm_per_px,
        layer_thickness_mm=spec.layer_thickness,
        class_names=CLASS_NAMES,
        description=f"eval_policy seed {seed} {'warped' if warped else 'clean'}",
    )
    areas = [float((la.mask == LayerClass.WARPING).sum()) * spec.mm_per_px**2 for la in rendered]
    onset = next((k for k, a in enumerate(areas) if a > 0), None)
    return {"seed": seed, "warped": warped, "start": start, "growth": growth, "onset": onset, "areas": areas}


def first_pause_from_masks(record: Path, policy_path: Path) -> int | None:
    """The first layer at which a pause rule of ``policy_path`` holds, recomputing every layer's metrics
    from the masks a replay stored (what the monitor would decide with today's metrics and that policy)."""
    engine = PolicyEngine(load_policy(policy_path))
    with RecordReader(record) as r:
        mc = MetricsComputer(float(r.attrs["layerwatch/mm_per_px"]))
        layers = r.layers()
        for k in (int(n) for n in r.stored_layers()):
            m = mc.compute(r.mask(k), gray=r.image(k))
            if not layers[k]["judged"]:
                continue
            for hit in engine.evaluate(k, m.values, m.parts):
                if any(a.type == "pause" for a in hit.rule.actions):
                    return k
    return None


def verdict(row: dict[str, Any], pause: int | None, within: int) -> str:
    if not row["warped"]:
        return "false pause" if pause is not None else "ok"
    if pause is None:
        return "missed"
    if row["onset"] is None or pause < row["onset"]:
        return "paused before onset"
    return "caught" if pause - row["onset"] <= within else "late"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs=2, default=(2000, 20), metavar=("FIRST", "COUNT"))
    ap.add_argument("--layers", type=int, default=30)
    ap.add_argument("--within", type=int, default=6)
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    ap.add_argument("--policy", type=Path, default=DEFAULT_POLICY)
    ap.add_argument("--records", type=Path, default=None, help="keep the builds and replay records here")
    ap.add_argument("--rejudge", type=Path, default=None, help="judge kept records (of --records) with --policy")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--reference", type=int, default=3, help="[monitor] reference_layers of the replays (0: off)")
    args = ap.parse_args()
    first, count = args.seeds
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.rejudge or args.records or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        for seed in range(first, first + count):
            for warped in (False, True):
                name = f"s{seed}-{'warp' if warped else 'clean'}"
                build, replay = folder / f"{name}.h5", folder / f"{name}-replay.h5"
                if args.rejudge is not None:
                    row = json.loads((folder / f"{name}.json").read_text())
                    pause = first_pause_from_masks(replay, args.policy)
                else:
                    row = write_build(build, seed, args.layers, warped)
                    res = run_replay(
                        ReplayOptions(
                            source=build,
                            out=replay,
                            model=args.model,
                            policy=args.policy,
                            progress=False,
                            reference_layers=args.reference,
                        )
                    )
                    fp = res.first_pause
                    pause = fp.layer if fp is not None else None
                    row["rule"] = fp.rule if fp is not None else ""
                    (folder / f"{name}.json").write_text(json.dumps(row))
                row["pause"] = pause
                row["verdict"] = verdict(row, pause, args.within)
                rows.append(row)
                detail = (
                    f"onset {row['onset']}, {row['growth']:.2f} mm²/layer, {row['areas'][-1]:.1f} mm² at the end"
                    if warped
                    else "clean"
                )
                print(f"seed {seed} {detail}: first pause {pause} -> {row['verdict']}", flush=True)
    clean = [r for r in rows if not r["warped"]]
    warped_rows = [r for r in rows if r["warped"]]
    caught = [r for r in warped_rows if r["verdict"] == "caught"]
    delays = [r["pause"] - r["onset"] for r in caught]
    print(f"machine: {machine()}")
    print(
        f"model {args.model}, policy {args.policy}, {count} seeds from {first}, {args.layers} layers at 512x512, "
        f"reference lighting from {args.reference} layers"
    )
    print(f"clean builds: {sum(r['verdict'] == 'false pause' for r in clean)} of {len(clean)} paused (false pauses)")
    for v in ("caught", "late", "missed", "paused before onset"):
        print(f"warped builds {v}: {sum(r['verdict'] == v for r in warped_rows)} of {len(warped_rows)}")
    if delays:
        print(f"delay after onset: median {statistics.median(delays):g} layers (min {min(delays)}, max {max(delays)})")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"machine": machine(), "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
