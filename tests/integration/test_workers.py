"""Two monitor workers share a site's printers through a real Mosquitto; one is killed (SIGKILL) mid-build with
frames in flight. Its printers go to the other worker, which rebuilds their state from the records: every layer
is stored once, each layer's published results agree, and the decisions are those of a replay of the same build
by a single monitor."""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from peers import Mosquitto, mosquitto, stop

from monitor.record import RecordReader, build_records, check_record
from monitor.replay import ReplayOptions, run_replay
from printer_io.frames import QualityChecker, encode_image
from printer_io.messages import FrameMeta, LayerEvent, ResultMessage, StatusMessage, encode_frame
from printer_io.mqtt import MqttConfig, MqttLink
from printer_io.topics import Topics
from printer_io.vocabulary import Severity
from segmentation.simulator import SimBuild, scenario_spec

pytestmark = [pytest.mark.integration, pytest.mark.slow]
LAYERWATCH = str(Path(sys.executable).parent / "layerwatch")
LAYERS, SIZE = 14, 256
PRINTERS = {"w0": (3, 4), "w1": (4, None), "w2": (5, 5)}  # printer -> (seed, warp onset)


@functools.cache
def _build(pid: str) -> SimBuild:
    seed, warp = PRINTERS[pid]
    return SimBuild(seed, SIZE, SIZE, LAYERS, spec=scenario_spec(seed, SIZE, LAYERS, warp_start=warp))


class Site:
    """The camera side of three printers and an observer of what the monitors publish."""

    def __init__(self, broker: Mosquitto) -> None:
        self.results: dict[tuple[str, int], list[ResultMessage]] = defaultdict(list)
        self.holders: dict[str, str] = {}  # printer -> worker, from the monitor's newest online status
        self.cond = threading.Condition()
        self.link = MqttLink(MqttConfig(url=broker.url), service="site-test", topics=Topics("layerwatch", "cameras"))
        self.link.subscribe("layerwatch/+/result", self._result)
        self.link.subscribe("layerwatch/+/status/monitor", self._status)
        self.link.start()
        self.frames = {(pid, n): self.frame(pid, f"job-{pid}", n) for pid in PRINTERS for n in range(LAYERS)}

    @staticmethod
    def frame(pid: str, job: str, n: int) -> bytes:
        img = _build(pid).layer(n).image
        meta = FrameMeta(printer=pid, job_id=job, layer=n, z_mm=0.04 * (n + 1), captured_at=time.time(),
                         encoding="png", width=SIZE, height=SIZE, channels=1, bit_depth=8, source="simulator",
                         quality=QualityChecker().check(img))  # fmt: skip
        return encode_frame(meta, encode_image(img))

    def _result(self, topic: str, payload: bytes) -> None:
        res = ResultMessage.from_json(payload, topic)
        with self.cond:
            self.results[res.printer, res.layer].append(res)
            self.cond.notify_all()

    def _status(self, topic: str, payload: bytes) -> None:
        msg = StatusMessage.from_json(payload, topic)
        with self.cond:
            if msg.state == "online":
                self.holders[topic.split("/")[1]] = msg.worker
            else:
                self.holders.pop(topic.split("/")[1], None)
            self.cond.notify_all()

    def send(self, layers: range) -> None:
        for n in layers:
            for pid in PRINTERS:
                self.link.publish(Topics("layerwatch", pid).image, self.frames[pid, n], wait_s=5)

    def wait(self, what: str, ready: object, timeout: float = 120) -> None:
        with self.cond:
            assert self.cond.wait_for(ready, timeout), f"{what} within {timeout} s; holders {self.holders}, " + (  # type: ignore[arg-type]
                f"results {sorted(self.results)}"
            )

    def judged(self, layers: range) -> bool:
        return all((pid, n) in self.results for pid in PRINTERS for n in layers)


@pytest.fixture
def site(broker: Mosquitto) -> Iterator[Site]:
    s = Site(broker)
    yield s
    s.link.close()


def _worker(config: Path, name: str, log: Path) -> subprocess.Popen[bytes]:
    out = log.open("wb")
    return subprocess.Popen(
        [LAYERWATCH, "-v", "monitor", "--config", str(config), "--group", "site", "--worker-id", name],
        stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip


def _site_config(tmp_path: Path, url: str) -> Path:
    config = tmp_path / "site.toml"
    config.write_text(
        f'[mqtt]\nurl = "{url}"\n\n'
        f'[monitor]\nout_dir = "{tmp_path / "records"}"\nmodels_dir = "{tmp_path / "models"}"\nworker_check_s = 0.5\n'
        "takeover_delay_s = 1\njob_switch_quiet_s = 0\n\n"
        + "".join(f'[printers.{pid}]\nbackend = "none"\n\n' for pid in PRINTERS)
    )
    return config


def _held_by_both(site: Site) -> bool:
    return set(site.holders) == set(PRINTERS) and set(site.holders.values()) == {"wa", "wb"}


def _as_one_monitor_decides(site: Site, tmp_path: Path) -> None:
    """Every layer of every printer stored once in one record, each layer's published results agree, and the
    decisions are those of one monitor replaying the same frames."""
    paused = set()
    for pid in PRINTERS:
        # one record per build, no second one for a printer taken over (the copy a killed writer leaves aside is
        # what a restart leaves too: monitor.record.recover)
        (path,) = build_records(tmp_path / "records" / pid)
        assert check_record(path) == [], pid
        with RecordReader(path) as r:
            stored = [int(n) for n in np.flatnonzero(r.layers()["stored"])]
            severity = [Severity.from_index(int(s)) for s in r.layers()["severity"]]
            actions = [(int(a["layer"]), str(a["action"]), str(a["state"])) for a in r.table("actions")]
        assert stored == list(range(LAYERS)), pid
        for n in range(LAYERS):  # a layer published twice (redelivered to the new holder) says the same both times
            assert {res.severity for res in site.results[pid, n]} == {severity[n]}, (pid, n)
        requested = [a for a in actions if a[2] == "requested"]
        assert len(requested) == len(set(requested)), f"{pid}: an action taken twice: {actions}"
        alone = run_replay(ReplayOptions(source=path, out=tmp_path / f"alone-{pid}.h5", progress=False,
                                         models_dir=tmp_path / "models"))  # fmt: skip
        assert [r.severity for r in sorted(alone.results, key=lambda r: r.layer)] == severity, pid
        assert [(a.layer, a.action) for a in alone.actions if a.state.value == "requested"] == [
            (n, action) for n, action, _ in requested
        ], pid
        paused |= {pid for _, action, _ in requested if action == "pause"}
    assert paused == {pid for pid, (_, warp) in PRINTERS.items() if warp is not None}


@contextmanager
def _two_workers(site: Site, url: str, tmp_path: Path) -> Iterator[dict[str, subprocess.Popen[bytes]]]:
    """Workers "wa" and "wb" holding the three printers between them (the broker hands them out), layers 0-5
    judged; stopped at the end."""
    config = _site_config(tmp_path, url)
    workers = {name: _worker(config, name, tmp_path / f"{name}.log") for name in ("wa", "wb")}
    try:
        site.wait("all printers held by both workers", lambda: _held_by_both(site))
        site.send(range(6))
        site.wait("layers 0-5 judged", lambda: site.judged(range(6)))
        yield workers
    finally:
        for proc in workers.values():
            if proc.poll() is None:
                stop(proc)


# the dashboard's own reader cache, reading every record of the site, as a page open on each printer would
DASHBOARD = """
import sys, time
from pathlib import Path
from dashboards.state import DashboardOptions, Records
from monitor.record import RecordError, build_records
root = Path(sys.argv[1])
records = Records(DashboardOptions(records=root))
print("watching", flush=True)
while True:
    for path in build_records(root, recursive=True):
        try:
            records.reader(path).layers()
        except (RecordError, OSError, KeyError):
            records.drop(path)
    time.sleep(0.2)
"""


def test_two_workers_share_the_printers_and_one_takes_over_when_the_other_is_killed(
    broker: Mosquitto, site: Site, tmp_path: Path
) -> None:
    """With a dashboard reading every record throughout: a reader held open once kept the heir from continuing
    the victim's builds (HDF5's file lock), and every later layer of them was refused."""
    with _two_workers(site, broker.url, tmp_path) as workers:
        dashboard = subprocess.Popen(
            [sys.executable, "-c", DASHBOARD, str(tmp_path / "records")], stdout=subprocess.PIPE
        )
        try:
            assert dashboard.stdout is not None and dashboard.stdout.readline().strip() == b"watching"
            victim = site.holders["w0"]
            heir = "wb" if victim == "wa" else "wa"
            lost = [pid for pid, w in site.holders.items() if w == victim]
            site.send(range(6, 10))  # in flight and queued at the victim when it dies
            workers[victim].send_signal(signal.SIGKILL)
            workers[victim].wait(10)
            site.send(range(10, LAYERS))
            site.wait("the heir holds every printer", lambda: set(site.holders.values()) == {heir}
                      and set(site.holders) == set(PRINTERS))  # fmt: skip
            site.wait("every layer judged", lambda: site.judged(range(LAYERS)))
        finally:
            stop(dashboard)
    heir_log = (tmp_path / f"{heir}.log").read_text()
    for pid in lost:
        assert f"worker {heir} took printer {pid}" in heir_log
    _as_one_monitor_decides(site, tmp_path)


def test_after_a_broker_restart_and_a_worker_stopped_the_printers_are_held_again_and_no_layer_is_lost(
    tmp_path: Path,
) -> None:
    (tmp_path / "broker").mkdir()
    with mosquitto(tmp_path / "broker") as broker:
        site = Site(broker)
        try:
            with _two_workers(site, broker.url, tmp_path) as workers:
                broker.restart()  # every printer's session ends; the broker keeps them (persistence)
                assert site.link.wait_connected(30)
                site.send(range(6, 10))  # queued in the printers' sessions until a worker holds them again
                site.wait("layers 6-9 judged after the restart", lambda: site.judged(range(10)))
                # a worker stopped for an upgrade hands its printers to the other mid-build
                leaving = site.holders["w0"]
                stop(workers[leaving])
                staying = "wb" if leaving == "wa" else "wa"
                site.wait("the other worker holds every printer", lambda: set(site.holders) == set(PRINTERS)
                          and set(site.holders.values()) == {staying})  # fmt: skip
                site.send(range(10, LAYERS))
                site.wait("every layer judged", lambda: site.judged(range(LAYERS)))
        finally:
            site.link.close()
        logs = "".join((tmp_path / f"{name}.log").read_text() for name in ("wa", "wb"))
        for pid in PRINTERS:
            assert f"lost printer {pid}" in logs and logs.count(f"took printer {pid}") >= 2, pid
        _as_one_monitor_decides(site, tmp_path)


def test_a_worker_that_joins_gets_a_printer_between_builds_never_one_in_the_middle_of_a_build(
    broker: Mosquitto, site: Site, tmp_path: Path
) -> None:
    """One worker holds the three printers; w1's build ends; a second worker joins. The first hands on w1 (it
    holds more than its share of two, and w1 is between builds) and keeps w0 and w2, whose builds go on."""
    config = _site_config(tmp_path, broker.url)
    workers = {"wa": _worker(config, "wa", tmp_path / "wa.log")}
    try:
        site.wait("wa holds every printer", lambda: site.holders == dict.fromkeys(PRINTERS, "wa"))
        site.send(range(3))
        site.wait("layers 0-2 judged", lambda: site.judged(range(3)))
        end = LayerEvent(printer="w1", job_id="job-w1", layer=2, z_mm=0.12, source="test", end=True, outcome="done")
        site.link.publish(Topics("layerwatch", "w1").layer, end.to_json(), wait_s=5)
        workers["wb"] = _worker(config, "wb", tmp_path / "wb.log")
        site.wait("wb holds w1, wa the printers in the middle of a build",
                  lambda: site.holders == {"w0": "wa", "w1": "wb", "w2": "wa"})  # fmt: skip
        for n in range(3, 6):  # the builds in progress go on with wa
            for pid in ("w0", "w2"):
                site.link.publish(Topics("layerwatch", pid).image, site.frames[pid, n], wait_s=5)
        next_job = Site.frame("w1", "job-w1-next", 0)  # w1's next build starts with its new holder
        site.link.publish(Topics("layerwatch", "w1").image, next_job, wait_s=5)
        going_on = [(pid, n) for pid in ("w0", "w2") for n in range(6)]

        def judged() -> bool:
            next_judged = any(r.job_id == "job-w1-next" for r in site.results.get(("w1", 0), []))
            return next_judged and all(k in site.results for k in going_on)

        site.wait("the builds in progress and the next build judged", judged)
        assert site.holders == {"w0": "wa", "w1": "wb", "w2": "wa"}
        logs = {name: (tmp_path / f"{name}.log").read_text() for name in workers}  # before the stop hands all on
    finally:
        for proc in workers.values():
            if proc.poll() is None:
                stop(proc)
    assert "above its share of 2: hands on w1 (between builds)" in logs["wa"]
    assert "took printer w0" not in logs["wb"] and "took printer w2" not in logs["wb"]
    for pid in ("w0", "w2"):  # one record each, every layer stored once, by the one worker that held it
        (path,) = (tmp_path / "records" / pid).glob("*.h5")
        with RecordReader(path) as r:
            assert [int(n) for n in np.flatnonzero(r.layers()["stored"])] == list(range(6)), pid
    assert sorted(p.name for p in (tmp_path / "records" / "w1").glob("*.h5")) == ["job-w1-next.h5", "job-w1.h5"]
