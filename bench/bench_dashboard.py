"""Dashboard on a 1000-layer 1024x1024 record: server time of a layer change, and result -> layer shown.

Writes a record of ``--layers`` simulated 1024x1024 layers the way the monitor does (SWMR, gzip 1),
serves the dashboard on it, and measures

- the server-side time of the layer-change callback (frame + overlay + info), through Dash's own HTTP
  endpoint, for random layers; baseline in the same run: reading that layer's image and class mask
  from the record alone;
- in headless Chromium (Debian's, via Playwright), the time from a new layer being stored (the moment
  the monitor publishes its result) to the page showing it while following the live layer.

    .venv/bin/python bench/bench_dashboard.py [--layers 1000] [--trials 10]
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

import httpx
from peers import launch_chromium

from bench._common import machine, median_p95, open_simulated_record
from monitor.record import RecordReader

SIZE = 1024


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=1000)
    ap.add_argument("--trials", type=int, default=10)
    args = ap.parse_args()
    print(f"machine: {machine()}")
    from werkzeug.serving import make_server

    logging.getLogger("werkzeug").setLevel(logging.WARNING)

    from dashboards.app import DashboardOptions, create_app

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "records" / "bench" / "big.h5"
        path.parent.mkdir(parents=True)
        rec, append = open_simulated_record(path, SIZE)
        t0 = time.monotonic()
        for k in range(args.layers):
            append(k)
        print(
            f"wrote {args.layers} layers of {SIZE}x{SIZE} in {time.monotonic() - t0:.0f} s "
            f"({path.stat().st_size / 1e9:.2f} GB)"
        )
        app = create_app(DashboardOptions(records=path.parent.parent))
        port = _free_port()
        server = make_server("127.0.0.1", port, app.server, threaded=True)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        url = f"http://127.0.0.1:{port}/"
        # server-side time of the layer-change callback, and its baseline
        body = lambda layer: {  # noqa: E731
            "output": "..frame.src...layer-info.children..",
            "outputs": [{"id": "frame", "property": "src"}, {"id": "layer-info", "property": "children"}],
            "inputs": [
                {"id": "layer", "property": "value", "value": layer},
                {"id": "classes", "property": "value", "value": [1, 2, 3, 4]},
                {"id": "opacity", "property": "value", "value": 0.55},
            ],
            "state": [{"id": "record", "property": "value", "value": str(path)}],
            "changedPropIds": ["layer.value"],
        }
        rng = random.Random(1)
        layers = [rng.randrange(args.layers) for _ in range(30)]
        with httpx.Client(timeout=30) as client:
            client.get(url)
            client.post(url + "_dash-update-component", json=body(0))
            cb = []
            for layer in layers:
                t = time.perf_counter()
                r = client.post(url + "_dash-update-component", json=body(layer))
                cb.append(time.perf_counter() - t)
                assert r.status_code == 200 and f"layer {layer}" in r.text, r.text[:200]
        reader = RecordReader(path)
        base = []
        for layer in layers:
            t = time.perf_counter()
            reader.image(layer), reader.mask(layer)
            base.append(time.perf_counter() - t)
        reader.close()
        c_med, c_p95 = median_p95(cb)
        b_med, b_p95 = median_p95(base)
        print(
            f"layer-change callback (HTTP round trip): median {c_med * 1e3:.0f} ms p95 {c_p95 * 1e3:.0f} ms "
            f"({c_med / b_med:.2f}x reading the layer alone: median {b_med * 1e3:.0f} ms p95 {b_p95 * 1e3:.0f} ms)"
        )
        shown = _live(url, append, args.layers, args.trials)
        s_med, s_p95 = median_p95(shown)
        print(
            f"layer stored (result published) -> shown in Chromium: median {s_med * 1e3:.0f} ms "
            f"p95 {s_p95 * 1e3:.0f} ms, n={len(shown)}"
        )
        server.shutdown()
        rec.close()
    return 0


def _live(url: str, append: object, start: int, trials: int) -> list[float]:
    from playwright.sync_api import sync_playwright

    out = []
    with sync_playwright() as p:
        browser = launch_chromium(p)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(url)
        page.wait_for_function(
            "document.querySelector('#layer-info') && "
            f"document.querySelector('#layer-info').innerText.includes('layer {start - 1}')",
            timeout=60_000,
        )
        for k in range(start, start + trials):
            time.sleep(1.0)
            append(k)  # type: ignore[operator]
            t = time.perf_counter()
            page.wait_for_function(
                f"document.querySelector('#layer-info').innerText.includes('layer {k} ')", timeout=30_000
            )
            out.append(time.perf_counter() - t)
        browser.close()
    return out


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


if __name__ == "__main__":
    sys.exit(main())
