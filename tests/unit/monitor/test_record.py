"""The HDF5 build record: layout, out-of-order layers, readers during writing, crash safety under SIGKILL."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from monitor.record import (
    BuildRecord,
    RecordError,
    RecordReader,
    RecordSpec,
    action_boxes,
    build_records,
    check_record,
    recover,
)

CLASSES = ("powder", "part", "porosity", "spatter", "warping")
METRICS = ("porosity_fraction", "warping_area_mm2")
PART_METRICS = ("area_mm2",)


def spec(h: int = 64, w: int = 80, dtype: str = "uint8") -> RecordSpec:
    return RecordSpec(
        printer="p1", job_id="job-1", height=h, width=w, dtype=dtype, mm_per_px=0.1, layer_thickness_mm=0.04,
        class_names=CLASSES, metric_names=METRICS, part_metric_names=PART_METRICS, config={"monitor": {"a": 1}},
        policy={"rules": []}, model={"id": "m", "sha256": "abc"}, software_version="0.test",
    )  # fmt: skip


def layer_data(layer: int, h: int = 64, w: int = 80) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(layer)
    image = rng.integers(0, 255, (h, w), dtype=np.uint8)
    mask = rng.integers(0, 5, (h, w), dtype=np.uint8)
    parts = (mask == 1).astype(np.uint32) * (layer % 3 + 1)
    return image, mask, parts


def append(rec: BuildRecord, layer: int) -> None:
    image, mask, parts = layer_data(layer, rec.height, rec.width)
    rec.append_layer(
        layer, z_mm=0.04 * (layer + 1), image=image, mask=mask, part_ids=parts,
        metrics={"porosity_fraction": layer / 100}, part_metrics=[{"layer": layer, "part_id": 1, "area_mm2": 2.5}],
        captured_at=1.0, quality={"sharpness": 50.0, "blurry": False},
    )  # fmt: skip


def test_layout_attributes_and_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "b.h5"
    with BuildRecord.create(path, spec()) as rec:
        for n in range(3):
            append(rec, n)
        rec.add_event(1, "warning", "frame_quality", "blurry")
        rec.add_action(2, "r-1", "pause", "requested", "warp-grows", "inc-1", {"metric": 3.5})
        rec.add_feedback("inc-1", "false_alarm", "ana", "reflection")
        rec.add_telemetry(2, "printing", 0.12, 100.0, None)
    assert check_record(path) == []
    with h5py.File(path, "r") as f:  # stock h5py, no SWMR flag: the writer closed cleanly
        assert f["slices/camera_data/visible/0"].shape == (3, 64, 80)  # where Peregrine's readers look
        assert f["slices/sample_ids"].shape == (3, 64, 80) and f["slices/sample_ids"].dtype == np.uint32
        assert list(f["slices/segmentation_results"].attrs["class_names"]) == list(CLASSES)
        assert f["slices/segmentation_results/4"].dtype == np.uint8
        assert f.attrs["printer/x_real_dimension"] == pytest.approx(8.0)
        assert f.attrs["material/layer_thickness"] == pytest.approx(0.04)
        assert f["slices/camera_data/visible/0"].compression == "gzip"
    with RecordReader(path) as r:
        assert list(r.stored_layers()) == [0, 1, 2]
        image, mask, parts = layer_data(1)
        assert np.array_equal(r.image(1), image) and np.array_equal(r.mask(1), mask)
        assert np.array_equal(r.part_ids(1), parts)
        assert r.metrics()["porosity_fraction"][2] == pytest.approx(0.02)
        assert np.isnan(r.metrics()["warping_area_mm2"][2])
        assert r.table("actions")[0]["rule"] == "warp-grows"
        assert r.table("feedback")[0]["verdict"] == "false_alarm"
        assert r.json_attr("model") == {"id": "m", "sha256": "abc"}
        assert r.state == "closed"
        assert len(r.part_metrics()) == 3


def test_evidence_rectangles_are_read_back_by_layer_and_request_and_odd_ones_skipped(tmp_path: Path) -> None:
    path = tmp_path / "b.h5"
    good = {"reason": "r", "where": [[1, 2, 3, 4], [5, 6, 7, 8]]}
    odd = [
        '{"where": [[1, 2, 3]]}',  # three numbers
        '{"where": [[1.5, 2, 3, 4], [-1, 0, 1, 1], [0, 0, 70000, 1], ["a", 0, 1, 1], [true, 0, 1, 1]]}',
        '{"where": {"x": 1}}',
        "[1, 2, 3, 4]",  # not an object
        "{not json",
        "[" * 5000 + "]" * 5000,  # nested too deeply
    ]
    with BuildRecord.create(path, spec()) as rec:
        for n in range(3):
            append(rec, n)
            rec.add_action(n, f"job-1:{n}:r:notify", "notify", "confirmed", "r", "inc", {"reason": "x"})
        rec.add_action(2, "job-1:2:r:pause", "pause", "requested", "r", "inc", good)
        rec.add_action(2, "job-1:2:r:pause", "pause", "confirmed", "r", "inc", good)  # the same rectangles again
        rec.add_action(2, "op-1", "pause", "requested", "operator", "", {"where": [[9, 9, 9, 9]]})
    with RecordReader(path) as r:
        at2 = r.table_at("actions", 2)
        assert [a["request_id"] for a in at2] == ["job-1:2:r:notify", "job-1:2:r:pause", "job-1:2:r:pause", "op-1"]
        assert r.table_at("actions", 7) == [] and r.table_at("labels", 2) == []
        assert action_boxes(at2, layer=2) == [(1, 2, 3, 4), (5, 6, 7, 8)]  # an operator's pause has none
        assert action_boxes(r.table("actions"), request_id="job-1:2:r:pause") == [(1, 2, 3, 4), (5, 6, 7, 8)]
        assert action_boxes(r.table("actions"), layer=1) == []
    rows = [{"layer": 0, "rule": "r", "request_id": "x", "detail": d} for d in odd]
    assert action_boxes(rows, layer=0) == []
    many = [{"layer": 0, "rule": "r", "detail": json.dumps({"where": [[i, 0, 1, 1] for i in range(100)]})}]
    assert len(action_boxes(many, layer=0)) == 64


def test_late_layers_fill_their_row_and_gaps_stay_unstored(tmp_path: Path) -> None:
    path = tmp_path / "b.h5"
    with BuildRecord.create(path, spec()) as rec:
        append(rec, 0)
        append(rec, 3)
        assert not rec.is_stored(1) and rec.is_stored(3)
        append(rec, 1)
    with RecordReader(path) as r:
        assert list(r.stored_layers()) == [0, 1, 3]
        assert np.array_equal(r.image(1), layer_data(1)[0])


def test_a_frame_of_another_size_is_refused(tmp_path: Path) -> None:
    with (
        BuildRecord.create(tmp_path / "b.h5", spec()) as rec,
        pytest.raises(RecordError, match="layer 0 is 10x10 px, the build's frames are 80x64"),
    ):
        rec.append_layer(0, z_mm=0, image=np.zeros((10, 10), np.uint8), mask=np.zeros((10, 10), np.uint8),
                             part_ids=None, metrics={})  # fmt: skip


def test_a_reader_sees_layers_while_they_are_written(tmp_path: Path) -> None:
    path = tmp_path / "b.h5"
    rec = BuildRecord.create(path, spec())
    try:
        append(rec, 0)
        reader = RecordReader(path)
        assert list(reader.stored_layers()) == [0]
        append(rec, 1)
        reader.refresh()
        assert list(reader.stored_layers()) == [0, 1]
        assert np.array_equal(reader.mask(1), layer_data(1)[1])
        assert reader.state == "writing"
        reader.close()
    finally:
        rec.close()


def test_reopen_appends_to_the_same_build(tmp_path: Path) -> None:
    path = tmp_path / "b.h5"
    with BuildRecord.create(path, spec()) as rec:
        append(rec, 0)
    with BuildRecord.open(path) as rec:
        append(rec, 1)
    with RecordReader(path) as r:
        assert list(r.stored_layers()) == [0, 1]


CONTINUE = """
import sys
sys.path.insert(0, {here!r})
from pathlib import Path
from test_record import append
from monitor.record import BuildRecord
with BuildRecord.open(Path({path!r})) as rec:
    append(rec, 1)
"""


def test_a_reader_held_open_does_not_stop_a_restarted_writer_and_knows_it_must_reopen(tmp_path: Path) -> None:
    """The dashboard keeps its readers open. HDF5's file lock let such a reader stop a restarted monitor (or the
    worker taking the printer over) from continuing the build: every later layer was refused. The reader sees
    that the record was continued, or replaced by a recovery, and opens it anew."""
    path = tmp_path / "b.h5"
    with BuildRecord.create(path, spec()) as rec:
        append(rec, 0)
    held = RecordReader(path)  # the build was let go of ("closed" here; "writing" after a crash reads the same)
    assert not held.stale()
    here = str(Path(__file__).resolve().parent)
    writer = subprocess.run(
        [sys.executable, "-c", CONTINUE.format(here=here, path=str(path))], capture_output=True, text=True, timeout=60
    )
    assert writer.returncode == 0, writer.stderr
    assert held.stale() and held.stored_layers().tolist() == [0]  # what it read when it opened
    held.close()
    held = RecordReader(path)
    assert not held.stale() and held.stored_layers().tolist() == [0, 1]
    recover(path)  # a new file under the same name
    assert held.stale()
    held.close()


def test_a_stock_tool_reading_the_record_does_not_stop_the_build_from_going_on(tmp_path: Path) -> None:
    """HDFView or plain h5py take HDF5's shared file lock to read; a monitor that must continue the build needs
    it exclusive. Only readers hold it: the build goes on without the lock and says so."""
    path = tmp_path / "b.h5"
    with BuildRecord.create(path, spec()) as rec:
        append(rec, 0)
    here = str(Path(__file__).resolve().parent)
    tool = h5py.File(path, "r")  # default locking, as a stock tool opens it
    try:
        writer = subprocess.run(
            [sys.executable, "-c", CONTINUE.format(here=here, path=str(path)) + "    print(rec.shared_with_reader)\n"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert writer.returncode == 0, writer.stderr
        assert writer.stdout.strip() == "True"
    finally:
        tool.close()
    assert check_record(path) == []
    with RecordReader(path) as r:
        assert r.stored_layers().tolist() == [0, 1]
    with BuildRecord.open(path) as rec:  # nobody holds it: the lock as usual
        assert not rec.shared_with_reader


def test_a_reader_in_the_writers_own_process_is_let_go_of_and_reads_as_stale(tmp_path: Path) -> None:
    """The demo runs the dashboard in the monitor's process: HDF5 will not open for writing a file the process
    has open to read, so labelling a closed build the page showed was refused. The reader is closed instead
    and reads as stale (the dashboard opens it anew)."""
    path, other = tmp_path / "b.h5", tmp_path / "c.h5"
    for p in (path, other):
        with BuildRecord.create(p, spec()) as rec:
            append(rec, 0)
    held, bystander = RecordReader(path), RecordReader(other)
    assert not held.stale()
    with BuildRecord.open(path) as rec:
        append(rec, 1)
    assert held.stale() and not bystander.stale()  # only the readers of that file
    held.close()
    bystander.close()
    with RecordReader(path) as r:
        assert r.stored_layers().tolist() == [0, 1]


def test_a_recovery_cut_off_anywhere_leaves_the_record_whole_and_can_be_run_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The record's name never stands empty during a recovery, its side files are never listed as builds, and a
    second recovery replaces the first one's kept original."""
    path = tmp_path / "b.h5"
    with BuildRecord.create(path, spec()) as rec:
        for n in range(3):
            append(rec, n)
    (tmp_path / "b.recovering.h5").write_bytes(b"half a copy")  # a recovery killed while copying
    (tmp_path / "b.crashed.h5").write_bytes(b"an earlier recovery's original")
    assert build_records(tmp_path) == [path]

    replace = Path.replace

    def cut_off(self: Path, target: Path) -> Path:
        if Path(target) == path:
            raise OSError("killed before the copy took the record's place")
        return replace(self, target)

    with monkeypatch.context() as m:
        m.setattr(Path, "replace", cut_off)
        with pytest.raises(OSError):
            recover(path)
    with RecordReader(path) as r:  # the original, still in place
        assert r.stored_layers().tolist() == [0, 1, 2]
    assert build_records(tmp_path) == [path]

    recover(path)  # run again
    with h5py.File(path, "r") as f:
        assert f["layerwatch/layers"]["stored"][:3].all()
    with RecordReader(tmp_path / "b.crashed.h5") as r:
        assert r.stored_layers().tolist() == [0, 1, 2]
    assert not (tmp_path / "b.recovering.h5").exists() and build_records(tmp_path) == [path]


def test_not_a_record(tmp_path: Path) -> None:
    bad = tmp_path / "x.h5"
    bad.write_bytes(b"nope")
    assert "cannot open build record" in check_record(bad)[0]
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["x"] = 1
    assert "not a LayerWatch build record" in check_record(tmp_path / "other.h5")[0]


WRITER = """
import sys, time
sys.path.insert(0, {here!r})
from pathlib import Path
from test_record import spec, append
from monitor.record import BuildRecord
rec = BuildRecord.create(Path({path!r}), spec(256, 256))
for n in range(10_000):
    append(rec, n)
    print(n, flush=True)
"""


@pytest.mark.slow
def test_sigkill_at_random_moments_loses_no_stored_layer(tmp_path: Path) -> None:
    """30 writers killed with SIGKILL at random moments: every file opens, every reported layer is intact."""
    rng = random.Random(20261127)
    here = str(Path(__file__).resolve().parent)
    trials = 30
    for trial in range(trials):
        path = tmp_path / f"crash{trial}.h5"
        proc = subprocess.Popen(
            [sys.executable, "-c", WRITER.format(here=here, path=str(path))], stdout=subprocess.PIPE, text=True
        )
        assert proc.stdout is not None
        reported: list[int] = []
        first = proc.stdout.readline()  # the record exists and layer 0 is stored
        reported.append(int(first))
        time.sleep(rng.uniform(0.0, 0.4))
        proc.send_signal(signal.SIGKILL)
        out, _ = proc.communicate()
        reported += [int(line) for line in out.split()]
        with RecordReader(path) as r:
            stored = set(int(n) for n in r.stored_layers())
            assert set(reported) <= stored, (trial, sorted(set(reported) - stored))
            for n in reported[-3:] + reported[:1]:
                image, mask, _ = layer_data(n, 256, 256)
                assert np.array_equal(r.image(n), image), (trial, n)
                assert np.array_equal(r.mask(n), mask), (trial, n)
        if trial % 10 == 0:  # a crashed file can be recovered for stock tools and new writers
            recover(path)
            with h5py.File(path, "r") as f:
                assert f["layerwatch/layers"]["stored"][: max(reported) + 1].all()
            with BuildRecord.open(path) as rec:
                append(rec, max(reported) + 1)


@pytest.mark.slow
def test_check_says_a_crashed_record_needs_repair_and_repair_makes_stock_tools_open_it(tmp_path: Path) -> None:
    here = str(Path(__file__).resolve().parent)
    path = tmp_path / "crashed.h5"
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER.format(here=here, path=str(path))], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    for _ in range(3):
        proc.stdout.readline()
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    with pytest.raises(OSError):
        h5py.File(path, "r")  # what h5dump and every stock reader meet
    cli = [sys.executable, "-m", "monitor.cli", "record", "check", str(path)]
    found = subprocess.run(cli, capture_output=True, text=True, timeout=60)
    assert found.returncode == 1 and "marked open for writing" in found.stderr
    fixed = subprocess.run([*cli, "--repair"], capture_output=True, text=True, timeout=60)
    assert fixed.returncode == 0 and "recovered" in fixed.stdout, fixed.stderr
    with h5py.File(path, "r") as f:
        assert f["layerwatch/layers"]["stored"][:3].all()
    assert (tmp_path / "crashed.crashed.h5").is_file()
