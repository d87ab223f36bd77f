"""What the page sends when an operator draws, and what it shows of a shadow run."""

from __future__ import annotations

import base64

import cv2
import numpy as np

from dashboards.callbacks import _shadow_line
from dashboards.render import LABEL_CHOICES, label_canvas, overlay_png
from dashboards.state import strokes_from_shapes
from printer_io.messages import MAX_STROKE_POINTS
from printer_io.vocabulary import Severity
from segmentation.classes import CLASS_HEX, NO_DEFECT


def test_drawn_shapes_become_strokes_in_frame_pixels() -> None:
    shapes = [
        {"type": "path", "path": "M10,20L30,40L50,20", "line": {"color": CLASS_HEX[2], "width": 5}},
        {"type": "path", "path": "M0,0L100,0L100,100Z", "line": {"color": "#00bcd4", "width": 1}},
        {"type": "path", "path": "M-50,2000L5,5", "line": {"color": CLASS_HEX[4], "width": 2}},  # off the frame
        {"type": "path", "path": "M1,1L2,2", "line": {"color": "#123456"}},  # a colour of no label: dropped
        {"type": "rect", "x0": 1},  # not a path: dropped
        "not a shape",
    ]
    strokes = strokes_from_shapes(shapes, width=1024, height=512, display_px=512)  # shown at half size
    assert [(s.kind, s.label) for s in strokes] == [("brush", 2), ("region", NO_DEFECT), ("brush", 4)]
    assert strokes[0].points == [(10, 20), (30, 40), (50, 20)] and strokes[0].width == 10  # 5 screen px = 10 px
    assert strokes[2].points == [(0, 511), (5, 5)]  # clipped to the frame


def test_a_long_path_is_thinned_to_what_a_stroke_holds() -> None:
    path = "M0,0" + "".join(f"L{i % 500},{i % 300}" for i in range(5000))
    (stroke,) = strokes_from_shapes([{"path": path, "line": {"color": CLASS_HEX[1]}}], 512, 512, 512)
    assert len(stroke.points) <= MAX_STROKE_POINTS and stroke.points[0] == (0, 0)


def test_the_canvas_draws_with_the_chosen_label_and_tool() -> None:
    fig = label_canvas(np.zeros((300, 600), np.uint8), [], "region", NO_DEFECT, 8)
    layout = fig["layout"]
    assert layout["dragmode"] == "drawclosedpath" and layout["newshape"]["line"]["color"] == "#00bcd4"
    assert (layout["width"], layout["height"]) == (600, 300)
    assert len({hex_ for _, _, hex_ in LABEL_CHOICES}) == len(LABEL_CHOICES)  # the colour says the label


def test_where_the_shadow_disagrees_is_painted_and_said() -> None:
    image = np.full((20, 20), 100, np.uint8)
    mask = np.zeros((20, 20), np.uint8)
    highlight = np.zeros((20, 20), bool)
    highlight[5, 5] = True
    src = overlay_png(image, mask, [], 0.5, highlight=highlight)
    png = cv2.imdecode(np.frombuffer(base64.b64decode(src.split(",", 1)[1]), np.uint8), cv2.IMREAD_COLOR)
    assert png is not None and tuple(png[5, 5]) == (255, 255, 0) and tuple(png[0, 0]) == (100, 100, 100)
    judged = {"severity": Severity.CRITICAL, "would_act": True, "rules": ["warping-persists"], "disagree": 0.0123}
    line = _shadow_line({"id": "cand@abc"}, judged)
    assert "shadow cand@abc: severity critical, would have acted (warping-persists)" in line and "1.23%" in line
    assert "not run on this layer" in _shadow_line({"id": "cand@abc"}, None)


def test_labels_saved_earlier_are_shown_faded_over_the_frame_in_their_colours() -> None:
    saved = np.full((300, 600), 255, np.uint8)
    saved[10:20, 10:20] = 2  # porosity
    fig = label_canvas(np.zeros((300, 600), np.uint8), [], "brush", 2, 8, saved=saved)
    below, above = fig["layout"]["images"]
    assert below["layer"] == "below" and above["layer"] == "above" and 0 < above["opacity"] < 1
    rgba = cv2.imdecode(np.frombuffer(base64.b64decode(above["source"].split(",", 1)[1]), np.uint8),
                        cv2.IMREAD_UNCHANGED)  # fmt: skip
    assert rgba.shape == (300, 600, 4) and rgba[15, 15, 3] == 255 and rgba[100, 100, 3] == 0
    hex_ = CLASS_HEX[2]
    assert tuple(rgba[15, 15, :3]) == tuple(int(hex_[i : i + 2], 16) for i in (5, 3, 1))  # BGR in the file
    nothing = label_canvas(np.zeros((300, 600), np.uint8), [], "brush", 2, 8, saved=np.full((300, 600), 255, np.uint8))
    assert len(nothing["layout"]["images"]) == 1
