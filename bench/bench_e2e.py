"""End-to-end latency per layer: frame published -> result published, and -> pause acknowledged by the printer.

Runs the real pieces on this machine: Mosquitto (loopback), the monitor (ONNX Runtime, default policy,
record with gzip 1), and OctoPrint's Virtual Printer from ``.peers/octoprint`` (``make peers``; without it
the embedded virtual printer stands in and the script says so). Each trial prints a job, publishes the
frames of a simulated build whose warping starts at layer 4 one by one (an interval longer than a layer
takes, as on a printer), and times, for every layer, frame publish to result receipt, and for the layer
that pauses, frame publish to OctoPrint's ``Pausing`` (acknowledged). Baseline in the same run: the
segmentation call alone on the same frames.

    .venv/bin/python bench/bench_e2e.py [--trials 3] [--sizes 512,1024]
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from gcode import make_gcode
from peers import PEERS, Mosquitto, OctoPrint

from bench._common import machine, median_p95, timeit
from monitor.config import Config, MonitorSection, PrinterSection
from monitor.service import MonitorService
from printer_io.frames import QualityChecker, encode_image
from printer_io.messages import ActionMessage, FrameMeta, ResultMessage, encode_frame
from printer_io.mqtt import MqttConfig, MqttLink
from printer_io.octoprint import OctoPrintPrinter
from printer_io.printer import Printer, PrinterState
from printer_io.topics import Topics
from printer_io.virtual import VirtualPrinter
from segmentation.inference import Segmenter
from segmentation.simulator import SimBuild, scenario_spec

LAYERS, WARP = 11, 4


def wait_state(p: Printer, state: PrinterState, timeout: float = 30) -> None:
    end = time.monotonic() + timeout
    while p.status().state != state and time.monotonic() < end:
        time.sleep(0.05)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--sizes", default="512,1024")
    args = ap.parse_args()
    print(f"machine: {machine()}")
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "mq").mkdir()
        broker = Mosquitto(Path(tmp) / "mq").start()
        octo_server = None
        if (PEERS / "octoprint" / "bin" / "octoprint").exists():
            (Path(tmp) / "op").mkdir()
            octo_server = OctoPrint(Path(tmp) / "op").start()
            key = Path(tmp) / "key"
            key.write_text(octo_server.api_key)
            key.chmod(0o600)
            print("printer: OctoPrint 1.11.8 Virtual Printer")
        else:
            print("printer: embedded virtual printer (OctoPrint not installed: make peers)")
        try:
            for size in (int(s) for s in args.sizes.split(",")):
                bench_size(size, args.trials, broker, octo_server, Path(tmp))
        finally:
            if octo_server is not None:
                octo_server.stop()
            broker.stop()
    return 0


def bench_size(size: int, trials: int, broker: Mosquitto, octo: OctoPrint | None, tmp: Path) -> None:
    spec = scenario_spec(3, size, LAYERS, warp_start=WARP)
    build = SimBuild(3, size, size, LAYERS, spec=spec)
    images = [build.layer(k).image for k in range(LAYERS)]
    with Segmenter() as seg:
        base = timeit(lambda: seg.segment(images[WARP + 2]), 10)
    pid = f"bench-{size}"
    topics = Topics("layerwatch", pid)
    printer: Printer
    if octo is not None:
        printer = OctoPrintPrinter(pid, url=octo.url, api_key=octo.api_key, connect_port="VIRTUAL").start()
        section = PrinterSection(backend="octoprint", options={"url": octo.url, "api_key_file": tmp / "key"})
    else:
        printer = VirtualPrinter(pid, layers=10_000, layer_time_s=1.0).start()
        section = PrinterSection(backend="virtual")
    results: dict[int, float] = {}
    actions: list[ActionMessage] = []
    cond = threading.Condition()

    def on_result(topic: str, payload: bytes) -> None:
        r = ResultMessage.from_json(payload, topic)
        with cond:
            results[r.layer] = time.time()
            cond.notify_all()

    def on_action(topic: str, payload: bytes) -> None:
        with cond:
            actions.append(ActionMessage.from_json(payload, topic))
            cond.notify_all()

    observer = MqttLink(MqttConfig(url=broker.url), service="bench-observer", topics=topics)
    observer.subscribe(topics.result, on_result)
    observer.subscribe(topics.action, on_action)
    camera = MqttLink(MqttConfig(url=broker.url), service="camera", topics=topics)
    to_result: list[float] = []
    to_ack: list[float] = []
    interval = 0.6 if size <= 512 else 1.2
    with observer.start(), camera.start():
        for trial in range(trials):
            config = Config(
                mqtt=MqttConfig(url=broker.url),
                monitor=MonitorSection(out_dir=tmp / f"rec{size}-{trial}", mm_per_px=spec.mm_per_px),
                printers={pid: section},
            )
            if isinstance(printer, OctoPrintPrinter):
                assert printer.client is not None
                wait_state(printer, PrinterState.IDLE)
                printer.client.upload("bench.gcode", make_gcode(400), select=True, print_=True)
            else:
                printer.start_job("bench")
            wait_state(printer, PrinterState.PRINTING)
            results.clear()
            actions.clear()
            quality = QualityChecker()
            with MonitorService(config, printers={pid: printer}).start():
                for k, image in enumerate(images):
                    meta = FrameMeta(
                        printer=pid,
                        job_id=f"bench-{trial}",
                        layer=k,
                        z_mm=0.04 * (k + 1),
                        captured_at=time.time(),
                        encoding="png",
                        width=size,
                        height=size,
                        channels=1,
                        bit_depth=8,
                        quality=quality.check(image),
                    )
                    payload = encode_frame(meta, encode_image(image))
                    t_pub = time.time()
                    camera.publish(topics.image, payload)
                    with cond:
                        cond.wait_for(lambda k=k: k in results, 30)  # type: ignore[misc]
                    to_result.append(results[k] - t_pub)
                    with cond:
                        req = next((a for a in actions if a.action == "pause" and a.state.value == "requested"), None)
                        if req is not None and req.layer == k:
                            cond.wait_for(lambda: any(a.state.value == "confirmed" for a in actions), 30)
                            done = next(a for a in actions if a.action == "pause" and a.state.value == "confirmed")
                            ack = re.search(r"acknowledged after (\d+) ms", done.detail)
                            ack_s = int(ack.group(1)) / 1000 if ack else 0.0
                            to_ack.append(req.time - t_pub + ack_s)
                    time.sleep(max(0.0, interval - (time.time() - t_pub)))
            if printer.status().state in (PrinterState.PAUSED, PrinterState.PRINTING, PrinterState.PAUSING):
                printer.cancel()
            wait_state(printer, PrinterState.IDLE if isinstance(printer, OctoPrintPrinter) else PrinterState.CANCELLED)
    printer.close()
    b_med, b_p95 = median_p95(base)
    r_med, r_p95 = median_p95(to_result)
    print(f"{size}x{size}: segmentation alone (baseline) median {b_med * 1e3:.0f} ms p95 {b_p95 * 1e3:.0f} ms")
    print(
        f"{size}x{size}: frame published -> result published: median {r_med * 1e3:.0f} ms p95 {r_p95 * 1e3:.0f} ms "
        f"({r_med / b_med:.2f}x the baseline), n={len(to_result)}"
    )
    if to_ack:
        a_med, a_p95 = median_p95(to_ack)
        print(
            f"{size}x{size}: frame published -> pause acknowledged by the printer: median {a_med * 1e3:.0f} ms "
            f"p95 {a_p95 * 1e3:.0f} ms, n={len(to_ack)} (pause at layer {WARP + 3} in every trial)"
        )
    else:
        print(f"{size}x{size}: no pause happened")


if __name__ == "__main__":
    sys.exit(main())
