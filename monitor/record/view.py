"""The read side of a record, one for its writer (the monitor checking what it stored) and its readers (the
dashboard, reports, replays, stock-tool users): the same names, the same answers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from monitor.record.layout import (
    ILLUMINATION,
    LW,
    MASKS,
    OPTIONAL_TABLES,
    PART_IDS,
    SAMPLE_IDS,
    SHADOW,
    RecordError,
    _py,
    _rows,
)  # fmt: skip
from monitor.record.peregrine import class_mask
from printer_io.vocabulary import Severity

__all__ = ["RecordView"]


class RecordView:
    """Reading an open record file (``_f``, frames at ``_images``). A reader of a live record refreshes what it
    reads (``_refresh``); the writer reads what it wrote."""

    path: Path
    _f: h5py.File
    _images: str

    def _refresh(self, dataset: h5py.Dataset) -> None:
        """See a live record's newest rows of ``dataset`` (readers under SWMR; the writer has them)."""

    # ---- what the record is -------------------------------------------------------------------------
    @property
    def attrs(self) -> dict[str, Any]:
        return {k: (v.decode() if isinstance(v, bytes) else v) for k, v in self._f.attrs.items()}

    @property
    def job_id(self) -> str:
        return str(_py(self._f.attrs.get(f"{LW}/job_id", "")))

    @property
    def class_names(self) -> list[str]:
        return [str(_py(n)) for n in self._f.attrs[f"{LW}/class_names"]]

    @property
    def frame_size(self) -> tuple[int, int]:
        """(height, width) of the frames, px."""
        h, w = self._f[self._images].shape[1:]
        return int(h), int(w)

    @property
    def state(self) -> str:
        return bytes(self._f[f"{LW}/state"][()]).decode().strip()

    @property
    def has_shadow(self) -> bool:
        return SHADOW in self._f

    def json_attr(self, name: str) -> Any:
        """A JSON attribute of the record (``layerwatch/<name>``), or None where it has none."""
        raw = self._f.attrs.get(f"{LW}/{name}")
        return json.loads(raw) if raw is not None else None

    # ---- layers -------------------------------------------------------------------------------------
    def layer_rows(self) -> np.ndarray:
        """The ``layers`` table (one row per layer index: stored, arrival time, frame quality, judged)."""
        return np.asarray(self._f[f"{LW}/layers"][:])

    layers = layer_rows

    def _slices(self) -> list[str]:
        return [self._images, PART_IDS, *(f"{MASKS}/{c}" for c in range(len(self.class_names)))]

    def stored_layers(self) -> np.ndarray:
        """Layers stored and visible here. Under SWMR a reader refreshes each dataset on its own, so it may see a
        layer's stored flag before the frame datasets that grew for it: such a layer is left for the next
        refresh rather than read past the end of a dataset."""
        rows = self.layer_rows()
        if not rows.shape[0]:
            return np.zeros(0, dtype=np.int64)
        visible = min(self._f[name].shape[0] for name in self._slices())
        return np.flatnonzero(rows["stored"][:visible])

    def is_stored(self, layer: int) -> bool:
        rows = self._f[f"{LW}/layers"]
        return 0 <= layer < rows.shape[0] and bool(rows[layer]["stored"])

    def stored_layer(self, layer: int) -> dict[str, Any]:
        """What was stored for ``layer``: metrics, parts (rows), judged, severity, z_mm, captured_at."""
        f = self._f
        row = f[f"{LW}/layers"][layer]
        m = f[f"{LW}/metrics"][layer]
        parts_table = f[f"{LW}/part_metrics"]
        parts = parts_table[:][parts_table["layer"][:] == layer] if parts_table.shape[0] else []
        return {
            "metrics": {n: float(m[n]) for n in m.dtype.names or ()},
            "parts": [{n: float(p[n]) for n in p.dtype.names if n != "layer"} for p in parts],
            "judged": bool(row["judged"]),
            "severity": Severity.from_index(int(row["severity"])),
            "z_mm": float(row["z_mm"]),
            "captured_at": float(row["captured_at"]),
        }

    def _slice(self, name: str, layer: int) -> np.ndarray:
        d = self._f[name]
        if layer >= d.shape[0]:
            self._refresh(d)
        if not 0 <= layer < d.shape[0]:
            raise RecordError(f"{self.path}: layer {layer} is not stored (the record has {d.shape[0]} rows)")
        return np.asarray(d[layer])

    def image(self, layer: int) -> np.ndarray:
        """The stored frame of ``layer``."""
        return self._slice(self._images, layer)

    def mask(self, layer: int) -> np.ndarray:
        """(H, W) uint8 class ids of ``layer``, from the per-class masks."""
        self._slice(f"{MASKS}/0", layer)  # bounded (and refreshed) like every slice read
        return class_mask(self._f, layer)

    def part_ids(self, layer: int) -> np.ndarray:
        return self._slice(PART_IDS, layer)

    def sample_ids(self, layer: int) -> np.ndarray | None:
        """The printer's own part ids of ``layer`` (None where its frame carried none)."""
        samples = self._slice(SAMPLE_IDS, layer) if SAMPLE_IDS in self._f else None
        return samples if samples is not None and samples.any() else None

    def layer_for_restart(self, layer: int) -> tuple[np.ndarray, np.ndarray | None]:
        """The stored class ids and the printer's part ids (None where the frame had none) of ``layer``: what a
        monitor that continues this build feeds its running state with (monitor.opening)."""
        return self.mask(layer), self.sample_ids(layer)

    def illumination(self) -> tuple[np.ndarray, int] | None:
        """The reference lighting the frames were flat-fielded by and the first layer it was used on, or None."""
        f = self._f
        if f"{LW}/{ILLUMINATION}_from" not in f:
            return None
        self._refresh(f[f"{LW}/{ILLUMINATION}_from"])
        self._refresh(f[f"{LW}/{ILLUMINATION}"])
        start = int(f[f"{LW}/{ILLUMINATION}_from"][0])
        if start < 0:
            return None
        illum = np.asarray(f[f"{LW}/{ILLUMINATION}"][...])
        return (illum, start) if illum.shape == self.frame_size and np.isfinite(illum).all() else None

    def seen_image(self, layer: int) -> np.ndarray:
        """The frame of ``layer`` as the model saw it: flat-fielded by the reference lighting where it was
        (float32 in [0, 1])."""
        from segmentation.preprocess import flat_field, to_gray_float

        gray = to_gray_float(self.image(layer))
        ref = self.illumination()
        return flat_field(gray, ref[0]) if ref is not None and layer >= ref[1] else gray

    # ---- the shadow model ---------------------------------------------------------------------------
    @property
    def shadow_model(self) -> dict[str, str] | None:
        """The shadow model that ran beside the model in use ({"id", "sha256"}), or None."""
        raw = self._f.attrs.get(f"{LW}/shadow_model")
        return json.loads(raw) if raw is not None and SHADOW in self._f else None

    def shadow_layers(self) -> dict[int, dict[str, Any]]:
        """The shadow model's judgement per layer: severity, disagree (share of pixels), would_act, rules."""
        if SHADOW not in self._f:
            return {}
        out = {}
        for row in self._f[f"{SHADOW}/layers"][:]:
            try:
                rules = json.loads(_py(row["rules"]))
            except ValueError:
                rules = []
            out[int(row["layer"])] = {
                "severity": Severity.from_index(int(row["severity"])),
                "disagree": float(row["disagree"]),
                "would_act": bool(row["would_act"]),
                "rules": rules,
            }
        return out

    def shadow_mask(self, layer: int) -> np.ndarray | None:
        """(H, W) class ids the shadow model gave ``layer``, or None where it did not judge it."""
        if SHADOW not in self._f or layer not in self.shadow_layers():
            return None
        return self._slice(f"{SHADOW}/mask", layer)

    def shadow_masks(self) -> dict[int, np.ndarray]:
        """The shadow model's masks by layer, for the layers it judged (empty without a shadow)."""
        if SHADOW not in self._f:
            return {}
        judged = sorted(self.shadow_layers())
        rows = self._f[f"{SHADOW}/mask"].shape[0]
        return {n: self._slice(f"{SHADOW}/mask", n) for n in judged if n < rows}

    # ---- tables -------------------------------------------------------------------------------------
    def metrics(self) -> np.ndarray:
        return np.asarray(self._f[f"{LW}/metrics"][:])

    def part_metrics(self) -> np.ndarray:
        return np.asarray(self._f[f"{LW}/part_metrics"][:])

    def table(self, name: str) -> list[dict[str, Any]]:
        """Rows of a table (metrics, part_metrics, events, actions, feedback, telemetry, labels) as dicts; a table
        this record was made without is empty."""
        if name in OPTIONAL_TABLES and name not in self._f[LW]:
            return []
        return _rows(self._f[f"{LW}/{name}"][:])

    def table_at(self, name: str, layer: int) -> list[dict[str, Any]]:
        """The rows of ``name`` (a table with a ``layer`` column) about ``layer``: only their layer column is read
        whole, not every row's text (an action row holds up to 8 KB)."""
        if name in OPTIONAL_TABLES and name not in self._f[LW]:
            return []
        d = self._f[f"{LW}/{name}"]
        at = np.flatnonzero(d.fields("layer")[:] == layer)
        return _rows(d[at.tolist()]) if len(at) else []
