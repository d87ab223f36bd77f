"""Crafted HDF5 files against every command that opens a record (docs/security.md F13: 22 of 68 runs of `record
info|check`, `report`, `replay` on small crafted files ended in a traceback; three tried to allocate 9-65 GB
from a 2.5 KB file). Each run here has 3 GB of address space: an unbounded allocation fails the test."""

from __future__ import annotations

import resource
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hostile import crafted_records

from monitor.record import BuildRecord, RecordSpec

pytestmark = [pytest.mark.integration, pytest.mark.slow]
LAYERWATCH = str(Path(sys.executable).parent / "layerwatch")


def _limit() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))


def test_crafted_records_get_one_line_and_bounded_memory_from_every_command(tmp_path: Path) -> None:
    spec = RecordSpec(
        printer="p", job_id="j", height=8, width=8, dtype="uint8", mm_per_px=0.1, layer_thickness_mm=0.04,
        class_names=("powder", "part", "porosity", "spatter", "warping"), metric_names=("m",), part_metric_names=(),
        config={}, policy={"rules": []}, model={"id": "m"}, software_version="t",
    )  # fmt: skip
    base = tmp_path / "base.h5"
    with BuildRecord.create(base, spec) as r:
        for k in range(2):
            zeros = np.zeros((8, 8), np.uint8)
            r.append_layer(k, z_mm=0.04, image=zeros, mask=zeros, part_ids=None, metrics={"m": 1.0})
    made = crafted_records(base, tmp_path)
    assert len(made) >= 18 and all(p.stat().st_size < 100_000 for p in made.values())
    failures, runs = [], 0
    for name, path in made.items():
        for command in (["record", "info"], ["record", "check"], ["report"], ["replay"]):
            out = {
                "report": ["--out", str(tmp_path / f"{name}-report")],
                "replay": ["--out", str(tmp_path / f"{name}-r.h5")],
            }
            args = [LAYERWATCH, *command, str(path), *out.get(command[0], [])]
            done = subprocess.run(args, capture_output=True, text=True, preexec_fn=_limit, timeout=120)
            runs += 1
            lines = done.stderr.strip().splitlines()
            refused = done.returncode in (1, 2) and len(lines) == 1 and str(path) in lines[0]
            fine = done.returncode == 0 and "Traceback" not in done.stderr
            if not (refused or fine) or "Traceback" in done.stderr or "MemoryError" in done.stderr:
                failures.append(
                    f"{name} {' '.join(command)}: exit {done.returncode}: {lines[-1:] or done.stdout[-200:]}"
                )
    assert failures == [], f"{len(failures)} of {runs} runs:\n" + "\n".join(failures)
