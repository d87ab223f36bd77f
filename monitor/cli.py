"""The ``layerwatch`` command line: one entry point, one subcommand per job.

Foreseeable mistakes (bad file, bad argument, missing model) end in one line on stderr naming the
file or value and what to do, and a non-zero exit status; never a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from printer_io.vocabulary import Verdict

__all__ = ["main"]

log = logging.getLogger("layerwatch")

EXIT_OK, EXIT_PARTIAL, EXIT_USAGE = 0, 1, 2


class CommandError(Exception):
    """A command cannot go on; its message is printed as the one error line."""


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def _model_args(p: argparse.ArgumentParser) -> None:
    from segmentation.imageio import DEFAULT_MAX_PIXELS
    from segmentation.inference import DEFAULT_MODEL, ENGINES

    p.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="model checkpoint (.pt); default: shipped model")
    p.add_argument("--engine", choices=sorted(ENGINES), default="onnx", help="inference engine (default: onnx)")
    p.add_argument("--threads", type=_positive_int, default=None, help="CPU threads for inference")
    p.add_argument("--tile", type=_positive_int, default=1024, help="tile size in px for large frames (default 1024)")
    p.add_argument(
        "--max-pixels",
        type=_positive_int,
        default=DEFAULT_MAX_PIXELS,
        help="refuse frames larger than this (default 64e6)",
    )


def _segmenter(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from segmentation.inference import Segmenter

    try:
        return Segmenter(
            model_path=args.model, engine=args.engine, tile=args.tile, threads=args.threads, max_pixels=args.max_pixels
        ).start()
    except ValueError as err:
        raise CommandError(str(err)) from err


# ---- synth ------------------------------------------------------------------------------------
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


# ---- segment ----------------------------------------------------------------------------------
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
            seg = seg or _segmenter(args)
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


# ---- evaluate ---------------------------------------------------------------------------------
def cmd_evaluate(args: argparse.Namespace) -> int:
    from segmentation.evaluate import evaluate_dirs, format_report

    seg = _segmenter(args)
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


# ---- train ------------------------------------------------------------------------------------
def cmd_train(args: argparse.Namespace) -> int:
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
            real_dir=None if args.no_real else (args.real or DEFAULT_REAL_DIR),
            composite_layers=args.composites,
            scenario_layers=args.scenarios,
            real_share=args.real_share,
            composite_share=args.composite_share,
            init=args.init,
            large_layers=args.large_layers,
            large_frame=args.large_frame,
            large_share=args.large_share,
        )
    except ValueError as err:
        raise CommandError(str(err)) from err
    if args.calibrate_only:
        calibrate_run(cfg)
        return EXIT_OK
    result = train(cfg, resume=args.resume)
    print(f"best mean defect IoU {result['best_defect_iou']:.3f}; weights in {args.out / 'best.pt'}")
    return EXIT_OK


# ---- export-onnx ------------------------------------------------------------------------------
def cmd_export(args: argparse.Namespace) -> int:
    from segmentation.inference import export_onnx

    out = args.out or args.model.with_suffix(".onnx")
    export_onnx(args.model, out)
    print(f"wrote {out}")
    return EXIT_OK


# ---- demo -------------------------------------------------------------------------------------
def cmd_demo(args: argparse.Namespace) -> int:
    from monitor.demo import DemoOptions, run_demo

    opts = DemoOptions(
        out=args.out,
        layers=args.layers,
        size=args.size,
        scenario=args.scenario,
        warp_start=args.warp_start,
        seed=args.seed,
        layer_time_s=args.layer_time,
        broker=args.broker,
        broker_impl=args.broker_impl,
        headless=args.headless,
        stay=args.stay,
        engine=args.engine,
        model=args.model,
    )
    if not args.verbose:  # the demo prints its own line per layer and per action
        for name in ("monitor", "printer_io"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
    try:
        return run_demo(opts)
    except ValueError as err:
        raise CommandError(str(err)) from err


# ---- monitor ----------------------------------------------------------------------------------
def cmd_monitor(args: argparse.Namespace) -> int:
    from monitor.config import load_config
    from monitor.service import MonitorService

    config = load_config(args.config)
    if args.broker:
        config = config.model_copy(update={"mqtt": config.mqtt.model_copy(update={"url": args.broker})})
    try:
        service = MonitorService(config, printer_ids=args.printer or None)
    except ValueError as err:
        raise CommandError(str(err)) from err
    service.start()
    print(f"monitor: judging {', '.join(service.printer_ids)}; records in {config.monitor.out_dir}; Ctrl-C stops")
    try:
        _wait_for_stop()
    finally:
        service.close()
    for pid, pm in service.monitors.items():
        print(f"monitor: {pid}: {pm.counters['layers']} layer(s) judged; {dict(pm.link.rejected) or 'no'} rejects")
    return EXIT_OK


# ---- record -----------------------------------------------------------------------------------
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
            print(
                f"last layer  porosity {100 * m['porosity_fraction_part'][last]:.2f}% of parts, "
                f"warping {m['warping_area_mm2'][last]:.1f} mm², spatter {int(m['spatter_count'][last])} particles"
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
        policy=args.policy,
        broker=args.broker,
        engine=args.engine,
        printer=printer,
        skip_missing=args.skip_missing,
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
    report = compare(runs[0], runs[1], tolerance=args.tolerance, truth=args.truth)
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


# ---- dashboard --------------------------------------------------------------------------------
def cmd_dashboard(args: argparse.Namespace) -> int:
    import importlib
    import os

    if args.record is None and args.records is None:
        raise CommandError("dashboard needs --record FILE or --records DIR (the monitor's out_dir)")
    if args.record is not None and not args.record.exists():
        raise CommandError(f"{args.record} does not exist")
    if args.records is not None and not args.records.is_dir():
        raise CommandError(
            f"records folder {args.records} does not exist: give the monitor's out_dir ([monitor] out_dir), "
            "or create it first"
        )
    from printer_io.credentials import OPERATORS_FILE_ENV, load_operators

    env_file = os.environ.get(OPERATORS_FILE_ENV)
    operators_file = args.operators_file or (Path(env_file) if env_file else None)
    operators = load_operators(operators_file) if operators_file is not None else None
    try:  # the dashboard stands above the monitor: resolved by name, so the rest works without Dash
        dashboards = importlib.import_module("dashboards.app")
    except ImportError as err:
        raise CommandError(f"the dashboard cannot start: {err}") from err
    opts = dashboards.DashboardOptions(
        record=args.record, records=args.records, broker=args.broker, operators=operators
    )
    app = dashboards.create_app(opts)
    mode = f"operator controls on ({len(operators)} operators)" if operators and args.broker else "read-only"
    import socket

    with socket.socket(socket.AF_INET6 if ":" in args.host else socket.AF_INET) as probe:
        try:  # a port in use or an address not on this machine: one line, before anything starts
            probe.bind((args.host, args.port))
        except OSError as err:
            raise CommandError(
                f"cannot listen on {args.host}:{args.port}: {err.strerror}; choose another --port or --host"
            ) from err
    print(f"dashboard: http://{args.host}:{args.port}/  ({mode}); Ctrl-C stops", flush=True)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    app.run(host=args.host, port=args.port, debug=False)
    return EXIT_OK


# ---- report -----------------------------------------------------------------------------------
def cmd_report(args: argparse.Namespace) -> int:
    import importlib

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
    for note in report["build"]["notes"]:
        print(f"note: {note}")
    by_class: dict[str, int] = {}
    for d in report["defects"]:
        by_class[d["cls"]] = by_class.get(d["cls"], 0) + 1
    print(
        f"{len(report['defects'])} defects ({', '.join(f'{k} {v}' for k, v in sorted(by_class.items())) or 'none'}); "
        f"{len(report['parts'])} part(s)"
    )
    for p in report["parts"]:
        why = f" ({'; '.join(p['reasons'])})" if p["reasons"] else ""
        print(f"  part {p['id']}: {p['volume_mm3']:.1f} mm³, porosity {p['porosity_pct']:.3f} %: {p['verdict']}{why}")
    print("wrote " + ", ".join(str(f) for f in files))
    return EXIT_OK


# ---- control ----------------------------------------------------------------------------------
def cmd_control(args: argparse.Namespace) -> int:
    import uuid

    from printer_io.messages import ActionMessage, ActionState

    msg = ActionMessage(
        printer=args.printer,
        action=args.action,
        state=ActionState.REQUESTED,
        request_id=f"operator:{uuid.uuid4().hex[:12]}",
        reason=args.reason,
    )
    answer = _ask_monitor(args, msg)
    if answer.state != ActionState.CONFIRMED:
        raise RefusedError(f"{args.action} {args.printer}: {answer.state.value}: {answer.detail or answer.reason}")
    print(f"{args.action} {args.printer}: confirmed by the monitor ({answer.detail}); recorded as {msg.request_id}")
    return EXIT_OK


class RefusedError(Exception):
    """The monitor answered no (or did not answer): one line, exit 1."""


def _ask_monitor(args: argparse.Namespace, msg: Any) -> Any:
    """Publish an operator's request and wait for the monitor's outcome of it (same request id)."""
    import threading

    from printer_io.credentials import client_credential, sign
    from printer_io.messages import ActionMessage, ActionState

    msg = sign(msg, client_credential(args.credential_file))  # the monitor carries out signed requests only
    answers: list[ActionMessage] = []
    got = threading.Event()

    def on_action(topic: str, payload: bytes) -> None:
        reply = ActionMessage.from_json(payload, topic)
        if reply.request_id == msg.request_id and reply.state != ActionState.REQUESTED:
            answers.append(reply)
            got.set()

    link = _link(args, "operator", ephemeral=True)
    link.subscribe(link.topics.action, on_action)
    link.start()
    try:
        link.publish(link.topics.action, msg.to_json(), wait_s=10)
        if not got.wait(args.wait):
            raise RefusedError(
                f"no answer from a monitor of printer {args.printer!r} within {args.wait:g} s: is `layerwatch monitor` "
                "running for it, on this broker? Nothing was done"
            )
    finally:
        link.close()
    return answers[0]


# ---- operator credentials ---------------------------------------------------------------------
def cmd_operator(args: argparse.Namespace) -> int:
    """``operator add NAME``: a new secret in the monitor's operators file, and the operator's own copy."""
    import os

    from printer_io.credentials import Credential, CredentialError, load_operators, new_secret

    cred = Credential.parse(f"{args.name}:{new_secret()}", "operator add")
    path: Path = args.operators_file
    known = load_operators(path) if path.exists() else {}
    if cred.name in known:
        raise CredentialError(f"operators file {path}: {cred.name!r} is there already; remove its line to renew it")
    for target in [path] + ([args.credential_out] if args.credential_out else []):
        if target == args.credential_out and target.exists():
            raise CommandError(f"credential file {target} exists already: choose a new path")
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            with os.fdopen(fd, "a", encoding="utf-8") as f:
                f.write(f"{cred.name}:{cred.secret}\n")
        except OSError as err:
            raise CommandError(f"{target}: {err.strerror}") from err
    print(f"operator {cred.name} added to {path} (the monitor reads it at start)")
    if args.credential_out:
        print(f"their credential is in {args.credential_out}: give it to them, readable by them only")
    else:
        print(f"their credential, shown once (set LAYERWATCH_OPERATOR_CREDENTIAL to it):\n{cred.name}:{cred.secret}")
    return EXIT_OK


# ---- security ---------------------------------------------------------------------------------
def cmd_security_broker(args: argparse.Namespace) -> int:
    from monitor.security import broker_config

    printers = [p.strip() for p in args.printers.split(",") if p.strip()]
    if not printers:
        raise CommandError("--printers: give the printer ids, comma-separated")
    try:
        users = broker_config(
            printers, args.out, prefix=args.prefix, host=args.host, port=args.port, tls=args.tls, run_as=args.run_as
        )
    except FileExistsError as err:
        raise CommandError(str(err)) from None
    except OSError as err:
        raise CommandError(f"{args.out}: {err.strerror}") from err
    print(f"wrote {args.out}/mosquitto.conf, passwd, acl and credentials/ for {len(users)} users: {', '.join(users)}")
    print(f"start the broker: mosquitto -c {args.out / 'mosquitto.conf'}")
    if not args.run_as:
        print(f"mosquitto started as root runs as user mosquitto: chown mosquitto {args.out}/passwd {args.out}/acl")
    print(
        'each service\'s config: [mqtt] username = "<user>", password_file = "<out>/credentials/<user>.password" '
        "(copy that file to the machine of the service, readable by it only)"
    )
    if args.tls:
        print(f"put ca.crt, broker.crt and broker.key in {args.out / 'tls'}; services use mqtts:// with ca_file")
    return EXIT_OK


def cmd_security_check(args: argparse.Namespace) -> int:
    from monitor.config import load_config
    from monitor.security import check

    findings = check(load_config(args.config), acl=args.acl, dashboards=tuple(args.dashboard or ()))
    for f in findings:
        print(f)
    open_ = sum(f.level == "open" for f in findings)
    warnings = sum(f.level == "warning" for f in findings)
    print(f"{open_} open, {warnings} warnings, {len(findings) - open_ - warnings} ok")
    return EXIT_PARTIAL if open_ else EXIT_OK


# ---- feedback ---------------------------------------------------------------------------------
def cmd_feedback(args: argparse.Namespace) -> int:
    import uuid

    from printer_io.messages import ActionMessage
    from printer_io.vocabulary import ActionKind, ActionState

    msg = ActionMessage(
        printer=args.printer,
        action=ActionKind.FEEDBACK,
        state=ActionState.REQUESTED,
        request_id=f"feedback:{uuid.uuid4().hex[:12]}",
        incident=args.incident,
        verdict=args.verdict,
        reason=args.note,
    )
    answer = _ask_monitor(args, msg)
    if answer.state != ActionState.CONFIRMED:
        raise RefusedError(f"feedback on {args.incident}: refused: {answer.detail}")
    print(f"incident {args.incident} is {args.verdict}: stored ({answer.detail})")
    return EXIT_OK


# ---- printer I/O services ---------------------------------------------------------------------
def _mqtt_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--printer", required=True, help="printer id, a topic level: letters, digits, _ . -")
    p.add_argument("--config", type=Path, default=None, help="TOML config file ([mqtt] section)")
    p.add_argument("--broker", default=None, help="MQTT broker URL, mqtt://HOST:PORT or mqtts://; overrides [mqtt] url")


def _link(args: argparse.Namespace, service: str, ephemeral: bool = False):  # type: ignore[no-untyped-def]
    from monitor.config import load_config
    from printer_io.mqtt import MqttLink
    from printer_io.topics import Topics

    config = load_config(args.config).mqtt
    if args.broker:
        config = config.model_copy(update={"url": args.broker})
    from monitor import __version__

    return MqttLink(
        config, service=service, topics=Topics(config.prefix, args.printer), version=__version__, ephemeral=ephemeral
    )


def _wait_for_stop() -> None:
    """Block until SIGINT or SIGTERM; services stop cleanly on either."""
    import signal
    import threading

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass


def _option_flag(field: str) -> str:
    """A backend setting's flag: its name with dashes, without the seconds suffix (timeout_s -> --timeout)."""
    return "--" + field.removesuffix("_s").replace("_", "-")


def _printer_options(args: argparse.Namespace) -> dict[str, object]:
    """The settings of the chosen backend that were given on the command line (its defaults for the rest)."""
    from printer_io.printer import backend

    fields = backend(args.backend).options.model_fields
    given = {f: getattr(args, _option_flag(f)[2:].replace("-", "_"), None) for f in fields}
    return {f: v for f, v in given.items() if v is not None}


def cmd_bridge(args: argparse.Namespace) -> int:
    from printer_io.bridge import Bridge
    from printer_io.printer import backend, backend_options

    chosen = backend(args.backend)
    if chosen.trigger is None:
        raise CommandError(f"--backend {args.backend} reports no layer changes; use one with a layer trigger")
    options = backend_options(args.backend, _printer_options(args))
    link = _link(args, "bridge")
    bridge = Bridge(link, args.backend)
    link.start()
    closers: list[Callable[[], None]] = [link.close]
    try:
        printer = chosen.create(args.printer, options).start()
        closers.insert(0, printer.close)
        closers.insert(0, chosen.trigger(printer, options, bridge))
        print(
            f"bridge: publishing layer events of {args.printer} ({args.backend}) on {link.topics.layer}; Ctrl-C stops"
        )
        _wait_for_stop()
    finally:
        for close in closers:
            close()
    print(f"bridge: stopped after {len(bridge.published)} layer event(s)")
    return EXIT_OK


def cmd_camera(args: argparse.Namespace) -> int:
    from monitor.sources import register
    from printer_io.camera import CameraNode, CameraSettings, create_source

    register()
    if args.source == "opencv":
        source = create_source("opencv", args.device)
    elif args.source == "simulator":
        source = create_source("simulator", seed=args.seed, size=args.size)
    else:
        if args.path is None:
            raise CommandError(f"--source {args.source} needs --path (a folder of images or a .h5 record)")
        source = create_source(args.source, args.path)
    settings = CameraSettings(settle_s=args.settle, attempts=args.attempts, retry_s=args.retry, encoding=args.encoding)
    node = CameraNode(_link(args, "camera"), source, settings).start()
    print(f"camera: {args.source} source; one frame per layer event on {node.topics.layer}; Ctrl-C stops")
    try:
        _wait_for_stop()
    finally:
        node.close()
    print(f"camera: stopped; {node.published} frame(s) published, {node.given_up} layer(s) given up")
    return EXIT_OK


def cmd_layer_event(args: argparse.Namespace) -> int:
    from printer_io.messages import LayerEvent

    # validated before connecting: a bad value never reaches the broker
    fields = {"printer": args.printer, "job_id": args.job, "layer": args.layer, "z_mm": args.z, "source": "hook"}
    if args.end:
        fields |= {"end": True, "outcome": args.end}
    event = LayerEvent.from_dict({"schema": LayerEvent.SCHEMA, **fields}, "layer-event")
    link = _link(args, "hook", ephemeral=True)
    link.start()
    try:
        link.publish(link.topics.layer, event.to_json(), wait_s=10)
    finally:
        link.close(publish_offline=False)
    what = (
        f"the end ({args.end}) of {args.job} after layer {args.layer}"
        if args.end
        else f"layer {args.layer} of {args.job}"
    )
    print(f"published {what} (z={args.z} mm) on {link.topics.layer}")
    return EXIT_OK


def cmd_printer(args: argparse.Namespace) -> int:
    from printer_io.printer import create_printer

    printer = create_printer(args.backend, args.printer, **_printer_options(args)).start()
    try:
        if args.action == "status":
            st = printer.status()
            job = f", job {st.job.name}" if st.job else ""
            print(f"{args.printer}: {st.state.value}{job}" + (f" ({st.message})" if st.message else ""))
        elif args.action == "pause":
            outcome = printer.pause(args.timeout_pause)
            ack = "n/a" if outcome.acknowledged_s is None else f"{outcome.acknowledged_s:.2f} s"
            print(f"{args.printer}: paused (acknowledged after {ack}, paused after {outcome.paused_s:.2f} s)")
        elif args.action == "resume":
            printer.resume()
            print(f"{args.printer}: resume sent")
        elif args.action == "cancel":
            printer.cancel()
            print(f"{args.printer}: cancel sent")
        else:
            if not args.gcode:
                raise CommandError("printer gcode needs at least one --gcode LINE, e.g. --gcode 'M220 S90'")
            printer.send_gcode(args.gcode)
            print(f"{args.printer}: sent {len(args.gcode)} G-code line(s)")
    finally:
        printer.close()
    return EXIT_OK


def _printer_args(p: argparse.ArgumentParser, *, triggers_only: bool = False) -> None:
    """``--backend`` and every backend's settings as flags (printer_io.printer.backends declares them)."""
    from printer_io.printer import backends

    chosen = {n: b for n, b in backends().items() if b.trigger is not None or not triggers_only}
    p.add_argument("--backend", choices=sorted(chosen), required=True)
    users: dict[str, dict[str, Any]] = {}  # setting -> backend -> its field
    for name, b in chosen.items():
        for field, info in b.options.model_fields.items():
            users.setdefault(field, {})[name] = info
    for field, infos in users.items():
        first = next(iter(infos.values()))
        defaults = {n: i.default for n, i in infos.items() if i.default is not None}
        if len(set(map(str, defaults.values()))) > 1:
            default = "; default " + ", ".join(f"{n} {d}" for n, d in defaults.items())
        else:
            default = f"; default {next(iter(defaults.values()))}" if defaults else ""
        p.add_argument(
            _option_flag(field),
            type=_flag_type(first.annotation),
            default=None,
            help=f"{', '.join(infos)}: {first.description or field.replace('_', ' ')}{default}",
        )


def _flag_type(annotation: Any) -> Callable[[str], Any]:
    text = str(annotation)
    if "Path" in text:
        return Path
    if "float" in text:
        return float
    if "int" in text:
        return _positive_int
    return str


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (1-65535)") from None
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{value} is not a port number: use 1-65535")
    return value


def build_parser() -> argparse.ArgumentParser:
    from segmentation.model import ARCHITECTURES, DEFAULT_ARCH

    parser = argparse.ArgumentParser(
        prog="layerwatch",
        description="In-situ layer monitoring for additive manufacturing.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress (INFO)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser(
        "demo", help="the main job with no hardware: virtual printer, simulated camera, monitor, auto-pause, record"
    )
    p.add_argument(
        "--out", type=Path, default=Path("layerwatch-demo"), help="output folder (default ./layerwatch-demo)"
    )
    p.add_argument("--layers", type=_positive_int, default=40, help="layers of the simulated build (default 40)")
    p.add_argument("--size", type=_positive_int, default=512, help="frame size in px (default 512)")
    p.add_argument("--scenario", choices=("warp", "clean"), default="warp", help="defect scenario (default warp)")
    p.add_argument("--warp-start", type=int, default=14, help="layer where warping starts (default 14)")
    p.add_argument("--seed", type=int, default=3, help="appearance seed of the simulated build")
    p.add_argument("--layer-time", type=float, default=0.8, help="seconds a layer takes (default 0.8)")
    p.add_argument("--broker", default=None, help="use this MQTT broker instead of starting one")
    p.add_argument(
        "--broker-impl",
        choices=("bus", "auto", "mosquitto", "amqtt"),
        default="bus",
        help="without --broker: an in-process bus (default), or a local broker (auto: Mosquitto if installed)",
    )
    p.add_argument("--headless", action="store_true", help="no dashboard")
    p.add_argument("--stay", action="store_true", help="keep the dashboard up after the summary until Ctrl-C")
    p.add_argument("--engine", choices=("onnx", "torch"), default="onnx")
    p.add_argument("--model", type=Path, default=None, help="model checkpoint; default: shipped model")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("monitor", help="judge every layer of the configured printers (MQTT frames in, results out)")
    p.add_argument("--config", type=Path, default=None, help="TOML config (see data/config/layerwatch.toml)")
    p.add_argument("--broker", default=None, help="MQTT broker URL; overrides [mqtt] url")
    p.add_argument("--printer", action="append", default=[], help="printer id (repeat); default: [printers.*]")
    p.set_defaults(func=cmd_monitor)

    p = sub.add_parser("record", help="summarise or validate a build record (HDF5)")
    p.add_argument("action", choices=("info", "check"))
    p.add_argument("file", type=Path)
    p.add_argument("--repair", action="store_true", help="check: rewrite a record left open by a crashed writer")
    p.set_defaults(func=cmd_record)

    p = sub.add_parser("replay", help="run a recorded build through the pipeline again (test a model or policy)")
    p.add_argument("record", type=Path, help="a build record, a simulated build file, or a Peregrine-layout file")
    p.add_argument("--out", type=Path, default=None, help="the new record (default replays/NAME-replay.h5)")
    p.add_argument("--speed", default="max", help="pace: a factor of the original (10 = ten times faster) or max")
    p.add_argument("--model", type=Path, default=None, help="model checkpoint instead of the shipped one")
    p.add_argument("--policy", type=Path, default=None, help="policy file instead of the default")
    p.add_argument("--engine", choices=("onnx", "torch"), default="onnx")
    p.add_argument("--broker", default=None, help="MQTT broker URL (default: start a local one)")
    p.add_argument("--skip-missing", action="store_true", help="replay a record whose some layers are missing")
    p.add_argument("--printer-backend", choices=("virtual", "octoprint", "moonraker"), default="virtual")
    p.add_argument("--url", default="http://127.0.0.1:5000", help="real printer URL (with --printer-backend)")
    p.add_argument("--api-key-file", type=Path, default=None)
    p.add_argument("--move-real-printer", action="store_true", help="confirm that a real backend may be paused")
    p.set_defaults(func=cmd_replay)

    p = sub.add_parser("compare", help="compare two runs of a build: metrics, severities, actions, ground truth")
    p.add_argument("a", type=Path)
    p.add_argument("b", type=Path)
    p.add_argument("--truth", type=Path, default=None, help="ground-truth build file (default: what both replay)")
    p.add_argument("--tolerance", type=float, default=0.01, help="relative tolerance for metrics (default 0.01)")
    p.add_argument("--json", type=Path, default=None, help="also write the report as JSON")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("dashboard", help="the live dashboard: layers, overlays, trends, actions, operator controls")
    p.add_argument("--record", type=Path, default=None, help="one build record")
    p.add_argument("--records", type=Path, default=None, help="a folder of records (the monitor's out_dir)")
    p.add_argument("--broker", default=None, help="MQTT broker for operator commands (none: read-only)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=_port, default=8050, help="TCP port (default 8050)")
    p.add_argument(
        "--operators-file", type=Path, default=None,
        help="operators who may log in and send commands, NAME:SECRET lines (or LAYERWATCH_OPERATORS_FILE); "
        "without it the page is read-only",
    )  # fmt: skip
    p.set_defaults(func=cmd_dashboard)

    p = sub.add_parser("report", help="3D defect report per part: HTML (offline), defects.csv, parts.csv, report.json")
    p.add_argument("record", type=Path, help="a build record (live or finished) or a build file with masks")
    p.add_argument("--out", type=Path, required=True, help="folder for the report files")
    p.add_argument("--floor", type=int, default=3, help="smallest defect kept, in voxels (default 3)")
    p.add_argument("--max-pore-mm", type=float, default=0.5, help="acceptance: largest pore diameter (default 0.5)")
    p.add_argument("--max-porosity-pct", type=float, default=0.5, help="acceptance: porosity of a part (default 0.5)")
    p.add_argument("--max-warping-mm3", type=float, default=0.0, help="acceptance: warping volume (default 0)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("control", help="ask the monitor to pause or resume a printer (recorded like its own actions)")
    p.add_argument("action", choices=("pause", "resume"))
    _mqtt_args(p)
    p.add_argument(
        "--credential-file", type=Path, default=None,
        help="file with this operator's NAME:SECRET (else LAYERWATCH_OPERATOR_CREDENTIAL or "
        "LAYERWATCH_OPERATOR_CREDENTIAL_FILE); the record names the operator from it",
    )  # fmt: skip
    p.add_argument("--reason", default="", help="why (recorded)")
    p.add_argument("--wait", type=float, default=60.0, help="seconds to wait for the monitor's answer (default 60)")
    p.set_defaults(func=cmd_control)

    p = sub.add_parser("operator", help="manage who may pause, resume and judge (operator credentials)")
    osub = p.add_subparsers(dest="operator_command", required=True)
    q = osub.add_parser("add", help="make an operator's secret: into the operators file, and their copy")
    q.add_argument("name", help="the operator's name, as records will show it: letters, digits, _ . @ -")
    q.add_argument(
        "--operators-file", type=Path, required=True,
        help="the monitor's operators file ([security] operators_file); created readable by its owner only",
    )  # fmt: skip
    q.add_argument("--credential-out", type=Path, default=None, help="write the operator's NAME:SECRET here")
    q.set_defaults(func=cmd_operator)

    p = sub.add_parser("security", help="a broker set-up that trusts nobody by default; a check of what stands open")
    ssub = p.add_subparsers(dest="security_command", required=True)
    q = ssub.add_parser("broker-config", help="Mosquitto config, passwords and ACL: no anonymous access, least rights")
    q.add_argument("--printers", required=True, help="printer ids, comma-separated")
    q.add_argument("--out", type=Path, required=True, help="a new folder for mosquitto.conf, passwd, acl, credentials/")
    q.add_argument("--prefix", default="layerwatch", help="topic prefix (default layerwatch)")
    q.add_argument("--host", default="127.0.0.1", help="address the broker listens on (default 127.0.0.1)")
    q.add_argument("--port", type=_port, default=1883, help="its port (default 1883; 8883 with --tls is usual)")
    q.add_argument("--tls", action="store_true", help="a TLS listener (the certificates go in OUT/tls)")
    q.add_argument("--run-as", default=None, help="the user Mosquitto runs as (its 'user' setting)")
    q.set_defaults(func=cmd_security_broker)
    q = ssub.add_parser("check", help="report anonymous brokers, wide ACLs, over-privileged printer keys, open pages")
    q.add_argument("--config", type=Path, required=True, help="the monitor's TOML config")
    q.add_argument("--acl", type=Path, default=None, help="the broker's ACL file, to look for writes to every printer")
    q.add_argument("--dashboard", action="append", help="a dashboard URL to try without a login (repeatable)")
    q.set_defaults(func=cmd_security_check)

    p = sub.add_parser("feedback", help="tell the monitor whether an incident was a false alarm or a real defect")
    _mqtt_args(p)
    p.add_argument("--incident", required=True, help="incident id (from the action messages or the record)")
    p.add_argument("--verdict", choices=[str(v) for v in Verdict], required=True)
    p.add_argument(
        "--credential-file", type=Path, default=None,
        help="file with this operator's NAME:SECRET (else LAYERWATCH_OPERATOR_CREDENTIAL or "
        "LAYERWATCH_OPERATOR_CREDENTIAL_FILE); the record names the operator from it",
    )  # fmt: skip
    p.add_argument("--note", default="", help="free text")
    p.add_argument("--wait", type=float, default=30.0, help="seconds to wait for the monitor's answer (default 30)")
    p.set_defaults(func=cmd_feedback)

    p = sub.add_parser("segment", help="segment layer images into class-id masks")
    p.add_argument("inputs", nargs="+", type=Path, metavar="IMAGE_OR_DIR")
    p.add_argument("--out", type=Path, required=True, help="folder for NAME.png masks (uint8 class ids)")
    p.add_argument("--overlay", action="store_true", help="also write colour overlays to OUT/overlays/")
    _model_args(p)
    p.set_defaults(func=cmd_segment)

    p = sub.add_parser("evaluate", help="score the model against ground-truth masks")
    p.add_argument("--images", type=Path, required=True, help="folder of layer images")
    p.add_argument("--masks", type=Path, required=True, help="folder of NAME.png class-id masks")
    p.add_argument("--json", type=Path, default=None, help="also write the report as JSON here")
    _model_args(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("synth", help="simulate layer images with exact masks (a data set, a build, a build file)")
    p.add_argument("--out", type=Path, default=None, help="folder for a data set or a build's images and masks")
    p.add_argument(
        "--record", type=Path, default=None, help="write a scenario build with ground truth as one HDF5 build file"
    )
    p.add_argument("--scenario", choices=("warp", "clean"), default="warp", help="--record: defect scenario")
    p.add_argument("--warp-start", type=int, default=8, help="--record: layer where warping starts (default 8)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--count", type=_positive_int, default=64, help="layers in a data set (default 64)")
    p.add_argument("--size", type=_positive_int, default=512, help="frame height and width in px (default 512)")
    p.add_argument("--build", action="store_true", help="write one build (consecutive layers) instead")
    p.add_argument("--layers", type=_positive_int, default=40, help="layers in a build (default 40)")
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("train", help="train the U-Net on simulated layers")
    p.add_argument("--out", type=Path, required=True, help="run folder: checkpoints, cached data, history")
    p.add_argument("--arch", default=DEFAULT_ARCH, help=f"one of {', '.join(sorted(ARCHITECTURES))}")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train-layers", type=_positive_int, default=1600)
    p.add_argument("--val-layers", type=_positive_int, default=48)
    p.add_argument("--batch", type=_positive_int, default=12)
    p.add_argument("--epochs", type=_positive_int, default=40)
    p.add_argument("--steps", type=_positive_int, default=80, help="optimiser steps per epoch")
    p.add_argument(
        "--precision",
        choices=("bf16", "fp32"),
        default="fp32",
        help="training arithmetic (default fp32; bf16 only where the CPU has AVX-512 BF16 or AMX)",
    )
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--max-minutes", type=float, default=0.0, help="stop after the epoch that passes this (0: off)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
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

    p = sub.add_parser("export-onnx", help="export a checkpoint to ONNX")
    p.add_argument("--model", type=Path, default=None)
    p.add_argument("--out", type=Path, default=None, help="default: the checkpoint's path with .onnx")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("bridge", help="publish a printer's layer events on MQTT (OctoPrint, Moonraker, virtual)")
    _mqtt_args(p)
    _printer_args(p, triggers_only=True)
    p.set_defaults(func=cmd_bridge)

    p = sub.add_parser("camera", help="capture one frame per layer event and publish it on MQTT")
    _mqtt_args(p)
    p.add_argument("--source", choices=("opencv", "folder", "record", "simulator"), default="opencv")
    p.add_argument("--device", default="0", help="opencv: device index, RTSP/HTTP URL or video file (default 0)")
    p.add_argument("--path", type=Path, default=None, help="folder: image folder; record: HDF5 build record")
    p.add_argument("--seed", type=int, default=20261127, help="simulator: build seed")
    p.add_argument("--size", type=_positive_int, default=512, help="simulator: frame size in px (default 512)")
    p.add_argument("--settle", type=float, default=0.0, help="wait after the trigger before capturing, s")
    p.add_argument("--attempts", type=_positive_int, default=3, help="capture attempts per layer (default 3)")
    p.add_argument("--retry", type=float, default=0.5, help="seconds between attempts (default 0.5)")
    p.add_argument("--encoding", choices=("png", "jpeg"), default="png", help="png: lossless (default); jpeg: fast")
    p.set_defaults(func=cmd_camera)

    p = sub.add_parser("layer-event", help="publish one 'layer done' event (G-code hook for slicers and hosts)")
    _mqtt_args(p)
    p.add_argument("--job", required=True, help="job id, e.g. the file name")
    p.add_argument("--layer", type=int, required=True, help="layer index from 0")
    p.add_argument("--z", type=float, required=True, help="layer height in mm")
    p.add_argument(
        "--end",
        choices=("done", "cancelled", "failed"),
        default=None,
        help="the job ended after --layer (end-of-print G-code): the monitor closes its record",
    )
    p.set_defaults(func=cmd_layer_event)

    p = sub.add_parser("printer", help="ask a printer for its state, or pause/resume/cancel it, or send G-code")
    p.add_argument("action", choices=("status", "pause", "resume", "cancel", "gcode"))
    p.add_argument("--gcode", action="append", default=[], metavar="LINE", help="a G-code line for 'gcode' (repeat)")
    p.add_argument("--printer", default="printer", help="printer name for messages")
    _printer_args(p)
    p.add_argument("--timeout-pause", type=float, default=30.0, help="seconds to wait for 'paused' (default 30)")
    p.set_defaults(func=cmd_printer)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from monitor.config import ConfigFileError
    from printer_io.errors import PrinterIOError
    from segmentation.errors import SegmentationError

    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per HTTP request is noise
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    if getattr(args, "model", "unset") is None:
        from segmentation.inference import DEFAULT_MODEL

        args.model = DEFAULT_MODEL
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except RefusedError as err:
        print(f"layerwatch {args.command}: {err}", file=sys.stderr)
        return EXIT_PARTIAL
    except (CommandError, SegmentationError, PrinterIOError, ConfigFileError) as err:
        print(f"layerwatch {args.command}: {err}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"layerwatch {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # output piped into a reader that stopped early (`| head`): not an error worth a traceback
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
