"""ORNL Peregrine's classes onto ours, and a layer's class mask from any build file's per-class masks."""

from __future__ import annotations

import h5py
import numpy as np

from monitor.record.layout import MASKS, images_path

# ORNL Peregrine's 12 classes (the numbering of its /slices/segmentation_results/<id>) onto ours. Peregrine
# judges the powder bed, we judge parts: spreading anomalies are powder here (not a part defect), swelling and
# super-elevation (material standing above the layer) are warping, debris and spatter (soot) are spatter,
# over- and under-melting (keyhole and lack-of-fusion) are porosity, a misprint is part. docs/record.md.
PEREGRINE_CLASSES = (
    "Powder", "Printed", "Recoater Hopping", "Recoater Streaking", "Incomplete Spreading", "Swelling", "Debris",
    "Super-Elevation", "Spatter", "Misprint", "Over Melting", "Under Melting",
)  # fmt: skip
PEREGRINE_TO_OURS = (0, 1, 0, 0, 0, 4, 3, 4, 3, 1, 2, 2)


def _class_map(f: h5py.File) -> dict[int, int]:
    """Each mask id of the file -> our class id: ours as they are; a Peregrine file's 12 classes mapped."""
    ids = sorted(int(k) for k in f[MASKS] if k.isdigit())
    named = f[MASKS].attrs.get("class_names")
    names = [n.decode() if isinstance(n, bytes) else str(n) for n in named] if named is not None else []
    peregrine = names[:2] == list(PEREGRINE_CLASSES[:2]) or (not names and ids and max(ids) >= 5)
    if peregrine and f.attrs.get("layerwatch/schema_version") is None:
        lookup = {n.lower(): PEREGRINE_TO_OURS[i] for i, n in enumerate(PEREGRINE_CLASSES)}
        if names:
            return {i: lookup.get(names[i].lower(), 0) for i in ids if i < len(names)}
        return {i: PEREGRINE_TO_OURS[i] for i in ids if i < len(PEREGRINE_TO_OURS)}
    return {i: i for i in ids}


def class_sources(f: h5py.File) -> dict[int, list[int]]:
    """Our class id -> the file's mask ids that make it (one each in our files; several in a Peregrine file)."""
    out: dict[int, list[int]] = {}
    for source, ours in _class_map(f).items():
        out.setdefault(ours, []).append(source)
    return out


def layer_class(f: h5py.File, cls: int, layer: int) -> np.ndarray:
    """(H, W) bool: where ``layer`` is of our class ``cls`` in a build file (ours, or a Peregrine file's)."""
    out = np.zeros(f[images_path(f)].shape[1:], dtype=bool)
    for source in class_sources(f).get(cls, []):
        out |= np.asarray(f[f"{MASKS}/{source}"][layer]).astype(bool)
    return out


def class_mask(f: h5py.File, layer: int) -> np.ndarray:
    """(H, W) uint8 class ids of ``layer`` (ours), from the build file's per-class masks; where masks overlap,
    the higher of our ids wins (a defect over the part it is on)."""
    out = np.zeros(f[images_path(f)].shape[1:], dtype=np.uint8)
    mapping = _class_map(f)
    for source, ours in sorted(mapping.items(), key=lambda kv: kv[1]):
        if ours:
            out[np.asarray(f[f"{MASKS}/{source}"][layer]).astype(bool)] = ours
    return out
