"""What the dashboard draws: the frame with its class overlay and plate outline, the trends with the
rules' thresholds, the printer's state and the log of events and actions."""

from __future__ import annotations

import base64
import json
import logging
import time
from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np

from monitor.metrics import metric_unit
from monitor.record import RecordReader, action_boxes
from segmentation.classes import CLASS_BGR, CLASS_HEX, CLASS_NAMES, DEFECT_CLASSES, NO_DEFECT, UNLABELLED, LayerClass
from segmentation.imageio import draw_boxes

log = logging.getLogger(__name__)

TREND_METRICS = (
    ("porosity_fraction_part", "porosity in parts", "share", LayerClass.POROSITY),
    ("spatter_fraction", "spatter on the plate", "share", LayerClass.SPATTER),
    ("warping_confirmed_area_mm2", "confirmed warping", "mm²", LayerClass.WARPING),
)
# records made before warping was judged as geometry have this in place of the confirmed area
_OLDER_METRICS = {"warping_confirmed_area_mm2": "warping_stable_area_mm2"}
# the build plate on the frame: confirmed (or configured) in green, proposed and not yet confirmed in amber
ROI_BGR = {"proposed": (0, 170, 255), "confirmed": (80, 200, 80), "config": (80, 200, 80)}
DISPLAY_PX = 640
_EXPLAINED = {("pause", "paused"), ("pause", "pausing"), ("cancel", "cancelled"), ("cancel", "cancelling")}


def overlay_png(
    image: np.ndarray,
    mask: np.ndarray,
    classes: list[int],
    opacity: float,
    max_px: int = DISPLAY_PX,
    roi: dict[str, Any] | None = None,
    highlight: np.ndarray | None = None,
    boxes: Sequence[Sequence[int]] = (),
) -> str:
    """A data URL of the frame with the chosen classes tinted, at most ``max_px`` wide, and the build
    plate's outline (``roi``: the record's ``{"points", "source"}``) drawn on it; ``highlight`` (H, W) bool
    pixels (where a shadow model disagrees) in cyan; ``boxes`` ((x, y, width, height) frame px: where a rule
    that acted on this layer measured) outlined in white."""
    gray = image if image.dtype == np.uint8 else (image // 256).astype(np.uint8)
    bgr = cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR).astype(np.float32)
    for c in classes:
        sel = mask == c
        if sel.any():
            bgr[sel] = (1 - opacity) * bgr[sel] + opacity * np.array(CLASS_BGR[c], np.float32)
    if highlight is not None and highlight.shape == mask.shape:
        bgr[highlight] = (255, 255, 0)
    out = bgr.astype(np.uint8)
    h, w = out.shape[:2]
    scale = 1.0
    if w > max_px:
        scale = max_px / w
        size = (max_px, round(h * scale))
        out = np.asarray(cv2.resize(out, size, interpolation=cv2.INTER_AREA), np.uint8)
    if roi and roi.get("points"):
        pts = np.round(np.asarray(roi["points"], np.float64) * scale).astype(np.int32)
        color = ROI_BGR.get(str(roi.get("source")), ROI_BGR["proposed"])
        cv2.polylines(out, [pts], True, color, 2 if max_px >= 320 else 1)
    draw_boxes(out, boxes, scale, width=2 if max_px >= 320 else 1)
    _, buf = cv2.imencode(".png", out)
    return "data:image/png;base64," + base64.b64encode(buf.tobytes()).decode()


MAX_REQUEST_BYTES = 1 << 20

# what an operator can paint on a layer, each with the colour its strokes are drawn in (the colour is how
# a drawn shape says its label): the classes, "no defect here" (powder or part) and the eraser
LABEL_CHOICES: tuple[tuple[int, str, str], ...] = (
    *((int(c), CLASS_NAMES[c], CLASS_HEX[c]) for c in (LayerClass.PART, *DEFECT_CLASSES, LayerClass.POWDER)),
    (NO_DEFECT, "no defect here", "#00bcd4"),
    (UNLABELLED, "erase (not labelled)", "#9e9e9e"),
)
LABEL_BY_COLOR = {hex_.lower(): value for value, _, hex_ in LABEL_CHOICES}
assert len(LABEL_BY_COLOR) == len(LABEL_CHOICES), "every label needs a colour of its own"


def saved_labels_png(saved: np.ndarray, max_px: int = DISPLAY_PX) -> bytes:
    """Labels already saved on a layer ((H, W) label values, 255 none) as an RGBA PNG in their colours, clear
    where nothing was labelled, at most ``max_px`` wide."""
    h, w = saved.shape
    if w > max_px:
        saved = np.asarray(cv2.resize(saved, (max_px, round(h * max_px / w)), interpolation=cv2.INTER_NEAREST))
    rgba = np.zeros((*saved.shape, 4), np.uint8)
    for value, _, hex_ in LABEL_CHOICES:
        if value == UNLABELLED:
            continue
        rgb = [int(hex_[i : i + 2], 16) for i in (1, 3, 5)]
        rgba[saved == value] = (rgb[2], rgb[1], rgb[0], 255)  # OpenCV writes BGRA
    return bytes(cv2.imencode(".png", rgba)[1].tobytes())


def label_pen(tool: str, label: int, width_px: float, frame_width: int, max_px: int = DISPLAY_PX) -> dict[str, Any]:
    """The canvas's pen (its layout's ``dragmode`` and ``newshape``): an open path (brush, ``width_px`` frame
    px wide) or a closed path (region) in the label's colour, on a frame ``frame_width`` px wide."""
    color = next((hex_ for value, _, hex_ in LABEL_CHOICES if value == label), LABEL_CHOICES[0][2])
    region = tool == "region"
    screen_width = max(1.0, width_px * min(max_px, frame_width) / max(frame_width, 1))
    return {
        "dragmode": "drawclosedpath" if region else "drawopenpath",
        "newshape": {
            "line": {"color": color, "width": 1 if region else screen_width},
            "fillcolor": color if region else "rgba(0,0,0,0)",
            "opacity": 0.5,
        },
    }


def label_canvas(
    image: np.ndarray,
    shapes: list[Any],
    tool: str,
    label: int,
    width_px: float,
    max_px: int = DISPLAY_PX,
    saved: np.ndarray | None = None,
) -> dict[str, Any]:
    """The figure an operator draws labels on: the frame (gray, at most ``max_px`` wide) in frame-pixel
    coordinates, the labels saved on it earlier (``saved``: (H, W) label values, faded, not editable), the
    strokes drawn so far, and the pen: an open path (brush, ``width_px`` frame px wide) or a closed path
    (region) in the label's colour."""
    gray = image if image.dtype == np.uint8 else (image // 256).astype(np.uint8)
    h, w = gray.shape[:2]
    shown = gray
    if w > max_px:
        shown = np.asarray(cv2.resize(gray, (max_px, round(h * max_px / w)), interpolation=cv2.INTER_AREA), np.uint8)
    _, buf = cv2.imencode(".png", shown)
    place = {"xref": "x", "yref": "y", "x": 0, "y": 0, "sizex": w, "sizey": h, "sizing": "stretch"}
    images = [{"source": "data:image/png;base64," + base64.b64encode(buf.tobytes()).decode(), **place,
               "layer": "below"}]  # fmt: skip
    if saved is not None and saved.shape == (h, w) and (saved != UNLABELLED).any():
        png = base64.b64encode(saved_labels_png(saved, max_px)).decode()
        images.append({"source": "data:image/png;base64," + png, **place, "layer": "above", "opacity": 0.35,
                       "name": "saved labels"})  # fmt: skip
    return {
        "data": [],
        "layout": {
            "images": images,
            "xaxis": {"range": [0, w], "visible": False, "fixedrange": True},
            "yaxis": {"range": [h, 0], "visible": False, "fixedrange": True},
            "margin": {"l": 0, "r": 0, "t": 0, "b": 0},
            # the plot area is the frame, at its shown size: no axis stretches it
            "autosize": False,
            "width": min(max_px, w),
            "height": round(min(max_px, w) * h / w),
            **label_pen(tool, label, width_px, w, max_px),
            "shapes": shapes,
            "uirevision": "labels",
        },
    }  # fmt: skip


def farm_table(rows: list[dict[str, Any]]) -> Any:
    """The farm view: one row a printer, each a link to its newest build (the page opens it)."""
    import urllib.parse

    from dash import dcc, html

    if not rows:
        return html.P("no printer has a build record yet", className="muted")
    head = ["printer", "printer state", "record", "job", "layer", "severity", "last incident", "", "services"]
    body = []
    for row in rows:
        query = urllib.parse.urlencode({"printer": row["printer"], "record": row["record"]})
        inc = row.get("incident")
        incident = f"{inc['action']} ({inc['rule']}) at layer {inc['layer']}" if inc else "none"
        if inc:
            query += f"&layer={inc['layer']}"
        severity = row.get("severity", "")
        cells = [
            dcc.Link(row["printer"], href=f"?{query}", className="farm-link"),
            row.get("printer_state", ""),  # what the printer itself says, live
            row.get("error") or row.get("state", ""),  # the record's state
            row.get("job", ""),
            _layer(row),
            severity,
            incident,
            html.Img(src=row["thumbnail"], className="thumb") if row.get("thumbnail") else "",
            _services(row.get("services")),
        ]
        body.append(html.Tr([html.Td(c) for c in cells], className=f"lvl-{severity}", id=f"farm-{row['printer']}"))
    return html.Table([html.Tr([html.Th(h) for h in head]), *body], className="farm")


def _layer(row: dict[str, Any]) -> str:
    """The newest layer: the printer's own where it is ahead of the record (frames not judged yet)."""
    stored, live = row.get("layer"), row.get("live_layer")
    if live is not None and (stored is None or live > stored):
        return f"{live} (judged up to {stored})" if stored is not None else str(live)
    return "" if stored is None else str(stored)


def _services(said: str | None) -> str:
    """The services of a printer that are offline; "online" when the broker says none is (or the worker that
    judges it, where workers share the site); blank without a broker."""
    if said is None:
        return ""
    return said or "online"


def printer_view(actions: list[dict[str, Any]], telemetry: list[dict[str, Any]]) -> str:
    """What the printer is doing, as the monitor knows it: its own pause, resume or cancel (who asked, at
    which layer, why, in words) when that is newer than the last state the printer reported."""
    moves = [a for a in actions if a["action"] in ("pause", "resume", "cancel")]
    last_move = max(moves, key=lambda a: a["time"]) if moves else None
    last_seen = telemetry[-1] if telemetry else None
    agrees = (
        last_move is not None and last_seen is not None and (last_move["action"], last_seen["state"]) in _EXPLAINED
    )  # the printer still is what the monitor made it: the monitor's words say why
    if last_move is not None and (last_seen is None or last_move["time"] >= last_seen["time"] or agrees):
        try:
            detail = json.loads(last_move["detail"] or "{}")
        except ValueError:
            detail = {}
        who = (
            f"operator {detail.get('operator') or 'unknown'}"
            if last_move["rule"] == "operator"
            else f"rule {last_move['rule']}"
        )
        verb = {"pause": "paused", "resume": "resumed", "cancel": "cancelled"}[last_move["action"]]
        state = last_move["state"]
        if state == "requested":
            text = f"{last_move['action']} requested by {who} at layer {last_move['layer']}"
        elif state == "confirmed":
            text = f"{verb} by {who} at layer {last_move['layer']}"
        else:
            text = f"{last_move['action']} by {who} at layer {last_move['layer']} {state.replace('_', ' ')}"
        reason = str(detail.get("reason") or "")
        return f"; printer {text}" + (f": {reason}" if reason and last_move["action"] != "resume" else "")
    if last_seen is not None:
        when = time.strftime("%H:%M:%S", time.localtime(last_seen["time"]))
        what = "unreachable (offline)" if last_seen["state"] == "offline" else last_seen["state"]
        return f"; printer {what} at layer {last_seen['layer']} ({when})"
    return ""


def _fired_metrics(policy: dict[str, Any], actions: list[dict[str, Any]]) -> list[tuple[str, str, str, int]]:
    """The metrics of the rules that stopped the printer, as trend rows, where the trend lacks them."""
    shown = {name for name, *_ in TREND_METRICS}
    rules = {r.get("name"): r for r in policy.get("rules", [])}
    out: list[tuple[str, str, str, int]] = []
    for a in actions:
        rule = rules.get(a["rule"])
        if a["action"] not in ("pause", "cancel") or rule is None:
            continue
        metric = str(rule.get("metric", "")) + ("_part" if rule.get("region") == "part" else "")
        if metric and metric not in shown:
            shown.add(metric)
            out.append((metric, f"{metric} (rule {a['rule']})", metric_unit(metric), _metric_class(metric)))
    return out


def _metric_class(metric: str) -> LayerClass:
    """The defect class a metric measures (by its name), for its colour; porosity's when none is named."""
    return next((c for c in DEFECT_CLASSES if CLASS_NAMES[c] in metric), LayerClass.POROSITY)


def trend_figure(
    stored: np.ndarray,
    m: np.ndarray,
    policy: dict[str, Any],
    layer: int | None,
    actions: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    xs = [int(k) for k in stored]
    data = []
    names = m.dtype.names or ()
    rows = [*TREND_METRICS, *_fired_metrics(policy, actions or [])]
    for name, label, unit, cid in rows:
        column = name if name in names else _OLDER_METRICS.get(name, name)
        ys = [float(m[k][column]) for k in xs] if len(xs) and column in names else []
        yaxis = "y" if unit == "share" else "y2"
        data.append(
            {
                "x": xs,
                "y": ys,
                "name": f"{label} ({unit})",
                "mode": "lines+markers",
                "yaxis": yaxis,
                "line": {"color": CLASS_HEX[cid]},
            }
        )
    shapes = []
    for rule in policy.get("rules", []):
        metric = rule.get("metric", "") + ("_part" if rule.get("region") == "part" else "")
        for name, _label, unit, cid in rows:
            if name == metric and rule.get("above") is not None:
                shapes.append(
                    {
                        "type": "line",
                        "xref": "paper",
                        "x0": 0,
                        "x1": 1,
                        "yref": "y" if unit == "share" else "y2",
                        "y0": rule["above"],
                        "y1": rule["above"],
                        "line": {"dash": "dot", "color": CLASS_HEX[cid]},
                    }
                )
    if layer is not None:
        shapes.append(
            {
                "type": "line",
                "xref": "x",
                "x0": layer,
                "x1": layer,
                "yref": "paper",
                "y0": 0,
                "y1": 1,
                "line": {"color": "#888", "width": 1},
            }
        )
    return {
        "data": data,
        "layout": {
            "margin": {"l": 50, "r": 50, "t": 30, "b": 40},
            "xaxis": {"title": {"text": "layer"}},
            "yaxis": {"title": {"text": "share of area"}, "tickformat": ".1%"},
            "yaxis2": {"title": {"text": "mm², mm, count"}, "overlaying": "y", "side": "right"},
            "legend": {"orientation": "h", "y": 1.12},
            "shapes": shapes,
            "uirevision": "keep",
        },
    }


def event_log(events: list[dict[str, Any]], actions: list[dict[str, Any]], reader: RecordReader | None = None) -> Any:
    """Events and actions, newest first; a pause carries its reason, metrics and a thumbnail of the evidence."""

    from dash import html

    rows: list[tuple[float, int, str, str, Any]] = [
        (e["time"], e["layer"], e["level"], f"{e['code']}: {e['message']}", None) for e in events
    ]
    stored = set(int(k) for k in reader.stored_layers()) if reader is not None else set()
    for a in actions:
        who = " (operator)" if a["rule"] == "operator" else ""
        text = f"{a['action']} {a['state']}{who} - {a['rule']}"
        thumb = None
        if a["action"] == "pause" and a["state"] == "requested":
            try:
                detail = json.loads(a["detail"] or "{}")
            except ValueError:
                detail = {}
            if detail.get("reason"):
                text += f": {detail['reason']}"
            if reader is not None and int(a["layer"]) in stored:
                layer_img, layer_mask = reader.image(int(a["layer"])), reader.mask(int(a["layer"]))
                boxes = action_boxes([a])
                src = overlay_png(layer_img, layer_mask, [1, 2, 3, 4], 0.55, max_px=160, boxes=boxes)
                thumb = html.Img(src=src, className="thumb", title=f"evidence: layer {a['layer']}")
        rows.append((a["time"], a["layer"], a["state"], text, thumb))
    rows.sort(key=lambda r: r[0], reverse=True)
    if not rows:
        return html.P("nothing yet", className="muted")
    return html.Table(
        [html.Tr([html.Th("time"), html.Th("layer"), html.Th("level"), html.Th("what"), html.Th("evidence")])]
        + [
            html.Tr(
                [
                    html.Td(time.strftime("%H:%M:%S", time.localtime(t))),
                    html.Td(str(layer)),
                    html.Td(level),
                    html.Td(text),
                    html.Td(thumb if thumb is not None else ""),  # a component with no children is falsy
                ],
                className=f"lvl-{level}",
            )
            for t, layer, level, text, thumb in rows[:200]
        ]
    )
