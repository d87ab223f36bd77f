"""A tiny training run: checkpoints, history, resume, and a loadable model."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from segmentation.inference import Segmenter
from segmentation.model import ARCHITECTURES, DEFAULT_ARCH
from segmentation.train import (
    Anchor,
    BatchStream,
    LabelledSet,
    TrainConfig,
    _Sources,
    campaign_lr,
    distill_loss,
    partial_label_loss,
    resolve_precision,
    train,
)

REAL = Path(__file__).resolve().parents[3] / "data" / "realdata"


@pytest.mark.slow
def test_train_writes_checkpoints_and_resumes(tmp_path: Path) -> None:
    # every source of a real run, each small: simulated, scenario builds, two real frames, composites over them
    real = tmp_path / "real"
    for sub in ("images", "masks"):
        (real / sub).mkdir(parents=True)
    for name in ("fdm_pores-sample_1_raw", "fdm_pores-sample_2_raw"):
        shutil.copy(REAL / "images" / f"{name}.jpg", real / "images")
        shutil.copy(REAL / "masks" / f"{name}.png", real / "masks")
    cfg = TrainConfig(
        out=tmp_path / "run", train_layers=8, val_layers=4, frame=96, crop=64, batch=2, epochs=3, steps_per_epoch=2,
        workers=1, scenario_layers=4, composite_layers=4, real_dir=real,
    )  # fmt: skip
    tmp_path = cfg.out
    lines: list[str] = []
    # stop after the first epoch to simulate an interrupted run
    first = train(replace(cfg, max_minutes=1e-9), echo=lines.append)
    assert len(first["history"]) == 1
    assert (tmp_path / "last.pt").is_file() and (tmp_path / "best.pt").is_file()
    assert any(ln.startswith("epoch 1: loss") and "porosity" in ln for ln in lines)

    result = train(cfg, resume=True, echo=lines.append)
    assert any("resumed" in ln and "epoch 1" in ln for ln in lines)
    assert [row["epoch"] for row in result["history"]] == [1, 2, 3]
    history = json.loads((tmp_path / "history.json").read_text())
    assert len(history) == 3 and set(history[0]["iou"]) == {"powder", "part", "porosity", "spatter", "warping"}

    with Segmenter(tmp_path / "best.pt", engine="torch") as seg:
        out = seg.segment(np.zeros((64, 80), np.uint8))
        assert out.mask.shape == (64, 80)
        assert seg.model_meta["train_config"]["epochs"] == "3"

    # the same run with the lighting-consistency loss: both views go through the network
    paired = train(replace(cfg, out=tmp_path.parent / "paired", epochs=1, consistency=1.0), echo=lines.append)
    assert len(paired["history"]) == 1 and np.isfinite(paired["history"][0]["loss"])


def test_bad_config_values_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="arch='nope'"):
        TrainConfig(out=tmp_path, arch="nope")
    with pytest.raises(ValueError, match="crop=600 is larger than frame=512"):
        TrainConfig(out=tmp_path, crop=600)
    with pytest.raises(ValueError, match="epochs=0"):
        TrainConfig(out=tmp_path, epochs=0)
    with pytest.raises(ValueError, match=r"anchor=1.0: .* with init"):
        TrainConfig(out=tmp_path, anchor=1.0)


def test_a_fine_tunes_class_weights_apply_to_its_real_crops_and_the_simulated_ones_keep_the_base_weights() -> None:
    import torch

    torch.manual_seed(0)
    logits, y = torch.randn(2, 5, 8, 8), torch.randint(0, 5, (2, 8, 8))
    base, own = torch.tensor([1.0, 1.0, 2.0, 2.0, 2.0]), torch.tensor([1.0, 1.0, 4.0, 2.0, 3.0])
    both = torch.stack([base, own])
    sim_only, real_only = torch.tensor([False, False]), torch.tensor([True, True])
    assert torch.allclose(partial_label_loss(logits, y, both, sim_only), partial_label_loss(logits, y, base))
    assert torch.allclose(partial_label_loss(logits, y, both, real_only), partial_label_loss(logits, y, own))
    mixed = partial_label_loss(logits, y, both, torch.tensor([False, True]))
    assert not torch.allclose(mixed, partial_label_loss(logits, y, base))


def test_distillation_is_nothing_where_the_student_agrees_with_its_teacher_and_more_where_not() -> None:
    import torch

    from segmentation.model import create_model

    torch.manual_seed(0)
    teacher = create_model(DEFAULT_ARCH).eval()
    x = torch.randn(2, ARCHITECTURES[DEFAULT_ARCH].in_channels, 64, 64)
    with torch.no_grad():
        same = teacher(x)
    assert float(distill_loss(same, teacher, x, "fp32")) < 1e-5
    assert float(distill_loss(same + torch.randn_like(same), teacher, x, "fp32")) > 0.1


def test_the_anchor_pulls_each_group_back_towards_its_start_at_its_own_learning_rate() -> None:
    import torch

    fast, slow = torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(2))
    opt = torch.optim.SGD([{"params": [fast], "lr": 0.1}, {"params": [slow], "lr": 0.01}], lr=0.1)
    anchor = Anchor(opt, strength=2.0)
    with torch.no_grad():
        fast.add_(1.0)
        slow.add_(1.0)
    anchor.pull(opt)
    # each moves lr * strength of the way back: 0.2 and 0.02
    assert torch.allclose(fast, torch.full((3,), 0.8)) and torch.allclose(slow, torch.full((2,), 0.98))
    anchor.strength = 100.0  # never past the start
    anchor.pull(opt)
    assert torch.equal(fast, torch.zeros(3))


def test_consistency_sees_each_crop_under_two_lightings_and_pulls_them_together(tmp_path: Path) -> None:
    import torch

    from segmentation.model import ARCHITECTURES
    from segmentation.train import _sample, consistency_loss

    spec = ARCHITECTURES["unet-mnv3s-d5-lc8"]
    gray = np.full((96, 96), 0.4, np.float32)
    gray[10:30, 50:70] = 0.9  # a bright part off-centre: the two views must be cut and turned alike
    mask = (gray > 0.5).astype(np.uint8)
    x, y = _sample(np.random.default_rng(3), gray, mask, 64, spec, 1.0, paired=True)
    assert x.shape == (4, 64, 64) and y.shape == (64, 64)
    one, two = x[0], x[2]
    assert not np.allclose(one, two)  # another lighting
    assert np.corrcoef(one.ravel(), two.ravel())[0, 1] > 0.8  # of the same crop
    assert np.corrcoef(one.ravel(), y.ravel().astype(np.float32))[0, 1] > 0.8  # and the label goes with it

    # tone only: the second view is the first under another tone curve, nothing moved in space
    g = np.random.default_rng(4).random((96, 96)).astype(np.float32) * 0.5 + 0.25
    x, _ = _sample(np.random.default_rng(3), g, mask, 64, spec, 1.0, paired=True, tone=True)
    from segmentation.augment import random_tone

    for seed in range(20):
        toned = random_tone(g, np.random.default_rng(seed))
        order = np.argsort(g.ravel(), kind="stable")
        assert (np.diff(toned.ravel()[order]) >= -1e-6).all()  # a monotone curve: the pixels keep their order
        assert toned.min() >= 0 and toned.max() <= 1
    assert not np.allclose(x[0], x[2]) and np.corrcoef(x[0].ravel(), x[2].ravel())[0, 1] > 0.9

    a = torch.randn(2, 5, 8, 8)
    assert float(consistency_loss(a, a)) == pytest.approx(0.0, abs=1e-6)
    b = a + torch.randn(2, 5, 8, 8)
    assert float(consistency_loss(a, b)) > 0.01
    assert float(consistency_loss(a, b)) == pytest.approx(float(consistency_loss(b, a)), rel=1e-5)
    with pytest.raises(ValueError, match="consistency=-1"):
        TrainConfig(out=tmp_path, consistency=-1)
    with pytest.raises(ValueError, match="consistency_tone needs a consistency weight"):
        TrainConfig(out=tmp_path, consistency_tone=True)


def test_a_training_set_is_its_chunks_rendered_again() -> None:
    """bench/eval_fit.py scores the model on the layers it was trained on by rendering ``set_chunks`` again:
    they must be exactly the frames ``build_set`` trains on."""
    from segmentation.preprocess import to_gray_float
    from segmentation.simulator import simulate_dataset
    from segmentation.train import TRAIN_SEED_STREAM, build_set, set_chunks

    x, y = build_set(TRAIN_SEED_STREAM, 20, 64, 1, None)
    chunks = set_chunks(TRAIN_SEED_STREAM, 20)
    assert chunks == [(1000, 16), (1001, 4)]
    again = [la for seed, n in chunks for la in simulate_dataset(seed, n, 64, 64)]
    assert len(again) == len(x) == 20
    for gray, mask, layer in zip(x, y, again, strict=True):
        assert np.array_equal(gray, to_gray_float(layer.image).astype(np.float16))
        assert np.array_equal(mask, layer.mask)


def test_auto_precision_follows_the_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    from segmentation import hardware

    for flags, want in (("avx2 avx512f avx512_bf16", "bf16"), ("avx2 amx_bf16", "bf16"), ("avx2 avx512f", "fp32")):
        monkeypatch.setattr(hardware, "cpu_info", lambda f=flags: hardware.parse_cpuinfo(f"flags\t: {f}\n"))
        assert resolve_precision("auto") == want
    assert resolve_precision("fp32") == "fp32" and resolve_precision("bf16") == "bf16"
    with pytest.raises(ValueError, match="precision='fp16'"):
        TrainConfig(out=Path("x"), precision="fp16")


def test_the_batch_thread_makes_the_inline_batches_in_order(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    sim = (rng.random((6, 96, 96)).astype(np.float16), rng.integers(0, 5, (6, 96, 96)).astype(np.uint8))
    empty = (np.zeros((0, 96, 96), np.float16), np.zeros((0, 96, 96), np.uint8))
    src = _Sources(sim, empty, LabelledSet([], [], []))
    cfg = TrainConfig(out=tmp_path, frame=96, crop=64, batch=3, epochs=3, steps_per_epoch=2, loader="inline")
    spec = ARCHITECTURES[DEFAULT_ARCH]
    with BatchStream(src, cfg, spec, epoch0=1) as inline:
        want = [inline.next() for _ in range(4)]
    with BatchStream(src, replace(cfg, loader="thread"), spec, epoch0=1) as threaded:
        got = [threaded.next() for _ in range(4)]
        with pytest.raises(StopIteration):  # epochs 1 and 2 of 3: four batches, then the end
            threaded.next()
    for (xa, ya, ra), (xb, yb, rb) in zip(want, got, strict=True):
        assert np.array_equal(xa, xb) and np.array_equal(ya, yb) and yb.dtype == np.uint8
        assert not ra.any() and not rb.any() and rb.shape == (3,)  # no real frames: every crop simulated


def test_a_campaign_warms_up_then_follows_a_cosine_over_its_hours() -> None:
    hours = 20.0
    lrs = [campaign_lr(1e-3, m, hours) for m in (0.0, 6.0, 12.0, 600.0, 1200.0, 5000.0)]
    assert lrs[0] == 0.0 and lrs[1] == pytest.approx(0.5e-3, rel=0.01) and lrs[2] == pytest.approx(1e-3, rel=0.01)
    assert lrs[3] == pytest.approx(0.51e-3, rel=0.01)  # half-way: half the way down to the floor
    assert lrs[4] == lrs[5] == pytest.approx(2e-5)  # the floor, and it stays there


@pytest.mark.slow
def test_a_campaign_resumes_from_a_checkpoint_kept_elsewhere(tmp_path: Path) -> None:
    cfg = TrainConfig(
        out=tmp_path / "a", train_layers=8, val_layers=2, frame=96, crop=64, batch=2, epochs=50, steps_per_epoch=2,
        workers=1, scenario_layers=0, composite_layers=0, real_dir=None, hours=1.0, max_minutes=1e-9,
    )  # fmt: skip
    first = train(cfg, echo=lambda _: None)
    assert len(first["history"]) == 1 and first["history"][0]["lr"] > 0
    kept = tmp_path / "committed.pt"
    shutil.copy(cfg.out / "last.pt", kept)
    import torch

    state = torch.load(kept, map_location="cpu", weights_only=False)
    moments = [t for st in state["opt"]["state"].values() for t in st.values() if torch.is_tensor(t) and t.dim()]
    assert moments and all(t.dtype == torch.bfloat16 for t in moments)  # compact: committed once a session
    lines: list[str] = []
    second = train(replace(cfg, out=tmp_path / "b"), resume=True, echo=lines.append, resume_from=kept)
    assert any(f"resumed from {kept} at epoch 1" in ln for ln in lines)
    assert [row["epoch"] for row in second["history"]] == [1, 2]
