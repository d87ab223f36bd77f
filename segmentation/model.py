"""The plain network: a U-Net from segmentation-models-pytorch, built from a named preset.

Training and inference live elsewhere (:mod:`segmentation.train`, :mod:`segmentation.inference`);
this module only knows how to build the network and how to save and load its weights.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict
from pathlib import Path
from typing import Any

from segmentation.errors import ModelError
from segmentation.spec import ARCHITECTURES, DEFAULT_ARCH, ModelSpec
from segmentation.spec import resolve as _resolve

__all__ = ["ARCHITECTURES", "DEFAULT_ARCH", "ModelSpec", "create_model", "load_checkpoint", "save_checkpoint"]


def create_model(arch: str | ModelSpec) -> Any:
    """Build an untrained network (``encoder_weights=None``: nothing is downloaded).

    Returns a ``torch.nn.Module`` mapping (N, 1, H, W) float32 to (N, 5, H, W) logits; H and W
    must be multiples of ``spec.stride``.
    """
    from segmentation.network import LayerUNet

    return LayerUNet(_resolve(arch))


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
