from __future__ import annotations

import numpy as np
import pytest

from segmentation.metrics import Evaluation, confusion, object_recall, scores
from segmentation.preprocess import local_contrast, model_input, normalize, to_gray_float


@pytest.mark.parametrize(
    ("arr", "expect"),
    [
        (np.full((4, 5), 255, np.uint8), 1.0),
        (np.full((4, 5), 65535, np.uint16), 1.0),
        (np.full((4, 5, 3), 255, np.uint8), 1.0),
        (np.full((4, 5, 4), 0, np.uint8), 0.0),
        (np.full((4, 5, 1), 0.5, np.float32), 0.5),
    ],
)
def test_to_gray_float_scales_every_format(arr: np.ndarray, expect: float) -> None:
    g = to_gray_float(arr)
    assert g.shape == (4, 5) and g.dtype == np.float32
    assert np.allclose(g, expect, atol=1e-6)


def test_to_gray_float_rejects_odd_channels() -> None:
    with pytest.raises(ValueError, match="channel count 2"):
        to_gray_float(np.zeros((4, 4, 2), np.uint8))


def test_normalize_is_scale_invariant_and_floors_flat_frames(rng: np.random.Generator) -> None:
    g = rng.random((32, 32)).astype(np.float32)
    assert np.allclose(normalize(g), normalize(g * 0.5 + 0.2), atol=1e-4)
    flat = np.full((8, 8), 0.3, np.float32) + rng.normal(0, 1e-4, (8, 8)).astype(np.float32)
    assert np.abs(normalize(flat)).max() < 0.1  # noise is not blown up


def test_log_input_does_not_change_with_the_cameras_gain_or_gamma(rng: np.random.Generator) -> None:
    frame = (0.55 + 0.12 * rng.normal(size=(128, 128))).clip(0.05, 0.95).astype(np.float32)
    frame[40:52, 40:52] = 0.12  # a dark pit
    frame[:, :16] = 0.0  # a black chamber wall: no gain or gamma moves it, it must not set the scale
    frame[100:104, 100:104] = 1.0  # a saturated glint
    moved = {}
    for norm in ("log", "linear"):
        base = model_input(frame, 2, norm)
        changed = (frame**1.6, frame**0.6)  # another camera's gamma, both ways
        moved[norm] = max(np.abs(model_input(f.astype(np.float32), 2, norm) - base).mean() for f in changed)
    assert moved["log"] < 0.04
    assert moved["linear"] > 3 * moved["log"]  # the linear input moves several times as much
    gain = np.abs(model_input(frame * 0.6, 2, "log") - model_input(frame, 2, "log")).mean()
    assert gain < 0.02
    flat = np.full((64, 64), 0.3, np.float32) + rng.normal(0, 0.003, (64, 64)).astype(np.float32)
    assert np.abs(model_input(flat, 2, "log")).max() < 2.0  # 1 % noise is not blown up into structure
    with pytest.raises(ValueError, match="'linear' or 'log'"):
        model_input(frame, 2, "rank")


def test_confusion_and_scores() -> None:
    t = np.array([[0, 1], [2, 2]], np.uint8)
    p = np.array([[0, 1], [2, 0]], np.uint8)
    cm = confusion(t, p)
    assert cm[2, 2] == 1 and cm[2, 0] == 1 and cm.sum() == 4
    s = scores(cm)
    assert s[2].iou == pytest.approx(0.5)
    assert s[0].iou == pytest.approx(0.5)
    assert s[1].iou == pytest.approx(1.0)
    assert np.isnan(s[4].iou)


def test_object_recall_counts_half_covered_objects() -> None:
    t = np.zeros((10, 10), np.uint8)
    t[1:3, 1:3] = 2  # 4 px, prediction covers 2: found
    t[6:9, 6:9] = 2  # 9 px, prediction covers 4: missed
    p = np.zeros_like(t)
    p[1:3, 1] = 2
    p[6:8, 6:8] = 2
    assert object_recall(t, p) == (1, 2)


def test_evaluation_accumulates() -> None:
    ev = Evaluation.empty()
    t = np.zeros((4, 4), np.uint8)
    t[1, 1] = 2
    ev.add(t, t)
    ev.add(t, np.zeros_like(t))
    d = ev.to_dict()
    assert d["frames"] == 2 and d["pores_found"] == 1 and d["pores_total"] == 2
    with pytest.raises(ValueError, match="shape"):
        ev.add(t, np.zeros((3, 3), np.uint8))


def test_local_contrast_removes_broad_lighting(rng: np.random.Generator) -> None:
    texture = (0.5 + 0.05 * rng.normal(size=(96, 96))).astype(np.float32)
    ramp = np.linspace(0.6, 1.4, 96, dtype=np.float32)[None, :]
    a, b = local_contrast(texture), local_contrast(texture * ramp)
    centre = (slice(20, 76), slice(20, 76))
    assert np.corrcoef(a[centre].ravel(), b[centre].ravel())[0, 1] > 0.95
    assert np.abs(a).max() <= 5.0


def test_model_input_channels() -> None:
    g = np.random.default_rng(0).random((16, 24)).astype(np.float32)
    assert model_input(g, 1).shape == (1, 16, 24)
    two = model_input(g, 2)
    assert two.shape == (2, 16, 24) and np.allclose(two[0], normalize(g))
    with pytest.raises(ValueError, match="3 input channels"):
        model_input(g, 3)


def test_a_colour_frame_gives_the_same_numbers_in_every_channel_order() -> None:
    """Live frames arrive as BGR, files are read as RGB, records keep gray: the model sees one input."""
    from segmentation.preprocess import to_gray, to_gray_float

    rng = np.random.default_rng(4)
    rgb = rng.integers(0, 256, (16, 20, 3), dtype=np.uint8)
    rgb[..., 0] = 250  # red and blue differ a lot
    rgb[..., 2] = 10
    bgr = np.ascontiguousarray(rgb[..., ::-1])
    gray = to_gray(bgr, order="bgr")
    assert gray.dtype == np.uint8
    assert np.array_equal(gray, to_gray(rgb))
    assert np.array_equal(to_gray_float(gray), to_gray_float(rgb))  # stored gray == file read as RGB
    assert not np.array_equal(to_gray(bgr), gray)  # reading BGR as RGB would change the numbers
    deep = (rgb.astype(np.uint16) * 257).astype(np.uint16)
    assert to_gray(deep).dtype == np.uint16
