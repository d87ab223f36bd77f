"""Moonraker (Klipper): the printer backend over its HTTP API and the websocket layer trigger.

Layer changes come from ``print_stats.info.current_layer`` (set by the slicer's ``SET_PRINT_STATS_INFO
CURRENT_LAYER=...``, 1-based) through a ``printer.objects.subscribe`` websocket subscription; without
it, from the G-code Z position through :class:`ZLayerFilter`. Klipper's ``PAUSE`` returns once the
toolhead is parked, so the HTTP answer is the acknowledgement and ``print_stats.state == "paused"`` the
confirmation. An API key (``$LAYERWATCH_MOONRAKER_API_KEY``) is sent as ``X-Api-Key`` where Moonraker
asks for one.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlsplit

import httpx
from pydantic import Field

from printer_io.errors import (
    ConfigError,
    PrinterAuthError,
    PrinterCommandRefused,
    PrinterError,
    PrinterUnreachable,
    UnsupportedOperation,
)
from printer_io.layers import LayerChange, ZLayerFilter
from printer_io.printer import (
    Backend,
    BackendOptions,
    JobInfo,
    LayerSink,
    PauseOutcome,
    Printer,
    PrinterState,
    PrinterStatus,
    confirm_pause,
)
from printer_io.secrets import optional_secret
from printer_io.trigger import LayerCallback, WebsocketTrigger

__all__ = ["API_KEY_ENV", "MoonrakerPrinter", "MoonrakerTrigger", "resolve_api_key"]

log = logging.getLogger(__name__)

API_KEY_ENV = "LAYERWATCH_MOONRAKER_API_KEY"

_STATES = {
    "standby": PrinterState.IDLE,
    "printing": PrinterState.PRINTING,
    "paused": PrinterState.PAUSED,
    "complete": PrinterState.FINISHED,
    "cancelled": PrinterState.CANCELLED,
    "error": PrinterState.ERROR,
}


def resolve_api_key(api_key: str | None, api_key_file: Path | None) -> str | None:
    """The key given, else the environment or the file; None: Moonraker trusts loopback clients by default."""
    return api_key or optional_secret(API_KEY_ENV, api_key_file, "Moonraker API key")


class MoonrakerPrinter:
    """Printer backend over Moonraker's HTTP API."""

    def __init__(
        self,
        name: str = "moonraker",
        *,
        url: str = "http://127.0.0.1:7125",
        api_key: str | None = None,
        api_key_file: Path | None = None,
        timeout_s: float = 5.0,
        pause_timeout_s: float = 60.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"moonraker url {url!r}: expected http://HOST:PORT")
        self.name = name
        self.url = url.rstrip("/")
        key = resolve_api_key(api_key, api_key_file)
        self._headers = {"X-Api-Key": key} if key else {}
        self.timeout_s = timeout_s
        self.pause_timeout_s = pause_timeout_s
        self._transport = transport
        self._http: httpx.Client | None = None
        self.supports_exclude_object = False

    def start(self) -> MoonrakerPrinter:
        self._http = httpx.Client(
            base_url=self.url, headers=self._headers, timeout=self.timeout_s, transport=self._transport
        )
        try:
            objects = self._request("GET", "/printer/objects/list").get("objects", [])
        except BaseException:
            self.close()
            raise
        self.supports_exclude_object = "exclude_object" in objects
        return self

    def close(self) -> None:
        if self._http is not None:
            self._http.close()
            self._http = None

    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        if self._http is None:
            raise PrinterError(f"{self.name}: start() the backend first")
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TimeoutException as err:
            raise PrinterUnreachable(f"Moonraker at {self.url} did not answer {method} {path} in time") from err
        except httpx.HTTPError as err:
            raise PrinterUnreachable(f"Moonraker at {self.url} is unreachable ({err}); is it running?") from err
        if response.status_code in (401, 403):
            raise PrinterAuthError(
                f"Moonraker at {self.url} refused us ({response.status_code} on {path}): set ${API_KEY_ENV} "
                "or add this host to [authorization] trusted_clients"
            )
        try:
            data = response.json()
        except ValueError:
            data = {}
        if response.status_code in (400, 409, 503):
            message = (data.get("error") or {}).get("message", response.text[:200]) if isinstance(data, dict) else ""
            raise PrinterCommandRefused(f"Moonraker refused {method} {path}: {message}")
        if response.status_code >= 400:
            raise PrinterError(f"Moonraker {method} {path} failed: {response.status_code} {response.text[:200]}")
        return data.get("result", data) if isinstance(data, dict) else data

    def query(self, objects: dict[str, Sequence[str] | None]) -> dict[str, Any]:
        params = "&".join(name if fields is None else f"{name}={','.join(fields)}" for name, fields in objects.items())
        return dict(self._request("GET", f"/printer/objects/query?{params}").get("status", {}))

    def state(self) -> PrinterState:
        stats = self.query({"print_stats": ["state"]}).get("print_stats", {})
        return _STATES.get(str(stats.get("state")), PrinterState.OFFLINE)

    def status(self) -> PrinterStatus:
        status = self.query({"print_stats": None, "gcode_move": None, "virtual_sdcard": ["progress"]})
        stats = status.get("print_stats", {})
        move = status.get("gcode_move", {})
        state = _STATES.get(str(stats.get("state")), PrinterState.OFFLINE)
        info = stats.get("info") or {}
        job = None
        if stats.get("filename"):
            layer = info.get("current_layer")
            pos = move.get("gcode_position") or [None] * 3
            job = JobInfo(
                name=str(stats["filename"]),
                progress=status.get("virtual_sdcard", {}).get("progress"),
                layer=int(layer) - 1 if isinstance(layer, int) and layer > 0 else None,
                layer_count=info.get("total_layer"),
                z_mm=pos[2],
            )
        feed = move.get("speed_factor")
        flow = move.get("extrude_factor")
        return PrinterStatus(
            state,
            job,
            feed_pct=None if feed is None else round(float(feed) * 100, 3),
            flow_pct=None if flow is None else round(float(flow) * 100, 3),
            message=str(stats.get("message", "")),
            raw=status,
        )

    def pause(self, timeout_s: float | None = None) -> PauseOutcome:
        def send() -> None:
            self._request("POST", "/printer/print/pause")

        return confirm_pause(send, self.state, timeout_s=timeout_s or self.pause_timeout_s, printer=self.name)

    def resume(self) -> None:
        self._request("POST", "/printer/print/resume")

    def cancel(self) -> None:
        self._request("POST", "/printer/print/cancel")

    def send_gcode(self, lines: Sequence[str]) -> None:
        self._request("POST", "/printer/gcode/script", json={"script": "\n".join(lines)})

    def exclude_object(self, name: str) -> None:
        if not self.supports_exclude_object:
            raise UnsupportedOperation(f"{self.name}: Klipper has no [exclude_object] section; add it to printer.cfg")
        safe = name.replace('"', "")
        self.send_gcode([f'EXCLUDE_OBJECT NAME="{safe}"'])


class MoonrakerTrigger(WebsocketTrigger):
    """Layer changes from Moonraker's websocket (JSON-RPC ``printer.objects.subscribe``)."""

    name = "moonraker-ws"
    OBJECTS: ClassVar[dict[str, list[str]]] = {
        "print_stats": ["state", "filename", "info"],
        "gcode_move": ["gcode_position"],
    }

    def __init__(
        self, url: str, on_layer: LayerCallback, *, api_key: str | None = None, reconnect_max_s: float = 30.0
    ) -> None:
        super().__init__(on_layer, reconnect_max_s=reconnect_max_s)
        self.ws_url = url.rstrip("/").replace("http", "ws", 1) + "/websocket"
        self._headers = {"X-Api-Key": api_key} if api_key else {}
        self._ids = itertools.count(1)
        self._state = ""
        self._layer: int | None = None
        self._z: float | None = None
        self._layer_z: float = 0.0
        self._zfilter = ZLayerFilter()
        self._used_layers = False
        self._cache: dict[str, dict[str, Any]] = {}

    def _open(self) -> tuple[str, dict[str, str], list[dict[str, Any]]]:
        subscribe = {
            "jsonrpc": "2.0",
            "method": "printer.objects.subscribe",
            "params": {"objects": self.OBJECTS},
            "id": next(self._ids),
        }
        return self.ws_url, self._headers, [subscribe]

    def _on_message(self, message: dict[str, Any]) -> None:
        if isinstance(message.get("result"), dict):
            self._update(message["result"].get("status", {}))
        elif message.get("method") == "notify_status_update":
            self._update(message["params"][0])

    def _update(self, status: dict[str, Any]) -> None:
        now = time.time()
        # notifications carry only what changed: keep the whole picture, as Moonraker's own clients do
        for name, fields in status.items():
            if isinstance(fields, dict):
                self._cache.setdefault(name, {}).update(fields)
        stats = status.get("print_stats", {})
        pos = status.get("gcode_move", {}).get("gcode_position")
        new_z = float(pos[2]) if isinstance(pos, list) and len(pos) > 2 and isinstance(pos[2], int | float) else None
        self._layers_from(stats, now)
        if new_z is not None:  # after the layer bookkeeping: a layer completes at the height it was printed at
            self._z = self._layer_z = new_z
            if self.job_id is not None and not self._used_layers:
                self._emit(self._zfilter.on_z(new_z, now))

    def _layers_from(self, stats: dict[str, Any], now: float) -> None:
        state = stats.get("state")
        if state is not None and state != self._state:
            previous, self._state = self._state, str(state)
            if state == "printing" and previous in ("", "standby", "complete", "cancelled", "error"):
                cached = self._cache.get("print_stats", {})
                self.job_id = f"{cached.get('filename') or 'job'}-{int(now)}"
                layer = (cached.get("info") or {}).get("current_layer")
                # a new job may start on the layer number the last one ended on: no change, no notification
                self._layer = layer if isinstance(layer, int) else None
                self._used_layers, self._zfilter = False, ZLayerFilter()
            elif state == "complete" and self.job_id is not None:
                if self._used_layers and self._layer is not None:
                    self._emit([LayerChange(self._layer - 1, self._layer_z)])
                elif not self._used_layers:
                    self._emit(self._zfilter.finish())
                self._ended("done")
            elif state in ("cancelled", "error"):
                self._ended("cancelled" if state == "cancelled" else "failed")
            elif state == "standby":
                self.job_id = None
        info = stats.get("info")
        if isinstance(info, dict) and isinstance(info.get("current_layer"), int) and self.job_id is not None:
            layer = int(info["current_layer"])  # 1-based, set by the slicer's SET_PRINT_STATS_INFO
            if self._layer is not None and layer > self._layer:
                self._emit([LayerChange(n - 1, self._layer_z) for n in range(self._layer, layer)])
            self._layer, self._used_layers = layer, True


class MoonrakerOptions(BackendOptions):
    url: str = "http://127.0.0.1:7125"
    api_key_file: Path | None = Field(
        default=None, description="file holding the API key (or $LAYERWATCH_<BACKEND>_API_KEY)"
    )
    timeout_s: float = Field(default=5.0, gt=0, le=120, description="HTTP timeout in s")


def _create(printer_id: str, o: MoonrakerOptions) -> MoonrakerPrinter:
    return MoonrakerPrinter(printer_id, url=o.url, api_key_file=o.api_key_file, timeout_s=o.timeout_s)


def _trigger(printer: Printer, o: MoonrakerOptions, sink: LayerSink) -> Callable[[], None]:
    trigger = MoonrakerTrigger(o.url, sink.on_change, api_key=resolve_api_key(None, o.api_key_file))
    trigger.on_end = sink.on_end
    trigger.start()
    return trigger.close


BACKEND = Backend(
    "moonraker", "Klipper through Moonraker's HTTP API and websocket", MoonrakerOptions, _create, _trigger
)
