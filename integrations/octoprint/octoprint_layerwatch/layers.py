"""When a layer is complete, from inside OctoPrint: the G-code OctoPrint sends, line by line.

Two sources, best first:

- ``@layerwatch`` host commands. OctoPrint never sends a line that starts with ``@`` to the printer; it hands it to
  the plugins at the moment it would have sent it, so the command marks an exact place in the print. Uploads are
  marked at the slicers' layer markers (``;LAYER:N`` from Cura, ``;LAYER_CHANGE`` from PrusaSlicer, OrcaSlicer and
  SuperSlicer; :func:`mark_layers`), and a user may put ``@layerwatch`` into a slicer's layer-change G-code. The
  command that starts layer N completes layer N - 1.
- Without them, the moves: a layer is complete when the printer extrudes at a greater height. A Z-hop raises Z
  but extrudes nothing up there, so it never counts; a purge line above the first layer is forgotten when the
  first layer starts lower.

A layer's height is the greatest height the printer extruded at in it (where it extruded nothing: its Z when it
was done).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["COMMAND", "LayerChange", "LayerMarker", "LayerTracker", "parse_command"]

COMMAND = "layerwatch"
MAX_LAYER = 1_000_000

_CURA = re.compile(rb"^;LAYER:(-?\d+)\s*$")
_PRUSA = re.compile(rb"^;LAYER_CHANGE\s*$")
_WORD = re.compile(r"([XYZEF])\s*(-?\d*\.?\d+)")


@dataclass(frozen=True)
class LayerChange:
    """Layer ``layer`` (from 0) is complete; it was printed at ``z_mm``."""

    layer: int
    z_mm: float


class LayerMarker:
    """Adds ``@layerwatch layer N`` after each slicer layer marker of a G-code file, line by line (Cura's raft
    layers, numbered below 0, are left alone). The same command found right after a marker (a file marked before,
    uploaded again) is dropped, so nothing is marked twice; a file with ``@layerwatch`` commands of its own (a
    slicer's layer-change G-code) is left as it is from the first of them on."""

    def __init__(self) -> None:
        self.prusa = 0
        self.own = False
        self.added = b""  # the command just added after a marker

    def line(self, line: bytes) -> bytes:
        """The line, with its command after it where it is a marker; ``b""`` where the line is to be dropped."""
        stripped = line.strip()
        added, self.added = self.added, b""
        if self.own:
            return line
        if stripped.startswith(b"@" + COMMAND.encode()):
            if stripped == added:
                return b""
            self.own = True
            return line
        m = _CURA.match(stripped)
        n = int(m.group(1)) if m is not None else -1
        if m is None and _PRUSA.match(stripped):
            n, self.prusa = self.prusa, self.prusa + 1
        if not 0 <= n <= MAX_LAYER:
            return line
        self.added = b"@%s layer %d" % (COMMAND.encode(), n)
        return line + (b"" if line.endswith(b"\n") else b"\n") + self.added + b"\n"


def parse_command(parameters: str) -> int | None:
    """The layer an ``@layerwatch`` command starts: ``layer N`` gives N, no parameters the next one (None).
    Anything else raises ValueError with what was expected."""
    words = parameters.split()
    if not words:
        return None
    if len(words) == 2 and words[0].lower() == "layer" and words[1].isdigit() and int(words[1]) <= MAX_LAYER:
        return int(words[1])
    raise ValueError(f"@{COMMAND} {parameters[:80]!r}: expected '@{COMMAND}' or '@{COMMAND} layer N' (N from 0)")


class LayerTracker:
    """Follows one job's G-code as OctoPrint sends it and calls ``on_layer(LayerChange)`` for every layer done.

    ``markers``: the job's file carries ``@layerwatch`` commands, which alone then say when a layer is done;
    otherwise extrusion at a greater height does. Not thread-safe: call it from OctoPrint's sending thread only.
    """

    def __init__(self, on_layer: Callable[[LayerChange], None], *, markers: bool, min_step_mm: float = 0.02) -> None:
        self.on_layer = on_layer
        self.markers = markers
        self.min_step = min_step_mm
        self.position = {"Z": 0.0, "E": 0.0}
        self.absolute = True  # G90 / G91 for X, Y, Z
        self.absolute_e = True  # M82 / M83 (G90 / G91 set both)
        self.layer_z: float | None = None  # the height of the layer in progress, once it extruded
        self.started: int | None = None  # markers: the layer the last command started
        self.completed = 0  # moves: layers done so far
        self.last: LayerChange | None = None

    def start_job(self) -> None:
        """A new job: its layers count from 0; the modal state (positions, G90/G91, M82/M83) goes on."""
        self.markers = False
        self.layer_z = None
        self.started = None
        self.completed = 0
        self.last = None

    # ---- what OctoPrint sends ------------------------------------------------------------------------
    def on_gcode(self, gcode: str | None, line: str) -> None:
        """One line as sent (comments already stripped by OctoPrint), ``gcode`` its code (``G1``, ``M83``)."""
        if gcode in ("G0", "G1"):
            self._move(line)
        elif gcode == "G90":
            self.absolute = self.absolute_e = True
        elif gcode == "G91":
            self.absolute = self.absolute_e = False
        elif gcode == "M82":
            self.absolute_e = True
        elif gcode == "M83":
            self.absolute_e = False
        elif gcode == "G92":
            for axis, value in _WORD.findall(line):
                if axis in self.position:
                    self.position[axis] = float(value)
        elif gcode == "G28":
            self.position["Z"] = 0.0

    def on_command(self, layer: int | None) -> None:
        """An ``@layerwatch`` command: layer ``layer`` (or the next one) starts, so the one before is done."""
        nxt = layer if layer is not None else (0 if self.started is None else self.started + 1)
        if self.started is not None and nxt > self.started:
            self._done(self.started, self.layer_z if self.layer_z is not None else self.position["Z"])
        if self.started is None or nxt > self.started:
            self.started = nxt
            self.layer_z = None

    def finish(self) -> LayerChange | None:
        """The job printed to its end: the layer in progress is done too."""
        if self.markers:
            if self.started is None:
                return None
            z = self.layer_z if self.layer_z is not None else self.position["Z"]
            change = self._done(self.started, z)
            self.started = None
            return change
        if self.layer_z is None:
            return None
        change = self._done(self.completed, self.layer_z)
        self.layer_z = None
        return change

    # ---- inside -------------------------------------------------------------------------------------
    def _move(self, line: str) -> None:
        words = dict(_WORD.findall(line))
        z = self.position["Z"]
        if "Z" in words:
            z = float(words["Z"]) if self.absolute else z + float(words["Z"])
            self.position["Z"] = z
        extruded = False
        if "E" in words:
            e = float(words["E"])
            delta = e - self.position["E"] if self.absolute_e else e
            self.position["E"] = e if self.absolute_e else self.position["E"] + e
            extruded = delta > 0 and ("X" in words or "Y" in words)  # a move that lays material, not a prime
        if not extruded:
            return
        if self.markers:
            if self.started is not None and (self.layer_z is None or z > self.layer_z):
                self.layer_z = z
            return
        if self.layer_z is None:
            self.layer_z = z
        elif z >= self.layer_z + self.min_step:
            self._done(self.completed, self.layer_z)
            self.completed += 1
            self.layer_z = z
        elif z < self.layer_z and self.completed == 0:
            self.layer_z = z  # a purge line above the first layer: the first layer is where it prints

    def _done(self, layer: int, z: float) -> LayerChange:
        change = LayerChange(layer, round(z, 4))
        self.last = change
        self.on_layer(change)
        return change
