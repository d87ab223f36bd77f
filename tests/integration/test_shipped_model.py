"""The weights in data/models are real: they segment freshly simulated layers, agree across
engines and tilings, and drive the demo."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from monitor.cli import main
from segmentation.evaluate import evaluate_simulated, read_mask, trained_features
from segmentation.inference import DEFAULT_MODEL, Segmenter
from segmentation.metrics import Evaluation, scores
from segmentation.simulator import SimBuild

pytestmark = pytest.mark.integration

# Seed stream used only by this test: not training (1, 2), not the held-out benchmark (7000001).
FRESH_STREAM = 9_000_001


def _looks(seg: Segmenter) -> frozenset[str]:
    """The simulator's looks the shipped model was trained with: it is held to its floors on those (newer looks
    are measured in docs/benchmarks.md until a model trained on them ships)."""
    return trained_features(seg.model_meta)


@pytest.fixture(scope="module")
def onnx_seg() -> Segmenter:
    seg = Segmenter(DEFAULT_MODEL, engine="onnx").start()
    yield seg  # type: ignore[misc]
    seg.close()


def test_shipped_weights_are_small_and_described() -> None:
    assert DEFAULT_MODEL.is_file()
    assert DEFAULT_MODEL.stat().st_size < 20 * 1024 * 1024
    card = (DEFAULT_MODEL.parent / "MODEL_CARD.md").read_text()
    assert "layerwatch train" in card and "IoU" in card


@pytest.mark.slow
def test_shipped_weights_reach_minimum_iou_on_fresh_layers(onnx_seg: Segmenter) -> None:
    ev = evaluate_simulated(onnx_seg, count=8, size=512, seed=FRESH_STREAM)  # on the looks it was trained with
    iou = {s.name: s.iou for s in scores(ev.cm)}
    # floors below the measured figures (MODEL_CARD.md: held-out part 0.88, porosity 0.75, spatter 0.56,
    # warping 0.59 on 64 layers); an untrained network scores about 0 here
    assert iou["part"] >= 0.8, iou
    assert iou["porosity"] >= 0.6, iou
    assert iou["spatter"] >= 0.4, iou
    assert iou["warping"] >= 0.4, iou
    assert ev.pore_recall >= 0.7


def test_engines_agree_on_the_shipped_model(onnx_seg: Segmenter) -> None:
    frame = SimBuild(FRESH_STREAM + 1, 384, 448, 20).layer(16).image
    with Segmenter(DEFAULT_MODEL, engine="torch") as torch_seg:
        a = torch_seg.segment(frame).probs
    b = onnx_seg.segment(frame).probs
    assert np.abs(a - b).max() < 1e-3


@pytest.mark.slow
def test_tiled_prediction_agrees_with_whole_frame(onnx_seg: Segmenter) -> None:
    layer = SimBuild(FRESH_STREAM + 2, 1024, 1024, 20, features=_looks(onnx_seg)).layer(16)
    with (
        Segmenter(DEFAULT_MODEL, engine="onnx", tile=1024) as whole,
        Segmenter(DEFAULT_MODEL, engine="onnx", tile=512, overlap=128) as tiled,
    ):
        w = whole.segment(layer.image)
        t = tiled.segment(layer.image)
    agree = float((w.mask == t.mask).mean())
    # Not bit-identical by design: MobileNetV3's squeeze-excitation blocks pool over the whole
    # input, so a tile sees slightly different channel weights than the frame (measured 99.6 %
    # agreement; docs/benchmarks.md).
    assert agree >= 0.99, agree
    assert float(np.abs(w.probs - t.probs).mean()) < 0.01
    # Defects in particular: tiling must neither erase nor invent them. Judged against the truth, not
    # against the whole-frame mask: on this layer the whole frame extends a real warp into the powder
    # beside it (warping IoU 0.29 whole, 0.90 tiled), a borderline call the pooled context tips.
    for c in (2, 3, 4):
        truth = layer.mask == c
        iou = {}
        for name, mask in (("whole", w.mask), ("tiled", t.mask)):
            pred = mask == c
            iou[name] = np.logical_and(pred, truth).sum() / max(1, np.logical_or(pred, truth).sum())
        assert iou["tiled"] >= iou["whole"] - 0.05, (c, iou)
        assert iou["tiled"] >= 0.5, (c, iou)


SAMPLE_LAYERS = Path(__file__).resolve().parents[2] / "data" / "samples" / "layers"


@pytest.mark.slow
def test_segment_command_on_every_sample(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["segment", str(SAMPLE_LAYERS), "--out", str(tmp_path), "--overlay"]) == 0
    out = capsys.readouterr().out
    samples = sorted(SAMPLE_LAYERS.glob("*.png"))
    assert f"segmented {len(samples)} image(s)" in out
    assert len(samples) >= 5
    ev = Evaluation.empty()
    for s in samples:
        assert (tmp_path / s.name).is_file()
        mask = read_mask(tmp_path / s.name)
        assert (tmp_path / "overlays" / s.name).is_file()
        ev.add(read_mask(SAMPLE_LAYERS.parent / "masks" / s.name), mask)
    iou = {x.name: x.iou for x in scores(ev.cm)}
    assert iou["part"] >= 0.85 and iou["porosity"] >= 0.5, iou


def test_the_shipped_model_knows_frames_unlike_its_training(onnx_seg: Segmenter) -> None:
    """Layers of fresh simulated builds are familiar; patterns no camera of a plate shows are not."""
    assert onnx_seg.model_meta["ood"]["threshold"] > 0
    looks = _looks(onnx_seg)
    familiar = [
        onnx_seg.segment(SimBuild(FRESH_STREAM + 10 + i, 384, 384, 20, features=looks).layer(15).image).ood
        for i in range(4)
    ]
    assert max(familiar) < 1.0, familiar
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[0:512, 0:512] / 512.0
    rings = (0.5 + 0.5 * np.sin(40 * np.hypot(xx - 0.5, yy - 0.5))).astype(np.float32)
    checker = np.kron(rng.integers(0, 2, (16, 16)), np.ones((32, 32))).astype(np.float32)
    for strange in (rings, checker):
        out = onnx_seg.segment(strange)
        assert out.unfamiliar, out.ood
