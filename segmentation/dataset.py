"""Writing simulated layers to disk: a data set (images/, masks/) or a build (consecutive layers)."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import cv2
import numpy as np

from segmentation.imageio import write_mask
from segmentation.simulator import SimBuild, SimLayer, simulate_dataset

__all__ = ["write_build", "write_dataset", "write_layer_image"]


def write_layer_image(path: Path, image: np.ndarray) -> None:
    """Write a gray or RGB, 8- or 16-bit frame losslessly (PNG)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    out = cv2.cvtColor(image, cv2.COLOR_RGB2BGR) if image.ndim == 3 else image
    if not cv2.imwrite(str(path), out):
        raise OSError(f"{path}: could not write image")


def _write(out: Path, name: str, layer: SimLayer) -> None:
    write_layer_image(out / "images" / f"{name}.png", layer.image)
    write_mask(out / "masks" / f"{name}.png", layer.mask)


def write_dataset(out: Path, seed: int, count: int, size: int = 512) -> int:
    """Write ``count`` layers from builds seeded by ``seed`` to ``out/images`` and ``out/masks``."""
    layers = simulate_dataset(seed, count, size, size)
    for i, layer in enumerate(layers):
        _write(out, f"sim_{seed}_{i:04d}", layer)
    return len(layers)


def write_build(out: Path, seed: int, layers: int, size: int = 512) -> int:
    """Write one build: ``images/layer_NNNNN.png``, ``masks/``, ``part_ids/`` (16-bit) and ``build.json``."""
    build = SimBuild(seed, size, size, layers)
    for k in range(layers):
        layer = build.layer(k)
        _write(out, f"layer_{k:05d}", layer)
        ids = out / "part_ids" / f"layer_{k:05d}.png"
        ids.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(ids), layer.part_ids.astype(np.uint16))
    spec = {**asdict(build.spec), "features": sorted(build.spec.features)}
    (out / "build.json").write_text(json.dumps({"seed": seed, "spec": spec}, indent=1))
    return layers
