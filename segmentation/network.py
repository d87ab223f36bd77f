"""The network: a segmentation-models-pytorch U-Net with an optional full-resolution refinement head.

Its input is ``segmentation.preprocess.model_input``: the normalised gray frame, and for the shipped
architecture (``unet-mnv3s-d5-lc8``, no head) a second channel of local contrast. Why the head: the
U-Net's finest skip connection is at half resolution, which blurs the outline of objects only 2-6 px
across (spatter particles, small pores). The head concatenates the decoder's
features with the full-resolution input and applies two cheap convolutions, so outlines are drawn
from the pixels themselves. It costs about 1 GMAC at 1024x1024 (see docs/benchmarks.md).
"""

from __future__ import annotations

import segmentation_models_pytorch as smp
import torch
from torch import nn

from segmentation.spec import ModelSpec

__all__ = ["LayerUNet"]


class LayerUNet(nn.Module):
    """(N, in_channels, H, W) model input -> (N, classes, H, W) logits.

    ``forward_with_ood`` also returns, per image, how far the encoder's deepest features (averaged
    over the image) lie from those of the frames the model was calibrated on: the mean squared
    z-score over the feature channels (buffers ``ood_mean`` and ``ood_inv_std``, all zero until
    :func:`segmentation.ood.calibrate` fills them).
    """

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

        depth = int(self.unet.encoder.out_channels[-1])
        self.register_buffer("ood_mean", torch.zeros(depth))
        self.register_buffer("ood_inv_std", torch.zeros(depth))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with_ood(x)[0]

    def forward_with_ood(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits (N, classes, H, W), score (N,)): the score is 0 for an uncalibrated model."""
        feats = self.unet.encoder(x)
        y = self.unet.segmentation_head(self.unet.decoder(feats))
        if self.refine is not None:
            y = self.refine(torch.cat([torch.relu(y), x], dim=1))
        mean, inv_std = self.ood_mean, self.ood_inv_std
        assert isinstance(mean, torch.Tensor) and isinstance(inv_std, torch.Tensor)  # registered buffers
        z = (self.pooled(feats) - mean) * inv_std
        return y, (z * z).mean(dim=1)

    @staticmethod
    def pooled(feats: list[torch.Tensor]) -> torch.Tensor:
        """(N, C) the deepest encoder features averaged over the image."""
        return feats[-1].mean(dim=(2, 3))
