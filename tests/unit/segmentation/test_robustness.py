"""What makes the model see defects rather than lighting: lighting changes, the build plate, the
reference lighting, partial labels and the out-of-distribution score."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from types import SimpleNamespace
from typing import cast

import numpy as np
import pytest

from segmentation.augment import LIGHTING_TRANSFORMS, apply, random_lighting
from segmentation.classes import NO_DEFECT, UNLABELLED
from segmentation.inference import Segmenter
from segmentation.preprocess import flat_field, illumination
from segmentation.roi import Roi, polygon_mask, propose_roi


def test_ten_lighting_changes_keep_frames_in_range() -> None:
    g = np.linspace(0, 1, 64 * 80, dtype=np.float32).reshape(64, 80)
    assert len(LIGHTING_TRANSFORMS) == 10
    outs = [apply(g, fn) for _, fn in LIGHTING_TRANSFORMS]
    for out in outs:
        assert out.shape == g.shape and out.dtype == np.float32
        assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    # every change does change the frame
    assert all(float(np.abs(o - g).mean()) > 0.01 for o in outs)


def test_random_lighting_is_seeded_and_bounded(rng: np.random.Generator) -> None:
    g = rng.uniform(0.2, 0.6, (96, 96)).astype(np.float32)
    a = random_lighting(g, np.random.default_rng(5))
    b = random_lighting(g, np.random.default_rng(5))
    assert np.array_equal(a, b)
    assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0
    assert np.array_equal(random_lighting(g, np.random.default_rng(5), strength=0.0) > -1, np.ones_like(g, bool))


def _chamber(h: int = 400, w: int = 360) -> np.ndarray:
    """A powder bed between dark walls on the left and right and a bright rail at the top."""
    rng = np.random.default_rng(1)
    img = 0.5 + 0.02 * rng.normal(size=(h, w))
    img[:, :30] = 0.1
    img[:, w - 24 :] = 0.12
    img[:18] = 0.9
    return np.clip(img, 0, 1).astype(np.float32)


def test_the_plate_is_proposed_between_walls_and_rails() -> None:
    roi = propose_roi([_chamber()])
    xs = [p[0] for p in roi.points]
    ys = [p[1] for p in roi.points]
    assert roi.source == "proposed" and len(roi.points) == 4
    assert 30 <= min(xs) <= 45 and 320 <= max(xs) <= 336
    assert 18 <= min(ys) <= 32 and max(ys) >= 390  # no edge at the bottom: the frame's border
    mask = roi.mask((400, 360))
    assert not mask[:, :30].any() and not mask[:18].any() and mask[200, 180]


def test_recoater_streaks_across_the_plate_do_not_cut_it() -> None:
    # streaks run across the whole plate, in the outer quarters as in the middle; the walls still bound it
    img = _chamber()
    for row, level in ((70, 0.4), (150, 0.42), (230, 0.4), (330, 0.43)):
        img[row : row + 2, 30:-24] = level
    roi = propose_roi([img])
    ys = [p[1] for p in roi.points]
    xs = [p[0] for p in roi.points]
    assert 18 <= min(ys) <= 32 and max(ys) >= 390  # no cut at row 70 nor at row 330
    assert 30 <= min(xs) <= 45 and 320 <= max(xs) <= 336
    # without the walls and rail, the streaks alone leave the whole frame
    plain = np.full((400, 360), 0.5, np.float32) + 0.02 * np.random.default_rng(2).normal(size=(400, 360))
    for row in (60, 200, 340):
        plain[row : row + 2] = 0.4
    assert propose_roi([plain.astype(np.float32)]).mask((400, 360)).mean() > 0.97


def test_a_plain_frame_keeps_the_whole_frame() -> None:
    roi = propose_roi([np.full((100, 120), 0.5, np.float32)])
    assert roi.mask((100, 120)).mean() > 0.99


def test_roi_polygons_are_validated() -> None:
    with pytest.raises(ValueError, match="at least 3 points"):
        Roi.from_points([[0, 0], [1, 1]], "config")
    with pytest.raises(ValueError, match="finite"):
        Roi.from_points([[0, 0], [1, float("nan")], [2, 2]], "config")
    m = polygon_mask((10, 10), [(2, 2), (8, 2), (8, 8), (2, 8)])
    assert m.sum() == 36 and m[2, 2] and not m[8, 8]


def test_flat_field_removes_the_cameras_lighting() -> None:
    rng = np.random.default_rng(2)
    h, w = 256, 256
    yy, xx = np.mgrid[0:h, 0:w] / 256.0
    light = (0.6 + 0.5 * xx - 0.2 * yy).astype(np.float32)
    powder = (0.5 + 0.01 * rng.normal(size=(h, w))).astype(np.float32)
    frame = powder * light
    illum = illumination(frame)  # from a frame of plain powder
    later = powder * light
    later[100:140, 100:140] *= 0.6  # a dark part appears on a later layer
    flat = flat_field(later, illum)
    outside = np.ones((h, w), bool)
    outside[90:150, 90:150] = False
    assert float(later[outside].std()) > 0.07
    assert float(flat[outside].std()) < 0.03  # the gradient is gone
    assert float(flat[110:130, 110:130].mean()) < 0.8 * float(flat[outside].mean())  # the part is not


def test_illumination_uses_only_the_weighted_pixels() -> None:
    frame = np.full((128, 128), 0.5, np.float32)
    frame[40:90, 40:90] = 0.9  # a bright part, not lighting
    weight = np.ones_like(frame, bool)
    weight[36:94, 36:94] = False
    illum = illumination(frame, weight)
    assert abs(float(illum[64, 64]) - 0.5) < 0.05


def test_partial_labels_ask_only_what_is_known() -> None:
    import torch

    from segmentation.classes import CLASS_LOSS_WEIGHTS as _CLASS_WEIGHTS
    from segmentation.train import partial_label_loss

    w = torch.tensor(_CLASS_WEIGHTS)
    y = torch.full((1, 4, 4), NO_DEFECT, dtype=torch.int64)
    powder_or_part = torch.zeros(1, 5, 4, 4)
    powder_or_part[:, 0] = 3.0
    powder_or_part[:, 1] = 3.0  # unsure between powder and part, sure it is no defect
    defect = torch.zeros(1, 5, 4, 4)
    defect[:, 2] = 6.0
    assert float(partial_label_loss(powder_or_part, y, w)) < float(partial_label_loss(defect, y, w))
    # unlabelled pixels change nothing
    y2 = torch.full((1, 4, 4), UNLABELLED, dtype=torch.int64)
    y2[0, 0, 0] = 2
    y3 = y2.clone()
    y3[0, 1:, :] = UNLABELLED
    logits = torch.randn(1, 5, 4, 4, generator=torch.Generator().manual_seed(0))
    assert float(partial_label_loss(logits, y2, w)) == pytest.approx(float(partial_label_loss(logits, y3, w)))


@pytest.mark.slow
def test_the_out_of_distribution_score_is_calibrated_and_exported(tiny_checkpoint: Path, tmp_path: Path) -> None:
    """Mechanics only (an untrained network's features say little; the shipped model's are tested in
    tests/integration/test_shipped_model.py): statistics stored in the weights, the same score from
    both engines, calibration frames under the threshold, NaN for an uncalibrated model."""
    from segmentation.inference import Segmenter
    from segmentation.ood import calibrate
    from segmentation.preprocess import to_gray_float
    from segmentation.simulator import simulate_dataset

    frames = [to_gray_float(la.image) for la in simulate_dataset(31, 12, 128, 128)]
    model = tmp_path / "m.pt"
    summary = calibrate(tiny_checkpoint, frames, out=model)
    assert summary["frames"] == 12 and summary["threshold"] > summary["max_score"] > 0
    scores = {}
    for engine in ("torch", "onnx"):
        with Segmenter(model, engine=engine) as seg:
            scores[engine] = [seg.segment(f).ood for f in frames]
            assert seg.model_meta["ood"]["threshold"] == pytest.approx(summary["threshold"])
    assert max(scores["torch"]) < 1.0
    assert np.allclose(scores["torch"], scores["onnx"], rtol=1e-3)
    with Segmenter(tiny_checkpoint, engine="torch") as seg:  # never calibrated: never says so
        out = seg.segment(frames[0])
        assert np.isnan(out.ood) and not out.unfamiliar


def test_warping_stays_only_where_a_part_can_lift() -> None:
    from segmentation.classes import LayerClass as C
    from segmentation.geometry import warping_geometry

    m = np.zeros((100, 120), np.uint8)
    m[20:60, 20:60] = C.PART
    m[50:60, 50:60] = C.WARPING  # a lifted corner of the part: kept
    m[80:90, 90:110] = C.WARPING  # warping on bare powder, no part near: powder
    m[5:15, 80:100] = C.PART
    m[5:15, 82:100] = C.WARPING  # a small part painted warping almost edge to edge: a part
    out = warping_geometry(m)
    assert (out[50:60, 50:60] == C.WARPING).all()
    assert (out[80:90, 90:110] == C.POWDER).all()
    assert (out[5:15, 80:100] == C.PART).all()
    assert (out == C.PART).sum() == (m == C.PART).sum() + 180
    assert warping_geometry(np.zeros((4, 4), np.uint8)).sum() == 0


def _warping_geometry_whole_frame(mask: np.ndarray) -> np.ndarray:
    """The rule of segmentation.geometry written plainly over the whole frame: the reference the
    boxed implementation must equal."""
    import cv2

    from segmentation.classes import LayerClass as C

    out = mask.copy()
    warp = mask == C.WARPING
    solid = (mask == C.PART) | (mask == C.POROSITY)
    near = cv2.dilate(solid.view(np.uint8), np.ones((7, 7), np.uint8)) > 0
    n, labels = cv2.connectedComponents(warp.view(np.uint8), connectivity=8)
    touching = np.bincount(labels[near & warp], minlength=n) > 0
    touching[0] = True
    out[~touching[labels]] = C.POWDER
    warp = out == C.WARPING
    n, labels = cv2.connectedComponents((warp | solid).view(np.uint8), connectivity=8)
    whole = np.bincount(labels[warp], minlength=n) >= 0.85 * np.bincount(labels.ravel(), minlength=n)
    whole[0] = False
    out[whole[labels] & warp] = C.PART
    return out


@pytest.mark.parametrize("seed", range(12))
def test_warping_geometry_equals_the_rule_over_the_whole_frame(seed: int) -> None:
    """Only the box around the warping is read pixel by pixel: the result is the whole-frame rule's, for
    warping at the frame's edges, objects reaching out of the box, parts painted warping almost whole."""
    import cv2

    from segmentation.classes import LayerClass as C
    from segmentation.geometry import warping_geometry

    rng = np.random.default_rng(seed)
    h, w = rng.integers(40, 300, size=2)
    m = np.zeros((h, w), np.uint8)
    for _ in range(rng.integers(1, 12)):  # parts, some with pores
        y, x = rng.integers(0, h), rng.integers(0, w)
        m[y : y + rng.integers(3, 80), x : x + rng.integers(3, 80)] = C.PART
    m[(rng.random((h, w)) < 0.01) & (m == C.PART)] = C.POROSITY
    blobs = (rng.random((h, w)) < 0.002 * (seed % 4 + 1)).astype(np.uint8)
    blobs = cv2.dilate(blobs, np.ones((int(rng.integers(1, 9)),) * 2, np.uint8)) > 0
    m[blobs] = C.WARPING
    m[rng.random((h, w)) < 0.002] = C.SPATTER
    expected = _warping_geometry_whole_frame(m)
    got = warping_geometry(m)
    assert (m == C.WARPING).any()
    assert got.dtype == np.uint8 and got is not m
    assert np.array_equal(got, expected)
    assert (got[m == C.WARPING] == C.POWDER).any()  # the masks exercise the rule, not only the copy


def test_the_held_out_score_as_the_monitor_judges_masks_outside_the_plate(tiny_checkpoint: Path) -> None:
    """``evaluate_simulated(plate=..., reference_layers=...)`` scores the same layers as the plain score, with
    the plate proposed from each build's first layer (outside it the prediction is powder) and the build's
    lighting removed from its later layers, as the monitor does."""
    from segmentation.evaluate import evaluate_simulated
    from segmentation.inference import Segmenter
    from segmentation.simulator import dataset_layers, simulate_dataset

    layers = simulate_dataset(41, 6, 96, 96)
    again = [b.layer(k) for b, k in dataset_layers(41, 6, 96, 96)]
    assert all(
        np.array_equal(a.image, b.image) and np.array_equal(a.mask, b.mask) for a, b in zip(layers, again, strict=True)
    )
    with Segmenter(tiny_checkpoint, engine="torch") as seg:
        plain = evaluate_simulated(seg, count=6, size=96, seed=41)
        judged = evaluate_simulated(seg, count=6, size=96, seed=41, plate=True, reference_layers=3)
    assert plain.cm.sum() == judged.cm.sum() == 6 * 96 * 96
    assert (plain.cm.sum(axis=1) == judged.cm.sum(axis=1)).all()  # the same truth


class _AllPowder:
    """A segmenter that calls every pixel plain powder: the reference then depends on the frames alone."""

    def segment(self, image: np.ndarray, *, roi: np.ndarray | None = None) -> SimpleNamespace:
        return SimpleNamespace(mask=np.zeros(np.asarray(image).shape[:2], np.uint8))


def test_a_cameras_fixed_lighting_goes_through_the_reference_and_out_again() -> None:
    """``as_the_monitor`` with every frame changed (bench/eval_lighting.py --reference): a camera's lighting is on
    every layer of a build, the first ones too, so the reference taken under it removes it from the later layers."""
    from segmentation.evaluate import as_the_monitor
    from segmentation.preprocess import to_gray_float
    from segmentation.simulator import SimBuild

    build = SimBuild(77, 128, 128, 8)
    seg = cast(Segmenter, _AllPowder())

    def frame(k: int) -> np.ndarray:
        return to_gray_float(build.layer(k).image)

    _, plain, first = as_the_monitor(seg, frame, 8, reference_layers=3)
    assert plain is not None and first == 3
    for name, fn in LIGHTING_TRANSFORMS:
        if not name.startswith(("gradient", "vignetting", "falloff")):
            continue
        change = partial(apply, fn=fn)
        _, lit, first_lit = as_the_monitor(seg, lambda k, change=change: change(frame(k)), 8, reference_layers=3)
        assert lit is not None and first_lit == 3
        gray = to_gray_float(build.layer(5).image)
        changed = change(gray)
        before = float(np.abs(_level(changed) - _level(gray)).mean())
        after = float(np.abs(_level(flat_field(changed, lit)) - _level(flat_field(gray, plain))).mean())
        assert before > 0.05, name
        assert after < 0.25 * before, (name, before, after)


def _level(gray: np.ndarray) -> np.ndarray:
    """A frame relative to its mean: a global gain, which the model's input removes, does not count."""
    return gray / float(gray.mean())
