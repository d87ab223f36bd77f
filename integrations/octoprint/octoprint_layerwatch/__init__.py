"""LayerWatch for OctoPrint: layer events and webcam frames from inside OctoPrint, and the monitor's judgement in
OctoPrint's own page.

The plugin speaks LayerWatch's MQTT contract (``contract.py``) to the site's broker as one broker user with the
rights of a printer's bridge and camera: it publishes its printer's layer events and frames and reads its
printer's results and actions. It never moves the printer: a pause is LayerWatch's monitor's, through OctoPrint's
API, verified and recorded there; the plugin only shows it.
"""

from __future__ import annotations

import collections
import io
import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

import octoprint.plugin
from octoprint.events import Events

from .contract import (
    MAX_FRAME_BYTES,
    ContractError,
    Topics,
    action_view,
    end_event,
    event_message,
    frame_envelope,
    image_type,
    layer_event,
    result_view,
    split_envelope,
)
from .layers import COMMAND, LayerChange, LayerMarker, LayerTracker, parse_command

__version__ = "0.1.0"
__all__ = ["LayerWatchPlugin"]

log = logging.getLogger("octoprint.plugins.layerwatch")

KEPT_FRAMES = 12  # the last layers' frames, to pair with their results and incidents
KEPT_INCIDENTS = 20
PENDING_CAPTURES = 4


class _Capture:
    """One frame to take: layer ``change`` of job ``job``, not before ``due`` (the settle delay)."""

    def __init__(self, job: str, change: LayerChange, due: float) -> None:
        self.job, self.change, self.due = job, change, due


class LayerWatchPlugin(
    octoprint.plugin.StartupPlugin,
    octoprint.plugin.ShutdownPlugin,
    octoprint.plugin.SettingsPlugin,
    octoprint.plugin.TemplatePlugin,
    octoprint.plugin.AssetPlugin,
    octoprint.plugin.EventHandlerPlugin,
    octoprint.plugin.SimpleApiPlugin,
):
    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._link: Any = None
        self._topics: Topics | None = None
        self._broker_state = "not set up"
        self._tracker = LayerTracker(self._layer_done, markers=False)
        self._job: str | None = None  # the job id of the print in progress (the bridge's: "<file name>-<unix s>")
        self._filepos = -1  # where in its file the last line of the job OctoPrint sent was
        self._captures: queue.Queue[_Capture | None] = queue.Queue()
        self._frames: collections.OrderedDict[tuple[str, int], bytes] = collections.OrderedDict()
        self._last: dict[str, Any] | None = None
        self._overlays: collections.OrderedDict[tuple[str, int], bytes] = collections.OrderedDict()
        self._incidents: collections.OrderedDict[str, dict[str, Any]] = collections.OrderedDict()
        self._badge = ""
        self._published = 0
        self._worker: threading.Thread | None = None

    # ---- settings ---------------------------------------------------------------------------------------------
    def get_settings_defaults(self) -> dict[str, Any]:
        return {
            "broker": "",  # mqtt://HOST[:PORT] or mqtts://HOST[:PORT]
            "username": "",
            "password": "",
            "ca_file": "",  # mqtts: the CA of the broker's certificate, where it is not a public one
            "printer": "",  # the printer id LayerWatch knows this printer by
            "prefix": "layerwatch",
            "capture": False,  # take the webcam's snapshot at each layer and publish it as the camera node does
            "settle_s": 1.0,
            "mark_uploads": True,  # put "@layerwatch layer N" after the slicer's layer markers of uploaded G-code
            "dashboard_url": "",
        }

    def get_settings_restricted_paths(self) -> dict[str, Any]:
        return {"never": [["password"]]}  # never returned on the API, so never shown or sent to a browser

    def on_settings_save(self, data: dict[str, Any]) -> dict[str, Any]:
        if not data.get("password"):
            data.pop("password", None)  # an empty password field keeps the stored password
        saved = octoprint.plugin.SettingsPlugin.on_settings_save(self, data)
        self._connect()
        return saved

    def get_template_configs(self) -> list[dict[str, Any]]:
        return [
            {"type": "navbar", "custom_bindings": True},
            {"type": "tab", "name": "LayerWatch", "custom_bindings": True},
            {"type": "settings", "custom_bindings": False},
        ]

    def is_template_autoescaped(self) -> bool:
        return True  # every value in the templates is escaped (the tab binds text with Knockout, never HTML)

    def get_assets(self) -> dict[str, list[str]]:
        return {"js": ["js/layerwatch.js"], "css": ["css/layerwatch.css"]}

    # ---- life -------------------------------------------------------------------------------------------------
    def on_after_startup(self) -> None:
        self._worker = threading.Thread(target=self._capture_loop, name="layerwatch-capture", daemon=True)
        self._worker.start()
        self._connect()

    def on_shutdown(self) -> None:
        self._captures.put(None)
        if self._link is not None:
            self._link.close()

    def _connect(self) -> None:
        from .link import BrokerLink

        if self._link is not None:
            self._link.close()
            self._link = None
        s = self._settings
        broker, printer = (s.get(["broker"]) or "").strip(), (s.get(["printer"]) or "").strip()
        if not broker or not printer:
            self._set_state("not set up: set the broker and the printer id in LayerWatch's settings")
            return
        try:
            topics = Topics((s.get(["prefix"]) or "layerwatch").strip(), printer)
            handlers: dict[str, Callable[[bytes], None]] = {
                topics.result: self._on_result,
                topics.action: self._on_action,
            }
            if not s.get_boolean(["capture"]):
                handlers[topics.image] = self._on_image  # the camera node's frames, to show them in the tab
            self._link = BrokerLink(
                broker,
                topics,
                username=s.get(["username"]) or "",
                password=s.get(["password"]) or "",
                ca_file=s.get(["ca_file"]) or "",
                version=__version__,
                handlers=handlers,
                on_state=self._set_state,
            ).start()
        except (ContractError, OSError, ValueError) as err:
            self._set_state(f"not connected: {err}")
            return
        self._topics = topics

    def _set_state(self, state: str) -> None:
        if not state.startswith("connected"):
            log.info("layerwatch: %s", state)
        self._broker_state = state
        self._changed()

    # ---- layers -----------------------------------------------------------------------------------------------
    def on_gcode_sent(
        self, comm: Any, phase: str, cmd: str, cmd_type: Any, gcode: Any, *args: Any, **kwargs: Any
    ) -> None:
        """Every line OctoPrint sent to the printer (its sending thread): the tracker follows the moves."""
        tags = kwargs.get("tags") or ()
        with self._lock:
            if "source:file" in tags:
                pos = next((int(t[8:]) for t in tags if t.startswith("filepos:") and t[8:].isdigit()), 0)
                if self._job is None or pos < self._filepos:  # a file started again from its beginning: a new job
                    self._start_job()
                self._filepos = pos
            self._tracker.on_gcode(gcode, cmd)

    def on_atcommand(self, comm: Any, phase: str, command: str, parameters: str, *args: Any, **kwargs: Any) -> None:
        """``@layerwatch [layer N]`` from the job's G-code: layer N starts, the one before it is done."""
        if command != COMMAND:
            return
        try:
            layer = parse_command(parameters)
        except ValueError as err:
            log.warning("layerwatch: %s; ignored", err)
            return
        with self._lock:
            if self._job is None:
                self._start_job()
            self._tracker.markers = True
            self._tracker.on_command(layer)

    def _start_job(self) -> None:
        job = self._printer.get_current_job() or {}
        file = job.get("file") or {}
        name = str(file.get("name") or file.get("path") or "job")
        self._job = f"{name}-{int(time.time())}"  # as LayerWatch's bridge names an OctoPrint job
        self._tracker.start_job()
        log.info("layerwatch: job %s started", self._job)

    def _layer_done(self, change: LayerChange) -> None:
        job, topics = self._job, self._topics
        if job is None or topics is None or self._link is None:
            return
        self._link.publish(topics.layer, layer_event(topics.printer, job, change.layer, change.z_mm))
        self._published += 1
        log.info("layerwatch: layer %d of %s done at z=%.3f mm", change.layer, job, change.z_mm)
        if self._settings.get_boolean(["capture"]):
            if self._captures.qsize() >= PENDING_CAPTURES:
                self._event("warning", "capture_skipped", f"layer {change.layer}: captures fall behind; skipped", job)
            else:
                settle = max(0.0, min(float(self._settings.get_float(["settle_s"]) or 0.0), 60.0))
                self._captures.put(_Capture(job, change, time.monotonic() + settle))

    def on_event(self, event: str, payload: dict[str, Any]) -> None:
        if event in (Events.PRINT_DONE, Events.PRINT_CANCELLED, Events.PRINT_FAILED):
            with self._lock:
                job, topics = self._job, self._topics
                if event == Events.PRINT_DONE:
                    self._tracker.finish()
                last = self._tracker.last
                self._job, self._filepos = None, -1
                self._tracker.start_job()
            if job is not None and topics is not None and self._link is not None:
                outcome = {Events.PRINT_DONE: "done", Events.PRINT_CANCELLED: "cancelled"}.get(event, "failed")
                layer, z = (last.layer, last.z_mm) if last else (0, 0.0)
                self._link.publish(topics.layer, end_event(topics.printer, job, layer, z, outcome))
            self._clear_badge()
        elif event in (Events.PRINT_RESUMED, Events.PRINT_STARTED):
            self._clear_badge()

    def _clear_badge(self) -> None:
        if self._badge:
            self._badge = ""
            self._changed()

    # ---- frames -----------------------------------------------------------------------------------------------
    def _capture_loop(self) -> None:
        while True:
            item = self._captures.get()
            if item is None:
                return
            time.sleep(max(0.0, item.due - time.monotonic()))
            try:
                self._capture(item)
            except Exception:
                log.exception("layerwatch: capture of layer %d failed", item.change.layer)

    def _capture(self, item: _Capture) -> None:
        topics, layer = self._topics, item.change.layer
        if topics is None or self._link is None:
            return
        why = ""
        for attempt in (1, 2):
            try:
                image = self._snapshot()
                payload = frame_envelope(
                    topics.printer, item.job, layer, item.change.z_mm, image, captured_at=time.time(), attempt=attempt
                )
            except (ContractError, OSError) as err:
                why = str(err)
                if isinstance(err, ContractError):
                    break  # the same webcam gives the same kind of image again
                time.sleep(0.5)
                continue
            self._link.publish(topics.image, payload)
            self._keep_frame(item.job, layer, image)
            return
        self._event("warning", "capture_failed", f"layer {layer}: the webcam's snapshot failed: {why}", item.job, layer)

    def _snapshot(self) -> bytes:
        """OctoPrint's configured snapshot webcam, read to at most MAX_FRAME_BYTES."""
        from octoprint.webcams import get_snapshot_webcam

        webcam = get_snapshot_webcam()
        if webcam is None or not webcam.config.canSnapshot:
            raise ContractError("OctoPrint has no webcam that takes snapshots (Settings, Webcam & Timelapse)")
        data = io.BytesIO()
        try:
            for chunk in webcam.providerPlugin.take_webcam_snapshot(webcam.config.name):
                data.write(chunk)
                if data.tell() > MAX_FRAME_BYTES:
                    raise ContractError(f"the snapshot is larger than the {MAX_FRAME_BYTES} bytes a frame may have")
        except ContractError:
            raise
        except Exception as err:  # the provider's own error (HTTP error, timeout, refused connection)
            raise OSError(f"{type(err).__name__}: {str(err)[:300]}") from None
        return data.getvalue()

    def _keep_frame(self, job: str, layer: int, image: bytes) -> None:
        with self._lock:
            self._frames[(job, layer)] = image
            while len(self._frames) > KEPT_FRAMES:
                self._frames.popitem(last=False)

    def _on_image(self, payload: bytes) -> None:
        header, image = split_envelope(payload)
        job, layer = header.get("job_id"), header.get("layer")
        if header.get("view", "melt") == "melt" and isinstance(job, str) and isinstance(layer, int):
            self._keep_frame(job[:256], layer, image)

    # ---- what the monitor says --------------------------------------------------------------------------------
    def _on_result(self, payload: bytes) -> None:
        assert self._topics is not None
        view = result_view(payload, self._topics.printer)
        overlay = view.pop("overlay")
        with self._lock:
            key = (view["job"], view["layer"])
            if overlay:
                self._overlays[key] = overlay
                while len(self._overlays) > KEPT_FRAMES + KEPT_INCIDENTS:
                    self._overlays.popitem(last=False)
            self._last = view
        self._changed()

    def _on_action(self, payload: bytes) -> None:
        assert self._topics is not None
        view = action_view(payload, self._topics.printer)
        if view["action"] not in ("pause", "cancel", "notify", "gcode"):
            return  # feedback, labels, plate: not incidents
        with self._lock:
            key = view["request_id"] or f"{view['job']}-{view['layer']}-{view['action']}"
            known = self._incidents.get(key) or dict(view)  # every field, so the tab finds each
            known.update({k: v for k, v in view.items() if v not in ("", None, {})})  # a later state adds to it
            self._incidents[key] = known
            self._incidents.move_to_end(key)
            while len(self._incidents) > KEPT_INCIDENTS:
                self._incidents.popitem(last=False)
            evidence = (view["job"], view["layer"])
            if view["layer"] is not None and evidence in self._frames:
                self._frames.move_to_end(evidence)  # kept while the incident is recent
            if view["action"] == "pause" and view["state"] == "confirmed":
                who = f"operator {view['operator']}" if view["operator"] else "LayerWatch"
                why = view["reason"] or view["rule"] or "see the LayerWatch tab"
                self._badge = f"Paused by {who} at layer {view['layer']}: {why}"[:300]
        self._changed()

    def _event(self, level: str, code: str, message: str, job: str = "", layer: int | None = None) -> None:
        log.warning("layerwatch: %s", message)
        topics = self._topics
        if topics is not None and self._link is not None:
            self._link.publish(topics.event, event_message(topics.printer, level, code, message, job, layer))

    def _changed(self) -> None:
        manager = getattr(self, "_plugin_manager", None)
        if manager is not None:
            manager.send_plugin_message(self._identifier, {"type": "changed"})

    # ---- the tab's API ----------------------------------------------------------------------------------------
    def is_api_protected(self) -> bool:
        return True

    def on_api_get(self, request: Any) -> Any:
        import flask
        from octoprint.access.permissions import Permissions

        if not Permissions.STATUS.can():
            flask.abort(403)
        kind = request.args.get("image")
        if kind:
            return self._image(kind, request.args.get("job", ""), request.args.get("layer", ""))
        with self._lock:
            last = dict(self._last) if self._last else None
            incidents = [dict(v) for v in reversed(self._incidents.values())]
            frames, overlays = set(self._frames), set(self._overlays)
        for item in ([last] if last else []) + incidents:
            key = (item.get("job"), item.get("layer"))
            item["has_frame"], item["has_overlay"] = key in frames, key in overlays
        return flask.jsonify(
            broker=self._broker_state,
            printer=self._topics.printer if self._topics else "",
            capture=self._settings.get_boolean(["capture"]),
            dashboard_url=self._settings.get(["dashboard_url"]) or "",
            job=self._job or "",
            published=self._published,
            last=last,
            incidents=incidents,
            badge=self._badge,
        )

    def _image(self, kind: str, job: str, layer: str) -> Any:
        import flask
        from octoprint.access.permissions import Permissions

        if kind not in ("frame", "overlay") or not layer.isdigit() or len(job) > 256:
            flask.abort(400, description="image=frame|overlay&job=JOB&layer=N")
        if kind == "frame" and not Permissions.WEBCAM.can():
            flask.abort(403)
        key = (job, int(layer))
        with self._lock:
            image = (self._frames if kind == "frame" else self._overlays).get(key, b"")
        if not image:
            flask.abort(404)
        response = flask.make_response(image)
        response.headers["Content-Type"] = image_type(image)
        response.headers["Cache-Control"] = "private, max-age=3600"
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response

    # ---- uploads ----------------------------------------------------------------------------------------------
    def mark_upload(self, path: str, file_object: Any, *args: Any, **kwargs: Any) -> Any:
        """``octoprint.filemanager.preprocessor``: an uploaded G-code file gets ``@layerwatch layer N`` after
        its slicer's layer markers (OctoPrint strips comments before sending, so the markers never reach it)."""
        if not self._settings.get_boolean(["mark_uploads"]) or not path.lower().endswith((".gcode", ".gco", ".g")):
            return file_object
        import octoprint.filemanager.util

        class Marked(octoprint.filemanager.util.LineProcessorStream):
            def __init__(self, stream: Any) -> None:
                super().__init__(stream)
                self.marker = LayerMarker()

            def process_line(self, line: bytes) -> bytes | None:
                return self.marker.line(line) or None  # None: OctoPrint leaves the line out

        return octoprint.filemanager.util.StreamWrapper(file_object.filename, Marked(file_object.stream()))


__plugin_name__ = "LayerWatch"
__plugin_identifier__ = "layerwatch"
__plugin_version__ = __version__
__plugin_description__ = "Layer events and webcam frames for LayerWatch, and its judgement of every layer in a tab"
__plugin_license__ = "Apache-2.0"
__plugin_pythoncompat__ = ">=3.9,<4"
__plugin_implementation__ = LayerWatchPlugin()
__plugin_hooks__ = {
    "octoprint.comm.protocol.gcode.sent": __plugin_implementation__.on_gcode_sent,
    "octoprint.comm.protocol.atcommand.sending": __plugin_implementation__.on_atcommand,
    "octoprint.filemanager.preprocessor": __plugin_implementation__.mark_upload,
}
