"""``layerwatch backtest``: builds replayed as Dask tasks on a LocalCluster of 2 workers decide as each
build replayed alone, and the summary says per build where the defect began and when it was caught."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from monitor.cli import main
from monitor.record import write_truth_build
from monitor.replay import ReplayOptions, run_replay
from segmentation.classes import CLASS_NAMES
from segmentation.simulator import SimBuild, scenario_spec

pytestmark = [pytest.mark.integration, pytest.mark.slow]
LAYERS = 10


def _build(path: Path, seed: int, warp: int | None) -> Path:
    spec = scenario_spec(seed, 256, LAYERS, warp_start=warp)
    sim = SimBuild(seed, 256, 256, LAYERS, spec=spec)
    layers = [sim.layer(k) for k in range(LAYERS)]
    write_truth_build(path, [s.image for s in layers], [s.mask for s in layers], mm_per_px=spec.mm_per_px,
                      layer_thickness_mm=spec.layer_thickness, class_names=list(CLASS_NAMES))  # fmt: skip
    return path


def test_backtest_on_two_workers_decides_as_each_replay_alone(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    builds = tmp_path / "builds"
    builds.mkdir()
    for name, seed, warp in (("warp-a", 3, 3), ("warp-b", 4, 4), ("clean", 5, None)):
        _build(builds / f"{name}.h5", seed, warp)
    out = tmp_path / "out"
    models = str(tmp_path / "models")
    assert main(["backtest", str(builds), "--out", str(out), "--workers", "2", "--models", models]) == 0
    assert "3 build(s)" in capsys.readouterr().out
    rows = {r["build"]: r for r in csv.DictReader((out / "summary.csv").open())}
    assert set(rows) == {"warp-a", "warp-b", "clean"}
    for name, row in rows.items():
        assert (out / f"{name}-replay.h5").is_file() and row["layers"] == str(LAYERS) and not row["error"]
        alone = run_replay(ReplayOptions(source=builds / f"{name}.h5", out=tmp_path / f"alone-{name}.h5",
                                         progress=False, models_dir=Path(models)))  # fmt: skip
        first = alone.first_pause
        assert row["first_pause"] == ("" if first is None else str(first.layer)), (name, row)
    assert rows["warp-a"]["defect_onset"] == "3" and rows["clean"]["defect_onset"] in ("", "0")
    assert main(["backtest", str(tmp_path / "nothing"), "--out", str(out)]) == 2
    assert "no such build file or folder" in capsys.readouterr().err
