"""Training of the layer U-Net: simulated layers, simulated defects over real frames, and real frames.

Three sources make up every batch (shares in :class:`TrainConfig`):

- simulated layers (:mod:`segmentation.simulator`, domain-randomised), simulated once in worker
  processes and cached under the run directory;
- *composites*: simulated parts and defects drawn over real clean frames (``real_dir``), so that
  defects are seen on real powder, real lighting and real fixtures;
- real frames with their label masks (``real_dir``: ``images/`` + ``masks/``, LayerWatch's label
  format: class ids 0-4, 254 "no defect here", 255 "not labelled").

Every frame gets a random lighting change (:func:`segmentation.augment.random_lighting`) before its
input channels are computed on the whole frame, then a random crop, rotation and flip. The loss is
class-weighted cross-entropy plus soft Dice over the labelled pixels; a 254 pixel asks only that
powder or part win (``-log(p_powder + p_part)``), a 255 pixel is ignored.

Validation runs on whole simulated frames from builds seeded apart from the training builds;
per-class IoU is printed every epoch. Checkpoints: ``last.pt`` (resumable: model, optimiser,
scheduler, epoch) and ``best.pt`` (best mean defect IoU, fp16), ``final.pt`` (the last epoch, fp16).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from segmentation.augment import random_lighting, random_tone
from segmentation.classes import CLASS_LOSS_WEIGHTS, CLASS_NAMES, DEFECT_CLASSES, NO_DEFECT, NUM_CLASSES, UNLABELLED
from segmentation.metrics import Evaluation, scores
from segmentation.model import ARCHITECTURES, DEFAULT_ARCH, ModelSpec, create_model, save_checkpoint
from segmentation.preprocess import model_input, to_gray_float
from segmentation.resources import data_dir
from segmentation.simulator import FEATURES, SimBuild, simulate_dataset, simulate_scenarios

__all__ = [
    "DEFAULT_REAL_DIR",
    "TRAIN_SEED_STREAM",
    "VAL_SEED_STREAM",
    "LabelledSet",
    "TrainConfig",
    "calibrate_run",
    "load_labelled",
    "train",
]

log = logging.getLogger(__name__)

#: Seed streams of :func:`segmentation.simulator.simulate_dataset`. Evaluation sets use other
#: streams (see segmentation.evaluate.TEST_SEED_STREAM), so no evaluated build was ever trained on.
TRAIN_SEED_STREAM = 1
VAL_SEED_STREAM = 2
COMPOSITE_SEED_STREAM = 3
SCENARIO_SEED_STREAM = 4  # far from the seeds bench/eval_policy.py replays (2000-2019 test, 3000+ tuning)
LARGE_SEED_STREAM = 5  # layers rendered at ``large_frame`` px: parts and lighting at the scale of real cameras
LARGE_VAL_SEED_STREAM = 6

#: The licensed real frames shipped for training (train rows of the fixed split only).
DEFAULT_REAL_DIR = data_dir() / "realdata"  # in a checkout; a wheel does not carry training data

_NO_DEFECT_WEIGHT = 1.0
PRECISIONS = ("auto", "bf16", "fp32")


def resolve_precision(precision: str) -> str:
    """``auto`` -> ``bf16`` where this CPU computes bf16 natively, else ``fp32``; others unchanged."""
    if precision != "auto":
        return precision
    from segmentation.hardware import cpu_info

    return "bf16" if cpu_info().bf16 else "fp32"


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a training run (written into the checkpoint)."""

    out: Path
    arch: str = DEFAULT_ARCH
    seed: int = 0
    train_layers: int = 1600
    val_layers: int = 48
    frame: int = 512
    crop: int = 256
    batch: int = 12
    epochs: int = 40
    steps_per_epoch: int = 80
    lr: float = 3e-3
    max_minutes: float = 0.0  # 0: no limit; otherwise stop (after an epoch) when exceeded
    threads: int = 2
    workers: int = 2
    # auto: bf16 autocast where the CPU has AVX-512 BF16 or AMX (about 2x faster there), fp32 elsewhere (bf16
    # is emulated and 30x slower without them); bf16 or fp32 to force one
    precision: str = "auto"
    # >0: a campaign of this many hours of training, over as many resumed runs as it takes: the learning rate
    # follows a cosine over the training time (not over a step count measured on another machine), and the
    # run ends when the hours are spent; epochs is then only a cap
    hours: float = 0.0
    # where batches are made: "thread" (ahead of the optimiser, beside it) or "inline"
    loader: str = "thread"
    # the simulator's looks beyond its first revision's (segmentation.simulator.FEATURES) the random builds draw;
    # a fine-tune keeps its base model's, so that it mixes the simulated layers that model learnt from
    features: tuple[str, ...] = tuple(sorted(FEATURES))
    scenario_layers: int = 800  # layers of scenario builds (box and cylinder, slow and fast warps, clean)
    real_dir: Path | None = DEFAULT_REAL_DIR  # images/ + masks/; None: simulated layers only
    composite_layers: int = 480  # simulated layers drawn over real clean frames
    real_share: float = 0.2  # share of a batch taken from the real frames
    composite_share: float = 0.3  # share of a batch taken from the composites
    lighting: float = 1.0  # strength of the random lighting changes (0: none)
    # >0: each crop is also seen under a second random lighting change, and the two predictions are pulled
    # together with this weight (symmetric KL per pixel): the masks should not move with the lamp or camera
    consistency: float = 0.0
    # the second view differs from the first by a tone change only (gamma, contrast, gain: what the lighting
    # check fails on), instead of another random lighting
    consistency_tone: bool = False
    init: Path | None = None  # start from these weights (a checkpoint of the same architecture)
    # layers rendered at large_frame px (real cameras are mostly 1024 px and up; the simulator's parts
    # grow with the frame), drawn for large_share of the simulated crops
    large_layers: int = 0
    large_frame: int = 1024
    large_share: float = 0.4

    def __post_init__(self) -> None:
        if self.arch not in ARCHITECTURES:
            raise ValueError(f"arch={self.arch!r}: valid names are {', '.join(sorted(ARCHITECTURES))}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision={self.precision!r}: valid values are {', '.join(PRECISIONS)}")
        if self.loader not in ("thread", "inline"):
            raise ValueError(f"loader={self.loader!r}: valid values are thread, inline")
        if self.hours < 0:
            raise ValueError(f"hours={self.hours}: must be 0 (off) or more")
        if self.crop > self.frame:
            raise ValueError(f"crop={self.crop} is larger than frame={self.frame}")
        unknown = set(self.features) - FEATURES
        if unknown:
            raise ValueError(f"features={sorted(unknown)}: the simulator's looks are {', '.join(sorted(FEATURES))}")
        for name in ("train_layers", "val_layers", "batch", "epochs", "steps_per_epoch"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)}: must be at least 1")
        if self.large_layers < 0:
            raise ValueError(f"large_layers={self.large_layers}: must be 0 or more")
        if self.large_layers and self.large_frame < self.crop:
            raise ValueError(f"large_frame={self.large_frame} is smaller than crop={self.crop}")
        for name in ("real_share", "composite_share", "large_share"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name}={getattr(self, name)}: must be between 0 and 1")
        if self.consistency < 0:
            raise ValueError(f"consistency={self.consistency}: must be 0 or more")
        if self.consistency_tone and not self.consistency:
            raise ValueError("consistency_tone needs a consistency weight above 0 (--consistency W)")
        if self.real_share + self.composite_share > 1:
            raise ValueError("real_share + composite_share must not exceed 1")


# ---- data ------------------------------------------------------------------------------------------
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
) -> tuple[np.ndarray, np.ndarray]:
    """One training crop: lighting change on the whole frame, input channels, crop, rotation, flip.
    ``paired``: the channels of a second view under another lighting change follow, cut and turned alike
    (``tone``: the first view under another tone curve)."""
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
    labelled = np.flatnonzero(mask != UNLABELLED) if mask.size else np.zeros(0, np.int64)
    if 0 < labelled.size < mask.size // 2:
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


def _batch(rng: np.random.Generator, src: _Sources, cfg: TrainConfig, spec: ModelSpec) -> tuple[np.ndarray, np.ndarray]:
    paired = cfg.consistency > 0
    xb = np.empty((cfg.batch, spec.in_channels * (2 if paired else 1), cfg.crop, cfg.crop), np.float32)
    yb = np.empty((cfg.batch, cfg.crop, cfg.crop), np.int64)
    n_comp = src.composite[0].shape[0]
    for j in range(cfg.batch):
        u = rng.random()
        if len(src.real) and u < cfg.real_share:
            g, m = _real_view(rng, src.real, cfg.frame)
        elif n_comp and u < cfg.real_share + cfg.composite_share:
            i = int(rng.integers(n_comp))
            g, m = src.composite[0][i], src.composite[1][i]
        else:
            pool = src.large if src.large is not None and rng.random() < cfg.large_share else src.sim
            i = int(rng.integers(pool[0].shape[0]))
            g, m = pool[0][i], pool[1][i]
        xb[j], yb[j] = _sample(rng, g, m, cfg.crop, spec, cfg.lighting, paired, cfg.consistency_tone)
    return xb, yb


def _epoch_batches(
    src: _Sources, cfg: TrainConfig, spec: ModelSpec, epoch0: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Every batch from ``epoch0`` on, in order: epoch e's are drawn from ``default_rng([seed, e])``, so a
    resumed run sees the batches an uninterrupted one would have; masks as uint8 (the loss widens them)."""
    for epoch in range(epoch0, cfg.epochs):
        rng = np.random.default_rng([cfg.seed, epoch])
        for _ in range(cfg.steps_per_epoch):
            xb, yb = _batch(rng, src, cfg, spec)
            yield xb, yb.astype(np.uint8)


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

    def next(self) -> tuple[np.ndarray, np.ndarray]:
        """The next (x (N, C, crop, crop) float32, y (N, crop, crop) uint8) batch."""
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


def train_step(
    model: Any, opt: Any, xb: np.ndarray, yb: np.ndarray, weights: Any, cfg: TrainConfig, precision: str
) -> float:
    """One optimiser step on a batch from :class:`BatchStream`; returns the loss. ``precision``: resolved."""
    import torch

    in_ch = model.spec.in_channels
    xt, yt = torch.from_numpy(xb), torch.from_numpy(yb).long()
    if cfg.consistency > 0:  # both views in one batch: (2N, C, H, W)
        xt = torch.cat([xt[:, :in_ch], xt[:, in_ch:]])
    xt = xt.contiguous(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        logits = model(xt).float()
    if cfg.consistency > 0:
        a, b = logits.chunk(2)
        loss = 0.5 * (partial_label_loss(a, yt, weights) + partial_label_loss(b, yt, weights))
        loss = loss + cfg.consistency * consistency_loss(a, b)
    else:
        loss = partial_label_loss(logits, yt, weights)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return float(loss.item())


def campaign_lr(base: float, minutes: float, hours: float) -> float:
    """The learning rate of a campaign of ``hours`` after ``minutes`` of training: a warm-up over its first 1 %
    then a cosine down to 2 % of ``base``."""
    t = min(1.0, minutes / (hours * 60))
    warm = min(1.0, t / 0.01)
    return base * warm * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * t)))


def _compact_optimiser(state: dict[str, Any]) -> dict[str, Any]:
    """AdamW's moments as bf16 (half the size of the model's fp32 weights each, instead of the same): a
    campaign's resumable checkpoint is committed to git once a session. The moments only steer the next
    steps; bf16 keeps their range (fp16 would flush the second moment's small values to 0)."""
    import torch

    out = dict(state)
    out["state"] = {
        k: {
            n: (v.to(torch.bfloat16) if torch.is_tensor(v) and v.is_floating_point() and v.dim() else v)
            for n, v in st.items()
        }
        for k, st in state["state"].items()
    }
    return out


def _widen_optimiser(state: dict[str, Any]) -> dict[str, Any]:
    import torch

    out = dict(state)
    out["state"] = {
        k: {n: (v.float() if torch.is_tensor(v) and v.dtype == torch.bfloat16 else v) for n, v in st.items()}
        for k, st in state["state"].items()
    }
    return out


def consistency_loss(logits_a: Any, logits_b: Any) -> Any:
    """Symmetric KL divergence between two predictions of the same pixels, averaged over pixels."""
    import torch.nn.functional as F

    la, lb = F.log_softmax(logits_a, 1), F.log_softmax(logits_b, 1)
    kl_ab = (la.exp() * (la - lb)).sum(1)
    kl_ba = (lb.exp() * (lb - la)).sum(1)
    return 0.5 * (kl_ab + kl_ba).mean()


def partial_label_loss(logits: Any, y: Any, weights: Any) -> Any:
    """Cross-entropy over pixels labelled 0..C-1 (class-weighted), ``-log(p0 + p1)`` over 254
    ("no defect here") pixels, 255 ignored, averaged per crop; plus soft Dice over the non-powder classes on
    labelled pixels."""
    import torch
    import torch.nn.functional as F

    c = logits.shape[1]
    logp = F.log_softmax(logits, 1)
    known = y < c
    nd = y == NO_DEFECT
    yk = torch.where(known, y, torch.zeros_like(y))
    w = weights[yk] * known
    nll = -logp.gather(1, yk[:, None])[:, 0]
    nd_nll = -torch.logsumexp(logp[:, :2], 1)
    # each crop's mean over its own labelled pixels, then the mean over crops: a crop with a few labelled
    # pixels (an operator's strokes) counts as much as a fully labelled simulated one, instead of a
    # thousandth of the batch
    num = (nll * w).sum((1, 2)) + (nd_nll * nd).sum((1, 2)) * _NO_DEFECT_WEIGHT
    den = w.sum((1, 2)) + nd.sum((1, 2)) * _NO_DEFECT_WEIGHT
    has = den > 0
    ce = (num[has] / den[has]).mean() if bool(has.any()) else logits.sum() * 0.0
    prob = logp.exp() * known[:, None]
    onehot = F.one_hot(yk, c).permute(0, 3, 1, 2).float() * known[:, None]
    inter = (prob * onehot).sum((0, 2, 3))
    den = prob.sum((0, 2, 3)) + onehot.sum((0, 2, 3))
    dice = 1 - (2 * inter + 1) / (den + 1)
    return ce + dice[1:].mean()


def evaluate_arrays(model: Any, gray: np.ndarray, y: np.ndarray, spec: ModelSpec, batch: int = 4) -> Evaluation:
    """Whole-frame evaluation of a torch model on gray frames (N, H, W) and their masks."""
    import torch

    ev = Evaluation.empty()
    model.eval()
    with torch.inference_mode():
        for i in range(0, gray.shape[0], batch):
            x = np.stack(
                [model_input(g.astype(np.float32), spec.in_channels, spec.input_norm) for g in gray[i : i + batch]]
            )
            pred = model(torch.from_numpy(x)).argmax(1).numpy().astype(np.uint8)
            for t, p in zip(y[i : i + batch], pred, strict=True):
                ev.add(t, p)
    return ev


def train(
    cfg: TrainConfig, resume: bool = False, echo: Callable[[str], None] = print, resume_from: Path | None = None
) -> dict[str, Any]:
    """Run (or resume) training; returns the best validation summary.

    ``resume``: continue from ``OUT/last.pt``, or from ``resume_from`` (a ``last.pt`` kept elsewhere, e.g. a
    campaign's checkpoint committed to the repository) where OUT has none yet.
    """
    import torch

    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    cfg.out.mkdir(parents=True, exist_ok=True)
    t_start = time.monotonic()
    precision = resolve_precision(cfg.precision)
    from segmentation.hardware import cpu_info

    echo(f"training on {cpu_info().describe()}: {precision}, channels-last, batches made {cfg.loader}")

    spec = ARCHITECTURES[cfg.arch]
    looks = frozenset(cfg.features)
    sim = build_set(TRAIN_SEED_STREAM, cfg.train_layers, cfg.frame, cfg.workers, cfg.out / "train_set.npz", looks)
    if cfg.scenario_layers:
        scen = build_set(
            SCENARIO_SEED_STREAM, cfg.scenario_layers, cfg.frame, cfg.workers, cfg.out / "scenario_set.npz", looks
        )
        sim = (np.concatenate([sim[0], scen[0]]), np.concatenate([sim[1], scen[1]]))
    x_va, y_va = build_set(VAL_SEED_STREAM, cfg.val_layers, cfg.frame, cfg.workers, cfg.out / "val_set.npz", looks)
    real = load_labelled(cfg.real_dir) if cfg.real_dir is not None else LabelledSet([], [], [])
    composite = build_composites(
        real, cfg.composite_layers if len(real) else 0, cfg.frame, cfg.workers, cfg.out / "composite_set.npz", looks
    )
    src = _Sources(sim, composite, real, _large_set(cfg))
    large_val = (
        build_set(LARGE_VAL_SEED_STREAM, 12, cfg.large_frame, cfg.workers, cfg.out / "large_val_set.npz", looks)
        if cfg.large_layers
        else None
    )
    freq = np.bincount(sim[1].ravel(), minlength=NUM_CLASSES)[:NUM_CLASSES] / sim[1].size
    echo("simulated pixel share: " + ", ".join(f"{n} {f:.4f}" for n, f in zip(CLASS_NAMES, freq, strict=True)))
    echo(f"real labelled frames: {len(real)}; composites: {composite[0].shape[0]}")

    model = create_model(cfg.arch)
    if cfg.init is not None and not resume:
        from segmentation.model import load_checkpoint

        init_model, _ = load_checkpoint(cfg.init)
        own = model.state_dict()
        same = {k: v for k, v in init_model.state_dict().items() if k in own and own[k].shape == v.shape}
        model.load_state_dict(same, strict=False)
        echo(f"starting from the weights of {cfg.init} ({len(same)} of {len(own)} tensors match)")
    model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=1e-4)
    total = cfg.epochs * cfg.steps_per_epoch
    sched = (
        None if cfg.hours else torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=total, pct_start=0.1)
    )
    weights = torch.tensor(CLASS_LOSS_WEIGHTS, dtype=torch.float32)
    epoch0, best, history = 0, -1.0, []
    last = cfg.out / "last.pt"
    source = last if last.is_file() or resume_from is None else resume_from
    if resume and source.is_file():
        state = torch.load(source, map_location="cpu", weights_only=False)
        model.load_state_dict(state["model"])
        opt.load_state_dict(_widen_optimiser(state["opt"]))
        if sched is not None and state.get("sched") is not None:
            sched.load_state_dict(state["sched"])
        epoch0, best, history = state["epoch"], state["best"], state["history"]
        echo(f"resumed from {source} at epoch {epoch0}")
    elif resume:
        echo(f"nothing to resume in {source}: starting a new run")
    elapsed0 = history[-1]["minutes"] if history else 0.0
    if cfg.hours and elapsed0 >= cfg.hours * 60:
        echo(f"the campaign's {cfg.hours:g} h are spent ({elapsed0 / 60:.1f} h): nothing to train")

    extra_cfg = {k: str(v) for k, v in asdict(cfg).items()}
    from tqdm import tqdm

    with BatchStream(src, cfg, spec, epoch0) as batches:
        for epoch in range(epoch0, cfg.epochs):
            if cfg.hours and elapsed0 + (time.monotonic() - t_start) / 60 >= cfg.hours * 60:
                break
            model.train()
            bar = tqdm(range(cfg.steps_per_epoch), desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="step")
            loss_sum = 0.0
            t_epoch = time.monotonic()
            for _ in bar:
                if cfg.hours:
                    lr = campaign_lr(cfg.lr, elapsed0 + (time.monotonic() - t_start) / 60, cfg.hours)
                    for group in opt.param_groups:
                        group["lr"] = lr
                xb, yb = batches.next()
                loss_sum += train_step(model, opt, xb, yb, weights, cfg, precision)
                if sched is not None:
                    sched.step()
                bar.set_postfix(loss=f"{loss_sum / (bar.n + 1):.3f}")
            step_s = (time.monotonic() - t_epoch) / cfg.steps_per_epoch
            ev = evaluate_arrays(model, x_va, y_va, spec)
            cls = scores(ev.cm)
            defect_iou = float(np.mean([cls[c].iou for c in DEFECT_CLASSES]))
            minutes = elapsed0 + (time.monotonic() - t_start) / 60
            row = {
                "epoch": epoch + 1,
                "loss": loss_sum / cfg.steps_per_epoch,
                "iou": {s.name: round(s.iou, 4) for s in cls},
                "pore_recall": round(ev.pore_recall, 4),
                "minutes": round(minutes, 2),
                "step_s": round(step_s, 3),
                "lr": round(float(opt.param_groups[0]["lr"]), 7),
                "precision": precision,
            }
            history.append(row)
            large_text = ""
            if large_val is not None:
                large_cls = scores(evaluate_arrays(model, large_val[0], large_val[1], spec, batch=1).cm)
                row["iou_large"] = {s.name: round(s.iou, 4) for s in large_cls}
                large_text = f"; {cfg.large_frame} px: " + " ".join(f"{s.name} {s.iou:.3f}" for s in large_cls)
            echo(
                f"epoch {epoch + 1}: loss {row['loss']:.3f} IoU "
                + " ".join(f"{s.name} {s.iou:.3f}" for s in cls)
                + f" pore-recall {ev.pore_recall:.3f} ({minutes:.1f} min, {step_s:.2f} s a step){large_text}"
            )
            extra = {"train_config": extra_cfg, "val": row, "simulator_features": sorted(looks)}
            if defect_iou > best:
                best = defect_iou
                save_checkpoint(cfg.out / "best.pt", model, cfg.arch, extra)
            save_checkpoint(cfg.out / "final.pt", model, cfg.arch, extra)
            torch.save(
                {
                    "model": model.state_dict(),
                    "opt": _compact_optimiser(opt.state_dict()),
                    "sched": sched.state_dict() if sched is not None else None,
                    "epoch": epoch + 1,
                    "best": best,
                    "history": history,
                },
                cfg.out / "last.tmp",
            )
            (cfg.out / "last.tmp").replace(last)
            (cfg.out / "history.json").write_text(json.dumps(history, indent=1))
            if cfg.max_minutes and minutes - elapsed0 > cfg.max_minutes:
                ran = minutes - elapsed0
                echo(
                    f"stopping after epoch {epoch + 1}: this run's {ran:.1f} min exceed --max-minutes {cfg.max_minutes}"
                )
                break
    calibrate_run(cfg, src, echo)
    return {"best_defect_iou": best, "history": history, "minutes": (time.monotonic() - t_start) / 60}


def _calibration_frames(
    src: _Sources, seed: int, n_sim: int = 240, n_comp: int = 120, n_large: int = 40
) -> list[np.ndarray]:
    """Whole frames of the kinds the model trained on, for the out-of-distribution statistics."""
    rng = np.random.default_rng([seed, 991])
    frames: list[np.ndarray] = []
    pools = [(src.sim, n_sim), (src.composite, n_comp)]
    if src.large is not None:
        pools.append((src.large, n_large))
    for (x, _), n in pools:
        if x.shape[0]:
            frames += [x[int(i)] for i in rng.choice(x.shape[0], min(n, x.shape[0]), replace=False)]
    frames += list(src.real.gray)
    return frames


def calibrate_run(cfg: TrainConfig, src: _Sources | None = None, echo: Callable[[str], None] = print) -> None:
    """Fill the out-of-distribution statistics of the run's ``final.pt`` and ``best.pt``."""
    from segmentation.ood import calibrate

    if src is None:
        looks = frozenset(cfg.features)
        sim = build_set(TRAIN_SEED_STREAM, cfg.train_layers, cfg.frame, cfg.workers, cfg.out / "train_set.npz", looks)
        real = load_labelled(cfg.real_dir) if cfg.real_dir is not None else LabelledSet([], [], [])
        comp = build_composites(
            real, cfg.composite_layers if len(real) else 0, cfg.frame, cfg.workers, cfg.out / "composite_set.npz", looks
        )
        src = _Sources(sim, comp, real, _large_set(cfg))
    frames = _calibration_frames(src, cfg.seed)
    for name in ("final.pt", "best.pt"):
        path = cfg.out / name
        if path.is_file():
            summary = calibrate(path, frames)
            echo(
                f"{name}: out-of-distribution threshold {summary['threshold']:.3g} "
                f"(median calibration score {summary['median_score']:.3g}, {summary['frames']} frames)"
            )
