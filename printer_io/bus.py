"""An in-process message bus with the MQTT link's interface, for the demo, replay and unit tests.

``MessageBus`` routes by MQTT topic filters (``+`` and ``#``) and keeps retained messages; each
``BusLink`` delivers on a worker thread of its own, in order, with the same handler contract as
:class:`printer_io.mqtt.MqttLink` (a handler's PayloadError is counted as a rejection, any other
exception is logged and the link goes on). Services take either: both satisfy :class:`Link`.
Nothing leaves the process, so it needs no broker, port or credentials; the integration tests keep
a real Mosquitto.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter, deque
from collections.abc import Callable
from typing import Any, Protocol

from printer_io.errors import MqttError, PayloadError
from printer_io.messages import StatusMessage
from printer_io.mqtt import MqttConfig, MqttLink
from printer_io.topics import Topics

__all__ = ["BusLink", "Link", "MessageBus", "open_link", "topic_matches"]

log = logging.getLogger(__name__)

Handler = Callable[[str, bytes], None]


class Link(Protocol):
    """What a service needs of its connection (MqttLink over a broker, BusLink in process)."""

    service: str
    topics: Topics
    rejected: Counter[str]
    handled: int

    @property
    def connected(self) -> bool: ...
    def subscribe(self, topic_filter: str, handler: Handler) -> None: ...
    def start(self) -> Any: ...
    def close(self, publish_offline: bool = True) -> None: ...
    def publish(
        self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False, wait_s: float | None = None
    ) -> Any: ...
    def stats(self) -> dict[str, int]: ...
    def set_problem(self, text: str) -> None: ...


def topic_matches(topic_filter: str, topic: str) -> bool:
    """MQTT's matching rule: ``+`` one level, ``#`` the rest (also the parent level)."""
    f, t = topic_filter.split("/"), topic.split("/")
    for i, part in enumerate(f):
        if part == "#":
            return True
        if i >= len(t) or (part != "+" and part != t[i]):
            return False
    return len(f) == len(t)


class MessageBus:
    """The in-process broker: links attach to it; a publish reaches every matching subscription."""

    def __init__(self) -> None:
        self._links: list[BusLink] = []
        self._retained: dict[str, bytes] = {}
        self._lock = threading.Lock()

    def link(self, *, service: str, topics: Topics, **_: Any) -> BusLink:
        """A link on this bus (MqttLink's keyword arguments beyond these are accepted and ignored)."""
        return BusLink(self, service=service, topics=topics)

    def _attach(self, link: BusLink) -> list[tuple[str, bytes]]:
        with self._lock:
            self._links.append(link)
            return list(self._retained.items())

    def _detach(self, link: BusLink) -> None:
        with self._lock:
            if link in self._links:
                self._links.remove(link)

    def _route(self, topic: str, payload: bytes, retain: bool) -> None:
        with self._lock:
            if retain:
                self._retained[topic] = payload
            links = list(self._links)
        for link in links:
            link._offer(topic, payload)


def open_link(bus: MessageBus | None, mqtt: MqttConfig, *, service: str, topics: Topics, version: str = "") -> Link:
    """A service's link: on ``bus`` when there is one, else over the configured broker (not started)."""
    if bus is not None:
        return bus.link(service=service, topics=topics)
    return MqttLink(mqtt, service=service, topics=topics, version=version)


class BusLink:
    """One service's connection to a :class:`MessageBus`: subscribe, start, publish, close."""

    def __init__(self, bus: MessageBus, *, service: str, topics: Topics) -> None:
        self.bus = bus
        self.service = service
        self.topics = topics
        self.client_id = f"bus-{service}-{topics.printer}"
        self.rejected: Counter[str] = Counter()
        self.handled = 0
        self._handlers: list[tuple[str, Handler]] = []
        self._queue: deque[tuple[str, bytes]] = deque()
        self._cond = threading.Condition()
        self._idle = threading.Event()
        self._idle.set()
        self._worker: threading.Thread | None = None
        self._closing = False
        self.problem = ""

    def subscribe(self, topic_filter: str, handler: Handler) -> None:
        self._handlers.append((topic_filter, handler))

    def set_problem(self, text: str) -> None:
        """As MqttLink's: the retained status turns ``degraded`` with ``text`` while it is set."""
        if text == self.problem:
            return
        self.problem = text
        if self._worker is not None:
            status = StatusMessage(
                service=self.service,
                client_id=self.client_id,
                state="degraded" if text else "online",
                problem=text[:500],
            )
            self.publish(self.topics.status(self.service), status.to_json(), retain=True)

    def start(self) -> BusLink:
        if self._worker is not None:
            return self
        self._worker = threading.Thread(target=self._work, name=f"bus-{self.service}", daemon=True)
        self._worker.start()
        for topic, payload in self.bus._attach(self):
            self._offer(topic, payload)
        online = StatusMessage(service=self.service, client_id=self.client_id, state="online")
        self.publish(self.topics.status(self.service), online.to_json(), retain=True)
        return self

    def close(self, publish_offline: bool = True) -> None:
        if self._worker is None:
            return
        if publish_offline:
            offline = StatusMessage(service=self.service, client_id=self.client_id, state="offline")
            self.publish(self.topics.status(self.service), offline.to_json(), retain=True)
        self.bus._detach(self)
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._worker.join(timeout=10)
        self._worker = None

    def __enter__(self) -> BusLink:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def connected(self) -> bool:
        return self._worker is not None

    def wait_connected(self, timeout: float) -> bool:
        return self.connected

    def publish(
        self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False, wait_s: float | None = None
    ) -> None:
        if self._worker is None:
            raise MqttError(f"{self.service}: publish on {topic} before start or after close")
        self.bus._route(topic, bytes(payload), retain)

    def wait_idle(self, timeout: float = 30.0) -> bool:
        """Wait until every message delivered so far has been handled (an explicit signal, not a sleep)."""
        return self._idle.wait(timeout)

    def stats(self) -> dict[str, int]:
        return {"handled": self.handled, **{f"rejected_{k}": v for k, v in self.rejected.items()}}

    def _offer(self, topic: str, payload: bytes) -> None:
        if not any(topic_matches(f, topic) for f, _ in self._handlers):
            return
        with self._cond:
            self._queue.append((topic, payload))
            self._idle.clear()
            self._cond.notify()

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closing:
                    self._idle.set()
                    self._cond.wait()
                if self._closing:
                    self._queue.clear()
                    self._idle.set()
                    return
                topic, payload = self._queue.popleft()
            for topic_filter, handler in self._handlers:
                if not topic_matches(topic_filter, topic):
                    continue
                try:
                    handler(topic, payload)
                    self.handled += 1
                except PayloadError as err:
                    self.rejected[err.reason] += 1
                    log.warning("%s: rejected message (%s): %s", self.service, err.reason, str(err)[:400])
                except Exception:
                    self.rejected["handler_error"] += 1
                    log.exception("%s: handler for %s failed; the service goes on", self.service, topic)
