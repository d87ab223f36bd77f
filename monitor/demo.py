"""``layerwatch demo``: the main job with no hardware.

For now it segments the shipped sample layers (``data/samples/layers``) with the shipped model and
writes, for each layer, the class-id mask and a colour overlay, and prints one line per layer with
the defect fractions. Later issues grow it into the full pipeline (virtual printer, monitor,
dashboard).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import numpy as np

from segmentation.classes import CLASS_NAMES, LayerClass

__all__ = ["SAMPLE_LAYERS", "run_demo"]

log = logging.getLogger(__name__)

SAMPLE_LAYERS = Path(__file__).resolve().parent.parent / "data" / "samples" / "layers"


def run_demo(out: Path, engine: str = "onnx", model: Path | None = None, samples: Path = SAMPLE_LAYERS) -> int:
    """Segment every sample layer into ``out``; returns the process exit status."""
    from segmentation.imageio import iter_image_paths, read_image, write_mask, write_overlay
    from segmentation.inference import DEFAULT_MODEL, Segmenter

    paths = [p for p in iter_image_paths([samples]) if isinstance(p, Path)]
    if not paths:
        print(f"layerwatch demo: no sample layers in {samples}", file=sys.stderr)
        return 2
    with Segmenter(model_path=model or DEFAULT_MODEL, engine=engine) as seg:
        print(f"model {seg.model_meta.get('arch')} ({engine}), {len(paths)} sample layers -> {out}")
        for path in paths:
            image = read_image(path)
            mask = seg.segment(image).mask
            write_mask(out / f"{path.stem}.png", mask)
            write_overlay(out / "overlays" / f"{path.stem}.png", image, mask)
            counts = np.bincount(mask.ravel(), minlength=len(CLASS_NAMES))
            # pores and warping belong to parts; spatter lands anywhere on the plate
            part = counts[LayerClass.PART] + counts[LayerClass.POROSITY] + counts[LayerClass.WARPING]
            print(
                f"{path.name}: part {part / mask.size:6.2%} of frame; porosity "
                f"{counts[LayerClass.POROSITY] / max(part, 1):6.2%} and warping "
                f"{counts[LayerClass.WARPING] / max(part, 1):6.2%} of part area; spatter "
                f"{counts[LayerClass.SPATTER] / mask.size:6.3%} of frame"
            )
    print(f"masks in {out}/, overlays in {out}/overlays/")
    return 0
