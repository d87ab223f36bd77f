"""A training run's settings (:class:`TrainConfig`), its seed streams and its precision: what the data
(:mod:`segmentation.trainingdata`) and the loop (:mod:`segmentation.train`) both read."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from segmentation.classes import NUM_CLASSES
from segmentation.model import ARCHITECTURES, DEFAULT_ARCH
from segmentation.resources import data_dir
from segmentation.simulator import FEATURES

__all__ = ["DEFAULT_REAL_DIR", "TRAIN_SEED_STREAM", "VAL_SEED_STREAM", "TrainConfig", "resolve_precision"]

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
    # a fine-tune on a few labelled frames: the encoder learns at this share of the learning rate, the batch
    # norms keep the base model's statistics (a few frames must not move them), the loss weighs each class of
    # the real frames' crops by these weights (None: CLASS_LOSS_WEIGHTS; simulated crops keep those), and this
    # share of the real frames' crops centre on a labelled defect
    encoder_lr_scale: float = 1.0
    freeze_bn: bool = False
    class_weights: tuple[float, ...] | None = None
    label_focus: float = 0.0
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
    # >0 (with init): after every step each weight moves this share of the learning rate back towards its value
    # in ``init`` (a decoupled L2-SP: the pull replaces AdamW's decay towards zero), so a fine-tune on a few
    # frames changes the weights those frames need and keeps the rest near the model it started from
    anchor: float = 0.0
    # >0 (with init): the simulated crops' class probabilities are also pulled to init's on the same crops
    # (KL divergence, this weight): a fine-tune keeps what its base model does on the simulator's layers
    distill: float = 0.0
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
        if not 0 < self.encoder_lr_scale <= 1:
            raise ValueError(f"encoder_lr_scale={self.encoder_lr_scale}: must be above 0 and at most 1")
        if self.class_weights is not None and (
            len(self.class_weights) != NUM_CLASSES or not all(w >= 0 for w in self.class_weights)
        ):
            raise ValueError(f"class_weights={self.class_weights}: one weight >= 0 per class ({NUM_CLASSES})")
        if self.anchor < 0 or (self.anchor > 0 and self.init is None):
            raise ValueError(f"anchor={self.anchor}: must be 0 (off) or, with init, above 0")
        if self.distill < 0 or (self.distill > 0 and (self.init is None or self.consistency > 0)):
            raise ValueError(f"distill={self.distill}: must be 0 (off) or, with init and without consistency, above 0")
        if not 0 <= self.label_focus <= 1:
            raise ValueError(f"label_focus={self.label_focus}: must be between 0 and 1")
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
