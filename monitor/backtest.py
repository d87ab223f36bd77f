"""``layerwatch backtest``: replay many builds as tasks of Dask distributed, to test a model or policy on every
build a site or lab ever recorded.

Each task is an ordinary replay (``monitor.replay``: the same monitor, policy and virtual printer as
``layerwatch replay``), so a build's decisions are the same as when it is replayed alone. The tasks run on a
``LocalCluster`` of ``workers`` processes (one thread each; the model's own threads share the cores), or on
an existing cluster (``scheduler``: its address). Each build gives ``OUT/<name>-replay.h5``; ``OUT/summary.csv``
has a row per build: layers, first pause, pauses, and where the build has ground truth (a simulated or
labelled file), the layer where a defect that the pausing rules watch appears (warping, by default), the layers
to detect it and the pauses before it (false).
"""

from __future__ import annotations

import csv
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["SUMMARY_FIELDS", "backtest", "replay_task"]

log = logging.getLogger(__name__)

SUMMARY_FIELDS = (
    "build", "layers", "first_pause", "pauses", "defect_onset", "time_to_detect", "false_pauses", "seconds",
    "record", "error",
)  # fmt: skip


def replay_task(
    source: str, out: str, model: str | None, policy: str | None, models_dir: str, threads: int | None
) -> dict[str, Any]:
    """One build's replay and what it decided (runs in a worker; plain values in, plain values out)."""
    import h5py

    from monitor.compare import ONSET_PX
    from monitor.record import class_sources, layer_class
    from monitor.replay import ReplayError, ReplayOptions, run_replay

    name = Path(source).stem
    row: dict[str, Any] = {"build": name, "record": out}
    t0 = time.monotonic()
    try:
        opts = ReplayOptions(
            source=Path(source), out=Path(out), model=Path(model) if model else None,
            policy=Path(policy) if policy else None, models_dir=Path(models_dir), progress=False, threads=threads,
        )  # fmt: skip
        result = run_replay(opts)
    except (ReplayError, OSError, ValueError) as err:
        return {**row, "error": str(err)[:500], "seconds": round(time.monotonic() - t0, 2)}
    pauses = sorted({int(a.layer) for a in result.actions
                     if a.action == "pause" and a.state.value == "requested" and a.layer is not None})  # fmt: skip
    row |= {"layers": result.layers, "first_pause": pauses[0] if pauses else "", "pauses": len(pauses)}
    try:
        watched = _paused_classes(Path(out))
        with h5py.File(source, "r") as f:
            truth = f.attrs.get("layerwatch/ground_truth") or f.attrs.get("layerwatch/schema_version") is None
            if truth and "slices/segmentation_results" in f and watched:
                onset = _onset(f, watched, class_sources, layer_class, ONSET_PX)
                row["defect_onset"] = "" if onset is None else onset
                row["false_pauses"] = sum(p < onset for p in pauses) if onset is not None else len(pauses)
                first_after = next((p for p in pauses if onset is not None and p >= onset), None)
                row["time_to_detect"] = "" if first_after is None or onset is None else first_after - onset
    except (OSError, KeyError, ValueError) as err:
        row["error"] = f"ground truth unreadable: {err}"[:500]
    row["seconds"] = round(time.monotonic() - t0, 2)
    return row


def _paused_classes(record: Path) -> list[int]:
    """The defect classes the policy's pausing rules watch (in the replay's record): warping, by default."""
    from monitor.policy import watched_class
    from monitor.record import RecordReader

    with RecordReader(record) as r:
        rules = (r.json_attr("policy") or {}).get("rules", [])
    classes = {watched_class(str(rule.get("metric", ""))) for rule in rules
               if any(a.get("type") == "pause" for a in rule.get("actions", []))}  # fmt: skip
    return sorted(int(c) for c in classes if c is not None)


def _onset(
    f: Any, classes: list[int], class_sources: Callable[..., Any], layer_class: Callable[..., Any], min_px: int
) -> int | None:
    """The first layer where the truth has ``min_px`` pixels of one of ``classes`` (where a pause is right)."""
    n = f["slices/segmentation_results"][next(iter(f["slices/segmentation_results"]))].shape[0]
    sources = class_sources(f)
    for k in range(n):
        for c in classes:
            if sources.get(c) and int(layer_class(f, c, k).sum()) >= min_px:
                return k
    return None


def backtest(
    builds: list[Path],
    out: Path,
    *,
    workers: int = 2,
    scheduler: str | None = None,
    model: Path | None = None,
    policy: Path | None = None,
    models_dir: Path = Path("models"),
    progress: bool = True,
    echo: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """Replay every build as a Dask task; returns the summary rows (also written to ``out/summary.csv``)."""
    from dask.distributed import Client, LocalCluster, as_completed
    from tqdm import tqdm

    out.mkdir(parents=True, exist_ok=True)
    names = [b.stem for b in builds]
    if len(set(names)) != len(names):
        raise ValueError("two builds have the same name; their replays would overwrite each other")
    cluster = None
    if scheduler is None:
        cluster = LocalCluster(
            n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None, silence_logs=logging.ERROR
        )
    threads = max(1, (os.cpu_count() or 1) // workers) if scheduler is None else None
    t0 = time.monotonic()
    rows: list[dict[str, Any]] = []
    with Client(scheduler or cluster) as client:
        echo(f"backtest: {len(builds)} build(s) on {len(client.scheduler_info()['workers'])} worker(s)")
        shared = (
            str(model.resolve()) if model else None,
            str(policy.resolve()) if policy else None,
            str(models_dir.resolve()),
            threads,
        )
        futures = [
            client.submit(
                replay_task,
                str(b.resolve()),
                str((out / f"{b.stem}-replay.h5").resolve()),
                *shared,
                key=f"replay-{b.stem}-{time.time_ns()}",
                pure=False,
            )
            for b in builds
        ]
        bar = tqdm(as_completed(futures), total=len(futures), desc="backtest", unit="build", disable=not progress)
        for future in bar:
            try:
                rows.append(future.result())
            except Exception as err:  # a worker lost mid-task: that build's row says so, the rest go on
                rows.append({"build": "?", "error": f"task failed: {err}"[:500]})
    if cluster is not None:
        cluster.close()
    rows.sort(key=lambda r: str(r.get("build")))
    with (out / "summary.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=SUMMARY_FIELDS, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: row.get(k, "") for k in SUMMARY_FIELDS})
    minutes = (time.monotonic() - t0) / 60
    echo(f"backtest: {len(rows)} build(s) in {minutes:.1f} min ({len(rows) / max(minutes, 1e-9):.1f} builds/min); "
         f"{out / 'summary.csv'}")  # fmt: skip
    return rows
