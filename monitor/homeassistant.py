"""Home Assistant over MQTT discovery: each printer a device with its state, job, layer, last severity and
last incident, and a Pause button that goes through the monitor's authenticated control path.

Discovery configs are retained on ``<discovery_prefix>/<component>/layerwatch_<printer>/<object>/config``;
the values on ``<prefix>/<printer>/ha/state`` (retained JSON, after every layer). A press on the button
(``<prefix>/<printer>/ha/pause``, payload ``PRESS``) becomes a pause request signed with the configured
operator's secret from the monitor's operators file, handled exactly as a signed request from the dashboard
or ``layerwatch control``: verified, carried out by the controller, recorded with that operator.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from typing import Any

from monitor.ports import PrinterPort
from printer_io.credentials import Credential, sign
from printer_io.messages import ActionMessage
from printer_io.vocabulary import ActionKind, ActionState

__all__ = ["HomeAssistant"]

log = logging.getLogger(__name__)

PRESS = b"PRESS"
_SENSORS = (
    ("state", "State", "{{ value_json.state }}", "mdi:printer-3d"),
    ("job", "Job", "{{ value_json.job }}", "mdi:file-outline"),
    ("layer", "Layer", "{{ value_json.layer }}", "mdi:layers-outline"),
    ("severity", "Last severity", "{{ value_json.severity }}", "mdi:alert-outline"),
    ("incident", "Last incident", "{{ value_json.incident }}", "mdi:alert-octagon-outline"),
)


class HomeAssistant:
    """One printer's device in Home Assistant."""

    def __init__(self, pm: PrinterPort, discovery_prefix: str, operator: Credential | None) -> None:
        self.pm = pm
        self.operator = operator
        t = pm.link.topics
        self.state_topic = f"{t.prefix}/{t.printer}/ha/state"
        self.pause_topic = f"{t.prefix}/{t.printer}/ha/pause"
        self.discovery_prefix = discovery_prefix

    def start(self) -> None:
        """Announce the device (retained) and listen to its button."""
        pid = self.pm.printer_id
        device = {"identifiers": [f"layerwatch_{pid}"], "name": f"LayerWatch {pid}", "manufacturer": "LayerWatch"}
        availability = self.pm.link.topics.status("monitor")
        common = {
            "device": device,
            "availability_topic": availability,
            "availability_template": "{{ 'online' if value_json.state == 'online' else 'offline' }}",
        }
        for key, name, template, icon in _SENSORS:
            config = {**common, "name": name, "unique_id": f"layerwatch_{pid}_{key}", "state_topic": self.state_topic,
                      "value_template": template, "icon": icon}  # fmt: skip
            self._announce("sensor", key, config)
        button = {**common, "name": "Pause", "unique_id": f"layerwatch_{pid}_pause", "command_topic": self.pause_topic,
                  "payload_press": PRESS.decode(), "icon": "mdi:pause-octagon"}  # fmt: skip
        self._announce("button", "pause", button)
        self.pm.link.subscribe(self.pause_topic, self.on_press)

    def _announce(self, component: str, key: str, config: dict[str, Any]) -> None:
        topic = f"{self.discovery_prefix}/{component}/layerwatch_{self.pm.printer_id}/{key}/config"
        self.pm.link.publish(topic, json.dumps(config).encode(), retain=True)

    def publish_state(self, state: dict[str, Any]) -> None:
        self.pm.link.publish(self.state_topic, json.dumps(state, default=str).encode(), retain=True)

    def on_press(self, topic: str, payload: bytes) -> None:
        """The button: a signed pause request, handled as every operator's request (or refused, said once)."""
        if payload[:16].strip() != PRESS:
            return  # not a press (HA sends only PRESS); nothing to do
        if self.operator is None:
            log.warning(
                "%s: Home Assistant's Pause pressed, but the operators file has no operator for it: not paused",
                self.pm.printer_id,
            )
            return
        msg = ActionMessage(
            printer=self.pm.printer_id,
            action=ActionKind.PAUSE,
            state=ActionState.REQUESTED,
            request_id=f"homeassistant:{uuid.uuid4().hex[:12]}",
            reason="pause pressed in Home Assistant",
            time=time.time(),
        )
        self.pm.on_action(self.pm.link.topics.action, sign(msg, self.operator).to_json())
