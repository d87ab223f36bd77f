"""A live record is read while it is written, at the size and length of a real build.

A writer appends 100 layers of 1024x1024 frames with an action, an event and telemetry on every layer
(the actions from a second thread, as the monitor's controller writes them); in another process, a
long-lived reader (the dashboard's way: open once, refresh, read) and a fresh reader every round read
every table and the newest layer's frame and mask, as fast as they can. No read may fail.
"""

from __future__ import annotations

import multiprocessing as mp
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from monitor.record import BuildRecord, RecordReader, RecordSpec, action_boxes

pytestmark = [pytest.mark.integration, pytest.mark.slow]
LAYERS, SIZE = 100, 1024
TABLES = ("events", "actions", "feedback", "telemetry")


def _read_all(r: RecordReader) -> int:
    for name in TABLES:
        r.table(name)
    r.metrics()
    r.part_metrics()
    stored = r.stored_layers()
    if len(stored):
        last = int(stored.max())
        r.image(last)
        r.mask(last)
        action_boxes(r.table_at("actions", last), layer=last)  # the dashboard's evidence of the layer shown
    return len(stored)


def _reader(path: str, stop: Any, out: Any) -> None:
    reads = failures = fresh_reads = 0
    errors: set[str] = set()
    long_lived: RecordReader | None = None
    while not Path(path).exists():
        time.sleep(0.01)
    while not stop.is_set():
        try:
            if long_lived is None:
                long_lived = RecordReader(Path(path))
            else:
                long_lived.refresh()
            _read_all(long_lived)
            reads += 1
        except Exception as err:  # every failure is counted, whatever its type
            failures += 1
            errors.add(f"long-lived: {type(err).__name__}: {err}"[:200])
        try:
            with RecordReader(Path(path)) as fresh:
                _read_all(fresh)
            fresh_reads += 1
        except Exception as err:
            failures += 1
            errors.add(f"fresh: {type(err).__name__}: {err}"[:200])
    seen = 0
    try:
        seen = _read_all(long_lived) if long_lived is not None else 0
    except Exception as err:
        failures += 1
        errors.add(f"last read: {type(err).__name__}: {err}"[:200])
    out.put({"reads": reads, "fresh_reads": fresh_reads, "failures": failures, "errors": sorted(errors), "seen": seen})


def test_readers_never_fail_on_a_live_record_with_actions_and_events_on_every_layer(tmp_path: Path) -> None:
    path = tmp_path / "live.h5"
    metric_names = tuple(f"m{i}" for i in range(30))
    spec = RecordSpec(
        printer="p1", job_id="long-job", height=SIZE, width=SIZE, dtype="uint8", mm_per_px=0.05,
        layer_thickness_mm=0.04, class_names=("powder", "part", "porosity", "spatter", "warping"),
        metric_names=metric_names, part_metric_names=("area_mm2",), config={}, policy={"rules": []},
        model={"id": "m"}, software_version="test",
    )  # fmt: skip
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 255, (SIZE, SIZE), dtype=np.uint8) for _ in range(4)]
    masks = [rng.integers(0, 5, (SIZE, SIZE), dtype=np.uint8) for _ in range(4)]
    ctx = mp.get_context("spawn")
    stop, out = ctx.Event(), ctx.Queue()
    reader = ctx.Process(target=_reader, args=(str(path), stop, out))
    reader.start()
    lock = threading.Lock()
    with BuildRecord.create(path, spec) as rec:
        for k in range(LAYERS):
            with lock:
                rec.append_layer(
                    k, z_mm=0.04 * (k + 1), image=frames[k % 4], mask=masks[k % 4], part_ids=None,
                    metrics={n: k * 0.1 for n in metric_names}, part_metrics=[{"layer": k, "part_id": 1}],
                )  # fmt: skip
                rec.add_event(k, "warning", "incident", f"layer {k}: " + "a long reason with words " * 20)
                rec.add_telemetry(k, "printing", 0.04 * (k + 1), 100.0, 100.0)

            def act(k: int = k) -> None:  # the controller's thread
                with lock:
                    detail = {
                        "reason": "warping grows",
                        "metrics": {n: k * 0.1 for n in metric_names},
                        "where": [[k, k, 10, 10]],
                    }
                    rec.add_action(k, f"long-job:{k}:rule:pause", "pause", "requested", "rule", f"inc-{k}", detail)
                    rec.add_feedback(f"inc-{k}", "false_alarm", "ana", "ünïcode note ✓ " * 3)

            t = threading.Thread(target=act)
            t.start()
            t.join()
        time.sleep(0.5)
        stop.set()
        result = out.get(timeout=120)
    reader.join(60)
    print(f"long-lived reads {result['reads']}, fresh reads {result['fresh_reads']}, failures {result['failures']}")
    assert result["failures"] == 0, result["errors"]
    assert result["reads"] >= 20 and result["fresh_reads"] >= 20, result
    assert result["seen"] == LAYERS
    with RecordReader(path) as r:
        actions = r.table("actions")
        assert len(actions) == LAYERS and actions[-1]["incident"] == f"inc-{LAYERS - 1}"
        last = LAYERS - 1
        assert action_boxes(r.table_at("actions", last), layer=last) == [(last, last, 10, 10)]
        assert r.table("feedback")[0]["note"].startswith("ünïcode note ✓")
        assert len(r.table("events")) == LAYERS
