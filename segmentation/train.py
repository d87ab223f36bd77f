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
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from segmentation.classes import CLASS_LOSS_WEIGHTS, CLASS_NAMES, DEFECT_CLASSES, MISTAKEN, NO_DEFECT, NUM_CLASSES
from segmentation.metrics import Evaluation, scores
from segmentation.model import ARCHITECTURES, ModelSpec, create_model, load_checkpoint, save_checkpoint
from segmentation.preprocess import model_input
from segmentation.trainconfig import (
    _NO_DEFECT_WEIGHT,
    DEFAULT_REAL_DIR,
    LARGE_SEED_STREAM,
    LARGE_VAL_SEED_STREAM,
    PRECISIONS,
    SCENARIO_SEED_STREAM,
    TRAIN_SEED_STREAM,
    VAL_SEED_STREAM,
    TrainConfig,
    resolve_precision,
)  # fmt: skip
from segmentation.trainingdata import (
    BatchStream,
    LabelledSet,
    _large_set,
    _sample,
    _Sources,
    build_composites,
    build_set,
    load_labelled,
    set_chunks,
)  # fmt: skip

__all__ = [
    "DEFAULT_REAL_DIR", "LARGE_SEED_STREAM", "PRECISIONS", "TRAIN_SEED_STREAM", "VAL_SEED_STREAM", "Anchor",
    "BatchStream", "LabelledSet", "TrainConfig", "_sample", "build_set", "calibrate_run", "campaign_lr",
    "consistency_loss", "distill_loss", "evaluate_arrays", "load_labelled", "partial_label_loss",
    "resolve_precision", "set_chunks", "train", "train_step",
]  # fmt: skip
# (the data and the settings are re-exported from segmentation.trainingdata and segmentation.trainconfig)

log = logging.getLogger(__name__)

_MISTAKEN_WEIGHT = 2.0  # a fine-tune's pixel where its base model was wrong weighs this much in the loss


def train_step(
    model: Any,
    opt: Any,
    xb: np.ndarray,
    yb: np.ndarray,
    weights: Any,
    cfg: TrainConfig,
    precision: str,
    real: np.ndarray | None = None,
    teacher: Any = None,
) -> float:
    """One optimiser step on a batch from :class:`BatchStream`; returns the loss. ``precision``: resolved.
    ``weights``: the classes' loss weights, (C,), or (2, C) for the simulated crops and the crops of real
    frames (``real``, per crop); ``teacher``: the model whose outputs the simulated crops are pulled to
    (``cfg.distill``)."""
    import torch

    in_ch = model.spec.in_channels
    xt, yt = torch.from_numpy(xb), torch.from_numpy(yb).long()
    rt = torch.from_numpy(real) if real is not None else torch.zeros(len(yb), dtype=torch.bool)
    if cfg.consistency > 0:  # both views in one batch: (2N, C, H, W)
        xt = torch.cat([xt[:, :in_ch], xt[:, in_ch:]])
    xt = xt.contiguous(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        logits = model(xt).float()
    if cfg.consistency > 0:
        a, b = logits.chunk(2)
        loss = 0.5 * (partial_label_loss(a, yt, weights, rt) + partial_label_loss(b, yt, weights, rt))
        loss = loss + cfg.consistency * consistency_loss(a, b)
    else:
        loss = partial_label_loss(logits, yt, weights, rt)
        if teacher is not None and cfg.distill > 0 and not bool(rt.all()):
            loss = loss + cfg.distill * distill_loss(logits[~rt], teacher, xt[~rt], precision)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return float(loss.item())


def distill_loss(logits: Any, teacher: Any, x: Any, precision: str) -> Any:
    """KL(teacher || student) per pixel, summed over the classes and averaged over the pixels: the student's
    class probabilities pulled to the teacher's on the same crops."""
    import torch
    import torch.nn.functional as F

    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        target = F.log_softmax(teacher(x).float(), 1)
    return F.kl_div(F.log_softmax(logits, 1), target, log_target=True, reduction="none").sum(1).mean()


class Anchor:
    """Decoupled L2-SP: after an optimiser step, each weight moves ``lr * strength`` of the way back to the
    value it started from (at most all of it), in every parameter group at that group's learning rate."""

    def __init__(self, opt: Any, strength: float) -> None:
        self.strength = strength
        self.start = [[p.detach().clone() for p in group["params"]] for group in opt.param_groups]

    def pull(self, opt: Any) -> None:
        import torch

        with torch.no_grad():
            for group, start in zip(opt.param_groups, self.start, strict=True):
                share = min(1.0, float(group["lr"]) * self.strength)
                for p, p0 in zip(group["params"], start, strict=True):
                    p.lerp_(p0, share)


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


def partial_label_loss(logits: Any, y: Any, weights: Any, real: Any = None) -> Any:
    """Cross-entropy over pixels labelled 0..C-1 (class-weighted: ``weights`` (C,), or (2, C) for the
    simulated crops and those of real frames, ``real`` per crop), ``-log(p0 + p1)`` over 254
    ("no defect here") pixels (253, a fine-tune's "no defect here" where its base model saw a defect, twice), 255
    ignored, averaged per crop; plus soft Dice over the non-powder classes on
    labelled pixels."""
    import torch
    import torch.nn.functional as F

    c = logits.shape[1]
    logp = F.log_softmax(logits, 1)
    known = y < c
    mistaken = y == MISTAKEN  # a fine-tune's "no defect here" where its base model saw one: counts double
    nd = (y == NO_DEFECT) | mistaken
    yk = torch.where(known, y, torch.zeros_like(y))
    if weights.ndim == 2:  # each crop its source's weights
        rows = weights[real.long()]  # (N, C)
        w = torch.gather(rows, 1, yk.flatten(1)).view_as(yk) * known
    else:
        w = weights[yk] * known
    nll = -logp.gather(1, yk[:, None])[:, 0]
    nd_nll = -torch.logsumexp(logp[:, :2], 1)
    # each crop's mean over its own labelled pixels, then the mean over crops: a crop with a few labelled
    # pixels (an operator's strokes) counts as much as a fully labelled simulated one, instead of a
    # thousandth of the batch
    nd_w = (nd.float() + mistaken.float() * (_MISTAKEN_WEIGHT - 1)) * _NO_DEFECT_WEIGHT
    num = (nll * w).sum((1, 2)) + (nd_nll * nd_w).sum((1, 2))
    den = w.sum((1, 2)) + nd_w.sum((1, 2))
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
    init_model = None
    if cfg.init is not None:  # also when resuming: the anchor's weights are init's
        init_model, _ = load_checkpoint(cfg.init)
        own = model.state_dict()
        same = {k: v for k, v in init_model.state_dict().items() if k in own and own[k].shape == v.shape}
        model.load_state_dict(same, strict=False)
        if not resume:
            echo(f"starting from the weights of {cfg.init} ({len(same)} of {len(own)} tensors match)")
    model = model.to(memory_format=torch.channels_last)
    if cfg.encoder_lr_scale == 1:  # one group (a campaign's checkpoint resumes into it)
        groups: list[dict[str, Any]] = [{"params": list(model.parameters()), "lr": cfg.lr}]
    else:
        named = list(model.named_parameters())
        groups = [
            {"params": [p for n, p in named if n.startswith("unet.encoder.")], "lr": cfg.lr * cfg.encoder_lr_scale},
            {"params": [p for n, p in named if not n.startswith("unet.encoder.")], "lr": cfg.lr},
        ]
    peaks = [float(g["lr"]) for g in groups]
    opt = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=0.0 if cfg.anchor else 1e-4)
    anchor = Anchor(opt, cfg.anchor) if cfg.anchor else None
    total = cfg.epochs * cfg.steps_per_epoch
    sched = (
        None if cfg.hours else torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=peaks, total_steps=total, pct_start=0.1)
    )
    weights = torch.tensor(CLASS_LOSS_WEIGHTS, dtype=torch.float32)
    if cfg.class_weights is not None:  # the real frames' own weights; the simulated layers keep the base's
        weights = torch.stack([weights, torch.tensor(cfg.class_weights, dtype=torch.float32)])
    # the distillation's teacher is the init model itself (load_checkpoint gives it in eval mode), not a second load
    teacher = init_model.to(memory_format=torch.channels_last) if cfg.distill > 0 and init_model is not None else None
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
            if cfg.freeze_bn:  # the base model's statistics: a few frames must not move them
                for module in model.modules():
                    if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                        module.eval()
            bar = tqdm(range(cfg.steps_per_epoch), desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="step")
            loss_sum = 0.0
            t_epoch = time.monotonic()
            for _ in bar:
                if cfg.hours:
                    lr = campaign_lr(1.0, elapsed0 + (time.monotonic() - t_start) / 60, cfg.hours)
                    for group, peak in zip(opt.param_groups, peaks, strict=True):
                        group["lr"] = lr * peak
                xb, yb, from_real = batches.next()
                loss_sum += train_step(model, opt, xb, yb, weights, cfg, precision, from_real, teacher)
                if anchor is not None:
                    anchor.pull(opt)
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
