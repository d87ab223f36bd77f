"""Records where Peregrine's readers look, and Peregrine's own files read by replay and report.

The paths, types and attributes checked are the ones DREAM3D-NX's ReadPeregrineHDF5File opens: the slice
dimensions come from the segmentation results it is asked for, and /slices/camera_data/visible/0 and /1,
/slices/part_ids and /slices/sample_ids must have exactly those dimensions; the image geometry's spacing is
printer/{x,y}_real_dimension over printer/{x,y}_camera_dimension and material/layer_thickness.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
from peers import REPO

from monitor.record import PEREGRINE_CLASSES, BuildRecord, class_mask
from tests.unit.monitor.test_record import layer_data, spec

pytestmark = pytest.mark.integration
SAMPLE = REPO / "data" / "samples" / "builds" / "warp-512.h5"  # ours, before schema 3: /slices/camera_data/0


def test_a_record_opens_where_dream3d_nx_reads_peregrine_files(tmp_path: Path) -> None:
    path = tmp_path / "build.h5"
    with BuildRecord.create(path, spec()) as rec:
        for k in range(3):
            image, mask, parts = layer_data(k)
            given = (parts * 10).astype(np.uint32)  # the printer's own object ids
            rec.append_layer(k, z_mm=0.04 * (k + 1), image=image, mask=mask, part_ids=parts, sample_ids=given,
                             metrics={})  # fmt: skip
    with h5py.File(path, "r") as f:  # plain HDF5, as a third-party reader opens it
        results = f["/slices/segmentation_results"]
        wanted = ["0", "1", "2", "3", "4"]  # the filter's "segmentation results" list
        dims = {results[k].shape for k in wanted}
        assert len(dims) == 1 and all(results[k].dtype == np.uint8 for k in wanted)
        (slice_dims,) = dims
        assert slice_dims == (3, 64, 80)
        for name in ("/slices/camera_data/visible/0", "/slices/camera_data/visible/1", "/slices/part_ids",
                     "/slices/sample_ids"):  # fmt: skip
            assert f[name].shape == slice_dims, name
        assert f["/slices/part_ids"].dtype == np.uint32 and f["/slices/sample_ids"].dtype == np.uint32
        assert (f["/slices/camera_data/visible/1"][...] == 0).all()  # no after-recoat image from this machine
        assert np.array_equal(f["/slices/sample_ids"][1], (layer_data(1)[2] * 10).astype(np.uint32))
        a = f.attrs
        spacing_x = float(a["printer/x_real_dimension"]) / float(a["printer/x_camera_dimension"])
        spacing_y = float(a["printer/y_real_dimension"]) / float(a["printer/y_camera_dimension"])
        assert spacing_x == pytest.approx(0.1) and spacing_y == pytest.approx(0.1)
        assert float(a["material/layer_thickness"]) == pytest.approx(0.04)
        assert [str(n) for n in results.attrs["class_names"]] == ["powder", "part", "porosity", "spatter", "warping"]


def _peregrine_file(path: Path) -> np.ndarray:
    """The sample build as ORNL Peregrine writes its files: float camera data after melt and after recoat,
    12 class masks in Peregrine's numbering with their names; returns our truth masks for comparison."""
    with h5py.File(SAMPLE, "r") as src:
        frames = src["slices/camera_data/0"][:]
        ours = np.stack([class_mask(src, k) for k in range(frames.shape[0])])
        attrs = dict(src.attrs)
    ours_to_peregrine = {0: 0, 1: 1, 2: 11, 3: 8, 4: 7}  # porosity as under-melting, warping as super-elevation
    with h5py.File(path, "w") as f:
        f["slices/camera_data/visible/0"] = frames.astype(np.float32) / 255
        f["slices/camera_data/visible/1"] = np.full(frames.shape, 0.4, np.float32)
        for pid in range(len(PEREGRINE_CLASSES)):
            source = [o for o, p in ours_to_peregrine.items() if p == pid]
            f[f"slices/segmentation_results/{pid}"] = np.isin(ours, source).astype(np.uint8)
        f["slices/segmentation_results"].attrs["class_names"] = list(PEREGRINE_CLASSES)
        f["slices/part_ids"] = (ours == 1).astype(np.uint32)
        f["slices/sample_ids"] = (ours == 1).astype(np.uint32) * 7
        for key in ("printer/x_real_dimension", "printer/y_real_dimension", "printer/x_camera_dimension",
                    "printer/y_camera_dimension", "material/layer_thickness"):  # fmt: skip
            f.attrs[key] = attrs[key]
    return ours


def test_a_peregrine_file_is_replayed_and_reported_with_its_classes_mapped_onto_ours(tmp_path: Path) -> None:
    from dashboards.report import analyze
    from monitor.replay import ReplayOptions, open_source, run_replay

    path = tmp_path / "peregrine.h5"
    ours = _peregrine_file(path)
    source = open_source(path)
    try:
        assert source.kind == "peregrine" and source.ground_truth
        assert all(np.array_equal(source.truth(k), ours[k]) for k in source.layers)  # type: ignore[arg-type]
        image = source.image(5)
        assert image.dtype == np.uint16 and image.max() > 0  # float frames become 16-bit
    finally:
        source.close()
    report = analyze(path)
    assert any(d.cls == "warping" for d in report.defects)  # super-elevation
    result = run_replay(ReplayOptions(source=path, out=tmp_path / "replay.h5", progress=False,
                                      models_dir=tmp_path / "models"))  # fmt: skip
    assert result.layers == ours.shape[0]
    assert result.first_pause is not None and result.first_pause.layer >= 4  # the warp from layer 4
