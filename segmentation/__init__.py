"""LayerWatch segmentation: layer simulator, U-Net, training, inference engines and evaluation.

Knows nothing of MQTT or printers. Heavy modules (torch, onnxruntime) load only when used.
"""

from segmentation.classes import CLASS_NAMES, NUM_CLASSES, LayerClass
from segmentation.errors import ImageError, ModelError, SegmentationError

__all__ = ["CLASS_NAMES", "NUM_CLASSES", "ImageError", "LayerClass", "ModelError", "SegmentationError"]
