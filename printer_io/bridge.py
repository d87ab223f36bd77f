"""``layerwatch bridge``: run one printer's layer trigger and publish its layer events on MQTT.

Each backend brings its own layer trigger (``Backend.trigger`` in printer_io.printer): OctoPrint's
push API, Moonraker's websocket status, the embedded virtual printer's simulated job. A G-code hook
(``layerwatch layer-event``) publishes single events for slicers and printer hosts that can run a
command on layer change (docs/printers.md).
"""

from __future__ import annotations

import logging
import threading
import time

from printer_io.bus import Link
from printer_io.layers import LayerChange
from printer_io.messages import LayerEvent

__all__ = ["Bridge"]

log = logging.getLogger(__name__)


class Bridge:
    """Publishes layer events of one printer; ``on_change`` is the callback the trigger sources call."""

    def __init__(self, link: Link, source: str) -> None:
        self.link = link
        self.source = source
        self.published: list[LayerEvent] = []
        self._lock = threading.Lock()

    def on_change(self, job_id: str, change: LayerChange) -> None:
        event = LayerEvent(
            printer=self.link.topics.printer,
            job_id=job_id,
            layer=change.layer,
            z_mm=change.z_mm,
            time=time.time(),
            source=self.source,
        )
        self.publish(event)

    def publish(self, event: LayerEvent) -> None:
        self.link.publish(self.link.topics.layer, event.to_json())
        with self._lock:
            self.published.append(event)
        log.info("bridge: %s layer %d of %s done at z=%.3f mm", event.printer, event.layer, event.job_id, event.z_mm)

    def on_end(self, job_id: str, layer: int, z_mm: float, outcome: str) -> None:
        """The job ended (``outcome``: done, cancelled, failed): the monitor closes its record."""
        event = LayerEvent(
            printer=self.link.topics.printer,
            job_id=job_id,
            layer=max(layer, 0),
            z_mm=z_mm,
            time=time.time(),
            source=self.source,
            end=True,
            outcome=outcome,  # type: ignore[arg-type]
        )
        self.link.publish(self.link.topics.layer, event.to_json())
        log.info("bridge: %s job %s %s after layer %d", event.printer, job_id, outcome, event.layer)
