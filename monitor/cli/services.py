"""The services: demo, monitor, dashboard, layer bridge, camera node, G-code hook and the printer command."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from monitor.cli.common import (
    EXIT_OK,
    CommandError,
    connect,
    mqtt_args,
    port,
    positive_int,
    printer_args,
    printer_options,
    wait_for_stop,
)


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


def cmd_monitor(args: argparse.Namespace) -> int:
    from monitor.config import load_config
    from monitor.service import MonitorService

    config = load_config(args.config)
    if args.broker:
        config = config.model_copy(update={"mqtt": config.mqtt.model_copy(update={"url": args.broker})})
    if args.group or args.worker_id:
        if not args.group and not config.monitor.group:
            raise CommandError("--worker-id needs a group: --group NAME or [monitor] group")
        given = {"group": args.group or config.monitor.group, "worker_id": args.worker_id or config.monitor.worker_id}
        try:
            section = type(config.monitor).model_validate({**config.monitor.model_dump(), **given})
        except ValueError as err:
            raise CommandError(f"--group/--worker-id: {err}") from err
        config = config.model_copy(update={"monitor": section})
    if args.shadow_model is not None:
        if not args.shadow_model.is_file():
            raise CommandError(f"--shadow-model {args.shadow_model}: no such model checkpoint")
        config = config.model_copy(
            update={"monitor": config.monitor.model_copy(update={"shadow_model": args.shadow_model})}
        )
    try:
        service = MonitorService(config, printer_ids=args.printer or None)
    except ValueError as err:
        raise CommandError(str(err)) from err
    service.start()
    if service.site is not None:
        print(
            f"monitor: worker {service.site.worker_id} of group {service.site.group}, sharing "
            f"{', '.join(service.printer_ids)}; records in {config.monitor.out_dir}; Ctrl-C stops"
        )
    else:
        print(f"monitor: judging {', '.join(service.printer_ids)}; records in {config.monitor.out_dir}; Ctrl-C stops")
    try:
        wait_for_stop()
    finally:
        service.close()
    for pid, pm in service.monitors.items():
        print(f"monitor: {pid}: {pm.counters['layers']} layer(s) judged; {rejects_text(pm.link.rejected)}")
    return EXIT_OK


_REJECT_WORDS = {
    "job": "of another job or a refused job end",
    "dropped": "dropped in a flood (the oldest frames)",
    "field": "with a bad field",
    "json": "not JSON",
    "schema": "of another schema",
    "version": "of another version",
    "size": "of the wrong size",
    "layer": "of a layer out of bounds",
    "handler_error": "that failed in a handler (see the log)",
}


def rejects_text(rejected: dict[str, int]) -> str:
    """``no message refused`` or ``3 messages refused: 2 of another job, 1 not JSON``."""
    total = sum(rejected.values())
    if not total:
        return "no message refused"
    parts = [f"{n} {_REJECT_WORDS.get(reason, f'({reason})')}" for reason, n in sorted(rejected.items()) if n]
    return f"{total} message{'s' if total != 1 else ''} refused: {', '.join(parts)}"


def cmd_dashboard(args: argparse.Namespace) -> int:
    site = None
    if args.config is not None:  # the site's broker, as the dashboard's own user, and its operators and records
        from monitor.config import load_config

        site = load_config(args.config)
        if args.records is None and args.record is None:
            args.records = site.monitor.out_dir
        if args.operators_file is None:
            args.operators_file = site.operators_file()
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
        record=args.record,
        records=args.records,
        broker=args.broker,
        mqtt=site.mqtt_for("dashboard") if site is not None else None,
        operators=operators,
        models_dir=site.monitor.models_dir if site is not None else None,
    )
    app = dashboards.create_app(opts)
    if app.server.config["LAYERWATCH_CAN_CONTROL"]:
        mode = f"operator controls on ({len(operators or {})} operators)"
    elif operators and opts.broker_config() is not None:
        status = app.server.config.get("LAYERWATCH_SERVICE_STATUS")
        mode = f"read-only: {status.refused if status is not None and status.refused else 'no broker'}"
    else:
        mode = "read-only"

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


def cmd_bridge(args: argparse.Namespace) -> int:
    from printer_io.bridge import Bridge
    from printer_io.printer import backend, backend_options

    given: dict[str, object] = {}
    if args.backend is None:  # the printer's table in the config says how to reach it
        from monitor.config import load_config

        section = load_config(args.config).printers.get(args.printer) if args.config is not None else None
        if section is None or section.backend == "none":
            raise CommandError(f"give --backend, or --config with a [printers.{args.printer}] table naming its backend")
        args.backend = section.backend
        given = dict(section.options)
    chosen = backend(args.backend)
    if chosen.trigger is None:
        raise CommandError(f"--backend {args.backend} reports no layer changes; use one with a layer trigger")
    options = backend_options(args.backend, {**given, **printer_options(args)})  # flags win over the config
    link = connect(args, "bridge")
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
        wait_for_stop()
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
        source = create_source("simulator", seed=args.seed, size=args.size, defects=args.defects)
    else:
        if args.path is None:
            raise CommandError(f"--source {args.source} needs --path (a folder of images or a .h5 record)")
        source = create_source(args.source, args.path)
    settings = CameraSettings(
        settle_s=args.settle, attempts=args.attempts, retry_s=args.retry, encoding=args.encoding, view=args.view
    )
    node = CameraNode(connect(args, "camera"), source, settings).start()
    print(f"camera: {args.source} source; one frame per layer event on {node.topics.layer}; Ctrl-C stops")
    try:
        wait_for_stop()
    finally:
        node.close()
    print(f"camera: stopped; {node.published} frame(s) published, {node.given_up} layer(s) given up")
    return EXIT_OK


def cmd_up(args: argparse.Namespace) -> int:
    from monitor.config import ConfigFileError, load_config
    from monitor.supervise import Supervisor, parts_for, preflight

    config = load_config(args.config)
    if not config.printers:
        raise CommandError(f"{args.config}: no [printers.<id>] table: nothing to run")
    # the dashboard reads the broker, its own user and the operators from the config, as every part does
    dashboard = None if args.no_dashboard else ["--host", args.host, "--port", str(args.port)]
    for folder, key in ((config.monitor.out_dir, "out_dir"), (config.monitor.models_dir, "models_dir")):
        try:  # what the parts need exists before they start (a dashboard never finds no records folder)
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise ConfigFileError(f"{args.config}: [monitor] {key} {folder}: {err.strerror or err}") from err
    parts = parts_for(config, args.config.resolve(), dashboard)
    logging.getLogger("layerwatch.up").setLevel(logging.INFO)
    problems = preflight(config, parts)
    if problems:
        for line in problems:
            print(f"layerwatch up: {line}", file=sys.stderr)
        raise ConfigFileError(
            f"{args.config}: {len(problems)} part(s) cannot do their job on this broker (above); nothing started"
        )
    supervisor = Supervisor(parts, args.state_file)
    signal.signal(signal.SIGTERM, lambda *_: supervisor.stop())
    names = ", ".join(p.name for p in parts)
    print(f"up: {len(parts)} part(s): {names}; Ctrl-C stops them all")
    try:
        supervisor.run()
    except KeyboardInterrupt:
        supervisor.stop()
        supervisor._shutdown()
    return EXIT_OK


def cmd_config_example(args: argparse.Namespace) -> int:
    """The documented example config (every section and key, with what it does), on standard output."""
    from segmentation.resources import data_dir

    path = data_dir() / "config" / "layerwatch.toml"
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise CommandError(f"the example config {path} cannot be read: {err.strerror or err}") from err
    sys.stdout.write(text)
    return EXIT_OK


def cmd_config_check(args: argparse.Namespace) -> int:
    """Load a config as every command does: one line naming what is wrong, or what it sets up."""
    from monitor.config import load_config

    config = load_config(args.config)
    printers = ", ".join(sorted(config.printers)) or "none"
    print(f"{args.config}: valid; printers: {printers}; broker {config.mqtt.url}; records in {config.monitor.out_dir}")
    return EXIT_OK


def cmd_layer_event(args: argparse.Namespace) -> int:
    from printer_io.messages import LayerEvent

    # validated before connecting: a bad value never reaches the broker
    fields = {"printer": args.printer, "job_id": args.job, "layer": args.layer, "z_mm": args.z, "source": "hook"}
    if args.end:
        fields |= {"end": True, "outcome": args.end}
    event = LayerEvent.from_dict({"schema": LayerEvent.SCHEMA, **fields}, "layer-event")
    link = connect(args, "hook", ephemeral=True)
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

    printer = create_printer(args.backend, args.printer, **printer_options(args)).start()
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


def register(sub: Any) -> None:
    """Add this group's subcommands to the ``layerwatch`` parser."""
    from monitor.sources import SIMULATED_CAMERA_SEED

    p = sub.add_parser(
        "demo", help="the main job with no hardware: virtual printer, simulated camera, monitor, auto-pause, record"
    )
    p.add_argument(
        "--out", type=Path, default=Path("layerwatch-demo"), help="output folder (default ./layerwatch-demo)"
    )
    p.add_argument("--layers", type=positive_int, default=40, help="layers of the simulated build (default 40)")
    p.add_argument("--size", type=positive_int, default=512, help="frame size in px (default 512)")
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
    p.add_argument("--engine", choices=("auto", "onnx", "openvino", "torch"), default="auto")
    p.add_argument("--model", type=Path, default=None, help="model checkpoint; default: shipped model")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("monitor", help="judge every layer of the configured printers (MQTT frames in, results out)")
    p.add_argument("--config", type=Path, default=None, help="TOML config (see data/config/layerwatch.toml)")
    p.add_argument("--broker", default=None, help="MQTT broker URL; overrides [mqtt] url")
    p.add_argument("--printer", action="append", default=[], help="printer id (repeat); default: [printers.*]")
    p.add_argument(
        "--shadow-model", type=Path, default=None, help="a candidate run beside the model in use, acting on nothing"
    )
    p.add_argument(
        "--group", default=None,
        help="share the printers with the other workers of this group through the broker ([monitor] group)",
    )  # fmt: skip
    p.add_argument("--worker-id", default=None, help="this worker's id in the group (default: host name and pid)")
    p.set_defaults(func=cmd_monitor)

    p = sub.add_parser("dashboard", help="the live dashboard: layers, overlays, trends, actions, operator controls")
    p.add_argument("--record", type=Path, default=None, help="one build record")
    p.add_argument("--records", type=Path, default=None, help="a folder of records (the monitor's out_dir)")
    p.add_argument("--broker", default=None, help="MQTT broker for operator commands (none: read-only)")
    p.add_argument(
        "--config", type=Path, default=None,
        help="the site's config: its broker ([mqtt]) as the dashboard's own user ([dashboard] mqtt_username or "
        "[site] credentials_dir), its operators file and records folder",
    )  # fmt: skip
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=port, default=8050, help="TCP port (default 8050)")
    p.add_argument(
        "--operators-file", type=Path, default=None,
        help="operators who may log in and send commands, NAME:SECRET lines (or LAYERWATCH_OPERATORS_FILE); "
        "without it the page is read-only",
    )  # fmt: skip
    p.set_defaults(func=cmd_dashboard)

    p = sub.add_parser("config", help="the documented example config; check a config file")
    csub = p.add_subparsers(dest="config_command", required=True)
    q = csub.add_parser("example", help="print the example config: every section and key, with what it does")
    q.set_defaults(func=cmd_config_example)
    q = csub.add_parser("check", help="load a config as the services do: one line on what is wrong")
    q.add_argument("config", type=Path, help="the TOML config file")
    q.set_defaults(func=cmd_config_check)

    p = sub.add_parser("up", help="run a whole site from its config: monitor, bridges, cameras, dashboard, supervised")
    p.add_argument("--config", type=Path, required=True, help="TOML config with [printers.<id>] (and their cameras)")
    p.add_argument("--no-dashboard", action="store_true", help="do not run the dashboard")
    p.add_argument("--host", default="127.0.0.1", help="dashboard address (default 127.0.0.1)")
    p.add_argument("--port", type=port, default=8050, help="dashboard port (default 8050)")
    p.add_argument("--state-file", type=Path, default=None, help="write each part's pid, starts and exits here (JSON)")
    p.set_defaults(func=cmd_up)

    p = sub.add_parser("bridge", help="publish a printer's layer events on MQTT (OctoPrint, Moonraker, virtual)")
    mqtt_args(p)
    printer_args(p, triggers_only=True, from_config=True)
    p.set_defaults(func=cmd_bridge)

    p = sub.add_parser("camera", help="capture one frame per layer event and publish it on MQTT")
    mqtt_args(p)
    p.add_argument("--source", choices=("opencv", "folder", "record", "simulator"), default="opencv")
    p.add_argument("--device", default="0", help="opencv: device index, RTSP/HTTP URL or video file (default 0)")
    p.add_argument("--path", type=Path, default=None, help="folder: image folder; record: HDF5 build record")
    p.add_argument("--seed", type=int, default=SIMULATED_CAMERA_SEED, help="simulator: build seed")
    p.add_argument(
        "--defects", action="store_true", help="simulator: the build keeps its pores and warps (default: a clean build)"
    )
    p.add_argument("--size", type=positive_int, default=512, help="simulator: frame size in px (default 512)")
    p.add_argument("--settle", type=float, default=0.0, help="wait after the trigger before capturing, s")
    p.add_argument("--attempts", type=positive_int, default=3, help="capture attempts per layer (default 3)")
    p.add_argument("--retry", type=float, default=0.5, help="seconds between attempts (default 0.5)")
    p.add_argument("--encoding", choices=("png", "jpeg"), default="png", help="png: lossless (default); jpeg: fast")
    p.add_argument(
        "--view", choices=("melt", "recoat"), default="melt",
        help="melt: the layer after exposure, judged (default); recoat: the fresh powder before it (kept, lighting)",
    )  # fmt: skip
    p.set_defaults(func=cmd_camera)

    p = sub.add_parser("layer-event", help="publish one 'layer done' event (G-code hook for slicers and hosts)")
    mqtt_args(p)
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
    printer_args(p)
    p.add_argument("--timeout-pause", type=float, default=30.0, help="seconds to wait for 'paused' (default 30)")
    p.set_defaults(func=cmd_printer)
