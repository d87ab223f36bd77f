"""Build records: summarise and check, replay, compare two runs, the 3D report."""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
from pathlib import Path
from typing import Any

from monitor.cli.common import (
    EXIT_OK,
    EXIT_PARTIAL,
    CommandError,
    reference_layers,
)


def cmd_record(args: argparse.Namespace) -> int:
    from monitor.record import RecordError, RecordReader, check_record, recover

    path: Path = args.file
    if not path.exists():
        raise CommandError(f"{path} does not exist")
    if args.action == "check":
        problems = check_record(path)
        if problems and args.repair and any(p.startswith("marked open for writing") for p in problems):
            try:
                recover(path)
            except (OSError, RecordError) as err:
                raise CommandError(f"{path}: cannot be repaired: {err}") from err
            print(f"{path}: recovered (original kept as {path.with_suffix('.crashed.h5')})")
            problems = check_record(path)
        for p in problems:
            print(f"{path}: {p}", file=sys.stderr)
        if problems:
            return EXIT_PARTIAL
        print(f"{path}: valid LayerWatch build record (Peregrine layout)")
        return EXIT_OK
    try:
        reader = RecordReader(path)
    except RecordError as err:
        raise CommandError(str(err)) from err
    with reader:
        a = reader.attrs
        stored = reader.stored_layers()
        rows = reader.layers()
        actions = reader.table("actions")
        events = reader.table("events")
        feedback = reader.table("feedback")
        try:
            model = reader.json_attr("model")
            model = model if isinstance(model, dict) else {}
        except (KeyError, ValueError):
            model = {}
        print(f"record      {path} ({path.stat().st_size / 1e6:.1f} MB, {reader.state})")
        print(f"printer     {a['layerwatch/printer']}   job {a['layerwatch/job_id']}")
        print(
            f"frames      {a['printer/x_camera_dimension']}x{a['printer/y_camera_dimension']} px, "
            f"{float(a['printer/x_real_dimension']):.1f}x{float(a['printer/y_real_dimension']):.1f} mm, "
            f"layer {a['material/layer_thickness']} mm"
        )
        span = f"{int(stored.min())}..{int(stored.max())}" if len(stored) else "-"
        print(f"layers      {len(stored)} stored (index {span}) of {len(rows)} rows")
        versions = f"software {a['layerwatch/software_version']}   schema {a['layerwatch/schema_version']}"
        print(f"model       {model.get('id')}   {versions}")
        m = reader.metrics()
        wanted = {"porosity_fraction_part", "warping_area_mm2", "spatter_count"}
        if len(stored) and int(stored.max()) < len(m) and wanted <= set(m.dtype.names or ()):
            last = int(stored.max())
            # the warping figure the pause rules act on, under the name their reasons use
            warping = (
                f"confirmed warping {m['warping_confirmed_area_mm2'][last]:.1f} mm²"
                if "warping_confirmed_area_mm2" in (m.dtype.names or ())
                else f"warping {m['warping_area_mm2'][last]:.1f} mm²"
            )
            print(
                f"last layer  porosity {100 * m['porosity_fraction_part'][last]:.2f}% of parts, "
                f"{warping}, spatter {int(m['spatter_count'][last])} particles"
            )
        try:
            roi = reader.json_attr("roi") if "layerwatch/roi" in a else None
        except ValueError:
            roi = None
        if isinstance(roi, dict):
            print(f"plate       {roi.get('source')} outline {roi.get('points')}")
        review = sorted({int(e["layer"]) for e in events if e["code"] == "needs_review"})
        if review:
            shown = ", ".join(map(str, review[:20])) + (" ..." if len(review) > 20 else "")
            print(f"review      {len(review)} layers unlike the model's training data, not judged: {shown}")
        for e in events:
            if e["code"] == "drift":
                print(f"drift       at layer {e['layer']}: {e['message']}")
        labels = reader.table("labels")
        shadow = reader.shadow_model
        if labels:
            who = sorted({str(row["operator"]) for row in labels})
            print(f"labels      {len(labels)} stroke(s) on {len({row['layer'] for row in labels})} layer(s) by "
                  f"{', '.join(who)}")  # fmt: skip
        if shadow:
            judged = reader.shadow_layers()
            acted = sorted(k for k, v in judged.items() if v["would_act"])
            print(f"shadow      {shadow.get('id')} on {len(judged)} layer(s); would have acted on {len(acted)}"
                  + (f" (from layer {acted[0]})" if acted else ""))  # fmt: skip
        print(f"events      {len(events)}   actions {len(actions)}   operator feedback {len(feedback)}")
        verdicts = {f["incident"]: f["verdict"] for f in feedback}
        incidents: dict[str, dict[str, Any]] = {}
        for act in actions:
            if act["incident"]:
                incidents.setdefault(act["incident"], act)
        for inc, act in incidents.items():
            said = verdicts.get(inc, "no verdict yet")
            print(f"incident    {inc}   ({act['rule']}, {act['action']} at layer {act['layer']}; {said})")
        for act in actions:
            if act["state"] != "requested":
                what = f"{act['action']} {act['state']} ({act['rule']})"
                print(f"  layer {act['layer']}: {what} {json_detail(act['detail'])}")
    return EXIT_OK


def cmd_replay(args: argparse.Namespace) -> int:
    from monitor.replay import ReplayError, ReplayOptions, run_replay, summary

    speed = None if args.speed == "max" else float(args.speed)
    if speed is not None and speed <= 0:
        raise CommandError(f"--speed {args.speed}: give a factor > 0 (10 = ten times faster) or max")
    printer = None
    if args.printer_backend != "virtual":
        if not args.move_real_printer:
            raise CommandError(
                f"--printer-backend {args.printer_backend} would pause or adjust a real machine; "
                "add --move-real-printer if that is what you want"
            )
        from printer_io.printer import create_printer

        printer = create_printer(args.printer_backend, "replay", url=args.url, api_key_file=args.api_key_file).start()
    if not args.verbose:
        for name in ("monitor", "printer_io"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
    opts = ReplayOptions(
        source=args.record,
        out=args.out,
        speed=speed,
        model=args.model,
        models_dir=args.models,
        policy=args.policy,
        broker=args.broker,
        engine=args.engine,
        printer=printer,
        skip_missing=args.skip_missing,
        reference_layers=args.reference_layers,
        progress=sys.stderr.isatty(),  # a bar on a terminal; in logs, the summary lines only
    )
    try:
        result = run_replay(opts)
    except ReplayError as err:
        raise CommandError(str(err)) from err
    finally:
        if printer is not None:
            printer.close()
    for line in summary(result, args.record):
        print(line)
    return EXIT_OK


def cmd_compare(args: argparse.Namespace) -> int:
    from monitor.compare import compare, format_report, load_run, write_json
    from monitor.record import RecordError

    runs = []
    for path in (args.a, args.b):
        if not path.exists():
            raise CommandError(f"{path} does not exist")
        try:
            runs.append(load_run(path))
        except (RecordError, OSError, KeyError) as err:
            raise CommandError(f"{path}: not a LayerWatch record ({err})") from err
    try:
        report = compare(runs[0], runs[1], tolerance=args.tolerance, truth=args.truth)
    except RecordError as err:
        raise CommandError(f"the ground truth: {err}") from err
    print(format_report(report))
    if args.json:
        write_json(report, args.json)
        print(f"JSON written to {args.json}")
    return EXIT_PARTIAL if report["decisions_differ"] else EXIT_OK


def json_detail(text: str) -> str:
    try:
        data = json.loads(text)
    except ValueError:
        return text
    return str(data.get("detail") or data.get("reason") or "")


def cmd_report(args: argparse.Namespace) -> int:
    if not args.record.exists():
        raise CommandError(f"{args.record} does not exist")
    report_mod = importlib.import_module("dashboards.report")  # reports stand above the monitor
    criteria = report_mod.Criteria(
        max_pore_diameter_mm=args.max_pore_mm,
        max_porosity_pct=args.max_porosity_pct,
        max_warping_mm3=args.max_warping_mm3,
    )
    try:
        report = report_mod.analyze(args.record, floor_voxels=args.floor, criteria=criteria)
    except report_mod.ReportError as err:
        raise CommandError(str(err)) from err
    files = report_mod.write_report(report, args.out)
    for note in report.build["notes"]:
        print(f"note: {note}")
    by_class: dict[str, int] = {}
    for d in report.defects:
        by_class[d.cls] = by_class.get(d.cls, 0) + 1
    print(
        f"{len(report.defects)} defects ({', '.join(f'{k} {v}' for k, v in sorted(by_class.items())) or 'none'}); "
        f"{len(report.parts)} part(s)"
    )
    for p in report.parts:
        why = f" ({'; '.join(p.reasons)})" if p.reasons else ""
        print(f"  part {p.id}: {p.volume_mm3:.1f} mm³, porosity {p.porosity_pct:.3f} %: {p.verdict}{why}")
    print("wrote " + ", ".join(str(f) for f in files))
    return EXIT_OK


def cmd_labels(args: argparse.Namespace) -> int:
    from monitor.labels import export_labels
    from monitor.record import build_records

    if not args.records.is_dir():
        raise CommandError(f"--records {args.records}: not a folder of build records")
    records = build_records(args.records, recursive=True)
    counts = export_labels(records, args.out)
    done = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in sorted(counts.items()) if k != "layers") or "none"
    print(f"{counts['layers']} labelled layer(s) from {len(records)} record(s) "
          f"({done}) in {args.out}/images and {args.out}/masks")  # fmt: skip
    return EXIT_OK


def cmd_backtest(args: argparse.Namespace) -> int:
    from monitor.backtest import backtest
    from monitor.record import build_records

    builds: list[Path] = []
    for item in args.builds:
        if item.is_dir():
            builds += build_records(item, recursive=True)
        elif item.is_file():
            builds.append(item)
        else:
            raise CommandError(f"{item}: no such build file or folder")
    if not builds:
        raise CommandError("no build file (*.h5) among the arguments")
    if args.workers < 1:
        raise CommandError(f"--workers {args.workers}: give 1 or more")
    try:
        rows = backtest(
            builds, args.out, workers=args.workers, scheduler=args.scheduler, model=args.model, policy=args.policy,
            models_dir=args.models, progress=sys.stderr.isatty(),
        )  # fmt: skip
    except ValueError as err:
        raise CommandError(str(err)) from err
    failed = [r for r in rows if r.get("error")]
    for r in failed:
        print(f"  {r.get('build')}: {r['error']}", file=sys.stderr)
    return EXIT_PARTIAL if failed else EXIT_OK


def register(sub: Any) -> None:
    """Add this group's subcommands to the ``layerwatch`` parser."""
    p = sub.add_parser("record", help="summarise or validate a build record (HDF5)")
    p.add_argument("action", choices=("info", "check"))
    p.add_argument("file", type=Path)
    p.add_argument("--repair", action="store_true", help="check: rewrite a record left open by a crashed writer")
    p.set_defaults(func=cmd_record)

    p = sub.add_parser("replay", help="run a recorded build through the pipeline again (test a model or policy)")
    p.add_argument("record", type=Path, help="a build record, a simulated build file, or a Peregrine-layout file")
    p.add_argument("--out", type=Path, default=None, help="the new record (default replays/NAME-replay.h5)")
    p.add_argument("--speed", default="max", help="pace: a factor of the original (10 = ten times faster) or max")
    p.add_argument(
        "--model", type=Path, default=None, help="model checkpoint (default: the model in use, see `model list`)"
    )
    p.add_argument("--models", type=Path, default=Path("models"), help="model store (default: models)")
    p.add_argument("--policy", type=Path, default=None, help="policy file instead of the default")
    p.add_argument("--engine", choices=("auto", "onnx", "openvino", "torch"), default="auto")
    p.add_argument("--broker", default=None, help="MQTT broker URL (default: start a local one)")
    p.add_argument("--skip-missing", action="store_true", help="replay a record whose some layers are missing")
    p.add_argument(
        "--reference-layers",
        type=reference_layers,
        metavar="N",
        default=3,
        help="the build's lighting from its first N layers' powder, as [monitor] reference_layers (0: off)",
    )
    p.add_argument("--printer-backend", choices=("virtual", "octoprint", "moonraker"), default="virtual")
    p.add_argument("--url", default="http://127.0.0.1:5000", help="real printer URL (with --printer-backend)")
    p.add_argument("--api-key-file", type=Path, default=None)
    p.add_argument("--move-real-printer", action="store_true", help="confirm that a real backend may be paused")
    p.set_defaults(func=cmd_replay)

    p = sub.add_parser("backtest", help="replay many builds as Dask tasks: a model or policy against every build")
    p.add_argument("builds", type=Path, nargs="+", help="build files, or folders of them (searched recursively)")
    p.add_argument("--out", type=Path, required=True, help="writes OUT/<name>-replay.h5 and OUT/summary.csv")
    p.add_argument("--workers", type=int, default=2, help="local worker processes (default 2)")
    p.add_argument("--scheduler", default=None, help="an existing Dask scheduler's address instead (tcp://host:8786)")
    p.add_argument("--model", type=Path, default=None, help="model checkpoint (default: the model in use)")
    p.add_argument("--policy", type=Path, default=None, help="policy file instead of the default")
    p.add_argument("--models", type=Path, default=Path("models"), help="model store (default: models)")
    p.set_defaults(func=cmd_backtest)

    p = sub.add_parser("compare", help="compare two runs of a build: metrics, severities, actions, ground truth")
    p.add_argument("a", type=Path)
    p.add_argument("b", type=Path)
    p.add_argument("--truth", type=Path, default=None, help="ground-truth build file (default: what both replay)")
    p.add_argument("--tolerance", type=float, default=0.01, help="relative tolerance for metrics (default 0.01)")
    p.add_argument("--json", type=Path, default=None, help="also write the report as JSON")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("report", help="3D defect report per part: HTML (offline), defects.csv, parts.csv, report.json")
    p.add_argument("record", type=Path, help="a build record (live or finished) or a build file with masks")
    p.add_argument("--out", type=Path, required=True, help="folder for the report files")
    p.add_argument("--floor", type=int, default=3, help="smallest defect kept, in voxels (default 3)")
    p.add_argument("--max-pore-mm", type=float, default=0.5, help="acceptance: largest pore diameter (default 0.5)")
    p.add_argument("--max-porosity-pct", type=float, default=0.5, help="acceptance: porosity of a part (default 0.5)")
    p.add_argument("--max-warping-mm3", type=float, default=0.0, help="acceptance: warping volume (default 0)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("labels", help="operators' labels and verdicts in build records as training labels")
    lsub = p.add_subparsers(dest="labels_command", required=True)
    q = lsub.add_parser(
        "export", help="images/ + masks/ PNGs of labelled layers: class ids, 254 no defect here, 255 not labelled"
    )
    q.add_argument("--records", type=Path, required=True, help="folder of build records (searched recursively)")
    q.add_argument("--out", type=Path, required=True)
    q.set_defaults(func=cmd_labels)
