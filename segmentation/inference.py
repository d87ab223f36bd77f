"""Inference: one :class:`Segmenter` API over interchangeable engines (OpenVINO, ONNX Runtime, torch; ``auto``
takes the fastest installed).

An engine maps a model-input batch (N, in_channels, H, W) float32 to class probabilities
(N, C, H, W) float32 (the softmax runs inside the engine: in ONNX Runtime it is part of the
exported graph, several times faster than NumPy) and to each image's out-of-distribution score
(:mod:`segmentation.ood`). The Segmenter owns everything around it: conversion to gray, an optional
flat-field correction by the build's reference illumination, whole-frame input channels, padding to
the network's stride, tiling of large frames with overlap and blending, the class-id mask and the
region of interest.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import numpy as np

from segmentation.errors import ImageError, ModelError
from segmentation.geometry import warping_geometry
from segmentation.imageio import DEFAULT_MAX_PIXELS
from segmentation.onnx_files import current_onnx, export_onnx, onnx_meta, onnx_session
from segmentation.onnx_files import threads_for as _threads
from segmentation.ood import hesitation
from segmentation.preprocess import flat_field, model_input, to_gray_float
from segmentation.resources import data_dir

__all__ = [
    "DEFAULT_MODEL",
    "ENGINES",
    "ENGINE_CHOICES",
    "Engine",
    "OnnxEngine",
    "Segmentation",
    "Segmenter",
    "TorchEngine",
    "create_engine",
    "current_onnx",
    "export_onnx",
    "onnx_meta",
    "resolve_engine",
]

log = logging.getLogger(__name__)

#: The shipped model, inside the repository's data folder.
DEFAULT_MODEL = data_dir() / "models" / "layerwatch-unet.pt"


class Engine(Protocol):
    """Runs the network: (N, in_channels, H, W) float32 -> ((N, classes, H, W) float32 probabilities,
    (N,) float32 out-of-distribution scores, 0 for an uncalibrated model)."""

    name: str
    stride: int
    in_channels: int
    input_norm: str  # segmentation.preprocess.model_input
    meta: dict[str, Any]

    def __call__(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...

    def close(self) -> None: ...


class TorchEngine:
    """PyTorch eager inference on the CPU (or CUDA when ``device='cuda'``)."""

    name = "torch"

    def __init__(self, model_path: Path, threads: int | None = None, device: str = "cpu") -> None:
        import torch

        from segmentation.model import load_checkpoint

        self._torch = torch
        torch.set_num_threads(_threads(threads))
        model, self.meta = load_checkpoint(model_path)
        self.stride = model.spec.stride
        self.in_channels = model.spec.in_channels
        self.input_norm = model.spec.input_norm
        self._device = torch.device(device)
        self._model = model.to(self._device)

    def __call__(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with self._torch.inference_mode():
            logits, score = self._model.forward_with_ood(self._torch.from_numpy(x).to(self._device))
            out = logits.float().softmax(1)
        return np.asarray(out.cpu().numpy()), np.asarray(score.float().cpu().numpy())

    def close(self) -> None:
        self._model = None


class OnnxEngine:
    """ONNX Runtime inference. The ``.onnx`` file beside the checkpoint is exported when missing
    or when it was made from another checkpoint (its metadata holds the checkpoint's sha256)."""

    name = "onnx"

    def __init__(self, model_path: Path, threads: int | None = None, onnx_path: Path | None = None) -> None:
        import onnxruntime  # noqa: F401  (missing: fail here, before any export)

        onnx_file, sha = current_onnx(model_path, onnx_path)
        try:
            self._session = onnx_session(onnx_file, threads)
        except Exception as err:  # onnxruntime raises its own untyped errors
            raise ModelError(f"{onnx_file}: ONNX Runtime cannot load it ({err})") from err
        self.meta, model_spec = onnx_meta(onnx_file, sha)
        self.stride = model_spec.stride
        self.in_channels = model_spec.in_channels
        self.input_norm = model_spec.input_norm
        self._input = self._session.get_inputs()[0].name

    def describe(self) -> str:
        from segmentation.hardware import cpu_info

        return f"onnx (ONNX Runtime) f32 on {cpu_info().describe()}"

    def __call__(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        probs, score = self._session.run(None, {self._input: x})
        return np.asarray(probs), np.asarray(score)

    def close(self) -> None:
        self._session = None


def _openvino(model_path: Path, threads: int | None = None, precision: str = "auto") -> Engine:
    from segmentation.openvino_engine import OpenVinoEngine

    return OpenVinoEngine(model_path, threads=threads, precision=precision)


#: Engines by name; the error for an unknown name lists these (and "auto": the fastest one installed).
ENGINES: dict[str, Callable[..., Engine]] = {"onnx": OnnxEngine, "openvino": _openvino, "torch": TorchEngine}
ENGINE_CHOICES = ("auto", *sorted(ENGINES))


def resolve_engine(name: str) -> str:
    """``auto`` -> the engine to try first: OpenVINO where it is installed and the CPU computes bf16 natively
    (measured about 2x ONNX Runtime there), else ONNX Runtime (OpenVINO in f32 was no faster on 512 px frames:
    docs/benchmarks.md); a named engine unchanged."""
    if name != "auto":
        return name
    from segmentation.hardware import cpu_info

    return "openvino" if cpu_info().bf16 and importlib.util.find_spec("openvino") is not None else "onnx"


def create_engine(name: str, model_path: Path, threads: int | None = None, precision: str = "auto") -> Engine:
    """An engine by name (``auto``: :func:`resolve_engine`, and ONNX Runtime after all where OpenVINO's bf16 was
    not admitted). ``precision``: ``auto`` (the fastest this CPU computes that agrees with f32), ``bf16`` or
    ``f32``: OpenVINO's; the other engines run f32."""
    chosen = resolve_engine(name)
    if name == "auto" and chosen == "openvino" and precision == "auto":
        engine = ENGINES["openvino"](model_path, threads=threads, precision="auto")
        if getattr(engine, "precision", "") == "bf16":
            return engine
        engine.close()  # its check refused bf16: ONNX Runtime is the faster f32
        chosen = "onnx"
    name = chosen
    try:
        factory = ENGINES[name]
    except KeyError:
        raise ModelError(f"unknown engine {name!r}; valid engines: {', '.join(ENGINE_CHOICES)}") from None
    if name == "openvino":
        return factory(model_path, threads=threads, precision=precision)
    return factory(model_path, threads=threads)


class Segmentation(NamedTuple):
    """``mask``: (H, W) uint8 class ids (0 outside the region of interest); ``probs``: (C, H, W)
    float32 class probabilities; ``ood``: how unfamiliar the frame is to the model, as a multiple of
    its calibrated threshold (above 1: unlike anything it was trained on; NaN: the model has no
    calibration)."""

    mask: np.ndarray
    probs: np.ndarray
    ood: float = float("nan")

    @property
    def unfamiliar(self) -> bool:
        return bool(self.ood > 1.0)  # NaN compares False: an uncalibrated model never says so


@dataclass
class Segmenter:
    """Segments layer images of any size, 8/16-bit, gray or colour.

    Frames larger than ``tile`` in either dimension are processed as overlapping tiles of
    ``tile`` px whose probabilities are blended with linear ramps across the ``overlap``.
    Use as a context manager, or call :meth:`start` and :meth:`close`.
    """

    model_path: Path = DEFAULT_MODEL
    engine: str = "auto"
    tile: int = 1024
    overlap: int = 128
    threads: int | None = None
    max_pixels: int = DEFAULT_MAX_PIXELS
    geometry: bool = True  # warping only where a part can lift (segmentation.geometry)
    precision: str = "auto"  # OpenVINO's: auto (bf16 where the CPU computes it and it agrees with f32), bf16, f32

    def __post_init__(self) -> None:
        if self.engine not in ENGINE_CHOICES:
            raise ModelError(f"unknown engine {self.engine!r}; valid engines: {', '.join(ENGINE_CHOICES)}")
        if self.overlap < 0 or self.tile <= 2 * self.overlap:
            raise ValueError(f"tile={self.tile} must be more than twice overlap={self.overlap} (overlap >= 0)")
        self._engine: Engine | None = None

    def start(self) -> Segmenter:
        if self._engine is None:
            self._engine = create_engine(self.engine, Path(self.model_path), self.threads, self.precision)
            if self.tile % self._engine.stride:
                raise ValueError(f"tile={self.tile} must be a multiple of the model stride {self._engine.stride}")
        return self

    def close(self) -> None:
        if self._engine is not None:
            self._engine.close()
            self._engine = None

    def __enter__(self) -> Segmenter:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def describe(self) -> str:
        """The engine that runs and how (its precision, and what the precision check found)."""
        engine = self.start()._engine
        describe = getattr(engine, "describe", None)
        return str(describe()) if callable(describe) else str(getattr(engine, "name", "?"))

    @property
    def model_meta(self) -> dict[str, Any]:
        """Architecture, training summary and sha256 of the loaded model."""
        engine = self.start()._engine
        return dict(engine.meta) if engine is not None else {}

    def segment(
        self, image: np.ndarray, *, roi: np.ndarray | None = None, illumination: np.ndarray | None = None
    ) -> Segmentation:
        """Segment one frame: (H, W) or (H, W, C) array -> :class:`Segmentation`.

        ``roi``: (H, W) bool, the build plate; pixels outside it are powder (background) in the mask.
        ``illumination``: (H, W) float32, the build's reference lighting
        (:func:`segmentation.preprocess.illumination`); the frame is flat-fielded by it first.
        """
        engine = self.start()._engine
        assert engine is not None  # for mypy: start() sets it
        img = np.asarray(image)
        if img.size == 0 or img.ndim < 2 or 0 in img.shape[:2]:
            raise ImageError(f"image has zero size {img.shape}")
        if img.shape[0] * img.shape[1] > self.max_pixels:
            raise ImageError(f"frame {img.shape[1]}x{img.shape[0]} is over the limit of {self.max_pixels} pixels")
        for name, extra in (("roi", roi), ("illumination", illumination)):
            if extra is not None and extra.shape != img.shape[:2]:
                raise ImageError(f"{name} is {extra.shape[::-1]} px but the frame is {img.shape[1::-1]}")
        try:
            gray = to_gray_float(img)
            if illumination is not None:
                gray = flat_field(gray, illumination)
            x = model_input(gray, engine.in_channels, engine.input_norm)
        except ValueError as err:
            raise ImageError(str(err)) from err
        probs, score = self._probs(engine, x)
        return Segmentation(self.mask_of(probs, roi), probs, self._ood(engine, score, probs))

    def mask_of(self, probs: np.ndarray, roi: np.ndarray | None = None) -> np.ndarray:
        """The (H, W) uint8 class mask of (C, H, W) probabilities, as :meth:`segment` gives it: the likeliest
        class, powder outside ``roi``, warping only where a part can lift (``geometry``)."""
        mask = _argmax(probs)
        if roi is not None:
            mask[~roi] = 0
        return warping_geometry(mask) if self.geometry else mask

    @staticmethod
    def _ood(engine: Engine, score: float, probs: np.ndarray) -> float:
        """The larger of the feature score and the hesitation, each over its calibrated threshold
        (:mod:`segmentation.ood`); NaN for a model that was never calibrated."""
        ood = engine.meta.get("ood") or {}
        t = float(ood.get("threshold", "nan"))
        if not t > 0:
            return float("nan")
        ratio = score / t
        te = float(ood.get("entropy_threshold", "nan"))
        if te > 0:
            ratio = max(ratio, hesitation(probs) / te)
        return ratio

    def _probs(self, engine: Engine, x: np.ndarray) -> tuple[np.ndarray, float]:
        """(in_channels, H, W) model input -> ((classes, H, W) probabilities, out-of-distribution
        score: the largest of the tiles'), tiled when large."""
        h, w = x.shape[1:]
        if h <= self.tile and w <= self.tile:
            return self._run(engine, x)
        ph, pw = max(h, self.tile), max(w, self.tile)
        if (ph, pw) != (h, w):
            x = np.pad(x, ((0, 0), (0, ph - h), (0, pw - w)), mode="reflect")
        acc: np.ndarray | None = None
        wsum = np.zeros((ph, pw), dtype=np.float32)
        score = 0.0
        for r0 in _starts(ph, self.tile, self.overlap):
            for c0 in _starts(pw, self.tile, self.overlap):
                p, tile_score = self._run(engine, x[:, r0 : r0 + self.tile, c0 : c0 + self.tile])
                score = max(score, tile_score)
                wt = np.outer(
                    _ramp(self.tile, self.overlap, r0 == 0, r0 + self.tile == ph),
                    _ramp(self.tile, self.overlap, c0 == 0, c0 + self.tile == pw),
                )
                if acc is None:
                    acc = np.zeros((p.shape[0], ph, pw), dtype=np.float32)
                acc[:, r0 : r0 + self.tile, c0 : c0 + self.tile] += p * wt
                wsum[r0 : r0 + self.tile, c0 : c0 + self.tile] += wt
        assert acc is not None
        return (acc / wsum)[:, :h, :w], score

    @staticmethod
    def _run(engine: Engine, x: np.ndarray) -> tuple[np.ndarray, float]:
        """(in_channels, h, w) -> ((classes, h, w) probabilities, score), padding to the stride by reflection."""
        h, w = x.shape[1:]
        s = engine.stride
        ph, pw = -h % s, -w % s
        if ph or pw:
            x = np.pad(x, ((0, 0), (0, ph), (0, pw)), mode="reflect" if min(h, w) > max(ph, pw) else "edge")
        probs, score = engine(np.ascontiguousarray(x[None], dtype=np.float32))
        p = probs[0]
        return (p if (ph, pw) == (0, 0) else p[:, :h, :w]), float(score[0])


def _argmax(probs: np.ndarray) -> np.ndarray:
    """(C, H, W) -> (H, W) uint8 index of the largest channel (first on ties, like np.argmax).

    A loop over the few channels reads memory contiguously; np.argmax(axis=0) strides across
    channels and is about four times slower on a 1024x1024 frame.
    """
    best = probs[0].copy()
    mask = np.zeros(best.shape, dtype=np.uint8)
    for c in range(1, probs.shape[0]):
        better = probs[c] > best
        mask[better] = c
        np.maximum(best, probs[c], out=best)
    return mask


def _starts(size: int, tile: int, overlap: int) -> list[int]:
    """Tile origins covering ``size`` with at least ``overlap`` px shared by neighbours."""
    if size <= tile:
        return [0]
    step = tile - overlap
    starts = list(range(0, size - tile, step))
    starts.append(size - tile)
    return starts


def _ramp(tile: int, overlap: int, at_start: bool, at_end: bool) -> np.ndarray:
    """1-D blending weight: rises over ``overlap`` px at each inner edge, flat at frame borders."""
    w = np.ones(tile, dtype=np.float32)
    if overlap:
        r = (np.arange(overlap, dtype=np.float32) + 0.5) / overlap
        if not at_start:
            w[:overlap] = r
        if not at_end:
            w[-overlap:] = r[::-1]
    return w
