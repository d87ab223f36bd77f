"""Camera sources that need the segmentation package: the layer simulator as a camera.

``printer_io`` knows nothing of the simulator (the packages are independent), so the monitor
registers it by name in printer_io's source registry.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

from printer_io.camera import register_source
from printer_io.errors import CaptureError
from printer_io.messages import LayerEvent

__all__ = ["SIMULATED_CAMERA_SEED", "SimulatorSource", "register"]

#: the simulated camera's build by default: a plate between chamber walls on three sides (the plate proposal
#: finds it: IoU 0.94 with the true plate), five parts, 0.099 mm a pixel, and defects that grow as in a real build
SIMULATED_CAMERA_SEED = 20261217


class SimulatorSource:
    """Renders layer N of a seeded simulated build as the frame (BGR, as a camera would deliver it)."""

    name = "simulator"

    def __init__(
        self,
        seed: int = SIMULATED_CAMERA_SEED,
        size: int = 512,
        layers: int = 40,
        spec: Any = None,
        defects: bool = False,
    ) -> None:
        """A random build of ``seed``, or the given :class:`segmentation.simulator.BuildSpec` (a scenario).
        ``defects``: the random build keeps its pores and warps; without, it is a clean build (spatter only), so
        a site tried with the simulated camera prints its job through unless something is wrong."""
        from dataclasses import replace

        from segmentation.simulator import SimBuild, random_spec

        if spec is not None:
            seed, size, layers = spec.seed, spec.height, spec.n_layers
        elif not defects:
            spec = replace(random_spec(seed, size, size, layers), pores=(), warps=())
        self.layers = layers
        self.build = SimBuild(seed, size, size, layers, spec=spec)
        self._last: tuple[int, Any] | None = None  # image and part ids of a layer are rendered once

    @property
    def mm_per_px(self) -> float:
        """The simulated camera's scale: the record says what the frames show."""
        return float(self.build.spec.mm_per_px)

    def open(self) -> None:
        pass

    def grab(self, event: LayerEvent) -> np.ndarray:
        if event.layer >= self.layers:
            raise CaptureError(f"the simulated build has {self.layers} layers, none for layer {event.layer}")
        image = self._layer(event.layer).image
        if image.ndim == 3:
            image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
        return np.ascontiguousarray(image)

    def part_ids(self, event: LayerEvent) -> np.ndarray | None:
        """The simulator knows every pixel's part: (H, W) ids, 0 where no part."""
        if event.layer >= self.layers:
            return None
        return np.asarray(self._layer(event.layer).part_ids)

    def _layer(self, index: int) -> Any:
        if self._last is None or self._last[0] != index:
            self._last = (index, self.build.layer(index))
        return self._last[1]

    def close(self) -> None:
        pass


def register() -> None:
    register_source("simulator", SimulatorSource)
