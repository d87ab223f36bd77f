"""Real peers, started once per test session on 127.0.0.1 and free ports."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from peers import Moonraker, Mosquitto, OctoPrint

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
