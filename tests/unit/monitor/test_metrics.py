"""Per-layer metrics in physical units, checked on masks whose answers are known by construction."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from monitor.metrics import METRIC_NAMES, PART_METRIC_NAMES, MetricsComputer
from monitor.policy import Rule, evidence_boxes
from segmentation.classes import LayerClass as C


def square_layer(warp_cols: int = 0, pores: int = 1, spatter: int = 2, shift: int = 0) -> np.ndarray:
    m = np.zeros((200, 300), np.uint8)
    m[50:150, 50 + shift : 150 + shift] = C.PART  # 100x100 px part
    for i in range(pores):
        m[70 + 20 * i : 74 + 20 * i, 80:84] = C.POROSITY  # 4x4 px pores
    for i in range(spatter):
        m[10, 200 + 10 * i] = C.SPATTER
    if warp_cols:
        m[50:150, 150 + shift - warp_cols : 150 + shift] = C.WARPING  # along the right edge
    return m


def test_areas_fractions_and_pores_in_mm() -> None:
    mc = MetricsComputer(mm_per_px=0.1)
    r = mc.compute(square_layer(pores=2))
    v = r.values
    assert set(v) == set(METRIC_NAMES)
    assert v["part_count"] == 1 and v["part_area_mm2"] == pytest.approx(100.0)  # 10000 px x 0.01 mm²
    assert v["pore_count"] == 2 and v["pore_area_mm2"] == pytest.approx(0.32)
    assert v["pore_max_diameter_mm"] == pytest.approx(2 * np.sqrt(0.16 / np.pi))
    assert v["porosity_fraction_part"] == pytest.approx(32 / 10000)
    assert v["porosity_fraction"] == pytest.approx(32 / 60000)
    assert v["spatter_count"] == 2 and v["spatter_fraction_part"] == 0.0
    assert v["warping_area_mm2"] == 0 and v["warping_edge_mm"] == 0


def test_warping_edge_length_and_growth() -> None:
    mc = MetricsComputer(mm_per_px=0.1)
    first = mc.compute(square_layer(warp_cols=3)).values
    assert first["warping_edge_mm"] == pytest.approx(10.0, rel=0.15)  # the 100 px right edge: 10 mm
    assert first["warping_growth_mm"] == 0.0  # nothing to compare the first layer with
    m = square_layer(warp_cols=3)
    m[50:150, 50:53] = C.WARPING  # the left edge lifts too
    second = mc.compute(m).values
    assert second["warping_growth_mm"] == pytest.approx(10.0, rel=0.2)
    assert second["warping_growth_area_mm2"] == pytest.approx(3.0)


def test_parts_keep_their_ids_across_layers() -> None:
    mc = MetricsComputer(mm_per_px=0.1)
    m = square_layer()
    m[160:190, 200:290] = C.PART  # a second part
    a = mc.compute(m)
    b = mc.compute(np.roll(m, 3, axis=1))  # both parts drift a little
    ids_a = {int(p["part_id"]): p["area_mm2"] for p in a.parts}
    ids_b = {int(p["part_id"]): p["area_mm2"] for p in b.parts}
    assert ids_a.keys() == ids_b.keys() == {1, 2}
    assert ids_a[1] == pytest.approx(100.0) and ids_a[2] == pytest.approx(27.0)
    assert set(a.parts[0]) == {"part_id", *PART_METRIC_NAMES}


def test_supplied_part_ids_are_used() -> None:
    mc = MetricsComputer(mm_per_px=0.05)
    m = square_layer()
    ids = np.zeros(m.shape, np.uint32)
    ids[50:150, 50:100] = 7
    ids[50:150, 100:150] = 9
    r = mc.compute(m, part_ids=ids)
    assert [int(p["part_id"]) for p in r.parts] == [7, 9]
    assert r.parts[0]["pore_count"] == 1 and r.parts[1]["pore_count"] == 0
    ids[50:150, 100:150] = 70_000  # ids beyond a small count (a frame may number its parts so)
    r = mc.compute(m, part_ids=ids)
    assert [int(p["part_id"]) for p in r.parts] == [7, 70_000] and r.values["part_count"] == 2


def test_an_empty_plate() -> None:
    v = MetricsComputer(mm_per_px=0.1).compute(np.zeros((50, 50), np.uint8)).values
    assert v["part_count"] == 0 and v["porosity_fraction_part"] == 0 and v["pore_mean_diameter_mm"] == 0


def _corner_warp(m: np.ndarray, size: int, outside: int = 0) -> np.ndarray:
    """Warping at the square part's lower right corner, ``size`` px, with ``outside`` px of rim beyond it."""
    m = m.copy()
    m[150 - size : 150 + outside, 150 - size : 150 + outside] = C.WARPING
    return m


def test_warping_that_flickers_is_never_confirmed() -> None:
    mc = MetricsComputer(mm_per_px=0.1)
    for k in range(8):
        m = square_layer()
        if k % 2:
            m = _corner_warp(m, 20, outside=3)
        v = mc.compute(m).values
        assert v["warping_persistent_area_mm2"] == 0 and v["warping_confirmed_area_mm2"] == 0


def test_a_uniformly_bright_part_called_warping_is_not_confirmed() -> None:
    mc = MetricsComputer(mm_per_px=0.1)
    for k in range(8):
        m = square_layer(pores=0)
        if k >= 3:
            m[m == C.PART] = C.WARPING  # the whole part, every layer from the fourth on
        v = mc.compute(m).values
    assert v["warping_persistent_area_mm2"] > 90  # it does persist...
    assert v["warping_confirmed_area_mm2"] == 0  # ...but it is the whole part, inside its own outline


def test_warping_seen_from_the_first_layers_is_a_fixture_not_a_lift() -> None:
    mc = MetricsComputer(mm_per_px=0.1)
    for _ in range(8):
        v = mc.compute(_corner_warp(square_layer(pores=0), 15)).values
    assert v["warping_area_mm2"] > 2 and v["warping_persistent_area_mm2"] == 0
    assert v["warping_confirmed_area_mm2"] == 0


def test_a_lifted_corner_that_stays_and_grows_is_confirmed() -> None:
    mc = MetricsComputer(mm_per_px=0.1)
    confirmed = []
    for k in range(10):
        m = square_layer(pores=0)
        if k >= 4:
            m = _corner_warp(m, 8 + 2 * (k - 4), outside=2 + (k - 4) // 2)  # grows and stands out of the outline
        v = mc.compute(m).values
        confirmed.append(v["warping_confirmed_area_mm2"])
    assert confirmed[:5] == [0.0] * 5  # seen on 2 of the last 3 layers at least
    assert all(b > a > 0 for a, b in itertools.pairwise(confirmed[5:]))
    assert v["warping_confirmed_growth_mm2"] == pytest.approx(confirmed[-1] - confirmed[-2])
    assert v["warping_outside_area_mm2"] > 0


def test_a_lift_missed_on_one_layer_stays_confirmed_on_the_next() -> None:
    mc = MetricsComputer(mm_per_px=0.1)
    confirmed = []
    for k in range(9):
        m = square_layer(pores=0)
        if k >= 4 and k != 6:  # the model misses it on layer 6
            m = _corner_warp(m, 15)
        confirmed.append(mc.compute(m).values["warping_confirmed_area_mm2"])
    assert confirmed[5] > 0 and confirmed[6] == 0 and confirmed[7] > 0 and confirmed[8] > 0


def test_warping_inside_the_part_at_its_edge_is_confirmed_without_standing_out() -> None:
    """An edge that lifts and stays at the same place counts even before it rises above the outline."""
    mc = MetricsComputer(mm_per_px=0.1)
    for k in range(6):
        m = square_layer(pores=0)
        v = mc.compute(_corner_warp(m, 15) if k >= 3 else m).values
    assert v["warping_confirmed_area_mm2"] == pytest.approx(2.25)


def _frame(m: np.ndarray, corner: float = 0.0, seed: int = 0) -> np.ndarray:
    """A uint8 frame of a square-layer mask: a textured part on powder; ``corner`` shades its lower right
    15 px corner by that much (a lifted corner catches the light), 0 leaves the part uniform there."""
    rng = np.random.default_rng(seed)
    g = 90 + rng.normal(0, 4, m.shape)
    g[50:150, 50:150] = 140 + 6 * np.sin(np.arange(100) * 1.3)[None, :] + rng.normal(0, 4, (100, 100))
    g[135:150, 135:150] += corner
    return np.clip(g, 0, 255).astype(np.uint8)


def test_warping_painted_inside_a_uniform_part_at_its_edge_is_not_confirmed() -> None:
    """Magenta inside a part's outline near a corner, where the frame shows the part as it is everywhere
    else: nothing lifts there, no pause (the same paint over a corner that looks lifted is confirmed)."""
    results = {}
    for corner in (0.0, 45.0, -45.0):
        mc = MetricsComputer(mm_per_px=0.1)
        for k in range(6):
            m = square_layer(pores=0)
            m = _corner_warp(m, 15) if k >= 3 else m
            v = mc.compute(m, gray=_frame(m, corner if k >= 3 else 0.0, seed=k)).values
        results[corner] = v["warping_confirmed_area_mm2"]
    assert results[0.0] == 0
    assert results[45.0] == pytest.approx(2.25) and results[-45.0] == pytest.approx(2.25)


def test_a_part_that_just_started_has_no_earlier_outline_to_stand_out_of() -> None:
    """A thin wall that starts on layer 4 with a pore at its end on every layer: the pore is new beside the
    footprint of 3 to 8 layers ago only because the whole wall is; it is a pore, not a lifted corner."""
    mc = MetricsComputer(mm_per_px=0.1)
    for k in range(10):
        m = square_layer(pores=0)
        if k >= 4:
            m[20:26, 170:260] = C.PART  # the wall
            m[20:26, 255:262] = C.POROSITY  # a pore at its end, partly beyond it
        v = mc.compute(m).values
        assert v["warping_confirmed_area_mm2"] == 0, k


def test_a_dark_corner_read_as_porosity_that_stays_and_stands_out_is_confirmed_warping() -> None:
    """A lifted corner seen dark is often read as porosity; standing out of the part's earlier outline and
    staying, it is a lift: pores lie inside a part."""
    mc = MetricsComputer(mm_per_px=0.1)
    confirmed = []
    for k in range(10):
        m = square_layer(pores=0)
        if k >= 4:
            size, outside = 6 + 2 * (k - 4), 2 + (k - 4) // 2
            m[150 - size : 150 + outside, 150 - size : 150 + outside] = C.POROSITY
        v = mc.compute(m).values
        confirmed.append(v["warping_confirmed_area_mm2"])
    assert confirmed[:5] == [0.0] * 5  # seen on 2 of the last 3 layers at least
    assert all(b > a > 0 for a, b in itertools.pairwise(confirmed[5:]))
    assert v["warping_area_mm2"] == 0 and v["pore_count"] == 1  # the class shares are the model's, unchanged


def test_pores_that_stay_inside_the_part_or_flicker_outside_it_are_not_warping() -> None:
    mc = MetricsComputer(mm_per_px=0.1)
    for k in range(10):
        m = square_layer(pores=3)  # the same three pores on every layer, inside the part
        m[140:150, 140:150] = C.POROSITY  # a pore at the corner, inside the outline, on every layer
        if k % 2:
            m[147:153, 147:153] = C.POROSITY  # dark spatter over the corner, every other layer
        v = mc.compute(m).values
        assert v["warping_confirmed_area_mm2"] == 0


def test_dark_pixels_at_the_corner_from_the_first_layers_are_a_fixture() -> None:
    mc = MetricsComputer(mm_per_px=0.1)
    for _ in range(8):
        m = square_layer(pores=0)
        m[140:155, 140:155] = C.POROSITY
        v = mc.compute(m).values
    assert v["warping_confirmed_area_mm2"] == 0


def test_the_evidence_of_a_rule_is_boxed_where_its_metric_was_measured() -> None:
    """A dark lifted corner is porosity in the mask: the box of a confirmed-warping rule is around it all the
    same (the pixels that made the metric), and not around the pores inside the part."""
    mc = MetricsComputer(mm_per_px=0.1)
    for k in range(8):
        m = square_layer(pores=2, spatter=3)
        if k >= 4:
            size, outside = 6 + 2 * (k - 4), 2 + (k - 4) // 2
            m[150 - size : 150 + outside, 150 - size : 150 + outside] = C.POROSITY
        lm = mc.compute(m)
    assert lm.values["warping_confirmed_area_mm2"] > 0 and lm.confirmed is not None
    assert lm.confirmed.sum() * 0.01 == pytest.approx(lm.values["warping_confirmed_area_mm2"])
    assert (m[lm.confirmed] == C.POROSITY).all()

    def boxes(metric: str, region: str = "anywhere", part_id: int = 0) -> tuple[tuple[int, int, int, int], ...]:
        return evidence_boxes(Rule(name="r", metric=metric, above=0, region=region), part_id, m, lm)

    ((x, y, w, h),) = boxes("warping_confirmed_area_mm2")
    assert (x, y, x + w, y + h) == (150 - 12 - 4, 150 - 12 - 4, 150 + 3 + 4, 150 + 3 + 4)  # the corner, 4 px margin
    pores = boxes("porosity_fraction", "part")
    assert len(pores) == 3 and pores[0] == (x, y, w, h)  # the largest first: the corner is porosity too
    assert sorted(pores[1:]) == [(76, 66, 12, 12), (76, 86, 12, 12)]
    assert len(boxes("spatter_count")) == 3 and boxes("part_count") == ()
    part = int(lm.parts[0]["part_id"])
    assert boxes("area_mm2", "each_part", part) == ((46, 46, 111, 111),)  # the part itself, with its corner
    assert boxes("spatter_count", "each_part", part) == ()  # the particles are beyond its reach
    assert MetricsComputer(mm_per_px=0.1).compute(square_layer()).confirmed is None


def test_every_metric_has_a_unit_by_its_name() -> None:
    from monitor.metrics import METRIC_NAMES, metric_unit

    units = {name: metric_unit(name) for name in METRIC_NAMES}
    assert units["warping_area_mm2"] == "mm²" and units["warping_edge_mm"] == "mm"
    assert units["porosity_fraction_part"] == "share" and units["spatter_count"] == "count"
