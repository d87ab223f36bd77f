"""The 3D defect report on builds whose defects are known: the shipped sample build's ground truth."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import h5py
import numpy as np
import pytest

from dashboards.report import Criteria, ReportError, analyze, write_report
from monitor.record import write_truth_build
from segmentation.classes import CLASS_NAMES
from segmentation.simulator import SimBuild, scenario_spec

SAMPLE = Path(__file__).resolve().parents[3] / "data" / "samples" / "builds" / "warp-512.h5"


def test_injected_pores_are_recovered_from_the_ground_truth() -> None:
    """scenario_spec(5, 512, 12, warp_start=4) made the sample: its 6 pores are known in mm and layers."""
    spec = scenario_spec(5, 512, 12, warp_start=4)
    report = analyze(SAMPLE, floor_voxels=3)
    pores = [d for d in report.defects if d.cls == "porosity"]
    injected = [p for p in spec.pores if 0 <= p.cz < 12]
    assert len(pores) == len(injected) == 6
    for p in injected:  # each injected pore has a found pore within 0.4 mm in x/y and 2 layers in z
        best = min(pores, key=lambda d: math.hypot(d.centroid_mm[0] - p.cx, d.centroid_mm[1] - p.cy))
        assert math.hypot(best.centroid_mm[0] - p.cx, best.centroid_mm[1] - p.cy) < 0.4
        assert abs(best.centroid_mm[2] / spec.layer_thickness - p.cz) < 2.0
        # an ellipsoid of radii rx, ry (mm) and rz (layers) cut by the visibility floor: same order of volume
        ellipsoid = 4 / 3 * math.pi * p.rx * p.ry * p.rz * spec.layer_thickness
        assert 0.2 * ellipsoid < best.volume_mm3 < 2.0 * ellipsoid
    warps = [d for d in report.defects if d.cls == "warping"]
    assert len(warps) == 1 and warps[0].first_layer == 4 and warps[0].last_layer == 11


def test_outputs_and_verdicts(tmp_path: Path) -> None:
    report = analyze(SAMPLE, criteria=Criteria(max_pore_diameter_mm=0.5, max_porosity_pct=0.5, max_warping_mm3=0.0))
    files = write_report(report, tmp_path)
    assert [f.name for f in files] == ["defects.csv", "parts.csv", "top_view.png", "report.json", "report.html"]
    rows = list(csv.DictReader((tmp_path / "defects.csv").open()))
    assert len(rows) == len(report.defects) and {"cls", "volume_mm3", "cx_mm"} <= set(rows[0])
    (part,) = json.loads((tmp_path / "report.json").read_text())["parts"]
    assert part["verdict"] == "reject" and any("warping" in r for r in part["reasons"])
    html = (tmp_path / "report.html").read_text()
    assert "Plotly.newPlot" in html and "<script src" not in html  # plotly.js embedded: opens offline
    assert len(html) > 1_000_000


def test_a_clean_build_gives_a_clean_report_and_bad_files_say_why(tmp_path: Path) -> None:
    spec = scenario_spec(7, 128, 4, pores=0)
    build = SimBuild(7, 128, 128, 4, spec=spec)
    layers = [build.layer(k) for k in range(4)]
    clean = tmp_path / "clean.h5"
    masks = [np.where(x.mask >= 2, 1, x.mask).astype(np.uint8) for x in layers]  # no defect at all
    write_truth_build(
        clean,
        [x.image for x in layers],
        masks,
        mm_per_px=spec.mm_per_px,
        layer_thickness_mm=0.04,
        class_names=CLASS_NAMES,
    )
    report = analyze(clean)
    assert report.defects == [] and report.parts[0].verdict == "pass"
    assert "a clean build" in report.build["notes"][0]
    bad = tmp_path / "bad.h5"
    with h5py.File(bad, "w") as f:
        f["slices/camera_data/0"] = np.zeros((1, 4, 4), np.uint8)
        f["slices/segmentation_results/1"] = np.zeros((1, 4, 4), np.uint8)
        f.attrs["printer/x_real_dimension"] = 1.0
        f.attrs["printer/x_camera_dimension"] = 4
    with pytest.raises(ReportError, match="lacks the calibration attribute"):
        analyze(bad)
    with h5py.File(bad, "r+") as f:
        f.attrs["printer/y_real_dimension"] = 3.0
        f.attrs["printer/y_camera_dimension"] = 4
        f.attrs["material/layer_thickness"] = 0.04
    with pytest.raises(ReportError, match="inconsistent calibration"):
        analyze(bad)


def test_a_monitor_record_with_part_ids_reports_per_part(tmp_path: Path) -> None:
    from monitor.record import BuildRecord
    from tests.unit.monitor.test_record import append, spec

    path = tmp_path / "rec.h5"
    with BuildRecord.create(path, spec()) as rec:
        for k in range(4):
            append(rec, k)  # random masks; part ids 1..3 by layer
    report = analyze(path)
    assert sorted(p.id for p in report.parts) == [1, 2, 3]
    assert all(d.part_id in (0, 1, 2, 3) for d in report.defects)
    assert report.build["state"] == "closed"


def test_a_live_record_with_a_missing_layer_gives_a_partial_report_that_says_so(tmp_path: Path) -> None:
    from monitor.record import BuildRecord
    from tests.unit.monitor.test_record import append, spec

    path = tmp_path / "live.h5"
    rec = BuildRecord.create(path, spec())
    try:
        append(rec, 0)
        append(rec, 2)  # layer 1 never arrived; the writer is still at work
        report = analyze(path)
    finally:
        rec.close()
    assert report.build["state"] == "writing" and report.build["layers"] == 2
    assert any("1 layer(s) missing" in n for n in report.build["notes"])


def test_the_report_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from monitor.cli import main

    assert main(["report", str(SAMPLE), "--out", str(tmp_path / "r"), "--max-pore-mm", "2"]) == 0
    out = capsys.readouterr().out
    assert "part 0:" in out and "reject (warping" in out and (tmp_path / "r" / "report.html").is_file()
    bad = tmp_path / "bad.h5"
    bad.write_bytes(b"not hdf5")
    assert main(["report", str(bad), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is not a readable HDF5 file" in err[0]
    assert not (tmp_path / "x").exists()
