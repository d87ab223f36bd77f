"""``layerwatch up``: a site from its config on a real Mosquitto (monitor, the printer's bridge, its camera),
supervised: a part killed comes back and the build goes on; SIGTERM stops every part."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest
from peers import REPO, Mosquitto, wait_until

from monitor.record import RecordError, RecordReader, build_records

pytestmark = [pytest.mark.integration, pytest.mark.slow]
LAYERWATCH = str(REPO / ".venv" / "bin" / "layerwatch")


def _stored(records: Path) -> int:
    paths = build_records(records / "p1")
    if not paths:
        return 0
    try:
        with RecordReader(paths[0]) as r:
            return len(r.stored_layers())
    except (RecordError, OSError):
        return 0


def test_up_runs_a_site_restarts_a_killed_part_and_stops_them_all(broker: Mosquitto, tmp_path: Path) -> None:
    config = tmp_path / "site.toml"
    config.write_text(f"""
[mqtt]
url = "{broker.url}"

[monitor]
out_dir = "{tmp_path / "records"}"
models_dir = "{tmp_path / "models"}"

[printers.p1]
backend = "virtual"
layers = 500
layer_time_s = 0.7

[printers.p1.camera]
source = "simulator"
size = 256
""")
    state = tmp_path / "state.json"
    log = (tmp_path / "up.log").open("w")
    up = subprocess.Popen(
        [LAYERWATCH, "up", "--config", str(config), "--no-dashboard", "--state-file", str(state)],
        stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path, start_new_session=True,
    )  # fmt: skip
    try:
        records = tmp_path / "records"
        wait_until("3 layers stored", lambda: _stored(records) >= 3)
        parts = json.loads(state.read_text())
        assert set(parts) == {"monitor", "bridge:p1", "camera:p1"}
        os.kill(parts["camera:p1"]["pid"], signal.SIGKILL)
        wait_until("the camera started again", lambda: json.loads(state.read_text())["camera:p1"]["starts"] == 2)
        before = _stored(records)
        wait_until("layers stored after the restart", lambda: _stored(records) >= before + 2)
        up.send_signal(signal.SIGTERM)
        assert up.wait(30) == 0
    finally:
        if up.poll() is None:
            os.killpg(up.pid, signal.SIGKILL)
        log.close()
    out = (tmp_path / "up.log").read_text()
    assert "camera:p1 exited with status -9; starting it again in 1 s" in out, out[-3000:]
    assert "[monitor]" in out and "[bridge:p1]" in out and "every part stopped" in out
    for info in json.loads(state.read_text()).values():
        pid = info["pid"]
        if pid is not None:
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)  # gone
    assert "Traceback" not in out, out[-3000:]
