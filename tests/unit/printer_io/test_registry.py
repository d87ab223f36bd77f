"""Backends are declared in one place: a module with ``BACKEND`` and a line in ``BACKEND_MODULES``.

The test adds a backend the way a contributor would (a new module, one registry line) and checks that the
config, the command line and the printer factory all take it, with its own settings, and nothing else.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from monitor.cli import build_parser
from monitor.config import ConfigFileError, load_config
from printer_io import printer as registry
from printer_io.errors import ConfigError

MODULE = """
from pydantic import Field

from printer_io.dryrun import DryRunPrinter
from printer_io.printer import Backend, BackendOptions


class ToyOptions(BackendOptions):
    serial: str = Field(default="", description="the toy's serial number")
    retries: int = Field(default=2, ge=0, le=9, description="retries")


BACKEND = Backend("toy", "a printer that only exists in this test", ToyOptions, lambda pid, o: DryRunPrinter(pid))
"""


@pytest.fixture
def toy_backend(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    (tmp_path / "toy_backend.py").write_text(MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(registry, "BACKEND_MODULES", (*registry.BACKEND_MODULES, "toy_backend"))
    monkeypatch.setattr(registry, "_BACKENDS", {})
    yield
    sys.modules.pop("toy_backend", None)


def test_every_builtin_backend_declares_its_options_and_factory() -> None:
    found = registry.backends()
    assert {"virtual", "octoprint", "moonraker", "dry-run"} <= set(found)
    for name, b in found.items():
        assert b.name == name and issubclass(b.options, registry.BackendOptions)
        assert b.summary


def test_a_new_backend_is_one_module_and_one_registry_line(toy_backend: None, tmp_path: Path) -> None:
    printer = registry.create_printer("toy", "p7", serial="A1", retries=3)
    assert printer.name == "p7"
    with pytest.raises(ConfigError, match="backend 'toy': retries = 12"):
        registry.create_printer("toy", retries=12)

    cfg = tmp_path / "lw.toml"
    cfg.write_text('[printers.p7]\nbackend = "toy"\nserial = "A1"\n')
    assert load_config(cfg).printers["p7"].options == {"serial": "A1"}
    cfg.write_text('[printers.p7]\nbackend = "toy"\nurl = "http://x"\n')
    with pytest.raises(ConfigFileError, match="backend 'toy' has no setting 'url'; its settings: retries, serial"):
        load_config(cfg)

    args = build_parser().parse_args(["printer", "status", "--backend", "toy", "--serial", "B2", "--retries", "4"])
    assert (args.backend, args.serial, args.retries) == ("toy", "B2", 4)
