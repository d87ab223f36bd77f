"""The dashboard's callbacks: what the page asks of the server every tick and on every click."""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any

from dashboards.render import (
    DISPLAY_PX,
    event_log,
    farm_table,
    label_canvas,
    label_pen,
    overlay_png,
    printer_view,
    trend_figure,
)
from dashboards.state import (
    ControlLink,
    DashboardOptions,
    Records,
    ServiceStatus,
    learnt_text,
    printer_state_text,
    send_labels,
    send_request,
    strokes_from_shapes,
)
from monitor.labels import saved_label
from monitor.record import RecordError, action_boxes
from printer_io.vocabulary import Severity

log = logging.getLogger(__name__)


def _evidence_line(acted: list[dict[str, Any]], boxes: list[tuple[int, int, int, int]]) -> str:
    """What the white rectangles on the frame are: where the rules that acted on this layer measured."""
    if not boxes:
        return ""
    rules = sorted({f"{a['rule']} ({a['action']})" for a in acted if a["state"] == "requested" and a["rule"]})
    return f"  outlined in white: where {', '.join(rules) or 'the rules that acted'} measured on this layer"


def _shadow_line(model: dict[str, str], judged: dict[str, Any] | None) -> str:
    """What the shadow model made of the layer, beside the model in use."""
    if judged is None:
        return f"  shadow {model.get('id', '?')}: not run on this layer"
    acts = f", would have acted ({', '.join(judged['rules'])})" if judged["would_act"] else ""
    return (
        f"  shadow {model.get('id', '?')}: severity {judged['severity']}{acts}, "
        f"disagrees on {100 * judged['disagree']:.2f}% of pixels"
    )


def register(
    app: Any,
    opts: DashboardOptions,
    records: Records,
    services: ServiceStatus | None,
    link: ControlLink | None,
    operators: Mapping[str, str],
    can_control: bool,
) -> None:
    from dash import Input, Output, State, no_update
    from dash.exceptions import PreventUpdate

    @app.callback(
        Output("record", "options"), Output("record", "value"), Input("tick", "n_intervals"), State("record", "value")
    )
    def list_records(_: int | None, current: str | None) -> tuple[list[dict[str, str]], str | None]:
        paths = records.paths()
        options = [{"label": f"{p.parent.name}/{p.name}", "value": records.record_id(p)} for p in paths]
        if current is None and paths:
            return options, options[0]["value"]
        return options, current

    @app.callback(
        Output("layer", "max"),
        Output("layer", "value"),
        Output("record-status", "children"),
        Input("tick", "n_intervals"),
        Input("record", "value"),
        Input("follow", "value"),
        State("layer", "value"),
        State("layer", "max"),
    )
    def track(
        _: int | None, path: str | None, follow: list[str], layer: int | None, shown_max: int | None
    ) -> tuple[Any, Any, str]:
        from dash import ctx

        if not path:
            return 0, 0, "no build record yet" + (f" in {opts.records}" if opts.records else "")
        try:
            r = records.reader(records.resolve(path))
            stored = r.stored_layers()
            state = r.state
        except (RecordError, OSError, KeyError, RuntimeError) as err:
            records.drop(path)  # reopened on the next tick; this line clears itself when a read succeeds
            return no_update, no_update, f"this record cannot be read right now ({err}); retrying"
        if not len(stored):
            return 0, 0, "no layer stored yet"
        last = int(stored.max())
        value: Any
        if layer is None or (ctx.triggered_id in ("record", "follow") and "live" in (follow or [])):
            value = last
        elif "live" in (follow or []) and last != shown_max:
            value = last  # a new layer arrived: follow it
        else:
            # nothing new: leave the slider where it is, so a tick answered late cannot undo a jump
            value = no_update
        live = "being written" if state == "writing" else state
        try:
            telemetry = r.table("telemetry")
            actions = r.table("actions")
        except (OSError, KeyError, RuntimeError):
            telemetry, actions = [], []
        printer = printer_view(actions, telemetry)
        if services is not None:
            pid = str(r.attrs.get("layerwatch/printer", ""))
            own = printer_state_text(services.printer_state(pid))
            if own:  # the printer's own word, live, beside what the record says the monitor did
                printer = f"; {own}" + (f" (the monitor: {printer[2:]})" if printer.startswith("; printer ") else "")
            printer += services.describe(pid)
        try:
            learnt = learnt_text(opts.models_dir, r.json_attr("model") or {})
        except (KeyError, ValueError, RecordError):
            learnt = ""
        return last, value, f"{len(stored)} layers stored, record {live}{printer}{learnt}"

    @app.callback(Output("farm", "children"), Input("farm-tick", "n_intervals"))
    def farm(_: int | None) -> Any:
        """Every printer at a glance, each row a link to its newest build."""
        return farm_table(records.farm(services))

    @app.callback(
        Output("record", "value", allow_duplicate=True),
        Output("layer", "value", allow_duplicate=True),
        Output("follow", "value", allow_duplicate=True),
        Input("url", "search"),
        prevent_initial_call="initial_duplicate",
    )
    def open_link(search: str | None) -> tuple[Any, Any, Any]:
        """``?printer=P&record=NAME[&layer=K]`` (the farm view, a notification's link): that build, that layer."""
        import urllib.parse

        query = urllib.parse.parse_qs((search or "").lstrip("?"))
        printer, name = (query.get(k, [""])[0] for k in ("printer", "record"))
        path = records.find(printer, name) if name else None
        if path is None:
            raise PreventUpdate
        layer = query.get("layer", [""])[0]
        if layer.isdigit():
            return records.record_id(path), int(layer), []
        return records.record_id(path), no_update, ["live"]

    @app.callback(
        Output("layer", "value", allow_duplicate=True),
        Output("follow", "value"),
        Input("jump", "value"),
        prevent_initial_call=True,
    )
    def jump_to(layer: int | None) -> tuple[int, list[str]]:
        """Looking at an incident: its layer, and stop following the live one. A callback of its own: in the
        tick's callback a slow read let the next tick supersede the jump, and the jump was lost."""
        if layer is None:
            raise PreventUpdate
        return int(layer), []

    @app.callback(
        Output("view3d", "figure"),
        Output("view3d", "style"),
        Input("btn-3d", "n_clicks"),
        State("record", "value"),
        prevent_initial_call=True,
    )
    def view3d(clicks: int | None, path: str | None) -> Any:
        if not clicks or not path:
            raise PreventUpdate
        from dashboards.report import ReportError, analyze, figure_3d

        shown = {"height": "480px", "display": "block"}
        try:
            return figure_3d(analyze(records.resolve(path))), shown
        except (ReportError, RecordError, OSError, KeyError, RuntimeError) as err:
            return {"data": [], "layout": {"title": {"text": f"no 3D view: {err}"}}}, shown

    @app.callback(
        Output("jump", "options"), Input("log", "children"), State("record", "value"), State("jump", "options")
    )
    def jump_options(_: Any, path: str | None, shown: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
        acts = records.actions(path)
        seen: dict[str, dict[str, Any]] = {}
        for a in acts:
            if a["incident"] and a["state"] == "requested" and a["incident"] not in seen:
                seen[a["incident"]] = {
                    "label": f"{a['action']} ({a['rule']}) at layer {a['layer']}",
                    "value": a["layer"],
                }
        if list(seen.values()) == (shown or []):
            raise PreventUpdate  # the same list: re-rendering it would close a menu the operator has open
        return list(seen.values())

    @app.callback(
        Output("frame", "src"),
        Output("layer-info", "children"),
        Input("layer", "value"),
        Input("classes", "value"),
        Input("opacity", "value"),
        Input("shadow-diff", "value"),
        State("record", "value"),
    )
    def frame(
        layer: int | None, classes: list[int], opacity: float, diff: list[str], path: str | None
    ) -> tuple[Any, Any]:
        if not path or layer is None:
            raise PreventUpdate
        try:
            found = records.stored_layer(path, layer)
            if found is None:
                return no_update, f"layer {layer}: frame missing in the record"
            r, rows = found
            roi = r.json_attr("roi") if "layerwatch/roi" in r.attrs else None
            mask = r.mask(layer)
            shadow_model = r.shadow_model
            shadow = r.shadow_layers().get(layer) if shadow_model else None
            shadow_mask = r.shadow_mask(layer) if shadow and diff else None
            highlight = shadow_mask != mask if shadow_mask is not None else None
            acted = r.table_at("actions", layer)
            boxes = action_boxes(acted, layer=layer)
            src = overlay_png(
                r.image(layer), mask, sorted(classes or []), float(opacity), roi=roi, highlight=highlight, boxes=boxes
            )
            row = rows[layer]
            m = r.metrics()[layer]
        except (RecordError, OSError, KeyError, IndexError, RuntimeError) as err:
            records.drop(path)  # the status line says so; the frame shown stays until a read succeeds
            log.info("layer %s of %s could not be read (%s); the record is reopened", layer, path, err)
            return no_update, no_update
        flags = [f for f in ("blurry", "frozen", "too_dark", "too_bright") if row[f]]
        severity = Severity.from_index(int(row["severity"])) if "severity" in row.dtype.names else Severity.OK
        ood = float(m["ood_score"]) if "ood_score" in (m.dtype.names or ()) else float("nan")
        info = (
            f"layer {layer}  z = {float(row['z_mm']):.2f} mm  severity {severity}  "
            f"porosity {100 * float(m['porosity_fraction_part']):.2f}% of parts  "
            f"spatter {int(m['spatter_count'])} particles  {_warping_text(m)}"
            + (f"  frame: {', '.join(flags)}" if flags else "")
            + (
                f"  NEEDS REVIEW: unlike the model's training frames ({ood:.1f}x its threshold), not judged"
                if ood > 1
                else ""
            )
            + (
                "  plate outline proposed, not confirmed (amber): outside it nothing is judged"
                if roi and roi.get("source") == "proposed"
                else ""
            )
            + (_shadow_line(shadow_model, shadow) if shadow_model else "")
            + _evidence_line(acted, boxes)
        )
        return src, info

    @app.callback(
        Output("trend", "figure"),
        Output("log", "children"),
        Output("n-layers", "data"),
        Input("layer", "max"),
        Input("layer", "value"),
        State("record", "value"),
    )
    def trend(last: int | None, layer: int | None, path: str | None) -> tuple[Any, Any, Any]:
        if not path:
            raise PreventUpdate
        try:
            r = records.reader(records.resolve(path))
            stored = r.stored_layers()
            m = r.metrics()
            policy = r.json_attr("policy") or {}
            actions = r.table("actions")
            events = r.table("events")
        except (RecordError, OSError, KeyError, RuntimeError) as err:
            records.drop(path)
            log.info("%s could not be read (%s); the record is reopened", path, err)
            return no_update, no_update, no_update
        return trend_figure(stored, m, policy, layer, actions), event_log(events, actions, r), len(stored)

    if can_control:
        assert link is not None

        @app.callback(Output("incident", "options"), Input("log", "children"), State("record", "value"))
        def incidents(_: Any, path: str | None) -> list[dict[str, str]]:
            ids = sorted({a["incident"] for a in records.actions(path) if a["incident"]})
            return [{"label": i.rsplit(":", 2)[-2] + " @ layer " + i.rsplit(":", 1)[-1], "value": i} for i in ids]

        @app.callback(
            Output("control-status", "children"),
            Input("btn-pause", "n_clicks"),
            Input("btn-resume", "n_clicks"),
            Input("btn-false", "n_clicks"),
            Input("btn-confirmed", "n_clicks"),
            Input("btn-roi", "n_clicks"),
            State("record", "value"),
            State("incident", "value"),
            prevent_initial_call=True,
        )
        def control(p: int, r_: int, f: int, c: int, o: int, path: str | None, incident: str | None) -> str:
            from dash import ctx

            return send_request(link, records, ctx.triggered_id, path, incident, operators)

        def fresh_canvas(path: str | None, layer: int | None, tool: str, label: int, width: float) -> tuple[Any, ...]:
            """The canvas of ``layer`` with an empty drawing, the labels saved on it shown faded."""
            if not path or layer is None:
                raise PreventUpdate
            try:
                found = records.stored_layer(path, layer)
                if found is None:
                    raise PreventUpdate
                r = found[0]
                image = r.image(layer)
                saved = saved_label(r, layer)  # what operators painted on this layer before, shown faded
            except (RecordError, OSError, KeyError, IndexError, RuntimeError):
                raise PreventUpdate from None
            figure = label_canvas(image, [], tool, int(label), float(width or 1),
                                  saved=saved[0] if saved is not None else None)  # fmt: skip
            return figure, [], [path, layer, int(image.shape[1])]

        # Three callbacks draw on the canvas, because Dash lets a later call of a callback overtake an earlier
        # one still on its way: the tick sets the record and layer every half second, and a call of the tick's
        # (which leaves the same layer alone) must not swallow the operator's "clear" or change of pen.
        @app.callback(
            Output("label-canvas", "figure"),
            Output("label-shapes", "data"),
            Output("label-for", "data"),
            Input("layer", "value"),
            Input("record", "value"),
            State("label-tool", "value"),
            State("label-value", "value"),
            State("label-width", "value"),
            State("label-for", "data"),
        )
        def label_canvas_figure(
            layer: int | None, path: str | None, tool: str, label: int, width: float, shown: list[Any] | None
        ) -> tuple[Any, ...]:
            """The canvas of a layer the page turned to; the same layer again leaves the drawing alone."""
            if isinstance(shown, list) and shown[:2] == [path, layer]:
                raise PreventUpdate
            return fresh_canvas(path, layer, tool, label, width)

        @app.callback(
            Output("label-canvas", "figure", allow_duplicate=True),
            Output("label-shapes", "data", allow_duplicate=True),
            Output("label-for", "data", allow_duplicate=True),
            Input("btn-label-clear", "n_clicks"),
            Input("label-saved", "data"),
            State("layer", "value"),
            State("record", "value"),
            State("label-tool", "value"),
            State("label-value", "value"),
            State("label-width", "value"),
            prevent_initial_call=True,
        )
        def label_canvas_afresh(
            _c: int, _s: int, layer: int | None, path: str | None, tool: str, label: int, width: float
        ) -> tuple[Any, ...]:
            """ "Clear drawing", or the strokes just saved: an empty drawing over what is saved."""
            return fresh_canvas(path, layer, tool, label, width)

        @app.callback(
            Output("label-canvas", "figure", allow_duplicate=True),
            Input("label-tool", "value"),
            Input("label-value", "value"),
            Input("label-width", "value"),
            State("label-shapes", "data"),
            State("label-for", "data"),
            prevent_initial_call=True,
        )
        def label_pen_change(tool: str, label: int, width: float, shapes: list[Any] | None, shown: Any) -> Any:
            """A new pen on the canvas as it is: the frame is not sent again, the strokes drawn so far stay."""
            from dash import Patch

            if not isinstance(shown, list) or len(shown) != 3:
                raise PreventUpdate
            patch = Patch()
            for key, value in label_pen(tool, int(label), float(width or 1), int(shown[2])).items():
                patch["layout"][key] = value
            patch["layout"]["shapes"] = shapes or []
            return patch

        @app.callback(
            Output("label-shapes", "data", allow_duplicate=True),
            Output("follow", "value", allow_duplicate=True),
            Input("label-canvas", "relayoutData"),
            State("label-shapes", "data"),
            prevent_initial_call=True,
        )
        def drawn(change: dict[str, Any] | None, shapes: list[Any] | None) -> tuple[Any, Any]:
            """Keep what the operator drew (plotly says it in relayoutData) and stop following the live layer,
            which would replace the layer under the pen."""
            shapes = list(shapes or [])
            if not isinstance(change, dict):
                raise PreventUpdate
            if isinstance(change.get("shapes"), list):
                shapes = change["shapes"]
            else:
                edited = False
                for key, value in change.items():
                    m = re.fullmatch(r"shapes\[(\d+)\]\.path", key)
                    if m and int(m.group(1)) < len(shapes) and isinstance(shapes[int(m.group(1))], dict):
                        shapes[int(m.group(1))] = {**shapes[int(m.group(1))], "path": value}
                        edited = True
                if not edited:
                    raise PreventUpdate
            return shapes, []

        @app.callback(
            Output("label-status", "children"),
            Output("label-saved", "data"),
            Input("btn-label-save", "n_clicks"),
            Input("btn-label-frame", "n_clicks"),
            State("record", "value"),
            State("layer", "value"),
            State("label-shapes", "data"),
            State("label-saved", "data"),
            prevent_initial_call=True,
        )
        def save_labels(
            _s: int, _f: int, path: str | None, layer: int | None, shapes: list[Any] | None, saved: int
        ) -> tuple[str, Any]:
            from dash import ctx

            from printer_io.messages import LabelStroke
            from segmentation.classes import NO_DEFECT

            if ctx.triggered_id == "btn-label-frame":
                strokes = [LabelStroke(kind="frame", label=NO_DEFECT)]
            else:
                try:
                    height, width = records.reader(records.resolve(path)).frame_size if path else (0, 0)
                except (RecordError, OSError, KeyError, RuntimeError) as err:
                    return f"cannot read the record: {err}", no_update
                strokes = strokes_from_shapes(shapes or [], width, height, DISPLAY_PX)
            said = send_labels(link, records, path, layer, strokes, operators)
            return said, (saved or 0) + 1 if said.startswith("sent") else no_update


def _warping_text(m: Any) -> str:
    """The warping figure the pause rules act on, under the name their reasons use (older records: painted)."""
    names = m.dtype.names or ()
    if "warping_confirmed_area_mm2" in names:
        return f"confirmed warping {float(m['warping_confirmed_area_mm2']):.1f} mm²"
    return f"warping {float(m['warping_area_mm2']):.1f} mm²"
