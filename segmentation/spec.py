"""A network's configuration, without PyTorch: the named presets, and what the network
(:mod:`segmentation.network`), the checkpoints (:mod:`segmentation.model`) and the ONNX files read."""

from __future__ import annotations

from dataclasses import dataclass

from segmentation.classes import NUM_CLASSES
from segmentation.errors import ModelError

__all__ = ["ARCHITECTURES", "DEFAULT_ARCH", "ModelSpec", "resolve"]


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


def resolve(arch: str | ModelSpec) -> ModelSpec:
    if isinstance(arch, ModelSpec):
        return arch
    try:
        return ARCHITECTURES[arch]
    except KeyError:
        valid = ", ".join(sorted(ARCHITECTURES))
        raise ModelError(f"unknown architecture {arch!r}; valid names: {valid}") from None
