"""Frame transport over a loopback Mosquitto: camera publish to monitor receipt.

Starts its own Mosquitto (Debian's, as the tests do) on a free port, publishes simulated 1024x1024
frames as the camera node does (frame envelope, QoS 1) and times each from just before ``publish``
to the monitor's handler, one frame in flight at a time. Baseline in the same run: a layer event
(about 150 bytes) over the same broker and links. Also prints the encoding cost of PNG and JPEG.

    .venv/bin/python bench/bench_mqtt_transport.py [--frames 200]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from peers import Mosquitto

from bench._common import machine, median_p95, percentile, timeit
from printer_io.frames import encode_image
from printer_io.messages import FrameMeta, LayerEvent, encode_frame
from printer_io.mqtt import MqttConfig, MqttLink
from printer_io.topics import Topics
from segmentation.simulator import SimBuild


def transport(url: str, payloads: list[bytes], topics: Topics) -> list[float]:
    arrived = threading.Event()
    stamp: list[float] = [0.0]

    def on_message(topic: str, payload: bytes) -> None:
        stamp[0] = time.perf_counter()
        arrived.set()

    monitor = MqttLink(MqttConfig(url=url), service="monitor", topics=topics)
    monitor.subscribe(topics.image, on_message)
    out: list[float] = []
    with monitor.start(), MqttLink(MqttConfig(url=url), service="camera", topics=topics) as camera:
        for i, payload in enumerate(payloads):
            arrived.clear()
            t0 = time.perf_counter()
            camera.publish(topics.image, payload)
            if not arrived.wait(10):
                raise RuntimeError("a message did not arrive within 10 s")
            if i >= 3:  # warm-up
                out.append(stamp[0] - t0)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=200)
    args = ap.parse_args()
    print(f"machine: {machine()}")
    build = SimBuild(20261127, 1024, 1024, 40)
    image = build.layer(20).image
    gray = image if image.ndim == 2 else image.mean(axis=2).astype(image.dtype)
    big = SimBuild(20261128, 2048, 2048, 40).layer(20).image
    for name, frame in (("1024x1024", gray), ("2048x2048", big)):
        for enc in ("png", "jpeg"):
            med, p95 = median_p95(timeit(lambda f=frame, e=enc: encode_image(f, e), 7))  # type: ignore[misc]
            size = len(encode_image(frame, enc))
            kind = f"{frame.dtype}, {1 if frame.ndim == 2 else frame.shape[2]} channel(s)"
            timing = f"median {med * 1e3:.1f} ms p95 {p95 * 1e3:.1f} ms"
            print(f"encode {name} ({kind}) {enc}: {timing}, {size / 1e6:.2f} MB")
    meta = dict(printer="bench", job_id="bench", layer=20, z_mm=4.2, captured_at=0.0, width=1024, height=1024)
    png = encode_frame(
        FrameMeta(**meta, encoding="png", channels=1, bit_depth=8 if gray.dtype.itemsize == 1 else 16),  # type: ignore[arg-type]
        encode_image(gray, "png"),
    )
    jpeg = encode_frame(FrameMeta(**meta, encoding="jpeg", channels=1, bit_depth=8), encode_image(gray, "jpeg"))  # type: ignore[arg-type]
    event = LayerEvent(printer="bench", job_id="bench", layer=20, z_mm=4.2).to_json()
    with tempfile.TemporaryDirectory() as tmp:
        broker = Mosquitto(Path(tmp)).start()
        try:
            topics = Topics("layerwatch", "bench")
            n = args.frames + 3
            base = transport(broker.url, [event] * n, topics)
            rows = [("layer event", len(event), base)]
            rows.append(("1024x1024 PNG frame", len(png), transport(broker.url, [png] * n, topics)))
            rows.append(("1024x1024 JPEG frame", len(jpeg), transport(broker.url, [jpeg] * n, topics)))
        finally:
            broker.stop()
    base_med = median_p95(base)[0]
    for name, size, samples in rows:
        med, p95 = median_p95(samples)
        p99 = percentile(samples, 0.99)
        print(
            f"{name:22s} {size / 1e6:6.3f} MB: p50 {med * 1e3:6.2f} ms  p95 {p95 * 1e3:6.2f} ms  "
            f"p99 {p99 * 1e3:6.2f} ms  ({med / base_med:5.1f}x the layer event), n={len(samples)}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
