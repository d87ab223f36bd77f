"""The dashboard page: the record and layer pickers, the frame, the trends, the 3D view, the log and,
for an operator, the controls."""

from __future__ import annotations

from typing import Any

from dashboards.render import DISPLAY_PX, LABEL_CHOICES
from dashboards.state import DashboardOptions
from segmentation.classes import CLASS_HEX, CLASS_NAMES, DEFECT_CLASSES, NO_DEFECT, LayerClass


def page(opts: DashboardOptions, can_control: bool) -> Any:
    from dash import dcc, html

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

    labelling: list[Any] = []
    if can_control:
        labelling = [
            html.H4("Label this layer"),
            html.P(
                "Paint what the layer really shows: it is stored in the record with your name and teaches the next "
                "fine-tuned model (layerwatch labels export, layerwatch finetune --records).",
                className="muted",
            ),
            html.Div(
                [
                    dcc.Dropdown(
                        id="label-value",
                        options=[
                            {"label": html.Span(name, style={"color": hex_, "fontWeight": "bold"}), "value": value}
                            for value, name, hex_ in LABEL_CHOICES
                        ],
                        value=NO_DEFECT,
                        clearable=False,
                        style={"width": "220px"},
                    ),
                    dcc.RadioItems(
                        id="label-tool",
                        options=[{"label": " brush", "value": "brush"}, {"label": " region", "value": "region"}],
                        value="brush",
                        inline=True,
                    ),
                    html.Span("width (px)"),
                    html.Div(
                        dcc.Slider(id="label-width", min=1, max=64, step=1, value=8, marks=None),
                        style={"width": "160px"},
                    ),
                ],
                className="row",
            ),
            dcc.Graph(
                id="label-canvas",
                config={"displaylogo": False, "modeBarButtonsToAdd": ["eraseshape"], "scrollZoom": False},
            ),
            html.Div(
                [
                    html.Button("Save labels", id="btn-label-save", n_clicks=0),
                    html.Button("Clear drawing", id="btn-label-clear", n_clicks=0),
                    html.Button("No defect on this whole frame", id="btn-label-frame", n_clicks=0),
                ],
                className="row",
            ),
            html.Div(id="label-status", className="status"),
            dcc.Store(id="label-shapes", data=[]),
            dcc.Store(id="label-saved", data=0),
            dcc.Store(id="label-for", data=None),  # the record, layer and frame width the canvas shows
        ]

    class_options = [
        {"label": html.Span(CLASS_NAMES[c], style={"color": CLASS_HEX[c], "fontWeight": "bold"}), "value": int(c)}
        for c in (LayerClass.PART, *DEFECT_CLASSES)
    ]
    return html.Div(
        [
            html.H2(opts.title),
            dcc.Location(id="url", refresh=False),
            html.Details(
                [html.Summary("Printers"), html.Div(id="farm", className="log")],
                open=True,
                id="farm-box",
            ),
            dcc.Interval(id="farm-tick", interval=2000),
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
                            dcc.Checklist(
                                id="shadow-diff",
                                options=[{"label": " where the shadow model disagrees (cyan)", "value": "on"}],
                                value=[],
                                inline=True,
                            ),
                            html.Div(
                                [
                                    html.Span("overlay opacity "),
                                    dcc.Slider(id="opacity", min=0, max=1, step=0.05, value=0.55, marks=None),
                                ],
                                className="opacity",
                            ),
                            *labelling,
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
