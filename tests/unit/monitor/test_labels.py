"""Operators' verdicts become labels: a false alarm's defect pixels are "no defect here", a confirmed
defect keeps its class, everything else is not labelled."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from monitor.cli import main
from monitor.record import BuildRecord
from segmentation.classes import DEFECT_CLASSES, NO_DEFECT, UNLABELLED
from segmentation.preprocess import flat_field
from tests.unit.monitor.test_record import append, layer_data, spec


def test_verdicts_are_exported_as_partial_labels(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    records = tmp_path / "records"
    records.mkdir()
    with BuildRecord.create(records / "b.h5", spec()) as rec:
        for k in range(4):
            append(rec, k)
        h, w = rec.frame_size
        lighting = np.tile(np.linspace(0.3, 0.9, w, dtype=np.float32), (h, 1))  # brighter to the right
        rec.set_illumination(lighting, 3)  # the monitor flat-fielded layer 3 on
        rec.add_action(1, "r1", "pause", "requested", "warping-persists", "job-1:warp:1", {})
        rec.add_action(3, "r2", "notify", "confirmed", "pores", "job-1:pores:3", {})
        rec.add_action(2, "r3", "notify", "confirmed", "spatter", "job-1:spatter:2", {})  # no verdict: no label
        rec.add_feedback("job-1:warp:1", "false_alarm", "ana", "")
        rec.add_feedback("job-1:pores:3", "false_alarm", "ana", "")
        rec.add_feedback("job-1:pores:3", "confirmed_defect", "bo", "looked again")  # the last verdict wins
    out = tmp_path / "labels"
    assert main(["labels", "export", "--records", str(records), "--out", str(out)]) == 0
    assert "2 labelled layer(s) from 1 record(s) (confirmed defect 1, false alarm 1)" in capsys.readouterr().out
    defects = [int(c) for c in DEFECT_CLASSES]

    _, predicted, _ = layer_data(1)
    false_alarm = cv2.imread(str(out / "masks" / "b-00001.png"), cv2.IMREAD_UNCHANGED)
    assert set(np.unique(false_alarm)) <= {NO_DEFECT, UNLABELLED}
    assert np.array_equal(false_alarm == NO_DEFECT, np.isin(predicted, defects))

    _, predicted, _ = layer_data(3)
    confirmed = cv2.imread(str(out / "masks" / "b-00003.png"), cv2.IMREAD_UNCHANGED)
    sel = np.isin(predicted, defects)
    assert np.array_equal(confirmed[sel], predicted[sel]) and (confirmed[~sel] == UNLABELLED).all()
    # the frames as the model saw them: layer 1 before the lighting was known, layer 3 flat-fielded
    image = cv2.imread(str(out / "images" / "b-00001.png"), cv2.IMREAD_UNCHANGED)
    assert image is not None and np.array_equal(image, layer_data(1)[0].astype(np.uint16) * 257)
    image = cv2.imread(str(out / "images" / "b-00003.png"), cv2.IMREAD_UNCHANGED)
    seen = flat_field(layer_data(3)[0].astype(np.float32) / 255, lighting)
    assert image is not None and np.abs(image / 65535 - seen).max() < 1e-4
    assert not (out / "masks" / "b-00002.png").exists()


def test_a_verdict_labels_only_the_class_its_rule_watches(tmp_path: Path) -> None:
    from dataclasses import replace

    from monitor.labels import labelled_layers, layer_label
    from monitor.record import RecordReader

    rules = [{"name": "warping-persists", "metric": "warping_confirmed_area_mm2"}]
    path = tmp_path / "b.h5"
    with BuildRecord.create(path, replace(spec(), policy={"rules": rules})) as rec:
        for k in range(3):
            append(rec, k)
        rec.add_action(1, "r1", "pause", "requested", "warping-persists", "job-1:warp:1", {})
        rec.add_feedback("job-1:warp:1", "false_alarm", "ana", "the lamp's glare")
    with RecordReader(path) as r:
        (verdicts, strokes) = labelled_layers(r, path)[1]
        label = layer_label(r.mask(1), verdicts, strokes)
    _, predicted, _ = layer_data(1)
    assert verdicts[0].classes == (4,)
    assert (predicted == 4).any() and np.isin(predicted, [2, 3]).any()  # warping, and other defects beside it
    assert np.array_equal(label == NO_DEFECT, predicted == 4)  # the warping pixels, not the spatter or pores
    assert (label[predicted != 4] == UNLABELLED).all()


def test_the_labels_saved_on_a_layer_are_painted_in_order_for_the_canvas(tmp_path: Path) -> None:
    from monitor.labels import saved_label
    from monitor.record import RecordReader

    with BuildRecord.create(tmp_path / "b.h5", spec()) as rec:
        for k in range(3):
            append(rec, k)
        rec.add_label(1, "ana", "region", NO_DEFECT, 1, [(0, 0), (20, 0), (20, 20), (0, 20)], at=1.0)
        rec.add_label(1, "bo", "brush", 2, 3, [(5, 10), (15, 10)], at=2.0)  # later: painted over the region
        rec.add_label(2, "ana", "brush", 9, 3, [(5, 10), (15, 10)], at=3.0)  # not a label value: skipped
    with RecordReader(tmp_path / "b.h5") as r:
        painted = saved_label(r, 1)
        assert saved_label(r, 0) is None and saved_label(r, 2) is None
        size = r.frame_size
    assert painted is not None
    label, strokes = painted
    assert strokes == 2 and label.shape == size
    assert label[2, 2] == NO_DEFECT and label[10, 10] == 2 and label[40, 40] == UNLABELLED
