"""The rules a site worker takes printers by, and the lock that keeps two holders off one printer's records."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from monitor.config import MonitorSection
from monitor.workers import PrinterLock, default_worker_id, takes


def test_a_worker_takes_printers_up_to_its_share_then_passes_them_on_until_they_went_round_twice() -> None:
    assert takes(held=0, printers=3, workers=2, hops=0)
    assert takes(held=1, printers=3, workers=2, hops=0)  # share of 3 among 2 is 2
    assert not takes(held=2, printers=3, workers=2, hops=0)
    assert not takes(held=2, printers=3, workers=2, hops=3)
    assert takes(held=2, printers=3, workers=2, hops=4)  # round the group twice: someone must hold it
    assert takes(held=5, printers=3, workers=0, hops=0) is False  # no worker seen yet counts as one: share 3


def test_the_printer_lock_waits_for_the_previous_holder_and_gives_up_when_no_longer_wanted(tmp_path: Path) -> None:
    first, second = PrinterLock(tmp_path / "p1", "wa"), PrinterLock(tmp_path / "p1", "wb")
    assert first.acquire(lambda: True) and first.held
    assert (tmp_path / "p1" / ".holder").read_text() == "wa\n"
    assert not second.acquire(lambda: False)  # held by another, not wanted: no wait
    got: list[bool] = []
    waiter = threading.Thread(target=lambda: got.append(second.acquire(lambda: True)))
    waiter.start()
    time.sleep(0.3)
    assert not got  # still waiting for the first holder
    first.release()
    waiter.join(5)
    assert got == [True] and (tmp_path / "p1" / ".holder").read_text() == "wb\n"
    second.release()
    assert not second.held


def test_worker_ids_and_groups_are_topic_levels() -> None:
    assert default_worker_id()
    assert MonitorSection(group="site-1", worker_id="w.a").group == "site-1"
    with pytest.raises(ValueError, match="not usable in an MQTT topic"):
        MonitorSection(group="site/1")


def test_a_group_needs_an_mqtt_5_broker_and_topic_level_names(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from monitor.cli import main

    config = tmp_path / "site.toml"
    config.write_text(
        '[mqtt]\nurl = "mqtt://127.0.0.1:1"\nprotocol = "3.1.1"\n\n'
        f'[monitor]\nout_dir = "{tmp_path / "records"}"\nmodels_dir = "{tmp_path / "models"}"\n\n'
        '[printers.p1]\nbackend = "none"\n'
    )
    assert main(["monitor", "--config", str(config), "--group", "hall-1"]) == 78  # the config must change
    err = capsys.readouterr().err
    assert "[monitor] group 'hall-1'" in err and 'protocol = "5"' in err and "Traceback" not in err
    assert main(["monitor", "--config", str(config), "--group", "hall/1"]) == 2
    assert "not usable in an MQTT topic" in capsys.readouterr().err
    assert main(["monitor", "--config", str(config), "--worker-id", "w1"]) == 2
    assert "--worker-id needs a group" in capsys.readouterr().err
