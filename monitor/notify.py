"""Notifications: a printer's actions told where people are, through Apprise (Telegram, Discord, e-mail,
Slack, Pushover, ntfy, webhooks and the rest), with the evidence image and a link to the layer.

Configured per route (``[[notifications.routes]]``: which printers, from which severity, which actions);
the URLs, which hold tokens, come from a file or the environment. Sending happens on a worker thread of
its own with a bounded queue: a slow or failing service never delays a layer or a pause, and a failure is
said in the log and the build record (``notify_failed``), never retried in a loop.
"""

from __future__ import annotations

import logging
import os
import queue
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from monitor.config import NotificationRoute, NotificationsSection
from monitor.settings import ConfigFileError
from printer_io.messages import ActionMessage
from printer_io.secrets import read_secret_file
from printer_io.vocabulary import Severity
from segmentation.imageio import draw_boxes, overlay

__all__ = ["Notice", "Notifier", "evidence_png"]

log = logging.getLogger(__name__)

_QUEUE = 64  # notices waiting at most; beyond, the oldest waiting is dropped (and said)
_MAX_URLS = 32


def evidence_png(gray: np.ndarray, mask: np.ndarray, boxes: Sequence[Sequence[int]] = (), max_px: int = 800) -> bytes:
    """The layer with its part and defects tinted (PNG, the same overlay as ``layerwatch segment --overlay``),
    at most ``max_px`` wide, with ``boxes`` ((x, y, width, height) frame px: where the rules that acted
    measured) outlined."""
    out = cv2.cvtColor(overlay(gray, mask, alpha=0.55), cv2.COLOR_RGB2BGR)
    scale = 1.0
    if out.shape[1] > max_px:
        scale = max_px / out.shape[1]
        size = (max_px, round(out.shape[0] * scale))
        out = np.asarray(cv2.resize(out, size, interpolation=cv2.INTER_AREA), np.uint8)
    draw_boxes(out, boxes, scale, width=2)
    ok, buf = cv2.imencode(".png", out)
    return buf.tobytes() if ok else b""


@dataclass(frozen=True)
class Notice:
    printer: str
    action: ActionMessage
    evidence: bytes  # PNG
    record: str  # the record's file name
    decided_at: float  # when the monitor decided (the action's time)


def _urls(route: NotificationRoute, source: Path | None) -> list[str]:
    if route.urls_env is not None:
        text = os.environ.get(route.urls_env, "")
    else:
        assert route.urls_file is not None
        path = route.urls_file if route.urls_file.is_absolute() or source is None else source.parent / route.urls_file
        text = read_secret_file(path, what="notification URLs")
    urls = [line.strip() for line in text.split() if line.strip() and not line.strip().startswith("#")]
    return urls[:_MAX_URLS]


class Notifier:
    """Sends notices for one monitor; ``close`` waits for what is queued (a few seconds at most)."""

    def __init__(
        self,
        section: NotificationsSection,
        source: Path | None,
        on_failure: Callable[[str, str], None] | None = None,
    ) -> None:
        import apprise

        self.section = section
        self._routes: list[tuple[NotificationRoute, Any]] = []
        for route in section.routes:
            ap = apprise.Apprise()
            for url in _urls(route, source):
                if not ap.add(url):
                    scheme = url.split("://", 1)[0]
                    raise ConfigFileError(f"[notifications] a {scheme}:// URL is not one Apprise understands")
            self._routes.append((route, ap))
        self._on_failure = on_failure
        self._queue: queue.Queue[Notice | None] = queue.Queue(maxsize=_QUEUE)
        self._thread = threading.Thread(target=self._run, name="notifier", daemon=True)
        self.sent = 0
        self.failed = 0
        self.latencies_s: list[float] = []  # decision -> the service accepted it
        if self._routes:
            self._thread.start()

    @property
    def active(self) -> bool:
        return bool(self._routes)

    def wants(self, printer: str, action: ActionMessage) -> bool:
        return any(self._matches(route, printer, action) for route, _ in self._routes)

    @staticmethod
    def _matches(route: NotificationRoute, printer: str, action: ActionMessage) -> bool:
        severity = action.severity or Severity.INFO
        return (
            ("*" in route.printers or printer in route.printers)
            and str(action.action) in route.actions
            and Severity(severity).rank >= route.min_severity.rank
        )

    def submit(self, notice: Notice) -> None:
        """Queue a notice; never blocks (a full queue drops its oldest waiting notice, said once)."""
        try:
            self._queue.put_nowait(notice)
        except queue.Full:
            try:
                dropped = self._queue.get_nowait()
            except queue.Empty:
                dropped = None
            self._queue.put_nowait(notice)
            if dropped is not None:
                log.warning(
                    "notify: queue full; the notice of %s layer %s dropped", dropped.printer, dropped.action.layer
                )

    def link(self, notice: Notice) -> str | None:
        base = self.section.dashboard_url
        if not base:
            return None
        query = urllib.parse.urlencode(
            {"printer": notice.printer, "record": notice.record, "layer": notice.action.layer}
        )
        return f"{base.rstrip('/')}/?{query}"

    def _run(self) -> None:
        while True:
            notice = self._queue.get()
            if notice is None:
                return
            try:
                self._send(notice)
            except Exception as err:  # the worker outlives any one service's trouble
                self.failed += 1
                log.warning("notify: %s", err)
                if self._on_failure is not None:
                    self._on_failure(notice.printer, f"notification of layer {notice.action.layer} failed: {err}")

    def _send(self, notice: Notice) -> None:
        import apprise

        a = notice.action
        title = f"LayerWatch {notice.printer}: {a.action} at layer {a.layer} ({a.rule or 'operator'})"
        body = a.reason or a.detail or str(a.action)
        link = self.link(notice)
        if link:
            body += f"\n{link}"
        kind = apprise.NotifyType.FAILURE if a.severity == Severity.CRITICAL else apprise.NotifyType.WARNING
        with tempfile.TemporaryDirectory(prefix="layerwatch-notify-") as tmp:
            attach = None
            if notice.evidence:
                image = Path(tmp) / f"{notice.printer}-layer-{a.layer}.png"
                image.write_bytes(notice.evidence)
                attach = apprise.AppriseAttachment()
                attach.add(str(image))
            for route, ap in self._routes:
                if not self._matches(route, notice.printer, a):
                    continue
                if not ap.notify(title=title, body=body, notify_type=kind, attach=attach):
                    raise RuntimeError(
                        f"a service of the route for {', '.join(route.printers)} refused the notice or was unreachable"
                    )
                self.sent += 1
        self.latencies_s.append(time.time() - notice.decided_at)

    def close(self, wait_s: float = 10.0) -> None:
        if not self._thread.is_alive():
            return
        self._queue.put(None)
        self._thread.join(wait_s)
