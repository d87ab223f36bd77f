"""Turning a printer's Z moves or G-code position into "layer N is complete".

Two sources of truth, best first:

- :class:`GcodeLayerMap`: the slicer's layer markers (``;LAYER:N`` from Cura, ``;LAYER_CHANGE`` + ``;Z:z``
  from PrusaSlicer/OrcaSlicer/SuperSlicer) with their byte offsets. The printer's file position tells
  which layer runs; when it passes the next marker, the previous layer is complete.
- :class:`ZLayerFilter`: for files without markers. OctoPrint's ``ZChange`` fires on every Z move,
  Z-hops included. A rise above the current layer is only *pending* until it is confirmed: by a further
  rise from it (the next hop or layer), or by staying there ``confirm_s``. Coming back down to the
  current layer cancels it (a hop); coming down to a height between the two replaces it (a hop before
  a layer change). Heights below the first layer before any layer completed (homing, priming) reset it.
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass

__all__ = ["FileposLayerTracker", "GcodeLayerMap", "LayerChange", "ZLayerFilter"]


@dataclass(frozen=True)
class LayerChange:
    """Layer ``layer`` (from 0) is complete; it was printed at ``z_mm``."""

    layer: int
    z_mm: float


class ZLayerFilter:
    """Feed it Z heights (``on_z``) and clock ticks (``on_tick``); it returns the completed layers."""

    def __init__(
        self, *, min_step_mm: float = 0.02, confirm_s: float = 3.0, eps_mm: float = 0.005, min_layer_z_mm: float = 0.04
    ) -> None:
        self.min_step_mm = min_step_mm
        self.min_layer_z_mm = min_layer_z_mm
        self.confirm_s = confirm_s
        self.eps = eps_mm
        self.reset()

    def reset(self) -> None:
        self.current: float | None = None
        self.pending: float | None = None
        self.pending_since = 0.0
        self.completed = 0

    def on_z(self, z: float, t: float) -> list[LayerChange]:
        out = self.on_tick(t)
        if self.current is None or (self.completed == 0 and self.current < self.min_layer_z_mm):
            self.current, self.pending = z, None  # homed at Z=0: nothing printed down there yet
            return out
        if z <= self.current + self.eps:
            if self.completed == 0 and z < self.current - self.eps:
                self.current = z  # still positioning before the first layer
            self.pending = None  # back down: what rose was a hop
            return out
        if z < self.current + self.min_step_mm:
            return out
        if self.pending is None or z < self.pending - self.eps:
            self.pending, self.pending_since = z, t  # first rise, or a lower one after a hop
        elif z > self.pending + self.eps:
            out.extend(self._confirm())  # rose again from the pending height: it was a layer
            self.pending, self.pending_since = z, t
        return out

    def on_tick(self, t: float) -> list[LayerChange]:
        if self.pending is not None and t - self.pending_since >= self.confirm_s:
            return self._confirm()
        return []

    def finish(self) -> list[LayerChange]:
        """The job ended: the layer in progress is complete (and a pending rise was not a layer)."""
        if self.current is None:
            return []
        change = LayerChange(self.completed, self.current)
        self.reset()
        return [change]

    def _confirm(self) -> list[LayerChange]:
        assert self.current is not None and self.pending is not None
        change = LayerChange(self.completed, self.current)
        self.completed += 1
        self.current, self.pending = self.pending, None
        return [change]


_CURA = re.compile(rb"^;LAYER:(-?\d+)\s*$", re.M)
_PRUSA = re.compile(rb"^;LAYER_CHANGE\s*$", re.M)
_ZCOMMENT = re.compile(rb"^;Z:(-?\d+(?:\.\d+)?)\s*$", re.M)
_GZ = re.compile(rb"^G[01]\b[^;\n]*\bZ(-?\d+(?:\.\d+)?)", re.M)


class GcodeLayerMap:
    """Byte offsets of the layer markers of one G-code file, and the Z of each layer where it is known."""

    def __init__(self, offsets: list[int], z_mm: list[float | None]) -> None:
        self.offsets = offsets
        self.z_mm = z_mm

    @classmethod
    def parse(cls, data: bytes) -> GcodeLayerMap:
        offsets: list[int] = []
        for m in _CURA.finditer(data):
            if int(m.group(1)) >= 0:  # Cura's raft layers are negative
                offsets.append(m.start())
        if not offsets:
            offsets = [m.start() for m in _PRUSA.finditer(data)]
        z: list[float | None] = []
        for i, start in enumerate(offsets):
            end = offsets[i + 1] if i + 1 < len(offsets) else len(data)
            chunk = data[start:end]
            found = _ZCOMMENT.search(chunk) or _GZ.search(chunk)
            z.append(float(found.group(1)) if found else None)
        return cls(offsets, z)

    def __len__(self) -> int:
        return len(self.offsets)

    def layer_at(self, filepos: int) -> int:
        """Index of the layer being printed at byte ``filepos`` (-1 before the first marker)."""
        return bisect.bisect_right(self.offsets, filepos) - 1


class FileposLayerTracker:
    """Reports the layers completed as the printer's file position passes the markers of a :class:`GcodeLayerMap`."""

    def __init__(self, layer_map: GcodeLayerMap) -> None:
        self.map = layer_map
        self.current = -1

    def on_filepos(self, filepos: int) -> list[LayerChange]:
        layer = self.map.layer_at(filepos)
        out: list[LayerChange] = []
        while self.current < layer:
            if self.current >= 0:
                out.append(LayerChange(self.current, self.map.z_mm[self.current] or 0.0))
            self.current += 1
        return out

    def finish(self) -> list[LayerChange]:
        """The job completed: every layer not reported yet is done (file positions arrive rate-limited,
        so the last markers may never have been seen)."""
        if self.current >= len(self.map):
            return []
        out = [LayerChange(n, self.map.z_mm[n] or 0.0) for n in range(max(self.current, 0), len(self.map))]
        self.current = len(self.map)
        return out
