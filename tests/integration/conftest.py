"""Real peers, started once per test session on 127.0.0.1 and free ports."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from peers import Moonraker, Mosquitto, OctoPrint

from printer_io.credentials import CREDENTIAL_ENV, OPERATORS_FILE_ENV, Credential, new_secret
from printer_io.virtual import VirtualPrinter


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    b = Mosquitto(tmp_path_factory.mktemp("mosquitto")).start()
    yield b
    b.stop()


@pytest.fixture(scope="session")
def octoprint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OctoPrint]:
    server = OctoPrint(tmp_path_factory.mktemp("octoprint")).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def moonraker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Moonraker]:
    # the Klippy stand-in's printer: 0.25 s a layer, a 0.2 s pause (Klipper parks the head first)
    printer = VirtualPrinter("klipper", layers=400, layer_time_s=0.25, pause_delay_s=0.2).start()
    server = Moonraker(tmp_path_factory.mktemp("moonraker"), printer).start()
    yield server
    server.stop()
    printer.close()


@pytest.fixture
def ana(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Credential:
    """An operator the monitors of this test know (their operators file) and whose credential the commands
    of this test sign with (the environment, as a user would set it)."""
    cred = Credential("ana", new_secret())
    operators = tmp_path / "operators"
    operators.write_text(f"# the monitor's operators\n{cred.name}:{cred.secret}\n")
    operators.chmod(0o600)
    monkeypatch.setenv(OPERATORS_FILE_ENV, str(operators))
    monkeypatch.setenv(CREDENTIAL_ENV, f"{cred.name}:{cred.secret}")
    return cred
