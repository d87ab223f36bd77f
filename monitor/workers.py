"""Several monitor workers sharing the printers of one site through the broker (``[monitor] group``).

Which worker judges which printer is settled by the broker, with three MQTT 5 features and no scheduler of ours:

- **The printer's session is the lease.** A worker holds a printer by holding its persistent session
  (client id ``layerwatch-monitor-<printer>``, as a single monitor does). The broker lets one connection hold a
  client id: a second one takes the session over, and with it every message the session queued, the layer that
  was in flight unacknowledged included. So no layer is lost when a worker dies, and no two workers receive the
  same printer's messages.
- **The last will is the hand-over.** The session's will is the printer's retained ``offline`` status, delayed by
  ``takeover_delay_s`` (a will is not sent when another connection takes the session over within that delay).
- **A shared subscription picks the heir.** Every worker subscribes to
  ``$share/<group>/<prefix>/+/status/monitor``: the broker delivers each ``offline`` status to exactly one live
  worker, which takes the printer unless it already holds more than its share (it passes it on, at most twice
  round the group, on ``<prefix>/_workers/<group>/offer/<printer>``, shared the same way, where workers also
  offer printers no one holds).

Frames themselves do not travel over the shared subscription: measured on Mosquitto 2.0.11, a shared
subscription hands consecutive messages to different members (the layers of one printer would alternate between
workers) and a message in flight to a member that dies is not delivered to another (lost with a session that ends
with the connection, kept for its return with one that outlives it).

The state of a printer (rule windows, incidents, actions taken) is rebuilt from its build record by the worker
that takes it over, as after a restart; a layer stored before the previous holder died is recognised and not
acted on again. Two holders never write one record: each handler first takes the printer's lock file beside its
records (``<out_dir>/<printer>/.holder``), which the previous holder frees once its layer in hand is stored (or
its process ended). Records must be on storage every worker reaches, with POSIX locks (a local disk, NFSv4).

A worker also looks every ``worker_check_s`` for printers no one holds (a broker restart, a worker that started
alone) and offers them to the group, and hands on a printer without a live build while it holds more than its
share, so a worker that joins gets printers between builds, never in the middle of one.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import math
import os
import random
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from monitor import __version__
from monitor.ports import MonitorPort
from printer_io.messages import StatusMessage
from printer_io.mqtt import MqttLink
from printer_io.topics import Topics, validate_printer_id

__all__ = ["PrinterLock", "SiteWorker", "default_worker_id", "takes"]

log = logging.getLogger(__name__)

_WAIT_SAY_S = 10.0  # how often a worker waiting for a printer's previous holder says so


def default_worker_id() -> str:
    """The host name and process id, as a topic level."""
    host = "".join(c if c.isalnum() or c in "_.-" else "-" for c in socket.gethostname())[:40].strip("-._")
    return validate_printer_id(f"{host or 'host'}-{os.getpid()}", "worker id")


def takes(held: int, printers: int, workers: int, hops: int) -> bool:
    """Whether a worker holding ``held`` printers takes one more of ``printers`` shared by ``workers``: while it
    holds fewer than its share, or once the printer has gone round the group twice (views of the group differ
    for a moment while a worker comes or goes; a printer must end up somewhere)."""
    share = math.ceil(printers / max(workers, 1))
    return held < share or hops >= 2 * max(workers, 1)


class PrinterLock:
    """The lock file beside a printer's records: one holder writes its records at a time."""

    def __init__(self, folder: Path, worker: str) -> None:
        self.path = folder / ".holder"
        self.worker = worker
        self._fd: int | None = None
        self._mutex = threading.Lock()

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self, wanted: Callable[[], bool]) -> bool:
        """Take the lock, waiting for the previous holder for as long as ``wanted()``; False if no longer wanted."""
        with self._mutex:
            if self._fd is not None:
                return True
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            said = time.monotonic()
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if not wanted():
                        os.close(fd)
                        return False
                    if time.monotonic() - said >= _WAIT_SAY_S:
                        said = time.monotonic()
                        log.warning("%s: waiting for the previous holder to let go of %s", self.worker, self.path)
                    time.sleep(0.05)
            os.ftruncate(fd, 0)
            os.write(fd, f"{self.worker}\n".encode())
            self._fd = fd
            return True

    def release(self) -> None:
        with self._mutex:
            fd, self._fd = self._fd, None
            if fd is not None:
                with contextlib.suppress(OSError):
                    fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)


@dataclass
class _Seen:
    """The newest status of a printer's monitor, as the broker last said it."""

    state: str
    worker: str
    time: float  # the publisher's: a connection's will carries the time of its online status


class SiteWorker:
    """One worker of a group: takes the printers the broker hands it, lets go of those it loses."""

    def __init__(self, service: MonitorPort) -> None:
        cfg = service.config
        self.service = service
        self.group = cfg.monitor.group
        self.worker_id = cfg.monitor.worker_id or default_worker_id()
        self.prefix = cfg.mqtt.prefix
        self.printers = set(service.printer_ids)
        self.seen: dict[str, _Seen] = {}
        self.workers: dict[str, bool] = {}  # worker id -> online, from the workers' retained presence
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._closing = False
        self._thread: threading.Thread | None = None
        self._unheld: dict[str, int] = {}  # printer -> checks in a row it was seen held by no one
        self.link = MqttLink(
            cfg.mqtt,
            service="worker",
            topics=Topics(self.prefix, "site"),
            client_id=f"layerwatch-worker-{self.group}-{self.worker_id}",
            version=__version__,
            worker=self.worker_id,
            clean=True,
            status_topic=self.presence_topic(self.worker_id),
        )

    def presence_topic(self, worker: str) -> str:
        """``<prefix>/_workers/<group>/<worker>``: no printer id starts with ``_``, so no printer's topics."""
        return f"{self.prefix}/_workers/{self.group}/{worker}"

    def offer_topic(self, pid: str) -> str:
        """Where a worker offers the group a printer no one holds (not on the printer's status topic, which
        dashboards and Home Assistant read as the monitor's availability)."""
        return f"{self.prefix}/_workers/{self.group}/offer/{pid}"

    def start(self) -> SiteWorker:
        link = self.link
        link.subscribe(f"{self.prefix}/_workers/{self.group}/+", self._on_presence)
        link.subscribe(f"{self.prefix}/+/status/monitor", self._on_status)
        link.subscribe(f"$share/{self.group}/{self.prefix}/+/status/monitor", self._on_offer)
        link.subscribe(f"$share/{self.group}/{self.offer_topic('+')}", self._on_offer)
        link.start()
        self._thread = threading.Thread(target=self._check, name="worker-check", daemon=True)
        self._thread.start()
        log.info(
            "monitor: worker %s of group %s, sharing %d printer(s) through %s",
            self.worker_id,
            self.group,
            len(self.printers),
            self.service.config.mqtt.url,
        )
        return self

    def close(self) -> None:
        """Leave the group first: the printers let go after this go to the other workers."""
        with self._lock:
            self._closing = True
        self._stop.set()
        self.link.close()
        if self._thread is not None:
            self._thread.join(timeout=10)

    # ---- what the broker says ---------------------------------------------------------------------
    def live_workers(self) -> int:
        with self._lock:
            return max(1, sum(self.workers.values()) + (self.worker_id not in self.workers))

    def _on_presence(self, topic: str, payload: bytes) -> None:
        msg = StatusMessage.from_json(payload, topic)
        with self._lock:
            self.workers[topic.rsplit("/", 1)[1]] = msg.state == "online"

    def _printer(self, topic: str) -> str | None:
        """The printer of a status topic (``<prefix>/<printer>/status/monitor``) or an offer topic."""
        pid = topic.rsplit("/", 1)[1] if "/_workers/" in topic else topic.split("/")[-3]
        return pid if pid in self.printers else None

    def _on_status(self, topic: str, payload: bytes) -> None:
        pid = self._printer(topic)
        if pid is None:
            return
        msg = StatusMessage.from_json(payload, topic)
        with self._lock:
            self.seen[pid] = _Seen(msg.state, msg.worker, msg.time)

    def _held_elsewhere(self, pid: str, offer: StatusMessage | None = None) -> bool:
        """Whether another live worker holds ``pid`` by its newest status. ``offer``: an ``offline`` on the
        printer's status topic, which may be its holder letting go (its will, or a hand-on) before its own
        status says so: not held then, unless the holder took the printer again after it."""
        seen = self.seen.get(pid)
        if seen is None or seen.state != "online" or seen.worker == self.worker_id:
            return False
        if offer is not None and seen.worker == offer.worker and offer.time >= seen.time:
            return False
        return not seen.worker or self.workers.get(seen.worker, False)

    def _on_offer(self, topic: str, payload: bytes) -> None:
        """A printer without a holder, handed to this worker alone: take it, or pass it on above our share.

        An offer from the offer topic is a worker's (a repair, or one passed on): one made before another
        worker took the printer finds that worker holding it, and is dropped."""
        pid = self._printer(topic)
        msg = StatusMessage.from_json(payload, topic)
        if pid is None or msg.state != "offline":
            return
        with self._lock:
            held = self._held_elsewhere(pid, None if "/_workers/" in topic else msg)
            if self._closing or pid in self.service.monitors or held:
                return
            take = takes(len(self.service.monitors), len(self.printers), self.live_workers(), msg.hops)
        if take:
            self._take(pid)
        else:
            self._offer(pid, msg.hops + 1)

    # ---- taking and letting go --------------------------------------------------------------------
    def _take(self, pid: str) -> None:
        svc = self.service
        cfg = svc.config
        topics = Topics(self.prefix, pid)
        link = MqttLink(
            svc.printer_mqtt(pid).model_copy(update={"connect_timeout_s": min(cfg.mqtt.connect_timeout_s, 3.0)}),
            service="monitor",
            topics=topics,
            version=__version__,
            worker=self.worker_id,
            exclusive=True,
            will_delay_s=cfg.monitor.takeover_delay_s,
            on_lost=lambda: self._lost(pid, link),
        )
        holder = PrinterLock(cfg.monitor.out_dir / pid, self.worker_id)
        try:
            svc.open_printer(pid, link=link, holder=holder)
        except Exception as err:  # the broker or the printer refused: the check offers it again later
            log.error("monitor: worker %s cannot take printer %s: %s", self.worker_id, pid, err)
            return
        log.warning("monitor: worker %s took printer %s", self.worker_id, pid)

    def _lost(self, pid: str, link: MqttLink) -> None:
        """The printer's session ended: another worker took it over, or the broker went away."""
        pm = self.service.monitors.get(pid)
        if pm is None or pm.link is not link:
            return  # let go of already
        log.warning("monitor: worker %s lost printer %s (its session ended); letting go of it", self.worker_id, pid)
        self.service.release_printer(pid, publish_offline=False)

    def _offer(self, pid: str, hops: int = 0) -> None:
        """Offer ``pid`` to the group (one worker gets the offer through the shared subscription)."""
        offer = StatusMessage(
            service="monitor",
            client_id=f"layerwatch-monitor-{pid}",
            state="offline",
            version=__version__,
            worker=self.worker_id,
            hops=hops,
        )
        with contextlib.suppress(Exception):  # no broker now: the next check offers it again
            self.link.publish(self.offer_topic(pid), offer.to_json())

    def _check(self) -> None:
        """Offer printers no one holds; hand on one without a live build while above our share."""
        period = self.service.config.monitor.worker_check_s
        # the retained statuses arrive first; workers that start together offer at different moments
        while not self._stop.wait(period * (0.5 + random.random())):
            try:
                self._check_once()
            except Exception:  # the check must outlive any one printer's trouble
                log.exception("monitor: worker %s: checking the site's printers failed", self.worker_id)

    def _check_once(self) -> None:
        if not self.link.connected:
            return
        hand_on = None
        with self._lock:
            if self._closing:
                return
            mine = dict(self.service.monitors)
            live = sorted([w for w, up in self.workers.items() if up] + [self.worker_id])
            offering = live[0] == self.worker_id  # one worker offers what no one holds: one offer a printer
            for pid in sorted(self.printers - set(mine)):
                unheld = not self._held_elsewhere(pid)
                self._unheld[pid] = self._unheld.get(pid, 0) + 1 if unheld else 0
                if offering and self._unheld[pid] >= 2:  # twice in a row: not a hand-over under way
                    self._unheld[pid] = 0
                    self._offer(pid)
            share = math.ceil(len(self.printers) / self.live_workers())
        if len(mine) > share:  # outside our lock: each printer's own lock is taken to read its records
            hand_on = next((pid for pid, pm in sorted(mine.items()) if pm.between_builds()), None)
        if hand_on is not None:
            log.warning(
                "monitor: worker %s holds %d printers, above its share of %d: hands on %s (between builds)",
                self.worker_id,
                len(mine),
                share,
                hand_on,
            )
            self.service.release_printer(hand_on, publish_offline=True)
