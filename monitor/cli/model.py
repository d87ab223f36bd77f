"""The model: simulate, segment, evaluate, train, fine-tune, export; the gate and the store of models in use."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from monitor.cli.common import (
    EXIT_OK,
    EXIT_PARTIAL,
    CommandError,
    RefusedError,
    log,
    model_args,
    need_training_stack,
    positive_int,
    segmenter,
)

DEFAULT_MODELS_DIR = Path("models")  # as monitor.models; not imported here: the parser must stay light


def cmd_synth(args: argparse.Namespace) -> int:
    from segmentation.dataset import write_build, write_dataset

    if args.record is not None:
        from monitor.record import write_truth_build
        from segmentation.classes import CLASS_NAMES
        from segmentation.simulator import SimBuild, scenario_spec

        warp = None if args.scenario == "clean" else args.warp_start
        spec = scenario_spec(args.seed, args.size, args.layers, warp_start=warp)
        build = SimBuild(args.seed, args.size, args.size, args.layers, spec=spec)
        layers = [build.layer(k) for k in range(args.layers)]
        images = [x.image if x.image.ndim == 2 else x.image.mean(axis=2).astype(x.image.dtype) for x in layers]
        write_truth_build(
            args.record,
            images,
            [x.mask for x in layers],
            mm_per_px=spec.mm_per_px,
            layer_thickness_mm=spec.layer_thickness,
            class_names=CLASS_NAMES,
            description=f"simulated {args.scenario} build, seed {args.seed}"
            + (f", warp from layer {warp}" if warp is not None else ""),
        )
        print(f"wrote a simulated {args.scenario} build of {args.layers} layers with ground truth to {args.record}")
        return EXIT_OK
    if args.out is None:
        raise CommandError("synth needs --out DIR (images and masks) or --record FILE.h5 (a build file)")
    if args.build:
        n = write_build(args.out, seed=args.seed, layers=args.layers, size=args.size)
        print(f"wrote a build of {n} layers to {args.out}")
    else:
        n = write_dataset(args.out, seed=args.seed, count=args.count, size=args.size)
        print(f"wrote {n} layers (images/ and masks/) to {args.out}")
    return EXIT_OK


def cmd_segment(args: argparse.Namespace) -> int:
    from segmentation.errors import SegmentationError
    from segmentation.imageio import iter_image_paths, read_image, write_mask, write_overlay

    failed = 0
    done = 0
    seen: dict[str, Path] = {}
    seg = None
    from tqdm import tqdm

    items = list(iter_image_paths(args.inputs))
    for item in tqdm(items, desc="segment", unit="image", disable=not sys.stderr.isatty() or len(items) < 2):
        if isinstance(item, Exception):
            print(f"layerwatch segment: {item}", file=sys.stderr)
            failed += 1
            continue
        name = item.stem + ".png"
        if name in seen:
            print(
                f"layerwatch segment: {item}: output {name} already written for {seen[name]}; skipped", file=sys.stderr
            )
            failed += 1
            continue
        try:
            image = read_image(item, max_pixels=args.max_pixels)
            if seg is None:
                seg = segmenter(args)
                if args.verbose or args.say_engine:  # which engine and precision runs, and why
                    print(f"engine: {seg.describe()}", file=sys.stderr)
            result = seg.segment(image)
            write_mask(args.out / name, result.mask)
            if args.overlay:
                write_overlay(args.out / "overlays" / name, image, result.mask)
        except SegmentationError as err:
            print(f"layerwatch segment: {err}", file=sys.stderr)
            failed += 1
            continue
        seen[name] = item
        done += 1
        log.info("%s -> %s", item, args.out / name)
    if seg is not None:
        seg.close()
    print(f"segmented {done} image(s) into {args.out}" + (f"; {failed} failed (see above)" if failed else ""))
    return EXIT_PARTIAL if failed else EXIT_OK


def cmd_evaluate(args: argparse.Namespace) -> int:
    from segmentation.evaluate import evaluate_dirs, format_report

    seg = segmenter(args)
    try:
        ev, problems = evaluate_dirs(args.images, args.masks, seg, max_pixels=args.max_pixels)
    finally:
        seg.close()
    for p in problems:
        print(f"layerwatch evaluate: {p}", file=sys.stderr)
    if ev.frames == 0:
        raise CommandError(f"no image in {args.images} has a matching mask in {args.masks} (same name, .png)")
    report = ev.to_dict()
    print(format_report(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
        print(f"JSON written to {args.json}")
    return EXIT_PARTIAL if problems else EXIT_OK


def cmd_train(args: argparse.Namespace) -> int:
    need_training_stack("training")
    from segmentation.train import DEFAULT_REAL_DIR, TrainConfig, calibrate_run, train

    try:
        cfg = TrainConfig(
            out=args.out,
            arch=args.arch,
            seed=args.seed,
            train_layers=args.train_layers,
            val_layers=args.val_layers,
            batch=args.batch,
            epochs=args.epochs,
            steps_per_epoch=args.steps,
            lr=args.lr,
            max_minutes=args.max_minutes,
            precision=args.precision,
            hours=args.hours,
            real_dir=None if args.no_real else (args.real or DEFAULT_REAL_DIR),
            composite_layers=args.composites,
            scenario_layers=args.scenarios,
            real_share=args.real_share,
            composite_share=args.composite_share,
            init=args.init,
            consistency=args.consistency,
            consistency_tone=args.consistency_tone,
            large_layers=args.large_layers,
            large_frame=args.large_frame,
            large_share=args.large_share,
        )
    except ValueError as err:
        raise CommandError(str(err)) from err
    if args.calibrate_only:
        calibrate_run(cfg)
        return EXIT_OK
    if args.resume_from is not None and not args.resume_from.is_file():
        raise CommandError(f"--resume-from {args.resume_from}: no such checkpoint")
    result = train(cfg, resume=args.resume or args.resume_from is not None, resume_from=args.resume_from)
    print(f"best mean defect IoU {result['best_defect_iou']:.3f}; weights in {args.out / 'best.pt'}")
    return EXIT_OK


def cmd_export(args: argparse.Namespace) -> int:
    need_training_stack("exporting a checkpoint to ONNX")
    from segmentation.inference import export_onnx

    out = args.out or args.model.with_suffix(".onnx")
    export_onnx(args.model, out)
    print(f"wrote {out}")
    return EXIT_OK


def cmd_finetune(args: argparse.Namespace) -> int:
    need_training_stack("fine-tuning")
    from monitor.labels import export_labels
    from monitor.models import ModelStore
    from segmentation.finetune import FinetuneOptions, finetune
    from segmentation.inference import DEFAULT_MODEL

    if args.records is None and (args.images is None or args.masks is None):
        raise CommandError("give --images and --masks (your labelled frames), or --records (build records)")
    images, masks = args.images, args.masks
    if args.records is not None:
        records = _records(args.records)
        exported = args.out / "labels-from-records"
        counts = export_labels(records, exported)
        if not counts["layers"]:
            raise CommandError(f"--records {args.records}: no record has a verdict or a label to learn from")
        print(f"finetune: {counts['layers']} labelled layer(s) from {len(records)} record(s) in {args.records}")
        if images is not None and masks is not None:  # both: the user's own frames join the records' layers
            _merge(images, masks, exported)
        images, masks = exported / "images", exported / "masks"
    base = args.base or ModelStore(args.models).current_model(DEFAULT_MODEL)
    opts = FinetuneOptions(
        images=images,
        masks=masks,
        out=args.out,
        minutes=args.minutes,
        base=base,
        sim_share=args.sim_share,
        steps=args.steps,
        **({} if args.anchor is None else {"anchor": args.anchor}),
        **({} if args.distill is None else {"distill": args.distill}),
    )
    finetune(opts)
    return EXIT_OK


def _records(folder: Path) -> list[Path]:
    from monitor.record import build_records

    if not folder.is_dir():
        raise CommandError(f"--records {folder}: not a folder of build records")
    return build_records(folder, recursive=True)


def _merge(images: Path, masks: Path, into: Path) -> None:
    import shutil

    from segmentation.finetune import check_labels

    pairs, _ = check_labels(images, masks)
    for image, mask in pairs:
        shutil.copyfile(image, into / "images" / f"own-{image.name}")
        shutil.copyfile(mask, into / "masks" / f"own-{image.with_suffix('.png').name}")


def cmd_model(args: argparse.Namespace) -> int:
    """``layerwatch model list|evaluate|promote|rollback``: the gate and the store of deployed models."""
    from monitor.models import ModelStore, operator_name
    from segmentation.inference import DEFAULT_MODEL

    store = ModelStore(args.models)
    if args.model_command == "list":
        current = store.current()
        print(f"in use: {f'{current.id} ({current.path})' if current else f'the shipped model {DEFAULT_MODEL}'}")
        for e in store.history():
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e.time))
            forced = " FORCED" if e.forced else ""
            print(f"  {when}  {e.event:8s} {e.id}{forced} by {e.by}: {e.why} (was {e.previous or '-'})")
        return EXIT_OK
    if args.model_command == "rollback":
        entry = store.rollback(by=operator_name(args.by), why=_reason(args), to=args.to)
        print(f"rolled back to {entry.id} ({entry.path}); monitors switch at their next layer")
        return EXIT_OK
    from monitor.gate import evaluate, format_evaluation, still_valid

    in_use = store.current_model(DEFAULT_MODEL)
    if not args.candidate.is_file():
        raise CommandError(f"{args.candidate}: no such model checkpoint")
    if args.model_command == "promote":
        why = _reason(args)  # before minutes of replays
    records = _records(args.records)
    report = None
    if args.model_command == "promote" and args.evaluation is not None:
        try:
            report = json.loads(args.evaluation.read_text())
        except (OSError, ValueError) as err:
            raise CommandError(f"--evaluation {args.evaluation}: not an evaluation ({err})") from err
        stale = still_valid(report, args.candidate, in_use, records) if isinstance(report, dict) else "not a report"
        if stale is not None:
            print(f"--evaluation {args.evaluation} no longer stands ({stale}): evaluating again")
            report = None
    if report is None:
        report = evaluate(args.candidate, in_use, records, sim_layers=args.sim_layers)
    print(format_evaluation(report))
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=1, default=str))
    if not report["builds"]:
        print(f"note: no record in {args.records} has operators' verdicts or labels: nothing was compared")
    if args.model_command == "evaluate":
        return EXIT_OK
    if report["refusals"] and not args.force:
        raise RefusedError(
            "not promoted: " + "; ".join(report["refusals"]) + " (--force with --reason to promote it anyway)"
        )
    if not report["builds"] and not args.force:
        raise RefusedError("not promoted: no reviewed build to prove it on (--force with --reason to promote anyway)")
    entry = store.promote(args.candidate, by=operator_name(args.by), why=why, forced=args.force, evaluation=report)
    print(f"promoted {entry.id} (was {entry.previous}){' FORCED' if entry.forced else ''}; "
          "monitors switch at their next layer")  # fmt: skip
    return EXIT_OK


def _reason(args: argparse.Namespace) -> str:
    if not (args.reason or "").strip():
        raise CommandError("--reason is required: say why, it is recorded with your name")
    return str(args.reason).strip()[:500]


def register(sub: Any) -> None:
    """Add this group's subcommands to the ``layerwatch`` parser."""
    from segmentation.model import ARCHITECTURES, DEFAULT_ARCH

    p = sub.add_parser("segment", help="segment layer images into class-id masks")
    p.add_argument("inputs", nargs="+", type=Path, metavar="IMAGE_OR_DIR")
    p.add_argument("--out", type=Path, required=True, help="folder for NAME.png masks (uint8 class ids)")
    p.add_argument("--overlay", action="store_true", help="also write colour overlays to OUT/overlays/")
    p.add_argument(
        "--verbose",
        dest="say_engine",
        action="store_true",
        help="say which engine and precision run (and how the precision's classes agree with f32's)",
    )
    model_args(p)
    p.set_defaults(func=cmd_segment)

    p = sub.add_parser("evaluate", help="score the model against ground-truth masks")
    p.add_argument("--images", type=Path, required=True, help="folder of layer images")
    p.add_argument("--masks", type=Path, required=True, help="folder of NAME.png class-id masks")
    p.add_argument("--json", type=Path, default=None, help="also write the report as JSON here")
    model_args(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("synth", help="simulate layer images with exact masks (a data set, a build, a build file)")
    p.add_argument("--out", type=Path, default=None, help="folder for a data set or a build's images and masks")
    p.add_argument(
        "--record", type=Path, default=None, help="write a scenario build with ground truth as one HDF5 build file"
    )
    p.add_argument("--scenario", choices=("warp", "clean"), default="warp", help="--record: defect scenario")
    p.add_argument("--warp-start", type=int, default=8, help="--record: layer where warping starts (default 8)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--count", type=positive_int, default=64, help="layers in a data set (default 64)")
    p.add_argument("--size", type=positive_int, default=512, help="frame height and width in px (default 512)")
    p.add_argument("--build", action="store_true", help="write one build (consecutive layers) instead")
    p.add_argument("--layers", type=positive_int, default=40, help="layers in a build (default 40)")
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("train", help="train the U-Net on simulated layers")
    p.add_argument("--out", type=Path, required=True, help="run folder: checkpoints, cached data, history")
    p.add_argument("--arch", default=DEFAULT_ARCH, help=f"one of {', '.join(sorted(ARCHITECTURES))}")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train-layers", type=positive_int, default=1600)
    p.add_argument("--val-layers", type=positive_int, default=48)
    p.add_argument("--batch", type=positive_int, default=12)
    p.add_argument("--epochs", type=positive_int, default=40)
    p.add_argument("--steps", type=positive_int, default=80, help="optimiser steps per epoch")
    p.add_argument(
        "--precision",
        choices=("auto", "bf16", "fp32"),
        default="auto",
        help="training arithmetic (default auto: bf16 where the CPU has AVX-512 BF16 or AMX, else fp32)",
    )
    p.add_argument(
        "--hours",
        type=float,
        default=0.0,
        help="a campaign of this many training hours over resumed runs: cosine learning rate over the hours "
        "(0: one-cycle over --epochs)",
    )
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument(
        "--max-minutes", type=float, default=0.0, help="stop after the epoch that passes this run's minutes (0: off)"
    )
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    p.add_argument(
        "--resume-from",
        type=Path,
        default=None,
        help="with --resume: the last.pt to continue from where OUT has none (a campaign's committed checkpoint)",
    )
    p.add_argument(
        "--real",
        type=Path,
        default=None,
        help="labelled real frames (images/ + masks/, class ids, 254 no defect, 255 not labelled); "
        "default: the licensed train frames in data/realdata",
    )
    p.add_argument("--no-real", action="store_true", help="simulated layers only")
    p.add_argument("--composites", type=int, default=480, help="simulated layers drawn over real clean frames")
    p.add_argument(
        "--scenarios", type=int, default=800, help="layers of scenario builds (slow and fast warps, clean builds)"
    )
    p.add_argument("--real-share", type=float, default=0.2, help="share of each batch from the real frames")
    p.add_argument("--composite-share", type=float, default=0.3, help="share of each batch from the composites")
    p.add_argument("--init", type=Path, default=None, help="start from these weights (same architecture)")
    p.add_argument(
        "--consistency",
        type=float,
        default=0.0,
        help="weight of the lighting-consistency loss: each crop is also seen under another lighting (default 0)",
    )
    p.add_argument(
        "--consistency-tone",
        action="store_true",
        help="with --consistency: the second view differs by a tone curve only (gamma, contrast, gain)",
    )
    p.add_argument(
        "--large-layers", type=int, default=0, help="simulated layers rendered at --large-frame px (default 0)"
    )
    p.add_argument("--large-frame", type=int, default=1024, help="frame size of the large layers (default 1024)")
    p.add_argument(
        "--large-share", type=float, default=0.4, help="share of the simulated crops taken from the large layers"
    )
    p.add_argument(
        "--calibrate-only",
        action="store_true",
        help="only (re)compute the out-of-distribution statistics of OUT/final.pt and OUT/best.pt",
    )
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("finetune", help="teach the model your camera from a few labelled frames, in minutes")
    p.add_argument("--images", type=Path, default=None, help="your frames")
    p.add_argument(
        "--masks",
        type=Path,
        default=None,
        help="PNG masks named like the frames: class ids 0-4, 254 no defect here, 255 not labelled",
    )
    p.add_argument(
        "--records", type=Path, default=None, help="build records: learn from their operators' labels and verdicts"
    )
    p.add_argument("--models", type=Path, default=DEFAULT_MODELS_DIR, help="model store (default: models)")
    p.add_argument("--out", type=Path, required=True, help="writes OUT/model.pt, OUT/model.onnx, OUT/MODEL_CARD.md")
    p.add_argument("--minutes", type=float, default=15.0, help="time budget (default 15)")
    p.add_argument(
        "--base", type=Path, default=None, help="the model to start from (default: the store's current, or shipped)"
    )
    p.add_argument(
        "--sim-share", type=float, default=0.7, help="share of each batch from simulated layers (default 0.7)"
    )
    p.add_argument(
        "--steps", type=positive_int, default=None, help="a fixed number of steps (default: what --minutes allows)"
    )
    p.add_argument(
        "--anchor",
        type=float,
        default=None,
        help="how hard every weight is pulled back to the base model's weights (0: off; default 30)",
    )
    p.add_argument(
        "--distill",
        type=float,
        default=None,
        help="weight of the pull of simulated layers' outputs to the base model's (default 0: off)",
    )
    p.set_defaults(func=cmd_finetune)

    p = sub.add_parser("model", help="the models in use: evaluate a candidate, promote it, list, roll back")
    msub = p.add_subparsers(dest="model_command", required=True)

    def store_args(q: argparse.ArgumentParser) -> None:
        q.add_argument("--models", type=Path, default=DEFAULT_MODELS_DIR, help="model store (default: models)")

    def who(q: argparse.ArgumentParser) -> None:
        q.add_argument("--reason", default="", help="why (recorded with your name; required)")
        q.add_argument("--by", default=None, help="who (default: $LAYERWATCH_OPERATOR or the login name)")

    for name, text in (
        ("evaluate", "replay reviewed builds with the current and the candidate model, side by side"),
        ("promote", "make the candidate the model in use, if it passes the gate on reviewed builds"),
    ):
        q = msub.add_parser(name, help=text)
        q.add_argument("candidate", type=Path, help="the candidate checkpoint (.pt), e.g. from finetune")
        q.add_argument("--records", type=Path, required=True, help="build records with verdicts or labels")
        q.add_argument("--sim-layers", type=int, default=8, help="held-out simulated layers to score (default 8)")
        q.add_argument("--json", type=Path, default=None, help="also write the evaluation as JSON")
        store_args(q)
        if name == "promote":
            who(q)
            q.add_argument("--force", action="store_true", help="promote although the gate refuses (give --reason)")
            q.add_argument(
                "--evaluation", type=Path, default=None,
                help="the JSON of an earlier `model evaluate --json` of this candidate (used if nothing changed since)",
            )  # fmt: skip
        q.set_defaults(func=cmd_model)
    q = msub.add_parser("list", help="the model in use and every promotion and rollback")
    store_args(q)
    q.set_defaults(func=cmd_model)
    q = msub.add_parser("rollback", help="back to the model before the current one (or --to ID, or shipped)")
    q.add_argument("--to", default=None, help="a promoted model's id (see model list), or 'shipped'")
    store_args(q)
    who(q)
    q.set_defaults(func=cmd_model)

    p = sub.add_parser("export-onnx", help="export a checkpoint to ONNX")
    p.add_argument("--model", type=Path, default=None)
    p.add_argument("--out", type=Path, default=None, help="default: the checkpoint's path with .onnx")
    p.set_defaults(func=cmd_export)
