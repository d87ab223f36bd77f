"""Pause latency against a real OctoPrint with its Virtual Printer: decision to ``Pausing`` and to ``Paused``.

Starts OctoPrint from ``.peers/octoprint`` (``make peers``) on a free port, prints a long test job,
and for each trial times ``OctoPrintPrinter.pause()`` from the call (the controller's decision) to
the first state poll that reports ``Pausing`` (acknowledged) and the first that reports ``Paused``
(stopped), polling every 10 ms. Baseline in the same run: one ``GET /api/printer`` round trip.

    .venv/bin/python bench/bench_pause_octoprint.py [--trials 15]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from gcode import make_gcode
from peers import OctoPrint

from bench._common import machine, median_p95, timeit
from printer_io.octoprint import OctoPrintPrinter
from printer_io.printer import PrinterState


def wait(printer: OctoPrintPrinter, state: PrinterState, timeout: float = 30) -> None:
    end = time.monotonic() + timeout
    while printer.state() != state:
        if time.monotonic() > end:
            raise RuntimeError(f"printer not {state.value} after {timeout} s")
        time.sleep(0.05)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=15)
    args = ap.parse_args()
    print(f"machine: {machine()}")
    with tempfile.TemporaryDirectory() as tmp:
        server = OctoPrint(Path(tmp))
        server.start()
        try:
            printer = OctoPrintPrinter("bench", url=server.url, api_key=server.api_key, connect_port="VIRTUAL").start()
            printer.poll_s = 0.01
            wait(printer, PrinterState.IDLE)
            assert printer.client is not None
            base = timeit(printer.client.printer, 30, warmup=3)
            ack: list[float] = []
            paused: list[float] = []
            job = make_gcode(400)
            for trial in range(args.trials):
                printer.client.upload(f"bench{trial}.gcode", job, select=True, print_=True)
                wait(printer, PrinterState.PRINTING)
                time.sleep(1.0)
                outcome = printer.pause(timeout_s=30)
                if outcome.acknowledged_s is not None:
                    ack.append(outcome.acknowledged_s)
                paused.append(outcome.paused_s)
                printer.cancel()
                wait(printer, PrinterState.IDLE)
            printer.close()
        finally:
            server.stop()
    b_med, b_p95 = median_p95(base)
    timing = f"median {b_med * 1e3:.1f} ms p95 {b_p95 * 1e3:.1f} ms"
    print(f"OctoPrint 1.11.8, Virtual Printer: GET /api/printer round trip (baseline): {timing}")
    for name, samples in (("decision -> Pausing", ack), ("decision -> Paused", paused)):
        if not samples:
            print(f"{name}: never observed (the state went straight to Paused between two polls)")
            continue
        med, p95 = median_p95(samples)
        print(
            f"{name}: median {med * 1e3:.0f} ms p95 {p95 * 1e3:.0f} ms ({med / b_med:.1f}x the baseline), "
            f"n={len(samples)} of {args.trials}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
