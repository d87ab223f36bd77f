"""A training run's data: simulated layers rendered once in worker processes and cached, composites over real
clean frames, the licensed real frames with their labels, and the batches made from them (crops, lighting,
input channels), inline or by a thread ahead of the optimiser."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from segmentation.augment import random_lighting, random_tone
from segmentation.classes import MISTAKEN, NO_DEFECT, NUM_CLASSES, UNLABELLED
from segmentation.model import ModelSpec
from segmentation.preprocess import model_input, to_gray_float
from segmentation.simulator import FEATURES, SimBuild, simulate_dataset, simulate_scenarios
from segmentation.trainconfig import (
    COMPOSITE_SEED_STREAM,
    LARGE_SEED_STREAM,
    SCENARIO_SEED_STREAM,
    TrainConfig,
)  # fmt: skip

__all__ = ["BatchStream", "LabelledSet", "build_composites", "build_set", "load_labelled", "set_chunks"]

log = logging.getLogger(__name__)


@dataclass
class LabelledSet:
    """Frames and label masks: ``gray[i]`` (H, W) float16 in [0, 1], ``masks[i]`` (H, W) uint8."""

    names: list[str]
    gray: list[np.ndarray]
    masks: list[np.ndarray]

    def __len__(self) -> int:
        return len(self.gray)


def load_labelled(folder: Path, max_side: int = 1024) -> LabelledSet:
    """A labelled folder (``images/NAME.*`` + ``masks/NAME.png``), frames scaled to at most ``max_side``."""
    from segmentation.imageio import iter_image_paths, read_image

    out = LabelledSet([], [], [])
    if not (folder / "images").is_dir():
        return out
    for item in iter_image_paths([folder / "images"]):
        if isinstance(item, Exception):
            continue
        mask_path = folder / "masks" / f"{item.stem}.png"
        m = cv2.imread(str(mask_path), cv2.IMREAD_UNCHANGED)
        if m is None:
            log.warning("%s: no mask %s; skipped", item, mask_path)
            continue
        g = to_gray_float(read_image(item))
        if m.shape != g.shape:
            log.warning("%s: mask is %s, image %s; skipped", item, m.shape, g.shape)
            continue
        scale = max_side / max(g.shape)
        if scale < 1:
            size = (round(g.shape[1] * scale), round(g.shape[0] * scale))
            g = cv2.resize(g, size, interpolation=cv2.INTER_AREA)
            m = cv2.resize(m, size, interpolation=cv2.INTER_NEAREST)
        out.names.append(item.stem)
        out.gray.append(g.astype(np.float16))
        out.masks.append(m.astype(np.uint8))
    return out


def _simulate_chunk(args: tuple[int, int, int, int, frozenset[str]]) -> tuple[np.ndarray, np.ndarray]:
    stream, seed, count, frame, features = args  # a chunk of set_chunks(stream, ...)
    if stream == SCENARIO_SEED_STREAM:
        layers = simulate_scenarios(seed, count, frame)
    else:
        layers = simulate_dataset(seed, count, frame, frame, features=features)
    x = np.stack([to_gray_float(la.image).astype(np.float16) for la in layers])
    y = np.stack([la.mask for la in layers])
    return x, y


def _composite_chunk(
    args: tuple[int, list[tuple[np.ndarray, int]], int, frozenset[str]],
) -> tuple[np.ndarray, np.ndarray]:
    """Simulated layers drawn over the given real backgrounds (frame-sized, float32, with their label)."""
    seed, backgrounds, frame, features = args
    xs, ys = [], []
    for i, (bg, label) in enumerate(backgrounds):
        build = SimBuild(seed * 1000 + i, frame, frame, 40, features=features)
        rng = np.random.default_rng([seed, i])
        layer = build.layer(int(rng.integers(8, 40)), background=bg, background_label=label)
        xs.append(to_gray_float(layer.image).astype(np.float16))
        ys.append(layer.mask)
    return np.stack(xs), np.stack(ys)


def _featured(cache: Path | None, features: frozenset[str]) -> Path | None:
    """A cache file per simulator looks: ``train_set.npz`` for all of them, ``train_set-<looks>.npz`` otherwise."""
    if cache is None or features == FEATURES:
        return cache
    return cache.with_name(f"{cache.stem}-{'-'.join(sorted(features)) or 'first'}{cache.suffix}")


def _cached(cache: Path | None, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray] | None:
    if cache is not None and cache.is_file():
        with np.load(cache) as z:
            if z["x"].shape == shape:
                return z["x"], z["y"]
    return None


def _save(cache: Path | None, x: np.ndarray, y: np.ndarray) -> None:
    if cache is None:
        return
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_name(cache.stem + ".tmp.npz")
    np.savez(tmp, x=x, y=y)
    tmp.replace(cache)


# layers per job of build_set, each job's builds seeded apart from the others'
_CHUNK = 16


def set_chunks(stream: int, count: int) -> list[tuple[int, int]]:
    """How :func:`build_set` draws ``count`` layers of a seed stream: (seed, layers) per chunk, each chunk the
    first layers of :func:`segmentation.simulator.simulate_dataset` (or ``simulate_scenarios``) from that seed.
    ``bench/eval_fit.py`` renders a training set's first layers again by it."""
    return [(stream * 1000 + i // _CHUNK, min(_CHUNK, count - i)) for i in range(0, count, _CHUNK)]


def build_set(
    stream: int,
    count: int,
    frame: int,
    workers: int,
    cache: Path | None,
    features: frozenset[str] = FEATURES,
) -> tuple[np.ndarray, np.ndarray]:
    """Simulate ``count`` frames: (N, H, W) float16 gray in [0, 1] and (N, H, W) uint8 masks."""
    cache = _featured(cache, features)
    hit = _cached(cache, (count, frame, frame))
    if hit is not None:
        return hit
    jobs = [(stream, seed, n, frame, features) for seed, n in set_chunks(stream, count)]
    from tqdm import tqdm

    xs, ys = [], []
    with ProcessPoolExecutor(max_workers=workers) as pool:
        for x, y in tqdm(pool.map(_simulate_chunk, jobs), total=len(jobs), desc=f"simulate s{stream}", unit="chunk"):
            xs.append(x)
            ys.append(y)
    x, y = np.concatenate(xs), np.concatenate(ys)
    _save(cache, x, y)
    return x, y


def _backgrounds(real: LabelledSet, frame: int, count: int, seed: int) -> list[tuple[np.ndarray, int]]:
    """``count`` frame-sized real backgrounds: clean frames (no defect label), cropped or scaled down."""
    clean = [i for i, m in enumerate(real.masks) if not np.isin(m, [1, 2, 3, 4]).any()]
    out: list[tuple[np.ndarray, int]] = []
    if not clean:
        return out
    rng = np.random.default_rng([seed, 77])
    for _ in range(count):
        i = int(clean[int(rng.integers(len(clean)))])
        g = real.gray[i].astype(np.float32)
        m = real.masks[i]
        if rng.random() < 0.5 or min(g.shape) < frame:
            g = np.asarray(cv2.resize(g, (frame, frame), interpolation=cv2.INTER_AREA), dtype=np.float32)
            m = np.asarray(cv2.resize(m, (frame, frame), interpolation=cv2.INTER_NEAREST), dtype=np.uint8)
        else:
            r0 = int(rng.integers(0, g.shape[0] - frame + 1))
            c0 = int(rng.integers(0, g.shape[1] - frame + 1))
            g, m = g[r0 : r0 + frame, c0 : c0 + frame], m[r0 : r0 + frame, c0 : c0 + frame]
        label = 0 if not m.any() else NO_DEFECT
        out.append((np.ascontiguousarray(g), label))
    return out


def build_composites(
    real: LabelledSet,
    count: int,
    frame: int,
    workers: int,
    cache: Path | None,
    features: frozenset[str] = FEATURES,
) -> tuple[np.ndarray, np.ndarray]:
    """``count`` simulated layers over real clean frames: (N, H, W) float16 and (N, H, W) uint8."""
    cache = _featured(cache, features)
    hit = _cached(cache, (count, frame, frame))
    if hit is not None:
        return hit
    bgs = _backgrounds(real, frame, count, COMPOSITE_SEED_STREAM)
    if not bgs:
        return np.zeros((0, frame, frame), np.float16), np.zeros((0, frame, frame), np.uint8)
    chunk = 8
    jobs = [
        (COMPOSITE_SEED_STREAM * 1000 + i // chunk, bgs[i : i + chunk], frame, features)
        for i in range(0, len(bgs), chunk)
    ]
    from tqdm import tqdm

    xs, ys = [], []
    with ProcessPoolExecutor(max_workers=workers) as pool:
        for x, y in tqdm(pool.map(_composite_chunk, jobs), total=len(jobs), desc="composites", unit="chunk"):
            xs.append(x)
            ys.append(y)
    x, y = np.concatenate(xs), np.concatenate(ys)
    _save(cache, x, y)
    return x, y


def _large_set(cfg: TrainConfig) -> tuple[np.ndarray, np.ndarray] | None:
    if not cfg.large_layers:
        return None
    looks = frozenset(cfg.features)
    return build_set(
        LARGE_SEED_STREAM, cfg.large_layers, cfg.large_frame, cfg.workers, cfg.out / "large_set.npz", looks
    )


# ---- batches ----------------------------------------------------------------------------------------
def _sample(
    rng: np.random.Generator,
    gray: np.ndarray,
    mask: np.ndarray,
    crop: int,
    spec: ModelSpec,
    lighting: float,
    paired: bool = False,
    tone: bool = False,
    focus: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """One training crop: lighting change on the whole frame, input channels, crop, rotation, flip.
    ``paired``: the channels of a second view under another lighting change follow, cut and turned alike
    (``tone``: the first view under another tone curve). ``focus``: the share of crops centred around a labelled
    defect pixel (porosity, spatter, warping) where the frame has some: a few labelled defects drive the steps."""
    source = gray.astype(np.float32)
    g = source
    if lighting > 0 and rng.random() < 0.8:
        g = random_lighting(g, rng, lighting)
    x = model_input(g, spec.in_channels, spec.input_norm)
    if paired:
        other = random_tone(g, rng) if tone else random_lighting(source, rng, max(lighting, 1.0))
        x = np.concatenate([x, model_input(other, spec.in_channels, spec.input_norm)])
    h, w = g.shape
    if h < crop or w < crop:
        ph, pw = max(0, crop - h), max(0, crop - w)
        x = np.pad(x, ((0, 0), (0, ph), (0, pw)), mode="reflect")
        mask = np.pad(mask, ((0, ph), (0, pw)), constant_values=UNLABELLED)
        h, w = mask.shape
    r0, c0 = int(rng.integers(0, h - crop + 1)), int(rng.integers(0, w - crop + 1))
    # labelled defects, and (a fine-tune) "no defect here" where its base model saw one: its own mistakes
    wanted = ((mask >= 2) & (mask < NUM_CLASSES)) | (mask == MISTAKEN) if focus > 0 else None
    defects = np.flatnonzero(wanted) if wanted is not None else np.zeros(0, np.int64)
    labelled = np.flatnonzero(mask != UNLABELLED) if mask.size else np.zeros(0, np.int64)
    if defects.size and rng.random() < focus:
        # a labelled defect near the crop's centre (a quarter of the crop either way)
        r, c = divmod(int(defects[int(rng.integers(defects.size))]), w)
        r0 = min(max(r - crop // 2 + int(rng.integers(-(crop // 4), crop // 4 + 1)), 0), h - crop)
        c0 = min(max(c - crop // 2 + int(rng.integers(-(crop // 4), crop // 4 + 1)), 0), w - crop)
    elif 0 < labelled.size < mask.size // 2:
        # sparse labels (an operator's strokes, a verdict's pixels): a random crop would mostly miss them and
        # teach nothing; the crop holds a labelled pixel, anywhere in it
        r, c = divmod(int(labelled[int(rng.integers(labelled.size))]), w)
        r0 = min(max(r - int(rng.integers(crop)), 0), h - crop)
        c0 = min(max(c - int(rng.integers(crop)), 0), w - crop)
    xi = x[:, r0 : r0 + crop, c0 : c0 + crop]
    yi = mask[r0 : r0 + crop, c0 : c0 + crop]
    k = int(rng.integers(4))
    xi, yi = np.rot90(xi, k, axes=(1, 2)), np.rot90(yi, k)
    if rng.random() < 0.5:
        xi, yi = xi[:, :, ::-1], yi[:, ::-1]
    return xi, yi


def _real_view(rng: np.random.Generator, real: LabelledSet, frame: int) -> tuple[np.ndarray, np.ndarray]:
    """A real frame at a random scale (0.5-1x), cut to at most ``frame`` px a side."""
    # each source data set (name prefix) is drawn equally often, whatever its number of frames
    groups = sorted({n.split("-", 1)[0] for n in real.names})
    group = groups[int(rng.integers(len(groups)))]
    members = [j for j, n in enumerate(real.names) if n.split("-", 1)[0] == group]
    i = members[int(rng.integers(len(members)))]
    g, m = real.gray[i].astype(np.float32), real.masks[i]
    scale = float(rng.uniform(0.5, 1.0))
    if scale < 0.95:
        size = (max(8, round(g.shape[1] * scale)), max(8, round(g.shape[0] * scale)))
        g = np.asarray(cv2.resize(g, size, interpolation=cv2.INTER_AREA), dtype=np.float32)
        m = np.asarray(cv2.resize(m, size, interpolation=cv2.INTER_NEAREST), dtype=np.uint8)
    h, w = g.shape
    if h > frame or w > frame:
        r0 = int(rng.integers(0, max(1, h - frame + 1)))
        c0 = int(rng.integers(0, max(1, w - frame + 1)))
        g, m = g[r0 : r0 + frame, c0 : c0 + frame], m[r0 : r0 + frame, c0 : c0 + frame]
    return g, m


@dataclass
class _Sources:
    sim: tuple[np.ndarray, np.ndarray]
    composite: tuple[np.ndarray, np.ndarray]
    real: LabelledSet
    large: tuple[np.ndarray, np.ndarray] | None = None


def _batch(
    rng: np.random.Generator, src: _Sources, cfg: TrainConfig, spec: ModelSpec
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    paired = cfg.consistency > 0
    xb = np.empty((cfg.batch, spec.in_channels * (2 if paired else 1), cfg.crop, cfg.crop), np.float32)
    yb = np.empty((cfg.batch, cfg.crop, cfg.crop), np.int64)
    real = np.zeros(cfg.batch, bool)
    n_comp = src.composite[0].shape[0]
    for j in range(cfg.batch):
        u = rng.random()
        focus = 0.0
        if len(src.real) and u < cfg.real_share:
            g, m = _real_view(rng, src.real, cfg.frame)
            focus = cfg.label_focus
            real[j] = True
        elif n_comp and u < cfg.real_share + cfg.composite_share:
            i = int(rng.integers(n_comp))
            g, m = src.composite[0][i], src.composite[1][i]
        else:
            pool = src.large if src.large is not None and rng.random() < cfg.large_share else src.sim
            i = int(rng.integers(pool[0].shape[0]))
            g, m = pool[0][i], pool[1][i]
        xb[j], yb[j] = _sample(rng, g, m, cfg.crop, spec, cfg.lighting, paired, cfg.consistency_tone, focus)
    return xb, yb, real


def _epoch_batches(
    src: _Sources, cfg: TrainConfig, spec: ModelSpec, epoch0: int
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Every batch from ``epoch0`` on, in order: epoch e's are drawn from ``default_rng([seed, e])``, so a
    resumed run sees the batches an uninterrupted one would have; masks as uint8 (the loss widens them)."""
    for epoch in range(epoch0, cfg.epochs):
        rng = np.random.default_rng([cfg.seed, epoch])
        for _ in range(cfg.steps_per_epoch):
            xb, yb, real = _batch(rng, src, cfg, spec)
            yield xb, yb.astype(np.uint8), real


class BatchStream:
    """The training batches of a run, made inline or by a thread a few batches ahead of the optimiser.

    Making a batch (lighting change, input channels and crop of 12 frames) takes about 0.15 s on these cores,
    a quarter of a bf16 step; OpenCV and NumPy release the GIL while they work, so a thread overlaps it with
    the network's step instead of adding it. (A forked process deadlocks in OpenCV's thread pool once the
    parent has used it; a spawned one would copy gigabytes of cached frames.) The thread makes exactly the
    batches the inline stream makes, in the same order.
    """

    def __init__(self, src: _Sources, cfg: TrainConfig, spec: ModelSpec, epoch0: int = 0, ahead: int = 3) -> None:
        import queue
        import threading

        self._items = _epoch_batches(src, cfg, spec, epoch0)
        self._thread: threading.Thread | None = None
        if cfg.loader == "inline":
            return
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=ahead)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._produce, name="batches", daemon=True)
        self._thread.start()

    def _produce(self) -> None:
        import queue

        try:
            for item in self._items:
                while not self._stop.is_set():
                    try:
                        self._queue.put(item, timeout=0.5)
                        break
                    except queue.Full:  # the optimiser is behind: look at the stop flag again
                        continue
                if self._stop.is_set():
                    return
        except BaseException as err:  # raised again in the optimiser's thread
            self._queue.put(err)
            return
        self._queue.put(None)

    def next(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The next (x (N, C, crop, crop) float32, y (N, crop, crop) uint8, real (N,) bool: the crops of real
        labelled frames) batch."""
        if self._thread is None:
            return next(self._items)
        item = self._queue.get()
        if item is None:
            raise StopIteration
        if isinstance(item, BaseException):
            raise RuntimeError(f"making a training batch failed: {type(item).__name__}: {item}") from item
        return item

    def close(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join(timeout=30)
            self._thread = None

    def __enter__(self) -> BatchStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
