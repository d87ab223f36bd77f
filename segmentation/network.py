"""The network: a segmentation-models-pytorch U-Net with an optional full-resolution refinement head.

Why the head: the U-Net's finest skip connection is at half resolution, which blurs the outline of
objects only 2-6 px across (spatter particles, small pores). The head concatenates the decoder's
features with the full-resolution input and applies two cheap convolutions, so outlines are drawn
from the pixels themselves. It costs about 1 GMAC at 1024x1024 (see docs/benchmarks.md).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import segmentation_models_pytorch as smp
import torch
from torch import nn

if TYPE_CHECKING:
    from segmentation.model import ModelSpec

__all__ = ["LayerUNet"]


class LayerUNet(nn.Module):
    """(N, 1, H, W) normalised gray image -> (N, classes, H, W) logits."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.spec = spec
        head_out = spec.refine if spec.refine > 0 else spec.classes
        self.unet = smp.Unet(
            encoder_name=spec.encoder,
            encoder_weights=None,
            encoder_depth=spec.encoder_depth,
            decoder_channels=spec.decoder_channels,
            in_channels=spec.in_channels,
            classes=head_out,
        )
        self.refine: nn.Module | None = None
        if spec.refine > 0:
            r = spec.refine
            self.refine = nn.Sequential(
                nn.Conv2d(r + spec.in_channels, r, 3, padding=1, bias=False),
                nn.BatchNorm2d(r),
                nn.ReLU(inplace=True),
                nn.Conv2d(r, r, 3, padding=1, bias=False),
                nn.BatchNorm2d(r),
                nn.ReLU(inplace=True),
                nn.Conv2d(r, spec.classes, 1),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.unet(x)
        if self.refine is None:
            return y
        return self.refine(torch.cat([torch.relu(y), x], dim=1))
