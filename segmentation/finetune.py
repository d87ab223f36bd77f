"""``layerwatch finetune``: teach the model a user's own camera from a few labelled frames, in minutes.

Labels are PNG masks of class ids (0 powder, 1 part, 2 porosity, 3 spatter, 4 warping) with two more
values: 254 "no defect here" (powder or part, which one not said) and 255 "not labelled" (ignored). A
frame marked clean is all 254; a brushed pore is 2 inside 255. Fine-tuning starts from the shipped (or
given) model, mixes simulated layers so that what the simulator taught is kept, stops within the time
given, and writes ``OUT/model.pt`` (and its ONNX twin) with ``OUT/MODEL_CARD.md``: the base model, a hash
of the data, the label counts and held-out simulator figures before and after.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from segmentation.classes import CLASS_NAMES, DEFECT_CLASSES, MISTAKEN, NO_DEFECT, NUM_CLASSES, UNLABELLED, LayerClass
from segmentation.errors import SegmentationError

__all__ = ["FinetuneError", "FinetuneOptions", "check_labels", "finetune"]

_MAX_BOOST = 2.0  # a rare labelled defect's loss weight is raised at most this much (8x: pores everywhere)
_STEP_MARGIN = 1.1  # a step is a little more than the network's (its batch is made by a thread meanwhile)
_WARM_STEPS = 2  # the first steps set up the CPU's kernels: slower, not timed
_VALUE_NAMES = {**dict(enumerate(CLASS_NAMES)), NO_DEFECT: "no defect here", UNLABELLED: "not labelled"}


class FinetuneError(SegmentationError):
    """The labels or the options cannot give a model; the message says which file or value."""


@dataclass(frozen=True)
class FinetuneOptions:
    images: Path
    masks: Path
    out: Path
    minutes: float = 15.0
    base: Path | None = None  # None: the shipped model
    sim_share: float = 0.7  # share of each batch from simulated layers: keeps what the simulator taught
    sim_layers: int = 200
    seed: int = 0
    # smaller than a real run only in tests
    frame: int = 512
    crop: int = 256
    batch: int = 12
    heldout_layers: int = 16
    steps: int | None = None  # a fixed number of steps (reproducible anywhere); None: as many as the minutes allow
    holdout: float = 0.2  # this share of your labelled frames (by build) is held out to tell whether it learnt
    lr: float = 5e-4
    encoder_lr_scale: float = 0.1  # the encoder learns at this share of the learning rate: it stays close
    anchor: float = 30.0  # every weight is pulled back towards the base model's (TrainConfig.anchor)
    distill: float = 0.0  # >0: the simulated crops' outputs are pulled to the base model's (TrainConfig.distill)


def check_labels(images: Path, masks: Path) -> tuple[list[tuple[Path, Path]], Counter[int]]:
    """Pairs (image, mask) with the same name, every mask checked; pixel counts per label value."""
    from segmentation.imageio import iter_image_paths, read_image

    if not images.is_dir():
        raise FinetuneError(f"--images {images}: not a folder of images")
    if not masks.is_dir():
        raise FinetuneError(f"--masks {masks}: not a folder of PNG masks")
    allowed = set(range(NUM_CLASSES)) | {NO_DEFECT, UNLABELLED}
    pairs: list[tuple[Path, Path]] = []
    counts: Counter[int] = Counter()
    for item in iter_image_paths([images]):
        if isinstance(item, Exception):
            raise FinetuneError(str(item))
        mask_path = masks / f"{item.stem}.png"
        if not mask_path.is_file():
            raise FinetuneError(f"{item}: no mask {mask_path} (masks are PNGs named like their image)")
        m = cv2.imread(str(mask_path), cv2.IMREAD_UNCHANGED)
        if m is None or m.ndim != 2:
            raise FinetuneError(f"{mask_path}: not a one-channel PNG of label values")
        shape = read_image(item).shape[:2]
        if m.shape != shape:
            raise FinetuneError(f"{mask_path}: {m.shape[1]}x{m.shape[0]} px, its image {shape[1]}x{shape[0]} px")
        values, n = np.unique(m, return_counts=True)
        bad = sorted(int(v) for v in values if int(v) not in allowed)
        if bad:
            raise FinetuneError(
                f"{mask_path}: label value(s) {bad[:5]}; use 0-{NUM_CLASSES - 1} (classes), "
                f"{NO_DEFECT} (no defect here) or {UNLABELLED} (not labelled)"
            )
        counts.update({int(v): int(c) for v, c in zip(values, n, strict=True)})
        pairs.append((item, mask_path))
    if not pairs:
        raise FinetuneError(f"--images {images}: no image with a mask in {masks}")
    if sum(c for v, c in counts.items() if v != UNLABELLED) == 0:
        raise FinetuneError(f"--masks {masks}: every pixel is {UNLABELLED} (not labelled); nothing to learn")
    return pairs, counts


def _data_hash(pairs: list[tuple[Path, Path]]) -> str:
    h = hashlib.sha256()
    for image, mask in sorted(pairs):
        for p in (image, mask):
            h.update(p.name.encode())
            h.update(hashlib.sha256(p.read_bytes()).digest())
    return h.hexdigest()


def _stage(pairs: list[tuple[Path, Path]], folder: Path) -> Path:
    """The labelled folder layout training reads (images/ + masks/), as links to the user's files."""
    for sub in ("images", "masks"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    for image, mask in pairs:
        for src, dst in (
            (image, folder / "images" / f"user-{image.name}"),
            (mask, folder / "masks" / f"user-{mask.name}"),
        ):
            if dst.is_symlink() or dst.exists():
                dst.unlink()
            dst.symlink_to(src.resolve())
    return folder


def _mark_mistakes(base: Path, folder: Path) -> int:
    """Where the model a fine-tune starts from calls a defect on a "no defect here" pixel of the staged labels
    (``folder``: images/ + masks/), the pixel becomes MISTAKEN (trained as "no defect here", weighed double, and
    crops centre on it): a few labels teach what the model gets wrong, not only what it misses. Returns the
    number of such pixels. The user's own files are never changed (a changed mask replaces its staged link)."""
    from segmentation.imageio import iter_image_paths, read_image
    from segmentation.inference import Segmenter

    total = 0
    with Segmenter(base, engine="onnx") as seg:
        for item in iter_image_paths([folder / "images"]):
            if isinstance(item, Exception):
                continue
            mask_path = folder / "masks" / f"{item.stem}.png"
            m = cv2.imread(str(mask_path), cv2.IMREAD_UNCHANGED)
            if m is None or not (m == NO_DEFECT).any():
                continue
            wrong = (m == NO_DEFECT) & (seg.segment(read_image(item)).mask >= 2)
            if wrong.any():
                m = m.copy()
                m[wrong] = MISTAKEN
                mask_path.unlink()
                cv2.imwrite(str(mask_path), m)
                total += int(np.count_nonzero(wrong))
    return total


def _step_seconds(model: Any, in_channels: int, batch: int, crop: int, distilled: int = 0) -> float:
    """Seconds one training step of the network takes here (the learning-rate schedule is sized by it), with
    the base model's forward pass over ``distilled`` of the batch's crops (the distillation's teacher)."""
    import torch

    from segmentation.train import resolve_precision

    model.train()
    model = model.to(memory_format=torch.channels_last)  # as training runs it: channels-last, bf16 where native
    bf16 = resolve_precision("auto") == "bf16"
    x = torch.randn(batch, in_channels, crop, crop).contiguous(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    teacher = copy.deepcopy(model).eval() if distilled else None  # as training runs it: a second model, in eval
    times = []
    for _ in range(_WARM_STEPS + 4):
        t = time.perf_counter()
        opt.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = model(x).float()
        out.mean().backward()
        opt.step()
        if teacher is not None:
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                teacher(x[:distilled])
        times.append(time.perf_counter() - t)
    return float(np.median(times[_WARM_STEPS:])) * _STEP_MARGIN


def _heldout(model: Path, layers: int, size: int, features: frozenset[str]) -> dict[str, float]:
    from segmentation.evaluate import evaluate_simulated
    from segmentation.inference import Segmenter
    from segmentation.metrics import scores

    with Segmenter(model, engine="torch") as seg:
        ev = evaluate_simulated(seg, layers, size, features=features)
    return {s.name: round(s.iou, 3) for s in scores(ev.cm)}


def _build_of(name: str) -> str:
    """The build a labelled frame comes from: ``<record>-<layer>`` (labels export) gives the record; any other
    name is a build of its own."""
    stem, _, tail = name.rpartition("-")
    return stem if stem and tail.isdigit() else name


def split_holdout(
    pairs: list[tuple[Path, Path]], share: float
) -> tuple[list[tuple[Path, Path]], list[tuple[Path, Path]]]:
    """(frames to learn from, frames held out): about ``share`` of the builds, chosen by a hash of their names
    (the same on every run), among the builds with labelled defects (at least one of two or more) and among the
    others alike; none where there are fewer than 5 frames or only one build."""
    builds: dict[str, list[tuple[Path, Path]]] = {}
    for pair in pairs:
        builds.setdefault(_build_of(pair[0].stem), []).append(pair)
    if share <= 0 or len(pairs) < 5 or len(builds) < 2:
        return list(pairs), []

    def defective(members: list[tuple[Path, Path]]) -> bool:
        for _, mask in members:
            m = cv2.imread(str(mask), cv2.IMREAD_UNCHANGED)
            if m is not None and bool(((m >= 2) & (m < NUM_CLASSES)).any()):
                return True
        return False

    def order(name: str) -> str:
        return hashlib.sha256(name.encode()).hexdigest()

    held: set[str] = set()
    strata = ([b for b, m in builds.items() if defective(m)], [b for b, m in builds.items() if not defective(m)])
    # at least one of two or more builds with labelled defects: whether it learnt them is the question
    for names, least in zip(strata, (1, 0), strict=True):
        k = max(math.floor(len(names) * share), least if len(names) >= 2 else 0)
        held |= set(sorted(names, key=order)[:k])
    if not held:  # a fifth of a small stratum rounds to none: one build of the larger one
        larger = max(strata, key=len)
        if len(larger) >= 2:
            held.add(sorted(larger, key=order)[0])
    keep = [p for b, m in builds.items() if b not in held for p in m]
    out = [p for b, m in builds.items() if b in held for p in m]
    return keep, out


def _counts(pairs: list[tuple[Path, Path]]) -> Counter[int]:
    counts: Counter[int] = Counter()
    for _, mask in pairs:
        m = cv2.imread(str(mask), cv2.IMREAD_UNCHANGED)
        if m is not None:
            values, n = np.unique(m, return_counts=True)
            counts.update({int(v): int(c) for v, c in zip(values, n, strict=True)})
    return counts


def rare_class_weights(counts: Counter[int]) -> tuple[float, ...]:
    """Loss weights for a few labelled frames: the base weights, a labelled defect class raised by how rare its
    pixels are among the labelled ones (the square root of the ratio to the commonest class, at most _MAX_BOOST)."""
    from segmentation.classes import CLASS_LOSS_WEIGHTS

    labelled = {c: counts.get(c, 0) for c in range(NUM_CLASSES)}
    labelled[0] += counts.get(NO_DEFECT, 0)  # "no defect here" counts as the common side
    common = max(labelled.values()) or 1
    out = []
    for c, base in enumerate(CLASS_LOSS_WEIGHTS):
        n = labelled[c]
        boost = min(_MAX_BOOST, math.sqrt(common / n)) if c >= 2 and n > 0 else 1.0
        out.append(round(float(base) * boost, 3))
    return tuple(out)


def _labelled(folder: Path) -> list[tuple[Path, np.ndarray]]:
    """The frames of ``folder``/images with their masks (``folder``/masks/<stem>.png)."""
    from segmentation.imageio import iter_image_paths

    out = []
    for item in iter_image_paths([folder / "images"]):
        if isinstance(item, Exception):
            continue
        truth = cv2.imread(str(folder / "masks" / f"{item.stem}.png"), cv2.IMREAD_UNCHANGED)
        if truth is not None:
            out.append((item, truth))
    return out


def score_labelled(model: Path, folder: Path) -> dict[str, Any]:
    """A model on labelled frames (``folder``/images + masks): per defect class IoU over the labelled pixels (a
    "no defect here" pixel called that class counts against it), objects of each class found (recall) and right
    (precision), and the share of "no defect here" pixels called a defect."""
    from segmentation.imageio import read_image
    from segmentation.inference import Segmenter

    with Segmenter(model, engine="onnx") as seg:
        return _score([(truth, seg.segment(read_image(path)).mask) for path, truth in _labelled(folder)])


def _objects(truth: np.ndarray, pred: np.ndarray, cls: int) -> tuple[int, int, int, int]:
    """Objects of class ``cls`` (4-connected): (labelled, found, predicted over labelled pixels, right)."""
    from scipy import ndimage

    labels, n = ndimage.label(truth == cls)
    found = int(np.count_nonzero(np.unique(labels[(pred == cls) & (labels > 0)]))) if n else 0
    plabels, m = ndimage.label((pred == cls) & (truth != UNLABELLED))
    right = int(np.count_nonzero(np.unique(plabels[(truth == cls) & (plabels > 0)]))) if m else 0
    return n, found, m, right


def _score(frames: list[tuple[np.ndarray, np.ndarray]]) -> dict[str, Any]:
    """:func:`score_labelled`'s figures of (label mask, predicted mask) pairs."""
    inter = np.zeros(NUM_CLASSES, np.int64)
    union = np.zeros(NUM_CLASSES, np.int64)
    objects = np.zeros((NUM_CLASSES, 4), np.int64)  # labelled, found, predicted, right
    clean = clean_called = 0
    for truth, pred in frames:
        known = (truth < NUM_CLASSES) | (truth == NO_DEFECT)  # a defect called on "no defect here" counts against
        for c in DEFECT_CLASSES:
            t, p = truth == c, (pred == c) & known
            inter[c] += int(np.count_nonzero(t & p))
            union[c] += int(np.count_nonzero(t | p))
            objects[c] += _objects(truth, pred, c)
        nd = truth == NO_DEFECT
        clean += int(np.count_nonzero(nd))
        clean_called += int(np.count_nonzero(nd & (pred >= 2)))

    def share(k: int, n: int) -> float | None:
        return round(float(k / n), 4) if n else None

    found = {
        CLASS_NAMES[c]: {"objects": int(objects[c, 0]), "recall": share(objects[c, 1], objects[c, 0]),
                         "precision": share(objects[c, 3], objects[c, 2])}
        for c in DEFECT_CLASSES
        if objects[c, 0] or objects[c, 2]
    }  # fmt: skip
    pores = found.get("porosity", {})
    return {
        "iou": {CLASS_NAMES[c]: round(float(inter[c] / union[c]), 4) for c in DEFECT_CLASSES if union[c]},
        "pore_recall": pores.get("recall"),
        "pore_precision": pores.get("precision"),
        "pores": int(objects[LayerClass.POROSITY, 0]),
        "objects": found,
        "no_defect_called_defect": share(clean_called, clean),
    }


# the logit shifts a fine-tune tries per defect class on the held-out frames; a class with fewer labelled
# objects there than _MIN_OBJECTS keeps the threshold it was trained to
LOGIT_SHIFTS = (-4.0, -3.5, -3.0, -2.5, -2.0, -1.5, -1.0, -0.5, 0.0, 0.5, 1.0)
_MIN_OBJECTS = 3
# a shift may cost that class at most this much IoU on simulated layers (the validation builds, not the
# held-out ones the card reports): a threshold for your camera that does not break what the simulator taught
MAX_SIM_COST = 0.02
_GUARD_LAYERS = 8


def _f1(score: dict[str, Any], name: str = "porosity") -> float:
    obj = score.get("objects", {}).get(name, {})
    r, p = obj.get("recall") or 0.0, obj.get("precision") or 0.0
    return 2 * r * p / (r + p) if r + p else 0.0


def _guard_layers(seg: Any, features: frozenset[str], size: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(truth, class probabilities) of the fine-tune's simulated validation layers."""
    from segmentation.simulator import dataset_layers
    from segmentation.trainconfig import VAL_SEED_STREAM

    out = []
    for build, k in dataset_layers(VAL_SEED_STREAM, _GUARD_LAYERS, size, size, features=features):
        layer = build.layer(k)
        out.append((layer.mask, seg.segment(layer.image).probs))
    return out


def _iou(pairs: list[tuple[np.ndarray, np.ndarray]], cls: int) -> float:
    inter = sum(int(np.count_nonzero((t == cls) & (p == cls))) for t, p in pairs)
    union = sum(int(np.count_nonzero((t == cls) | (p == cls))) for t, p in pairs)
    return inter / union if union else 1.0


def choose_shifts(
    model: Path, folder: Path, features: frozenset[str] | None = None, size: int = 512
) -> tuple[dict[str, float], dict[str, dict[float, dict[str, Any]]]]:
    """How much to raise (or lower) each defect class's logit so that its objects in the held-out frames are
    found and right best (F1), where no more "no defect here" is called a defect than without that shift and
    (with ``features``: the simulator's looks of the model) the class loses at most ``MAX_SIM_COST`` IoU on
    simulated validation layers of ``size`` px; the classes in turn (porosity, spatter, warping), each after the
    shifts chosen before it. The frames are segmented once and the shifts applied to their probabilities.
    Returns the shifts and each class's table (``sim_iou`` per shift with ``features``); a class with fewer than
    ``_MIN_OBJECTS`` labelled objects is not shifted (({}, {}) where none has them)."""
    from scipy import ndimage

    from segmentation.imageio import read_image
    from segmentation.inference import Segmenter

    frames = _labelled(folder)
    classes = [c for c in DEFECT_CLASSES if sum(ndimage.label(t == c)[1] for _, t in frames) >= _MIN_OBJECTS]
    if not classes:
        return {}, {}
    chosen: dict[int, float] = {}
    tables: dict[str, dict[float, dict[str, Any]]] = {}
    with Segmenter(model, engine="onnx") as seg:
        probs = [(truth, seg.segment(read_image(path)).probs) for path, truth in frames]
        guard = _guard_layers(seg, features, size) if features is not None else []
        for cls in classes:
            table: dict[float, dict[str, Any]] = {}
            for shift in LOGIT_SHIFTS:
                factors = np.ones((NUM_CLASSES, 1, 1), np.float32)
                for c, s in {**chosen, cls: shift}.items():
                    factors[c] = math.exp(s)  # a shift of the logit is a factor on the probability before argmax
                table[shift] = _score([(truth, seg.mask_of(p * factors)) for truth, p in probs])
                if guard:
                    sim = [(truth, seg.mask_of(p * factors)) for truth, p in guard]
                    table[shift]["sim_iou"] = round(_iou(sim, cls), 4)
            clean0 = table[0.0]["no_defect_called_defect"] or 0.0
            sim0 = table[0.0].get("sim_iou", 0.0)
            allowed = [
                s
                for s in LOGIT_SHIFTS
                if (table[s]["no_defect_called_defect"] or 0.0) <= clean0
                and table[s].get("sim_iou", 0.0) >= sim0 - MAX_SIM_COST
            ]
            name = CLASS_NAMES[cls]
            chosen[cls] = max(allowed, key=lambda s: (round(_f1(table[s], name), 3), -abs(s)))
            tables[name] = table
    return {CLASS_NAMES[c]: s for c, s in chosen.items()}, tables


def shift_logits(model: Path, shifts: dict[str, float]) -> None:
    """Add each class's shift to its logit in ``model`` (the segmentation head's bias), record the sum of every
    round's shifts in its meta (``logit_shifts``) and export its ONNX twin."""
    import torch

    from segmentation.inference import export_onnx

    ckpt = torch.load(model, map_location="cpu", weights_only=True)
    bias = ckpt["state_dict"]["unet.segmentation_head.0.bias"]
    total = dict(ckpt["meta"].get("logit_shifts", {}))
    for name, shift in shifts.items():
        bias[CLASS_NAMES.index(name)] += shift
        total[name] = round(float(total.get(name, 0.0)) + shift, 3)
    ckpt["meta"]["logit_shifts"] = total
    torch.save(ckpt, model)
    export_onnx(model, model.with_suffix(".onnx"))


def _found(score: dict[str, Any], name: str) -> dict[str, Any]:
    """A class's objects in a score (a score written before per-class objects has the pores' alone)."""
    if "objects" in score:
        return dict(score["objects"].get(name, {}))
    if name == "porosity":
        return {"objects": score.get("pores"), "recall": score.get("pore_recall"),
                "precision": score.get("pore_precision")}  # fmt: skip
    return {}


def holdout_line(own: dict[str, Any]) -> str:
    b, a = own["before"], own["after"]
    parts = [f"{k} IoU {b['iou'].get(k, 0):.2f}->{a['iou'].get(k, 0):.2f}" for k in a["iou"]]
    for name in CLASS_NAMES:
        before, after = _found(b, name), _found(a, name)
        if after.get("objects"):
            what = "pores" if name == "porosity" else name
            parts.append(f"{what} found {before.get('recall') or 0:.2f}->{after.get('recall') or 0:.2f}")
            parts.append(f"right {before.get('precision') or 0:.2f}->{after.get('precision') or 0:.2f}")
    if a["no_defect_called_defect"] is not None:
        parts.append(f"clean called defect {b['no_defect_called_defect']:.4f}->{a['no_defect_called_defect']:.4f}")
    return ", ".join(parts) or "nothing labelled to score"


def _holdout_text(own: dict[str, Any], frames: int) -> str:
    if not own:
        return "None held out (fewer than 5 labelled frames, or one build): label more to see whether it learnt."
    return f"{frames} of your labelled frames, from builds it did not learn from: {holdout_line(own)}."


def _shift_text(shifts: dict[str, float], tables: dict[str, dict[float, dict[str, Any]]]) -> str:
    if not tables:
        return f"Thresholds: the trained ones (no class has {_MIN_OBJECTS} labelled objects in the held-out frames)."
    lines = [
        f"- {name}: logit {shifts[name]:+.1f} (F1 of its objects by shift: "
        + ", ".join(f"{k:+.1f}: {_f1(v, name):.2f}" for k, v in table.items())
        + ")"
        for name, table in tables.items()
    ]
    return (
        "Thresholds: each class with labelled objects in the held-out frames had its logit shifted to where they "
        'were found and right best, calling no more of your "no defect here" a defect and costing the class at '
        f"most {MAX_SIM_COST} IoU on simulated validation layers:\n\n"
        + "\n".join(lines)
        + "\n\nThey were chosen on these frames: their figures after are after that choice; frames no step or "
        "choice saw tell how it does on your camera."
    )


def finetune(opts: FinetuneOptions, echo: Callable[[str], None] = print) -> Path:
    """Fine-tune; returns the path of the new model."""
    import shutil

    from segmentation.inference import DEFAULT_MODEL, export_onnx
    from segmentation.model import ARCHITECTURES, file_sha256, load_checkpoint
    from segmentation.train import TrainConfig, train

    if not opts.minutes > 0:
        raise FinetuneError(f"--minutes {opts.minutes}: give a time budget above 0")
    if not opts.anchor >= 0:
        raise FinetuneError(f"--anchor {opts.anchor}: give 0 (off) or more")
    if not opts.distill >= 0:
        raise FinetuneError(f"--distill {opts.distill}: give 0 (off) or more")
    if not 0 <= opts.sim_share < 1:
        raise FinetuneError(f"--sim-share {opts.sim_share}: give a share from 0 up to (not including) 1")
    base = opts.base or DEFAULT_MODEL
    network, meta = load_checkpoint(base)
    pairs, counts = check_labels(opts.images, opts.masks)
    labels = ", ".join(f"{_VALUE_NAMES[v]} {c}" for v, c in sorted(counts.items()))
    echo(f"finetune: {len(pairs)} labelled frame(s) ({labels} px) from {base}")
    opts.out.mkdir(parents=True, exist_ok=True)
    train_pairs, held_pairs = split_holdout(pairs, opts.holdout)
    staged = _stage(train_pairs, opts.out / "labels")
    mistaken = _mark_mistakes(base, staged)
    echo(
        f'finetune: the model it starts from calls {mistaken} px of your "no defect here" a defect: half the crops '
        "of your frames centre on those or on a labelled defect"
    )
    holdout_dir = _stage(held_pairs, opts.out / "holdout") if held_pairs else None
    echo(
        f"finetune: {len(train_pairs)} frame(s) to learn from, {len(held_pairs)} held out to tell whether it learnt"
        + ("" if held_pairs else " (fewer than 5 frames: none held out)")
    )
    # most of the budget for steps, counted from a measured step (bf16 where the CPU computes it, as training
    # runs); data, validation and the unfamiliar-frame calibration take the rest
    distilled = round(opts.batch * opts.sim_share) if opts.distill else 0
    step_s = _step_seconds(network, ARCHITECTURES[str(meta["arch"])].in_channels, opts.batch, opts.crop, distilled)
    del network
    steps = max(2, math.floor(opts.minutes * 60 * 0.7 / step_s))
    if opts.steps is not None:
        steps = opts.steps  # the minutes still end it, after an epoch
    per_epoch = min(20, steps)
    echo(f"finetune: {step_s:.2f} s a step here: {steps} steps (at most {opts.minutes:g} min)")
    from segmentation.evaluate import trained_features

    looks = trained_features(meta)  # the simulated layers its base learnt from, so that they are kept
    train_counts = _counts(train_pairs)
    weights = rare_class_weights(train_counts)
    cfg = TrainConfig(
        out=opts.out / "run",
        features=tuple(sorted(looks)),
        arch=str(meta["arch"]),
        seed=opts.seed,
        train_layers=opts.sim_layers,
        val_layers=8,
        frame=opts.frame,
        crop=opts.crop,
        batch=opts.batch,
        epochs=max(1, math.ceil(steps / per_epoch)),
        steps_per_epoch=per_epoch,
        lr=opts.lr,
        max_minutes=opts.minutes * 0.8,
        scenario_layers=0,
        composite_layers=0,
        real_dir=staged,
        real_share=1 - opts.sim_share,
        composite_share=0.0,
        init=base,
        # the few labels drive the steps; the rest of the network stays close to the base model
        encoder_lr_scale=opts.encoder_lr_scale,
        anchor=opts.anchor,
        distill=opts.distill,
        freeze_bn=True,
        class_weights=weights,
        label_focus=0.5,
    )
    t0 = time.monotonic()
    result = train(cfg, echo=echo)
    model = opts.out / "model.pt"
    shutil.copyfile(cfg.out / "final.pt", model)
    export_onnx(model, model.with_suffix(".onnx"))
    shifts, tables = choose_shifts(model, holdout_dir, looks, opts.frame) if holdout_dir is not None else ({}, {})
    if any(shifts.values()):
        shift_logits(model, shifts)
    if tables:
        echo("finetune: logit shifts where the held-out objects were found and right best: "
             + ", ".join(f"{k} {v:+.1f}" for k, v in shifts.items()))  # fmt: skip
    before = _heldout(base, opts.heldout_layers, opts.frame, looks)
    after = _heldout(model, opts.heldout_layers, opts.frame, looks)
    own: dict[str, Any] = {}
    if holdout_dir is not None:
        own = {"before": score_labelled(base, holdout_dir), "after": score_labelled(model, holdout_dir)}
        tried = {
            name: {
                f"{k:+.1f}": {n: v.get(n) for n in ("objects", "no_defect_called_defect", "sim_iou")}
                for k, v in table.items()
            }
            for name, table in tables.items()
        }
        (opts.out / "holdout.json").write_text(
            json.dumps({"frames": len(held_pairs), **own, "logit_shifts": shifts, "shift_tables": tried}, indent=1)
        )
    minutes = (time.monotonic() - t0) / 60
    rows = "\n".join(f"| {name} | {before[name]:.3f} | {after[name]:.3f} |" for name in CLASS_NAMES)
    (opts.out / "MODEL_CARD.md").write_text(
        f"""# Model card: fine-tuned `{model.name}`

- base model: `{base}` (sha256 {file_sha256(base)})
- this model: sha256 {file_sha256(model)}; architecture `{meta["arch"]}`
- data: {len(pairs)} labelled frame(s) from `{opts.images}` and `{opts.masks}`, sha256 {_data_hash(pairs)};
  {len(train_pairs)} learnt from, {len(held_pairs)} held out (by build: their builds gave no frame to learn from)
- labels (pixels): {labels}
- training: {len(result["history"])} epoch(s) of {per_epoch} steps, batch {opts.batch}, {opts.sim_share:.0%} of
  each batch simulated layers ({opts.sim_layers}); the encoder at {opts.encoder_lr_scale:g} of the learning rate,
  every weight pulled back towards the base model's (anchor {opts.anchor:g}), the simulated crops' outputs
  pulled to the base model's (distillation {opts.distill:g}), the base model's batch statistics kept, class
  weights on your frames {", ".join(f"{w:.2f}" for w in weights)}, half the
  crops of your frames around a labelled defect or a "no defect here" pixel the base model called a defect
  ({mistaken} px, weighed double); {minutes:.1f} min in all on this machine

## Did it learn? Your held-out frames

{_holdout_text(own, len(held_pairs))}

{_shift_text(shifts, tables)}

## Did it forget? Held-out simulated layers

{opts.heldout_layers} layers at {opts.frame} px, builds no training saw, IoU:

| class | base | fine-tuned |
|---|---|---|
{rows}

Score it on your own frames before it reaches a printer (`layerwatch evaluate --model {model}`); the gate
(`layerwatch model evaluate`) replays your reviewed builds and scores these held-out frames too.
"""
    )
    echo(
        f"finetune: wrote {model} ({minutes:.1f} min); held-out simulated IoU before -> after: "
        + ", ".join(f"{n} {before[n]:.2f}->{after[n]:.2f}" for n in CLASS_NAMES)
    )
    if own:
        echo(f"finetune: your held-out frames: {holdout_line(own)}")
    return model
