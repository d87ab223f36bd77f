from __future__ import annotations

import itertools
from dataclasses import replace

import numpy as np
from scipy import ndimage

from segmentation.classes import DEFECT_CLASSES, LayerClass
from segmentation.preprocess import to_gray_float
from segmentation.simulator import SimBuild, SimLayer, simulate_dataset


def test_same_seed_gives_identical_layers() -> None:
    a = SimBuild(7, 192, 160, 20).layer(12)
    b = SimBuild(7, 192, 160, 20).layer(12)
    assert np.array_equal(a.image, b.image)
    assert np.array_equal(a.mask, b.mask)
    assert np.array_equal(a.part_ids, b.part_ids)
    assert a.image.shape[:2] == (192, 160) and a.mask.shape == (192, 160)


def test_different_seeds_differ() -> None:
    a = SimBuild(1, 128, 128, 10).layer(5)
    b = SimBuild(2, 128, 128, 10).layer(5)
    assert not np.array_equal(a.mask, b.mask)


def test_mask_classes_are_consistent_with_parts(sim_layer: SimLayer) -> None:
    m, ids = sim_layer.mask, sim_layer.part_ids
    assert m.dtype == np.uint8 and set(np.unique(m)) <= set(range(5))
    # part and porosity pixels lie inside parts; powder pixels outside
    assert np.all(ids[m == LayerClass.PART] > 0)
    assert np.all(ids[m == LayerClass.POROSITY] > 0)
    assert np.all(ids[m == LayerClass.POWDER] == 0)


def test_defects_look_like_what_they_are() -> None:
    """Pores are darker than the part around them; spatter stands out from its surroundings, bright on
    some builds and dark on others (real machines show both)."""
    darker = contrast = 0
    polarities = set()
    for seed in range(8):
        build = SimBuild(100 + seed, 256, 256, 30)
        layer = build.layer(22)
        g = to_gray_float(layer.image)
        m = layer.mask
        part = m == LayerClass.PART
        pores = m == LayerClass.POROSITY
        if pores.sum() > 20 and part.sum() > 100:
            darker += int(g[pores].mean() < np.median(g[part]))
        spat = m == LayerClass.SPATTER
        ring = ndimage.binary_dilation(spat, iterations=4) & ~ndimage.binary_dilation(spat, iterations=2)
        if spat.sum() > 20:
            contrast += int(abs(g[spat].mean() - np.median(g[ring])) > 0.05)
            polarities.add(build.look.spatter)
    assert darker >= 4 and contrast >= 4
    assert {"bright", "dark"} & polarities and len(polarities) >= 2


def test_chamber_hardware_is_background() -> None:
    """Walls, rails, screws and the plate edge hide the plate: their pixels are class 0, never a part."""
    seen = 0
    for seed in range(40):
        build = SimBuild(seed, 128, 128, 10)
        if build._hardware.any():
            layer = build.layer(8)
            assert np.all(layer.mask[build._hardware] == LayerClass.POWDER)
            assert np.all(layer.part_ids[build._hardware] == 0)
            seen += 1
    assert seen >= 5


def test_parts_are_brighter_darker_or_as_bright_as_powder() -> None:
    modes = {SimBuild(seed, 64, 64, 4).look.part_mode for seed in range(60)}
    assert modes == {"brighter", "darker", "similar", "fresh", "exposed"}


def test_an_exposed_part_is_a_bright_contour_around_bright_tracks() -> None:
    """Right after exposure (an EOS-type camera): a contour line brighter than the powder runs along the
    part's outline, and its interior shows scan tracks brighter than the part's own level; all of it is part."""
    seed = next(s for s in range(200) if SimBuild(s, 64, 64, 4).look.part_mode == "exposed")
    build = SimBuild(seed, 256, 256, 20)
    k = max(range(10, 20), key=lambda k: int((build.part_ids(k) > 0).sum()))
    part = build.part_ids(k) > 0
    img = np.zeros(part.shape, np.float32)
    build._contours(np.random.default_rng(0), img, part, np.zeros(part.shape, np.float32))
    rim = part & ~ndimage.binary_erosion(part, iterations=1)
    assert (img[rim] > 0.25).all() and (img[~part] == 0).all()  # the outline, bright; nothing outside the part
    assert (img[ndimage.binary_erosion(part, iterations=12)] == 0).all()  # the interior is left to the tracks
    layer = build.layer(k)
    g = to_gray_float(layer.image)
    near = ndimage.binary_dilation(part, iterations=8) & ~ndimage.binary_dilation(part, iterations=3)
    assert np.median(g[rim & (layer.mask == LayerClass.PART)]) > np.median(g[near & (layer.mask == 0)]) + 0.05
    assert (layer.mask[part & (layer.mask <= LayerClass.PART)] == LayerClass.PART).all()


def test_holes_in_the_fresh_powder_are_dark_porosity_away_from_parts() -> None:
    seed = next(s for s in range(200) if SimBuild(s, 64, 64, 4).look.holes > 4)
    build = SimBuild(seed, 256, 256, 20)
    found = 0
    for k in range(12):
        plain_img = np.zeros((256, 256), np.float32)
        blocked = (build.part_ids(k) > 0) | build._hardware  # as the layer blocks them
        holes = build._holes(k, plain_img, np.full((256, 256), 0.4, np.float32), blocked)
        assert (plain_img[~holes] == 0).all() and (plain_img[holes] <= 0).all()  # painted only inside, darker
        assert not (holes & ndimage.binary_dilation(build.part_ids(k) > 0, iterations=2)).any()
        layer = build.layer(k)
        assert (layer.mask[holes & (layer.mask != LayerClass.SPATTER)] == LayerClass.POROSITY).all()
        found += int(holes.any())
    assert found >= 6


def test_layer_over_a_real_background_keeps_its_pixels_and_labels() -> None:
    rng = np.random.default_rng(3)
    bg = np.clip(0.4 + 0.05 * rng.normal(size=(128, 128)), 0, 1).astype(np.float32)
    build = SimBuild(77, 128, 128, 20)
    layer = build.layer(15, background=bg, background_label=254)
    drawn = layer.part_ids > 0
    # warping rims, spatter, holes in the powder
    assert set(np.unique(layer.mask[~drawn])) <= {254, *(int(c) for c in DEFECT_CLASSES)}
    if not (build.look.jpeg_quality or build.spec.color or build.spec.bit_depth == 16):
        g = to_gray_float(layer.image)
        untouched = ~ndimage.binary_dilation(drawn | (layer.mask != 254), iterations=3)
        assert np.abs(g[untouched] - bg[untouched]).mean() < 0.03


def test_slow_warp_grows_by_its_area_rate() -> None:
    from segmentation.simulator import scenario_spec

    spec = scenario_spec(9, 512, 30, warp_start=10, warp_area_growth=0.5)
    build = SimBuild(9, spec=spec)
    areas = [float((build.layer(k).mask == LayerClass.WARPING).sum()) * spec.mm_per_px**2 for k in range(30)]
    assert areas[9] == 0 and areas[10] > 0
    growth = np.diff(areas[10:])
    assert 0.3 < float(np.median(growth)) < 1.0, growth
    assert 5 <= areas[-1] <= 20, areas[-1]


def test_pores_span_consecutive_layers(sim_build: SimBuild) -> None:
    """Each pore is visible on an unbroken run of layers, widest in the middle (3D coherence)."""
    spans = []
    for pore in sim_build.spec.pores[:25]:
        alone = SimBuild(sim_build.seed, spec=replace(sim_build.spec, pores=(pore,)))
        areas = [int(alone._pore_mask(k, alone.part_ids(k)).sum()) for k in range(alone.n_layers)]
        visible = [k for k, a in enumerate(areas) if a]
        if visible:
            assert visible == list(range(visible[0], visible[-1] + 1))
            spans.append(len(visible))
    assert spans and max(spans) >= 2


def test_warping_grows_over_consecutive_layers() -> None:
    for seed in range(20):
        build = SimBuild(seed, 256, 256, 40)
        if build.spec.warps:
            break
    w = build.spec.warps[0]
    areas = []
    for k in range(w.start, min(w.start + 8, build.n_layers)):
        ids = build.part_ids(k)
        if not (ids == w.part_id).any():
            break
        m, _ = build._warp_mask(k, ids)
        areas.append(int(m.sum()))
    assert len(areas) >= 2
    assert all(b >= a for a, b in itertools.pairwise(areas))
    assert areas[-1] > areas[0]


def test_spatter_is_new_on_every_layer(sim_build: SimBuild) -> None:
    a = sim_build.layer(10).mask == LayerClass.SPATTER
    b = sim_build.layer(11).mask == LayerClass.SPATTER
    assert a.any() and b.any()
    assert (a & b).sum() < 0.5 * min(a.sum(), b.sum())


def test_appearance_varies_across_builds() -> None:
    layers = simulate_dataset(31, 24, 128, 128)
    kinds = {(la.image.ndim, la.image.dtype.str) for la in layers}
    assert (2, "|u1") in kinds or (2, "<u2") in kinds  # gray
    assert any(nd == 3 for nd, _ in kinds)  # colour
    pitches = {round(la.meta["mm_per_px"], 4) for la in layers}
    assert len(pitches) > 3
    defects = np.bincount(np.concatenate([la.mask.ravel() for la in layers]), minlength=5)
    assert all(defects[c] > 0 for c in (2, 3, 4))


def test_part_geometries_are_varied() -> None:
    kinds = set()
    for seed in range(12):
        kinds |= {p.kind for p in SimBuild(seed, 128, 128, 10).spec.parts}
    assert kinds == {"box", "cylinder", "thin_wall", "ring", "overhang"}
