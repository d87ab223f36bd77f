"""The walk of one frame through the monitor: which product modules a steady-state layer's handling enters, in
order, and how often each is entered from another module (a call from module A into module B counts once for B;
calls inside a module are not counted). The layer is one of a simulated build on the in-process bus (virtual
printer, default policy, record written), after 4 layers to warm up.

    .venv/bin/python bench/trace_layer.py [--tree PATH]     (PATH: another checkout, e.g. a baseline worktree)
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from types import FrameType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PRODUCT = ("monitor", "segmentation", "printer_io", "dashboards")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tree", type=Path, default=ROOT)
    args = ap.parse_args()
    tree = args.tree.resolve()
    sys.path.insert(0, str(tree))
    from monitor.config import Config, MonitorSection, PrinterSection
    from monitor.service import MonitorService
    from printer_io.bus import MessageBus
    from printer_io.frames import encode_image
    from printer_io.messages import FrameMeta, LayerEvent, ResultMessage, encode_frame
    from printer_io.topics import Topics
    from printer_io.virtual import VirtualPrinter
    from segmentation.simulator import SimBuild, scenario_spec

    def module_of(frame: FrameType) -> str | None:
        path = Path(frame.f_code.co_filename)
        try:
            rel = path.resolve().relative_to(tree)
        except ValueError:
            return None
        return str(rel) if rel.parts[0] in PRODUCT else None

    entries: Counter[str] = Counter()
    walk: list[str] = []
    tracing = threading.Event()

    def profile(frame: FrameType, event: str, arg: Any) -> None:
        if event != "call" or not tracing.is_set() or threading.current_thread().name == "monitor-watch":
            return  # the service's watcher (the model store, the printer's state) is no layer's path
        here = module_of(frame)
        caller = frame.f_back
        there = module_of(caller) if caller is not None else None
        if here is not None and here != there:
            entries[here] += 1
            if not walk or walk[-1] != here:
                walk.append(here)

    pid, job = "p1", "traced"
    spec = scenario_spec(3, 256, 8, warp_start=None)
    build = SimBuild(3, 256, 256, 8, spec=spec)
    with tempfile.TemporaryDirectory() as tmp:
        config = Config(
            monitor=MonitorSection(out_dir=Path(tmp) / "r", models_dir=Path(tmp) / "m", mm_per_px=spec.mm_per_px,
                                   layer_thickness_mm=spec.layer_thickness),
            printers={pid: PrinterSection(backend="virtual")},
        )  # fmt: skip
        bus, topics = MessageBus(), Topics("layerwatch", pid)
        printer = VirtualPrinter(pid, layers=8, realtime=False).start()
        printer.start_job(job, layers=8)
        threading.setprofile(profile)  # before the monitor's threads start: they take it when they do
        monitor = MonitorService(config, printers={pid: printer}, bus=bus).start()
        bridge, watch = bus.link(service="bridge", topics=topics), bus.link(service="watch", topics=topics)
        got: set[int] = set()
        cond = threading.Condition()

        def on_result(topic: str, payload: bytes) -> None:
            with cond:
                got.add(ResultMessage.from_json(payload, topic).layer)
                cond.notify_all()

        watch.subscribe(topics.result, on_result)
        watch.start()
        bridge.start()
        try:
            for k in range(5):
                meta = FrameMeta(
                    printer=pid, job_id=job, layer=k, z_mm=0.04 * (k + 1), captured_at=time.time(), encoding="png",
                    width=256, height=256, channels=1, bit_depth=8,
                )  # fmt: skip
                event = LayerEvent(printer=pid, job_id=job, layer=k, z_mm=0.04 * (k + 1)).to_json()
                payload = encode_frame(meta, encode_image(build.layer(k).image))
                bridge.publish(topics.layer, event)
                time.sleep(0.2)  # the layer event handled before the frame is traced
                if k == 4:
                    tracing.set()
                bridge.publish(topics.image, payload)
                with cond:
                    cond.wait_for(lambda k=k: k in got, 60)  # type: ignore[misc]
                time.sleep(0.3)  # the observers after the result
                tracing.clear()
        finally:
            threading.setprofile(None)
            for closer in (bridge, watch, monitor, printer):
                closer.close()
    mine = {m: n for m, n in entries.items() if m.startswith("monitor/")}
    print(f"tree {tree}: one layer's frame (layer 4) entered {sum(entries.values())} times into product modules")
    print("monitor modules, in order of first entry, with their entries:")
    for m in dict.fromkeys(walk):
        if m in mine:
            print(f"  {m:32s} {mine[m]:3d}")
    print("walk (consecutive repeats collapsed): " + " > ".join(m.removesuffix(".py") for m in walk))
    return 0


if __name__ == "__main__":
    sys.exit(main())
