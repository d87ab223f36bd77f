"""The farm view with many printers: from a layer stored in one printer's record to its row on the page.

``--printers`` records (512x512 layers, written live the way the monitor writes them) under one records
folder, the dashboard serving it, headless Chromium (Debian's, via Playwright) on its first page. Each
trial stores a new layer in a random printer's record and times until that printer's row shows it. The
baseline in the same run is the same with one printer. The farm refreshes every 2 s, so about 1 s is
the expected wait; what the printers add on top is the cost.

    .venv/bin/python bench/bench_farm.py [--printers 20] [--trials 12]
"""

from __future__ import annotations

import argparse
import logging
import random
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from peers import free_port, launch_chromium

from bench._common import machine, median_p95, open_simulated_record


def _measure(printers: int, trials: int, root: Path) -> tuple[list[float], float]:
    """Seconds from a stored layer to its row, per trial; and the server time of one farm refresh after one
    printer stored a layer."""
    from playwright.sync_api import sync_playwright
    from werkzeug.serving import make_server

    from dashboards.app import DashboardOptions, close_app, create_app

    records = root / f"farm-{printers}"
    writers = []
    for i in range(printers):
        path = records / f"printer-{i:02d}" / "job.h5"
        path.parent.mkdir(parents=True)
        rec, append = open_simulated_record(path, 512)
        append(0)
        writers.append((rec, append, [0]))
    app = create_app(DashboardOptions(records=records))
    port = free_port()
    server = make_server("127.0.0.1", port, app.server, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    from dashboards.state import Records

    reader = Records(DashboardOptions(records=records))
    reader.farm(None)  # the first look reads every record
    _, append0, last0 = writers[0]
    last0[0] += 1
    append0(last0[0])  # then one printer stores a layer: a refresh reads that record only
    t = time.perf_counter()
    reader.farm(None)
    refresh_s = time.perf_counter() - t
    reader.close()
    out = []
    try:
        with sync_playwright() as p:
            browser = launch_chromium(p)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"http://127.0.0.1:{port}/")
            page.wait_for_selector(f"#farm-printer-{printers - 1:02d}", timeout=60_000)
            rng = random.Random(1)
            for _ in range(trials):
                i = rng.randrange(printers)
                rec, append, last = writers[i]
                last[0] += 1
                t = time.perf_counter()
                append(last[0])
                row = f"#farm-printer-{i:02d} td:nth-child(4)"
                page.wait_for_function(
                    "([sel, want]) => { const c = document.querySelector(sel); return c && c.textContent === want; }",
                    arg=[row, str(last[0])],
                    timeout=60_000,
                )
                out.append(time.perf_counter() - t)
                time.sleep(rng.uniform(0, 2))  # the next layer at any moment of the refresh cycle
            browser.close()
    finally:
        server.shutdown()
        close_app(app)
        for rec, _, _ in writers:
            rec.close()
    return out, refresh_s


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--printers", type=int, default=20)
    ap.add_argument("--trials", type=int, default=12)
    args = ap.parse_args()
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    print(f"machine: {machine()}")
    with tempfile.TemporaryDirectory() as tmp:
        base, base_refresh = _measure(1, args.trials, Path(tmp))
        many, many_refresh = _measure(args.printers, args.trials, Path(tmp))
    (bm, bp), (mm, mp) = median_p95(base), median_p95(many)
    print(
        f"1 printer: stored -> row shown median {bm:.2f} s, p95 {bp:.2f} s; "
        f"one farm refresh {1000 * base_refresh:.0f} ms"
    )
    print(
        f"{args.printers} printers: median {mm:.2f} s, p95 {mp:.2f} s; one farm refresh {1000 * many_refresh:.0f} ms; "
        f"ratio {mm / bm:.2f}x"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
