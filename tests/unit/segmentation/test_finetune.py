"""``layerwatch finetune``: labels are checked before anything is learnt; a short run gives a usable model
with a model card that says what it was made from."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from segmentation.classes import NO_DEFECT, UNLABELLED
from segmentation.finetune import FinetuneError, FinetuneOptions, check_labels, finetune
from segmentation.inference import Segmenter


def _labels(root: Path, n: int = 3) -> tuple[Path, Path]:
    images, masks = root / "images", root / "masks"
    images.mkdir(parents=True)
    masks.mkdir(parents=True)
    rng = np.random.default_rng(3)
    for i in range(n):
        img = (rng.normal(120, 10, (96, 96))).clip(0, 255).astype(np.uint8)
        mask = np.full((96, 96), NO_DEFECT, np.uint8)  # "no defect here" everywhere ...
        img[40:46, 40:46] = 20  # ... but a dark pit, labelled porosity, and its ring left unlabelled
        mask[38:48, 38:48] = UNLABELLED
        mask[40:46, 40:46] = 2
        cv2.imwrite(str(images / f"frame{i}.png"), img)
        cv2.imwrite(str(masks / f"frame{i}.png"), mask)
    return images, masks


def test_bad_labels_are_named_before_any_training(tmp_path: Path) -> None:
    images, masks = _labels(tmp_path)
    pairs, counts = check_labels(images, masks)
    assert len(pairs) == 3 and counts[2] == 3 * 36 and counts[NO_DEFECT] > 0
    cv2.imwrite(str(masks / "frame1.png"), np.full((96, 96), 7, np.uint8))
    with pytest.raises(FinetuneError, match=r"frame1.png: label value\(s\) \[7\]; use 0-4"):
        check_labels(images, masks)
    cv2.imwrite(str(masks / "frame1.png"), np.zeros((50, 96), np.uint8))
    with pytest.raises(FinetuneError, match="96x50 px, its image 96x96 px"):
        check_labels(images, masks)
    (masks / "frame1.png").unlink()
    with pytest.raises(FinetuneError, match="no mask"):
        check_labels(images, masks)
    with pytest.raises(FinetuneError, match=r"--anchor -1.0: give 0 \(off\) or more"):
        finetune(FinetuneOptions(images=images, masks=masks, out=tmp_path / "out", anchor=-1.0))


@pytest.mark.slow
def test_a_short_finetune_writes_a_usable_model_and_its_card(tmp_path: Path) -> None:
    images, masks = _labels(tmp_path / "data")
    lines: list[str] = []
    opts = FinetuneOptions(
        images=images, masks=masks, out=tmp_path / "out", minutes=0.05, sim_layers=8, frame=96, crop=64, batch=2,
        heldout_layers=2,
    )  # fmt: skip
    model = finetune(opts, echo=lines.append)
    assert model == tmp_path / "out" / "model.pt" and model.with_suffix(".onnx").is_file()
    card = (tmp_path / "out" / "MODEL_CARD.md").read_text()
    assert "base model:" in card and "porosity 108" in card and "| porosity |" in card
    with Segmenter(model, engine="onnx") as seg:
        assert seg.segment(np.zeros((96, 96), np.uint8)).mask.shape == (96, 96)
    assert any(ln.startswith("finetune: wrote") for ln in lines)


def test_a_fifth_of_the_builds_is_held_out_among_defective_and_clean_builds_alike(tmp_path: Path) -> None:
    from segmentation.finetune import split_holdout

    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir()
    masks.mkdir()
    names = [f"rec{b}-{k:05d}" for b in range(10) for k in range(2)] + ["odd-frame"]
    for name in names:
        cv2.imwrite(str(images / f"{name}.png"), np.zeros((8, 8), np.uint8))
        defect = name.startswith(("rec0-", "rec1-", "rec2-", "rec3-", "rec4-"))
        cv2.imwrite(str(masks / f"{name}.png"), np.full((8, 8), 2 if defect else NO_DEFECT, np.uint8))
    pairs, _ = check_labels(images, masks)
    keep, held = split_holdout(pairs, 0.2)
    builds = {p[0].stem.rpartition("-")[0] or p[0].stem for p in held}
    assert len(keep) + len(held) == len(pairs) and len(builds) == 2  # one of 5 defective builds, one of 6 clean
    assert not builds & {p[0].stem.rpartition("-")[0] for p in keep}  # a build is wholly in or out
    assert split_holdout(pairs, 0.2) == (keep, held)  # the same every run
    assert split_holdout(pairs[:4], 0.2) == (pairs[:4], [])  # too few to hold any out
    # two builds with defects among many clean ones: one of the two is held out all the same
    few = [p for p in pairs if not p[0].stem.startswith(("rec2-", "rec3-", "rec4-"))]
    keep, held = split_holdout(few, 0.2)
    assert len({p[0].stem[:4] for p in held if p[0].stem.startswith(("rec0-", "rec1-"))}) == 1


def test_a_rare_labelled_defect_weighs_more() -> None:
    from collections import Counter

    from segmentation.classes import CLASS_LOSS_WEIGHTS
    from segmentation.finetune import rare_class_weights

    weights = rare_class_weights(Counter({NO_DEFECT: 1_000_000, 2: 100, 255: 5}))
    assert weights[2] == pytest.approx(CLASS_LOSS_WEIGHTS[2] * 2)  # 100 of a million: capped at 2x
    assert weights[:2] == tuple(CLASS_LOSS_WEIGHTS[:2]) and weights[3:] == tuple(CLASS_LOSS_WEIGHTS[3:])
    even = rare_class_weights(Counter({NO_DEFECT: 225, 2: 100}))
    assert even[2] == pytest.approx(CLASS_LOSS_WEIGHTS[2] * 1.5)


@pytest.mark.slow
def test_the_porosity_threshold_is_chosen_on_the_held_out_labels_and_moves_the_model(tmp_path: Path) -> None:
    import shutil

    from segmentation.finetune import LOGIT_SHIFTS, _f1, choose_shifts, score_labelled, shift_logits
    from segmentation.inference import DEFAULT_MODEL

    held = tmp_path / "held"
    (held / "images").mkdir(parents=True)
    (held / "masks").mkdir()
    rng = np.random.default_rng(5)
    for i in range(2):
        img = rng.normal(150, 12, (256, 256)).clip(0, 255).astype(np.uint8)
        mask = np.full((256, 256), NO_DEFECT, np.uint8)
        for k in range(10):
            y, x = 20 + 22 * k, 30 + (k % 3) * 80
            cv2.circle(img, (x, y), 4, 60 + 8 * k, -1)  # pits from dark to faint
            cv2.circle(mask, (x, y), 8, UNLABELLED, -1)
            cv2.circle(mask, (x, y), 4, 2, -1)
        cv2.imwrite(str(held / "images" / f"b{i}-l0.png"), img)
        cv2.imwrite(str(held / "masks" / f"b{i}-l0.png"), mask)
    model = tmp_path / "m.pt"
    shutil.copyfile(DEFAULT_MODEL, model)
    shifts, tables = choose_shifts(model, held)
    # only porosity is labelled: only its threshold is chosen, over the whole grid
    assert set(shifts) == {"porosity"} and set(tables) == {"porosity"}
    table = tables["porosity"]
    assert shifts["porosity"] in LOGIT_SHIFTS and set(table) == set(LOGIT_SHIFTS) and table[0.0]["pores"] == 20
    assert _f1(table[shifts["porosity"]]) >= _f1(table[0.0])
    assert (table[shifts["porosity"]]["no_defect_called_defect"] or 0) <= (table[0.0]["no_defect_called_defect"] or 0)
    # with the simulator's guard: no shift chosen that costs porosity more than MAX_SIM_COST on simulated layers
    from segmentation.finetune import MAX_SIM_COST

    guarded, guarded_tables = choose_shifts(model, held, frozenset(), 128)
    sim = {k: v["sim_iou"] for k, v in guarded_tables["porosity"].items()}
    assert sim[guarded["porosity"]] >= sim[0.0] - MAX_SIM_COST
    # a raised porosity logit calls more of the faint pits pores, in the checkpoint and its ONNX twin alike
    before = score_labelled(model, held)
    shift_logits(model, {"porosity": 3.0})
    after = score_labelled(model, held)
    assert after["pore_recall"] >= before["pore_recall"] and after != before
    assert after["objects"]["porosity"]["recall"] == after["pore_recall"]
    shift_logits(model, {"porosity": -1.0, "warping": 0.5})  # a second round adds to the first
    import torch

    assert torch.load(model, weights_only=True)["meta"]["logit_shifts"] == {"porosity": 2.0, "warping": 0.5}
    assert choose_shifts(model, tmp_path / "data-none") == ({}, {})  # nothing labelled: no choice


def test_held_out_objects_are_counted_found_and_right_per_class() -> None:
    from segmentation.finetune import _f1, _score

    truth = np.full((64, 64), NO_DEFECT, np.uint8)
    truth[40:, :] = UNLABELLED
    truth[2:8, 2:8] = truth[20:26, 20:26] = 4  # two warped regions
    truth[2:4, 50:52] = 3  # one spatter
    pred = np.zeros((64, 64), np.uint8)
    pred[3:6, 3:6] = 4  # found the first warped region
    pred[10:14, 40:44] = 4  # warping on "no defect here": wrong
    pred[50:60, 50:60] = 4  # warping where nothing is labelled: not counted
    score = _score([(truth, pred)])
    assert score["objects"]["warping"] == {"objects": 2, "recall": 0.5, "precision": 0.5}
    assert score["objects"]["spatter"] == {"objects": 1, "recall": 0.0, "precision": None}
    assert "porosity" not in score["objects"] and score["pores"] == 0 and score["pore_recall"] is None
    assert _f1(score, "warping") == 0.5 and _f1(score, "spatter") == 0.0
    # IoU over the labelled pixels: the warping called on "no defect here" counts against it, unlabelled not
    assert score["iou"]["warping"] == round(9 / (72 + 16), 4)
