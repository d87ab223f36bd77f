"""Hostile input against a running monitor: a fuzz run, a decompression bomb and a burst (docs/security.md).

Starts Mosquitto and ``layerwatch monitor`` (its own process, so that its memory is its own; embedded virtual
printer) and, while a clean simulated build of 20 layers (512 px) is monitored:

1. fuzz: 10,000 malformed messages (tests/hostile.py: random bytes, broken envelopes and JSON, images that are
   none or lie about their size, unsigned control requests) between the layers. Counts: good layers stored
   and judged, handler crashes, monitor still alive; its RSS before and after.
2. bomb: one frame declaring 20000x20000 16-bit colour (2.4 GB decoded); the monitor's peak RSS (VmHWM)
   before and after.
3. burst: 1,500 frames of about 1 MB (1024x1024 noise PNG) as fast as the broker takes them; peak RSS, and
   RSS once the queue has drained; how many frames were judged and how many dropped (the oldest first).

Baseline in the same run: the monitor's RSS after its first layers, before any hostile input.

    .venv/bin/python bench/fuzz_monitor.py [--messages 10000] [--burst 1500]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import numpy as np
from hostile import bomb_png, malformed_messages
from peers import Mosquitto

from bench._common import machine
from printer_io.frames import QualityChecker, encode_image
from printer_io.messages import EventMessage, FrameMeta, ResultMessage, StatusMessage, encode_frame
from printer_io.mqtt import MqttConfig, MqttLink
from printer_io.topics import Topics
from segmentation.simulator import SimBuild, scenario_spec

PID, JOB, LAYERS = "fuzz", "fuzz-job", 20


def memory(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of a process in MB."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def frame(image: np.ndarray, layer: int, job: str = JOB) -> bytes:
    meta = FrameMeta(
        printer=PID, job_id=job, layer=layer, z_mm=0.04 * (layer + 1), captured_at=time.time(), encoding="png",
        width=image.shape[1], height=image.shape[0], channels=1, bit_depth=8, source="bench",
        quality=QualityChecker().check(image),
    )  # fmt: skip
    return encode_frame(meta, encode_image(image))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=10_000)
    ap.add_argument("--burst", type=int, default=1500)
    args = ap.parse_args()
    print(f"machine: {machine()}")
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        (tmp / "mq").mkdir()
        broker = Mosquitto(tmp / "mq").start()
        config = tmp / "monitor.toml"
        config.write_text(
            f'[mqtt]\nurl = "{broker.url}"\n[monitor]\nout_dir = "{tmp / "records"}"\n'
            f'[printers.{PID}]\nbackend = "virtual"\n'
        )
        exe = str(Path(sys.executable).parent / "layerwatch")
        log = tmp / "monitor.log"  # a file, not a pipe: a pipe nobody reads blocks the monitor once full
        with log.open("w") as sink:
            monitor = subprocess.Popen([exe, "monitor", "--config", str(config)], stderr=sink, stdout=sink)
            try:
                run(broker, monitor, args.messages, args.burst)
            finally:
                monitor.terminate()
                monitor.wait(timeout=60)
                broker.stop()
        err = log.read_text()
        tracebacks = err.count("Traceback")
        print(f"monitor stderr: {len(err.splitlines())} lines, {tracebacks} tracebacks")
    return 0


def run(broker: Mosquitto, monitor: subprocess.Popen[bytes], n_messages: int, n_burst: int) -> None:
    topics = Topics("layerwatch", PID)
    results: dict[int, bool] = {}
    events: list[str] = []
    cond = threading.Condition()

    def on_result(topic: str, payload: bytes) -> None:
        r = ResultMessage.from_json(payload, topic)
        with cond:
            results[r.layer] = r.judged
            cond.notify_all()

    def on_event(topic: str, payload: bytes) -> None:
        events.append(EventMessage.from_json(payload, topic).code)

    def wait(done: object, timeout: float) -> bool:
        with cond:
            return cond.wait_for(done, timeout)  # type: ignore[arg-type]

    online = threading.Event()

    def on_status(topic: str, payload: bytes) -> None:
        if StatusMessage.from_json(payload, topic).state == "online":
            online.set()

    observer = MqttLink(MqttConfig(url=broker.url), service="bench-observer", topics=topics)
    observer.subscribe(topics.result, on_result)
    observer.subscribe(topics.event, on_event)
    observer.subscribe(topics.status("monitor"), on_status)
    sender = MqttLink(MqttConfig(url=broker.url), service="bench-camera", topics=topics, ephemeral=True)
    spec = scenario_spec(5, 1024, LAYERS, warp_start=None)
    build = SimBuild(5, 1024, 1024, LAYERS, spec=spec)
    with observer.start(), sender.start():
        if not online.wait(120):  # frames sent before the monitor subscribed would be lost
            raise SystemExit("the monitor did not come online within 120 s")
        sender.publish(topics.image, frame(build.layer(0).image, 0), wait_s=10)
        sender.publish(topics.image, frame(build.layer(1).image, 1), wait_s=10)
        if not wait(lambda: 1 in results, 180):
            raise SystemExit("the monitor judged no layer within 180 s")
        time.sleep(1.0)
        base_rss, base_hwm = memory(monitor.pid)
        print(f"baseline (after 2 layers): RSS {base_rss:.0f} MB, peak {base_hwm:.0f} MB")

        # 1. fuzz
        hostile = list(malformed_messages(n_messages, PID, JOB, seed=2026))
        per = len(hostile) // (LAYERS - 2)
        t0 = time.monotonic()
        for i, layer in enumerate(range(2, LAYERS)):
            for suffix, payload in hostile[i * per : (i + 1) * per if layer < LAYERS - 1 else None]:
                sender.publish(f"{topics.prefix}/{PID}/{suffix}", payload)
            sender.publish(topics.image, frame(build.layer(layer).image, layer), wait_s=30)
        ok = wait(lambda: len(results) == LAYERS, 300)
        fuzz_s = time.monotonic() - t0
        time.sleep(2.0)
        rss, hwm = memory(monitor.pid)
        judged = sum(results.values())
        alive = monitor.poll() is None
        said = sum(e.endswith("refused") or e == "frame_undecodable" for e in events)
        print(
            f"fuzz: {len(hostile)} malformed messages in {fuzz_s:.1f} s between {LAYERS} good layers: "
            f"{len(results)}/{LAYERS} layers stored, {judged} judged, monitor {'alive' if alive else 'DEAD'}"
            f"{'' if ok else ' (timed out)'}; RSS {base_rss:.0f} -> {rss:.0f} MB ({rss / base_rss:.2f}x), "
            f"peak {hwm:.0f} MB; refusal events said: {said}"
        )

        # 2. bomb
        before_hwm = memory(monitor.pid)[1]
        bomb = FrameMeta(
            printer=PID, job_id=JOB, layer=LAYERS, z_mm=1.0, captured_at=time.time(), encoding="png", width=20_000,
            height=20_000, channels=3, bit_depth=16,
        )  # fmt: skip
        sender.publish(topics.image, encode_frame(bomb, bomb_png()), wait_s=10)
        time.sleep(3.0)
        rss, hwm = memory(monitor.pid)
        print(
            f"bomb: a {len(bomb_png()) / 1024:.0f} kB PNG declaring 20000x20000 16-bit colour: peak "
            f"{before_hwm:.0f} -> {hwm:.0f} MB (+{hwm - before_hwm:.0f} MB), RSS {rss:.0f} MB, monitor "
            f"{'alive' if monitor.poll() is None else 'DEAD'}"
        )

        # 3. burst
        rng = np.random.default_rng(0)
        noise = [rng.integers(0, 255, (1024, 1024), dtype=np.uint8) for _ in range(4)]
        # the same build goes on (noise frames: unlike any plate, so reviewed, not judged; the queue is the point)
        first = LAYERS + 1
        payloads = [frame(noise[k % 4], first + k) for k in range(n_burst)]
        before_rss, before_hwm = memory(monitor.pid)
        results.clear()
        t0 = time.monotonic()
        peak = before_rss
        for p in payloads:
            sender.publish(topics.image, p)
        sender.publish(topics.image, payloads[-1], wait_s=120)
        burst_s = time.monotonic() - t0
        size_mb = sum(len(p) for p in payloads) / 1e6
        last = first + n_burst - 1
        t1 = time.monotonic()
        while last not in results and time.monotonic() - t1 < 600:
            peak = max(peak, memory(monitor.pid)[0])
            time.sleep(0.5)
        drained_s = time.monotonic() - t1
        time.sleep(3.0)
        rss, hwm = memory(monitor.pid)
        print(
            f"burst: {n_burst} frames, {size_mb:.0f} MB, published in {burst_s:.1f} s; drained {drained_s:.0f} s "
            f"later; handled {len(results)}, the newest handled: {last in results}; RSS {before_rss:.0f} MB before, "
            f"peak {max(peak, hwm):.0f} MB, {rss:.0f} MB after ({rss / base_rss:.2f}x the baseline); "
            f"frames_dropped events: {events.count('frames_dropped')}"
        )


if __name__ == "__main__":
    sys.exit(main())
