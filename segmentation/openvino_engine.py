"""The OpenVINO engine: the same exported graph as the ONNX Runtime engine, run by OpenVINO on the CPU.

Its precision is chosen by the CPU it runs on, read at run time (:mod:`segmentation.hardware`): bf16 where the
CPU computes it natively (AVX-512 BF16 or AMX), f32 elsewhere. A lower precision is admitted only after a check:
on a fixed set of layers its classes must agree with f32's (at least 99.9 % of the pixels, and each defect class
present at least 0.98 IoU against f32's); the check is run once per model, precision, CPU and OpenVINO version
and kept in the user's cache folder. ``describe()`` says which precision runs and what the check found.

(int8 is not offered: a quantised graph needs a calibration run of its own, measured separately; see
docs/benchmarks.md.)
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from segmentation.errors import ModelError
from segmentation.hardware import cpu_info

__all__ = ["PRECISIONS", "Agreement", "OpenVinoEngine", "check_agreement"]

log = logging.getLogger(__name__)

PRECISIONS = ("auto", "bf16", "f32")
#: the check's fixed layers: a seed stream no training or evaluation set uses
CHECK_STREAM = 8_000_001
CHECK_LAYERS = 4
CHECK_SIZE = 512
MIN_AGREEMENT = 0.999
MIN_CLASS_IOU = 0.98
_MIN_CLASS_PX = 50  # a class with fewer pixels in f32's masks is not judged by its IoU


@dataclass(frozen=True)
class Agreement:
    """How a precision's classes compare with f32's on the check layers."""

    precision: str
    pixels: float  # share of pixels of the same class
    class_iou: dict[str, float]  # per defect class present: IoU of its pixels against f32's
    layers: int

    @property
    def admitted(self) -> bool:
        return self.pixels >= MIN_AGREEMENT and all(v >= MIN_CLASS_IOU for v in self.class_iou.values())

    def describe(self) -> str:
        worst = min(self.class_iou.values(), default=1.0)
        verdict = "admitted" if self.admitted else "refused"
        return (
            f"{self.precision} {verdict}: {100 * self.pixels:.3f} % of the pixels of {self.layers} check layers of "
            f"the same class as f32, each defect class's IoU against f32 >= {worst:.3f}"
        )


def _cache_file(key: str) -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "layerwatch" / f"precision-{key}.json"


def check_agreement(compile_model: Any, in_channels: int, input_norm: str, precision: str) -> Agreement:
    """Run the check layers through f32 and ``precision`` (``compile_model(precision)`` gives a compiled model)."""
    from segmentation.classes import CLASS_NAMES, DEFECT_CLASSES
    from segmentation.preprocess import model_input, to_gray_float
    from segmentation.simulator import dataset_layers

    reference, candidate = compile_model("f32"), compile_model(precision)
    same, total = 0, 0
    inter = np.zeros(len(CLASS_NAMES), np.int64)
    union = np.zeros(len(CLASS_NAMES), np.int64)
    support = np.zeros(len(CLASS_NAMES), np.int64)
    for build, k in dataset_layers(CHECK_STREAM, CHECK_LAYERS, CHECK_SIZE, CHECK_SIZE):
        gray = to_gray_float(build.layer(k).image)
        x = model_input(gray, in_channels, input_norm)[None].astype(np.float32)
        a = np.asarray(reference({0: x})[reference.outputs[0]])[0].argmax(0)
        b = np.asarray(candidate({0: x})[candidate.outputs[0]])[0].argmax(0)
        same += int(np.count_nonzero(a == b))
        total += a.size
        for c in DEFECT_CLASSES:
            pa, pb = a == c, b == c
            inter[c] += int(np.count_nonzero(pa & pb))
            union[c] += int(np.count_nonzero(pa | pb))
            support[c] += int(np.count_nonzero(pa))
    ious = {CLASS_NAMES[c]: round(float(inter[c] / union[c]), 4) for c in DEFECT_CLASSES if support[c] >= _MIN_CLASS_PX}
    return Agreement(precision, round(same / max(total, 1), 6), ious, CHECK_LAYERS)


class OpenVinoEngine:
    """OpenVINO inference of the exported ``.onnx`` (the ONNX engine's file and metadata); ``precision``: auto
    (the fastest this CPU computes natively that the check admits), bf16 (still checked) or f32."""

    name = "openvino"

    def __init__(
        self, model_path: Path, threads: int | None = None, onnx_path: Path | None = None, precision: str = "auto"
    ) -> None:
        try:
            import openvino as ov
        except ImportError as err:
            raise ModelError("the openvino engine needs OpenVINO: pip install openvino") from err
        from segmentation.onnx_files import current_onnx, onnx_meta

        if precision not in PRECISIONS:
            raise ModelError(f"precision {precision!r}: valid values are {', '.join(PRECISIONS)}")
        onnx_file, sha = current_onnx(model_path, onnx_path)
        self.meta, spec = onnx_meta(onnx_file, sha)
        self.stride, self.in_channels, self.input_norm = spec.stride, spec.in_channels, spec.input_norm
        self._threads = threads if threads is not None else max(1, min(os.cpu_count() or 1, 4))
        self._core = ov.Core()
        try:
            self._model = self._core.read_model(str(onnx_file))
        except Exception as err:  # OpenVINO raises its own untyped errors
            raise ModelError(f"{onnx_file}: OpenVINO cannot read it ({err})") from err
        self._version = str(ov.__version__)
        self.agreement: Agreement | None = None
        self.precision = self._choose(precision, sha)
        self._compiled = self._compile(self.precision)
        self._local = threading.local()  # an infer request per thread: printers are judged on threads of their own

    def _capable(self) -> bool:
        """bf16 natively: the CPU's flags say so, and OpenVINO's CPU plugin offers it."""
        try:
            caps = self._core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
        except Exception:  # an older plugin that cannot say
            caps = []
        return cpu_info().bf16 and "BF16" in caps

    def _choose(self, precision: str, sha: str) -> str:
        if precision == "f32" or (precision == "auto" and not self._capable()):
            return "f32"
        # bf16 (asked for, or auto on a CPU that computes it): only if its classes agree with f32's
        cpu = cpu_info()
        key = hashlib.sha256(f"{sha}|bf16|{cpu.name}|{sorted(cpu.flags)}|{self._version}".encode()).hexdigest()[:24]
        cached = _cache_file(key)
        agreement: Agreement | None = None
        try:
            data = json.loads(cached.read_text())
            agreement = Agreement(**data)
        except (OSError, ValueError, TypeError):
            pass
        if agreement is None:
            agreement = check_agreement(self._compile, self.in_channels, self.input_norm, "bf16")
            try:
                cached.parent.mkdir(parents=True, exist_ok=True)
                cached.write_text(json.dumps(asdict(agreement)))
            except OSError as err:  # checked again next time
                log.debug("precision check not kept in %s: %s", cached, err)
        self.agreement = agreement
        if not agreement.admitted:
            log.warning("openvino: %s; running f32", agreement.describe())
            return "f32"
        return "bf16"

    def _compile(self, precision: str) -> Any:
        config = {
            "INFERENCE_PRECISION_HINT": precision,
            "INFERENCE_NUM_THREADS": self._threads,
            "PERFORMANCE_HINT": "LATENCY",
        }
        try:
            return self._core.compile_model(self._model, "CPU", config)
        except Exception as err:
            raise ModelError(f"OpenVINO cannot compile the model for the CPU in {precision} ({err})") from err

    def describe(self) -> str:
        """Which precision runs, and why (the CPU, the agreement check)."""
        cpu = cpu_info().describe()
        if self.agreement is None:
            return f"openvino {self.precision} on {cpu}"
        return f"openvino {self.precision} on {cpu}; {self.agreement.describe()}"

    def __call__(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self._compiled.create_infer_request()
        out = request.infer({0: x}, share_inputs=True)  # outputs are copies: a Segmentation outlives the call
        return np.asarray(out[self._compiled.outputs[0]]), np.asarray(out[self._compiled.outputs[1]])

    def close(self) -> None:
        self._compiled = None
        self._local = threading.local()
