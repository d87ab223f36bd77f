"""A small stand-in for Klipper's API socket, so that the real Moonraker can be tested without Klipper.

It speaks Klippy's Unix-socket protocol (JSON objects terminated by ``0x03``) and answers what Moonraker
asks at start-up (``info``, ``list_endpoints``, ``objects/list``, ``objects/subscribe``,
``gcode/subscribe_output``, ``register_remote_method``) and what a client drives through Moonraker
(``objects/query``, ``gcode/script``, ``pause_resume/*``). The printer behind it is LayerWatch's
:class:`VirtualPrinter`. What it does not cover: Klipper's kinematics, macros, configuration parsing and
its real timing; what it does cover: Moonraker's own HTTP/websocket API, its Klippy connection and its
status subscriptions (docs/printers.md).
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
from pathlib import Path
from typing import Any

from printer_io.printer import PrinterState
from printer_io.virtual import VirtualPrinter

_PRINT_STATS = {
    PrinterState.IDLE: "standby",
    PrinterState.PRINTING: "printing",
    PrinterState.PAUSING: "printing",
    PrinterState.PAUSED: "paused",
    PrinterState.RESUMING: "printing",
    PrinterState.CANCELLED: "cancelled",
    PrinterState.FINISHED: "complete",
}

ENDPOINTS = [
    "info", "emergency_stop", "objects/list", "objects/query", "objects/subscribe", "gcode/script", "gcode/help",
    "pause_resume/pause", "pause_resume/resume", "pause_resume/cancel",
    "gcode/subscribe_output", "register_remote_method", "list_endpoints",
]  # fmt: skip


class KlippyStandIn:
    def __init__(self, socket_path: Path, printer: VirtualPrinter) -> None:
        self.path = socket_path
        self.printer = printer
        self.scripts: list[str] = []
        self.current_layer: int | None = None
        self.total_layer: int | None = None
        self.filename = ""
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="klippy-standin", daemon=True)
        self._writers: list[asyncio.StreamWriter] = []
        self._subs: list[tuple[asyncio.StreamWriter, dict[str, Any], dict[str, Any]]] = []
        self._gcode_subs: list[tuple[asyncio.StreamWriter, dict[str, Any]]] = []
        self._server: asyncio.AbstractServer | None = None
        self._pusher: asyncio.Task[None] | None = None

    def start(self) -> KlippyStandIn:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    async def _start(self) -> None:
        self._server = await asyncio.start_unix_server(self._serve, path=str(self.path))
        self._pusher = self._loop.create_task(self._push_status())

    def close(self) -> None:
        async def _close() -> None:
            if self._pusher is not None:
                self._pusher.cancel()
            if self._server is not None:
                self._server.close()
            for w in self._writers:
                w.close()

        asyncio.run_coroutine_threadsafe(_close(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    # ---- status objects ---------------------------------------------------------------------------
    def status(self) -> dict[str, dict[str, Any]]:
        st = self.printer.status()
        job = st.job
        z = job.z_mm if job is not None and job.z_mm is not None else 0.0
        return {
            "webhooks": {"state": "ready", "state_message": "Printer is ready"},
            "print_stats": {
                "state": _PRINT_STATS.get(st.state, "error"),
                "filename": self.filename,
                "info": {"current_layer": self.current_layer, "total_layer": self.total_layer},
            },
            "pause_resume": {"is_paused": st.state == PrinterState.PAUSED},
            "gcode_move": {
                "gcode_position": [0.0, 0.0, z, 0.0],
                "speed_factor": (st.feed_pct or 100.0) / 100.0,
                "extrude_factor": (st.flow_pct or 100.0) / 100.0,
            },
            "virtual_sdcard": {"progress": job.progress if job else 0.0, "is_active": st.state.value == "printing"},
            "display_status": {"progress": job.progress if job else 0.0, "message": st.message},
            "exclude_object": {
                "objects": [{"name": n} for n in self.printer.objects],
                "excluded_objects": list(self.printer.excluded),
                "current_object": None,
            },
            "toolhead": {"position": [0.0, 0.0, z, 0.0], "homed_axes": "xyz"},
            "configfile": {"config": {}, "settings": {}},
        }

    @staticmethod
    def _select(status: dict[str, dict[str, Any]], objects: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, fields in objects.items():
            if name in status:
                obj = status[name]
                out[name] = {k: v for k, v in obj.items() if fields is None or k in fields}
        return out

    async def _push_status(self) -> None:
        last: dict[str, Any] = {}
        while True:
            await asyncio.sleep(0.05)
            # layer-wise slicer info, as SET_PRINT_STATS_INFO would set it, from the virtual printer's progress
            job = self.printer.status().job
            if job is not None and self.current_layer is not None and job.layer is not None:
                self.current_layer = job.layer + 1
            now = self.status()
            for writer, objects, template in list(self._subs):
                diff: dict[str, Any] = {}
                for name, obj in self._select(now, objects).items():
                    changed = {k: v for k, v in obj.items() if last.get(name, {}).get(k) != v}
                    if changed:
                        diff[name] = changed
                if diff:
                    self._send(writer, {**template, "params": {"eventtime": time.monotonic(), "status": diff}})
            last = now

    # ---- protocol ---------------------------------------------------------------------------------
    def _send(self, writer: asyncio.StreamWriter, message: dict[str, Any]) -> None:
        if not writer.is_closing():
            writer.write(json.dumps(message).encode() + b"\x03")

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.append(writer)
        try:
            while True:
                data = await reader.readuntil(b"\x03")
                request = json.loads(data[:-1])
                try:
                    result = await self._handle(writer, request["method"], request.get("params") or {})
                    reply = {"id": request.get("id"), "result": result}
                except Exception as err:
                    reply = {"id": request.get("id"), "error": {"message": str(err)}}
                self._send(writer, reply)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self._subs = [s for s in self._subs if s[0] is not writer]

    async def _handle(self, writer: asyncio.StreamWriter, method: str, params: dict[str, Any]) -> Any:
        if method == "info":
            return {
                "state": "ready", "state_message": "Printer is ready", "hostname": "standin",
                "software_version": "v0.12.0-layerwatch-standin", "cpu_info": "", "klipper_path": "/tmp",
                "python_path": "/usr/bin/python3", "log_file": "/tmp/klippy.log", "config_file": "/tmp/printer.cfg",
            }  # fmt: skip
        if method == "list_endpoints":
            return {"endpoints": ENDPOINTS}
        if method == "objects/list":
            return {"objects": list(self.status())}
        if method == "objects/query":
            return {"eventtime": time.monotonic(), "status": self._select(self.status(), params["objects"])}
        if method == "objects/subscribe":
            template = params.get("response_template") or {}
            self._subs.append((writer, params["objects"], template))
            return {"eventtime": time.monotonic(), "status": self._select(self.status(), params["objects"])}
        if method == "gcode/subscribe_output":
            self._gcode_subs.append((writer, params.get("response_template") or {}))
            return {}
        if method == "register_remote_method":
            return {}
        if method == "gcode/script":
            return await self._script(str(params.get("script", "")))
        if method == "pause_resume/pause":
            return await self._script("PAUSE")
        if method == "pause_resume/resume":
            return await self._script("RESUME")
        if method == "pause_resume/cancel":
            return await self._script("CANCEL_PRINT")
        if method == "gcode/help":
            return {"PAUSE": "Pauses the current print", "EXCLUDE_OBJECT": "Exclude an object"}
        raise ValueError(f"unknown method {method}")

    async def _script(self, script: str) -> dict[str, Any]:
        for line in script.splitlines():
            line = line.strip()
            if not line:
                continue
            self.scripts.append(line)
            word = line.split()[0].upper()
            params = dict(re.findall(r"([A-Z_]+)=(\"[^\"]*\"|\S+)", line.upper()))
            if word == "SDCARD_PRINT_FILE":
                self.filename = params.get("FILENAME", "job.gcode").strip('"').lower()
                self.printer.start_job(self.filename)
                self.current_layer, self.total_layer = 1, self.printer.layers
            elif word == "SET_PRINT_STATS_INFO":
                if "CURRENT_LAYER" in params:
                    self.current_layer = int(params["CURRENT_LAYER"])
            elif word == "PAUSE":
                self.printer.send_gcode(["PAUSE"])
                while self.printer.status().state == PrinterState.PAUSING:  # Klipper's PAUSE returns when paused
                    await asyncio.sleep(0.01)
            else:
                self.printer.send_gcode([line])
            for writer, template in self._gcode_subs:
                self._send(writer, {**template, "params": {"response": f"// {line}"}})
        return {}
