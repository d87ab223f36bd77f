"""The plugin's one connection to the site's broker (paho-mqtt): publishes with QoS 1, the retained status with a
last will, and the subscriptions to its printer's results and actions. Reconnects by itself (1 s to 30 s apart);
what is published while the broker is away waits in paho's queue (bounded) and goes out on reconnection."""

from __future__ import annotations

import contextlib
import logging
import ssl
import threading
import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt

from .contract import ContractError, Topics, status_message

__all__ = ["BrokerLink", "parse_broker"]

log = logging.getLogger("octoprint.plugins.layerwatch")

MAX_QUEUED = 64  # messages waiting for a broker that is away (frames among them: a bounded memory)
_REFUSALS = {
    4: "bad user name or password",
    5: "not authorized",
    134: "bad user name or password",
    135: "not authorized",
}


def parse_broker(url: str) -> tuple[str, int, bool]:
    """(host, port, tls) of an ``mqtt://host[:port]`` or ``mqtts://host[:port]`` URL."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("mqtt", "mqtts"):
        raise ContractError(f"broker {url!r}: expected mqtt://HOST[:PORT] or mqtts://HOST[:PORT]")
    if parts.username or parts.password:
        raise ContractError("broker URL carries a user or password: put them in the username and password settings")
    if not parts.hostname:
        raise ContractError(f"broker {url!r} names no host")
    try:
        port = parts.port or (8883 if parts.scheme == "mqtts" else 1883)
    except ValueError:
        raise ContractError(f"broker {url!r}: the port is not a number from 1 to 65535") from None
    return parts.hostname, port, parts.scheme == "mqtts"


class BrokerLink:
    """``handlers``: topic -> callback(payload) for the subscriptions; ``on_state(text)`` hears the connection."""

    def __init__(
        self,
        url: str,
        topics: Topics,
        *,
        username: str,
        password: str,
        version: str,
        handlers: dict[str, Callable[[bytes], None]],
        on_state: Callable[[str], None],
        ca_file: str = "",
    ) -> None:
        self.host, self.port, tls = parse_broker(url)
        self.topics, self.version, self.handlers, self.on_state = topics, version, handlers, on_state
        self.client_id = f"layerwatch-octoprint-{topics.printer}-{uuid.uuid4().hex[:8]}"
        self.connected = threading.Event()
        self.state = "connecting"
        c = self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=self.client_id)
        if username:
            c.username_pw_set(username, password or None)
        if tls:
            context = ssl.create_default_context(cafile=ca_file or None)
            c.tls_set_context(context)
        c.max_queued_messages_set(MAX_QUEUED)
        c.reconnect_delay_set(1, 30)
        c.will_set(topics.status, status_message(self.client_id, "offline", version), qos=1, retain=True)
        c.on_connect, c.on_disconnect, c.on_message = self._connected, self._disconnected, self._message

    def start(self) -> BrokerLink:
        self.client.connect_async(self.host, self.port, keepalive=30)
        self.client.loop_start()
        return self

    def close(self) -> None:
        if self.connected.is_set():
            info = self.client.publish(
                self.topics.status, status_message(self.client_id, "offline", self.version), qos=1, retain=True
            )
            with contextlib.suppress(RuntimeError, ValueError):  # not sent within 2 s: the last will says it
                info.wait_for_publish(2)
        self.client.disconnect()
        self.client.loop_stop()

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> bool:
        """Queue one QoS 1 message; False (and a log line) where paho refuses it (its queue is full)."""
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
            log.warning("layerwatch: %d bytes on %s not sent: %s", len(payload), topic, mqtt.error_string(info.rc))
            return False
        return True

    # ---- paho's thread ----------------------------------------------------------------------------------
    def _connected(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if reason.is_failure:
            code = getattr(reason, "value", 0)
            why = _REFUSALS.get(code, str(reason))
            self._say(f"the broker {self.host}:{self.port} refused the connection: {why}")
            return
        self.connected.set()
        client.publish(self.topics.status, status_message(self.client_id, "online", self.version), qos=1, retain=True)
        for topic in self.handlers:
            client.subscribe(topic, qos=1)
        self._say("connected")

    def _disconnected(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        self.connected.clear()
        if self.state == "connected":
            self._say(f"connection to {self.host}:{self.port} lost ({reason}); reconnecting")

    def _message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        handler = self.handlers.get(message.topic)
        if handler is None:
            return
        try:
            handler(bytes(message.payload))
        except ContractError as err:
            log.warning("layerwatch: message on %s refused: %s", message.topic, err)
        except Exception:
            log.exception("layerwatch: message on %s could not be handled", message.topic)

    def _say(self, state: str) -> None:
        if state != self.state:
            (log.info if state == "connected" else log.warning)("layerwatch: broker %s", state)
        self.state = state
        self.on_state(state)
