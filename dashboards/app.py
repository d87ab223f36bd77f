"""``layerwatch dashboard``: watch builds live, browse records, and (as an operator) pause, resume and judge.

The page reads the build records (the monitor's HDF5 files, opened with SWMR while they are written)
and polls them twice a second, so a new layer shows within about a second of its result. Operator
commands go as MQTT action messages to the monitor, which carries them out through the same controller
as its automatic actions and records them. With an operators file, the page asks for an operator's name and
secret (HTTP basic authentication) and signs each command with them: the monitor verifies the signature and
records that operator (printer_io.credentials). Without one the page is read-only: no controls are shown
and the control callback refuses. Never run Dash's debug mode outside development.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np

from monitor.metrics import metric_unit
from monitor.record import RecordError, RecordReader
from printer_io.vocabulary import ActionKind, Severity, Verdict
from segmentation.classes import CLASS_BGR, CLASS_HEX, CLASS_NAMES, DEFECT_CLASSES, LayerClass

__all__ = ["ControlLink", "DashboardOptions", "create_app"]

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


@dataclass(frozen=True)
class DashboardOptions:
    record: Path | None = None
    records: Path | None = None
    broker: str | None = None
    operators: Mapping[str, str] | None = None  # operator name -> secret (the operators file); None: read-only
    title: str = "LayerWatch"


class ServiceStatus:
    """Retained online/offline status of every service, from the broker (``<prefix>/+/status/+``)."""

    def __init__(self, broker: str) -> None:
        from printer_io.mqtt import MqttConfig, MqttLink
        from printer_io.topics import Topics

        self.status: dict[tuple[str, str], tuple[str, float]] = {}
        config = MqttConfig(url=broker, connect_timeout_s=5)
        # a unique, clean session: two dashboards on one broker must not take each other's connection over
        self.link = MqttLink(
            config, service="dashboard-status", topics=Topics(config.prefix, "dashboard"), ephemeral=True
        )
        self.link.subscribe(f"{config.prefix}/+/status/+", self._on_status)

    def _on_status(self, topic: str, payload: bytes) -> None:
        from printer_io.messages import StatusMessage

        parts = topic.split("/")
        msg = StatusMessage.from_json(payload, topic)
        self.status[(parts[-3], parts[-1])] = (msg.state, msg.time)

    def start(self) -> ServiceStatus:
        try:
            self.link.start()
        except Exception as err:  # the page still works from the records; it says why status is missing
            log.warning("dashboard: no service status from the broker: %s", err)
        return self

    def describe(self, printer: str) -> str:
        down = [
            f"{svc} offline since {time.strftime('%H:%M:%S', time.localtime(t))}"
            for (p, svc), (state, t) in sorted(self.status.items())
            if p == printer and state == "offline"
        ]
        return "; " + ", ".join(down) if down else ""

    def close(self) -> None:
        self.link.close()


class Records:
    """Open readers by path, refreshed on demand; a record that cannot be read gives a message, not an error."""

    def __init__(self, opts: DashboardOptions) -> None:
        self.opts = opts
        self._readers: dict[Path, RecordReader] = {}
        self._ids: dict[str, Path] = {}
        self._lock = threading.Lock()

    def paths(self) -> list[Path]:
        if self.opts.record is not None:
            return [self.opts.record]
        root = self.opts.records
        if root is None or not root.is_dir():
            return []
        files = [p for p in root.rglob("*.h5") if not p.name.endswith((".creating.h5", ".crashed.h5"))]
        return sorted(files, key=lambda p: p.stat().st_mtime, reverse=True)

    def record_id(self, path: Path) -> str:
        """The id the page knows a record by: the browser names records by these ids, never by paths."""
        rid = hashlib.sha256(str(path).encode()).hexdigest()[:16]
        self._ids[rid] = path
        return rid

    def resolve(self, rid: str) -> Path:
        """The record behind an id the page sent; RecordError for any id this dashboard did not give out."""
        path = self._ids.get(rid)
        if path is None:
            for p in self.paths():  # the list may have grown since the page asked
                self.record_id(p)
            path = self._ids.get(rid)
        if path is None:
            raise RecordError(f"{str(rid)[:40]!r} is not a record of this dashboard")
        return self.allowed(path)

    def actions(self, rid: str | None) -> list[dict[str, Any]]:
        """The record's action rows; none when there is no record or it cannot be read (the status says why)."""
        if not rid:
            return []
        try:
            return self.reader(self.resolve(rid)).table("actions")
        except (RecordError, OSError, KeyError):
            return []

    def drop(self, which: str | Path) -> None:
        """Forget a reader (by record id or path) after a read error: the next request opens the record afresh."""
        path = self._ids.get(which, Path(which)) if isinstance(which, str) else which
        with self._lock:
            r = self._readers.pop(path, None)
        if r is not None:
            try:
                r.close()
            except Exception as err:  # closing a broken handle must not break the page
                log.debug("closing the reader of %s: %s", path, err)

    def close(self) -> None:
        for path in list(self._readers):
            self.drop(path)

    def allowed(self, path: str | Path) -> Path:
        """``path`` if it is one of the records this dashboard lists (``--record``, or a file under
        ``--records``), else RecordError: the browser chooses from the server's list, it never names a file."""
        chosen = Path(path)
        if self.opts.record is not None:
            ok = chosen == self.opts.record
        else:
            root = self.opts.records
            ok = (
                root is not None
                and chosen.suffix == ".h5"
                and not chosen.name.endswith((".creating.h5", ".crashed.h5"))
                and chosen.resolve().is_relative_to(root.resolve())
                and chosen.is_relative_to(root)
                and chosen.is_file()
            )
        if not ok:
            raise RecordError(f"{str(path)[:200]!r} is not a record of this dashboard")
        return chosen

    def reader(self, path: Path) -> RecordReader:
        path = self.allowed(path)
        with self._lock:
            r = self._readers.get(path)
            if r is None:
                r = RecordReader(path)
                self._readers[path] = r
            else:
                try:
                    r.refresh()
                except (OSError, KeyError, RuntimeError):
                    r.close()
                    r = RecordReader(path)
                    self._readers[path] = r
            return r


def overlay_png(
    image: np.ndarray,
    mask: np.ndarray,
    classes: list[int],
    opacity: float,
    max_px: int = DISPLAY_PX,
    roi: dict[str, Any] | None = None,
) -> str:
    """A data URL of the frame with the chosen classes tinted, at most ``max_px`` wide, and the build
    plate's outline (``roi``: the record's ``{"points", "source"}``) drawn on it."""
    gray = image if image.dtype == np.uint8 else (image // 256).astype(np.uint8)
    bgr = cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR).astype(np.float32)
    for c in classes:
        sel = mask == c
        if sel.any():
            bgr[sel] = (1 - opacity) * bgr[sel] + opacity * np.array(CLASS_BGR[c], np.float32)
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
    _, buf = cv2.imencode(".png", out)
    return "data:image/png;base64," + base64.b64encode(buf.tobytes()).decode()


MAX_REQUEST_BYTES = 1 << 20


def _operator_login(operators: Mapping[str, str]) -> Callable[[str, str], bool]:
    """HTTP basic authentication of an operator: their name and secret, from the operators file."""
    import hmac

    def known(user: str, password: str) -> bool:
        secret = operators.get(user)
        return secret is not None and hmac.compare_digest(secret.encode(), password.encode())

    return known


def _guard(server: Any, known: Callable[[str, str], bool] | None) -> None:
    """Before Dash sees a request, on every route: the operator's login where there are operators (401 first,
    whatever the body), then the shape of a callback request (400 in one line); a failure inside a callback is one log
    line and a 500 without a traceback."""
    from flask import Response, request
    from werkzeug.exceptions import HTTPException

    server.config["MAX_CONTENT_LENGTH"] = MAX_REQUEST_BYTES

    def check() -> Response | None:
        if known is not None:
            auth = request.authorization
            if auth is None or not known(auth.username or "", auth.password or ""):
                return Response(
                    "Login Required", 401, {"WWW-Authenticate": 'Basic realm="LayerWatch"'}, mimetype="text/plain"
                )
        if request.method == "POST" and request.path.endswith("_dash-update-component"):
            body = request.get_json(silent=True)
            inputs = body.get("inputs") if isinstance(body, dict) else None
            if (
                not isinstance(body, dict)
                or not isinstance(body.get("output"), str)
                or not isinstance(inputs, list)
                or not all(isinstance(i, dict) and "id" in i and "property" in i for i in inputs)
                or not isinstance(body.get("state", []), list)
            ):
                return Response("malformed callback request\n", 400, mimetype="text/plain")
        return None

    server.before_request_funcs.setdefault(None, []).insert(0, check)

    @server.errorhandler(Exception)
    def failed(err: Exception) -> Any:
        if isinstance(err, HTTPException):
            return err
        log.warning("dashboard: %s %s failed: %s: %s", request.method, request.path, type(err).__name__, err)
        return Response("the request failed\n", 500, mimetype="text/plain")


def close_app(app: Any) -> None:
    """Release what :func:`create_app` opened: its MQTT links and record readers."""
    for key in ("LAYERWATCH_CONTROL_LINK", "LAYERWATCH_SERVICE_STATUS", "LAYERWATCH_RECORDS"):
        held = app.server.config.pop(key, None)
        if held is not None:
            held.close()


def create_app(opts: DashboardOptions) -> Any:
    from dash import Dash, Input, Output, State, dcc, html, no_update
    from dash.exceptions import PreventUpdate

    records = Records(opts)
    operators = dict(opts.operators or {})
    can_control = bool(operators) and opts.broker is not None
    app = Dash(__name__, title=opts.title, update_title="")
    app.server.config["LAYERWATCH_CAN_CONTROL"] = can_control
    _guard(app.server, _operator_login(operators) if operators else None)
    link = ControlLink(opts.broker) if can_control and opts.broker else None
    app.server.config["LAYERWATCH_CONTROL_LINK"] = link
    services = ServiceStatus(opts.broker).start() if opts.broker else None
    app.server.config["LAYERWATCH_SERVICE_STATUS"] = services
    app.server.config["LAYERWATCH_RECORDS"] = records

    controls: list[Any] = []
    if can_control:
        controls = [
            html.H4("Operator"),
            html.Div(
                [
                    html.Button("Pause printer", id="btn-pause", n_clicks=0, className="danger"),
                    html.Button("Resume printer", id="btn-resume", n_clicks=0),
                ],
                className="row",
            ),
            dcc.Dropdown(id="incident", placeholder="incident", style={"marginTop": "6px"}),
            html.Div(
                [
                    html.Button("False alarm", id="btn-false", n_clicks=0),
                    html.Button("Confirmed defect", id="btn-confirmed", n_clicks=0),
                ],
                className="row",
            ),
            html.Div(
                [html.Button("Confirm plate outline", id="btn-roi", n_clicks=0)],
                className="row",
                title="the outlined area is what the monitor judges; confirming keeps it for the printer's next builds",
            ),
            html.Div(id="control-status", className="status"),
        ]
    else:
        controls = [
            html.P(
                "Read-only: operator controls need an operators file (--operators-file) and a broker.",
                id="read-only",
                className="muted",
            )
        ]

    class_options = [
        {"label": html.Span(CLASS_NAMES[c], style={"color": CLASS_HEX[c], "fontWeight": "bold"}), "value": int(c)}
        for c in (LayerClass.PART, *DEFECT_CLASSES)
    ]
    app.layout = html.Div(
        [
            html.H2(opts.title),
            html.Div(
                [
                    dcc.Dropdown(id="record", placeholder="build record", clearable=False, style={"width": "60%"}),
                    dcc.Checklist(
                        id="follow",
                        options=[{"label": " follow the live layer", "value": "live"}],
                        value=["live"],
                        style={"marginLeft": "16px"},
                    ),
                ],
                className="row",
            ),
            html.Div(
                [
                    html.Div(id="record-status", className="status"),
                    dcc.Dropdown(id="jump", placeholder="jump to an incident", style={"width": "320px"}),
                ],
                className="row",
            ),
            html.Div(
                [
                    html.Div(
                        [
                            html.Img(id="frame", style={"width": f"{DISPLAY_PX}px", "maxWidth": "100%"}),
                            html.Div(id="layer-info", className="info"),
                            dcc.Slider(
                                id="layer",
                                min=0,
                                max=0,
                                step=1,
                                value=0,
                                marks=None,
                                tooltip={"placement": "bottom"},
                                updatemode="mouseup",
                            ),
                            dcc.Checklist(id="classes", options=class_options, value=[1, 2, 3, 4], inline=True),
                            html.Div(
                                [
                                    html.Span("overlay opacity "),
                                    dcc.Slider(id="opacity", min=0, max=1, step=0.05, value=0.55, marks=None),
                                ],
                                className="opacity",
                            ),
                        ],
                        className="left",
                    ),
                    html.Div(
                        [dcc.Graph(id="trend", style={"height": "360px"}), html.Div(controls, className="controls")],
                        className="right",
                    ),
                ],
                className="main",
            ),
            # a button, not <details>: Dash never hears a <details> element being opened by the user
            html.Div(
                [
                    html.Button("Show the 3D defect view", id="btn-3d", n_clicks=0),
                    html.Span(" the report's view, computed from the record when asked", className="muted"),
                ],
                className="row",
            ),
            dcc.Loading(dcc.Graph(id="view3d", style={"height": "480px", "display": "none"})),
            html.H4("Events and actions"),
            html.Div(id="log", className="log"),
            dcc.Interval(id="tick", interval=500),
            dcc.Store(id="n-layers", data=0),
        ],
        className="page",
    )

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
            printer += services.describe(str(r.attrs.get("layerwatch/printer", "")))
        return last, value, f"{len(stored)} layers stored, record {live}{printer}"

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
        State("record", "value"),
    )
    def frame(layer: int | None, classes: list[int], opacity: float, path: str | None) -> tuple[Any, Any]:
        if not path or layer is None:
            raise PreventUpdate
        try:
            r = records.reader(records.resolve(path))
            rows = r.layers()
            if layer >= len(rows) or not rows[layer]["stored"]:
                return no_update, f"layer {layer}: frame missing in the record"
            roi = r.json_attr("roi") if "layerwatch/roi" in r.attrs else None
            src = overlay_png(r.image(layer), r.mask(layer), sorted(classes or []), float(opacity), roi=roi)
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
            f"spatter {int(m['spatter_count'])} particles  warping {float(m['warping_area_mm2']):.1f} mm²"
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
            policy = r.json_attr("policy")
            actions = r.table("actions")
            events = r.table("events")
        except (RecordError, OSError, KeyError, RuntimeError) as err:
            records.drop(path)
            log.info("%s could not be read (%s); the record is reopened", path, err)
            return no_update, no_update, no_update
        return _figure(stored, m, policy, layer, actions), _log(events, actions, r), len(stored)

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

            return _send(link, records, ctx.triggered_id, path, incident, operators)

    return app


class ControlLink:
    """One MQTT link per printer, opened on the first command, for operator actions."""

    def __init__(self, broker: str) -> None:
        from printer_io.mqtt import MqttConfig

        self.url = broker
        self.config = MqttConfig(url=broker, connect_timeout_s=5)
        self._links: dict[str, Any] = {}
        self._lock = threading.Lock()

    def publish(self, printer: str, payload: bytes) -> None:
        from printer_io.mqtt import MqttLink
        from printer_io.topics import Topics

        with self._lock:
            link = self._links.get(printer)
            if link is None:
                topics = Topics(self.config.prefix, printer)
                link = MqttLink(self.config, service="dashboard", topics=topics, ephemeral=True).start()
                self._links[printer] = link
        link.publish(link.topics.action, payload, wait_s=5)

    def close(self) -> None:
        for link in self._links.values():
            link.close()


def _send(
    link: ControlLink, records: Records, which: Any, path: str | None, incident: str | None,
    operators: Mapping[str, str],
) -> str:  # fmt: skip
    from flask import request

    from printer_io.credentials import Credential, sign
    from printer_io.messages import ActionMessage, ActionState

    user = request.authorization.username if request.authorization else None
    if not user or user not in operators:
        return "log in as an operator to send commands"

    if not path:
        return "open a record first"
    try:
        reader = records.reader(records.resolve(path))
        printer = str(reader.attrs["layerwatch/printer"])
        roi = reader.json_attr("roi") if "layerwatch/roi" in reader.attrs else None
    except (RecordError, OSError, KeyError) as err:
        return f"cannot tell which printer this record belongs to: {err}"
    action = {
        "btn-pause": ActionKind.PAUSE,
        "btn-resume": ActionKind.RESUME,
        "btn-false": ActionKind.FEEDBACK,
        "btn-confirmed": ActionKind.FEEDBACK,
        "btn-roi": ActionKind.ROI,
    }[which]
    verdict: Verdict | Literal[""]
    verdict = {"btn-false": Verdict.FALSE_ALARM, "btn-confirmed": Verdict.CONFIRMED_DEFECT}.get(which, "")
    if action == "feedback" and not incident:
        return "choose an incident first"
    if action == "roi" and not (roi and roi.get("points")):
        return "this record has no plate outline to confirm (the monitor judges the whole frame)"
    msg = ActionMessage(
        printer=printer,
        action=action,
        state=ActionState.REQUESTED,
        request_id=f"dashboard:{uuid.uuid4().hex[:12]}",
        verdict=verdict,
        incident=incident or "",
        reason="from the dashboard",
        detail=json.dumps(roi["points"]) if action == "roi" and roi else "",
    )
    msg = sign(msg, Credential(user, operators[user]))  # the monitor verifies it and records this operator
    try:
        link.publish(printer, msg.to_json())
    except Exception as err:  # the page says so in words; the server goes on
        return f"could not send to the broker {link.url}: {err}"
    what = {"feedback": f"{verdict.replace('_', ' ')} for {incident}", "roi": f"plate outline of {printer}"}.get(
        action, f"{action} {printer}"
    )
    return f"sent at {time.strftime('%H:%M:%S')}: {what}; the monitor carries it out and records it"


_EXPLAINED = {("pause", "paused"), ("pause", "pausing"), ("cancel", "cancelled"), ("cancel", "cancelling")}


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


def _figure(
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


def _log(events: list[dict[str, Any]], actions: list[dict[str, Any]], reader: RecordReader | None = None) -> Any:
    """Events and actions, newest first; a pause carries its reason, metrics and a thumbnail of the evidence."""
    import json

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
                src = overlay_png(layer_img, layer_mask, [1, 2, 3, 4], 0.55, max_px=160)
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
