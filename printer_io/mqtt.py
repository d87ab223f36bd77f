"""One MQTT connection per service, done the way the broker's guarantees need it.

- MQTT v5 persistent session from the very first connect (``clean_start=False`` + session expiry), a
  stable client id and QoS 1 subscriptions: a service restarted mid-build receives what was published
  while it was down. Messages are acknowledged only after their handler ran (manual ack), so a crash
  while handling one means the broker delivers it again.
- A retained status per service (``online``) paired with a last will (``offline``).
- Reconnect with backoff by paho's network thread; a state change is logged once, not every retry.
- paho callbacks only hand messages to a worker thread; handlers run there, one at a time, in order.
  A handler that raises :class:`PayloadError` has the message counted by reason and logged; the
  service keeps running.
- Payload sizes are checked before publishing: paho ignores the broker's maximum packet size and would
  resend an oversized message in a reconnect loop.
- Every QoS 1 publish's acknowledgement is read: a broker that refuses it (MQTT 5 PUBACK reason code, e.g. "Not
  authorized" by its ACL) is an error with the broker's reason, never a silent success. A publish that waits
  (``wait_s``) raises :class:`PublishRefused`; one that does not is counted, logged once per topic, and the
  service's retained status turns ``degraded`` with the problem in words.

Secrets: the password comes from ``$LAYERWATCH_MQTT_PASSWORD`` or ``password_file``, never from the
config file itself, and is never logged.
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import logging
import os
import socket
import ssl
import threading
import time
import uuid
import zlib
from collections import Counter, deque
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from pydantic import BaseModel, ConfigDict, Field

from printer_io.errors import ConfigError, FrameTooLarge, MqttAuthError, MqttError, PayloadError, PublishRefused
from printer_io.messages import StatusMessage
from printer_io.secrets import optional_secret
from printer_io.topics import Topics

__all__ = ["PASSWORD_ENV", "USERNAME_ENV", "Handler", "MqttConfig", "MqttLink", "anonymous_allowed"]

log = logging.getLogger(__name__)

PASSWORD_ENV = "LAYERWATCH_MQTT_PASSWORD"
USERNAME_ENV = "LAYERWATCH_MQTT_USERNAME"

Handler = Callable[[str, bytes], None]

# CONNACK reason codes that no retry can fix (MQTT 5 and the 3.1.1 codes paho maps onto them)
_AUTH_CODES = {134: "bad user name or password", 135: "not authorized", 133: "client identifier not valid"}


_TRIM_AFTER_BYTES = 32 * 1024 * 1024
_NOT_YET = object()  # an acknowledgement not (yet) received
_PACKET_HEADROOM = 64 * 1024  # a frame's topic, properties and envelope header beside its max_frame_bytes
_FRAME_BYTES = 16 * 1024  # a message on a frame topic at least this big counts as a camera frame


def _on_frame_topic(message: paho.MQTTMessage) -> bool:
    return bool(message.topic.endswith("/image"))


def _is_frame(message: paho.MQTTMessage) -> bool:
    return _on_frame_topic(message) and len(message.payload) >= _FRAME_BYTES


def _return_memory() -> None:
    """Hand freed heap memory back to the system (glibc keeps it after a burst of large frames)."""
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to do
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _subscription_id(topic_filter: str) -> int:
    """A stable MQTT 5 subscription identifier (1 .. 268435455) for a topic filter."""
    return zlib.crc32(topic_filter.encode()) % 268_435_455 + 1


class MqttConfig(BaseModel):
    """``[mqtt]`` section. ``url``: ``mqtt://host:port`` or ``mqtts://host:port`` (TLS)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    url: str = "mqtt://127.0.0.1:1883"
    prefix: str = "layerwatch"
    username: str | None = None
    password_file: Path | None = None
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    protocol: Literal["5", "3.1.1"] = "5"
    keepalive_s: int = Field(default=30, ge=5, le=3600)
    session_expiry_s: int = Field(default=86_400, ge=0, le=4_294_967_295)
    connect_timeout_s: float = Field(default=10.0, gt=0, le=600)
    reconnect_min_s: int = Field(default=1, ge=1, le=60)
    reconnect_max_s: int = Field(default=30, ge=1, le=3600)
    max_frame_bytes: int = Field(default=16 * 1024 * 1024, ge=1024, le=256 * 1024 * 1024)
    # received messages waiting for their handler held in memory, per link (one link per printer in the monitor):
    # over this, the oldest frames go to the spool on disk (spool_dir) while it has room, else they are dropped
    # (counted, logged), never the newest
    max_queue_bytes: int = Field(default=256 * 1024 * 1024, ge=1024 * 1024, le=16 * 1024 * 1024 * 1024)
    # and at most this many frames (of 16 kB or more) in memory; 0: only max_queue_bytes bounds them
    max_queue_frames: int = Field(default=0, ge=0, le=100_000)
    # a folder where frames waiting beyond max_queue_bytes are kept until their turn (a backlog after an outage is
    # judged, not dropped); set by the monitor for each printer (<out_dir>/<printer>/.spool), None: no spool
    spool_dir: Path | None = None
    max_spool_bytes: int = Field(default=8 * 1024 * 1024 * 1024, ge=0, le=1 << 44)
    # MQTT 5: the broker hands over at most this many unacknowledged messages at a time (its Receive Maximum);
    # the rest wait in the session at the broker (brokers differ in how strictly they keep to it)
    receive_maximum: int = Field(default=64, ge=1, le=65_535)
    # every received message other than a frame is refused above this size before it is parsed (layer events,
    # actions, statuses are a few kB; an operator's labels up to a few hundred)
    max_message_bytes: int = Field(default=1024 * 1024, ge=1024, le=64 * 1024 * 1024)

    def endpoint(self) -> tuple[str, int, bool]:
        """``(host, port, tls)`` from the URL; ConfigError names the bad value."""
        parts = urlsplit(self.url)
        if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
            raise ConfigError(f"mqtt url {self.url!r}: expected mqtt://HOST:PORT or mqtts://HOST:PORT")
        tls = parts.scheme == "mqtts"
        try:
            port = parts.port or (8883 if tls else 1883)
        except ValueError as err:
            raise ConfigError(f"mqtt url {self.url!r}: {err}") from err
        return parts.hostname, port, tls

    def credentials(self) -> tuple[str | None, str | None]:
        username = os.environ.get(USERNAME_ENV) or self.username
        return username, optional_secret(PASSWORD_ENV, self.password_file, "mqtt password_file")


class MqttLink:
    """A service's connection: subscribe before :meth:`start`, publish after it, :meth:`close` at the end."""

    def __init__(
        self,
        config: MqttConfig,
        *,
        service: str,
        topics: Topics,
        client_id: str | None = None,
        version: str = "",
        ephemeral: bool = False,
        anonymous: bool = False,
        worker: str = "",
        exclusive: bool = False,
        will_delay_s: int = 0,
        on_lost: Callable[[], None] | None = None,
        clean: bool = False,
        status_topic: str | None = None,
    ) -> None:
        """``ephemeral``: a short-lived command (``layerwatch control``, ``feedback``, ``layer-event``): a clean
        session under a unique client id, and no retained status, so it leaves nothing behind at the broker.

        ``exclusive``: a session one holder at a time, which another may take over (a monitor worker's printer,
        monitor.workers): no reconnecting by itself (two holders would take the session from each other in
        turn); when the connection ends, ``on_lost`` runs (on a thread of its own). ``will_delay_s``: the broker
        publishes the last will only after this long without the session, and never when another connection
        took the session over. ``worker`` goes into the status messages. ``clean``: a session that ends with the
        connection (a member of a shared subscription: the broker must not keep messages for it while it is gone),
        with a status nonetheless, on ``status_topic`` where given."""

        self.config = config
        self.service = service
        self.topics = topics
        self.ephemeral = ephemeral
        self.anonymous = anonymous  # connect without the configured credentials (anonymous_allowed's probe)
        suffix = f"-{uuid.uuid4().hex[:8]}" if ephemeral else ""
        self.client_id = client_id or f"layerwatch-{service}-{topics.printer}{suffix}"
        self.version = version
        self.worker = worker
        self.exclusive = exclusive
        self.will_delay_s = will_delay_s
        self.on_lost = on_lost
        self.clean = ephemeral or clean
        self.status_topic = status_topic or topics.status(service)
        self.host, self.port, self.tls = config.endpoint()
        self.rejected: Counter[str] = Counter()
        self.handled = 0
        self._handlers: list[tuple[str, Handler]] = []
        self._pending: deque[paho.MQTTMessage] = deque()
        self._pending_bytes = 0
        self._pending_frames = 0  # waiting messages that count as camera frames (_is_frame)
        self._spilled: dict[int, tuple[Path, int]] = {}  # id(waiting message) -> its payload's file and size
        self._spool_bytes = 0
        self._spool_ids = itertools.count()
        self.spilled = 0  # frames that waited on disk
        self._peak_bytes = 0
        self._closing = False
        self._cond = threading.Condition()
        self._dropped_said = -1e9
        self._client: paho.Client | None = None
        self._worker: threading.Thread | None = None
        self._connected = threading.Event()
        self._first_result = threading.Event()
        self._auth_failure: str | None = None
        self._state = "new"
        self._lock = threading.Lock()
        self._broker_max_packet: int | None = None
        self._ever_connected = False
        self._closed_early: str | None = None  # the broker closed the connection before ever accepting it: why
        self._born = time.time()
        # publish acknowledgements: topic of each message in flight, refusals that came before it was noted
        self._inflight: dict[int, str] = {}
        self._early_acks: dict[int, Any] = {}
        self._acks: dict[int, Any] = {}  # reason codes of refused publishes that a waiting publish asks about
        self.refused: Counter[str] = Counter()  # topic -> publishes the broker refused
        self.sub_refused: dict[str, str] = {}  # topic filter -> why the broker refused the subscription
        self._sub_pending: dict[int, str] = {}
        self._subscribed = threading.Event()  # every subscription of the last connect acknowledged
        self._subscribed.set()
        self._ack_lock = threading.Lock()
        self.problem = ""  # what fails (the status says it while set)

    # ---- lifecycle --------------------------------------------------------------------------------
    def subscribe(self, topic_filter: str, handler: Handler) -> None:
        """Register a handler; it runs on the worker thread with ``(topic, payload)``."""
        self._handlers.append((topic_filter, handler))
        if self._client is not None and self._connected.is_set():
            self._subscribe(self._client, len(self._handlers) - 1)

    def start(self) -> MqttLink:
        """Connect; returns once the broker accepted us. Raises MqttAuthError / MqttError with a clear line.

        Calling it on a started link does nothing (``with link.start():`` is fine)."""
        if self._client is not None:
            return self
        if self.config.spool_dir is not None:  # a crashed run's spooled copies: the broker delivers them again
            for old in self.config.spool_dir.glob(f"{self.client_id}-*.msg"):
                with contextlib.suppress(OSError):
                    old.unlink()
        v5 = self.config.protocol == "5"
        client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=paho.MQTTv5 if v5 else paho.MQTTv311,
            clean_session=None if v5 else self.clean,
            manual_ack=True,
            reconnect_on_failure=not self.exclusive,
        )
        username, password = (None, None) if self.anonymous else self.config.credentials()
        if username is not None or password is not None:
            client.username_pw_set(username, password)
        if self.tls or self.config.ca_file:
            self._configure_tls(client)
        if not self.ephemeral:
            will = None
            if v5 and self.will_delay_s:
                will = Properties(PacketTypes.WILLMESSAGE)
                will.WillDelayInterval = self.will_delay_s
            self._born = time.time()  # the will and the online status of a connection carry the same time
            offline = self._status("offline", self._born)
            client.will_set(self.status_topic, offline, qos=1, retain=True, properties=will)
        client.reconnect_delay_set(self.config.reconnect_min_s, self.config.reconnect_max_s)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_connect_fail = self._on_connect_fail
        client.on_publish = self._on_publish
        client.on_subscribe = self._on_subscribe
        self._client = client
        self._worker = threading.Thread(target=self._work, name=f"mqtt-{self.service}", daemon=True)
        self._worker.start()
        props = None
        if v5:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = 0 if self.clean else self.config.session_expiry_s
            # the broker sends no packet larger than a frame may be (it drops it), and at most this many
            # unacknowledged messages at a time (the rest wait at the broker: backpressure, not loss)
            props.MaximumPacketSize = self.config.max_frame_bytes + _PACKET_HEADROOM
            props.ReceiveMaximum = self.config.receive_maximum
        self._set_state("connecting", f"connecting to {self._where()} as {self.client_id}")
        try:
            if v5:
                client.connect_async(
                    self.host, self.port, self.config.keepalive_s, clean_start=self.clean, properties=props
                )
            else:
                client.connect_async(self.host, self.port, self.config.keepalive_s)
        except (OSError, ValueError) as err:
            self.close()
            raise MqttError(f"cannot connect to MQTT broker {self._where()}: {err}") from err
        client.loop_start()
        if not self._first_result.wait(self.config.connect_timeout_s) or not self._connected.is_set():
            failure = self._auth_failure
            self.close(publish_offline=False)
            if failure is not None:
                where = (
                    f"the password in {self.config.password_file}"
                    if self.config.password_file is not None and not os.environ.get(PASSWORD_ENV)
                    else f"the password (${PASSWORD_ENV} or [mqtt] password_file)"
                )
                raise MqttAuthError(
                    f"MQTT broker {self._where()} refused {username or 'anonymous'!s}: {failure}; check the user name "
                    f"(${USERNAME_ENV} or [mqtt] username) and {where}"
                )
            raise MqttError(self._diagnose())
        # ready means subscribed: a message published right after start() returns reaches the handlers (a new
        # session holds nothing published before its subscriptions)
        if not self._subscribed.wait(self.config.connect_timeout_s):
            log.warning("%s: the broker did not acknowledge every subscription in time", self.service)
        return self

    def close(self, publish_offline: bool = True) -> None:
        # the worker first: the message it is handling finishes with the link still up (its result is published);
        # messages still waiting are not acknowledged, so the broker delivers them again to the next session
        if self._worker is not None:
            with self._cond:
                self._closing = True
                self._cond.notify_all()
            self._worker.join(timeout=10)
            self._worker = None
            with self._cond:
                self._closing = False
                self._pending.clear()
                self._pending_bytes = self._pending_frames = 0
                # unacknowledged: the broker delivers them again to the next session; their spooled copies go
                for path, _ in self._spilled.values():
                    with contextlib.suppress(OSError):
                        path.unlink()
                self._spilled.clear()
                self._spool_bytes = 0
        client, self._client = self._client, None
        if client is not None:
            if publish_offline and not self.ephemeral and self._connected.is_set():
                info = self._send(client, self.status_topic, self._status("offline"), 1, True)
                info.wait_for_publish(2.0)
            client.disconnect()
            client.loop_stop()
        self._connected.clear()

    def __enter__(self) -> MqttLink:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    # ---- publishing -------------------------------------------------------------------------------
    def publish(
        self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False, wait_s: float | None = None
    ) -> paho.MQTTMessageInfo:
        """Queue a message (paho keeps it while disconnected); ``wait_s`` waits for the broker's PUBACK."""
        limit = self.config.max_frame_bytes
        if self._broker_max_packet is not None:
            limit = min(limit, self._broker_max_packet - len(topic) - 64)
        if len(payload) > limit:
            raise FrameTooLarge(
                f"message of {len(payload)} bytes for {topic} exceeds the limit of {limit} bytes "
                "([mqtt] max_frame_bytes or the broker's maximum packet size): lower the resolution, "
                "use JPEG, or raise the limit on both sides"
            )
        client = self._client
        if client is None:
            raise MqttError(f"{self.service}: publish on {topic} after the MQTT link was closed")
        info = self._send(client, topic, payload, qos, retain)
        if wait_s is not None:
            info.wait_for_publish(wait_s)
            with self._ack_lock:
                code = self._acks.pop(info.mid, None)
            if code is not None:
                raise PublishRefused(self._refusal_text(topic, code), topic, str(code))
        return info

    def _send(self, client: paho.Client, topic: str, payload: bytes, qos: int, retain: bool) -> paho.MQTTMessageInfo:
        """Every publish of the link: its acknowledgement is matched to its topic (paho's network thread may
        deliver it before ``client.publish`` returns; no lock of ours is held across paho's)."""
        info = client.publish(topic, payload, qos=qos, retain=retain)
        if qos == 0:
            return info
        with self._ack_lock:
            early = self._early_acks.pop(info.mid, _NOT_YET)
            if early is _NOT_YET:
                self._inflight[info.mid] = topic
        if early is not _NOT_YET and early is not None and getattr(early, "is_failure", False):
            self._refused(topic, early, info.mid)
        return info

    def _on_publish(self, client: paho.Client, userdata: Any, mid: int, rc: Any, props: Any) -> None:
        with self._ack_lock:
            topic = self._inflight.pop(mid, None)
            if topic is None:  # acknowledged before _send noted it: _send takes it from here
                self._early_acks[mid] = rc
                if len(self._early_acks) > 1000:  # QoS 0 messages' (nobody takes those): keep the newest only
                    for old in list(self._early_acks)[:500]:
                        del self._early_acks[old]
                return
        if rc is not None and getattr(rc, "is_failure", False):
            self._refused(topic, rc, mid)

    def _refusal_text(self, topic: str, code: Any) -> str:
        username = None if self.anonymous else self.config.credentials()[0]
        return (
            f"MQTT broker {self._where()} refused the publish of {username or 'anonymous'} on {topic}: {code} "
            f"(the broker's ACL does not let this user write there; docs/security.md)"
        )

    def _refused(self, topic: str, code: Any, mid: int) -> None:
        """A publish the broker refused: remembered for a waiting publish, counted, logged once per topic, and
        said on the service's status."""
        with self._ack_lock:
            self._acks[mid] = code
            if len(self._acks) > 1000:  # nobody waits for most: keep the newest only
                for old in list(self._acks)[:500]:
                    del self._acks[old]
            self.refused[topic] += 1
            first = self.refused[topic] == 1
        if first:
            text = self._refusal_text(topic, code)
            log.error("%s: %s", self.service, text)
            self.set_problem(text)

    def set_problem(self, text: str) -> None:
        """Say on the retained status that something this service must do fails (``""``: nothing fails)."""
        if text == self.problem:
            return
        self.problem = text
        client = self._client
        if client is not None and not self.ephemeral and self._connected.is_set():
            self._send(client, self.status_topic, self._status("online", self._born), 1, True)

    # ---- paho callbacks: hand work to the worker, log state changes once ----------------------------
    def _on_connect(self, client: paho.Client, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        if rc.is_failure:
            code = int(rc.value)
            if code in _AUTH_CODES:
                self._auth_failure = _AUTH_CODES[code]
                self._set_state("refused", f"broker {self._where()} refused the connection: {self._auth_failure}")
            else:
                self._set_state("refused", f"broker {self._where()} refused the connection: {rc}")
            self._first_result.set()
            if not self._connected.is_set() and self._state == "refused" and self._auth_failure:
                client.disconnect()
            return
        max_packet = getattr(props, "MaximumPacketSize", None) if props is not None else None
        self._broker_max_packet = int(max_packet) if max_packet else None
        if self._handlers:
            self._subscribed.clear()
        for index in range(len(self._handlers)):
            self._subscribe(client, index)
        if not self.ephemeral:
            self._send(client, self.status_topic, self._status("online", self._born), 1, True)
        resumed = bool(getattr(flags, "session_present", False))
        self._connected.set()
        self._ever_connected = True
        self._first_result.set()
        self._set_state(
            "connected", f"connected to {self._where()} ({'resumed' if resumed else 'new'} session {self.client_id})"
        )

    def _status(self, state: Literal["online", "offline"], at: float | None = None) -> bytes:
        """The retained status: ``online`` turns ``degraded`` while a problem is set."""
        degraded = state == "online" and bool(self.problem)
        return StatusMessage(
            service=self.service,
            client_id=self.client_id,
            state="degraded" if degraded else state,
            problem=self.problem[:500] if degraded else "",
            version=self.version,
            worker=self.worker,
            time=at or time.time(),
        ).to_json()

    def _on_disconnect(self, client: paho.Client, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        self._connected.clear()
        if self._client is not None and not self._ever_connected:  # not our own close
            self._closed_early = str(rc)
        if self._client is None:
            self._set_state("closed", "disconnected")
        elif self.exclusive:
            self._set_state("lost", f"lost the session {self.client_id} at {self._where()} ({rc}); not reconnecting")
            if self.on_lost is not None and self._ever_connected:
                threading.Thread(target=self.on_lost, name=f"lost-{self.client_id}", daemon=True).start()
        else:
            where = self._where()
            if self._ever_connected:
                self._set_state("disconnected", f"lost the MQTT broker {where} ({rc}); reconnecting with backoff")
            else:
                self._set_state("disconnected", f"MQTT broker {where} closed the connection before accepting it ({rc})")

    def _on_connect_fail(self, client: paho.Client, userdata: Any) -> None:
        self._set_state("unreachable", f"MQTT broker {self._where()} unreachable; retrying with backoff")

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        limit = (
            self.config.max_frame_bytes + _PACKET_HEADROOM
            if _on_frame_topic(message)
            else self.config.max_message_bytes
        )
        if len(message.payload) > limit:  # refused before it is queued or parsed: nothing more is kept of it
            if message.qos > 0:
                client.ack(message.mid, message.qos)
            self._reject(
                "size",
                f"{message.topic}: message of {len(message.payload)} bytes, more than the {limit} this topic takes "
                "([mqtt] max_frame_bytes for frames, max_message_bytes for the rest); refused unread",
            )
            return
        dropped: list[paho.MQTTMessage] = []
        with self._cond:
            self._pending.append(message)
            self._pending_bytes += len(message.payload)
            self._pending_frames += _is_frame(message)
            self._peak_bytes = max(self._peak_bytes, self._pending_bytes)
            # over the bound: the oldest frames go first, to the spool while it has room, else they are dropped;
            # the message just received (the newest) always stays. Frames of a camera's size count against
            # max_queue_frames; a flood of small junk on the frame topic (refused in microseconds) must not push
            # real frames out
            frames_bound = self.config.max_queue_frames
            while len(self._pending) > 1 and (
                self._pending_bytes > self.config.max_queue_bytes
                or (frames_bound and self._pending_frames > frames_bound)
            ):
                droppable = _is_frame if frames_bound and self._pending_frames > frames_bound else _on_frame_topic
                waiting = itertools.islice(self._pending, len(self._pending) - 1)
                old = next((m for m in waiting if droppable(m) and id(m) not in self._spilled), None)
                if old is None:
                    break  # only small control messages wait: keep them all
                if self._spill(old):
                    continue
                self._pending.remove(old)
                self._forget(old)
                dropped.append(old)
            self._cond.notify()
        for old in dropped:
            self.rejected["dropped"] += 1
            if old.qos > 0:
                client.ack(old.mid, old.qos)
        if dropped and time.monotonic() - self._dropped_said > 10:
            self._dropped_said = time.monotonic()
            log.warning(
                "%s: frames come faster than they are handled: %d dropped so far, the oldest first (more than %d "
                "frames or %d MB waiting; [mqtt] max_queue_frames, max_queue_bytes)",
                self.service,
                self.rejected["dropped"],
                self.config.max_queue_frames,
                self.config.max_queue_bytes >> 20,
            )

    def _forget(self, message: paho.MQTTMessage) -> None:
        """Bookkeeping of a message taken out of the queue (handled or dropped); under ``_cond``."""
        self._pending_bytes -= len(message.payload)
        self._pending_frames -= _is_frame(message)

    def _spill(self, message: paho.MQTTMessage) -> bool:
        """Move a waiting message's payload to the spool on disk (its place in the queue kept); under ``_cond``.
        False where there is no spool or no room left in it."""
        folder, size = self.config.spool_dir, len(message.payload)
        if folder is None or self._spool_bytes + size > self.config.max_spool_bytes:
            return False
        path = folder / f"{self.client_id}-{next(self._spool_ids)}.msg"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            path.write_bytes(message.payload)
        except OSError as err:
            log.warning("%s: cannot keep a waiting frame in %s (%s): it may be dropped", self.service, folder, err)
            return False
        self._forget(message)
        self._spilled[id(message)] = (path, size)
        self._spool_bytes += size
        self.spilled += 1
        message.payload = b""
        if self.spilled == 1 or self.spilled % 100 == 0:
            log.info(
                "%s: a backlog: %d waiting frame(s) kept on disk in %s until their turn",
                self.service,
                self.spilled,
                folder,
            )
        return True

    def _unspill(self, message: paho.MQTTMessage) -> None:
        """A spooled message's payload back from disk as its turn comes (outside ``_cond``)."""
        held = self._spilled.pop(id(message), None)
        if held is None:
            return
        path, size = held
        try:
            message.payload = path.read_bytes()
        except OSError as err:
            log.warning("%s: a spooled frame could not be read back (%s)", self.service, err)
        with contextlib.suppress(OSError):
            path.unlink()
        with self._cond:
            self._spool_bytes -= size

    @property
    def queued_bytes(self) -> int:
        return self._pending_bytes

    def _set_state(self, state: str, text: str) -> None:
        with self._lock:
            if state == self._state:
                return
            self._state = state
        # before the first connection, start() reports the outcome itself: keep the retries at INFO
        trouble = self._ever_connected and state in ("disconnected", "unreachable", "refused")
        log.log(logging.WARNING if trouble else logging.INFO, "%s: %s", self.service, text)

    # ---- worker -----------------------------------------------------------------------------------
    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._closing:
                    self._cond.wait()
                if self._closing:
                    return
                message = self._pending.popleft()
                self._forget(message)
                spooled = id(message) in self._spilled
                drained = not self._pending and self._peak_bytes > _TRIM_AFTER_BYTES
                if drained:
                    self._peak_bytes = 0
            if drained:
                _return_memory()  # a burst is over: give its buffers back to the system
            if spooled:
                self._unspill(message)
            try:
                self._dispatch(message.topic, bytes(message.payload), self._subscription_ids(message))
            finally:
                client = self._client
                if client is not None and message.qos > 0:
                    client.ack(message.mid, message.qos)

    def _subscribe(self, client: paho.Client, index: int) -> None:
        """QoS 1; on MQTT 5 with a subscription identifier, derived from the filter, that comes back with
        each message (an identifier from the index would be reused by another filter after a change)."""
        topic_filter = self._handlers[index][0]
        if self.config.protocol == "5":
            props = Properties(PacketTypes.SUBSCRIBE)
            props.SubscriptionIdentifier = _subscription_id(topic_filter)
            _, mid = client.subscribe(topic_filter, qos=1, properties=props)
        else:
            _, mid = client.subscribe(topic_filter, qos=1)
        if mid is not None:
            with self._ack_lock:
                self._sub_pending[mid] = topic_filter

    def _on_subscribe(self, client: paho.Client, userdata: Any, mid: int, codes: Any, props: Any) -> None:
        """The broker's answer to a subscription: a refusal (its ACL) is said once, and on the status."""
        with self._ack_lock:
            topic_filter = self._sub_pending.pop(mid, None)
            done = not self._sub_pending
        refused = [c for c in codes or [] if getattr(c, "is_failure", False) or c == 0x80]
        if topic_filter is not None and refused:
            username = None if self.anonymous else self.config.credentials()[0]
            text = (
                f"MQTT broker {self._where()} refused the subscription of {username or 'anonymous'} to {topic_filter}: "
                f"{refused[0]} (the broker's ACL does not let this user read there; docs/security.md)"
            )
            self.sub_refused[topic_filter] = str(refused[0])
            log.error("%s: %s", self.service, text)
            self.set_problem(text)
        if done:
            self._subscribed.set()

    def _subscription_ids(self, message: paho.MQTTMessage) -> list[int] | None:
        if self.config.protocol != "5":
            return None
        ids = getattr(message.properties, "SubscriptionIdentifier", None) if message.properties else None
        return [ids] if isinstance(ids, int) else list(ids or [])

    def _dispatch(self, topic: str, payload: bytes, ids: list[int] | None = None) -> None:
        """Run the handlers of the subscriptions that delivered the message.

        On MQTT 5 the subscription identifiers say which: a message delivered only through a
        subscription we did not make now (left in the persistent session by an earlier configuration)
        is dropped, and so is the duplicate an overlapping old subscription would cause."""
        matched = False
        for topic_filter, handler in self._handlers:
            ours = (
                _subscription_id(topic_filter) in ids
                if ids is not None
                else paho.topic_matches_sub(topic_filter, topic)
            )
            if not ours:
                continue
            matched = True
            try:
                handler(topic, payload)
                self.handled += 1
            except PayloadError as err:
                self._reject(err.reason, str(err))
            except Exception:
                self.rejected["handler_error"] += 1
                log.exception("%s: handler for %s failed; the service goes on", self.service, topic)
        if not matched:
            # e.g. a subscription left in the broker's persistent session by an earlier configuration
            self._reject("topic", f"{topic}: not a topic this service handles; message dropped")

    def _reject(self, reason: str, text: str) -> None:
        self.rejected[reason] += 1
        n = self.rejected[reason]
        if n <= 20 or n % 100 == 0:  # a flood of bad messages must not flood the log
            short = text if len(text) <= 400 else f"{text[:400]}... ({len(text)} characters)"
            log.warning("%s: rejected message (%s, %d so far): %s", self.service, reason, n, short)

    def _configure_tls(self, client: paho.Client) -> None:
        cfg = self.config
        for name, path in (("ca_file", cfg.ca_file), ("cert_file", cfg.cert_file), ("key_file", cfg.key_file)):
            if path is not None and not path.is_file():
                raise ConfigError(f"[mqtt] {name} {path} does not exist")
        try:
            client.tls_set(
                ca_certs=str(cfg.ca_file) if cfg.ca_file else None,
                certfile=str(cfg.cert_file) if cfg.cert_file else None,
                keyfile=str(cfg.key_file) if cfg.key_file else None,
                cert_reqs=ssl.CERT_REQUIRED,
            )
        except (ssl.SSLError, ValueError) as err:
            raise ConfigError(f"[mqtt] TLS files: {err}") from err

    def _diagnose(self) -> str:
        """Why the first connection failed, in one line (paho's network thread does not say)."""

        where = self._where()
        try:
            with socket.create_connection((self.host, self.port), timeout=3) as sock:
                if self.tls or self.config.ca_file:
                    cfg = self.config
                    context = ssl.create_default_context(cafile=str(cfg.ca_file) if cfg.ca_file else None)
                    if cfg.cert_file is not None:
                        context.load_cert_chain(str(cfg.cert_file), str(cfg.key_file) if cfg.key_file else None)
                    with context.wrap_socket(sock, server_hostname=self.host) as tls:
                        tls.recv(1)  # TLS 1.3 reports a refused client certificate on the first read
        except ssl.SSLError as err:
            return f"TLS handshake with {where} failed ({err.reason or err}): check [mqtt] ca_file, cert_file, key_file"
        except OSError as err:
            return f"no MQTT broker answers at {where} ({err.strerror or err}): start the broker or fix [mqtt] url"
        if self._closed_early is not None:
            return (
                f"MQTT broker {where} closed the connection before accepting it ({self._closed_early}): it may be "
                "shutting down or restarting (see its log), or its listener speaks TLS and the URL says mqtt://"
            )
        return (
            f"no MQTT connection to {where} within {self.config.connect_timeout_s:g} s (the port is open): "
            "is it an MQTT broker, and does its listener speak TLS only if the URL says mqtts://?"
        )

    def _where(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"

    def stats(self) -> dict[str, int]:
        return {"handled": self.handled, **{f"rejected_{k}": v for k, v in self.rejected.items()}}


def anonymous_allowed(config: MqttConfig, timeout_s: float = 5.0) -> bool | None:
    """Whether the broker lets in a client without a user name; None when it cannot be reached."""
    probe_config = config.model_copy(update={"connect_timeout_s": timeout_s})
    probe = MqttLink(
        probe_config, service="probe", topics=Topics(config.prefix, "probe"), ephemeral=True, anonymous=True
    )
    try:
        probe.start()
    except MqttAuthError:
        return False
    except (MqttError, ConfigError):
        return None
    probe.close()
    return True
