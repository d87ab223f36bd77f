"""The gate's rule on reviewed builds, and the model store's records of who promoted what and why."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from monitor.cli import main
from monitor.gate import EARLY_LAYERS, Review, _judge_pauses, _label_scores, refusals
from monitor.models import ModelStore
from segmentation.classes import NO_DEFECT, UNLABELLED
from segmentation.inference import DEFAULT_MODEL


def _report(review: Review, current: list[int], candidate: list[int]) -> dict[str, Any]:
    build = {"record": str(review.path), "confirmed": review.confirmed, "false_alarms": review.false_alarms}
    build |= {"current": _judge_pauses(review, current), "candidate": _judge_pauses(review, candidate)}
    return {"builds": [build]}


def test_a_pause_catches_a_confirmed_defect_from_a_few_layers_before_it() -> None:
    review = Review(Path("warp.h5"), confirmed=[20], false_alarms=[])
    judged = _judge_pauses(review, [20 - EARLY_LAYERS - 1, 18, 30])
    assert judged["delays"] == {20: -2} and judged["false_pauses"] == 1  # the first was before the defect
    assert _judge_pauses(review, [])["delays"] == {20: None}


def test_the_gate_refuses_a_miss_a_later_pause_and_an_added_false_pause() -> None:
    warp = Review(Path("warp.h5"), confirmed=[20], false_alarms=[])
    glare = Review(Path("glare.h5"), confirmed=[], false_alarms=[6])
    assert refusals(_report(warp, [21], [20])) == []  # earlier is fine
    assert refusals(_report(warp, [21], [])) == ["warp.h5: misses the confirmed defect of layer 20"]
    later = refusals(_report(warp, [21], [24]))
    assert later == ["warp.h5: pauses 3 layer(s) later on the confirmed defect of layer 20"]
    assert refusals(_report(glare, [6], [])) == []
    assert refusals(_report(glare, [], [9])) == ["glare.h5: 1 false pause(s), the current model 0"]
    labels_only = Review(Path("labelled.h5"), confirmed=[], false_alarms=[])
    assert refusals(_report(labels_only, [], [3])) == []  # no verdict: its pauses are unreviewed, not false


def test_the_gate_refuses_a_candidate_that_forgets_the_simulator() -> None:
    report = _report(Review(Path("glare.h5"), confirmed=[], false_alarms=[6]), [6], [])
    kept = {"porosity": 0.85, "spatter": 0.58, "warping": 0.70, "part": 0.9}
    report["simulated"] = {"current": {"porosity": 0.86, "spatter": 0.61, "warping": 0.87}, "candidate": kept}
    assert refusals(report) == []  # 0.779 -> 0.710
    report["simulated"]["candidate"] = {"porosity": 0.76, "spatter": 0.30, "warping": 0.71}  # 0.592
    (why,) = refusals(report)
    assert "mean defect IoU 0.590, the current model 0.780" in why and "forgets" in why


def test_labelled_pixels_score_each_defect_class_and_no_defect_labels() -> None:
    label = np.full((10, 10), UNLABELLED, np.uint8)
    label[:5] = NO_DEFECT
    label[8, 8] = 2
    pred = np.zeros((10, 10), np.uint8)
    pred[0, :4] = 4  # warping on "no defect here": 4 of 50 such pixels
    pred[8, 8] = 2
    pred[9, 9] = 3  # on an unlabelled pixel: not counted
    counts = _label_scores(Review(Path("x.h5"), [], [], {0: label}), {0: pred})
    assert counts[0].tolist() == [1, 0, 0]  # porosity: found
    assert counts[1].tolist() == [0, 0, 0]  # spatter: only on the unlabelled pixel
    assert counts[2].tolist() == [0, 4, 0]  # warping: 4 false pixels
    assert counts[3].tolist() == [4, 50, 0]


def test_promotions_and_rollbacks_are_recorded_with_who_and_why(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = ModelStore(tmp_path / "models")
    assert store.current() is None and store.current_model(DEFAULT_MODEL) == DEFAULT_MODEL
    candidate = tmp_path / "run" / "model.pt"
    candidate.parent.mkdir()
    shutil.copyfile(DEFAULT_MODEL, candidate)
    (candidate.parent / "MODEL_CARD.md").write_text("# fine-tuned\n")
    entry = store.promote(candidate, by="ana", why="glare", forced=True, evaluation={"refusals": ["x"]})
    assert store.current_model(DEFAULT_MODEL) == entry.path and (entry.path.parent / "MODEL_CARD.md").is_file()
    assert json.loads((entry.path.parent / "evaluation.json").read_text()) == {"refusals": ["x"]}
    models = str(tmp_path / "models")
    assert main(["model", "list", "--models", models]) == 0
    listed = capsys.readouterr().out
    assert f"in use: {entry.id}" in listed and "promote" in listed and "FORCED by ana: glare (was shipped)" in listed
    assert main(["model", "rollback", "--models", models]) == 2
    assert "--reason is required" in capsys.readouterr().err
    assert main(["model", "rollback", "--models", models, "--reason", "late pauses", "--by", "bo"]) == 0
    assert store.current() is not None and store.current().id == "shipped"  # type: ignore[union-attr]
    assert main(["model", "rollback", "--models", models, "--reason", "x", "--to", "nope"]) == 2
    assert f"--to nope: not a promoted model (promoted: {entry.id}; or 'shipped')" in capsys.readouterr().err
    store.current_file.write_text("{broken")
    assert main(["model", "list", "--models", models]) == 2
    assert "not JSON" in capsys.readouterr().err


def test_the_gate_refuses_a_candidate_that_does_worse_on_the_frames_its_fine_tune_held_out() -> None:
    def held(current: float, candidate: float) -> dict[str, Any]:
        return {
            "builds": [],
            "holdout": {
                "current": {"iou": {"porosity": current}},
                "candidate": {"iou": {"porosity": candidate}},
            },
        }

    assert refusals(held(0.40, 0.39)) == []  # within MAX_HOLDOUT_DROP
    assert refusals(held(0.40, 0.55)) == []  # it learnt
    (why,) = refusals(held(0.40, 0.30))
    assert why.startswith("your held-out labelled frames: mean defect IoU 0.300, the current model 0.400")


def test_the_dashboard_says_how_a_promoted_fine_tune_did_on_the_frames_it_held_out(tmp_path: Path) -> None:
    from dashboards.state import learnt_text

    sha = "ab" * 32
    folder = tmp_path / f"tuned-{sha[:12]}"
    folder.mkdir()
    scores = {"iou": {"porosity": 0.5}, "pore_recall": 0.7, "pore_precision": 0.6, "pores": 10}
    before = {"iou": {"porosity": 0.2}, "pore_recall": 0.3, "pore_precision": 0.4, "pores": 10}
    (folder / "holdout.json").write_text(
        json.dumps(
            {
                "frames": 4,
                "before": before | {"no_defect_called_defect": 0.01},
                "after": scores | {"no_defect_called_defect": 0.002},
            }
        )
    )
    text = learnt_text(tmp_path, {"sha256": sha})
    assert text.startswith(f"; model tuned-{sha[:12]} on the 4 labelled frames it held out: porosity IoU 0.20->0.50")
    assert "pores found 0.30->0.70" in text and "clean called defect 0.0100->0.0020" in text
    assert learnt_text(tmp_path, {"sha256": "cd" * 32}) == ""  # a model the store did not fine-tune
    assert learnt_text(None, {"sha256": sha}) == ""
