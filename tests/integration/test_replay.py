"""Replay and compare: the shipped sample build through the whole pipeline, pinned decisions, determinism."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from monitor.compare import compare, load_run
from monitor.record import BuildRecord, RecordReader
from monitor.replay import ReplayOptions, ReplayResult, run_replay

pytestmark = [pytest.mark.integration, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "data" / "samples" / "builds" / "warp-512.h5"  # 12 layers, warping from layer 4
LAYERWATCH = str(Path(sys.executable).parent / "layerwatch")


@pytest.fixture(scope="module")
def replayed(tmp_path_factory: pytest.TempPathFactory) -> ReplayResult:
    """The shipped sample build replayed once with the shipped model and default policy."""
    out = tmp_path_factory.mktemp("replay") / "a.h5"
    return run_replay(ReplayOptions(source=SAMPLE, out=out, progress=False))


WARP_START = 4


def test_the_shipped_model_and_policy_pause_the_sample_build_soon_after_the_warp(replayed: ReplayResult) -> None:
    pause = replayed.first_pause
    assert pause is not None and pause.rule in ("warping-persists", "warping-grows")
    assert WARP_START < pause.layer <= WARP_START + 6, pause.layer  # after it starts, within 6 layers
    severities = {r.layer: r.severity for r in replayed.results}
    assert all(severities[k] in ("ok", "info") for k in range(pause.layer)) and severities[pause.layer] == "critical"
    with RecordReader(replayed.record) as r:
        assert list(r.stored_layers()) == list(range(12))
        assert r.attrs["layerwatch/replay_of"] == str(SAMPLE.resolve())
        assert len(r.attrs["layerwatch/replay_of_sha256"]) == 64


def test_replaying_twice_decides_the_same(replayed: ReplayResult, tmp_path: Path) -> None:
    again = run_replay(ReplayOptions(source=SAMPLE, out=tmp_path / "b.h5", progress=False))
    report = compare(load_run(replayed.record), load_run(again.record), tolerance=0.0)
    assert not report["decisions_differ"] and report["layers_differing"] == 0
    pause = replayed.first_pause
    assert pause is not None
    assert report["a"]["time_to_detect_layers"] == {"warping": pause.layer - WARP_START}
    assert report["a"]["false_pauses"] == []
    assert report["a"]["iou"]["warping"] > 0.5


def test_the_reference_lighting_is_a_replay_option(replayed: ReplayResult, tmp_path: Path) -> None:
    with RecordReader(replayed.record) as r:
        lighting = r.illumination()
        assert lighting is not None and lighting[1] == 3  # the default: from the first 3 layers, used from layer 3
    off = run_replay(ReplayOptions(source=SAMPLE, out=tmp_path / "off.h5", progress=False, reference_layers=0))
    with RecordReader(off.record) as r:
        assert r.illumination() is None
    assert len(off.results) == 12


def test_a_policy_that_only_notifies_is_a_difference_compare_reports(replayed: ReplayResult, tmp_path: Path) -> None:
    policy = tmp_path / "notify.toml"
    policy.write_text(
        '[[rules]]\nname = "warping-grows"\nmetric = "warping_stable_growth_mm2"\nabove = 1.0\nk = 3\nn = 3\n'
        'severity = "warning"\nactions = [{ type = "notify" }]\n'
    )
    b = tmp_path / "notify.h5"
    result = subprocess.run(
        [LAYERWATCH, "replay", str(SAMPLE), "--out", str(b), "--policy", str(policy), "--speed", "max"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "first pause: none" in result.stdout and "replayed 12 layers" in result.stdout
    out = subprocess.run(
        [LAYERWATCH, "compare", str(replayed.record), str(b), "--json", str(tmp_path / "c.json")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 1, out.stderr  # decisions differ
    pause = replayed.first_pause
    assert pause is not None
    assert f"first pause: A {pause.layer}, B None" in out.stdout and "decisions differ" in out.stdout
    report = json.loads((tmp_path / "c.json").read_text())
    assert report["decisions_differ"] and report["b"]["first_pause"] is None


def test_a_foreign_peregrine_file_and_a_record_replay_too(replayed: ReplayResult, tmp_path: Path) -> None:
    foreign = tmp_path / "other-tool.h5"
    with h5py.File(SAMPLE, "r") as src, h5py.File(foreign, "w") as f:  # the plain layout, none of our attributes
        f["slices/camera_data/0"] = src["slices/camera_data/0"][:]
        for c in range(5):
            f[f"slices/segmentation_results/{c}"] = src[f"slices/segmentation_results/{c}"][:]
        for key in ("printer/x_real_dimension", "printer/x_camera_dimension", "material/layer_thickness"):
            f.attrs[key] = src.attrs[key]
    assert replayed.first_pause is not None
    layer = replayed.first_pause.layer
    a = run_replay(ReplayOptions(source=foreign, out=tmp_path / "f.h5", progress=False))
    assert a.first_pause is not None and a.first_pause.layer == layer  # the same frames, the same decision
    b = run_replay(ReplayOptions(source=replayed.record, out=tmp_path / "r.h5", progress=False, speed=100.0))
    assert b.first_pause is not None and b.first_pause.layer == layer  # a monitor record, paced from its timestamps


def _refused(args: list[str], out: Path, *words: str) -> None:
    result = subprocess.run(
        [LAYERWATCH, "replay", *args, "--out", str(out)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for w in words:
        assert w in lines[0], lines[0]
    assert not out.exists()  # nothing half-written under the output name


def test_bad_inputs_are_one_line_and_write_nothing(tmp_path: Path) -> None:
    out = tmp_path / "out.h5"
    truncated = tmp_path / "truncated.h5"
    truncated.write_bytes(SAMPLE.read_bytes()[:4096])
    _refused([str(truncated)], out, "is not a readable HDF5 file")
    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as f:
        f["data"] = np.zeros(3)
    _refused([str(foreign)], out, "has no /slices/camera_data/visible/0")
    old = tmp_path / "old.h5"
    shutil.copy(SAMPLE, old)
    with h5py.File(old, "r+") as f:
        f.attrs["layerwatch/schema_version"] = 0
    _refused([str(old)], out, "schema 0", "reads schemas 1, 2")
    gaps = tmp_path / "gaps.h5"
    from tests.unit.monitor.test_record import append, spec

    with BuildRecord.create(gaps, spec()) as rec:
        append(rec, 0)
        append(rec, 2)
    _refused([str(gaps)], out, "missing the frames of layers 1", "--skip-missing")
    _refused([str(SAMPLE), "--broker", "mqtt://127.0.0.1:1"], out, "no MQTT broker answers at mqtt://127.0.0.1:1")
    _refused([str(SAMPLE), "--printer-backend", "octoprint"], out, "--move-real-printer")
    _refused([str(tmp_path / "nope.h5")], out, "does not exist")
