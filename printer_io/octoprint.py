"""OctoPrint: a thin typed REST client, the printer backend on it, and the push-API layer trigger.

Requires OctoPrint 1.11.6 or newer (security fixes). The API key goes in the ``X-Api-Key`` header only
(never the query string, which ends up in logs); it comes from ``$LAYERWATCH_OCTOPRINT_API_KEY`` or a
file. Least privilege: a user with only the STATUS and PRINT permissions can pause, resume and cancel;
sending G-code also needs CONTROL (docs/printers.md).

A plain ``{"command": "pause"}`` toggles, so a retried pause could resume a paused print: we always
send ``"action": "pause"``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

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
from printer_io.layers import FileposLayerTracker, GcodeLayerMap, ZLayerFilter
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
from printer_io.secrets import read_secret
from printer_io.trigger import LayerCallback, WebsocketTrigger

__all__ = ["API_KEY_ENV", "MIN_VERSION", "OctoPrintClient", "OctoPrintPrinter", "OctoPrintTrigger"]

log = logging.getLogger(__name__)

API_KEY_ENV = "LAYERWATCH_OCTOPRINT_API_KEY"
MIN_VERSION = (1, 11, 6)

_STATES = {
    "printing": PrinterState.PRINTING,
    "pausing": PrinterState.PAUSING,
    "paused": PrinterState.PAUSED,
    "resuming": PrinterState.RESUMING,
    "cancelling": PrinterState.CANCELLING,
    "finishing": PrinterState.PRINTING,
    "error": PrinterState.ERROR,
    "closedOrError": PrinterState.OFFLINE,
}


class OctoPrintClient:
    """Typed calls of OctoPrint's REST API. Errors: PrinterUnreachable, PrinterAuthError, PrinterCommandRefused."""

    def __init__(self, url: str, api_key: str, *, timeout_s: float = 5.0, transport: httpx.BaseTransport | None = None):
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"octoprint url {url!r}: expected http://HOST:PORT")
        self.url = url.rstrip("/")
        self._http = httpx.Client(
            base_url=self.url, headers={"X-Api-Key": api_key}, timeout=timeout_s, transport=transport
        )

    def close(self) -> None:
        self._http.close()

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TimeoutException as err:
            raise PrinterUnreachable(f"OctoPrint at {self.url} did not answer {method} {path} in time") from err
        except httpx.HTTPError as err:
            raise PrinterUnreachable(f"OctoPrint at {self.url} is unreachable ({err}); is it running?") from err
        if response.status_code == 401 or (response.status_code == 403 and path in _IDENTITY_PATHS):
            raise PrinterAuthError(
                f"OctoPrint at {self.url} rejected the API key ({response.status_code} on {path}): check "
                f"${API_KEY_ENV} or the key file"
            )
        if response.status_code == 403:
            need = _permission_for(method, path)
            raise PrinterAuthError(
                f"OctoPrint at {self.url} refused {method} {path} (403): the key's user lacks the {need} permission "
                f"({_NEEDED_FOR[need]}); add it to the user's group in OctoPrint's Access Control settings"
            )
        if response.status_code == 409:
            raise PrinterCommandRefused(f"OctoPrint refused {method} {path}: {_error_text(response)}")
        if response.status_code >= 400:
            raise PrinterError(f"OctoPrint {method} {path} failed: {response.status_code} {_error_text(response)}")
        return response

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        """The JSON answer of a request; a server that answers something else is not OctoPrint (or not its API)."""
        response = self._request(method, path, **kwargs)
        try:
            return response.json()
        except ValueError:
            kind = response.headers.get("content-type", "no content type").split(";")[0]
            raise PrinterError(
                f"{self.url}{path} answered {kind}, not OctoPrint's JSON: check that the URL is an OctoPrint server "
                "(scheme, host, port and any sub-path it is served under)"
            ) from None

    def version(self) -> tuple[int, ...]:
        data = self._json("GET", "/api/version")
        text = str(data.get("server", "0")) if isinstance(data, dict) else "0"
        return tuple(int(p) for p in text.split(".")[:3] if p.isdigit())

    def permissions(self) -> set[str]:
        """The permissions of the API key's user (``/api/currentuser``)."""
        data = self._json("GET", "/api/currentuser")
        perms = data.get("permissions", []) if isinstance(data, dict) else []
        return {str(p if isinstance(p, str) else p.get("key", "")).upper() for p in perms}

    def connection(self) -> dict[str, Any]:
        return dict(self._json("GET", "/api/connection"))

    def connect(self, port: str | None = None, baudrate: int | None = None) -> None:
        body: dict[str, Any] = {"command": "connect"}
        if port:
            body["port"] = port
        if baudrate:
            body["baudrate"] = baudrate
        self._request("POST", "/api/connection", json=body)

    def printer(self) -> dict[str, Any] | None:
        """``/api/printer`` or None when the printer is not operational (OctoPrint answers 409)."""
        try:
            return dict(self._json("GET", "/api/printer", params={"exclude": "temperature,sd"}))
        except PrinterCommandRefused:
            return None

    def job(self) -> dict[str, Any]:
        return dict(self._json("GET", "/api/job"))

    def job_command(self, body: dict[str, Any]) -> None:
        self._request("POST", "/api/job", json=body)

    def gcode(self, lines: Sequence[str]) -> None:
        self._request("POST", "/api/printer/command", json={"commands": list(lines)})

    def upload(self, name: str, data: bytes, *, select: bool = False, print_: bool = False) -> None:
        files = {"file": (name, data, "application/octet-stream")}
        form = {"select": str(select).lower(), "print": str(print_).lower()}
        self._request("POST", "/api/files/local", files=files, data=form)

    def download(self, origin: str, path: str) -> bytes:
        return self._request("GET", f"/downloads/files/{origin}/{quote(path)}").content

    def login_passive(self) -> tuple[str, str]:
        """``(user name, session)`` for authenticating the push socket."""
        data = self._json("POST", "/api/login", json={"passive": True})
        return str(data["name"]), str(data["session"])


#: The OctoPrint permissions LayerWatch uses, and what for (docs/printers.md).
PERMISSIONS = {
    "STATUS": "printer and job state: the monitor's telemetry and the confirmation of a pause",
    "PRINT": "pause, resume and cancel the job",
    "CONTROL": "send G-code: feed and flow adjustments (M220/M221)",
    "FILES_DOWNLOAD": "read the G-code file for the slicer's layer markers (without it, layers follow Z, later)",
}
# what a refused request needed, beyond the permissions above (only asked for where the config says so)
_NEEDED_FOR = {
    **PERMISSIONS,
    "CONNECTION": "connect OctoPrint to the printer's serial port (connect_port): or connect it in OctoPrint and "
    "leave connect_port unset",
}
REQUIRED_PERMISSIONS = ("STATUS", "PRINT")
# requests any valid key may make: a refusal there means the key itself is wrong
_IDENTITY_PATHS = ("/api/version", "/api/currentuser", "/api/login")


def _permission_for(method: str, path: str) -> str:
    if path.startswith("/api/connection") and method == "POST":
        return "CONNECTION"
    if path.startswith("/api/printer/command"):
        return "CONTROL"
    if path.startswith("/downloads/files"):
        return "FILES_DOWNLOAD"
    if path.startswith("/api/job") and method == "POST":
        return "PRINT"
    return "STATUS"


def _error_text(response: httpx.Response) -> str:
    try:
        data = response.json()
    except ValueError:
        kind = response.headers.get("content-type", "").split(";")[0]
        if "html" in kind or response.text.lstrip().startswith("<"):
            return "an HTML page, not OctoPrint's API: check the URL (host, port and any sub-path)"
        return " ".join(response.text.split())[:200]
    return str(data.get("error", data)) if isinstance(data, dict) else str(data)[:200]


def _state_of(printer: dict[str, Any] | None) -> PrinterState:
    if printer is None:
        return PrinterState.OFFLINE
    flags = printer.get("state", {}).get("flags", {})
    for flag in ("cancelling", "pausing", "paused", "resuming", "printing", "finishing", "error", "closedOrError"):
        if flags.get(flag):
            return _STATES[flag]
    return PrinterState.IDLE if flags.get("operational") else PrinterState.OFFLINE


class OctoPrintPrinter:
    """Printer backend over OctoPrint's REST API."""

    supports_exclude_object = False

    def __init__(
        self,
        name: str = "octoprint",
        *,
        url: str = "http://127.0.0.1:5000",
        api_key: str | None = None,
        api_key_file: Path | None = None,
        timeout_s: float = 5.0,
        pause_timeout_s: float = 30.0,
        connect_port: str | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.name = name
        self.url = url
        self._api_key = api_key or read_secret(API_KEY_ENV, api_key_file, "OctoPrint API key")
        self.timeout_s = timeout_s
        self.pause_timeout_s = pause_timeout_s
        self.connect_port = connect_port
        self._transport = transport
        self.client: OctoPrintClient | None = None
        self.poll_s = 0.05  # state polling while a pause is confirmed
        self.missing_permissions: list[str] = []  # optional permissions the key's user lacks (PERMISSIONS)

    def start(self) -> OctoPrintPrinter:
        client = OctoPrintClient(self.url, self._api_key, timeout_s=self.timeout_s, transport=self._transport)
        try:
            version = client.version()
            if version < MIN_VERSION:
                raise ConfigError(
                    f"OctoPrint at {self.url} is {'.'.join(map(str, version))}; LayerWatch needs "
                    f"{'.'.join(map(str, MIN_VERSION))} or newer (security fixes): update OctoPrint"
                )
            have = client.permissions()
            missing = [p for p in REQUIRED_PERMISSIONS if p not in have]
            if missing:
                raise ConfigError(
                    f"OctoPrint at {self.url}: the API key's user lacks {', '.join(missing)} ("
                    + "; ".join(PERMISSIONS[p] for p in missing)
                    + "): add them to the user's group in OctoPrint's Access Control settings"
                )
            self.missing_permissions = [p for p in PERMISSIONS if p not in have]
            for p in self.missing_permissions:
                log.warning("%s: the OctoPrint user lacks %s: %s will not work", self.name, p, PERMISSIONS[p])
            if self.connect_port and client.connection()["current"]["state"] in ("Closed", "Offline"):
                client.connect(self.connect_port)
        except BaseException:
            client.close()
            raise
        self.client = client
        return self

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None

    def _c(self) -> OctoPrintClient:
        if self.client is None:
            raise PrinterError(f"{self.name}: start() the backend first")
        return self.client

    def status(self) -> PrinterStatus:
        c = self._c()
        printer = c.printer()
        state = _state_of(printer)
        job = None
        if state != PrinterState.OFFLINE:
            data = c.job()
            name = (data.get("job") or {}).get("file", {}).get("name")
            if name:
                done = (data.get("progress") or {}).get("completion")
                job = JobInfo(name=name, progress=None if done is None else float(done) / 100.0)
        text = (printer or {}).get("state", {}).get("text", "offline")
        return PrinterStatus(state, job, message=str(text), raw=printer or {})

    def state(self) -> PrinterState:
        return _state_of(self._c().printer())

    def pause(self, timeout_s: float | None = None) -> PauseOutcome:
        c = self._c()

        def send() -> None:
            c.job_command({"command": "pause", "action": "pause"})

        def retry(attempt: int, why: str) -> None:
            log.warning("%s: pause attempt %d not confirmed (%s)", self.name, attempt, why)

        return confirm_pause(
            send,
            self.state,
            timeout_s=timeout_s or self.pause_timeout_s,
            poll_s=self.poll_s,
            on_retry=retry,
            printer=self.name,
        )

    def resume(self) -> None:
        self._c().job_command({"command": "pause", "action": "resume"})

    def cancel(self) -> None:
        self._c().job_command({"command": "cancel"})

    def send_gcode(self, lines: Sequence[str]) -> None:
        self._c().gcode(lines)

    def exclude_object(self, name: str) -> None:
        raise UnsupportedOperation(
            f"{self.name}: OctoPrint has no exclude-object API; use Moonraker/Klipper or cancel the job"
        )


class OctoPrintTrigger(WebsocketTrigger):
    """Layer changes from OctoPrint's push API (SockJS raw websocket ``/sockjs/websocket``).

    Logs in passively with the API key, authenticates the socket with ``{"auth": "user:session"}``, then
    follows ``PrintStarted``/``PrintDone``/``PrintCancelled``/``PrintFailed`` and either the file position
    against the G-code's ``;LAYER`` markers (downloaded at print start) or, without markers, ``ZChange``
    through :class:`ZLayerFilter`. ``on_layer(job_id, LayerChange)`` runs on the trigger's thread.
    """

    name = "octoprint-push"

    def __init__(
        self,
        client: OctoPrintClient,
        on_layer: LayerCallback,
        *,
        z_filter: Callable[[], ZLayerFilter] = ZLayerFilter,
        reconnect_max_s: float = 30.0,
    ) -> None:
        super().__init__(on_layer, reconnect_max_s=reconnect_max_s)
        self.client = client
        self._new_filter = z_filter
        self._tracker: FileposLayerTracker | None = None
        self._zfilter = z_filter()
        self.mode = ""

    def _open(self) -> tuple[str, dict[str, str], list[dict[str, Any]]]:
        user, session = self.client.login_passive()
        url = self.client.url.replace("http", "ws", 1) + "/sockjs/websocket"
        return url, {}, [{"auth": f"{user}:{session}"}]

    def _on_message(self, message: dict[str, Any]) -> None:
        self._handle(message)

    def _handle(self, message: dict[str, Any]) -> None:
        now = time.time()
        if "event" in message:
            event = message["event"] or {}
            kind, payload = event.get("type"), event.get("payload") or {}
            if kind == "PrintStarted":
                self._job_started(payload, now)
            elif kind == "ZChange" and self._tracker is None and self.job_id is not None:
                z = payload.get("new")
                if isinstance(z, int | float):
                    self._emit(self._zfilter.on_z(float(z), now))
            elif kind in ("PrintDone",) and self.job_id is not None:
                self._emit(self._tracker.finish() if self._tracker else self._zfilter.finish())
                self._ended("done")
            elif kind in ("PrintCancelled", "PrintFailed"):
                self._ended("cancelled" if kind == "PrintCancelled" else "failed")
        elif "current" in message and self.job_id is not None:
            current = message["current"] or {}
            if self._tracker is not None:
                filepos = (current.get("progress") or {}).get("filepos")
                if isinstance(filepos, int):
                    self._emit(self._tracker.on_filepos(filepos))
            else:
                self._emit(self._zfilter.on_tick(now))

    def _job_started(self, payload: dict[str, Any], now: float) -> None:
        name = str(payload.get("name") or payload.get("path") or "job")
        self.job_id = f"{name}-{int(now)}"
        self._zfilter = self._new_filter()
        self._tracker = None
        origin, path = payload.get("origin", "local"), payload.get("path")
        if origin == "local" and path:
            try:
                layer_map = GcodeLayerMap.parse(self.client.download("local", str(path)))
            except PrinterError as err:
                log.warning("%s: cannot read %s for layer markers (%s); following Z", self.name, path, err)
            else:
                if len(layer_map):
                    self._tracker = FileposLayerTracker(layer_map)
        self.mode = "markers" if self._tracker else "z"
        log.info("%s: job %s started; layers from %s", self.name, self.job_id, self.mode)


class OctoPrintOptions(BackendOptions):
    url: str = "http://127.0.0.1:5000"
    api_key_file: Path | None = Field(
        default=None, description="file holding the API key (or $LAYERWATCH_<BACKEND>_API_KEY)"
    )
    timeout_s: float = Field(default=5.0, gt=0, le=120, description="HTTP timeout in s")
    connect_port: str | None = Field(default=None, description="serial port to connect if disconnected")


def _create(printer_id: str, o: OctoPrintOptions) -> OctoPrintPrinter:
    return OctoPrintPrinter(
        printer_id, url=o.url, api_key_file=o.api_key_file, timeout_s=o.timeout_s, connect_port=o.connect_port
    )


def _trigger(printer: Printer, o: OctoPrintOptions, sink: LayerSink) -> Callable[[], None]:
    assert isinstance(printer, OctoPrintPrinter) and printer.client is not None, "start the printer first"
    trigger = OctoPrintTrigger(printer.client, sink.on_change)
    trigger.on_end = sink.on_end
    trigger.start()
    return trigger.close


BACKEND = Backend("octoprint", "OctoPrint's REST API and push socket", OctoPrintOptions, _create, _trigger)
