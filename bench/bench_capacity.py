"""Capacity of one machine: N printers live on a real Mosquitto, judged by one ``layerwatch monitor`` process.

Each simulated printer publishes one frame a layer every ``--period`` seconds (30 s: a powder-bed layer), the
printers staggered evenly over the period, the way the camera node publishes them. For each frame size and an
increasing N the monitor (a fresh process per step, printers on the ``dry-run`` backend) runs ``--layers``
periods, and the bench reports:

- frame to decision: from the camera's publish to the monitor's result arriving (MQTT both ways included);
- decision to pause acknowledged: from the monitor's ``pause requested`` to its ``pause confirmed`` arriving, on
  two printers a step whose builds warp (their first layers are sent before the paced part, up to the layer a
  replay of the same build pauses at, so each pauses under the step's load). The dry-run printer acknowledges at
  once: this is the monitor's share; a real printer adds its own (bench_pause_octoprint.py);
- the monitor's CPU (percent of one core, all its threads) and memory (resident, and its peak);

and the N where p95 frame to decision crosses 2 s. The baseline in the same run is N = 1. The counts tried are
fractions of the N the one-printer time says the machine can take (period / time a frame), unless ``--counts``.

Then live throughput with 1 and 2 workers of a group (``monitor --group``, monitor.workers) judging the same
backlog: ``--backlog`` layers each of 8 printers sent at once, frames a minute until the last result.

    .venv/bin/python bench/bench_capacity.py [--sizes 512 1024] [--period 30] [--layers 2] [--counts 1,8,16]
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from peers import Mosquitto

from bench._common import machine, median_p95
from printer_io.frames import encode_image
from printer_io.messages import ActionMessage, FrameMeta, ResultMessage, StatusMessage, encode_frame
from printer_io.mqtt import MqttConfig, MqttLink
from printer_io.topics import Topics

LAYERWATCH = str(Path(sys.executable).parent / "layerwatch")
BUILD_LAYERS = 24
TARGET_S = 2.0
WARPING = 2  # printers a step whose builds warp (pause samples)


@dataclass
class Frames:
    """PNG frames of a warping and a clean simulated build of one size."""

    size: int
    warp: list[bytes]
    clean: list[bytes]
    pause_layer: int  # where a replay of the warping build pauses

    def payload(self, printer: str, job: str, layer: int, warping: bool) -> bytes:
        png = (self.warp if warping else self.clean)[layer % BUILD_LAYERS]
        meta = FrameMeta(printer=printer, job_id=job, layer=layer, z_mm=0.04 * (layer + 1), captured_at=time.time(),
                         encoding="png", width=self.size, height=self.size, channels=1, bit_depth=8,
                         source="simulator")  # fmt: skip
        return encode_frame(meta, png)


def render(size: int, tmp: Path) -> Frames:
    from monitor.record import write_truth_build
    from monitor.replay import ReplayOptions, run_replay
    from segmentation.classes import CLASS_NAMES
    from segmentation.simulator import SimBuild, scenario_spec

    builds = {}
    for name, seed, warp in (("warp", 3, 3), ("clean", 5, None)):
        spec = scenario_spec(seed, size, BUILD_LAYERS, warp_start=warp)
        sim = SimBuild(seed, size, size, BUILD_LAYERS, spec=spec)
        builds[name] = [sim.layer(k) for k in range(BUILD_LAYERS)]
    truth = tmp / f"warp-{size}.h5"
    write_truth_build(truth, [s.image for s in builds["warp"]], [s.mask for s in builds["warp"]],
                      mm_per_px=0.1, layer_thickness_mm=0.04, class_names=list(CLASS_NAMES))  # fmt: skip
    replay = run_replay(ReplayOptions(source=truth, out=tmp / f"warp-{size}-replay.h5", progress=False,
                                      models_dir=tmp / "models"))  # fmt: skip
    first = replay.first_pause
    if first is None:
        raise SystemExit(f"the warping build at {size} px never pauses: no pause to time")
    encoded = {k: [encode_image(s.image) for s in builds[k]] for k in builds}
    return Frames(size, encoded["warp"], encoded["clean"], first.layer or 0)


@dataclass
class Seen:
    """What the monitors published, with arrival times."""

    results: dict[tuple[str, int], float] = field(default_factory=dict)
    requested: dict[str, float] = field(default_factory=dict)
    confirmed: dict[str, float] = field(default_factory=dict)
    online: dict[str, str] = field(default_factory=dict)  # printer -> worker ("" for a single monitor)
    cond: threading.Condition = field(default_factory=threading.Condition)


class Site:
    """The cameras of all printers, and an observer of results, actions and monitor statuses."""

    def __init__(self, url: str) -> None:
        self.seen = Seen()
        self.link = MqttLink(MqttConfig(url=url, max_queue_frames=100_000), service="bench",
                             topics=Topics("layerwatch", "bench"), clean=True)  # fmt: skip
        self.link.subscribe("layerwatch/+/result", self._result)
        self.link.subscribe("layerwatch/+/action", self._action)
        self.link.subscribe("layerwatch/+/status/monitor", self._status)
        self.link.start()

    def _result(self, topic: str, payload: bytes) -> None:
        res = ResultMessage.from_json(payload, topic)
        with self.seen.cond:
            self.seen.results.setdefault((res.printer, res.layer), time.monotonic())
            self.seen.cond.notify_all()

    def _action(self, topic: str, payload: bytes) -> None:
        msg = ActionMessage.from_json(payload, topic)
        if msg.action != "pause":
            return
        where = {"requested": self.seen.requested, "confirmed": self.seen.confirmed}.get(msg.state.value)
        if where is not None:
            where.setdefault(msg.printer, time.monotonic())

    def _status(self, topic: str, payload: bytes) -> None:
        msg = StatusMessage.from_json(payload, topic)
        printer = topic.split("/")[1]
        with self.seen.cond:
            if msg.state == "online":
                self.seen.online[printer] = msg.worker
            else:
                self.seen.online.pop(printer, None)
            self.seen.cond.notify_all()

    def publish(self, printer: str, payload: bytes) -> float:
        self.link.publish(Topics("layerwatch", printer).image, payload)
        return time.monotonic()

    def wait(self, ready: object, timeout: float) -> bool:
        with self.seen.cond:
            return self.seen.cond.wait_for(ready, timeout)  # type: ignore[arg-type]

    def reset(self) -> None:
        with self.seen.cond:
            self.seen.results.clear()
            self.seen.requested.clear()
            self.seen.confirmed.clear()


def _config(path: Path, url: str, printers: list[str], out: Path, models: Path, group: str = "") -> Path:
    extra = f'group = "{group}"\nworker_check_s = 0.5\ntakeover_delay_s = 1\n' if group else ""
    path.write_text(
        f'[mqtt]\nurl = "{url}"\nmax_queue_frames = 10000\n\n[monitor]\nout_dir = "{out}"\nmodels_dir = "{models}"\n'
        + extra + "\n" + "".join(f'[printers.{p}]\nbackend = "dry-run"\n\n' for p in printers)
    )  # fmt: skip
    return path


@contextmanager
def monitors(config: Path, workers: list[str], log: Path) -> Iterator[list[subprocess.Popen[bytes]]]:
    procs = []
    for w in workers:
        cmd = [LAYERWATCH, "monitor", "--config", str(config)] + (["--worker-id", w] if w else [])
        procs.append(subprocess.Popen(cmd, stdout=log.open("ab"), stderr=subprocess.STDOUT))
    try:
        yield procs
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(60)
            except subprocess.TimeoutExpired:
                p.kill()


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _memory_mb(pid: int) -> tuple[float, float]:
    status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(status["VmRSS"].split()[0]) / 1024, int(status["VmHWM"].split()[0]) / 1024


@dataclass
class Step:
    size: int
    printers: int
    latencies: list[float]
    pause_acks: list[float]
    missing: int
    cpu_pct: float
    rss_mb: float
    peak_mb: float


def step(site: Site, frames: Frames, n: int, period: float, layers: int, tmp: Path, url: str) -> Step:
    printers = [f"cap{frames.size}-{n:03d}-{i:03d}" for i in range(n)]
    warping = set(printers[: min(WARPING, n)])
    out = tmp / f"records-{frames.size}-{n}"
    config = _config(tmp / f"capacity-{frames.size}-{n}.toml", url, printers, out, tmp / "models")
    site.reset()
    (tmp / "monitor.log").write_bytes(b"")
    with monitors(config, [""], tmp / "monitor.log") as (proc,):
        if not site.wait(lambda: all(p in site.seen.online for p in printers), 120):
            online = sum(p in site.seen.online for p in printers)
            tail = (tmp / "monitor.log").read_text(errors="replace").splitlines()[-30:]
            raise SystemExit(f"the monitor had {online} of its {n} printers online after 120 s; its log ends:\n"
                             + "\n".join(tail))  # fmt: skip
        job = {p: f"job-{p}" for p in printers}
        first = {p: (frames.pause_layer if p in warping else 0) for p in printers}
        for p in warping:  # the build so far, up to the layer the pause comes at (not timed)
            for k in range(frames.pause_layer):
                site.publish(p, frames.payload(p, job[p], k, True))
        site.wait(lambda: all((p, first[p] - 1) in site.seen.results for p in warping), 300)
        cpu0, wall0 = _cpu_s(proc.pid), time.monotonic()
        schedule = sorted((k * period + i * period / n, p, first[p] + k) for k in range(layers)
                          for i, p in enumerate(printers))  # fmt: skip
        sent: dict[tuple[str, int], float] = {}
        start = time.monotonic()
        for at, p, layer in schedule:
            time.sleep(max(0.0, start + at - time.monotonic()))
            sent[p, layer] = site.publish(p, frames.payload(p, job[p], layer, p in warping))
        site.wait(lambda: all(key in site.seen.results for key in sent), period + 120)
        cpu_s, wall_s = _cpu_s(proc.pid) - cpu0, time.monotonic() - wall0
        rss, peak = _memory_mb(proc.pid)
        site.wait(lambda: all(p in site.seen.confirmed for p in warping), 30)
    got = site.seen.results
    latencies = [got[key] - t for key, t in sent.items() if key in got]
    acks = [site.seen.confirmed[p] - site.seen.requested[p] for p in warping
            if p in site.seen.confirmed and p in site.seen.requested]  # fmt: skip
    return Step(frames.size, n, latencies, acks, len(sent) - len(latencies), 100 * cpu_s / wall_s, rss, peak)


def say(s: Step, base: float | None) -> None:
    med, p95 = median_p95(s.latencies) if s.latencies else (math.nan, math.nan)
    ack = median_p95(s.pause_acks) if s.pause_acks else (math.nan, math.nan)
    ratio = f" ({p95 / base:4.1f}x N=1)" if base else ""
    print(f"{s.size:5d} px N={s.printers:4d}: frame->decision median {med:6.2f} s p95 {p95:6.2f} s{ratio}, "
          f"n={len(s.latencies)}, missing {s.missing}; decision->pause ack median {ack[0] * 1e3:5.0f} ms "
          f"p95 {ack[1] * 1e3:5.0f} ms (n={len(s.pause_acks)}); CPU {s.cpu_pct:5.1f}% of a core, "
          f"RSS {s.rss_mb:6.0f} MB (peak {s.peak_mb:6.0f} MB)", flush=True)  # fmt: skip


def capacity(site: Site, frames: Frames, args: argparse.Namespace, tmp: Path, url: str) -> None:
    one = step(site, frames, 1, args.period, args.layers, tmp, url)
    say(one, None)
    base = median_p95(one.latencies)[1]
    per_frame = median_p95(one.latencies)[0]
    if args.counts:
        counts = [int(c) for c in args.counts.split(",") if int(c) > 1]
    else:
        top = args.period / per_frame
        counts = sorted({max(2, round(top * f)) for f in (0.25, 0.5, 0.75, 0.9, 1.05)})
    print(f"{frames.size} px: one printer's frame takes {per_frame:.2f} s: the period allows about "
          f"{args.period / per_frame:.0f} printers; trying N = {counts}", flush=True)  # fmt: skip
    below = 1
    for n in counts:
        s = step(site, frames, n, args.period, args.layers, tmp, url)
        say(s, base)
        p95 = median_p95(s.latencies)[1] if s.latencies else math.inf
        if p95 > TARGET_S or s.missing:
            print(f"{frames.size} px: p95 frame->decision crosses {TARGET_S:.0f} s between N={below} and N={n}")
            return
        below = n
    print(f"{frames.size} px: p95 stayed under {TARGET_S:.0f} s up to N={below}")


def _group_rate(site: Site, frames: Frames, count: int, backlog: int, tmp: Path, url: str) -> float:
    """Frames a minute of a group of ``count`` workers judging ``backlog`` layers of 8 printers sent at once."""
    printers = [f"grp{count}-{i}" for i in range(8)]
    config = _config(tmp / f"group-{count}.toml", url, printers, tmp / f"records-group-{count}", tmp / "models",
                     group=f"bench{count}")  # fmt: skip
    names = [f"w{i}" for i in range(count)]
    site.reset()
    with monitors(config, names, tmp / "monitor.log"):
        online = site.seen.online
        if not site.wait(lambda: set(printers) <= set(online) and len({online[p] for p in printers}) == count, 120):
            raise SystemExit(f"the {count} worker(s) did not take the 8 printers within 120 s")
        held = {w: sum(online[p] == w for p in printers) for w in names}
        t0 = time.monotonic()
        for k in range(backlog):
            for p in printers:
                site.publish(p, frames.payload(p, f"job-{p}", k, False))
        keys = [(p, k) for p in printers for k in range(backlog)]
        site.wait(lambda: all(key in site.seen.results for key in keys), 900)
        done = max(site.seen.results[key] for key in keys if key in site.seen.results)
    rate = len(keys) / (done - t0) * 60
    print(f"group of {count} worker(s) (printers each {held}): {rate:.0f} frames/min of {frames.size} px over "
          f"{len(keys)} frames", flush=True)  # fmt: skip
    return rate


def workers(site: Site, frames: Frames, backlog: int, tmp: Path, url: str) -> None:
    """Frames a minute of 1 and 2 workers of a group on the same backlog."""
    one, two = (_group_rate(site, frames, count, backlog, tmp, url) for count in (1, 2))
    print(f"2 workers / 1 worker: {two / one:.2f}x on {os.cpu_count()} cores")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[512, 1024])
    ap.add_argument("--period", type=float, default=30.0, help="seconds between a printer's layers (default 30)")
    ap.add_argument("--layers", type=int, default=2, help="paced layers a printer in each step (default 2)")
    ap.add_argument("--counts", default="", help="printer counts to try, e.g. 8,16,32 (default: from N=1)")
    ap.add_argument("--backlog", type=int, default=6, help="layers of each of 8 printers for 1 vs 2 workers")
    ap.add_argument("--no-workers", action="store_true", help="skip the 1 vs 2 workers run")
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)
    logging.getLogger("monitor").setLevel(logging.CRITICAL)  # the replays that find the pause layer say it loudly
    print(f"machine: {machine()}", flush=True)
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        broker = Mosquitto(tmp)
        # a farm's broker saves its store now and then, not on every change as the tests' broker does
        conf = broker.conf.read_text().replace("autosave_on_changes true\nautosave_interval 1\n", "")
        broker.conf.write_text(conf)
        broker.start()
        site = Site(broker.url)
        try:
            for size in args.sizes:
                frames = render(size, tmp)
                print(f"{size} px: the warping build pauses at layer {frames.pause_layer} (replay)", flush=True)
                capacity(site, frames, args, tmp, broker.url)
            if not args.no_workers:
                workers(site, render(512, tmp), args.backlog, tmp, broker.url)
        finally:
            site.link.close()
            broker.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
