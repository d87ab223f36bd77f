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

import hmac
import logging
from collections.abc import Callable, Mapping
from typing import Any

from dashboards import callbacks
from dashboards.layout import page
from dashboards.state import ControlLink, DashboardOptions, Records, ServiceStatus

__all__ = ["DashboardOptions", "close_app", "create_app"]

log = logging.getLogger(__name__)

MAX_REQUEST_BYTES = 1 << 20  # a callback request is a few kB; nothing larger is parsed


def _operator_login(operators: Mapping[str, str]) -> Callable[[str, str], bool]:
    """HTTP basic authentication of an operator: their name and secret, from the operators file."""

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
    from dash import Dash

    records = Records(opts)
    operators = dict(opts.operators or {})
    mqtt = opts.broker_config()
    services = ServiceStatus(mqtt).start() if mqtt is not None else None
    # controls only where this dashboard's broker user can send them: a refused user could not
    can_control = bool(operators) and mqtt is not None and not (services is not None and services.refused)
    app = Dash(__name__, title=opts.title, update_title="")
    app.server.config["LAYERWATCH_CAN_CONTROL"] = can_control
    _guard(app.server, _operator_login(operators) if operators else None)
    link = ControlLink(mqtt) if can_control and mqtt is not None else None
    app.server.config["LAYERWATCH_CONTROL_LINK"] = link
    app.server.config["LAYERWATCH_SERVICE_STATUS"] = services
    app.server.config["LAYERWATCH_RECORDS"] = records

    app.layout = page(opts, can_control)
    callbacks.register(app, opts, records, services, link, operators, can_control)
    return app
