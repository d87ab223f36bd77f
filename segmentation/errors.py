"""Exceptions of the segmentation package. Each message says what was expected and how to fix it."""

from __future__ import annotations

__all__ = ["ImageError", "ModelError", "SegmentationError"]


class SegmentationError(Exception):
    """Base class of every error raised by :mod:`segmentation`."""


class ImageError(SegmentationError):
    """An input image cannot be read or is not usable (corrupt, empty, too large, wrong format)."""


class ModelError(SegmentationError):
    """A model file, architecture name or engine name is missing or invalid."""
