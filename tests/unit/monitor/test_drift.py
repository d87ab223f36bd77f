"""Drift: a window of layers against the model's and the printer's reference, with the layers to label."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from monitor.drift import DriftSettings, DriftWatch, layer_stats


def _stats(rng: np.random.Generator, brightness: float = 0.4, part: float = 0.3, ood: float = 0.1) -> dict[str, float]:
    part = part + rng.normal(0, 0.01)
    return {
        "brightness": brightness + rng.normal(0, 0.01),
        "contrast": 0.1 + rng.normal(0, 0.005),
        "ood": ood + abs(rng.normal(0, 0.02)),
        "share_powder": 0.69 - part,
        "share_part": part,
        "share_porosity": 0.002,
        "share_spatter": 0.003,
        "share_warping": 0.0,
    }


def test_a_steady_printer_does_not_drift_and_a_darker_camera_does(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    settings = DriftSettings(reference_layers=30, window=10)
    watch = DriftWatch.open(tmp_path / "drift.json", settings)
    findings = [watch.add(k, _stats(rng)) for k in range(30 + 40)]  # the reference, then four steady windows
    assert findings == [None] * 70 and (tmp_path / "drift.json").is_file()
    # the lamp ages: frames darken from layer 70; the five darkest are the ones to label
    found = [(k, watch.add(k, _stats(rng, brightness=0.4 - 0.01 * (k - 69)))) for k in range(70, 90)]
    at, finding = next((k, f) for k, f in found if f is not None)
    assert 74 <= at <= 80 and finding is not None and "brightness" in finding.reasons[0]
    assert finding.layers == list(range(at, at - 5, -1))  # the darkest, the most unlike first
    assert finding.message("p1", 10).startswith("needs review: drift on printer p1")
    assert f"Label layers {at}, {at - 1}," in finding.message("p1", 10)


def test_unfamiliar_frames_and_class_areas_drift_and_the_reference_outlives_a_restart(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    path = tmp_path / "drift.json"
    first = DriftWatch.open(path, DriftSettings(reference_layers=20, window=10))
    for k in range(20):
        first.add(k, _stats(rng))
    again = DriftWatch.open(path, DriftSettings(reference_layers=20, window=10))  # a restarted monitor
    assert again.reference == first.reference
    findings = [again.add(k, _stats(rng, ood=0.8)) for k in range(20, 30)]
    assert findings[-1] is not None and "unlike the model's training frames" in findings[-1].reasons[0]
    findings = [again.add(k, _stats(rng, part=0.45)) for k in range(30, 40)]  # the model sees far more part
    assert findings[-1] is not None and any("share of part" in r for r in findings[-1].reasons)


def test_layer_stats_measure_the_plate_only() -> None:
    gray = np.full((10, 10), 100, np.uint8)
    gray[:, :5] = 250  # outside the plate: a bright rail
    mask = np.zeros((10, 10), np.uint8)
    mask[5:, 5:] = 1
    roi = np.zeros((10, 10), bool)
    roi[:, 5:] = True
    s = layer_stats(gray, mask, roi, 0.2)
    assert abs(s["brightness"] - 100 / 255) < 1e-6 and s["share_part"] == 0.5 and s["ood"] == 0.2


def test_a_printer_that_drifts_from_its_first_layers_is_said_and_sets_no_reference(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    settings = DriftSettings(reference_layers=30, window=10)
    watch = DriftWatch.open(tmp_path / "drift.json", settings)
    found = [watch.add(k, _stats(rng, ood=0.9)) for k in range(12)]  # a camera the model does not know
    finding = next(f for f in found if f is not None)
    assert found.index(finding) == 9 and "unlike the model's training frames" in finding.reasons[0]
    assert watch.reference is None and not (tmp_path / "drift.json").exists()  # not its drift as the reference
    for k in range(12, 42):  # the camera is fixed: the reference comes from the frames the model knows
        assert watch.add(k, _stats(rng)) is None
    assert watch.reference is not None and watch.reference["brightness"][0] > 0.35
