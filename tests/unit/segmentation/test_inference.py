"""Engines, tiling and input handling of the Segmenter."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

from segmentation.errors import ImageError, ModelError
from segmentation.inference import Segmenter, _starts, create_engine
from segmentation.model import ARCHITECTURES, create_model
from segmentation.simulator import SimBuild


@pytest.fixture(scope="module")
def frame() -> np.ndarray:
    return SimBuild(5151, 320, 288, 20).layer(15).image


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_every_architecture_maps_image_to_class_logits(arch: str) -> None:
    import torch

    model = create_model(arch).eval()
    s = model.spec.stride
    with torch.inference_mode():
        out = model(torch.zeros(1, model.spec.in_channels, 2 * s, 3 * s))
    assert out.shape == (1, 5, 2 * s, 3 * s)


def test_unknown_architecture_lists_valid_names() -> None:
    with pytest.raises(ModelError, match=r"valid names: .*unet-mnv3s-d5"):
        create_model("unet-nope")


def test_unknown_engine_lists_valid_names(tiny_checkpoint: Path) -> None:
    with pytest.raises(ModelError, match="valid engines: auto, onnx, openvino, torch"):
        create_engine("tensorrt", tiny_checkpoint)
    with pytest.raises(ModelError, match="valid engines"):
        Segmenter(tiny_checkpoint, engine="tflite")


def test_missing_model_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="model file not found"):
        Segmenter(tmp_path / "none.pt", engine="torch").start()
    with pytest.raises(ModelError, match="model file not found"):
        Segmenter(tmp_path / "none.pt", engine="onnx").start()


def test_engines_agree(tiny_checkpoint: Path, frame: np.ndarray, tmp_path: Path) -> None:
    model = tmp_path / "m.pt"
    model.write_bytes(tiny_checkpoint.read_bytes())
    with Segmenter(model, engine="torch") as a, Segmenter(model, engine="onnx") as b:
        pa, pb = a.segment(frame).probs, b.segment(frame).probs
    assert np.abs(pa - pb).max() < 1e-3
    assert (tmp_path / "m.onnx").is_file()  # exported beside the checkpoint


def test_the_exported_decoder_upsamples_by_a_constant_factor(tiny_checkpoint: Path, tmp_path: Path) -> None:
    """The graph's upsampling has constant scales (ONNX Runtime keeps its blocked layout through it) and
    gives the network's values at sizes that are not multiples of its stride, and across tiles."""
    import onnx

    model = tmp_path / "m.pt"
    model.write_bytes(tiny_checkpoint.read_bytes())
    rng = np.random.default_rng(3)
    with (
        Segmenter(model, engine="torch", tile=256, overlap=32) as a,
        Segmenter(model, engine="onnx", tile=256, overlap=32) as b,
    ):
        for shape in ((97, 61), (130, 257), (300, 420)):  # the last one is tiled
            x = rng.random(shape).astype(np.float32)
            assert np.abs(a.segment(x).probs - b.segment(x).probs).max() < 1e-3, shape
    graph = onnx.load(str(tmp_path / "m.onnx")).graph
    constants = {init.name for init in graph.initializer} | {
        out for node in graph.node if node.op_type == "Constant" for out in node.output
    }
    resizes = [node for node in graph.node if node.op_type == "Resize"]
    assert resizes
    for node in resizes:
        scales, sizes = node.input[2], node.input[3] if len(node.input) > 3 else ""
        assert scales in constants and not sizes, node.name


def test_the_input_normalisation_travels_with_the_model(
    tiny_checkpoint: Path, frame: np.ndarray, tmp_path: Path
) -> None:
    """A checkpoint says how its input is normalised; both engines follow it, and a checkpoint made
    before the log input existed keeps the linear one."""
    import torch

    from segmentation.model import load_checkpoint, save_checkpoint

    model, meta = load_checkpoint(tiny_checkpoint)
    assert meta["spec"]["input_norm"] == "linear"
    old = torch.load(tiny_checkpoint, weights_only=True)
    del old["meta"]["spec"]["input_norm"]
    torch.save(old, tmp_path / "old.pt")
    assert create_engine("torch", tmp_path / "old.pt").input_norm == "linear"
    old["meta"]["spec"]["input_norm"] = "rank"  # a normalisation this code does not know: the model is refused
    torch.save(old, tmp_path / "odd.pt")
    with pytest.raises(ModelError, match="input_norm='rank'"):
        create_engine("torch", tmp_path / "odd.pt")
    save_checkpoint(tmp_path / "log.pt", model, "unet-mnv3s-d5-lc8-log")
    for name in ("torch", "onnx"):
        assert create_engine(name, tmp_path / "log.pt").input_norm == "log"
    darker = np.rint(255 * (frame.astype(np.float32) / 255) ** 1.6).astype(np.uint8)  # another camera's gamma
    probs, moved = {}, {}
    for path in (tiny_checkpoint, tmp_path / "log.pt"):
        with Segmenter(path, engine="onnx") as seg:
            probs[path.name] = seg.segment(frame).probs
            moved[path.name] = np.abs(seg.segment(darker).probs - probs[path.name]).mean()
    assert np.abs(probs["log.pt"] - probs["tiny.pt"]).mean() > 1e-3  # the same weights see another input
    assert moved["log.pt"] < moved["tiny.pt"]  # which moves less under a gamma, even untrained


def test_onnx_is_reexported_when_the_checkpoint_changes(tiny_checkpoint: Path, tmp_path: Path) -> None:
    import torch

    from segmentation.model import DEFAULT_ARCH, save_checkpoint

    model = tmp_path / "m.pt"
    model.write_bytes(tiny_checkpoint.read_bytes())
    x = np.random.default_rng(0).random((64, 64)).astype(np.float32)
    with Segmenter(model, engine="onnx") as s:
        first = s.segment(x).probs
    torch.manual_seed(99)
    save_checkpoint(model, create_model(DEFAULT_ARCH).eval(), DEFAULT_ARCH)
    with Segmenter(model, engine="onnx") as s, Segmenter(model, engine="torch") as t:
        second = s.segment(x).probs
        assert np.abs(second - t.segment(x).probs).max() < 1e-3
    assert np.abs(first - second).max() > 1e-3


@pytest.mark.parametrize(
    "convert",
    [
        lambda im: im,
        lambda im: im.astype(np.uint16) * 257,
        lambda im: np.repeat(im[..., None], 3, axis=2),
        lambda im: np.repeat(im[..., None], 4, axis=2),
        lambda im: im[:97, :61],
        lambda im: im[:5, :7],
    ],
    ids=["gray8", "gray16", "rgb", "rgba", "odd-size", "tiny"],
)
def test_any_size_and_format_gives_a_same_size_mask(tiny_checkpoint: Path, frame: np.ndarray, convert) -> None:  # type: ignore[no-untyped-def]
    gray = frame if frame.ndim == 2 else frame[..., 0]
    gray = (gray / 257).astype(np.uint8) if gray.dtype == np.uint16 else gray
    img = convert(gray)
    with Segmenter(tiny_checkpoint, engine="torch") as s:
        out = s.segment(img)
    assert out.mask.shape == img.shape[:2] and out.mask.dtype == np.uint8
    assert out.probs.shape == (5, *img.shape[:2])
    assert np.allclose(out.probs.sum(0), 1, atol=1e-4)


def test_zero_size_and_oversized_frames_are_refused(tiny_checkpoint: Path) -> None:
    with Segmenter(tiny_checkpoint, engine="torch", max_pixels=1000) as s:
        with pytest.raises(ImageError, match="zero size"):
            s.segment(np.zeros((0, 10), np.uint8))
        with pytest.raises(ImageError, match="over the limit"):
            s.segment(np.zeros((40, 40), np.uint8))


def test_tile_origins_cover_the_frame_with_overlap() -> None:
    assert _starts(512, 1024, 128) == [0]
    st = _starts(2048, 1024, 128)
    assert st[0] == 0 and st[-1] == 1024
    assert all(b - a <= 1024 - 128 for a, b in itertools.pairwise(st))


def test_bad_tiling_arguments() -> None:
    with pytest.raises(ValueError, match="more than twice overlap"):
        Segmenter(tile=256, overlap=128)


def test_channel_loop_argmax_matches_numpy(rng: np.random.Generator) -> None:
    from segmentation.inference import _argmax

    p = rng.random((5, 33, 47)).astype(np.float32)
    p[:, 0, :5] = 0.5  # ties resolve to the first channel, as np.argmax does
    assert np.array_equal(_argmax(p), p.argmax(0).astype(np.uint8))


def test_exported_graph_is_softmax_and_score_of_the_network(tiny_checkpoint: Path) -> None:
    import torch

    from segmentation.model import load_checkpoint
    from segmentation.onnx_files import exportable

    model, _ = load_checkpoint(tiny_checkpoint)
    x = torch.randn(2, model.spec.in_channels, 64, 64)
    with torch.inference_mode():
        probs, score = exportable(model)(x)
        logits, ref_score = model.forward_with_ood(x)
    assert torch.allclose(probs, logits.softmax(1), atol=1e-6)
    assert torch.equal(score, ref_score) and score.shape == (2,)


def test_the_shipped_onnx_is_the_export_of_the_shipped_checkpoint() -> None:
    """Else the first use re-exports it into the installed package (which may be read-only)."""
    from segmentation.inference import DEFAULT_MODEL
    from segmentation.model import file_sha256
    from segmentation.onnx_files import _ONNX_FORMAT, _onnx_source_sha

    assert _onnx_source_sha(DEFAULT_MODEL.with_suffix(".onnx")) == f"{file_sha256(DEFAULT_MODEL)}/{_ONNX_FORMAT}"


def test_openvino_runs_the_exported_graph_as_onnx_runtime_does(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The OpenVINO engine in f32 gives ONNX Runtime's probabilities on an odd-sized frame (padded to the stride);
    in bf16, only after its classes agreed with f32's on the check layers, which it says."""
    pytest.importorskip("openvino")
    from segmentation import openvino_engine
    from segmentation.inference import DEFAULT_MODEL, Segmenter, create_engine, resolve_engine

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    frame = (np.random.default_rng(4).random((301, 417)) * 255).astype(np.uint8)
    with (
        Segmenter(DEFAULT_MODEL, engine="onnx") as ort,
        Segmenter(DEFAULT_MODEL, engine="openvino", precision="f32") as ov,
    ):
        a, b = ort.segment(frame), ov.segment(frame)
        assert "openvino f32" in ov.describe()
    assert np.abs(a.probs - b.probs).max() < 1e-3 and (a.mask == b.mask).mean() > 0.999
    engine = create_engine("openvino", DEFAULT_MODEL, precision="bf16")
    assert engine.agreement is not None and engine.agreement.layers == openvino_engine.CHECK_LAYERS  # type: ignore[attr-defined]
    assert engine.precision == ("bf16" if engine.agreement.admitted else "f32")  # type: ignore[attr-defined]
    assert list((tmp_path / "cache" / "layerwatch").glob("precision-*.json"))  # checked once, kept
    engine.close()
    # a check that refuses: f32, and "auto" takes ONNX Runtime after all
    monkeypatch.setattr(openvino_engine, "MIN_AGREEMENT", 1.01)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache2"))
    refused = create_engine("openvino", DEFAULT_MODEL, precision="bf16")
    assert refused.precision == "f32" and "refused" in refused.describe()  # type: ignore[attr-defined]
    refused.close()
    from segmentation import hardware

    if hardware.cpu_info().bf16:
        assert create_engine("auto", DEFAULT_MODEL).name == "onnx"
    monkeypatch.setattr(hardware, "cpu_info", lambda: hardware.parse_cpuinfo("flags\t: avx2\n"))
    assert resolve_engine("auto") == "onnx" and resolve_engine("openvino") == "openvino"


def test_agreement_admits_only_close_classes() -> None:
    from segmentation.openvino_engine import Agreement

    assert Agreement("bf16", 0.9996, {"porosity": 0.99, "spatter": 0.985}, 4).admitted
    assert not Agreement("bf16", 0.998, {"porosity": 0.99}, 4).admitted
    assert not Agreement("bf16", 0.9999, {"warping": 0.97}, 4).admitted
    assert "refused" in Agreement("bf16", 0.99, {}, 4).describe()
