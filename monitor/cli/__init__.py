"""The ``layerwatch`` command line: one entry point, one subcommand per job, in four groups.

Each group module (services, records, operator, model) holds its commands and registers their parsers
next to them. Foreseeable mistakes (bad file, bad argument, missing model) end in one line on stderr
naming the file or value and what to do, and a non-zero exit status; never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

from monitor.cli import model, operator, records, services
from monitor.cli.common import EXIT_CONFIG, EXIT_PARTIAL, EXIT_USAGE, CommandError, RefusedError

__all__ = ["build_parser", "main"]


class _Parser(argparse.ArgumentParser):
    """argparse, with a bad argument said in one line (the usage is one ``--help`` away), as every other
    foreseeable mistake is; subcommands' parsers are of this class too."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="layerwatch",
        description="In-situ layer monitoring for additive manufacturing.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress (INFO)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for group in (services, records, operator, model):
        group.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from monitor.config import ConfigFileError
    from printer_io.errors import ConfigError, MqttAuthError, PrinterAuthError, PrinterIOError
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
    if getattr(args, "model", "unset") is None and args.command not in ("replay", "backtest"):  # the model in use
        from segmentation.inference import DEFAULT_MODEL

        args.model = DEFAULT_MODEL
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except RefusedError as err:
        print(f"layerwatch {args.command}: {err}", file=sys.stderr)
        return EXIT_PARTIAL
    except (ConfigFileError, ConfigError, MqttAuthError, PrinterAuthError) as err:  # no retry fixes these
        # (a wrong config, a secret file missing, credentials or a key the broker or printer refuses)
        print(f"layerwatch {args.command}: {err}", file=sys.stderr)
        return EXIT_CONFIG
    except (CommandError, SegmentationError, PrinterIOError) as err:
        print(f"layerwatch {args.command}: {err}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"layerwatch {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # output piped into a reader that stopped early (`| head`): not an error worth a traceback

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
