"""Frames: encoding for transport, decoding on receipt, and the quality checks that travel with them.

Images are NumPy arrays ``(H, W)`` or ``(H, W, 3)`` (BGR, OpenCV's order), uint8 or uint16.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np

from printer_io.errors import CaptureError, PayloadError
from printer_io.messages import FrameQuality

__all__ = ["QualityChecker", "QualityLimits", "decode_image", "encode_image", "image_size"]

Encoding = Literal["png", "jpeg"]


def encode_image(image: np.ndarray, encoding: Encoding = "png", jpeg_quality: int = 92) -> bytes:
    """PNG keeps every bit (16-bit too); JPEG is about 10x faster for large frames but 8-bit and lossy."""
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (1, 3)):
        raise CaptureError(f"frame of shape {image.shape} is neither gray (H, W) nor colour (H, W, 3)")
    if image.dtype not in (np.uint8, np.uint16):
        raise CaptureError(f"frame dtype {image.dtype} is not uint8 or uint16")
    if encoding == "jpeg":
        if image.dtype == np.uint16:
            image = (image >> 8).astype(np.uint8)
        ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)])
    else:
        ok, buf = cv2.imencode(".png", image, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:
        raise CaptureError(f"could not encode a {image.shape} frame as {encoding}")
    return bytes(buf.tobytes())


_PNG = b"\x89PNG\r\n\x1a\n"
# JPEG start-of-frame markers (baseline, progressive, lossless, ...): not DHT (C4), JPG (C8) or DAC (CC)
_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def image_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG's IHDR or a JPEG's start-of-frame header, without decoding; None when the
    bytes are neither (or the header is cut short)."""
    if data[:8] == _PNG and data[12:16] == b"IHDR" and len(data) >= 24:
        return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    if data[:2] != b"\xff\xd8":
        return None
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD8)):  # markers without a length
            i += 2
            continue
        length = int.from_bytes(data[i + 2 : i + 4], "big")
        if marker in _SOF:
            if i + 9 > len(data):
                return None
            return int.from_bytes(data[i + 7 : i + 9], "big"), int.from_bytes(data[i + 5 : i + 7], "big")
        if marker == 0xDA or length < 2:  # image data before any frame header
            return None
        i += 2 + length
    return None


def decode_image(
    data: bytes, topic: str = "", max_pixels: int | None = None, expect: tuple[int, int] | None = None
) -> np.ndarray:
    """Decode PNG/JPEG bytes, keeping 16-bit depth; raises PayloadError for bytes that are no image.

    The size is read from the header first and checked against ``max_pixels`` (and the ``expect``-ed
    (width, height) the metadata declared) before anything is decoded or allocated: a 2 MB PNG can declare
    20000x20000 16-bit colour, 2.4 GB once decoded."""
    where = f"{topic}: " if topic else ""
    size = image_size(data)
    if size is None:
        raise PayloadError(f"{where}frame bytes ({len(data)} B) are not a PNG or JPEG image", "image")
    w, h = size
    if w == 0 or h == 0:
        raise PayloadError(f"{where}frame header declares an empty {w}x{h} image", "image")
    if max_pixels is not None and w * h > max_pixels:
        raise PayloadError(
            f"{where}frame header declares {w}x{h} = {w * h / 1e6:.1f} Mpx, over the limit of "
            f"{max_pixels / 1e6:.1f} Mpx ([monitor] max_frame_pixels); not decoded",
            "pixels",
        )
    if expect is not None and (w, h) != expect:
        raise PayloadError(
            f"{where}frame header declares {w}x{h}, its metadata {expect[0]}x{expect[1]}; not decoded", "image"
        )
    arr = np.frombuffer(data, dtype=np.uint8)
    image = cv2.imdecode(arr, cv2.IMREAD_UNCHANGED) if arr.size else None
    if image is None:
        raise PayloadError(f"{where}frame bytes ({len(data)} B) do not decode as PNG or JPEG", "image")
    if image.ndim == 3 and image.shape[2] == 4:
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    return np.asarray(image)


@dataclass(frozen=True)
class QualityLimits:
    """Thresholds of the frame-quality checks.

    ``min_sharpness``: variance of the Laplacian of the 8-bit gray frame (downscaled to at most 512 px);
    in-focus powder-bed frames score in the hundreds, a defocused one below 10. ``frozen_diff``: mean
    absolute difference (8-bit levels) below which a frame counts as a repeat of the previous one.
    ``dark``/``bright``: mean brightness as a share of full scale.
    """

    min_sharpness: float = 8.0
    frozen_diff: float = 0.2
    dark: float = 0.06
    bright: float = 0.94


class QualityChecker:
    """Stateful: remembers the previous frame to detect a frozen feed."""

    def __init__(self, limits: QualityLimits | None = None) -> None:
        self.limits = limits or QualityLimits()
        self._previous: np.ndarray | None = None

    def reset(self) -> None:
        self._previous = None

    def check(self, image: np.ndarray) -> FrameQuality:
        small = _gray8_small(image)
        sharpness = float(cv2.Laplacian(small, cv2.CV_32F).var())
        mean = float(small.mean()) / 255.0
        frozen = False
        if self._previous is not None and self._previous.shape == small.shape:
            diff = float(np.abs(small.astype(np.int16) - self._previous.astype(np.int16)).mean())
            frozen = diff < self.limits.frozen_diff
        self._previous = small
        return FrameQuality(
            sharpness=round(sharpness, 3),
            mean=round(mean, 4),
            blurry=sharpness < self.limits.min_sharpness,
            frozen=frozen,
            too_dark=mean < self.limits.dark,
            too_bright=mean > self.limits.bright,
        )


def _gray8_small(image: np.ndarray, max_side: int = 512) -> np.ndarray:
    gray = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    if gray.dtype == np.uint16:
        gray = (gray // 256).astype(np.uint8)
    h, w = gray.shape
    scale = max(h, w) / max_side
    if scale > 1:
        gray = cv2.resize(gray, (round(w / scale), round(h / scale)), interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(gray)
