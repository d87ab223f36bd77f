"""Layer detection from Z moves (with hops) and from slicer markers."""

from __future__ import annotations

import pytest
from gcode import make_gcode

from printer_io.layers import FileposLayerTracker, GcodeLayerMap, LayerChange, ZLayerFilter


def _feed(zs: list[float], dt: float = 0.1, confirm_s: float = 3.0) -> list[LayerChange]:
    f = ZLayerFilter(confirm_s=confirm_s)
    out: list[LayerChange] = []
    t = 0.0
    for z in zs:
        out += f.on_z(z, t)
        t += dt
    return out + f.finish()


def test_plain_layer_changes() -> None:
    # the final lift to Z=20 after the print is a rise that never becomes a layer
    assert _feed([0.2, 0.4, 0.6, 20.0]) == [LayerChange(0, 0.2), LayerChange(1, 0.4), LayerChange(2, 0.6)]


def test_hops_that_come_back_down_are_not_layers() -> None:
    zs = [0.2, 0.6, 0.2, 0.6, 0.2, 0.4, 0.8, 0.4, 0.8, 0.4]
    assert [c.layer for c in _feed(zs)] == [0, 1]
    assert [c.z_mm for c in _feed(zs)] == [0.2, 0.4]


def test_hop_before_a_layer_change_is_replaced_by_the_lower_layer_height() -> None:
    # travel lifts to 0.6, descends onto the new layer at 0.4
    zs = [0.2, 0.6, 0.4, 0.8, 0.4, 0.8, 0.6, 10.0]
    assert _feed(zs) == [LayerChange(0, 0.2), LayerChange(1, 0.4), LayerChange(2, 0.6)]


def test_homing_and_priming_before_the_first_layer() -> None:
    zs = [0.0, 5.0, 0.2, 0.6, 0.2, 0.4, 10.0]
    assert _feed(zs) == [LayerChange(0, 0.2), LayerChange(1, 0.4)]


def test_a_rise_that_stays_is_confirmed_by_time() -> None:
    f = ZLayerFilter(confirm_s=1.0)
    assert f.on_z(0.2, 0.0) == []
    assert f.on_z(0.4, 1.0) == []
    assert f.on_tick(1.5) == []
    assert f.on_tick(2.1) == [LayerChange(0, 0.2)]
    assert f.finish() == [LayerChange(1, 0.4)]


def test_a_tiny_rise_below_the_minimum_step_is_ignored() -> None:
    assert [c.layer for c in _feed([0.2, 0.21, 0.2, 0.4, 10.0])] == [0, 1]


@pytest.mark.parametrize("markers", ["cura", "prusa"])
def test_gcode_layer_map_from_slicer_markers(markers: str) -> None:
    data = make_gcode(5, markers=markers)
    m = GcodeLayerMap.parse(data)
    assert len(m) == 5
    assert m.z_mm == [0.2, 0.4, 0.6, 0.8, 1.0]
    assert m.layer_at(0) == -1
    assert m.layer_at(m.offsets[2]) == 2
    assert m.layer_at(len(data)) == 4


def test_gcode_without_markers_has_an_empty_map() -> None:
    assert len(GcodeLayerMap.parse(make_gcode(5, markers=None))) == 0


def test_filepos_tracker_reports_each_layer_once_even_when_positions_jump() -> None:
    data = make_gcode(6, markers="cura")
    m = GcodeLayerMap.parse(data)
    t = FileposLayerTracker(m)
    assert t.on_filepos(0) == []
    assert t.on_filepos(m.offsets[0] + 5) == []
    assert t.on_filepos(m.offsets[3] + 1) == [LayerChange(0, 0.2), LayerChange(1, 0.4), LayerChange(2, 0.6)]
    assert t.on_filepos(m.offsets[3] + 9) == []
    assert t.on_filepos(len(data)) == [LayerChange(3, 0.8), LayerChange(4, 1.0)]
    assert t.finish() == [LayerChange(5, 1.2)]
    assert t.finish() == []


def test_filepos_tracker_finish_reports_the_layers_never_seen() -> None:
    m = GcodeLayerMap.parse(make_gcode(4, markers="prusa"))
    t = FileposLayerTracker(m)
    assert t.on_filepos(m.offsets[1] + 1) == [LayerChange(0, 0.2)]
    assert t.finish() == [LayerChange(1, 0.4), LayerChange(2, 0.6), LayerChange(3, 0.8)]
