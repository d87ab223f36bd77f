"""The plain network: a U-Net from segmentation-models-pytorch, built from a named preset.

Training and inference live elsewhere (:mod:`segmentation.train`, :mod:`segmentation.inference`);
this module only knows how to build the network and how to save and load its weights.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from segmentation.classes import NUM_CLASSES
from segmentation.errors import ModelError

__all__ = ["ARCHITECTURES", "DEFAULT_ARCH", "ModelSpec", "create_model", "load_checkpoint", "save_checkpoint"]


@dataclass(frozen=True)
class ModelSpec:
    """A U-Net configuration: encoder name (smp), encoder depth and decoder widths."""

    encoder: str
    encoder_depth: int
    decoder_channels: tuple[int, ...]
    refine: int = 0  # >0: full-resolution refinement head with this many channels
    in_channels: int = 1
    classes: int = NUM_CLASSES
    input_norm: str = "linear"  # segmentation.preprocess.model_input: "linear" or "log"

    def __post_init__(self) -> None:
        if self.input_norm not in ("linear", "log"):  # a checkpoint's metadata is input like any other
            raise ValueError(f"input_norm={self.input_norm!r}: expected 'linear' or 'log'")

    @property
    def stride(self) -> int:
        """Input height and width must be multiples of this."""
        return int(2**self.encoder_depth)


#: Named presets measured in docs/benchmarks.md (speed/accuracy table on a 2-core CPU).
ARCHITECTURES: dict[str, ModelSpec] = {
    "unet-r18-d4": ModelSpec("resnet18", 4, (128, 64, 32, 16)),
    "unet-r18-d4-slim": ModelSpec("resnet18", 4, (64, 32, 16, 16)),
    "unet-mnv2-d4": ModelSpec("mobilenet_v2", 4, (64, 32, 16, 16)),
    "unet-effb0-d4": ModelSpec("efficientnet-b0", 4, (64, 32, 16, 16)),
    "unet-mnv3l-d5": ModelSpec("tu-mobilenetv3_large_075", 5, (64, 32, 24, 16, 8)),
    "unet-mnv3s-d5": ModelSpec("tu-mobilenetv3_small_100", 5, (64, 32, 24, 16, 16)),
    "unet-mnv3s-d5-r8": ModelSpec("tu-mobilenetv3_small_100", 5, (64, 32, 24, 16, 8), refine=8),
    # second input channel: local contrast (segmentation.preprocess.local_contrast)
    "unet-mnv3s-d5-lc": ModelSpec("tu-mobilenetv3_small_100", 5, (64, 32, 24, 16, 16), in_channels=2),
    # the same with an 8-channel full-resolution decoder stage: 1.7x faster to train on a CPU without
    # AVX-512, a little faster to run (docs/benchmarks.md)
    "unet-mnv3s-d5-lc8": ModelSpec("tu-mobilenetv3_small_100", 5, (64, 32, 24, 16, 8), in_channels=2),
    # the same network on the log of the frame: gain and gamma of the camera no longer change its input
    "unet-mnv3s-d5-lc8-log": ModelSpec(
        "tu-mobilenetv3_small_100", 5, (64, 32, 24, 16, 8), in_channels=2, input_norm="log"
    ),
}
DEFAULT_ARCH = "unet-mnv3s-d5-lc8"


def create_model(arch: str | ModelSpec) -> Any:
    """Build an untrained network (``encoder_weights=None``: nothing is downloaded).

    Returns a ``torch.nn.Module`` mapping (N, 1, H, W) float32 to (N, 5, H, W) logits; H and W
    must be multiples of ``spec.stride``.
    """
    from segmentation.network import LayerUNet

    return LayerUNet(_resolve(arch))


def _resolve(arch: str | ModelSpec) -> ModelSpec:
    if isinstance(arch, ModelSpec):
        return arch
    try:
        return ARCHITECTURES[arch]
    except KeyError:
        valid = ", ".join(sorted(ARCHITECTURES))
        raise ModelError(f"unknown architecture {arch!r}; valid names: {valid}") from None


def save_checkpoint(path: Path, model: Any, arch: str, extra: dict[str, Any] | None = None) -> None:
    """Write weights (fp16 to keep the shipped file small) and metadata to ``path``."""
    import torch

    state = {k: (v.half() if v.is_floating_point() else v) for k, v in model.state_dict().items()}
    meta = {"arch": arch, "spec": asdict(_resolve(arch)), **(extra or {})}
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save({"state_dict": state, "meta": meta}, tmp)
    tmp.replace(path)


def load_checkpoint(path: Path) -> tuple[Any, dict[str, Any]]:
    """Load a checkpoint written by :func:`save_checkpoint`: (model in eval mode, metadata)."""
    import torch

    if not path.is_file():
        raise ModelError(f"{path}: model file not found; pass --model PATH or run `layerwatch train`")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        meta = dict(ckpt["meta"])
        spec = ModelSpec(**{**meta["spec"], "decoder_channels": tuple(meta["spec"]["decoder_channels"])})
        model = create_model(spec)
        state = {k: v.float() if v.is_floating_point() else v for k, v in ckpt["state_dict"].items()}
        for name in ("ood_mean", "ood_inv_std"):  # models made before the score existed: uncalibrated
            state.setdefault(name, getattr(model, name))
        model.load_state_dict(state)
    except ModelError:
        raise
    except Exception as err:  # torch raises many types for a bad file
        raise ModelError(f"{path}: not a LayerWatch model checkpoint ({type(err).__name__}: {err})") from err
    model.eval()
    meta["sha256"] = file_sha256(path)
    return model, meta


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
