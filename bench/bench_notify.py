"""Notification latency: from the monitor's decision to the webhook receiver, through the notifier (its
queue and worker, Apprise's json:// service, the evidence image attached).

A local HTTP receiver notes when each POST arrives; each trial submits one notice (a pause with a 512x512
evidence PNG) and times decision -> arrival. Baseline in the same run: the same JSON body (the image
base64-encoded as Apprise sends it) POSTed directly with httpx.

    .venv/bin/python bench/bench_notify.py [--trials 30]
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import httpx
from peers import WebhookReceiver

from bench._common import machine, median_p95


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=30)
    args = ap.parse_args()
    import os

    from monitor.config import NotificationRoute, NotificationsSection
    from monitor.notify import Notice, Notifier, evidence_png
    from printer_io.messages import ActionMessage
    from printer_io.vocabulary import ActionKind, ActionState, Severity
    from segmentation.simulator import SimBuild, scenario_spec

    spec = scenario_spec(3, 512, 8, warp_start=2)
    layer = SimBuild(3, 512, 512, 8, spec=spec).layer(6)
    png = evidence_png(layer.image, layer.mask)
    rx = WebhookReceiver()
    os.environ["LW_BENCH_NOTIFY"] = f"json://127.0.0.1:{rx.port}/hook"
    section = NotificationsSection(routes=(NotificationRoute(urls_env="LW_BENCH_NOTIFY"),))
    notifier = Notifier(section, None)
    notified = []
    for i in range(args.trials):
        action = ActionMessage(
            printer="bench", action=ActionKind.PAUSE, state=ActionState.REQUESTED, request_id=f"b{i}", layer=6,
            rule="warping-persists", severity=Severity.CRITICAL, reason="more than 1 mm² of confirmed warping",
        )  # fmt: skip
        t = time.time()
        notifier.submit(Notice("bench", action, png, "job.h5", t))
        notified.append(rx.wait(i + 1)[i][0] - t)
    notifier.close()
    body = json.dumps({
        "version": "1.0", "title": "LayerWatch bench: pause at layer 6", "message": "more than 1 mm²",
        "type": "failure",
        "attachments": [{"filename": "e.png", "base64": base64.b64encode(png).decode(), "mimetype": "image/png"}],
    })  # fmt: skip
    direct = []
    with httpx.Client() as client:
        for i in range(args.trials):
            t = time.time()
            client.post(f"http://127.0.0.1:{rx.port}/hook", content=body, headers={"Content-Type": "application/json"})
            direct.append(rx.wait(args.trials + i + 1)[args.trials + i][0] - t)
    rx.close()
    (nm, np95), (dm, dp95) = median_p95(notified), median_p95(direct)
    print(f"machine: {machine()}")
    print(f"evidence PNG {len(png) / 1e3:.0f} kB; {args.trials} notices")
    print(f"decision -> webhook through the notifier: median {1000 * nm:.0f} ms, p95 {1000 * np95:.0f} ms")
    print(f"baseline, the same body POSTed directly: median {1000 * dm:.0f} ms, p95 {1000 * dp95:.0f} ms; "
          f"ratio {nm / dm:.1f}x")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
