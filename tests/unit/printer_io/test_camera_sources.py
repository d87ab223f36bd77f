"""Camera sources behind one interface: folder, recorded build (HDF5), OpenCV VideoCapture (a real video file)."""

from __future__ import annotations

from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest

from printer_io.camera import SOURCES, FolderSource, OpenCVSource, RecordSource, create_source
from printer_io.errors import CaptureError, ConfigError
from printer_io.messages import LayerEvent


def _event(layer: int) -> LayerEvent:
    return LayerEvent(printer="p1", job_id="j", layer=layer, z_mm=0.2 * (layer + 1))


def test_folder_source_gives_the_nth_image_to_layer_n(tmp_path: Path) -> None:
    for i in range(3):
        cv2.imwrite(str(tmp_path / f"layer_{i:03d}.png"), np.full((8, 8), 10 * i, np.uint8))
    (tmp_path / "notes.txt").write_text("not an image")
    src = create_source("folder", tmp_path)
    src.open()
    assert [int(src.grab(_event(i)).mean()) for i in range(3)] == [0, 10, 20]
    with pytest.raises(CaptureError, match="3 images, none for layer 3"):
        src.grab(_event(3))
    looping = FolderSource(tmp_path, loop=True)
    assert int(looping.grab(_event(4)).mean()) == 10


def test_folder_source_refuses_missing_or_empty_folders(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        FolderSource(tmp_path / "nope").open()
    with pytest.raises(ConfigError, match="holds no image"):
        FolderSource(tmp_path).open()


@pytest.mark.parametrize("dataset", ["slices/camera_data/visible/0", "slices/camera_data/0"])
def test_record_source_reads_the_peregrine_camera_dataset(tmp_path: Path, dataset: str) -> None:
    path = tmp_path / "build.h5"
    frames = np.stack([np.full((6, 7), i * 1000, np.uint16) for i in range(4)])
    with h5py.File(path, "w") as f:  # Peregrine's path, and the one of records before schema 3
        f.create_dataset(dataset, data=frames, maxshape=(None, 6, 7))
    src = RecordSource(path)
    src.open()
    got = src.grab(_event(2))
    assert got.dtype == np.uint16 and got.shape == (6, 7) and int(got[0, 0]) == 2000
    with pytest.raises(CaptureError, match="4 layers, none for layer 9"):
        src.grab(_event(9))
    src.close()


def test_record_source_refuses_files_that_are_not_records(tmp_path: Path) -> None:
    bad = tmp_path / "bad.h5"
    bad.write_bytes(b"not hdf5")
    with pytest.raises(ConfigError, match="cannot be opened as HDF5"):
        RecordSource(bad).open()
    empty = tmp_path / "empty.h5"
    with h5py.File(empty, "w"):
        pass
    with pytest.raises(ConfigError, match="no /slices/camera_data/visible/0"):
        RecordSource(empty).open()


def test_opencv_source_reads_a_real_video_file(tmp_path: Path) -> None:
    path = tmp_path / "feed.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), 10, (64, 48))
    for i in range(6):
        writer.write(np.full((48, 64, 3), 30 * i, np.uint8))
    writer.release()
    src = OpenCVSource(str(path), flush=1)
    src.open()
    first = src.grab(_event(0))  # skips one buffered frame, reads the second
    assert first.shape == (48, 64, 3) and abs(int(first.mean()) - 30) <= 3
    src.close()


def test_opencv_source_without_a_camera_is_a_clear_error() -> None:
    with pytest.raises(CaptureError, match="cannot be opened: check the device index or URL"):
        OpenCVSource("/dev/video-nothing-here").open()


def test_unknown_source_lists_the_valid_names() -> None:
    with pytest.raises(ConfigError, match="valid: " + ", ".join(sorted(SOURCES))):
        create_source("webcam")
