"""The part every websocket layer trigger shares: a thread that keeps one socket open and reports layers.

Subclasses say how to open the socket (:meth:`WebsocketTrigger._open`: URL, headers, the first messages
to send) and what a message means (:meth:`WebsocketTrigger._on_message`); they report completed layers
with :meth:`WebsocketTrigger._emit`. Reconnects back off exponentially up to ``reconnect_max_s``; a lost
connection is logged once, not every retry.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from typing import Any

from printer_io.errors import PrinterError
from printer_io.layers import LayerChange

__all__ = ["EndCallback", "LayerCallback", "WebsocketTrigger"]

log = logging.getLogger(__name__)

LayerCallback = Callable[[str, LayerChange], None]
#: ``(job_id, last layer, its z in mm, outcome)``: the job ended (done, cancelled, failed)
EndCallback = Callable[[str, int, float, str], None]


class WebsocketTrigger:
    name = "trigger"

    def __init__(self, on_layer: LayerCallback, *, reconnect_max_s: float = 30.0) -> None:
        self.on_layer = on_layer
        self.reconnect_max_s = reconnect_max_s
        self.connected = threading.Event()
        self.job_id: str | None = None
        self.on_end: EndCallback | None = None  # set to hear of the end of a job
        self._last: LayerChange | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._ws: Any = None

    def start(self) -> WebsocketTrigger:
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        ws = self._ws
        if ws is not None:
            ws.close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _open(self) -> tuple[str, dict[str, str], list[dict[str, Any]]]:
        """``(url, headers, first messages)``; may raise PrinterError (e.g. a failed login)."""
        raise NotImplementedError

    def _on_message(self, message: dict[str, Any]) -> None:
        raise NotImplementedError

    def _run(self) -> None:
        from websockets.exceptions import WebSocketException
        from websockets.sync.client import connect

        delay, announced = 0.5, False
        while not self._stop.is_set():
            try:
                url, headers, hello = self._open()
                with connect(url, open_timeout=10, additional_headers=headers, max_size=2**24) as ws:
                    self._ws = ws
                    for message in hello:
                        ws.send(json.dumps(message))
                    self.connected.set()
                    log.info("%s: connected to %s", self.name, url)
                    announced, delay = False, 0.5
                    for raw in ws:
                        message = json.loads(raw)
                        if isinstance(message, dict):
                            self._on_message(message)
            except (OSError, PrinterError, WebSocketException, ValueError, KeyError, IndexError) as err:
                self.connected.clear()
                if self._stop.is_set():
                    return
                if not announced:
                    log.warning("%s: %s; reconnecting with backoff", self.name, err)
                    announced = True
            finally:
                self._ws = None
            self._stop.wait(delay)
            delay = min(delay * 2, self.reconnect_max_s)

    def _ended(self, outcome: str) -> None:
        """The current job ended: tell ``on_end`` (once) and forget the job."""
        job, last = self.job_id, self._last
        self.job_id, self._last = None, None
        if job is None or self.on_end is None:
            return
        try:
            self.on_end(job, last.layer if last else 0, last.z_mm if last else 0.0, outcome)
        except Exception:
            log.exception("%s: end callback failed", self.name)

    def _emit(self, changes: list[LayerChange]) -> None:
        if self.job_id is None:
            return
        if changes:
            self._last = changes[-1]
        for change in changes:
            try:
                self.on_layer(self.job_id, change)
            except Exception:
                log.exception("%s: layer callback failed", self.name)
