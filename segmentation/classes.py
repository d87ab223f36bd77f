"""The one class map used everywhere: model output, masks on disk, records, dashboard and reports.

Adding a class is one member of :class:`LayerClass` and one row of ``_TABLE``; every name, colour, defect
list and training weight below is derived from them (the simulator must also draw it, and the model be
retrained with one more output channel).
"""

from __future__ import annotations

from enum import IntEnum

import numpy as np

__all__ = [
    "CLASS_BGR",
    "CLASS_COLORS",
    "CLASS_HEX",
    "CLASS_LOSS_WEIGHTS",
    "CLASS_NAMES",
    "DEFECT_CLASSES",
    "DEFECT_NAMES",
    "MISTAKEN",
    "NO_DEFECT",
    "NUM_CLASSES",
    "UNLABELLED",
    "LayerClass",
]


class LayerClass(IntEnum):
    """Pixel classes of a layer image (ids are a contract: masks on disk, records, MQTT)."""

    POWDER = 0
    PART = 1
    POROSITY = 2
    SPATTER = 3
    WARPING = 4


# class: (RGB overlay colour, is a defect, cross-entropy weight in training: defects are a few % of pixels)
_TABLE: dict[LayerClass, tuple[tuple[int, int, int], bool, float]] = {
    LayerClass.POWDER: ((0, 0, 0), False, 0.5),  # left transparent in overlays
    LayerClass.PART: ((40, 120, 255), False, 1.0),  # blue
    LayerClass.POROSITY: ((255, 40, 40), True, 3.0),  # red
    LayerClass.SPATTER: ((255, 220, 0), True, 3.0),  # yellow
    LayerClass.WARPING: ((255, 0, 255), True, 2.0),  # magenta
}

NUM_CLASSES = len(LayerClass)
CLASS_NAMES: tuple[str, ...] = tuple(c.name.lower() for c in LayerClass)
DEFECT_CLASSES: tuple[LayerClass, ...] = tuple(c for c in LayerClass if _TABLE[c][1])
DEFECT_NAMES: tuple[str, ...] = tuple(CLASS_NAMES[c] for c in DEFECT_CLASSES)
CLASS_LOSS_WEIGHTS: tuple[float, ...] = tuple(_TABLE[c][2] for c in LayerClass)

#: RGB overlay colours, indexed by class id: (NUM_CLASSES, 3) uint8.
CLASS_COLORS = np.array([_TABLE[c][0] for c in LayerClass], dtype=np.uint8)
#: The same colours for OpenCV (BGR) and for HTML/plotly (``#rrggbb``), indexed by class id.
CLASS_BGR: tuple[tuple[int, int, int], ...] = tuple((int(b), int(g), int(r)) for r, g, b in CLASS_COLORS)
CLASS_HEX: tuple[str, ...] = tuple(f"#{r:02x}{g:02x}{b:02x}" for r, g, b in CLASS_COLORS)

#: Label-mask values beside the class ids (labels only, never model output): a pixel that is powder
#: or part, which one not said ("no defect here"), and a pixel nobody labelled (ignored).
NO_DEFECT = 254
UNLABELLED = 255
#: Within a fine-tune only (never in a user's labels): "no defect here" where the model it starts from called a
#: defect. Trained as NO_DEFECT; crops are centred on these as on labelled defects (the model's own mistakes).
MISTAKEN = 253
