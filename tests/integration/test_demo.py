"""``layerwatch demo``, the README's first command, run as a user runs it."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from monitor.record import RecordReader, check_record

pytestmark = [pytest.mark.integration, pytest.mark.slow]
LAYERWATCH = str(Path(sys.executable).parent / "layerwatch")


def _demo(tmp_path: Path, *args: str, headless: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            LAYERWATCH,
            "demo",
            "--out",
            str(tmp_path),
            "--layer-time",
            "0.4",
            *(["--headless"] if headless else []),
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_demo_pauses_on_the_growing_warp_and_writes_the_record(tmp_path: Path) -> None:
    result = _demo(tmp_path, "--layers", "14", "--warp-start", "5")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "broker: in-process bus" in out
    match = re.search(
        r">>> PAUSE requested at layer (\d+): (more than 1 mm² of confirmed warping|confirmed warping)", out
    )
    assert match, out
    layer = int(match.group(1))
    assert 5 < layer <= 5 + 6  # after the warp starts at layer 5, within 6 layers
    assert ">>> printer PAUSED" in out
    assert "summary" in out and "incidents: " in out
    assert "Traceback" not in result.stderr and result.stderr.strip() == ""
    (record,) = (tmp_path / "records" / "demo").glob("*.h5")
    assert f"build record: {record}" in out
    assert (tmp_path / f"evidence_layer_{layer:04d}.png").is_file()
    assert check_record(record) == []
    with RecordReader(record) as r:
        assert layer in set(int(n) for n in r.stored_layers())
        assert [a["state"] for a in r.table("actions") if a["action"] == "pause"] == ["requested", "confirmed"]


def test_a_printer_faster_than_the_monitor_waits_for_its_verdicts(tmp_path: Path) -> None:
    # 0.05 s a layer is faster than any machine judges a frame: without the hold the job finished before
    # the verdicts came and the pause was refused ("cannot pause while finished")
    result = subprocess.run(
        [LAYERWATCH, "demo", "--out", str(tmp_path), "--layer-time", "0.05", "--headless", "--layers", "14",
         "--warp-start", "5"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "the monitor is two layers behind the printer" in result.stdout
    assert ">>> printer PAUSED" in result.stdout, result.stdout
    assert "pause failed" not in result.stdout


def test_demo_runs_on_the_in_process_broker_where_mosquitto_is_missing(tmp_path: Path) -> None:
    result = _demo(tmp_path, "--layers", "6", "--scenario", "clean", "--broker-impl", "amqtt", headless=False)
    assert result.returncode == 0, result.stderr
    assert "broker: amqtt on mqtt://127.0.0.1:" in result.stdout
    assert "dashboard: http://127.0.0.1:" in result.stdout  # started unless --headless
    assert "layers judged: 6 of 6" in result.stdout and "incidents: 0" in result.stdout


def test_demo_bad_arguments_are_one_line(tmp_path: Path) -> None:
    result = _demo(tmp_path, "--layers", "6", "--warp-start", "5")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "layerwatch demo: --layers 6 leaves no room for the warp starting at layer 5"
    ]
