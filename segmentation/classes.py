"""The one class-id map used everywhere: model output, masks on disk, records and reports."""

from __future__ import annotations

from enum import IntEnum

import numpy as np

__all__ = [
    "CLASS_COLORS",
    "CLASS_NAMES",
    "DEFECT_CLASSES",
    "NO_DEFECT",
    "NUM_CLASSES",
    "UNLABELLED",
    "LayerClass",
]


class LayerClass(IntEnum):
    """Pixel classes of a layer image (ids are a contract, see docs/design)."""

    POWDER = 0
    PART = 1
    POROSITY = 2
    SPATTER = 3
    WARPING = 4


NUM_CLASSES = len(LayerClass)
CLASS_NAMES: tuple[str, ...] = tuple(c.name.lower() for c in LayerClass)
DEFECT_CLASSES: tuple[LayerClass, ...] = (
    LayerClass.POROSITY,
    LayerClass.SPATTER,
    LayerClass.WARPING,
)

#: Label-mask values beside the class ids (labels only, never model output): a pixel that is powder
#: or part, which one not said ("no defect here"), and a pixel nobody labelled (ignored).
NO_DEFECT = 254
UNLABELLED = 255

#: RGB overlay colours, indexed by class id: (NUM_CLASSES, 3) uint8.
CLASS_COLORS = np.array(
    [
        [0, 0, 0],  # powder: left transparent in overlays
        [40, 120, 255],  # part: blue
        [255, 40, 40],  # porosity: red
        [255, 220, 0],  # spatter: yellow
        [255, 0, 255],  # warping: magenta
    ],
    dtype=np.uint8,
)
