"""The ONNX graph beside a checkpoint: exported when missing or stale (PyTorch, the [train] extra), its
metadata read back, an ONNX Runtime session of it. Both CPU engines (ONNX Runtime in :mod:`segmentation.inference`,
OpenVINO in :mod:`segmentation.openvino_engine`) run these files."""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

from segmentation.errors import ModelError

__all__ = ["current_onnx", "export_onnx", "exportable", "onnx_meta", "onnx_session", "threads_for"]

log = logging.getLogger(__name__)


def threads_for(threads: int | None) -> int:
    return threads if threads is not None else max(1, min(os.cpu_count() or 1, 4))


def current_onnx(model_path: Path, onnx_path: Path | None = None) -> tuple[Path, str]:
    """The ``.onnx`` beside a checkpoint (or ``onnx_path``) and the checkpoint's sha256; exported again (which
    needs PyTorch, the [train] extra) when missing or made from another checkpoint or graph format."""
    from segmentation.model import file_sha256

    if not model_path.is_file():
        raise ModelError(f"{model_path}: model file not found; pass --model PATH or run `layerwatch train`")
    onnx_file = onnx_path or model_path.with_suffix(".onnx")
    sha = file_sha256(model_path)
    if not onnx_file.is_file() or _onnx_source_sha(onnx_file) != f"{sha}/{_ONNX_FORMAT}":
        if importlib.util.find_spec("torch") is None:
            raise ModelError(
                f"{onnx_file} is missing or was exported from another checkpoint, and exporting {model_path} needs "
                "PyTorch: pip install 'layerwatch[train]' (or run `layerwatch export-onnx` where it is installed)"
            )
        log.info("exporting %s to ONNX at %s", model_path, onnx_file)
        export_onnx(model_path, onnx_file)
    return onnx_file, sha


def onnx_meta(onnx_file: Path, sha: str) -> tuple[dict[str, Any], Any]:
    """The checkpoint's metadata kept in an exported graph (``sha256`` set to ``sha``) and its ModelSpec."""
    import onnx

    from segmentation.spec import ModelSpec

    try:
        proto = onnx.load(str(onnx_file), load_external_data=False)
    except Exception as err:  # onnx raises its own untyped errors
        raise ModelError(f"{onnx_file}: not an ONNX graph ({err})") from err
    props = {p.key: p.value for p in proto.metadata_props}
    try:
        meta = json.loads(props.get("layerwatch_meta", "{}"))
        spec = meta.get("spec", {})
        model_spec = ModelSpec(**{**spec, "decoder_channels": tuple(spec["decoder_channels"])})
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise ModelError(f"{onnx_file}: its model description is not valid ({type(err).__name__}: {err})") from err
    meta["sha256"] = sha
    return meta, model_spec


def onnx_session(onnx_file: Path, threads: int | None = None) -> Any:
    """An ONNX Runtime CPU session of ``onnx_file`` as the engine runs it (``threads`` intra-op threads, one
    inter-op thread, warnings off); raises what ONNX Runtime raises."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads_for(threads)
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(str(onnx_file), so, providers=["CPUExecutionProvider"])


# Bumped when the exported graph changes shape or meaning (3: softmax probabilities as output;
# 4: and the out-of-distribution score; 5: the decoder upsamples by a constant factor of 2).
_ONNX_FORMAT = "5"


def exportable(model: Any) -> Any:
    """The network as exported: (N, in_channels, H, W) -> (probabilities, out-of-distribution score).

    The softmax over dim 1 is written as max/sub/exp/sum/div: ONNX Runtime runs the Softmax operator
    over a non-last axis through transposes, about 250 ms slower on a 1024x1024 frame. The decoder's
    upsampling is exported with a constant scale of 2 (:func:`_upsample_by_two`). ``model`` itself is
    not changed (a copy is exported)."""
    import copy

    import torch
    from segmentation_models_pytorch.decoders.unet.decoder import UnetDecoderBlock

    net = copy.deepcopy(model)
    for block in net.modules():
        if isinstance(block, UnetDecoderBlock):
            block.forward = _upsample_by_two.__get__(block)

    class _Exported(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            logits, score = self.net.forward_with_ood(x)
            e = torch.exp(logits - logits.amax(dim=1, keepdim=True))
            return e / e.sum(dim=1, keepdim=True), score

    return _Exported()


def _upsample_by_two(
    self: Any, feature_map: Any, target_height: int, target_width: int, skip_connection: Any = None
) -> Any:
    """``UnetDecoderBlock.forward`` (segmentation-models-pytorch 0.5-0.6) with the upsampling by a constant
    factor of 2 instead of to the skip connection's size: the same values, since the engine pads every
    input to the network's stride (each encoder level is exactly half the one above), but ONNX Runtime then
    keeps the decoder in its blocked channel layout (no reordering around a size computed at run time):
    about 50 ms less per 1024x1024 frame on this machine (docs/benchmarks.md)."""
    import torch
    import torch.nn.functional as F

    feature_map = F.interpolate(feature_map, scale_factor=2.0, mode=self.interpolation_mode)
    if skip_connection is not None:
        feature_map = torch.cat([feature_map, skip_connection], dim=1)
        feature_map = self.attention1(feature_map)
    feature_map = self.conv1(feature_map)
    feature_map = self.conv2(feature_map)
    return self.attention2(feature_map)


def _onnx_source_sha(path: Path) -> str | None:
    try:
        import onnx

        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # a broken file is simply re-exported
        return None
    props = {p.key: p.value for p in model.metadata_props}
    return f"{props.get('layerwatch_source_sha256')}/{props.get('layerwatch_onnx_format')}"


def export_onnx(model_path: Path, onnx_path: Path, opset: int = 17) -> Path:
    """Export a checkpoint to ONNX with dynamic batch, height and width; returns ``onnx_path``."""

    import onnx
    import torch

    from segmentation.model import file_sha256, load_checkpoint

    model, meta = load_checkpoint(model_path)
    stride = model.spec.stride
    dummy = torch.zeros(1, model.spec.in_channels, stride * 4, stride * 4)
    onnx_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=onnx_path.parent) as tmp:
        tmp_file = Path(tmp) / "model.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                exportable(model),
                (dummy,),
                str(tmp_file),
                input_names=["image"],
                output_names=["probs", "ood"],
                opset_version=opset,
                dynamic_axes={"image": {0: "n", 2: "h", 3: "w"}, "probs": {0: "n", 2: "h", 3: "w"}, "ood": {0: "n"}},
                dynamo=False,
            )
        proto = onnx.load(str(tmp_file))
        meta = {k: v for k, v in meta.items() if k != "sha256"}
        for key, value in (
            ("layerwatch_source_sha256", file_sha256(model_path)),
            ("layerwatch_onnx_format", _ONNX_FORMAT),
            ("layerwatch_meta", json.dumps(meta)),
        ):
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value
        onnx.save(proto, str(tmp_file))
        tmp_file.replace(onnx_path)
    return onnx_path
