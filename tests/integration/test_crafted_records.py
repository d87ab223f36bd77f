"""Crafted HDF5 files against every command that opens a record (docs/security.md F13: 22 of 68 runs of `record
info|check`, `report`, `replay` on small crafted files ended in a traceback; three tried to allocate 9-65 GB
from a 2.5 KB file). Each run here has 3 GB of address space: an unbounded allocation fails the test. Records
that point outside themselves (external links, external raw storage, virtual datasets) are refused by every
command and the dashboard without opening what they point to: each run is traced (strace), and the file outside
must never be opened (issue 31)."""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from hostile import crafted_records, outside_records
from peers import free_port, launch_chromium, require, wait_port

from monitor.record import BuildRecord, RecordSpec

pytestmark = [pytest.mark.integration, pytest.mark.slow]
LAYERWATCH = str(Path(sys.executable).parent / "layerwatch")


def _limit() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))


def _base(tmp_path: Path) -> Path:
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
    return base


def test_crafted_records_get_one_line_and_bounded_memory_from_every_command(tmp_path: Path) -> None:
    base = _base(tmp_path)
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


def _opened(trace: Path, outside: list[Path]) -> list[str]:
    """The lines of an strace log that open one of ``outside``."""
    text = trace.read_text(errors="replace") if trace.exists() else ""
    return [line for line in text.splitlines() if any(str(p) in line for p in outside)]


def test_nothing_a_record_points_to_outside_itself_is_opened(tmp_path: Path) -> None:
    strace = shutil.which("strace")
    if strace is None:
        require("strace", "apt-get install strace (make test does it)")
    outside_dir = tmp_path / "outside"
    outside_dir.mkdir()
    sentinel = outside_dir / "sentinel.h5"
    records = tmp_path / "records"
    records.mkdir()
    made = outside_records(_base(tmp_path), records, sentinel)
    outside = [sentinel, sentinel.with_suffix(".raw")]
    assert len(made) == 4
    failures: list[str] = []
    for name, path in made.items():
        for command in (["record", "info"], ["record", "check"], ["report"], ["replay"]):
            out = {"report": ["--out", str(tmp_path / f"{name}-report")], "replay": ["--out", str(tmp_path / "r.h5")]}
            trace = tmp_path / f"{name}-{command[-1]}.trace"
            args = [strace, "-f", "-qq", "-e", "trace=open,openat,openat2", "-o", str(trace)]
            args += [LAYERWATCH, *command, str(path), *out.get(command[0], [])]
            done = subprocess.run(args, capture_output=True, text=True, preexec_fn=_limit, timeout=120)
            lines = done.stderr.strip().splitlines()
            if done.returncode not in (1, 2) or len(lines) != 1 or str(path) not in lines[0]:
                failures.append(f"{name} {' '.join(command)}: exit {done.returncode}: {lines[-1:]}")
            if _opened(trace, outside):
                failures.append(f"{name} {' '.join(command)} opened the file outside: {_opened(trace, outside)[:1]}")
    assert failures == [], "\n".join(failures)
    assert not (tmp_path / "r.h5").exists()  # replay copied nothing

    # the dashboard over a folder of them and of a record declaring 400 frames of 8000x8000, one printer each,
    # traced, with 3 GB of address space
    (tmp_path / "more").mkdir()
    made["declared-huge-stack"] = crafted_records(_base(tmp_path / "more"), tmp_path / "more")["declared-huge-stack"]
    for name, path in made.items():
        (records / name).mkdir()
        path.rename(records / name / path.name)
    port = free_port()
    trace = tmp_path / "dashboard.trace"
    log = (tmp_path / "dashboard.log").open("w")
    args = [strace, "-f", "-qq", "-e", "trace=open,openat,openat2", "-o", str(trace), LAYERWATCH, "dashboard"]
    server = subprocess.Popen(
        [*args, "--records", str(records), "--port", str(port)], stdout=log, stderr=subprocess.STDOUT,
        preexec_fn=_limit, start_new_session=True,
    )  # fmt: skip
    try:
        wait_port(port, 60, None, tmp_path / "dashboard.log")
        from playwright.sync_api import sync_playwright

        with sync_playwright() as p:
            browser = launch_chromium(p)
            page = browser.new_page()
            page.goto(f"http://127.0.0.1:{port}/")
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and not all(n in page.inner_text("#farm") for n in made):
                time.sleep(0.2)
            farm = page.inner_text("#farm")
            browser.close()
        assert all(name in farm for name in made), farm
        assert farm.count("cannot be read") == len(made), farm
        assert server.poll() is None  # still serving
    finally:
        os.killpg(server.pid, 15)
        server.wait(30)
        log.close()
    assert _opened(trace, outside) == [], _opened(trace, outside)[:3]
    assert "Traceback" not in (tmp_path / "dashboard.log").read_text()
