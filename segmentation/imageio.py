"""Reading layer images and writing masks and overlays.

Accepted: PNG, JPEG and TIFF, 8 or 16 bit, gray or colour, any size up to a configurable limit.
Arrays are returned in RGB order (never OpenCV's BGR) or as (H, W) gray.
"""

from __future__ import annotations

import io
import threading
import warnings
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import cv2
import numpy as np

from segmentation.classes import CLASS_COLORS
from segmentation.errors import ImageError

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "IMAGE_SUFFIXES",
    "class_overlay_png",
    "draw_boxes",
    "iter_image_paths",
    "overlay",
    "read_image",
    "write_mask",
    "write_overlay",
]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
DEFAULT_MAX_PIXELS = 64_000_000  # 8000 x 8000


def iter_image_paths(inputs: Iterable[Path]) -> Iterator[Path | ImageError]:
    """Files named directly, and the images inside named directories (sorted, not recursive).

    Yields an :class:`ImageError` in place of an input that cannot give any image, so that a
    batch goes on with the other inputs.
    """
    for item in inputs:
        if item.is_dir():
            found = sorted(p for p in item.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                yield ImageError(f"{item}: directory has no images (expected {', '.join(IMAGE_SUFFIXES)} files)")
            yield from found
        elif item.exists():
            yield item
        else:
            yield ImageError(f"{item}: no such file or directory")


def read_image(path: Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read one layer image: (H, W) gray or (H, W, 3) RGB, uint8 or uint16.

    Raises:
        ImageError: unsupported format, empty, truncated or corrupt file, frame over ``max_pixels``.
    """
    suffix = path.suffix.lower()
    if suffix not in IMAGE_SUFFIXES:
        raise ImageError(
            f"{path}: unsupported format {suffix or '(no extension)'!r}; expected PNG, JPEG or TIFF "
            f"({', '.join(IMAGE_SUFFIXES)})"
        )
    try:
        data = path.read_bytes()
    except OSError as err:
        raise ImageError(f"{path}: cannot read file ({err.strerror})") from err
    if not data:
        raise ImageError(f"{path}: file is empty (0 bytes)")
    _check_header(path, data, max_pixels)
    if suffix in (".jpg", ".jpeg") and not data.rstrip(b"\0").endswith(b"\xff\xd9"):
        # libjpeg decodes a truncated JPEG into a half-gray frame with only a warning
        raise ImageError(f"{path}: truncated JPEG (no end-of-image marker); re-export or re-capture the frame")
    buf = np.frombuffer(data, dtype=np.uint8)
    img = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    if img is None or img.size == 0:
        raise ImageError(f"{path}: corrupt or unreadable image data")
    if img.dtype not in (np.uint8, np.uint16):
        if np.issubdtype(img.dtype, np.floating):
            img = img.astype(np.float32)
        else:
            raise ImageError(f"{path}: unsupported pixel type {img.dtype}; expected 8- or 16-bit")
    if img.ndim == 3:
        if img.shape[2] == 1:
            img = img[..., 0]
        elif img.shape[2] == 3:
            img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
        elif img.shape[2] == 4:
            img = cv2.cvtColor(img, cv2.COLOR_BGRA2RGB)
        else:
            raise ImageError(f"{path}: {img.shape[2]} channels; expected gray, RGB or RGBA")
    return np.ascontiguousarray(img)


_PIL_LIMIT_LOCK = threading.Lock()


def _check_header(path: Path, data: bytes, max_pixels: int) -> None:
    """Refuse empty or oversized frames from the header alone, before decoding a huge buffer."""

    from PIL import Image

    try:
        # PIL's decompression-bomb limit is a process-wide setting: lift it only around our own header read
        # (we check the size against max_pixels ourselves) and put it back for every other PIL user
        with _PIL_LIMIT_LOCK, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
            try:
                with Image.open(io.BytesIO(data)) as im:
                    w, h = im.size
                    fmt = im.format
            finally:
                Image.MAX_IMAGE_PIXELS = saved
    except Exception as err:  # PIL raises several types for unknown or corrupt headers
        raise ImageError(f"{path}: not a readable PNG/JPEG/TIFF image ({type(err).__name__})") from err
    if fmt == "PNG":
        # check every chunk and CRC first: libpng would print its own error on stderr
        try:
            with Image.open(io.BytesIO(data)) as im:
                im.verify()
        except Exception as err:
            raise ImageError(f"{path}: corrupt or truncated PNG ({err}); re-export or re-capture the frame") from err
    if w == 0 or h == 0:
        raise ImageError(f"{path}: image has zero size ({w}x{h})")
    if w * h > max_pixels:
        raise ImageError(
            f"{path}: frame is {w}x{h} = {w * h / 1e6:.1f} Mpx, over the limit of {max_pixels / 1e6:.1f} Mpx; "
            "raise --max-pixels if this is intended"
        )


def write_mask(path: Path, mask: np.ndarray) -> None:
    """Write (H, W) uint8 class ids as a one-channel 8-bit PNG."""
    if mask.dtype != np.uint8 or mask.ndim != 2:
        raise ValueError(f"mask must be (H, W) uint8, got {mask.shape} {mask.dtype}")
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), mask):
        raise ImageError(f"{path}: could not write the mask (check the folder is writable)")


def overlay(image: np.ndarray, mask: np.ndarray, alpha: float = 0.5, boxes: Sequence[Sequence[int]] = ()) -> np.ndarray:
    """(H, W, 3) uint8 RGB: the image in gray with every non-powder class tinted by its colour, and
    ``boxes`` ((x, y, width, height) px: where a rule that acted measured its metric) outlined."""
    from segmentation.preprocess import to_gray_float

    gray = to_gray_float(image)
    lo, hi = np.percentile(gray, (0.5, 99.5))
    g = np.clip((gray - lo) / max(hi - lo, 1e-6), 0, 1)
    rgb = np.repeat((g * 255)[..., None], 3, axis=2)
    color = CLASS_COLORS[mask].astype(np.float32)
    tint = (mask > 0)[..., None]
    out = np.where(tint, (1 - alpha) * rgb + alpha * color, rgb).astype(np.uint8)
    draw_boxes(out, boxes, width=max(1, round(max(out.shape[:2]) / 400)))
    return out


def draw_boxes(image: np.ndarray, boxes: Sequence[Sequence[int]], scale: float = 1.0, width: int = 1) -> None:
    """Outline ``boxes`` ((x, y, width, height) px of the full frame, times ``scale``) on ``image`` (H, W, 3)
    in place: white inside black, seen on bright powder and on dark parts alike."""
    for box in boxes:
        x, y, w, h = (float(v) * scale for v in box[:4])
        p0, p1 = (round(x), round(y)), (round(x + w) - 1, round(y + h) - 1)
        cv2.rectangle(image, p0, p1, (0, 0, 0), 2 * width + 1)
        cv2.rectangle(image, p0, p1, (255, 255, 255), width)


def write_overlay(path: Path, image: np.ndarray, mask: np.ndarray, boxes: Sequence[Sequence[int]] = ()) -> None:
    """Write the :func:`overlay` of ``mask`` on ``image`` (``boxes`` outlined) as an RGB PNG."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), cv2.cvtColor(overlay(image, mask, boxes=boxes), cv2.COLOR_RGB2BGR)):
        raise ImageError(f"{path}: could not write the overlay (check the folder is writable)")


def class_overlay_png(mask: np.ndarray, max_side: int = 320) -> bytes:
    """The classes of ``mask`` as a small RGBA PNG to lay over the frame: powder clear, the part faint, every
    defect strong; at most ``max_side`` px on its longer side (nearest class, so no class is blended away)."""
    h, w = mask.shape[:2]
    scale = min(1.0, max_side / max(h, w))
    small = mask
    if scale < 1.0:
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        small = cv2.resize(mask.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST)
    alpha = np.full(len(CLASS_COLORS), 200, np.uint8)
    alpha[0], alpha[1] = 0, 70
    table = np.concatenate([CLASS_COLORS, alpha[:, None]], axis=1)[:, [2, 1, 0, 3]]  # BGRA for OpenCV
    ids = np.minimum(small, len(CLASS_COLORS) - 1)
    ok, data = cv2.imencode(".png", table[ids], [cv2.IMWRITE_PNG_COMPRESSION, 6])
    if not ok:
        raise ImageError("the class overlay could not be encoded as PNG")
    return bytes(data)
