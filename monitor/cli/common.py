"""What every command group shares: the error types, exit codes and the common arguments."""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from monitor.settings import EXIT_CONFIG as EXIT_CONFIG

log = logging.getLogger("layerwatch")

EXIT_OK, EXIT_PARTIAL, EXIT_USAGE = 0, 1, 2


class CommandError(Exception):
    """A command cannot go on; its message is printed as the one error line."""


class RefusedError(Exception):
    """The monitor answered no (or did not answer): one line, exit 1."""


def need_training_stack(what: str) -> None:
    """One line where PyTorch is missing: the monitoring box's install has none (pip install layerwatch)."""
    import importlib.util

    if importlib.util.find_spec("torch") is None or importlib.util.find_spec("segmentation_models_pytorch") is None:
        raise CommandError(
            f"{what} needs PyTorch, which this install has not: pip install 'layerwatch[train]' (CPU-only wheels: "
            "pip install torch --index-url https://download.pytorch.org/whl/cpu first; README, Install)"
        )


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def reference_layers(text: str) -> int:
    """``[monitor] reference_layers`` on a command line: 0 (off) to 50."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of layers (0-50)") from None
    if not 0 <= value <= 50:
        raise argparse.ArgumentTypeError(f"{value} layers: use 0 (off) to 50")
    return value


def port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (1-65535)") from None
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{value} is not a port number: use 1-65535")
    return value


def model_args(p: argparse.ArgumentParser) -> None:
    from segmentation.imageio import DEFAULT_MAX_PIXELS
    from segmentation.inference import DEFAULT_MODEL, ENGINE_CHOICES

    p.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="model checkpoint (.pt); default: shipped model")
    p.add_argument(
        "--engine",
        choices=ENGINE_CHOICES,
        default="auto",
        help="inference engine (default auto: OpenVINO where installed, in the fastest precision this CPU computes "
        "that agrees with f32; else ONNX Runtime)",
    )
    p.add_argument("--threads", type=positive_int, default=None, help="CPU threads for inference")
    p.add_argument("--tile", type=positive_int, default=1024, help="tile size in px for large frames (default 1024)")
    p.add_argument(
        "--max-pixels",
        type=positive_int,
        default=DEFAULT_MAX_PIXELS,
        help="refuse frames larger than this (default 64e6)",
    )


def segmenter(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from segmentation.inference import Segmenter

    try:
        return Segmenter(
            model_path=args.model, engine=args.engine, tile=args.tile, threads=args.threads, max_pixels=args.max_pixels
        ).start()
    except ValueError as err:
        raise CommandError(str(err)) from err


def mqtt_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--printer", required=True, help="printer id, a topic level: letters, digits, _ . -")
    p.add_argument("--config", type=Path, default=None, help="TOML config file ([mqtt] section)")
    p.add_argument("--broker", default=None, help="MQTT broker URL, mqtt://HOST:PORT or mqtts://; overrides [mqtt] url")


#: the part of a site (and so the broker user, monitor.config.Config.mqtt_for) each command connects as
_PARTS = {"hook": "bridge", "operator": "operator"}


def connect(  # type: ignore[no-untyped-def]
    args: argparse.Namespace, service: str, ephemeral: bool = False, part: str | None = None
):
    """The command's MQTT link: ``[mqtt]`` of ``--config``, as the broker user of its part of the site
    (a camera as ``camera-<printer>``, a bridge or the G-code hook as ``bridge-<printer>``, where the config
    says so: ``[site] credentials_dir`` or the part's own ``mqtt_username``)."""
    from monitor.config import load_config
    from printer_io.mqtt import MqttLink
    from printer_io.topics import Topics

    site = load_config(args.config)
    name = part or _PARTS.get(service, service)
    config = site.mqtt_for(name, args.printer) if name != "operator" else site.mqtt_for("operator")
    if args.broker:
        config = config.model_copy(update={"url": args.broker})
    from monitor import __version__

    return MqttLink(
        config, service=service, topics=Topics(config.prefix, args.printer), version=__version__, ephemeral=ephemeral
    )


def wait_for_stop() -> None:
    """Block until SIGINT or SIGTERM; services stop cleanly on either."""

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass


def option_flag(field: str) -> str:
    """A backend setting's flag: its name with dashes, without the seconds suffix (timeout_s -> --timeout)."""
    return "--" + field.removesuffix("_s").replace("_", "-")


def printer_options(args: argparse.Namespace) -> dict[str, object]:
    """The settings of the chosen backend that were given on the command line (its defaults for the rest)."""
    from printer_io.printer import backend

    fields = backend(args.backend).options.model_fields
    given = {f: getattr(args, option_flag(f)[2:].replace("-", "_"), None) for f in fields}
    return {f: v for f, v in given.items() if v is not None}


def printer_args(p: argparse.ArgumentParser, *, triggers_only: bool = False, from_config: bool = False) -> None:
    """``--backend`` and every backend's settings as flags (printer_io.printer.backends declares them);
    ``from_config``: ``--backend`` may be left out when ``--config`` has the printer's ``[printers.<id>]``."""
    from printer_io.printer import backends

    chosen = {n: b for n, b in backends().items() if b.trigger is not None or not triggers_only}
    extra = "; default: the backend of [printers.<id>] in --config" if from_config else ""
    p.add_argument("--backend", choices=sorted(chosen), required=not from_config, help=f"the printer's host{extra}")
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
            option_flag(field),
            type=flag_type(first.annotation),
            default=None,
            help=f"{', '.join(infos)}: {first.description or field.replace('_', ' ')}{default}",
        )


def flag_type(annotation: Any) -> Callable[[str], Any]:
    text = str(annotation)
    if "Path" in text:
        return Path
    if "float" in text:
        return float
    if "int" in text:
        return positive_int
    return str
